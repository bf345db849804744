"""Training engine: progress events, learning, recovery of the informative channel."""

import numpy as np
import pytest
import torch

from napari_attribution.core.channels.training import TrainConfig, train_dcmix
from napari_attribution.core.data.dataset import ImageSet
from napari_attribution.core.data.synthetic import make_multi_snr
from napari_attribution.core.runtime.errors import Cancelled, InputError
from napari_attribution.core.runtime.progress import Progress, run_generator
from napari_attribution.core.study.splits import grouped_split

FAST = dict(batch_size=32, device="cpu", width=8)


def test_training_yields_progress_and_lowers_the_loss(cell_data):
    events = []
    result = run_generator(train_dcmix(cell_data, TrainConfig(epochs=4, **FAST)),
                           events.append)
    assert all(isinstance(e, Progress) for e in events)
    assert events[0].step == 0 and events[-1].total == events[1].total
    epochs = [e.partial for e in events if "val_accuracy" in e.partial]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(np.isclose(sum(e["channel_weights"][0]), 1) for e in epochs)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert len(result.history) == 4


def test_informative_channel_is_recovered(trained_cells):
    imp = trained_cells.importance
    assert trained_cells.val_accuracy >= 0.9
    assert imp.ranking()[0] == "Marker"
    assert imp.as_dict()["Marker"] > 0.6
    # the ablation check agrees: removing Marker hurts, removing others does not
    drop = dict(zip(imp.channel_names, imp.ablation_accuracy_drop, strict=True))
    assert drop["Marker"] > 0.3
    assert max(drop["DNA"], drop["Membrane"], drop["Distractor"]) < 0.1


def test_multi_snr_ranking_follows_noise():
    from scipy.stats import spearmanr

    data = make_multi_snr(n_images=400, size=24, seed=3)
    result = run_generator(train_dcmix(data, TrainConfig(epochs=6, seed=3, **FAST)))
    sigma = np.array([np.inf if s is None else s for s in data.metadata["sigma"]])
    rho = spearmanr(-result.importance.overall, sigma).statistic
    assert rho >= 0.9
    assert result.importance.ranking()[0] == data.metadata["true_ranking"][0]


def test_same_seed_same_model_on_cpu(cell_data):
    small = cell_data.subset(np.arange(96))
    cfg = TrainConfig(epochs=2, seed=7, **FAST)
    a = run_generator(train_dcmix(small, cfg))
    b = run_generator(train_dcmix(small, cfg))
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                           strict=True):
        assert torch.equal(va, vb), k


def test_cancel_closes_the_generator(cell_data):
    gen = train_dcmix(cell_data, TrainConfig(epochs=50, progress_every=1, **FAST))
    seen = []
    with pytest.raises(Cancelled):
        run_generator(gen, seen.append, should_stop=lambda: len(seen) >= 3)
    assert len(seen) == 3
    with pytest.raises(StopIteration):
        next(gen)


def test_grouped_split_never_leaks_groups():
    labels = np.repeat([0, 1], 40)
    groups = np.repeat(np.arange(16), 5)
    tr, va = grouped_split(labels, groups, 0.25, seed=0)
    assert set(groups[tr]).isdisjoint(groups[va])
    assert set(labels[va]) == {0, 1}
    assert len(tr) + len(va) == 80


def test_split_with_too_few_groups_is_a_clear_error():
    with pytest.raises(InputError, match="groups"):
        grouped_split(np.array([0, 1]), np.array(["a", "a"]), 0.5)


_RNG = np.random.default_rng(0)


def _image_set(images, labels=None, **kw):
    labels = np.arange(len(images)) % 2 if labels is None else labels
    return ImageSet(images=images, labels=labels, **kw)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _image_set(np.full((4, 2, 8, 8), np.nan, np.float32)), "NaN"),
        (lambda: _image_set(np.zeros((0, 2, 8, 8), np.float32)), "empty"),
        (lambda: _image_set(np.zeros((4, 8, 8), np.float32)), "shape"),
        (lambda: _image_set(_RNG.random((4, 2, 8, 8)), np.zeros(4, int)), "one class"),
        (lambda: _image_set(_RNG.random((4, 2, 8, 8)), channel_names=["a"]),
         "1 channel names given for 2"),
        (lambda: _image_set(_RNG.random((4, 2, 8, 8)), labels=np.array([0, 1, 0])),
         "4 labels"),
    ],
)
def test_bad_input_is_named(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_constant_images_and_unknown_device_are_named():
    data = _image_set(np.ones((8, 2, 8, 8), np.float32))
    with pytest.raises(InputError, match="constant"):
        run_generator(train_dcmix(data, TrainConfig(epochs=1, device="cpu")))
    data = _image_set(_RNG.random((8, 2, 8, 8)).astype(np.float32))
    with pytest.raises(InputError, match="unknown device"):
        run_generator(train_dcmix(data, TrainConfig(epochs=1, device="tpu")))


def test_subset_slices_per_image_metadata():
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    data = make_cell_phenotype(n_images=10, size=24, seed=3)
    part = data.subset(np.array([7, 2]))
    assert part.metadata["nuclei"].shape == (2, 24, 24)
    np.testing.assert_array_equal(part.metadata["nuclei"][0], data.metadata["nuclei"][7])
    one = data.select_channels(["Marker"])
    assert one.channel_names == ["Marker"] and one.metadata["nuclei"].shape[0] == 10



def test_batchnorm_statistics_come_from_the_epoch():
    """Running statistics are the average over the epoch's batches, not PyTorch's 0/1
    start values moved 10 % a step: with those, a model that fitted its training images
    predicted one class on every validation image for the first ~50 steps."""
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.channels.training import _batchnorm_stats_per_epoch

    torch.manual_seed(0)
    model = DCMIXClassifier(ModelConfig(n_channels=3, n_classes=2, width=8)).train()
    model.backbone.features[0][1].running_var.fill_(7.0)  # stale, from a previous epoch
    batches = [0.1 * torch.rand(16, 3, 20, 20) for _ in range(3)]
    _batchnorm_stats_per_epoch(model)
    with torch.no_grad():
        for xb in batches:
            model(xb)
        conv = model.backbone.features[0][0]
        outs = [conv(model.mix(xb)) for xb in batches]
    bn = model.backbone.features[0][1]
    torch.testing.assert_close(bn.running_mean,
                               torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0))
    torch.testing.assert_close(bn.running_var,
                               torch.stack([o.var(dim=(0, 2, 3)) for o in outs]).mean(0),
                               rtol=1e-3, atol=1e-7)
    assert float(bn.running_var.max()) < 0.01  # far from the start value 1


def test_small_set_is_learned_not_stuck_at_chance():
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    data = make_cell_phenotype(n_images=160, size=32, seed=2)
    cfg = TrainConfig(epochs=6, device="cpu", width=16, ablation_check=False,
                      channel_dropout=0.0, entropy_weight=0.0, augment=False)
    result = run_generator(train_dcmix(data, cfg))
    assert result.history[-1]["train_loss"] < 0.2
    assert result.val_accuracy >= 0.9
    bns = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 and m.num_batches_tracked > 0 for m in bns)
