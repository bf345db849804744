"""Study checks: design warnings, shortcut check, class balance, honest ablation,
post-hoc importance, repeats and retraining, on known-answer traps."""

import json

import numpy as np
import pytest
import torch

from napari_attribution.core.channels.posthoc import posthoc_channel_importance
from napari_attribution.core.channels.training import (
    TrainConfig,
    balanced_order,
    class_weights,
    train_dcmix,
)
from napari_attribution.core.runtime.progress import run_generator
from napari_attribution.core.study.classification import (
    balanced_accuracy,
    class_balanced_mean,
    classification_report,
    stratified_bootstrap,
)
from napari_attribution.core.study.design import check_study_design
from napari_attribution.core.study.shortcut import shortcut_check
from napari_attribution.core.study.splits import grouped_split
from napari_attribution.core.study.traps import (
    make_batch_effect_trap,
    make_low_snr_trap,
    make_rare_class_trap,
)

FAST = dict(batch_size=32, device="cpu", width=8)


@pytest.mark.parametrize("seed", range(5))
def test_design_warning_fires_on_the_batch_effect_trap(seed):
    data = make_batch_effect_trap(n_images=80, size=16, seed=seed)
    design = check_study_design(data)
    codes = {f.code: f.severity for f in design.findings}
    assert codes.get("design-class-is-well") == "alarm", design.findings
    assert any("class and well coincide" in w for w in design.warnings)
    assert design.confounded


def test_design_check_is_quiet_on_a_good_design_and_counts_units():
    data = make_low_snr_trap(n_images=96, size=16, seed=0)
    design = check_study_design(data)
    assert design.warnings == [] and design.findings == []
    assert design.units_per_class["well"] == {"cytoplasmic": 3, "nuclear": 3}
    assert design.units_per_class["plate"] == {"cytoplasmic": 1, "nuclear": 1}


def test_design_check_flags_one_confined_class_imbalance_and_missing_validation():
    data = make_low_snr_trap(n_images=96, size=16, seed=0)
    data.metadata["well"] = np.where(data.labels == 1, "B01", data.metadata["well"])
    keep = np.flatnonzero((data.labels == 0) | (np.arange(len(data)) % 4 == 0))
    small = data.subset(keep)
    val = np.flatnonzero(small.labels == 0)[:5]
    found = {f.code: f for f in check_study_design(small, val).findings}
    assert found["design-class-single-well"].severity == "alarm"
    assert "nuclear come from a single well each" in found["design-class-single-well"].message
    # unequal classes are balanced by training: a note, not a warning
    assert found["class-imbalance"].severity == "note"
    assert found["class-not-validated"].severity == "caution"


def test_single_field_with_both_classes_is_not_called_a_confound():
    data = make_rare_class_trap(n_images=200, size=16, seed=0)
    found = {f.code: f for f in check_study_design(data).findings}
    assert "design-class-is-well" not in found and "design-class-single-well" not in found
    assert found["design-single-well"].severity == "caution"
    assert "single well (P1/A01)" in found["design-single-well"].message


@pytest.mark.parametrize("seed", range(3))
def test_shortcut_check_flags_the_brightness_confound(seed):
    from napari_attribution.core.study.design import unit_keys

    data = make_batch_effect_trap(n_images=160, size=24, seed=seed)
    tr, va = grouped_split(data.labels, data.groups, 0.25, seed)
    units = unit_keys(data)
    check = shortcut_check(data.images, data.labels, tr, va, data.channel_names,
                           units=units)
    assert "DNA" in check.flagged
    assert check.best_statistic("DNA")[1] >= 0.9
    (alarm,) = [f for f in check.findings if f.code == "shortcut-batch"]
    assert alarm.severity == "alarm" and "DNA" in alarm.evidence["channels"]
    assert "batch effect" in alarm.message and "class = well" in alarm.message
    # without the brightness step, DNA does not separate the classes
    data.images[data.labels == 1, 0] /= 2.2
    clean = shortcut_check(data.images, data.labels, tr, va, data.channel_names,
                           units=units)
    assert "DNA" not in clean.flagged
    assert clean.best_statistic("DNA")[1] < 0.8


def test_balanced_metrics():
    y = np.array([0] * 95 + [1] * 5)
    always_majority = np.zeros(100, int)
    assert balanced_accuracy(y, always_majority, 2) == pytest.approx(0.5)
    rep = classification_report(y, always_majority, ["a", "b"])
    assert rep["accuracy"] == pytest.approx(0.95)
    assert rep["per_class_recall"] == {"a": 1.0, "b": 0.0}
    assert rep["confusion_matrix"] == [[95, 0], [5, 0]]
    w = stratified_bootstrap(y, 50, seed=1)
    assert np.all(w[:, y == 1].sum(1) == 5) and np.all(w[:, y == 0].sum(1) == 95)
    correct = (always_majority == y).astype(float)
    assert np.allclose(class_balanced_mean(correct, y, w), 0.5)


def test_class_weights_and_balanced_order():
    y = np.array([0] * 90 + [1] * 10)
    w = class_weights(y, 3)
    assert w[0] == pytest.approx(100 / (2 * 90)) and w[1] == pytest.approx(100 / 20)
    assert w[2] == 0
    order = balanced_order(y, torch.Generator().manual_seed(0)).numpy()
    assert order.size == 100 and np.bincount(y[order]).tolist() == [50, 50]
    eq = np.array([0, 1] * 20)
    assert sorted(balanced_order(eq, torch.Generator().manual_seed(0)).tolist()) == \
        list(range(40))


def test_class_weights_change_the_training_loss():
    data = make_rare_class_trap(n_images=160, size=16, seed=1, rare_fraction=0.1)
    losses = {}
    for mode in ("weights", "none"):
        cfg = TrainConfig(epochs=1, class_balance=mode, shortcut_check=False,
                          posthoc_check=False, ablation_check=False, **FAST)
        losses[mode] = run_generator(train_dcmix(data, cfg)).history[0]["train_loss"]
    assert abs(losses["weights"] - losses["none"]) > 0.01


def test_balanced_training_finds_the_rare_class():
    data = make_rare_class_trap(n_images=600, size=24, seed=0)
    result = run_generator(train_dcmix(data, TrainConfig(epochs=6, seed=0, **FAST)))
    val = result.validation
    assert val["support"]["mitotic"] >= 3
    assert val["per_class_recall"]["mitotic"] is not None
    assert val["balanced_accuracy"] >= 0.8
    assert result.importance.ranking()[0] == "PH3"
    assert "class-imbalance" in {f.code for f in result.findings}


class _ReadsChannelOne(torch.nn.Module):
    """Class 1 iff channel 1 is brighter in the centre than at the edge; channel 0 and 2
    are never read."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x[:, 1, 4:12, 4:12].mean((1, 2)) - x[:, 1].mean((1, 2))
        return torch.stack([torch.zeros_like(c), self.scale * (c - 0.3)], 1)


def _centre_data(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0, 0.05, (n, 3, 16, 16)).astype(np.float32)
    x[y == 1, 1, 4:12, 4:12] += 1.0
    x[:, 2] += rng.uniform(0, 3, (n, 1, 1))  # bright but unread
    return x, y


@pytest.mark.parametrize("method", ["permutation", "feature_ablation"])
def test_posthoc_importance_on_a_model_with_a_known_answer(method):
    x, y = _centre_data()
    imp = posthoc_channel_importance(_ReadsChannelOne(), x, y, ["a", "b", "c"], method)
    assert imp.ranking()[0] == "b"
    assert imp.balanced_accuracy_drop[1] >= 0.4  # class 1 images lose their evidence
    assert imp.loss_interval[1, 0] > 0.5
    assert np.allclose(imp.loss_increase[[0, 2]], 0, atol=1e-6)
    assert np.allclose(imp.drop_interval[[0, 2]], 0, atol=1e-6)
    assert imp.baseline_balanced_accuracy == pytest.approx(1.0)


def test_ablation_is_absolute_with_intervals(trained_cells):
    imp = trained_cells.importance
    assert not hasattr(imp, "ablation_importance")
    drop, lo, hi = (imp.ablation_accuracy_drop, imp.ablation_drop_interval[:, 0],
                    imp.ablation_drop_interval[:, 1])
    assert np.all(lo <= drop + 1e-9) and np.all(drop <= hi + 1e-9)
    # absolute, not shares of a total: the drops need not sum to one
    assert abs(np.clip(drop, 0, None).sum() - 1) > 0.05
    row = imp.rows()[0]
    assert "ablation_importance" not in row and "ablation_drop_95_low" in row


def test_checks_are_stored_and_channels_json_has_warnings(tmp_path, capsys):
    from napari_attribution.cli import main
    from napari_attribution.io.bundle import load_bundle, save_training_result

    data = make_batch_effect_trap(n_images=96, size=16, seed=0)
    data.metadata["warnings"] = ["split warning from elsewhere"]
    result = run_generator(train_dcmix(data, TrainConfig(epochs=2, **FAST)))
    assert any("coincide" in w for w in result.warnings)
    assert result.shortcut is not None and "DNA" in result.shortcut.flagged
    assert result.check_seconds["shortcut_check"] < result.seconds
    codes = {f.code: f.severity for f in result.findings}
    assert codes["design-class-is-well"] == "alarm" and codes["shortcut-batch"] == "alarm"
    assert codes["data-warning"] == "caution"
    assert result.warnings == [f.message for f in result.findings if f.is_warning]
    path = save_training_result(tmp_path / "m", result)
    bundle = load_bundle(path)
    assert bundle.warnings == result.warnings
    assert "split warning from elsewhere" in bundle.warnings
    assert [f.code for f in bundle.findings] == [f.code for f in result.findings]
    assert bundle.provenance["findings"] == [f.as_dict() for f in result.findings]
    assert bundle.checks["validation"]["confusion_matrix"]
    assert main(["channels", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "alarm"
    assert all(set(w) == {"code", "severity", "message", "evidence"} for w in out["warnings"])
    assert {w["severity"] for w in out["warnings"]} <= {"alarm", "caution"}
    assert all(n["severity"] == "note" for n in out["notes"])
    assert any("coincide" in w["message"] for w in out["warnings"])
    assert out["balanced_accuracy"] == pytest.approx(result.val_balanced_accuracy)
    lo, hi = out["balanced_accuracy_95"]
    assert lo <= out["balanced_accuracy"] <= hi
    assert sum(out["held_out_per_class"].values()) == len(result.val_index)
    assert out["shortcut_check"]["flagged"] and out["posthoc_importance"]
    assert out["channel_verdict"]["sentence"] and len(out["channel_verdict"]["rows"]) == 2
    assert main(["channels", str(path)]) == 0
    text = capsys.readouterr().out
    assert "study verdict: ALARM" in text and "shortcut check" in text
    assert "channels the model needs" in text and "permutation drop" in text
    assert text.count("verdict: ") == 2  # the channel verdict and the study verdict


def test_repeats_and_retrain_check():
    from napari_attribution.core.channels.repeats import retrain_check, train_repeats

    data = make_batch_effect_trap(n_images=64, size=16, seed=0)
    cfg = TrainConfig(epochs=1, **FAST)
    res = run_generator(train_repeats(data, cfg, 3))
    rep = res.repeats
    assert rep["seeds"] == [0, 1, 2] and len(rep["overall"]) == 3
    assert np.allclose(rep["mean"], np.mean(rep["overall"], 0))
    assert all(lo <= m <= hi for lo, m, hi in zip(rep["min"], rep["mean"], rep["max"],
                                                  strict=True))
    rc = run_generator(retrain_check(data, cfg))
    assert rc["n_models"] == 5 and set(rc["alone"]) == {"DNA", "Marker"}
    assert set(rc["without"]) == {"DNA", "Marker"} and rc["seconds"] > 0


def test_cli_train_repeats_retrain_and_evaluate_channel_check(tmp_path, capsys):
    from napari_attribution.cli import main

    data = make_batch_effect_trap(n_images=48, size=16, seed=0)
    npz = tmp_path / "trap.npz"
    np.savez(npz, images=data.images, labels=data.labels, groups=data.groups,
             channel_names=np.array(data.channel_names), class_names=np.array(data.class_names))
    out = tmp_path / "m.safetensors"
    assert main(["train", "--npz", str(npz), "--epochs", "1", "--device", "cpu",
                 "--repeats", "2", "--retrain-check", "-q", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "over 2 training runs" in text and "retraining check" in text
    assert "balanced accuracy" in text and "confusion matrix" in text
    assert main(["channels", str(out), "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["importance_repeats"]["seeds"] == [0, 1]
    assert rep["retrain_check"]["n_models"] == 5 and rep["retrain_check"]["seconds"] > 0
    assert main(["evaluate", str(out), "--npz", str(npz), "--methods", "saliency",
                 "--metrics", "deletion", "-n", "24", "--channel-check", "--format", "json",
                 "--device", "cpu", "-q"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert [p["method"] for p in ev["posthoc_importance"]] == ["permutation",
                                                               "feature_ablation"]
    assert set(ev["dcmix_weights"]) == {"DNA", "Marker"}


def test_npz_wells_feed_the_design_check(tmp_path):
    from napari_attribution.core.runtime.errors import InputError
    from napari_attribution.io.training_data import load_npz

    data = make_batch_effect_trap(n_images=24, size=16, seed=0)
    path = tmp_path / "crops.npz"
    np.savez(path, images=data.images, labels=data.labels, groups=data.groups,
             well=data.metadata["well"], site=data.metadata["site"])
    loaded = load_npz(path)
    assert list(loaded.metadata["well"]) == list(data.metadata["well"])
    assert any("class and well coincide" in w for w in check_study_design(loaded).warnings)
    np.savez(path, images=data.images, labels=data.labels, well=np.array(["A01"]))
    with pytest.raises(InputError, match="one value per image"):
        load_npz(path)


def _readouts(weights, abl, perm, names=("Marker", "DNA", "Actin")):
    """A ChannelImportance and a permutation PosthocImportance with given weights and
    balanced-accuracy drops (intervals +-0.02, loss rise = drop)."""
    from napari_attribution.core.channels.importance import ChannelImportance
    from napari_attribution.core.channels.posthoc import PosthocImportance

    w = np.array([weights], np.float64)
    a, p = np.asarray(abl, float), np.asarray(perm, float)
    iv = lambda v: np.stack([v - 0.02, v + 0.02], 1)  # noqa: E731
    imp = ChannelImportance(channel_names=list(names), weights=w, head_effect=np.ones(1),
                            overall=w[0], ablation_accuracy_drop=a, ablation_loss_increase=a,
                            ablation_drop_interval=iv(a), ablation_loss_interval=iv(a))
    ph = PosthocImportance("permutation", list(names), p, iv(p), p, iv(p), 1.0, 0.1, 100)
    return imp, [ph]


def test_channel_verdict_agrees_shares_and_disagrees():
    from napari_attribution.core.channels.verdict import channel_verdict, format_verdict

    v = channel_verdict(*_readouts([0.9, 0.05, 0.05], [0.5, 0.0, 0.0], [0.45, 0.0, 0.0]))
    assert v.findings == [] and v.sentence.startswith("All readouts agree: the model needs "
                                                      "Marker")
    assert [r["needed"] for r in v.rows] == [True, False, False]
    # shared weights on which every readout agrees: a note naming both channels
    v = channel_verdict(*_readouts([0.55, 0.4, 0.05], [0.3, 0.28, 0.0], [0.3, 0.3, 0.0]))
    (f,) = v.findings
    assert f.code == "channels-shared" and f.severity == "note"
    assert f.evidence["needed"] == ["Marker", "DNA"]
    # the mitosis case: weights, ablation and permutation each name another channel
    v = channel_verdict(*_readouts([0.2, 0.1, 0.7], [0.1, 0.4, 0.05], [0.4, 0.1, 0.05],
                                   names=("DNA", "PH3", "Body")))
    (f,) = v.findings
    assert f.code == "channels-disagree" and f.severity == "caution"
    assert v.tops == {"weight": "Body", "ablation": "PH3", "permutation": "DNA"}
    text = format_verdict(v)
    assert text.count("verdict:") == 1 and "disagree" in text
    # weights alone (no check run): said so, not "no channel is needed"
    imp, _ = _readouts([0.9, 0.05, 0.05], [0.5, 0.0, 0.0], [0.5, 0.0, 0.0])
    imp.ablation_loss_increase = imp.ablation_accuracy_drop = None
    v = channel_verdict(imp, [])
    assert "no ablation or permutation check was run" in v.sentence and v.findings == []
