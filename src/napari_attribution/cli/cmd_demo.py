"""``napari-attribution demo``: train DCMIX on built-in synthetic data and show the result."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.training import TrainConfig, train_dcmix
from .progress_bar import run_with_bar


def run(args: argparse.Namespace) -> int:
    from ..io.bundle import save_training_result
    from .cmd_channels import format_importance
    from .cmd_train import load_sample

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = load_sample(args.sample, args.seed)
    print(f"demo: {len(data)} synthetic '{args.sample}' images, channels "
          f"{', '.join(data.channel_names)}; known answer: "
          f"{data.metadata.get('informative_channel') or data.metadata.get('true_ranking')}")
    cfg = TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed)
    result = run_with_bar(train_dcmix(data, cfg))
    bundle = save_training_result(out / "demo_model.safetensors", result)
    imp = result.importance
    (out / "channel_importance.csv").write_text(format_importance(imp, "csv"))
    (out / "channel_importance.json").write_text(format_importance(imp, "json"))
    print(f"\nvalidation accuracy {result.val_accuracy:.3f} ({result.seconds:.1f} s on "
          f"{cfg.device})\n")
    print(format_importance(imp, "text"))
    print(f"\nsaved: {bundle}, {out / 'channel_importance.csv'}, "
          f"{out / 'channel_importance.json'}")
    if args.no_viewer or not os.environ.get("DISPLAY"):
        if not args.no_viewer:
            print("no display found: skipping the napari viewer (results are saved above)")
        return 0
    return _show(data, bundle)


def _show(data, bundle_path: Path) -> int:
    import napari

    from ..io.bundle import load_bundle

    viewer = napari.Viewer(title="napari-attribution demo")
    n = min(16, len(data))
    for c, name in enumerate(data.channel_names):
        viewer.add_image(data.images[:n, c], name=name, blending="additive",
                         colormap=["blue", "green", "magenta", "gray", "cyan", "yellow"][c % 6])
    try:
        from .._qt.demo_panel import add_demo_panels

        add_demo_panels(viewer, load_bundle(bundle_path), data.images[:n])
    except ImportError:
        pass
    napari.run()
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="train DCMIX on built-in synthetic data and show it",
                       description="Train DCMIX on generated data with a known answer, print "
                                   "and save the channel importance; with a display, open "
                                   "napari with the plugin.")
    p.add_argument("--sample", choices=("cells", "multi-snr"), default="cells")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--no-viewer", action="store_true", help="never open napari")
    p.set_defaults(func=run)
