"""Gradient-free (black-box) PCIM against gradient PCIM: fidelity and cost (a script).

Issue #14's target: black-box PCIM within 10 % of gradient PCIM on ROAD (most relevant
first, lower is better) at no more than 4x its time. Both methods run through
:func:`explain` in the same process, on the same images, one after the other (so the
time ratio is measured under the same load); passes are counted with forward hooks.

Images (the models are those of ``fidelity.py``):

* ``--split tuning``: what black-box PCIM's defaults were chosen on: MNIST digits
  8000-8031 (``pcim_tuning.py``'s tuning digits) and, past 32 images, digits from 9000 on;
  synthetic cells of generator seed 1 (``pixel_attribution.py``'s evaluation set);
  BBBC013 crops of the six wells ``pixel_attribution.py`` holds out (A01, A02, B02, C01,
  F01, H01), model retrained without them;
* ``--split report`` (default): fresh images: MNIST digits from 8032 on (at most 968, so
  never a tuning digit), synthetic cells of generator seed 2, and ``fidelity.py``'s
  fresh BBBC013 crops (wells C12, D12, B01, C02, G02, G12; model retrained without them).

Rows: gradient PCIM, black-box PCIM with its defaults, the previous black-box defaults
(``PCIM-blackbox-v4``: the same 5 x 5 field and 53 passes, modulated by the contrast to
the deletion substrate instead of the excess over the blurred image;
``PCIM-blackbox-v3``: 3 x 3 logits, central differences, 37 passes;
``PCIM-blackbox-v2``: logits modulated by the contrast to both substrates, power 1;
``PCIM-blackbox-v1``: 8 steps x 8 white-noise directions on 4 px cells, 129 passes),
with ``--cap`` the default black-box parameterisation optimised with exact gradients
(what a perfect gradient estimate would reach), and any ``--variants``. Reported: ROAD
MoRF and deletion to the channel means (``fidelity.py``'s headline metrics), each with
its 95 % bootstrap interval, the paired interval of black-box minus gradient PCIM,
forward passes and seconds per image (the fastest of ``--repeats`` runs taken
round-robin over the rows: the machine is shared, and the fastest run is the least
disturbed one) and the time ratio to gradient PCIM.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pcim_blackbox.py [--split tuning] [--cap]
        [--variants '{"k8": {"samples": 8}}'] [--json benchmarks/results/pcim_blackbox.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_attribution as pa  # noqa: E402
from napari_attribution.core.attribution.explain import explain  # noqa: E402
from napari_attribution.core.evaluation.comparison import count_passes  # noqa: E402
from napari_attribution.core.evaluation.metrics import FIDELITY_METRICS, bootstrap_interval  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

METRICS = ("road_morf", "deletion_mean")
TARGET_FIDELITY = 1.10        # black-box ROAD MoRF at most 10 % above gradient PCIM's
TARGET_TIME = 4.0             # at most 4x gradient PCIM's time
#: black-box PCIM's defaults before issue #14's rework
V1 = {"steps": 8, "samples": 8, "sigma": 0.5, "lr": 0.25, "cell": 4, "levels": 1,
      "modulate": "none", "orthogonal": False, "difference": "central"}
#: black-box PCIM's defaults of issue #14's first rework (its orthogonal directions had
#: Gaussian lengths; they now have equal lengths)
V2 = {"steps": 6, "samples": 4, "sigma": 0.1, "lr": 0.15, "cell": 4, "levels": 3,
      "modulate": "contrast", "power": 1.0, "difference": "central"}
#: black-box PCIM's defaults of issue #14's second rework: 3 x 3 logits, central differences
#: along 9 equal-length orthogonal directions, 2 steps (37 passes)
V3 = {"steps": 2, "samples": 9, "sigma": 0.1, "lr": 0.15, "grid": 3, "difference": "central",
      "modulate": "deletion", "power": 0.75}
#: black-box PCIM's defaults of issue #14's third rework: as now, but the coarse field
#: modulated by the contrast to the deletion substrate (power 0.75), not the excess
V4 = {"modulate": "deletion", "power": 0.75, "grid": 5, "samples": 25, "sigma": 0.02}
#: black-box PCIM's defaults until issue 24: a 5 x 5 field times the image's excess over
#: its blur (an image prior; the maps survived model randomisation in an audit)
V5 = {"modulate": "excess", "power": 0.5, "grid": 5, "samples": 25, "sigma": 0.02}
#: the tuning split's MNIST digits continue at 8000 + TUNING_MORE past its first 32
TUNING_MORE = 1000


def mnist_indices(split: str, n: int) -> np.ndarray:
    """Positions (after digit 8000, the first the model did not train on) of a split's
    MNIST digits: tuning = 8000-8031 (``pcim_tuning.py``'s tuning digits), then from 9000
    on; report = from 8032 on. The two never share a digit."""
    if split == "tuning":
        return np.r_[np.arange(min(n, 32)), TUNING_MORE + np.arange(max(0, n - 32))]
    if n > TUNING_MORE - 32:
        raise SystemExit(f"--n-images {n}: the report digits would reach the tuning digits "
                         f"from {8000 + TUNING_MORE} on (at most {TUNING_MORE - 32})")
    return 32 + np.arange(n)


def _digit_note(digits: np.ndarray) -> str:
    runs, start = [], digits[0]
    for a, b in zip(digits[:-1], digits[1:], strict=True):
        if b != a + 1:
            runs.append(f"{start}-{a}")
            start = b
    runs.append(f"{start}-{digits[-1]}")
    return "MNIST digits " + ", ".join(runs)


@functools.lru_cache(maxsize=2)
def bbbc_sets(split: str, n: int, epochs: int) -> dict[str, dict]:
    """BBBC013 positives and negatives of one split (empty without the data).

    report: ``fidelity.py``'s fresh sets (its default ``--seed 1``: wells C12, D12 and
    B01, C02, G02, G12, model retrained without them). tuning: the six wells
    ``pixel_attribution.py`` holds out (A01, A02 and B02, C01, F01, H01; disjoint from
    the report wells by construction), model retrained without *them*, so neither split's
    images were trained on and tuning never sees a report well."""
    import fidelity

    if split == "report":
        return fidelity.fresh_bbbc(n, epochs, seed=1)
    if not (pa.DATA / "bbbc013" / "1049_Metadata.csv").exists():
        return {}
    from napari_attribution.io.plate import load_bbbc013, take

    data = load_bbbc013(pa.DATA / "bbbc013", crop_size=48, downsample=2, per_image=24, seed=0)
    wells = np.unique(data.groups)
    label_of = {w: int(data.labels[data.groups == w][0]) for w in wells}
    rng = np.random.default_rng(0)                  # as in fidelity.fresh_bbbc
    tuning = set(rng.choice([w for w in wells if label_of[w] == 1], 2, replace=False)) | set(
        rng.choice([w for w in wells if label_of[w] == 0], 4, replace=False))
    held = np.isin(data.groups, list(tuning))
    res = pa._train(take(data, np.flatnonzero(~held)), epochs)
    out = {}
    for name, label in (("bbbc013_pos", 1), ("bbbc013_neg", 0)):
        idx = np.flatnonzero(held & (data.labels == label))[:n]
        ws = ", ".join(sorted(str(w) for w in tuning if label_of[w] == label))
        out[name] = {"model": res.model.eval(), "images": res.normalizer(data.images[idx]),
                     "targets": data.labels[idx],
                     "note": f"BBBC013 crops of tuning wells {ws}, model retrained without "
                             "the six tuning wells"}
    return out


def load_set(name: str, split: str, n: int, epochs: int, cache: Path | None) -> dict | None:
    """Model, images and targets of one set and split (cached in ``cache`` if given)."""
    path = cache / f"{name}_{split}_{n}_{epochs}.pt" if cache else None
    if path is not None and path.exists():
        return torch.load(path, weights_only=False)
    if name.startswith("bbbc013"):
        sets = bbbc_sets(split, n, epochs)
        if path is not None and name in sets:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(sets[name], path)
        return sets.get(name)
    if name == "mnist":
        idx = mnist_indices(split, n)
        s = pa.mnist_set(int(idx.max()) + 1)
        if s is None:
            return None
        s = {"model": s["model"], "images": s["images"][idx], "targets": s["targets"][idx],
             "note": _digit_note(idx + 8000)}
    else:
        from napari_attribution.core.data.synthetic import make_cell_phenotype

        res = pa._train(make_cell_phenotype(n_images=400, size=48, seed=0), epochs)
        seed = 1 if split == "tuning" else 2
        test = make_cell_phenotype(n_images=n, size=48, seed=seed)
        s = {"model": res.model.eval(), "images": res.normalizer(test.images),
             "targets": test.labels, "note": f"synthetic cells of generator seed {seed}"}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(s, path)
    return s


def attribute(model, x: np.ndarray, t: np.ndarray, method: str, params: dict,
              batch: int) -> tuple[np.ndarray, dict]:
    with count_passes(model) as passes:
        t0 = time.perf_counter()
        res = run_generator(explain(model, x, t, method=method, device="cpu",
                                    batch_size=batch, **params))
        seconds = time.perf_counter() - t0
    n = x.shape[0]
    return res.maps, {"s_per_image": seconds / n, "forward_per_image": passes["forward"] / n,
                      "backward_per_image": passes["backward"] / n}


def lowdim_gradient(model, x: np.ndarray, t: np.ndarray, params: dict) -> np.ndarray:
    """The black-box parameterisation (modulated coarse logits) optimised with
    *exact* gradients through the model, PCIM's normalised steps and hybrid game: what
    black-box PCIM could reach with a perfect gradient estimate (``--cap`` row)."""
    from torch.nn import functional as F

    from napari_attribution.core.attribution.pcim import (
        _target_loss,
        blend,
        make_substrate,
        mixing_weights,
    )
    from napari_attribution.core.attribution.pcim_blackbox import BlackboxPCIMConfig, modulation

    cfg = BlackboxPCIMConfig(**params)
    xt, tt = torch.from_numpy(np.asarray(x, np.float32)), torch.as_tensor(t).long()
    b, _, h, w = xt.shape
    dele, keep = make_substrate(xt, cfg.substrate), make_substrate(
        xt, cfg.preserve_substrate or cfg.substrate, cfg.blur_sigma)
    mod = modulation(xt, dele, keep, cfg.modulate, cfg.power, cfg.blur_sigma)
    c = torch.zeros(b, 1, *cfg.coarse_shape(h, w), requires_grad=True)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for step in range(cfg.steps):
        delete = step % 2 == 1
        lg = F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False) * mod
        a = mixing_weights([-lg if delete else lg], (h, w))
        loss = _target_loss(model(blend(xt, a, dele if delete else keep)), tt, cfg.loss)
        (g,) = torch.autograd.grad((-loss if delete else loss).sum(), c)
        with torch.no_grad():
            c -= cfg.lr / g.flatten(1).abs().amax(1).clamp_min(1e-30).view(-1, 1, 1, 1) * g
    for p, f in zip(model.parameters(), flags, strict=True):
        p.requires_grad_(f)
    with torch.no_grad():
        lg = F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False) * mod
        return torch.log(mixing_weights([lg], (h, w)))[:, 0].numpy()


def run_set(s: dict, variants: dict[str, tuple[str, dict]], batch: int, seed: int,
            repeats: int) -> dict:
    """Scores and cost of every variant; times are the fastest of ``repeats`` runs taken
    round-robin over the variants (so load changes hit all of them alike)."""
    model, x, t = s["model"], s["images"], s["targets"]
    scores: dict[str, dict[str, np.ndarray]] = {}
    times: dict[str, list[float]] = {label: [] for label in variants}
    maps: dict[str, np.ndarray] = {}
    rows: dict[str, dict] = {}
    if "cap" in variants:
        maps["cap"] = lowdim_gradient(model, x, t, variants["cap"][1])
        rows["cap"] = {"method": "gradient, black-box parameterisation", "params":
                       variants["cap"][1], "forward_per_image": None,
                       "backward_per_image": None}
    for _ in range(repeats):
        for label, (method, params) in variants.items():
            if label == "cap":
                continue
            maps[label], cost = attribute(model, x, t, method, params, batch)
            times[label].append(cost.pop("s_per_image"))
            rows[label] = {"method": method, "params": params, **cost}
    for label in variants:
        scores[label] = {m: FIDELITY_METRICS[m].scores(model, x, maps[label], t, seed=seed)
                         for m in METRICS}
        rows[label].update({m: bootstrap_interval(v, seed=seed)
                            for m, v in scores[label].items()})
        rows[label]["s_per_image"] = float(np.min(times[label])) if times[label] else None
        rows[label]["s_per_image_runs"] = times[label]
    rows = {label: rows[label] for label in variants}
    base = rows["PCIM"]
    for label, r in rows.items():
        timed = r["s_per_image"] is not None
        r["time_ratio"] = r["s_per_image"] / base["s_per_image"] if timed else None
        r["paired_minus_pcim"] = {m: bootstrap_interval(scores[label][m] - scores["PCIM"][m],
                                                        seed=seed) for m in METRICS}
        r["road_ratio"] = r["road_morf"][0] / base["road_morf"][0]
        r["target_met"] = (r["road_ratio"] <= TARGET_FIDELITY
                           and r["time_ratio"] <= TARGET_TIME) if timed else None
    return {"n_images": int(x.shape[0]), "note": s["note"], "rows": rows}


def _ci(v) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def markdown(results: dict) -> str:
    lines = []
    for name, r in results.items():
        lines += [f"**{name}** — {r['n_images']} images; {r['note']}", "",
                  "| method | ROAD MoRF ↓ | deletion_mean ↓ | ROAD vs PCIM (paired diff) | "
                  "fwd / bwd per image | s per image | time / PCIM | target met |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, row in r["rows"].items():
            met = "—" if label in ("PCIM", "cap") else ("yes" if row["target_met"] else "no")
            if row["s_per_image"] is None:
                cost = "— | — | —"
            else:
                cost = (f"{row['forward_per_image']:.0f} / {row['backward_per_image']:.0f} | "
                        f"{row['s_per_image']:.4f} | {row['time_ratio']:.2f}")
            lines.append(
                f"| {label} | {_ci(row['road_morf'])} | {_ci(row['deletion_mean'])} | "
                f"{row['road_ratio']:.2f}x ({_ci(row['paired_minus_pcim']['road_morf'])}) | "
                f"{cost} | {met} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("tuning", "report"), default="report")
    ap.add_argument("--n-images", type=int, default=None,
                    help="images per set (default 160 for tuning, 64 for report)")
    ap.add_argument("--sets", default="mnist,synthetic,bbbc013_pos,bbbc013_neg")
    ap.add_argument("--variants", default=None,
                    help="JSON {label: params} of extra black-box variants")
    ap.add_argument("--no-default", action="store_true",
                    help="leave out the default, v4, v3, v2 and v1 black-box rows")
    ap.add_argument("--cap", action="store_true",
                    help="add the 'cap' row: the default black-box parameterisation "
                         "optimised with exact gradients")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timing runs (fastest kept)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1, help="bootstrap and ROAD noise")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder to keep trained models and images between runs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    n = args.n_images or (160 if args.split == "tuning" else 64)
    torch.set_num_threads(args.threads)
    variants: dict[str, tuple[str, dict]] = {"PCIM": ("pcim", {})}
    if not args.no_default:
        variants["PCIM-blackbox"] = ("pcim_blackbox", {})
        variants["PCIM-blackbox-v5"] = ("pcim_blackbox", dict(V5))
        variants["PCIM-blackbox-v4"] = ("pcim_blackbox", dict(V4))
        variants["PCIM-blackbox-v3"] = ("pcim_blackbox", dict(V3))
        variants["PCIM-blackbox-v2"] = ("pcim_blackbox", dict(V2))
        variants["PCIM-blackbox-v1"] = ("pcim_blackbox", dict(V1))
    if args.cap:
        variants["cap"] = ("pcim_blackbox", {})
    for label, params in json.loads(args.variants or "{}").items():
        variants[label] = ("pcim_blackbox", params)
    results = {}
    for name in args.sets.split(","):
        s = load_set(name, args.split, n, args.epochs, args.cache)
        if s is None:
            print(f"skipping {name}: its data is not in ../shared/data")
            continue
        t0 = time.perf_counter()
        results[name] = run_set(s, variants, args.batch, args.seed, args.repeats)
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    table = markdown(results)
    print(table)
    if args.json:
        import os

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, torch "
                       f"{torch.__version__}, {torch.get_num_threads()} CPU thread(s)",
            "load_average": list(os.getloadavg()),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "targets": {"road_morf_ratio_max": TARGET_FIDELITY, "time_ratio_max": TARGET_TIME},
            "results": results, "markdown": table}, indent=2))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
