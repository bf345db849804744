"""Channel-importance benchmark for DCMIX (a script, not a test).

Part 1, multi-SNR MNIST: six channels carrying the digit at noise sigma 0.5, 0.8, 1.2,
1.6, 2.5 and one pure-noise channel, shuffled per seed. Reports Spearman between the
importance and the true order, top-1 hits, validation accuracy of DCMIX against the same
CNN on all channels, and seconds per epoch with and without the mixing layer.

Part 2, BBBC013 controls split by well: held-out accuracy and GFP/DNA importance per
seed, next to single-channel (GFP-only, DNA-only) accuracies.

    python benchmarks/channel_importance.py [--seeds 0 1 2] [--epochs 8] [--skip-bbbc]

Writes JSON to benchmarks/results/channel_importance.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from napari_attribution.core.channels.training import TrainConfig, train_dcmix
from napari_attribution.core.data.synthetic import make_multi_snr
from napari_attribution.core.runtime.progress import run_generator

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SIGMAS = (0.5, 0.8, 1.2, 1.6, 2.5, None)


def _train(data, **kw):
    return run_generator(train_dcmix(data, TrainConfig(**kw)))


def _median_epoch_seconds(result) -> float:
    times = [h["epoch_seconds"] for h in result.history]
    return float(np.median(times[1:] if len(times) > 1 else times))


def step_seconds(n_channels: int, size: int, batch: int = 128, repeats: int = 40,
                 device: str = "cpu") -> dict:
    """Median seconds of one training step (forward, backward, Adam) of the same backbone
    with the mixing layer (C channels in), without it on one channel (the layer's own
    cost) and without it on all C channels (the all-channel CNN), interleaved so that
    load from other processes affects all three alike."""
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available()
                       else "cpu")
    torch.manual_seed(0)
    x = torch.randn(batch, n_channels, size, size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    models = {"with": (DCMIXClassifier(ModelConfig(n_channels, 10)), x),
              "without": (DCMIXClassifier(ModelConfig(1, 10, mixing=False)), x[:, :1]),
              "all_channel": (DCMIXClassifier(ModelConfig(n_channels, 10, mixing=False)), x)}
    runs = {}
    for name, (model, inp) in models.items():
        model.to(dev)
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step(model=model, inp=inp, opt=opt):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(inp), y).backward()
            opt.step()
        runs[name] = step
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 3):
        for name, step in runs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {"step_ms_with_mixing": 1e3 * med["with"],
            "step_ms_without_mixing": 1e3 * med["without"],
            "step_ms_all_channel_cnn": 1e3 * med["all_channel"],
            "step_overhead": med["with"] / med["without"] - 1,
            "step_vs_all_channel": med["with"] / med["all_channel"] - 1, "batch": batch}


def mnist_part(seeds, epochs, n_images, device) -> list[dict]:
    from napari_attribution.io.mnist import load_mnist

    images, labels = load_mnist(DATA / "mnist")
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(images), n_images, replace=False)
        data = make_multi_snr(clean=images[pick] / 255.0, labels=labels[pick], sigmas=SIGMAS,
                              seed=seed, class_names=[str(i) for i in range(10)])
        # digits must not be flipped or transposed (6 vs 9): no augmentation here
        common = dict(epochs=epochs, seed=seed, device=device, batch_size=128, augment=False)
        dcmix = _train(data, **common)
        allch = _train(data, mixing=False, channel_dropout=0.0, ablation_check=False, **common)
        # the same backbone without the mixing layer, fed one channel: the layer's own cost
        one = _train(data.select_channels([0]), mixing=False, channel_dropout=0.0,
                     ablation_check=False, **common)
        sigma = np.array([np.inf if s is None else s for s in data.metadata["sigma"]])
        imp = dcmix.importance
        rho = float(spearmanr(-imp.overall, sigma).statistic)
        rho_abl = float(spearmanr(-imp.ablation_loss_increase, sigma).statistic)
        t_mix, t_one = _median_epoch_seconds(dcmix), _median_epoch_seconds(one)
        t_all = _median_epoch_seconds(allch)
        rows.append({
            "seed": seed,
            "spearman": rho,
            "spearman_ablation": rho_abl,
            "top1_hit": bool(imp.ranking()[0] == data.metadata["true_ranking"][0]),
            "dcmix_val_accuracy": dcmix.val_accuracy,
            "all_channel_val_accuracy": allch.val_accuracy,
            "weights_by_sigma": {str(s): float(w) for s, w in
                                 zip(data.metadata["sigma"], imp.overall, strict=True)},
            "epoch_s_dcmix": t_mix,
            "epoch_s_without_mixing": t_one,
            "epoch_s_all_channel_cnn": t_all,
            "epoch_overhead": t_mix / t_one - 1,
            "epoch_vs_all_channel": t_mix / t_all - 1,
            **step_seconds(len(SIGMAS), images.shape[-1], device=device),
        })
        print(f"  mnist seed {seed}: rho {rho:.3f}, acc {dcmix.val_accuracy:.4f} vs "
              f"{allch.val_accuracy:.4f}", file=sys.stderr)
    return rows


def bbbc_part(seeds, epochs, device) -> list[dict]:
    from napari_attribution.io.plate import load_bbbc013

    # 48 px crops centred on nuclei after 2x downsampling, 48 per field: 1152 crops
    # from the 24 control wells (the settings of docs/bbbc013.md)
    data = load_bbbc013(DATA / "bbbc013", controls_only=True, crop_size=48, downsample=2,
                        per_image=48)
    gfp, dna = data.channel_names.index("GFP"), data.channel_names.index("DNA")
    rows = []
    for seed in seeds:
        common = dict(epochs=epochs, seed=seed, device=device, val_fraction=0.25)
        res = _train(data, **common)
        imp = res.importance
        gfp_only = _train(data.select_channels([gfp]), mixing=False, ablation_check=False,
                          channel_dropout=0.0, **common)
        dna_only = _train(data.select_channels([dna]), mixing=False, ablation_check=False,
                          channel_dropout=0.0, **common)
        val_wells = sorted(set(np.asarray(data.groups)[res.val_index].tolist()))
        rows.append({
            "seed": seed,
            "n_crops": len(data),
            "val_wells": val_wells,
            "heldout_accuracy": res.val_accuracy,
            "gfp_importance": float(imp.overall[gfp]),
            "dna_importance": float(imp.overall[dna]),
            "gfp_ablation_acc_drop": float(imp.ablation_accuracy_drop[gfp]),
            "dna_ablation_acc_drop": float(imp.ablation_accuracy_drop[dna]),
            "gfp_only_accuracy": gfp_only.val_accuracy,
            "dna_only_accuracy": dna_only.val_accuracy,
        })
        print(f"  bbbc013 seed {seed}: acc {res.val_accuracy:.3f}, GFP "
              f"{imp.overall[gfp]:.3f}", file=sys.stderr)
    return rows


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = " | ".join(title for title, _ in cols)
    lines = [f"| {head} |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, key in cols:
            v = r[key]
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--bbbc-epochs", type=int, default=15)
    ap.add_argument("--mnist-images", type=int, default=10000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--skip-bbbc", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/channel_importance.json")
    args = ap.parse_args()

    report: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
                    "torch_threads": torch.get_num_threads(), "device": args.device,
                    "date": time.strftime("%Y-%m-%d %H:%M")}
    if not args.skip_mnist:
        if (DATA / "mnist").exists():
            rows = mnist_part(args.seeds, args.epochs, args.mnist_images, args.device)
            report["mnist"] = rows
            mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
            report["mnist_summary"] = {
                "spearman_mean": mean("spearman"),
                "top1_hits": int(sum(r["top1_hit"] for r in rows)),
                "dcmix_accuracy_mean": mean("dcmix_val_accuracy"),
                "all_channel_accuracy_mean": mean("all_channel_val_accuracy"),
                "epoch_overhead_mean": mean("epoch_overhead"),
                "step_overhead_mean": mean("step_overhead"),
                "epoch_vs_all_channel_mean": mean("epoch_vs_all_channel"),
                "step_vs_all_channel_mean": mean("step_vs_all_channel"),
            }
            print("\nMulti-SNR MNIST (6 channels, sigma 0.5/0.8/1.2/1.6/2.5/noise, shuffled)")
            print(_table(rows, [("seed", "seed"), ("Spearman", "spearman"),
                                ("Spearman (ablation)", "spearman_ablation"),
                                ("top-1", "top1_hit"), ("DCMIX acc", "dcmix_val_accuracy"),
                                ("all-channel acc", "all_channel_val_accuracy"),
                                ("s/epoch DCMIX", "epoch_s_dcmix"),
                                ("s/epoch no mixing", "epoch_s_without_mixing"),
                                ("s/epoch all-ch CNN", "epoch_s_all_channel_cnn"),
                                ("epoch vs 1-ch", "epoch_overhead"),
                                ("epoch vs all-ch", "epoch_vs_all_channel"),
                                ("ms/step DCMIX", "step_ms_with_mixing"),
                                ("ms/step 1-ch", "step_ms_without_mixing"),
                                ("ms/step all-ch", "step_ms_all_channel_cnn"),
                                ("layer cost/step", "step_overhead"),
                                ("step vs all-ch", "step_vs_all_channel")]))
            s = report["mnist_summary"]
            print(f"mean Spearman {s['spearman_mean']:.3f} (target >= 0.97); top-1 "
                  f"{s['top1_hits']}/{len(rows)}; accuracy gap "
                  f"{100 * (s['all_channel_accuracy_mean'] - s['dcmix_accuracy_mean']):+.2f} "
                  f"points (target <= 1); the mixing layer's own cost per step "
                  f"{100 * s['step_overhead_mean']:+.1f}% (target <= 5%); DCMIX against the "
                  f"all-channel CNN: per step {100 * s['step_vs_all_channel_mean']:+.1f}%, "
                  f"per epoch {100 * s['epoch_vs_all_channel_mean']:+.1f}%; against the "
                  f"1-channel CNN per epoch {100 * s['epoch_overhead_mean']:+.1f}%")
        else:
            print(f"skipping MNIST: {DATA / 'mnist'} not found")
    if not args.skip_bbbc:
        if (DATA / "bbbc013").exists():
            rows = report["bbbc013"] = bbbc_part(args.seeds, args.bbbc_epochs, args.device)
            print("\nBBBC013 controls, split by well")
            print(_table(rows, [("seed", "seed"), ("crops", "n_crops"),
                                ("held-out acc", "heldout_accuracy"),
                                ("GFP importance", "gfp_importance"),
                                ("DNA importance", "dna_importance"),
                                ("GFP ablation drop", "gfp_ablation_acc_drop"),
                                ("DNA ablation drop", "dna_ablation_acc_drop"),
                                ("GFP-only acc", "gfp_only_accuracy"),
                                ("DNA-only acc", "dna_only_accuracy")]))
            ok = all(r["gfp_importance"] >= 0.8 and r["heldout_accuracy"] >= 0.95 for r in rows)
            print(f"targets (GFP >= 0.8 and held-out >= 95 % on every seed): "
                  f"{'met' if ok else 'NOT met'}")
        else:
            print(f"skipping BBBC013: {DATA / 'bbbc013'} not found")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
