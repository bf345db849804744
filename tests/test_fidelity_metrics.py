"""Independent fidelity metrics: ROAD imputation, named perturbations, labels for the
perturbations a method trains on, bootstrap intervals and pass counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution_models import SpotModel, spot_images
from napari_attribution.core.evaluation.comparison import (
    count_passes,
    evaluate_methods,
    resolve_metrics,
)
from napari_attribution.core.evaluation.metrics import (
    FIDELITY_METRICS,
    bootstrap_interval,
    road_curves,
    trained_perturbations,
)
from napari_attribution.core.evaluation.road import noisy_linear_impute
from napari_attribution.core.runtime.errors import InputError


def _run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_road_imputation_reproduces_linear_ramps_and_keeps_kept_pixels():
    yy, xx = np.mgrid[0:20, 0:24].astype(np.float32)
    img = np.stack([0.1 * yy + 0.05 * xx, 2.0 - 0.07 * xx])
    removed = np.zeros((20, 24), bool)
    removed[5:14, 6:17] = True
    out = noisy_linear_impute(img, removed, noise=0.0)
    np.testing.assert_allclose(out, img, atol=1e-4)          # linear = harmonic here
    noisy = noisy_linear_impute(img, removed, noise=0.05, seed=1)
    np.testing.assert_array_equal(noisy[:, ~removed], img[:, ~removed])
    assert np.abs(noisy[:, removed] - img[:, removed]).max() > 1e-3
    with pytest.raises(InputError, match="mask"):
        noisy_linear_impute(img, removed[:5])


def test_road_fills_removed_spot_from_its_surroundings():
    img = np.zeros((1, 16, 16), np.float32)
    img[0, 6:10, 6:10] = 1.0
    out = noisy_linear_impute(img, img[0] > 0.5, noise=0.0)
    assert out[0, 6:10, 6:10].max() < 0.05               # the spot cannot leak back


def test_road_ranks_the_true_evidence_first():
    model = SpotModel()
    x, masks = spot_images(n=4)
    t = np.ones(4, int)
    good = masks.astype(np.float32)
    bad = 1.0 - good
    morf_good = road_curves(model, x, good, t, "morf").mean(1)
    morf_bad = road_curves(model, x, bad, t, "morf").mean(1)
    lerf_good = road_curves(model, x, good, t, "lerf").mean(1)
    lerf_bad = road_curves(model, x, bad, t, "lerf").mean(1)
    assert (morf_good < morf_bad - 0.3).all()
    assert (lerf_good > lerf_bad + 0.3).all()


def test_every_named_metric_prefers_the_true_map():
    model = SpotModel()
    x, masks = spot_images(n=3, seed=2)
    t = np.ones(3, int)
    good, bad = masks.astype(np.float32), 1.0 - masks.astype(np.float32)
    for m in FIDELITY_METRICS.values():
        g, b = m.scores(model, x, good, t), m.scores(model, x, bad, t)
        better = g.mean() > b.mean() if m.higher_is_better else g.mean() < b.mean()
        assert better, m.name


def test_trained_perturbations_follow_the_method_parameters():
    assert trained_perturbations("pcim") == ["deletion", "insertion"]
    assert trained_perturbations("pcim", {"substrate": "mean"}) == ["deletion_mean",
                                                                   "insertion"]
    assert trained_perturbations("pcim", {"blur_sigma": 10.0}) == ["deletion"]
    assert trained_perturbations("integrated_gradients") == []


def test_resolve_metrics_expands_road_and_rejects_unknown_names():
    assert resolve_metrics(["road", "deletion_zero", "road_morf"]) == [
        "road_morf", "road_lerf", "deletion"]
    assert "road_morf" in resolve_metrics(None)
    with pytest.raises(InputError, match="unknown metric 'roadd'"):
        resolve_metrics(["roadd"])


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1, 1, 20), rng.normal(1, 1, 2000)
    m, lo, hi = bootstrap_interval(small)
    assert lo < m < hi
    _, lo2, hi2 = bootstrap_interval(large)
    assert hi2 - lo2 < (hi - lo) / 4
    assert np.isnan(bootstrap_interval(np.array([np.nan]))[0])


def test_pass_counter_counts_samples_through_the_model():
    model = SpotModel()
    x = torch.rand(3, 2, 8, 8, requires_grad=True)
    with count_passes(model) as passes:
        model(x)[:, 1].sum().backward()
        with torch.no_grad():
            model(x[:2])
    assert passes == {"forward": 5, "backward": 3}


def test_evaluation_rows_label_trained_perturbations_and_give_intervals():
    model = SpotModel()
    x, masks = spot_images(n=4, seed=3)
    rows, _ = _run(evaluate_methods(
        model, x, np.ones(4, int), masks, ["pcim", "integrated_gradients_blur"],
        ["road", "deletion", "deletion_mean", "relevance_mass"], n_steps=10,
        method_params={"pcim": {"steps": 20},
                       "integrated_gradients_blur": {"n_steps": 8}}))
    pcim, ig, image, excess, rand = rows
    assert [r["model_free"] for r in rows] == [False, False, True, True, True]
    assert [r["method"] for r in rows[2:]] == ["image", "image_excess", "random"]
    assert pcim["trained_on"] == ["deletion"] and ig["trained_on"] == []
    # the methods get a verdict per metric against every model-free baseline
    for r in (pcim, ig):
        assert set(r["verdicts"]) == {"road_morf", "road_lerf", "deletion", "deletion_mean"}
        assert set(r["verdicts"].values()) <= {"win", "tie", "lose"}
        assert set(r["paired_vs_model_free"]["road_morf"]) == {"image", "image_excess",
                                                              "random"}
    assert "verdicts" not in image
    # PCIM finds the spot: it beats the random map on ROAD-MoRF with a paired interval
    assert pcim["paired_vs_model_free"]["road_morf"]["random"][2] < 0
    assert rand["road_morf_auc"] > pcim["road_morf_auc"]
    assert pcim["ties"]["rule"] == "random" and rand["ties"]["largest_tie_max"] < 0.01
    assert ig["forward_per_image"] == pytest.approx(8 + 1)    # + explain's class probabilities
    assert ig["backward_per_image"] == pytest.approx(8)
    assert pcim["forward_per_image"] >= 2
    for r in rows:
        for key in ("road_morf_auc", "road_lerf_auc", "deletion_mean_auc"):
            lo, hi = r["intervals"][key]
            assert lo <= r[key] <= hi
    for r in (pcim, ig):
        assert r["road_morf_auc"] < r["road_lerf_auc"]


def test_blackbox_pcim_finds_the_spot_with_forward_passes_only():
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.core.attribution.pcim_blackbox import BlackboxPCIMConfig
    from napari_attribution.core.evaluation.metrics import relevance_mass

    model = SpotModel()
    x, masks = spot_images(n=4, size=24, seed=4)
    with count_passes(model) as passes:
        res = _run(explain(model, x, 1, method="pcim_blackbox", device="cpu"))
    assert passes["backward"] == 0
    cfg = BlackboxPCIMConfig()
    assert cfg.forward_passes(24, 24) == cfg.steps * (144 + 1)  # 12 x 12 logits on 24 px
    assert passes["forward"] == 4 * (1 + cfg.forward_passes(24, 24))  # probe + steps
    share = masks.mean(axis=(1, 2))                          # the spot is ~4 % of the image
    assert (relevance_mass(res.maps, masks) > 5 * share).all()
    assert all(m[k].mean() > m[~k].mean() + 0.2 for m, k in zip(res.maps, masks, strict=True))
    assert res.params["sigma"] == cfg.sigma
    assert trained_perturbations("pcim_blackbox") == ["deletion", "insertion"]
    with pytest.raises(InputError, match="pixel maps only"):
        _run(explain(model, x, 1, method="pcim_blackbox", per_channel=True, device="cpu"))
    with pytest.raises(InputError, match="samples >= 1"):
        _run(explain(model, x, 1, method="pcim_blackbox", samples=0, device="cpu"))


def test_fidelity_benchmark_merges_single_columns_only_onto_the_same_models():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fidelity

    def result(acc: float, value: float) -> dict:
        cols = {label: {"road_morf": (value, value - 0.1, value + 0.1)}
                for label in fidelity.VARIANTS}
        return {"model_accuracy": acc, "summary": cols,
                "cost": {label: {"forward_per_image": value} for label in fidelity.VARIANTS},
                "paired_pcim_minus": {label: {"road_morf": (value, 0.0, 0.0)}
                                      for label in fidelity.VARIANTS if label != "PCIM"}}

    old = {"date": "then", "results": {"cells": result(0.9, 0.5)}}
    new = {"cells": result(0.9, 0.2)}
    stamp = {"date": "now"}
    out = fidelity.merge(old, new, ["PCIM-blackbox"], stamp)
    cells = out["results"]["cells"]
    assert cells["summary"]["PCIM-blackbox"]["road_morf"][0] == 0.2
    assert cells["paired_pcim_minus"]["PCIM-blackbox"]["road_morf"][0] == 0.2
    assert cells["summary"]["PCIM"]["road_morf"][0] == 0.5        # the rest kept
    assert cells["summary"]["IG50"]["road_morf"][0] == 0.5
    assert old["results"]["cells"]["summary"]["PCIM-blackbox"]["road_morf"][0] == 0.5
    assert out["column_runs"]["PCIM-blackbox"] == stamp
    assert out["column_runs"]["IG50"] == {"date": "then"}
    with pytest.raises(SystemExit, match="model differs"):
        fidelity.merge(old, {"cells": result(0.8, 0.2)}, ["PCIM-blackbox"], stamp)


def test_verdict_needs_every_model_free_baseline_beaten_with_a_paired_interval():
    from napari_attribution.core.evaluation.comparison import verdict

    rng = np.random.default_rng(0)
    base = rng.random(40)
    much_lower = base - 0.3 + 0.01 * rng.standard_normal(40)
    same = base + 0.01 * rng.standard_normal(40)
    # deletion: lower is better
    v, paired = verdict("deletion", much_lower, {"a": base, "b": base + 0.1})
    assert v == "win" and paired["a"][2] < 0 and paired["b"][2] < 0
    assert verdict("deletion", much_lower, {"a": base, "b": much_lower - 0.2})[0] == "lose"
    assert verdict("deletion", same, {"a": base})[0] == "tie"
    # insertion: higher is better, the same numbers lose
    assert verdict("insertion", much_lower, {"a": base})[0] == "lose"
    # paired, not two separate intervals: a small shift on widely spread images wins
    spread = rng.normal(0, 1, 60)
    assert verdict("road_morf", spread - 0.05, {"a": spread})[0] == "win"


def test_sanity_over_seeds_marks_model_free_maps_as_failing():
    model = SpotModel()
    x, masks = spot_images(n=4, seed=5)
    labels = np.array([1, 0, 1, 0])
    rows, _ = _run(evaluate_methods(
        model, x, np.ones(4, int), None, ["pcim"], ["road_morf", "sanity"], n_steps=10,
        method_params={"pcim": {"steps": 6}}, sanity_seeds=3, labels=labels,
        sanity_labels=True, label_epochs=2))
    pcim, image, excess, rand = rows
    san = pcim["sanity"]["model"]
    assert san["seeds"] == [0, 1, 2] and len(san["signed"]) == 3
    assert pcim["sanity_spearman"] == pytest.approx(np.median(san["signed"]))
    assert abs(pcim["sanity_worst"]) == pytest.approx(np.max(np.abs(san["signed"])))
    assert pcim["sanity"]["labels"]["seeds"] == [0, 1, 2]
    assert len(pcim["sanity"]["labels"]["shuffled_label_accuracy"]) == 3
    # maps that ignore the model survive every randomisation: the positive control
    for r in (image, excess, rand):
        assert r["sanity_failing"] is True
        assert r["sanity"]["model"]["survived_seeds"] == [0, 1, 2]
        assert r["sanity_spearman"] == pytest.approx(1.0)
    # PCIM's maps of the spot model do not survive
    assert pcim["sanity_failing"] is False, pcim["sanity"]
    with pytest.raises(InputError, match="needs labels"):
        _run(evaluate_methods(model, x, 1, None, ["pcim"], ["sanity"], sanity_labels=True))


def _spot_dcmix(seed: int = 0) -> tuple[torch.nn.Module, np.ndarray]:
    """A tiny DCMIX (mixing layer + small CNN, width 4) trained briefly to tell 12 px
    images with a bright spot in channel 0 from images without one."""
    from napari_attribution.core.channels.dcmix import build_dcmix

    torch.manual_seed(seed)
    x, _ = spot_images(n=24, size=12, seed=seed)
    x[12:, 0] = np.random.default_rng(seed).uniform(0, 0.3, (12, 12, 12))   # no spot
    y = torch.tensor([1] * 12 + [0] * 12)
    model = build_dcmix(n_channels=2, n_classes=2, width=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    xt = torch.as_tensor(x)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), y).backward()
        opt.step()
    return model.eval(), x[:6]


def test_cascade_layers_follow_the_forward_pass_and_end_with_the_full_randomisation():
    from napari_attribution.core.channels.dcmix import build_dcmix
    from napari_attribution.core.evaluation.metrics import randomize_model
    from napari_attribution.core.evaluation.sanity import cascade_models, parameter_layers

    for backbone, n_layers in (("small", 7), ("resnet18", 22)):
        model = build_dcmix(n_channels=2, n_classes=2, backbone=backbone, width=4).eval()
        example = torch.rand(1, 2, 12, 12)
        layers = parameter_layers(model, example)
        assert len(layers) == n_layers
        assert layers[0] == ["mixing"] and layers[-1] == ["backbone.head"]
        # a convolution and the batch norm after it are one layer
        assert all(len(layer) == 2 for layer in layers[1:-1])
        # for the built-in backbones the forward order is the modules' declaration order
        own = [n for n, m in model.named_modules()
               if any(True for _ in m.parameters(recurse=False))]
        assert [n for layer in layers for n in layer] == own
    model = build_dcmix(n_channels=2, n_classes=2, width=4).eval()
    trained = dict(model.named_parameters())
    steps = list(cascade_models(model, torch.rand(1, 2, 12, 12), seed=3))
    assert [layer for layer, _ in steps] == list(reversed(parameter_layers(
        model, torch.rand(1, 2, 12, 12))))
    changed = [sorted({n.rsplit(".", 1)[0] for n, p in net.named_parameters()
                       if not torch.equal(p, trained[n])}) for _, net in steps]
    assert changed[0] == ["backbone.head"]                       # the logits first
    assert all(set(a) < set(b) for a, b in zip(changed, changed[1:], strict=False))
    assert "mixing" in changed[-1] and "mixing" not in changed[-2]       # the input last
    full = randomize_model(model, seed=3)                     # the last step = full
    for (k, a), b in zip(steps[-1][1].state_dict().items(), full.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    # a step's normalisation statistics come from the random model too (reset)
    bn = dict(steps[1][1].named_modules())["backbone.features.7.1"]
    assert float(bn.running_var.mean()) == 1.0 and float(bn.running_mean.abs().sum()) == 0.0
    assert all(not m.training for _, net in steps for m in net.modules())


def test_cascading_sanity_decorrelates_a_gradient_map_and_fails_a_model_free_one():
    model, x = _spot_dcmix()
    rows, _ = _run(evaluate_methods(
        model, x, None, None, ["saliency"], ["road_morf", "sanity"], n_steps=5,
        model_free=["image"], sanity_seeds=2, sanity_mode="cascade"))
    sal, image = rows
    casc = sal["sanity"]["cascade"]
    assert sal["sanity"]["mode"] == "cascade" and casc["seeds"] == [0, 1]
    names = [st["randomised"] for st in casc["steps"]]
    assert names[0] is None and names[1] == "backbone.head" and names[-1] == "mixing"
    assert len(casc["steps"]) == 8                      # step 0 + 7 layers
    assert casc["steps"][0]["median"] == pytest.approx(1.0)     # nothing randomised
    # the last step is the full randomisation: the pass/fail summary is made of it
    assert sal["sanity"]["model"]["signed"] == casc["steps"][-1]["signed"]
    assert abs(casc["steps"][-1]["median"]) < 0.5 and casc["steps"][-1]["abs_median"] < 0.5
    assert sal["sanity_failing"] is False, casc
    assert casc["decorrelated_at"] is not None
    # a map that never looks at the model keeps rho = 1 at every step and fails
    for st in image["sanity"]["cascade"]["steps"]:
        assert st["median"] == pytest.approx(1.0) and st["abs_median"] == pytest.approx(1.0)
    assert image["sanity_failing"] is True
    assert image["sanity"]["cascade"]["decorrelated_at"] is None
    with pytest.raises(InputError, match="sanity mode"):
        _run(evaluate_methods(model, x, None, None, ["saliency"], ["sanity"],
                              sanity_mode="layers"))


def test_fidelity_benchmark_tables_the_cascade_and_keeps_the_full_verdict():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fidelity

    model, x = _spot_dcmix()
    t = np.ones(len(x), int)
    maps = _run(explain_gen(model, x, t))
    casc = fidelity.sanity(model, x, t, maps, "saliency", {}, 8, [4], "cascade")
    full = fidelity.sanity(model, x, t, maps, "saliency", {}, 8, [4], "full")
    # the cascade's last step is the full randomisation of the same seed
    assert casc["signed"] == full["signed"] and casc["failing"] == full["failing"]
    assert "cascade" not in full and casc["cascade"]["steps"][-1]["signed"] == full["signed"]
    image = fidelity.sanity(model, x, t, x.sum(1), "image", {}, 8, [4], "cascade")
    lines = fidelity.cascade_table({"sanity": {"saliency": casc, "image": image}})
    rows = [ln for ln in lines if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 8 and rows[0].startswith("| 0: trained (rerun) | 1.00 / 1.00")
    assert rows[1].startswith("| 1: + backbone.head |") and rows[-1].startswith("| 7: + mixing")
    assert all(row.endswith("| 1.00 / 1.00 |") for row in rows)     # the image: never moves


def explain_gen(model, x, t):
    from napari_attribution.core.attribution.explain import explain

    res = yield from explain(model, x, t, method="saliency", device="cpu")
    return res.maps


def test_fidelity_benchmark_label_sanity_trains_on_shuffled_labels_and_tables_it():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fidelity

    model, _ = _spot_dcmix()
    x, _ = spot_images(n=24, size=12, seed=3)
    x[12:, 0] = np.random.default_rng(3).uniform(0, 0.3, (12, 12, 12))
    y = np.array([1] * 12 + [0] * 12)
    state = torch.random.get_rng_state()
    models, runs = fidelity.label_models_for(model, x, y, [4, 5], epochs=60)
    assert torch.equal(torch.random.get_rng_state(), state)     # global RNG untouched
    assert len(models) == 2 and [d["seed"] for d in runs] == [4, 5]
    for (net, acc), d in zip(models, runs, strict=True):
        assert d["accuracy_shuffled_labels"] == acc
        # it memorised its shuffle, not the true labels: on the true labels it scores
        # what the shuffle left in place, not the trained model's accuracy
        assert d["learned_shuffle"] and acc > d["majority_share"] == 0.5
        assert abs(d["accuracy_true_labels"] - d["shuffle_agreement"]) <= 1 - acc + 1e-9
        assert d["accuracy_true_labels"] < 0.9 and d["finite_parameters"]
        assert not any(p.requires_grad for p in net.parameters())
    # a one-class set: the shuffle would change nothing (fidelity.py pools such sets)
    with pytest.raises(InputError, match="at least two classes"):
        fidelity.label_models_for(model, x[:12], y[:12], [4], epochs=5)

    xs, t = x[:6], y[:6]
    maps = _run(explain_gen(model, xs, t))
    sal = fidelity.sanity(model, xs, t, maps, "saliency", {}, 8, [4, 5], "full", models)
    image = fidelity.sanity(model, xs, t, xs.sum(1), "image", {}, 8, [4, 5], "full", models)
    assert sal["labels"]["seeds"] == [4, 5] and len(sal["labels"]["signed"]) == 2
    assert image["labels"]["failing"] and image["labels"]["median"] == pytest.approx(1.0)
    assert "labels" not in fidelity.sanity(model, xs, t, maps, "saliency", {}, 8, [4], "full")
    r = {"sanity": {"saliency": sal, "image": image},
         "label_training": {"trained_on": "the set's 24 images", "runs": runs}}
    rows = fidelity.label_sanity_rows(r, ["saliency", "image"])
    assert len(rows) == 3 and rows[2].endswith("| FAIL (2 of 2) |")
    assert rows[2].startswith("| label sanity (seeds surviving) | " + (
        "FAIL" if sal["labels"]["failing"] else "pass"))
    line = fidelity.label_training_lines(r)[0]
    assert "seeds 4, 5; 60 epochs on the set's 24 images" in line
    assert "every one learned its shuffle" in line


def test_label_randomised_model_trains_until_it_fits_the_shuffle():
    from napari_attribution.core.channels.dcmix import build_dcmix
    from napari_attribution.core.evaluation.sanity import label_fit_note, label_randomised_model

    torch.manual_seed(0)
    model = build_dcmix(n_channels=2, n_classes=2, width=4)
    x, _ = spot_images(n=8, size=12, seed=3)
    labels = np.array([0, 1] * 4)
    _, short = label_randomised_model(model, x, labels, seed=1, epochs=1, max_epochs=1)
    _, fitted = label_randomised_model(model, x, labels, seed=1, epochs=1)
    assert fitted >= 0.95 > short
    # a model that cannot learn (SpotModel: class 0 is a constant) keeps trying, then says so
    _, stuck = label_randomised_model(SpotModel(), x, labels, seed=1, epochs=1, max_epochs=20)
    note = label_fit_note([fitted, stuck])
    assert stuck < 0.95 and note is not None and "1 of 2 shuffled-label models" in note
    assert label_fit_note([fitted]) is None
    # no first block (epochs=0) still trains on, 10 epochs at a time, and ends
    _, from_zero = label_randomised_model(model, x, labels, seed=1, epochs=0, max_epochs=20)
    assert 0.0 <= from_zero <= 1.0
