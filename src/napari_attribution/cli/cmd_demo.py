"""``napari-attribution demo``: DCMIX and PCIM on built-in synthetic data, then napari.

Trains DCMIX on generated images with a known answer, prints and saves the channel
importance, explains a few images with PCIM (maps as OME-TIFF with provenance, a PNG
figure, relevance mass inside the ground-truth region), and with a display opens napari
with the images and the plugin's widgets.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.channels.training import TrainConfig, train_dcmix
from .progress_bar import run_with_bar


def run(args: argparse.Namespace) -> int:
    from ..core.study.classification import accuracy_line
    from ..io.atomic import atomic_write_text
    from ..io.bundle import save_training_result
    from .cmd_channels import format_checks, format_importance
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
    # the demo owns its output folder: it replaces its own earlier results by design
    atomic_write_text(out / "channel_importance.csv", format_importance(imp, "csv"))
    atomic_write_text(out / "channel_importance.json", format_importance(imp, "json"))
    print(f"\nvalidation: {accuracy_line(result.validation)} ({result.seconds:.1f} s on "
          f"{cfg.device})\n")
    checks = result.checks()
    print(format_checks(result.findings, {k: checks.get(k) for k in ("channel_verdict",)},
                        imp))
    print(f"\nsaved: {bundle}, {out / 'channel_importance.csv'}, "
          f"{out / 'channel_importance.json'}")
    if data.masks is not None:
        _explain(result, bundle, data, out, args)
    if args.no_viewer or not os.environ.get("DISPLAY"):
        if not args.no_viewer:
            print("no display found: skipping the napari viewer (results are saved above)")
        return 0
    return _show(data, bundle)


def _explain(result, bundle_path: Path, data, out: Path, args: argparse.Namespace) -> None:
    """PCIM on validation images of the last class; save maps, a figure, the score."""
    import numpy as np

    from ..core.attribution.explain import explain
    from ..core.evaluation.metrics import relevance_mass
    from ..io.bundle import file_sha256
    from ..io.figures import save_overlay_figure
    from ..io.writers import write_attribution_tiff

    target = len(data.class_names) - 1
    pick = [int(i) for i in result.val_index if data.labels[i] == target][:args.explain]
    if not pick:
        return
    x = result.normalizer(data.images[pick])
    res = run_with_bar(explain(result.model, x, targets=target, method="pcim",
                               device=args.device))
    mass = relevance_mass(res.maps, data.masks[pick])
    area = float(data.masks[pick].mean())
    prov = res.provenance()
    prov.update(model_sha256=file_sha256(bundle_path), channel_names=list(data.channel_names),
                seed=args.seed)
    tif = write_attribution_tiff(out / "pcim_maps.ome.tif", res.maps, provenance=prov)
    png = save_overlay_figure(out / "pcim_overlay.png", data.images[pick[:4]],
                              res.maps[:4], data.channel_names, masks=data.masks[pick[:4]],
                              titles=[f"{data.class_names[target]} #{i}" for i in pick[:4]])
    print(f"\nPCIM on {len(pick)} validation images of class "
          f"'{data.class_names[target]}': {np.nanmean(mass):.2f} of the positive "
          f"attribution lies in the true region ({area:.2f} of the pixels); "
          f"{1000 * res.seconds / len(pick):.0f} ms per image")
    print(f"saved: {tif}, {png}")


def _show(data, bundle_path: Path) -> int:
    try:
        import napari
    except ImportError:  # a headless install: results are saved, no viewer to open
        print("napari is not installed (pip install 'napari-attribution[pyqt6]'): "
              "skipping the viewer; results are saved above")
        return 0

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
    p.add_argument("--sample", choices=("cells", "multi-snr"), default="cells",
                   help="built-in synthetic data with a known answer (default: cells)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and training")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"),
                   help="folder for the demo's files (replaced on each run)")
    p.add_argument("--explain", type=int, default=8, metavar="N",
                   help="explain N validation images with PCIM (0: skip)")
    p.add_argument("--no-viewer", action="store_true", help="never open napari")
    p.set_defaults(func=run)
