"""Gradient-free PCIM: where the map goes, what it costs, and that it needs no autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_attribution.core.attribution.pcim import make_substrate
from napari_attribution.core.attribution.pcim_blackbox import (
    BlackboxPCIMConfig,
    _gaussian,
    contrast,
    keep_total,
    modulation,
    pcim_blackbox_batch,
)
from napari_attribution.core.evaluation.metrics import relevance_mass
from napari_attribution.core.runtime.errors import InputError

REGION = (slice(8, 16), slice(16, 24))      # the only pixels the model reads: one 8 px cell


def _run(gen):
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        return stop.value, events


class RegionModel:
    """A plain callable (no nn.Module, no parameters): class 1's logit is the mean of
    channel 0 inside ``REGION``, computed in numpy (not differentiable). Records the
    batch sizes it sees and whether autograd was active."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.grad_seen: list[bool] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        self.grad_seen.append(torch.is_grad_enabled() or x.requires_grad)
        v = np.asarray(x[:, 0, REGION[0], REGION[1]].cpu()).reshape(x.shape[0], -1)
        z1 = torch.from_numpy(20.0 * (v.mean(1) - 0.3)).float()
        return torch.stack([torch.zeros_like(z1), z1], 1)


def _images(n: int = 3, size: int = 24, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(0.1, 0.6, (n, 2, size, size)).astype(np.float32))


def test_map_favours_the_only_region_the_model_reads():
    x = _images()
    model = RegionModel()
    maps, events = _run(pcim_blackbox_batch(model, x, torch.ones(3, dtype=torch.long),
                                            BlackboxPCIMConfig()))
    assert maps.shape == (3, 24, 24)
    inside = np.zeros((24, 24), bool)
    inside[REGION] = True
    area = inside.mean()                                 # 11 % of the image
    assert (relevance_mass(maps.numpy(), np.broadcast_to(inside, maps.shape)) > 3 * area).all()
    for m in maps.numpy():
        assert m[inside].mean() > m[~inside].mean() + 0.15
        top = np.argsort(m.ravel())[::-1][:inside.sum()]
        assert inside.ravel()[top].mean() > 2.5 * area   # chance: 1 x area
    assert len(events) == BlackboxPCIMConfig().steps


def test_forward_budget_is_respected_and_counted():
    x = _images(n=2)
    model = RegionModel()
    cfg = BlackboxPCIMConfig(samples=4, steps=10, max_forward=40, difference="central")
    assert len(cfg.plan(24, 24)) == 5                    # 40 // (2 * 4)
    _, events = _run(pcim_blackbox_batch(model, x, torch.ones(2, dtype=torch.long), cfg,
                                         batch_size=5))
    assert sum(model.calls) == 2 * 5 * 2 * 4 == 2 * cfg.forward_passes(24, 24)
    assert max(model.calls) <= 5                         # the forward batch size holds
    assert len(events) == 5 and events[-1].total == 5
    one_sided = RegionModel()                            # forward differences: K + 1 a step
    cfg = BlackboxPCIMConfig(samples=4, steps=10, max_forward=40)
    assert cfg.difference == "forward" and len(cfg.plan(24, 24)) == 8     # 40 // (4 + 1)
    _, events = _run(pcim_blackbox_batch(one_sided, x, torch.ones(2, dtype=torch.long), cfg,
                                         batch_size=7))
    assert sum(one_sided.calls) == 2 * 8 * 5 == 2 * cfg.forward_passes(24, 24)
    assert len(events) == 8 and max(one_sided.calls) <= 7
    free = RegionModel()
    _run(pcim_blackbox_batch(free, x, torch.ones(2, dtype=torch.long),
                             BlackboxPCIMConfig(samples=3, steps=4, difference="central")))
    assert sum(free.calls) == 2 * 4 * 2 * 3
    with pytest.raises(InputError, match="allows no step"):
        BlackboxPCIMConfig(samples=4, max_forward=4).plan(24, 24)        # needs 5
    with pytest.raises(InputError, match="max_forward"):
        BlackboxPCIMConfig(max_forward=1)


def test_grid_from_image_size_and_no_more_directions_than_logits():
    cfg = BlackboxPCIMConfig()                          # 16 cells across the shorter side
    assert cfg.coarse_shape(48, 48) == (16, 16) and cfg.coarse_shape(48, 96) == (16, 32)
    assert cfg.coarse_shape(28, 28) == (14, 14)         # 2 px cells: 14 cover 28 px
    assert BlackboxPCIMConfig(cell=4).coarse_shape(28, 28) == (7, 7)
    assert cfg.plan(28, 28) == [(1, 196), (1, 196)] and cfg.forward_passes(28, 28) == 394
    assert cfg.forward_passes(48, 96) == 514            # 512 logits, still 256 directions
    before = BlackboxPCIMConfig(grid=7, samples=49, sigma=0.02)   # the default until 24
    assert before.coarse_shape(28, 28) == (7, 7) and before.forward_passes(28, 28) == 100
    old = BlackboxPCIMConfig(grid=5, samples=25)
    assert old.coarse_shape(28, 28) == (5, 5) and old.forward_passes(28, 28) == 52
    wide = BlackboxPCIMConfig(samples=16, steps=4, levels=2, grid=3, difference="central")
    assert wide.plan(24, 24) == [(2, 4), (2, 4), (1, 9), (1, 9)]   # 2x2, then 3x3 logits
    model = RegionModel()
    _run(pcim_blackbox_batch(model, _images(n=2), torch.ones(2, dtype=torch.long), wide))
    assert sum(model.calls) == 2 * 2 * (4 + 4 + 9 + 9)


def test_orthogonal_directions_have_equal_lengths_so_a_full_set_is_exact():
    gen = torch.Generator().manual_seed(0)
    eps = _gaussian(gen, 2, 9, 9, orthogonal=True)       # (B, K, d), K = d
    assert torch.allclose(eps @ eps.transpose(1, 2), 9 * torch.eye(9).expand(2, 9, 9),
                          atol=1e-4)
    # The antithetic estimate of a linear function's gradient is then exact.
    g = torch.randn(9)
    est = ((eps @ g)[..., None] * eps).sum(1) / 9        # sigma cancels for a linear loss
    assert torch.allclose(est, g.expand(2, 9), atol=1e-4)
    iid = _gaussian(gen, 2, 9, 9, orthogonal=False)
    assert not torch.allclose(((iid @ g)[..., None] * iid).sum(1) / 9, g.expand(2, 9),
                              atol=0.1)


def test_no_autograd_graph_and_the_callers_grad_mode_is_left_alone():
    x = _images(n=2).requires_grad_(True)
    model = RegionModel()
    gen = pcim_blackbox_batch(model, x, torch.ones(2, dtype=torch.long),
                              BlackboxPCIMConfig(steps=2))
    next(gen)
    assert torch.is_grad_enabled()                       # between steps: the caller's mode
    maps, _ = _run(gen)
    assert model.grad_seen and not any(model.grad_seen)
    assert not maps.requires_grad and maps.grad_fn is None
    assert not maps.is_inference()                       # usable (in place) by the caller
    maps += 1


def test_seeded_directions_and_contrast_modulation():
    x = _images(n=2)
    x[:, :, :, :3] = 0.0                                 # equal to the zero substrate ...
    t = torch.ones(2, dtype=torch.long)
    cfg = BlackboxPCIMConfig(substrate="zero", preserve_substrate="zero", samples=4,
                             modulate="excess", grid=5)
    a, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, cfg))
    b, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, cfg))
    c, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, BlackboxPCIMConfig(
        substrate="zero", preserve_substrate="zero", samples=4, seed=1, modulate="excess",
        grid=5)))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # ... so no blend can change those pixels: their logit stays 0, one shared value.
    edge = a[:, :, :3]
    assert torch.allclose(edge, edge[:, :1, :1].expand_as(edge))
    plain, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, BlackboxPCIMConfig(
        substrate="zero", preserve_substrate="zero", modulate="none")))
    assert plain[:, :, :3].std() > 0                     # the coarse field alone varies


def test_deletion_modulation_ties_pixels_equal_to_the_zero_substrate():
    x = _images(n=2)
    x[:, :, :, :6] = 0.0          # zero = the deletion substrate; the blur is not zero here
    t = torch.ones(2, dtype=torch.long)
    cfg = BlackboxPCIMConfig(modulate="deletion", power=0.75)
    assert (cfg.substrate, cfg.preserve_substrate) == ("zero", "blur")
    a, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, cfg))
    edge = a[:, :, :6]            # deletion cannot change them: logit 0, one shared value
    assert torch.allclose(edge, edge[:, :1, :1].expand_as(edge))
    both, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, BlackboxPCIMConfig(
        modulate="contrast", power=1.0)))
    assert both[:, :, :6].std() > 1e-3          # the blurred substrate's halo varies
    keep = make_substrate(x, "blur", 5.0)
    m = modulation(x, torch.zeros_like(x), keep, "deletion", 0.5)
    assert torch.allclose(m, contrast(x, [torch.zeros_like(x)]).sqrt())
    assert (m[:, :, :, :6] == 0).all() and m[:, :, :, 6:].min() > 0
    assert torch.equal(modulation(x, torch.zeros_like(x), keep, "none", 0.5),
                       torch.ones(2, 1, 24, 24))


def test_default_map_has_no_image_prior_and_the_excess_prior_is_opt_in():
    """Default: the map is the model's coarse field, nothing from the image (issue 24:
    the excess prior made maps survive model randomisation)."""
    cfg = BlackboxPCIMConfig()
    assert cfg.modulate == "none"
    x = _images(n=2)
    a, _ = _run(pcim_blackbox_batch(RegionModel(), x, torch.ones(2, dtype=torch.long), cfg))
    x2 = x.clone()
    x2[:, 1] += torch.rand(2, *x.shape[2:])   # texture in the channel the model ignores
    b, _ = _run(pcim_blackbox_batch(RegionModel(), x2, torch.ones(2, dtype=torch.long), cfg))
    assert torch.equal(a, b)                  # the map follows the model only
    prior = BlackboxPCIMConfig(modulate="excess")
    a, _ = _run(pcim_blackbox_batch(RegionModel(), x, torch.ones(2, dtype=torch.long), prior))
    b, _ = _run(pcim_blackbox_batch(RegionModel(), x2, torch.ones(2, dtype=torch.long), prior))
    assert not torch.allclose(a, b, atol=0.05)   # the image prior paints the texture in


def test_excess_modulation_when_asked():
    cfg = BlackboxPCIMConfig(modulate="excess", grid=5, samples=25)
    assert (cfg.modulate, cfg.power, cfg.blur_sigma) == ("excess", 0.5, 5.0)
    x = _images(n=2)
    x[:, :, :, :6] = 0.0          # dark next to bright: below its blur, no excess ...
    a, _ = _run(pcim_blackbox_batch(RegionModel(), x, torch.ones(2, dtype=torch.long), cfg))
    m = modulation(x, x, x, "excess", 1.0, blur_sigma=5.0)
    assert (m[:, 0, :, :6] == 0).all()
    edge = a[:, :, :6]            # ... so logit 0 there, one shared value
    assert torch.allclose(edge, edge[:, :1, :1].expand_as(edge))


def test_bad_options_are_refused_clearly():
    with pytest.raises(InputError, match="levels >= 1"):
        BlackboxPCIMConfig(levels=0)
    with pytest.raises(InputError, match="grid >= 1"):
        BlackboxPCIMConfig(grid=0)
    with pytest.raises(InputError, match="power must be positive"):
        BlackboxPCIMConfig(power=0.0)
    with pytest.raises(InputError, match="unknown modulate"):
        BlackboxPCIMConfig(modulate="edges")
    with pytest.raises(InputError, match="unknown normalise"):
        BlackboxPCIMConfig(normalise="sum")
    with pytest.raises(InputError, match="unknown difference"):
        BlackboxPCIMConfig(difference="backward")
    with pytest.raises(InputError, match="unknown black-box PCIM parameter"):
        BlackboxPCIMConfig.from_params({"coarse": 2})
    with pytest.raises(InputError, match="pixel maps only"):
        _run(pcim_blackbox_batch(RegionModel(), _images(1), torch.ones(1, dtype=torch.long),
                                 BlackboxPCIMConfig(), per_channel=True))


def _exact_first_step(net, x: torch.Tensor, t: torch.Tensor,
                      cfg: BlackboxPCIMConfig) -> torch.Tensor:
    """The first step's map (log-weights, (B, H, W)) from the exact gradient of the
    preservation game's loss w.r.t. a 3 x 3 grid of coarse logits on 24 px images
    (autograd through the same parameterisation), normalised as black-box PCIM steps."""
    from torch.nn import functional as F

    from napari_attribution.core.attribution.pcim import _target_loss, blend, mixing_weights

    keep = make_substrate(x, "blur", cfg.blur_sigma)
    mod = modulation(x, torch.zeros_like(x), keep, cfg.modulate, cfg.power, cfg.blur_sigma)
    c = torch.zeros(x.shape[0], 1, 3, 3, requires_grad=True)
    lg = F.interpolate(c, size=(24, 24), mode="bilinear", align_corners=False) * mod
    loss = _target_loss(net(blend(x, mixing_weights([lg], (24, 24)), keep)), t, cfg.loss)
    (g,) = torch.autograd.grad(loss.sum(), c)
    step = -cfg.lr * g / g.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    lg = F.interpolate(step, size=(24, 24), mode="bilinear", align_corners=False) * mod
    return torch.log(mixing_weights([lg], (24, 24)))[:, 0].detach()


def test_one_sided_and_central_estimates_agree_with_autograd_on_the_field():
    """With K = d directions both finite differences recover the gradient of the loss with
    respect to the coarse logits (here of a differentiable model, checked by autograd):
    the first step's update is the normalised gradient, whatever the difference."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 5, padding=2), torch.nn.Tanh(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 24 * 24, 2))
    x, t = _images(n=2, seed=3), torch.ones(2, dtype=torch.long)
    base = dict(steps=1, grid=3, samples=9, lr=0.1, sigma=0.005)
    maps = {d: _run(pcim_blackbox_batch(net, x, t, BlackboxPCIMConfig(**base, difference=d)))[0]
            for d in ("forward", "central")}
    exact = _exact_first_step(net, x, t, BlackboxPCIMConfig(**base))
    for d, m in maps.items():
        assert torch.allclose(m, exact, atol=2e-3), d
    assert not torch.allclose(maps["forward"], torch.zeros_like(exact), atol=1e-2)


def _spots(n: int = 2, size: int = 24) -> torch.Tensor:
    """Dark images (0.05) with a bright 4 x 4 spot (1.0) in channel 0 at (6..10, 14..18)."""
    x = torch.full((n, 2, size, size), 0.05)
    x[:, 0, 6:10, 14:18] = 1.0
    return x


def test_excess_modulation_is_zero_on_the_dark_side_of_edges():
    x = _spots()
    m = modulation(x, torch.zeros_like(x), make_substrate(x, "blur", 2.0), "excess", 1.0,
                   blur_sigma=2.0)
    assert m.shape == (2, 1, 24, 24)
    assert torch.allclose(m.flatten(1).mean(1), torch.ones(2))           # mean one
    assert m[:, :, 6:10, 14:18].min() > 1.0                               # the spot
    ring = torch.zeros(24, 24, dtype=torch.bool)
    ring[3:13, 11:21] = True
    ring[6:10, 14:18] = False
    assert (m[:, 0][:, ring] == 0).all()           # the halo: darker than its blur
    assert (m[:, 0, :2, :2] == 0).all()            # the flat background: no excess
    # "contrast" (to zero and to the blur) lifts that halo; "excess" does not.
    c = modulation(x, torch.zeros_like(x), make_substrate(x, "blur", 2.0), "contrast", 1.0)
    assert c[:, 0][:, ring].min() > 0
    sq = modulation(x, torch.zeros_like(x), x, "excess", 0.5, blur_sigma=2.0)
    assert torch.allclose(sq, m.sqrt())
    flat = torch.full((1, 2, 24, 24), 0.3)                                # nothing stands out
    assert torch.equal(modulation(flat, flat, flat, "excess", 0.75), torch.ones(1, 1, 24, 24))


def test_excess_map_ties_the_halo_and_ranks_what_the_model_reads_first():
    """Under ``modulate="excess"`` every pixel without excess keeps logit 0 (one shared
    value); the textured pixels the model reads outrank a brighter spot it ignores."""
    x = torch.full((2, 2, 24, 24), 0.05)
    x[:, 0, 1:5, 1:5] = 0.6                          # a distractor, far from REGION
    noise = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:, 0, 8:16, 16:24] += 0.4 * noise              # texture inside REGION
    t = torch.ones(2, dtype=torch.long)
    cfg = BlackboxPCIMConfig.from_params({"modulate": "excess", "blur_sigma": 2.0})
    assert cfg.to_dict()["modulate"] == "excess"
    maps, _ = _run(pcim_blackbox_batch(RegionModel(), x, t, cfg))
    zero = modulation(x, x, x, "excess", 1.0, blur_sigma=2.0)[:, 0] == 0
    assert zero.sum() > 300
    for i in range(2):
        assert maps[i][zero[i]].std() < 1e-6                  # tied: logit 0
        read = torch.zeros(24, 24, dtype=torch.bool)
        read[REGION] = True
        read &= ~zero[i]
        spot = torch.zeros(24, 24, dtype=torch.bool)
        spot[1:5, 1:5] = True
        assert maps[i][read].mean() > maps[i][spot].max()
        assert maps[i][spot].max() < maps[i][zero[i]][0]      # pushed below the tie


@pytest.mark.parametrize("modulate", ["excess", "deletion"])
def test_forward_estimate_matches_autograd_for_each_modulation(modulate):
    """K = d directions: the first step equals the exact normalised gradient step through
    the same parameterisation, for the excess modulation as for the deletion contrast."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 5, padding=2), torch.nn.Tanh(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 24 * 24, 2))
    x, t = _images(n=2, seed=4), torch.ones(2, dtype=torch.long)
    cfg = BlackboxPCIMConfig(steps=1, grid=3, samples=9, lr=0.1, sigma=0.005,
                             modulate=modulate)
    got, _ = _run(pcim_blackbox_batch(net, x, t, cfg))
    exact = _exact_first_step(net, x, t, cfg)
    assert torch.allclose(got, exact, atol=2e-3)
    assert exact.std() > 1e-2                       # the step moved the map


def test_coarse_grid_on_large_images_is_warned_about():
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.core.runtime.progress import run_generator

    cfg = BlackboxPCIMConfig()
    assert cfg.coarseness_warning(48, 48) is None          # the tuned scale: 3 px/logit
    assert cfg.coarseness_warning(384, 384) is None        # 24 px per logit: the limit
    msg = cfg.coarseness_warning(640, 640)
    assert "16 x 16 logits span 40 px" in msg and "grid=40, samples=1600" in msg
    assert "3202 forward passes per image instead of 514" in msg
    assert "from the image itself" not in msg
    assert "from the image itself" in BlackboxPCIMConfig(
        modulate="excess").coarseness_warning(640, 640)
    assert BlackboxPCIMConfig(cell=8).coarseness_warning(640, 640) is None
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).eval()
    x = np.random.default_rng(0).random((1, 2, 200, 200), dtype=np.float32)
    res = run_generator(explain(model, x, 1, method="pcim_blackbox", device="cpu",
                                samples=4, grid=7))                    # 29 px cells
    assert len(res.warnings) == 1 and res.provenance()["warnings"] == res.warnings
    small = run_generator(explain(model, x[..., :40, :40], 1, method="pcim_blackbox",
                                  device="cpu", samples=4))
    assert small.warnings == []


def test_contrast_keeping_weights_hold_the_total_contrast_and_still_find_the_region():
    """``normalise="contrast"`` rescales each candidate's weights so that the blend keeps
    the image's total contrast to the substrate (a flat image is left alone); the map
    still favours the only region the model reads, at the same cost."""
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.uniform(0.0, 3.0, (2, 1, 6, 6)).astype(np.float32))
    c = torch.from_numpy(rng.uniform(0.0, 1.0, (2, 1, 6, 6)).astype(np.float32))
    c[1] = 0.0
    out = keep_total(a, c)
    assert torch.allclose((out[0] * c[0]).sum(), c[0].sum(), rtol=1e-5)
    assert not torch.allclose((a[0] * c[0]).sum(), c[0].sum(), rtol=1e-2)
    assert torch.equal(out[1], a[1])                       # no contrast: unchanged
    x, t = _images(), torch.ones(3, dtype=torch.long)
    cfg = BlackboxPCIMConfig(normalise="contrast")
    model = RegionModel()
    maps, _ = _run(pcim_blackbox_batch(model, x, t, cfg))
    inside = np.zeros((24, 24), bool)
    inside[REGION] = True
    for m in maps.numpy():
        assert m[inside].mean() > m[~inside].mean() + 0.1
    assert sum(model.calls) == 3 * cfg.forward_passes(24, 24)
