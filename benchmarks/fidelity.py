"""Fidelity on fresh images with perturbations no method trains on (a script, not a test).

PCIM's defaults were chosen in ``pcim_tuning.py`` on the first 32 evaluation images of
each set of ``pixel_attribution.py``, scored with RISE deletion (to zero) and insertion
(from a blur, sigma 5) — the very perturbations PCIM's two games optimise. This script
reports on what was not tuned on:

* **fresh images**: synthetic cells from another generator seed; MNIST digits after the
  tuning ones; BBBC013 crops of *other* held-out wells, with a model retrained without
  those wells;
* **independent perturbations first**: ROAD (noisy linear imputation, most- and least-
  relevant first), deletion to the channel means and to a blur of another width
  (sigma 10), insertion from zero and from the means. PCIM's own games (RISE deletion and
  insertion) are listed last and marked as trained-on;
* **matched baselines**: Integrated Gradients with 50 steps (the usual), with 8 steps
  (PCIM's pass count) and from a blurred-image baseline (PCIM's preservation reference);
* **model-free baselines** (issue 24): the image, its excess over a blur (the prior
  black-box PCIM used to multiply its field by) and a random map, scored like the
  methods; a method *wins* a metric only if its paired interval beats every one of them
  (``verdicts``: win / tie / lose);
* **sanity** (``--sanity N``): Spearman between the maps of the trained and of N
  randomised models (every parameter re-initialised), median and worst; FAIL when
  |rho| > 0.5 in any seed; ``--sanity-mode cascade`` (default) randomises each seed's
  model layer by layer from the logits down to DCMIX's mixing layer first and tables
  the median rho after each step (the last step is the full randomisation);
  ``--label-sanity`` adds the data-label randomisation over the same seeds: per seed a
  randomised copy trained on the images with shuffled labels (the core's
  ``label_randomised_model``; sets that share a model -- BBBC013's positives and
  negatives, one class each -- pool their images, as a one-class set's shuffle changes
  nothing), its accuracy on the shuffled and on the true labels reported
  (``--label-epochs``, default 30 as in the core; 100 fitted every copy on 64 cells or
  digits, 30 did not);
* **intervals**: the mean over images with a 95 % bootstrap interval, and the paired
  bootstrap interval of PCIM minus each baseline (same images);
* **cost** per method: forward and backward passes and ms per image, and the peak memory
  above the start while it explains the set (``--batch`` images at a time; the process's
  resident-set high-water mark, ``core.peak_memory.track_peak``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity.py [--quick] [--sets synthetic,mnist]
        [--methods PCIM-blackbox --merge] [--sanity 5] [--cells-seed 7 --mnist-start 9700
        --out benchmarks/results/fidelity_fresh.json]

Prints markdown tables; writes JSON to benchmarks/results/fidelity.json. ``--methods``
runs only some columns (gradient PCIM always runs too: the paired intervals need its
per-image scores); ``--merge`` writes them into the existing JSON, the other columns
kept as they were (``column_runs`` says which run produced which column; the models must
come out the same, checked by their accuracy).
"""

from __future__ import annotations

import argparse
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
from napari_attribution.core.evaluation.comparison import (  # noqa: E402
    count_passes,
    sanity_check,
    verdict,
)
from napari_attribution.core.evaluation.metrics import (  # noqa: E402
    FIDELITY_METRICS,
    bootstrap_interval,
    tie_report,
    trained_perturbations,
)
from napari_attribution.core.evaluation.model_free import (  # noqa: E402
    MODEL_FREE,
    model_free_maps,
)
from napari_attribution.core.evaluation.sanity import label_randomised_model  # noqa: E402
from napari_attribution.core.runtime.peak_memory import track_peak  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

#: label -> (method, parameters)
VARIANTS: dict[str, tuple[str, dict]] = {
    "PCIM": ("pcim", {}),
    # the 7 x 7 field that was the default until issue 24's rework (the tables before it)
    "PCIM-blackbox": ("pcim_blackbox", {"grid": 7, "samples": 49, "sigma": 0.02}),
    # the previous default: a 5 x 5 field times the image's excess (an image prior)
    "PCIM-blackbox-excess": ("pcim_blackbox", {"modulate": "excess", "grid": 5,
                                               "samples": 25, "sigma": 0.02}),
    # issue 24: a 16 x 16 field estimated exactly with a small step (2 x 257 passes;
    # chosen on tuning images with benchmarks/blackbox_sanity.py; the default since)
    "PCIM-blackbox-fine": ("pcim_blackbox", {"grid": 16, "samples": 256, "sigma": 0.005}),
    "IG50": ("integrated_gradients", {"n_steps": 50}),
    "IG8": ("integrated_gradients", {"n_steps": 8}),
    "IG50-blur": ("integrated_gradients_blur", {"n_steps": 50}),
}
INDEPENDENT = ("road_morf", "road_lerf", "deletion_mean", "deletion_blur", "insertion_zero",
               "insertion_mean")
TRAINED = ("deletion", "insertion")
HEADLINE = ("road_morf", "deletion_mean")     # the target metrics
TUNING_IMAGES = 32                            # pcim_tuning.py used the first 32


def fresh_synthetic(n: int, epochs: int, seed: int = 2) -> dict:
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    res = pa._train(make_cell_phenotype(n_images=400, size=48, seed=0), epochs)
    test = make_cell_phenotype(n_images=n, size=48, seed=seed)     # tuning used seed 1
    x = res.normalizer(test.images)
    return {"model": res.model.eval(), "images": x, "targets": test.labels,
            "model_accuracy": pa._accuracy(res.model, x, test.labels),
            "note": f"synthetic cells of generator seed {seed} (tuning: seed 1)"}


def fresh_mnist(n: int, start: int = 8000 + TUNING_IMAGES) -> dict | None:
    if not 8000 + TUNING_IMAGES <= start <= 10000 - n:
        raise SystemExit(f"--mnist-start must leave the training digits (0-7999) and the "
                         f"tuning digits (8000-{8000 + TUNING_IMAGES - 1}) out; got {start}")
    s = pa.mnist_set(start - 8000 + n)
    if s is None:
        return None
    s["images"], s["targets"] = s["images"][start - 8000:], s["targets"][start - 8000:]
    s["note"] = f"held-out digits {start}-{start + n - 1} (tuning: 8000-8031)"
    return s


def fresh_bbbc(n: int, epochs: int, seed: int) -> dict[str, dict]:
    if not (pa.DATA / "bbbc013" / "1049_Metadata.csv").exists():
        return {}
    from napari_attribution.io.plate import load_bbbc013, take

    data = load_bbbc013(pa.DATA / "bbbc013", crop_size=48, downsample=2, per_image=24, seed=0)
    wells = np.unique(data.groups)
    label_of = {w: int(data.labels[data.groups == w][0]) for w in wells}
    pos = [w for w in wells if label_of[w] == 1]
    neg = [w for w in wells if label_of[w] == 0]
    rng = np.random.default_rng(0)                  # the tuning wells of pixel_attribution
    tuning = set(rng.choice(pos, 2, replace=False)) | set(rng.choice(neg, 4, replace=False))
    rng = np.random.default_rng(seed)
    pos_left = [w for w in pos if w not in tuning]
    neg_left = [w for w in neg if w not in tuning]
    report = set(rng.choice(pos_left, 2, replace=False)) | set(
        rng.choice(neg_left, 4, replace=False))
    is_report = np.isin(data.groups, list(report))
    res = pa._train(take(data, np.flatnonzero(~is_report)), epochs)
    out = {}
    def names(ws) -> str:
        return ", ".join(sorted(str(w) for w in ws))

    for name, label in (("bbbc013_pos", 1), ("bbbc013_neg", 0)):
        idx = np.flatnonzero(is_report & (data.labels == label))[:n]
        x = res.normalizer(data.images[idx])
        out[name] = {"model": res.model.eval(), "images": x, "targets": data.labels[idx],
                     "model_accuracy": pa._accuracy(res.model, x, data.labels[idx]),
                     "note": f"wells {names(w for w in report if label_of[w] == label)} "
                             f"(tuning wells {names(tuning)} excluded), model retrained "
                             "without the report wells"}
    return out


def attribute(model, x: np.ndarray, t: np.ndarray, method: str, params: dict, batch: int,
              seed: int) -> tuple[np.ndarray, dict]:
    """Maps and cost of one variant: ms, forward and backward passes per image, and the
    peak memory above the start while it explains the set ``batch`` images at a time
    (the process's resident set, :func:`track_peak`)."""
    if method in MODEL_FREE:
        return model_free_maps(method, x, seed), {
            "ms_per_image": 0.0, "forward_per_image": 0.0, "backward_per_image": 0.0,
            "peak_mib": 0.0}
    with track_peak("cpu") as peak, count_passes(model) as passes:
        res = run_generator(explain(model, x, t, method=method, device="cpu",
                                    batch_size=batch, **params))
    n = x.shape[0]
    return res.maps, {"ms_per_image": 1000 * res.seconds / n,
                      "forward_per_image": passes["forward"] / n,
                      "backward_per_image": passes["backward"] / n,
                      "peak_mib": peak["peak_mib"]}


def sanity(model, x: np.ndarray, t: np.ndarray, maps: np.ndarray, method: str,
           params: dict, batch: int, seeds: list[int], mode: str = "cascade",
           label_models: list[tuple[torch.nn.Module, float]] | None = None) -> dict:
    """The model-randomisation check of one variant over ``seeds``: the full
    randomisation's summary (pass / fail), and with ``mode="cascade"`` the layer-by-layer
    curve before it (see :mod:`napari_attribution.core.evaluation.sanity`); with
    ``label_models`` (one per seed, :func:`label_models_for`) the data-label
    randomisation's summary under ``"labels"`` (its own ``failing``; the top-level
    ``failing`` stays the model randomisation's)."""
    out = run_generator(sanity_check(maps, model, x, t, method, params, "cpu", batch,
                                     seeds[0], len(seeds), list(label_models or []), mode))
    summary = out["model"]
    if "cascade" in out:
        summary["cascade"] = out["cascade"]
    if "labels" in out:
        summary["labels"] = out["labels"]
    return summary


def label_models_for(model, x: np.ndarray, y: np.ndarray, seeds: list[int], epochs: int
                     ) -> tuple[list[tuple[torch.nn.Module, float]], list[dict]]:
    """The data-label randomisation's models, one per seed: a randomised copy of
    ``model`` trained ``epochs`` epochs on ``x`` with ``y`` shuffled
    (:func:`label_randomised_model`), and per seed a report that it is random with
    respect to the labels and that training did happen: its accuracy on the shuffled
    labels it was trained on (memorisation; above the majority share: it learned) and on
    the true labels (about ``shuffle_agreement``, the share of labels the shuffle left
    in place, for a model that learned the shuffle and nothing of the true labels), the
    classes it predicts and whether every parameter is finite. The global torch RNG is
    left as it was (the fidelity scores after it stay those of a run without it)."""
    y = np.asarray(y)
    models, reports = [], []
    for s in seeds:
        with torch.random.fork_rng():
            net, acc = label_randomised_model(model, x, y, seed=s, epochs=epochs)
        # the core's shuffle (np.random.default_rng(seed).permutation); checked below
        # against the accuracy the core reports
        shuffled = np.random.default_rng(s).permutation(y)
        with torch.no_grad():
            pred = torch.cat([net(torch.from_numpy(np.asarray(x[i:i + 256], np.float32)))
                              .argmax(1) for i in range(0, len(x), 256)]).numpy()
        acc_shuffled = float((pred == shuffled).mean())
        if abs(acc_shuffled - acc) > 1e-9:
            raise SystemExit(f"label randomisation, seed {s}: the shuffle here does not "
                             f"match the core's (accuracy {acc_shuffled} vs {acc})")
        majority = float(np.bincount(y).max() / len(y))
        reports.append({
            "seed": int(s), "n_images": int(len(y)), "epochs": int(epochs),
            "accuracy_shuffled_labels": acc, "accuracy_true_labels": float((pred == y).mean()),
            "shuffle_agreement": float((shuffled == y).mean()), "majority_share": majority,
            "predicted_classes": int(len(np.unique(pred))),
            "learned_shuffle": bool(acc > majority),
            "finite_parameters": bool(all(torch.isfinite(p).all() for p in net.parameters()))})
        models.append((net, acc))
    return models, reports


def add_label_models(sets: dict[str, dict], seeds: list[int], epochs: int) -> None:
    """Train the label-randomised models (:func:`label_models_for`) once per model and
    attach them to its sets (``label_models``, ``label_training``). Sets that share a
    model pool their images and labels: BBBC013's positive and negative report sets
    hold one class each, and shuffling one class's labels would change nothing."""
    groups: dict[int, list[str]] = {}
    for name, s in sets.items():
        groups.setdefault(id(s["model"]), []).append(name)
    for names in groups.values():
        first = sets[names[0]]
        x = np.concatenate([sets[n]["images"] for n in names])
        y = np.concatenate([np.asarray(sets[n]["targets"]) for n in names])
        t0, c0 = time.perf_counter(), time.process_time()
        models, runs = label_models_for(first["model"], x, y, seeds, epochs)
        what = (f"the {len(y)} images of {' + '.join(names)}" if len(names) > 1
                else f"the set's {len(y)} images")
        report = {"trained_on": what, "sets": names, "runs": runs,
                  "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        for n in names:
            sets[n]["label_models"], sets[n]["label_training"] = models, report
        print(f"label-randomised models for {', '.join(names)}: " + "; ".join(
            f"seed {d['seed']}: acc shuffled {d['accuracy_shuffled_labels']:.2f}, true "
            f"{d['accuracy_true_labels']:.2f} (agreement {d['shuffle_agreement']:.2f})"
            for d in runs), flush=True)


def run_set(s: dict, batch: int, seed: int, labels: list[str] | None = None,
            n_sanity: int = 0, sanity_mode: str = "cascade",
            label_models: list[tuple[torch.nn.Module, float]] | None = None) -> dict:
    model, x, t = s["model"], s["images"], s["targets"]
    scores: dict[str, dict[str, np.ndarray]] = {}
    cost: dict[str, dict] = {}
    ties: dict[str, dict] = {}
    sanity_out: dict[str, dict] = {}
    variants = {k: v for k, v in VARIANTS.items() if labels is None or k in labels}
    variants.update({k: (k, {}) for k in MODEL_FREE})
    for label, (method, params) in variants.items():
        maps, cost[label] = attribute(model, x, t, method, params, batch, seed)
        ties[label] = tie_report(maps, seed)
        scores[label] = {m: FIDELITY_METRICS[m].scores(model, x, maps, t, seed=seed)
                         for m in (*INDEPENDENT, *TRAINED)}
        if n_sanity:
            sanity_out[label] = sanity(model, x, t, maps, method, params, batch,
                                       list(range(seed, seed + n_sanity)), sanity_mode,
                                       label_models)
    summary: dict[str, dict] = {}
    for label in variants:
        summary[label] = {m: bootstrap_interval(v, seed=seed) for m, v in scores[label].items()}
    paired: dict[str, dict] = {}
    for label in variants:
        if label == "PCIM":
            continue
        paired[label] = {m: bootstrap_interval(scores["PCIM"][m] - scores[label][m], seed=seed)
                         for m in scores["PCIM"]}
    verdicts: dict[str, dict] = {}
    for label in variants:
        if label in MODEL_FREE:
            continue
        verdicts[label] = {m: verdict(m, scores[label][m],
                                      {b: scores[b][m] for b in MODEL_FREE}, seed)[0]
                           for m in scores[label]}
    return {"summary": summary, "paired_pcim_minus": paired, "cost": cost,
            "verdicts": verdicts, "sanity": sanity_out, "ties": ties,
            "model_free": list(MODEL_FREE),
            "n_images": int(x.shape[0]), "batch": int(batch), "model_accuracy": s["model_accuracy"],
            "note": s["note"], "trained_on": trained_perturbations("pcim"),
            **({"label_training": s["label_training"]} if "label_training" in s else {})}


def merge(old: dict, new: dict, labels: list[str], stamp: dict) -> dict:
    """``old``'s results with the columns ``labels`` (and their paired intervals against
    PCIM) taken from ``new``; refuses sets whose model accuracy differs (another model)."""
    out = json.loads(json.dumps(old["results"]))
    for name, r in new.items():
        if name not in out:
            raise SystemExit(f"--merge: set {name} is not in the existing results")
        if abs(out[name]["model_accuracy"] - r["model_accuracy"]) > 1e-6:
            raise SystemExit(f"--merge: {name}'s model differs from the stored run's "
                             f"(accuracy {r['model_accuracy']} vs "
                             f"{out[name]['model_accuracy']}); rerun every column")
        for label in labels:
            out[name]["summary"][label] = r["summary"][label]
            out[name]["cost"][label] = r["cost"][label]
            if label != "PCIM":
                out[name]["paired_pcim_minus"][label] = r["paired_pcim_minus"][label]
            for key in ("verdicts", "sanity", "ties"):
                if label in r.get(key, {}):
                    out[name].setdefault(key, {})[label] = r[key][label]
        if "label_training" in r:
            out[name]["label_training"] = r["label_training"]
    runs = old.get("column_runs") or {label: {"date": old["date"]} for label in VARIANTS}
    runs.update({label: stamp for label in labels})
    return {"results": out, "column_runs": runs}


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _better(metric: str, diff_interval: tuple[float, float, float]) -> bool | None:
    """True: PCIM better with the paired interval excluding 0; False: worse; None: tie."""
    _, lo, hi = diff_interval
    higher = FIDELITY_METRICS[metric].higher_is_better
    if (lo > 0 and higher) or (hi < 0 and not higher):
        return True
    if (hi < 0 and higher) or (lo > 0 and not higher):
        return False
    return None


def _overlap_free(a: tuple, b: tuple, higher: bool) -> bool:
    """Whether interval ``a`` lies entirely on the better side of interval ``b``."""
    return a[1] > b[2] if higher else a[2] < b[1]


def check_targets(results: dict) -> list[dict]:
    """PCIM vs IG50 and IG50-blur on the headline metrics, set by set."""
    out = []
    for set_name, r in results.items():
        for metric in HEADLINE:
            pc = r["summary"]["PCIM"][metric]
            for base in ("IG50", "IG50-blur"):
                if base not in r["summary"]:
                    continue
                b = r["summary"][base][metric]
                out.append({"set": set_name, "metric": metric, "baseline": base,
                            "pcim": pc, "other": b,
                            "non_overlapping_win": _overlap_free(
                                pc, b, FIDELITY_METRICS[metric].higher_is_better),
                            "paired": _better(metric, r["paired_pcim_minus"][base][metric])})
    return out


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _cell(ci: tuple) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def markdown_subset(results: dict) -> str:
    """The columns a ``--methods`` run produced, one line per set and metric."""
    lines = []
    for set_name, r in results.items():
        for label, summary in r["summary"].items():
            lines.append(f"{set_name} {label}: " + ", ".join(
                f"{m} {_cell(v)}" for m, v in summary.items()))
    return "\n".join(lines)


VERDICT = {"win": " W", "tie": " =", "lose": " L"}


def cascade_table(r: dict) -> list[str]:
    """The cascading randomisation of one set as a markdown table: one row per step
    (step 0: the trained model explained again; then the layers randomised from the top,
    cumulatively; the last row is the full randomisation), the median over seeds of the
    mean ρ over images, signed / absolute maps, one column per variant."""
    casc = {v: d["cascade"] for v, d in r.get("sanity", {}).items() if "cascade" in d}
    if not casc:
        return []
    labels = list(casc)
    steps = next(iter(casc.values()))["steps"]
    lines = ["cascading randomisation, median ρ over seeds (signed / \\|map\\|), layers "
             "randomised cumulatively from the top; last row = every parameter:", "",
             "| step: + layer | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for i, st in enumerate(steps):
        name = "trained (rerun)" if st["randomised"] is None else f"+ {st['randomised']}"
        lines.append(f"| {st['step']}: {name} | " + " | ".join(
            f"{casc[v]['steps'][i]['median']:.2f} / {casc[v]['steps'][i]['abs_median']:.2f}"
            for v in labels) + " |")
    lines.append("")
    return lines


def label_sanity_rows(r: dict, labels: list[str]) -> list[str]:
    """The data-label randomisation's rows of one set's table (none if it did not run):
    median / worst ρ, signed and absolute maps, and pass / FAIL with the seeds whose maps
    survived."""
    lab = {v: r["sanity"][v]["labels"] for v in labels
           if "labels" in r.get("sanity", {}).get(v, {})}
    if not lab:
        return []

    def cell(v: str, fmt) -> str:
        return fmt(lab[v]) if v in lab else "–"

    return [
        "| label-randomised ρ median / worst | " + " | ".join(
            cell(v, lambda d: f"{d['median']:.2f} / {d['worst']:.2f}") for v in labels) + " |",
        "| label-randomised \\|map\\| ρ median / worst | " + " | ".join(
            cell(v, lambda d: f"{d['abs_median']:.2f} / {d['abs_worst']:.2f}")
            for v in labels) + " |",
        "| label sanity (seeds surviving) | " + " | ".join(
            cell(v, lambda d: f"{'FAIL' if d['failing'] else 'pass'} "
                              f"({len(d['survived_seeds'])} of {len(d['seeds'])})")
            for v in labels) + " |"]


def label_training_lines(r: dict) -> list[str]:
    """One line on the label-randomised models of a set: what they were trained on and
    their accuracy on the shuffled and on the true labels (range over seeds)."""
    rep = r.get("label_training")
    if not rep:
        return []
    runs = rep["runs"]

    def rng(key: str) -> str:
        lo, hi = min(d[key] for d in runs), max(d[key] for d in runs)
        return f"{lo:.2f}" if abs(hi - lo) < 5e-3 else f"{lo:.2f}-{hi:.2f}"

    ok = all(d["learned_shuffle"] and d["finite_parameters"] for d in runs)
    return [f"label-randomised models (seeds {', '.join(str(d['seed']) for d in runs)}; "
            f"{runs[0]['epochs']} epochs on {rep['trained_on']}): accuracy on the shuffled "
            f"labels {rng('accuracy_shuffled_labels')}, on the true labels "
            f"{rng('accuracy_true_labels')} (labels the shuffle left in place "
            f"{rng('shuffle_agreement')}, majority class {rng('majority_share')}); "
            + ("every one learned its shuffle (above the majority share), finite "
               "parameters" if ok else "**a model did not learn its shuffle or has "
                                        "non-finite parameters**"), ""]


def markdown(results: dict, targets: list[dict]) -> str:
    lines = []
    for set_name, r in results.items():
        labels = list(r["summary"])
        lines += [f"**{set_name}** — {r['n_images']} fresh images, model accuracy "
                  f"{r['model_accuracy']:.3f}; {r['note']}", "",
                  "| metric | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for m in (*INDEPENDENT, *TRAINED):
            arrow = "↑" if FIDELITY_METRICS[m].higher_is_better else "↓"
            mark = " (PCIM trains on it)" if m in r["trained_on"] else ""
            lines.append(f"| {m} {arrow}{mark} | " + " | ".join(
                _cell(r["summary"][v][m]) + VERDICT.get(r.get("verdicts", {}).get(v, {})
                                                        .get(m, ""), "")
                for v in labels) + " |")
        if r.get("sanity"):
            lines.append("| sanity ρ median / worst | " + " | ".join(
                f"{r['sanity'][v]['median']:.2f} / {r['sanity'][v]['worst']:.2f}"
                for v in labels) + " |")
            lines.append("| sanity \\|map\\| ρ median / worst | " + " | ".join(
                f"{r['sanity'][v]['abs_median']:.2f} / {r['sanity'][v]['abs_worst']:.2f}"
                for v in labels) + " |")
            lines.append("| sanity (FAIL: \\|ρ\\| > 0.5 in any seed) | " + " | ".join(
                ("FAIL" if r["sanity"][v]["failing"] else "pass") for v in labels) + " |")
            lines += label_sanity_rows(r, labels)
        if r.get("ties"):
            lines.append("| largest tied share of a map (max) | " + " | ".join(
                f"{r['ties'][v]['largest_tie_max']:.2f}" for v in labels) + " |")
        lines.append("| fwd / bwd passes per image | " + " | ".join(
            f"{r['cost'][v]['forward_per_image']:.0f} / {r['cost'][v]['backward_per_image']:.0f}"
            for v in labels) + " |")
        lines.append("| ms per image | " + " | ".join(
            f"{r['cost'][v]['ms_per_image']:.1f}" for v in labels) + " |")
        lines.append(f"| peak MiB (batch {r.get('batch', '?')}) | " + " | ".join(
            _mib(r["cost"][v].get("peak_mib")) for v in labels) + " |")
        lines.append("")
        lines += label_training_lines(r)
        lines += cascade_table(r)
        lines.append("W / = / L: beats every model-free baseline (image, image_excess, "
                     "random) / ties / loses to one, paired 95 % bootstrap intervals; ties "
                     "in maps broken in a seeded random order")
        lines.append("")
    lines += ["| set | metric | PCIM | baseline | baseline value | intervals apart | "
              "paired difference |", "|---|---|---|---|---|---|---|"]
    for t in targets:
        paired = {True: "PCIM better", False: "PCIM worse", None: "no difference"}[t["paired"]]
        lines.append(f"| {t['set']} | {t['metric']} | {_cell(t['pcim'])} | {t['baseline']} | "
                     f"{_cell(t['other'])} | {'yes' if t['non_overlapping_win'] else 'no'} | "
                     f"{paired} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1, help="report-well choice, bootstrap")
    ap.add_argument("--sets", default="synthetic,mnist,bbbc013")
    ap.add_argument("--quick", action="store_true", help="12 images, 3 epochs (smoke run)")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated columns to run (of {', '.join(VARIANTS)}); "
                         "PCIM always runs as the paired reference")
    ap.add_argument("--merge", action="store_true",
                    help="write the --methods columns into the existing JSON")
    ap.add_argument("--sanity", type=int, default=0,
                    help="model-randomisation check over this many seeds per variant")
    ap.add_argument("--sanity-mode", choices=("cascade", "full"), default="cascade",
                    help="cascade: randomise layer by layer from the top, then all (the "
                         "curve, then pass / fail on the last step); full: all at once only")
    ap.add_argument("--label-sanity", action="store_true",
                    help="also the data-label randomisation over the --sanity seeds (a "
                         "copy trained on shuffled labels per seed)")
    ap.add_argument("--label-epochs", type=int, default=30,
                    help="epochs of each shuffled-label model (--label-sanity)")
    ap.add_argument("--cells-seed", type=int, default=2,
                    help="generator seed of the synthetic report cells (tuning: 1)")
    ap.add_argument("--mnist-start", type=int, default=8000 + TUNING_IMAGES,
                    help="first MNIST report digit (after the 32 tuning digits)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the JSON here (default benchmarks/results/fidelity.json); "
                         "with --methods, writes the columns run instead of printing only")
    args = ap.parse_args()
    labels = None
    if args.methods:
        labels = [v.strip() for v in args.methods.split(",") if v.strip()]
        unknown = sorted(set(labels) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown --methods {unknown}; known: {list(VARIANTS)}")
    if args.merge and not labels:
        raise SystemExit("--merge needs --methods")
    if args.label_sanity and args.sanity < 1:
        raise SystemExit("--label-sanity needs --sanity N (its seeds)")
    run_labels = None if labels is None else ["PCIM"] + [v for v in labels if v != "PCIM"]
    if args.quick:
        args.n_images, args.epochs = 12, 3
    torch.set_num_threads(args.threads)
    wanted = args.sets.split(",")
    sets: dict[str, dict] = {}
    if "synthetic" in wanted:
        sets["synthetic"] = fresh_synthetic(args.n_images, args.epochs, args.cells_seed)
    if "mnist" in wanted:
        m = fresh_mnist(args.n_images, args.mnist_start)
        if m is None:
            print("skipping MNIST: ../shared/data/mnist not found")
        else:
            sets["mnist"] = m
    if "bbbc013" in wanted:
        b = fresh_bbbc(args.n_images, args.epochs, args.seed)
        if not b:
            print("skipping BBBC013: ../shared/data/bbbc013 not found")
        sets.update(b)
    if args.label_sanity:
        add_label_models(sets, list(range(args.seed, args.seed + args.sanity)),
                         args.label_epochs)
    results = {}
    for name, s in sets.items():
        t0 = time.perf_counter()
        results[name] = run_set(s, args.batch, args.seed, run_labels, args.sanity,
                                args.sanity_mode, s.get("label_models"))
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    import os

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} CPU thread(s)")
    pa.RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or pa.RESULTS / ("fidelity_quick.json" if args.quick else "fidelity.json")
    stamp = {"date": date, "commit": _git_commit(), "load_average": list(os.getloadavg())}
    if args.merge:
        old = json.loads(out.read_text())
        merged = merge(old, results, labels, stamp)
        results, extra = merged["results"], {"column_runs": merged["column_runs"]}
        date, machine, old_args = old["date"], old["machine"], old["args"]
        extra["merge_args"] = vars(args)
        args_out = old_args
    elif labels is not None and args.out is None:
        print(markdown_subset(results))
        print("(--methods without --merge: nothing written)")
        return
    else:
        extra, args_out = {"column_runs": {label: stamp for label in (run_labels or VARIANTS)}}, \
            vars(args)
    targets = check_targets(results)
    table = markdown(results, targets)
    print(table)
    out.write_text(json.dumps({
        "date": date, "machine": machine, "args": args_out,
        "variants": {k: list(v) for k, v in VARIANTS.items()}, **extra,
        "results": results, "targets": targets, "markdown": table}, indent=2, default=str))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
