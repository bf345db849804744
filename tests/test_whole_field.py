"""Field PCIM: one scale across tiles, background tiles, one pass, batch size, OOM, AMP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from attribution_models import BlindModel, SpotModel, small_cnn
from napari_attribution.core.attribution import field as F
from napari_attribution.core.attribution.explain import explain
from napari_attribution.core.attribution.pcim import PCIMConfig
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator


class QuadSpot(nn.Module):
    """Class 1 grows with the squared channel-0 intensity: its gradient is proportional
    to the pixel's brightness, so dim noise carries little evidence and a bright spot much."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] ** 2).flatten(1).mean(1) * 50
        return torch.stack([torch.full_like(s, 1.0), s], 1)


class FixedSize(nn.Module):
    """A model that only takes its own input size (flatten + linear)."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side
        self.lin = nn.Linear(2 * side * side, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            raise RuntimeError("size mismatch")
        return self.lin(x.flatten(1))


def field_with_spots(h: int, w: int, spots, seed: int = 0, c: int = 2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, (c, h, w)).astype(np.float32)
    masks = []
    for y, xx in spots:
        x[0, y:y + 5, xx:xx + 5] += 0.9
        m = np.zeros((h, w), bool)
        m[y:y + 5, xx:xx + 5] = True
        masks.append(m)
    return x, masks


def test_window_and_background_tiles():
    win = F.window(32, 32, 8)
    assert win.shape == (32, 32) and win.min() > 0 and win.max() == 1.0
    np.testing.assert_allclose(win, win[::-1, ::-1])
    assert win[16, 16] == 1.0 and win[0, 16] < 0.1
    np.testing.assert_array_equal(F.window(16, 16, 0), 1.0)
    x, _ = field_with_spots(32, 128, [(14, 10)])
    grid = [(0, 0), (0, 32), (0, 64), (0, 96)]
    np.testing.assert_array_equal(F.background_tiles(x, grid, 32, 32),
                                  [False, True, True, True])
    assert not F.background_tiles(x, grid, 32, 32, None).any()
    # Pure noise (no spot) has nothing to call background.
    flat = np.random.default_rng(1).uniform(0, 0.2, (2, 32, 128)).astype(np.float32)
    assert F.background_tiles(flat, grid, 32, 32).sum() < 4


def test_empty_tiles_have_zero_evidence():
    x, masks = field_with_spots(32, 128, [(14, 10)])
    res = run_generator(explain(QuadSpot(), x[None], 1, device="cpu", input_size=32,
                                tile_overlap=0, tiling="field"))
    m = res.maps[0]
    assert res.params["background_tiles"] == [3] and res.params["tiles_per_image"] == [4]
    np.testing.assert_array_equal(m[:, 32:], 0.0)  # skipped: exactly no evidence
    assert m[masks[0]].mean() > 0.5
    # Without skipping, the noise tiles are explained but get no positive evidence
    # comparable to the spot (one scale for the field) ...
    res = run_generator(explain(QuadSpot(), x[None], 1, device="cpu", input_size=32,
                                tile_overlap=0, tiling="field", background=None))
    m = res.maps[0]
    assert res.params["background_tiles"] == [0]
    assert m[:, 32:].max() < 0.5 * m[masks[0]].max()
    # ... whereas per-tile normalisation gives every noise tile a spot-sized maximum.
    old = run_generator(explain(QuadSpot(), x[None], 1, device="cpu", input_size=32,
                                tile_overlap=0, tiling="per_tile")).maps[0]
    assert old[:, 32:].max() > 0.7 * old[masks[0]].max()


def test_same_spot_same_value_mid_tile_or_across_a_boundary():
    # Tiles of 32 overlapping 4 start at 0, 28, 56, 84, 96 (no fitted size: 33..36
    # holds no multiple of 16): spot A sits mid-tile, spot B straddles the edge at
    # x=60, spot C shares its tile with three others.
    spots = [(14, 40), (14, 58), (4, 100), (4, 112), (22, 100), (22, 112)]
    x, masks = field_with_spots(32, 128, spots)
    kw = dict(device="cpu", input_size=32, tile_overlap=4, background=None)
    res = run_generator(explain(QuadSpot(), x[None], 1, tiling="field", **kw))
    assert res.params["tile"] == [32, 32] and res.params["tiles_per_image"] == [5]
    new = res.maps[0]
    vals = np.array([new[m].mean() for m in masks])
    assert vals.min() > 0
    assert np.ptp(vals) / vals.mean() < 0.1, vals
    old = run_generator(explain(QuadSpot(), x[None], 1, tiling="per_tile", **kw)).maps[0]
    ov = np.array([old[m].mean() for m in masks])
    # per tile, the lone spot outscores the crowded ones (its tile's scale is its own)
    assert ov[0] > 1.2 * ov[2:].mean(), ov


def test_one_pass_when_the_model_takes_any_size_and_fits():
    x, _ = field_with_spots(40, 72, [(10, 10)])
    dev = torch.device("cpu")
    plan = F.plan_field(SpotModel(), x, 32, None, dev, memory_budget=1e9)
    assert plan.one_pass and plan.grid == [(0, 0)] and (plan.tile_h, plan.tile_w) == (40, 72)
    plan = F.plan_field(SpotModel(), x, 32, None, dev, memory_budget=1e3)
    assert not plan.one_pass and plan.tile_h == 32 and plan.overlap == 2
    plan = F.plan_field(FixedSize(32), x, 32, None, dev, memory_budget=1e12)
    assert not plan.one_pass and len(plan.grid) == 6
    with pytest.raises(InputError, match="does not accept"):
        F.plan_field(FixedSize(32), x, 32, None, dev, one_pass=True)
    res = run_generator(explain(FixedSize(32), x[None], 0, device="cpu", input_size=32))
    assert res.params["tiling"] == "field" and res.maps.shape == (1, 40, 72)


def test_batch_size_from_memory(monkeypatch):
    assert F.batch_for(100.0, 350.0, 64, 10) == 3
    assert F.batch_for(100.0, 50.0, 64, 10) == 1      # never below one
    assert F.batch_for(100.0, 1e9, 4, 10) == 4         # capped
    assert F.batch_for(100.0, 1e9, 64, 10) == 10       # no more than there are tiles
    monkeypatch.setattr(F, "free_memory_bytes", lambda dev: 10 * 2**30)
    assert F.memory_budget_for(torch.device("cuda")) == pytest.approx(
        F.GPU_MEMORY_FRACTION * 10 * 2**30)
    assert F.memory_budget_for(torch.device("cpu")) == F.CPU_DEFAULT_BUDGET
    monkeypatch.setattr(F, "free_memory_bytes", lambda dev: 2**20)
    assert F.memory_budget_for(torch.device("cpu")) == 2**20
    assert F.memory_budget_for(torch.device("cpu"), 5e8) == 5e8
    with pytest.raises(InputError):
        F.memory_budget_for(torch.device("cpu"), -1)
    # The planned batch follows the budget (CPU cap lifted for the test).
    monkeypatch.setattr(F, "CPU_MAX_BATCH", 64)
    x, _ = field_with_spots(32, 160, [(10, 10)])
    model = small_cnn(n_classes=2)
    one = F.plan_field(model, x, 32, 0, torch.device("cpu"), one_pass=False,
                       memory_budget=1e12)
    assert one.batch_size == 5
    two = F.plan_field(model, x, 32, 0, torch.device("cpu"), one_pass=False,
                       memory_budget=2.5 * one.bytes_per_tile)
    assert two.batch_size == 2


class OOMAbove(nn.Module):
    """Wraps a model; raises an out-of-memory error for batches larger than ``limit``."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_map():
    x, _ = field_with_spots(32, 256, [(10, 10), (14, 150)])
    dev = torch.device("cpu")
    model = small_cnn(n_classes=2)
    cfg = PCIMConfig(steps=4)
    plan = F.plan_field(model, x, 32, 0, dev, one_pass=False, background=None)
    plan.batch_size = 8
    tried: list[int] = []
    got = run_generator(F.pcim_field(OOMAbove(model, 2), x, 1, cfg, plan, dev,
                                     amp=False, on_batch=tried.append))
    assert tried[:3] == [8, 4, 2] and max(tried[3:]) == 2
    plan.batch_size = 2
    want = run_generator(F.pcim_field(model, x, 1, cfg, plan, dev, amp=False))
    np.testing.assert_allclose(got, want, atol=1e-5)
    plan.batch_size = 1
    with pytest.raises(InputError, match="out of memory"):
        run_generator(F.pcim_field(OOMAbove(model, 0), x, 1, cfg, plan, dev, amp=False))
    # Other errors are not mistaken for memory.
    assert not F.is_oom(RuntimeError("size mismatch")) and F.is_oom(MemoryError())


def test_mixed_precision_is_kept_only_where_it_agrees(monkeypatch):
    assert F.amp_dtype(torch.device("cpu"), False) is None
    assert F.amp_dtype(torch.device("cpu"), True) is torch.bfloat16
    assert F.amp_dtype(torch.device("cuda"), None) is torch.float16
    x, _ = field_with_spots(32, 64, [(10, 10)])
    dev = torch.device("cpu")
    model = small_cnn(n_classes=2)
    cfg = PCIMConfig(steps=3)
    plan = F.plan_field(model, x, 32, 0, dev, one_pass=False, background=None)
    ref = run_generator(F.pcim_field(model, x, 1, cfg, plan, dev, amp=False))
    monkeypatch.setattr(F, "AMP_MIN_COSINE", 1.01)  # nothing passes: float32 kept
    plan = F.plan_field(model, x, 32, 0, dev, one_pass=False, background=None)
    got = run_generator(F.pcim_field(model, x, 1, cfg, plan, dev, amp=True))
    assert plan.amp is False and plan.amp_check["ok"] is False
    np.testing.assert_allclose(got, ref, atol=1e-6)
    monkeypatch.setattr(F, "AMP_MIN_COSINE", -1.0)
    monkeypatch.setattr(F, "AMP_MAX_PROB_DIFF", 1.0)
    plan = F.plan_field(model, x, 32, 0, dev, one_pass=False, background=None)
    got = run_generator(F.pcim_field(model, x, 1, cfg, plan, dev, amp=True))
    assert plan.amp is True and np.isfinite(got).all()


def test_field_options_and_outputs():
    x, masks = field_with_spots(32, 80, [(10, 40)])
    res = run_generator(explain(SpotModel(), x[None], 1, device="cpu", input_size=32,
                                tiling="field", per_channel=True, readout="weights"))
    assert res.maps.shape == (1, 2, 32, 80) and (res.maps >= 0).all()
    assert res.params["map_scale"] == "field" and res.params["tile_overlap"] == 2
    with pytest.raises(InputError, match="tiling"):
        run_generator(explain(SpotModel(), x[None], 1, device="cpu", input_size=32,
                              tiling="sideways"))
    with pytest.raises(InputError, match="normalized"):
        run_generator(explain(SpotModel(), x[None], 1, device="cpu", input_size=32,
                              tiling="field", optimizer="adam"))
    with pytest.raises(InputError, match="background"):
        run_generator(explain(SpotModel(), x[None], 1, device="cpu", input_size=32,
                              background=2.0))
    # Other methods keep tiling per tile.
    res = run_generator(explain(SpotModel(), x[None], 1, method="saliency", device="cpu",
                                input_size=32))
    assert res.params["tiling"] == "per_tile"


def test_tiles_fitted_to_the_field_when_the_model_takes_any_size():
    # 2048 px with 256 px tiles overlapping 16: 9 per side; 8 of 272 cover it, every
    # origin a multiple of 16 (the model's pooling phase is the same in every tile).
    assert F.fitted_tile(2048, 256, 16) == 272
    starts = F.tile_starts(2048, 272, 16)
    assert len(starts) == 8 and all(s % 16 == 0 for s in starts)
    assert F.fitted_tile(1360, 256, 16) == 288 and F.fitted_tile(256, 256, 16) == 256
    assert F.fitted_tile(300, 256, 16) == 256        # one tile would need 300 > 288
    assert F.fitted_tile(280, 256, 16) == 280        # short axis: one tile, all of it
    assert F.fitted_tile(2048, 256, 16, growth=0.0) == 256
    assert F.fitted_tile(136, 32, 2) == 32           # 33..36 holds no multiple of 16
    x, _ = field_with_spots(144, 272, [(10, 10)])
    dev = torch.device("cpu")
    any_size = F.plan_field(SpotModel(), x, 128, 16, dev, one_pass=False)
    assert (any_size.tile_h, any_size.tile_w) == (144, 144)
    assert any_size.grid == [(0, 0), (0, 128)]
    assert any("144x144" in n for n in any_size.notes)
    fixed = F.plan_field(FixedSize(128), x, 128, 16, dev, one_pass=False)
    assert (fixed.tile_h, fixed.tile_w) == (128, 128) and len(fixed.grid) == 6


def test_channels_last_on_cpu_gives_the_same_map(monkeypatch):
    x, _ = field_with_spots(32, 96, [(10, 10), (12, 60)])
    dev = torch.device("cpu")
    model = small_cnn(n_classes=2)
    cfg = PCIMConfig(steps=3)
    maps = {}
    for flag in (False, True):
        monkeypatch.setattr(F, "CPU_CHANNELS_LAST", flag)
        plan = F.plan_field(model, x, 32, 4, dev, one_pass=False, background=None)
        maps[flag] = run_generator(F.pcim_field(model, x, 1, cfg, plan, dev, amp=False))
        assert plan.channels_last is (flag and torch.backends.mkldnn.is_available())
    np.testing.assert_allclose(maps[True], maps[False], atol=1e-4)


@pytest.mark.parametrize("per_channel", [False, True])
def test_closed_form_step_equals_autograd(monkeypatch, per_channel):
    # one background tile (left out of the softmax) and overlapping tiles
    x, _ = field_with_spots(32, 128, [(10, 10), (12, 40)])
    dev = torch.device("cpu")
    model = small_cnn(n_classes=2)
    cfg = PCIMConfig(steps=4, tol=0.0)
    maps = {}
    for closed in (True, False):
        monkeypatch.setattr(F, "CLOSED_FORM", closed)
        plan = F.plan_field(model, x, 32, 4, dev, one_pass=False)
        assert plan.background.sum() >= 1
        maps[closed] = run_generator(F.pcim_field(model, x, 1, cfg, plan, dev,
                                                  per_channel=per_channel, amp=False))
    assert np.abs(maps[False]).max() > 0.1
    np.testing.assert_allclose(maps[True], maps[False], atol=1e-4)


def test_hybrid3_field_matches_one_pass_and_leaves_background_at_zero():
    # QuadSpot's gradient is local (no border effects) and its logit a mean over the
    # input: tiles only rescale it uniformly, which the field's normalised step removes.
    # So the tiled map must equal the one-pass map, in all three games (the third
    # plays on a black background).
    spots = [(6, 20), (20, 58), (8, 90), (22, 120)]   # (20, 58) straddles a tile edge
    x, masks = field_with_spots(32, 160, spots)
    kw = dict(device="cpu", input_size=32, tile_overlap=4, game="hybrid3", steps=6)
    one = run_generator(explain(QuadSpot(), x[None], 1, tiling="one_pass", **kw))
    tiled = run_generator(explain(QuadSpot(), x[None], 1, tiling="field", background=None,
                                  **kw))
    assert one.params["tiling"] == "one_pass" and tiled.params["tiling"] == "field"
    assert tiled.params["tiles_per_image"][0] > 4
    np.testing.assert_allclose(tiled.maps[0], one.maps[0], atol=2e-3)
    vals = np.array([tiled.maps[0][m].mean() for m in masks])
    assert vals.min() > 0.5 and np.ptp(vals) / vals.mean() < 0.15, vals  # noise differs
    # hybrid3 is not hybrid: the black-background game changes the map
    hyb = run_generator(explain(QuadSpot(), x[None], 1, tiling="field", background=None,
                                **{**kw, "game": "hybrid"}))
    assert np.abs(hyb.maps[0] - tiled.maps[0]).max() > 1e-2
    # with background skipping, an empty stretch is exactly zero evidence
    x2, m2 = field_with_spots(32, 160, [(14, 10)])
    res = run_generator(explain(QuadSpot(), x2[None], 1, tiling="field", **kw))
    assert res.params["background_tiles"][0] >= 3
    np.testing.assert_array_equal(res.maps[0][:, 64:], 0.0)
    assert res.maps[0][m2[0]].mean() > 0.5


def test_evidence_check_on_tiled_fields():
    from napari_attribution.core.attribution.evidence import evidence_check, evidence_check_tiled

    x, masks = field_with_spots(32, 96, [(6, 10), (20, 70)])
    x[0] = np.clip(x[0], 0, 0.3) + np.stack(masks).any(0) * 0.8   # spots well above 0.5
    kw = dict(device="cpu", input_size=32, evidence=True, steps=4)
    for tiling in ("auto", "per_tile"):
        res = run_generator(explain(SpotModel(), x[None], 1, tiling=tiling, **kw))
        ev = res.evidence
        assert ev["state"] == ["localised"] and ev["tile"] == 32 and ev["tiles"] == 3
        assert ev["gain"][0] > 0.2 and res.no_evidence() == []
        assert res.provenance()["evidence"]["state"] == ["localised"]
    # a model blind to the image: nothing localises, tiled or not
    blind = run_generator(explain(BlindModel(), x[None], 1, **kw))
    assert blind.evidence["state"] == ["none"] and blind.no_evidence() == [0]
    # the truth localises, a random map does not; one tile = the untiled check
    model = SpotModel().eval()
    truth = np.stack(masks).any(0)[None].astype(np.float32)
    rand = np.random.default_rng(0).random((1, 32, 96)).astype(np.float32)
    assert evidence_check_tiled(model, x[None], truth, [1], 32)["state"] == ["localised"]
    assert evidence_check_tiled(model, x[None], rand, [1], 32)["state"] == ["none"]
    one = evidence_check_tiled(model, x[None, :, :, :32], truth[..., :32], [1], 32)
    ref = evidence_check(model, x[None, :, :, :32], truth[..., :32], np.array([1]))
    np.testing.assert_allclose(one["gain"], ref["gain"], atol=1e-5)




def test_fast_copy_moves_relus_behind_pooling_with_the_same_outputs_and_gradients():
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    torch.manual_seed(0)
    dcmix = DCMIXClassifier(ModelConfig(2, 3, width=8)).eval()
    plain = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    indexed = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, return_indices=True))
    assert F._relu_after_pool(indexed) == 0  # a pool returning indices keeps its ReLU
    x = torch.randn(2, 2, 37, 45)
    for model, moved in ((dcmix, 3), (plain, 1)):
        assert F._relu_after_pool(copy.deepcopy(model)) == moved
        fast = F.fast_copy(model)
        assert F._relu_after_pool(fast) == 0  # no ReLU left in front of a pool
        outs, grads = [], []
        for net in (model, fast):
            xi = x.clone().requires_grad_(True)
            out = net(xi)
            (g,) = torch.autograd.grad(out[:, 1].sum(), xi)
            outs.append(out.detach())
            grads.append(g)
        assert grads[0].abs().max() > 0
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 2, 1100, 600), (1, 1, 300, 700)])
def test_banded_blur_is_the_gaussian_blur(shape, monkeypatch):
    """The blur matrices' banded products equal the depthwise convolution."""
    from napari_attribution.core.attribution import pcim

    x = torch.rand(shape)
    monkeypatch.setattr(pcim, "_MATRIX_BLUR_MAX", 0)  # the convolution: the reference
    want = {sigma: pcim.gaussian_blur(x, sigma) for sigma in (2.0, 5.0)}
    monkeypatch.setattr(pcim, "_MATRIX_BLUR_MAX", 2048)
    monkeypatch.setattr(pcim, "BLUR_BLOCK", 128)  # several blocks on a small image
    for sigma, ref in want.items():
        torch.testing.assert_close(pcim.gaussian_blur(x, sigma), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_gradient_convolution_matches_autograd(channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 5, (3, 5), padding=(0, 2)).eval()
    assert F.InputGradConv2d.eligible(conv)
    assert not F.InputGradConv2d.eligible(nn.Conv2d(2, 5, 3, stride=2))
    assert not F.InputGradConv2d.eligible(nn.Conv2d(16, 5, 3))  # many inputs: oneDNN's
    fast = F.InputGradConv2d.of(conv).requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 2, 19, 23).contiguous(memory_format=fmt)
    gy = torch.randn(3, 5, 17, 23)
    grads = []
    for net in (conv, fast):
        xi = x.clone().requires_grad_(True)
        out = net(xi)
        assert out.shape == (3, 5, 17, 23)
        (g,) = torch.autograd.grad(out, xi, gy)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # reduced precision: float32 grad
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fast(xi).float().sum(), xi)
    assert g.dtype == torch.float32 and g.shape == x.shape


def test_provenance_counts_tile_passes_and_model_rewrites():
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    torch.manual_seed(0)
    model = DCMIXClassifier(ModelConfig(2, 2, width=8)).eval()
    x, _ = field_with_spots(48, 128, [(20, 10), (22, 100)])
    res = run_generator(explain(model, x[None], 1, device="cpu", input_size=32,
                                tile_overlap=4, tiling="field", steps=4, tol=0.0))
    p = res.params
    live = p["tiles_per_image"][0] - p["background_tiles"][0]
    assert p["steps_run"] == [4] and p["tile_passes"] == [4 * live] and live > 0
    assert p["model_rewrites"] == {"conv_bn_folded": 5, "relu_after_pool": 3,
                                   "input_grad_convs": 1}


def test_field_probabilities_are_the_mean_over_tiles_that_do_not_overlap():
    """Every pixel weighs the same in a field's probabilities (as in the evidence check),
    whatever the attribution tiles' overlap."""
    from napari_attribution.core.data.tiling import tile_grid

    torch.manual_seed(0)
    model = small_cnn().eval()
    x, _ = field_with_spots(48, 128, [(20, 10), (22, 100)])
    res = run_generator(explain(model, x[None], 1, device="cpu", input_size=32,
                                tile_overlap=8, tiling="field", steps=2))
    grid = tile_grid(48, 128, 32, 0)
    assert len(grid) == 2 * 4  # the last row overlaps the one before: 48 = 32 + 16
    with torch.no_grad():
        tiles = torch.stack([torch.from_numpy(x[:, y:y + 32, xx:xx + 32]) for y, xx in grid])
        want = torch.softmax(model(tiles), 1).mean(0).numpy()
    np.testing.assert_allclose(res.probabilities[0], want, rtol=1e-5, atol=1e-6)
    assert res.params["probability_tile_overlap"] == 0
