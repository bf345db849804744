"""``napari-attribution methods``: the attribution methods, their settings and costs."""

from __future__ import annotations

import argparse
import json


def _rows(advanced: bool) -> list[dict]:
    from ..core.attribution.methods import registered_methods

    rows = []
    for spec in registered_methods().values():
        settings = [s for s in spec.config.settings()
                    if s.kind != "other" and (advanced or not s.advanced)]
        rows.append({
            "method": spec.name, "summary": spec.summary,
            "gradients": spec.needs_gradients,
            "passes_per_image_256px": spec.cost(None, 2, 256, 256),
            "settings": {s.name: s.default for s in settings},
            "help": {s.name: s.help for s in settings if s.help},
        })
    return rows


def run(args: argparse.Namespace) -> int:
    rows = _rows(args.all_settings)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        grad = "needs gradients" if r["gradients"] else "forward passes only"
        print(f"{r['method']}: {r['summary']}")
        print(f"    {grad}; about {r['passes_per_image_256px']} model evaluation(s) per "
              "2-channel 256 px image with the defaults")
        for key, value in r["settings"].items():
            helptext = f"  ({r['help'][key]})" if key in r["help"] else ""
            print(f"    --param {key}={json.dumps(value)}{helptext}")
    print("auto: gradient PCIM where the model's gradients are usable, else pcim_blackbox")
    return 0


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the attribution methods and their settings",
                       description="List the pixel attribution methods `explain`, `batch` "
                                   "and `evaluate` accept, with their settings (give them "
                                   "as --param KEY=VALUE) and a cost hint.")
    p.add_argument("--all-settings", action="store_true",
                   help="also list the advanced settings")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format (default text)")
    p.set_defaults(func=run)
