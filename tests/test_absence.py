"""Absence classes: contrastive targets, the evidence check, and PCIM's fused step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attribution_models import BlindModel, SpotModel, small_cnn, spot_images
from napari_attribution.core.attribution.contrast import ContrastModel
from napari_attribution.core.attribution.evidence import EvidenceConfig, evidence_check
from napari_attribution.core.attribution.explain import explain
from napari_attribution.core.attribution.pcim import (
    PCIMConfig,
    _closed_form,
    _entropy,
    _target_loss,
    _tv,
    blend,
    make_substrate,
    mixing_weights,
    pcim_batch,
)
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_contrast_model_gradient_is_the_difference():
    model = _frozen(small_cnn(n_classes=4))
    x = torch.randn(3, 2, 16, 16)

    def grad(f):
        xi = x.clone().requires_grad_(True)
        return torch.autograd.grad(f(xi).sum(), xi)[0]

    g = grad(lambda xi: ContrastModel(model, 2, 0)(xi)[:, 1])
    ga = grad(lambda xi: model(xi)[:, 2])
    gb = grad(lambda xi: model(xi)[:, 0])
    assert torch.allclose(g, ga - gb, atol=1e-6)
    assert (g - ga).abs().max() > 0.1 * ga.abs().max()     # the contrast changes it
    # PCIM's losses on the wrapper: lse_margin = margin = z_B - z_A; ce = softplus(z_B - z_A)
    z = model(x)
    out = ContrastModel(model, 2, 0)(x)
    one = torch.ones(3, dtype=torch.long)
    for kind in ("lse_margin", "margin"):
        assert torch.allclose(_target_loss(out, one, kind), z[:, 0] - z[:, 2], atol=1e-5)
    assert torch.allclose(_target_loss(out, one, "ce"), F.softplus(z[:, 0] - z[:, 2]),
                          atol=1e-5)


def test_explain_contrast_ig_is_linear_and_pcim_follows_the_difference():
    model = small_cnn(n_classes=3)
    x = np.random.default_rng(1).normal(size=(4, 2, 16, 16)).astype(np.float32)

    def ig(**kw):
        return run_generator(explain(model, x, method="integrated_gradients", n_steps=16,
                                     device="cpu", **kw))

    both = ig(targets=2, contrast=1)
    diff = ig(targets=2).maps - ig(targets=1).maps
    np.testing.assert_allclose(both.maps, diff, atol=1e-4 * np.abs(diff).max())
    assert both.contrast == 1 and both.params["contrast"] == 1
    assert both.provenance()["contrast"] == 1
    # probabilities stay the model's own three-class ones
    assert both.probabilities.shape == (4, 3)
    np.testing.assert_allclose(both.probabilities.sum(1), 1, atol=1e-5)
    # per-image targets, grouped internally: same as explaining each group alone
    mixed = run_generator(explain(model, x, [0, 2, 0, 2], contrast=1, device="cpu",
                                  steps=3))
    alone = run_generator(explain(model, x[[1, 3]], 2, contrast=1, device="cpu", steps=3))
    np.testing.assert_allclose(mixed.maps[[1, 3]], alone.maps, atol=1e-5)
    # PCIM's first preservation step moves the logits against d(z_B - z_A)/d(logits)
    t = torch.as_tensor(x[:1])
    net = _frozen(small_cnn(n_classes=3))
    res = run_generator(explain(net, x[:1], 2, contrast=1, device="cpu", steps=1,
                                readout="weights"))
    lg = torch.zeros(1, 1, 16, 16, requires_grad=True)
    sub = make_substrate(t, "blur", 5.0)
    z = net(blend(t, mixing_weights([lg], (16, 16)), sub))
    (g,) = torch.autograd.grad((z[:, 1] - z[:, 2]).sum(), lg)
    expected = mixing_weights([-0.5 * g / g.abs().max()], (16, 16))
    np.testing.assert_allclose(res.maps[0], expected[0, 0].numpy(), rtol=1e-4, atol=1e-6)


def test_contrast_errors():
    model = small_cnn(n_classes=3)
    x = np.zeros((2, 2, 16, 16), np.float32)
    with pytest.raises(InputError, match="same class"):
        run_generator(explain(model, x, 1, contrast=1, device="cpu"))
    with pytest.raises(InputError, match="out of range"):
        run_generator(explain(model, x, 0, contrast=5, device="cpu"))
    with pytest.raises(InputError, match="one class index"):
        run_generator(explain(model, x, 0, contrast=[1, 2], device="cpu"))


def test_evidence_none_for_a_blind_model_localised_for_a_spot_model():
    x, masks = spot_images(n=4, size=24)
    blind = run_generator(explain(BlindModel(), x, 0, device="cpu", evidence=True, steps=4))
    assert blind.evidence["state"] == ["none"] * 4
    assert blind.no_evidence() == [0, 1, 2, 3]
    assert np.allclose(blind.evidence["gain"], 0, atol=1e-6)
    assert blind.provenance()["evidence"]["state"] == ["none"] * 4
    spot = run_generator(explain(SpotModel(), x, 1, device="cpu", evidence=True))
    assert spot.evidence["state"] == ["localised"] * 4
    assert min(spot.evidence["gain"]) > 0.3
    # the ground-truth mask as a map localises; a random map does not
    model = _frozen(SpotModel())
    truth = evidence_check(model, x, masks.astype(np.float32), np.ones(4, int))
    rand = evidence_check(model, x, np.random.default_rng(0).random((4, 24, 24)),
                          np.ones(4, int))
    assert truth["state"] == ["localised"] * 4
    assert rand["state"] == ["none"] * 4
    # not run unless asked (it costs forward passes)
    assert run_generator(explain(SpotModel(), x, 1, device="cpu", steps=2)).evidence is None


def test_evidence_config_checks():
    with pytest.raises(InputError, match="fractions"):
        EvidenceConfig(fractions=(0.0, 0.5))
    with pytest.raises(InputError, match="n_random"):
        EvidenceConfig(n_random=0)


def _objective(model, x, logits, substrate, targets, cfg, delete):
    """PCIM's per-image objective, by autograd through blend, softmax and regularisers."""
    h, w = x.shape[-2:]
    a = mixing_weights([-lg for lg in logits] if delete else logits, (h, w), cfg.max_weight)
    loss = _target_loss(model(blend(x, a, substrate)), targets, cfg.loss)
    loss = -loss if delete else loss
    if cfg.tv_weight:
        loss = loss + cfg.tv_weight * _tv(a)
    if cfg.sparsity_weight:
        loss = loss + cfg.sparsity_weight * _entropy(a)
    return loss


def _reference_pcim(model, x, targets, cfg: PCIMConfig, per_channel=False):
    """PCIM's step as written before the step was fused: autograd through everything."""
    b, c, h, w = x.shape
    cm = c if per_channel else 1
    substrate = make_substrate(x, cfg.substrate, cfg.blur_sigma)
    keep_sub = make_substrate(x, cfg.preserve_substrate or cfg.substrate, cfg.blur_sigma)
    logits = [torch.zeros(b, cm, math.ceil(h / s), math.ceil(w / s), requires_grad=True)
              for s in cfg.scales]
    active = torch.ones(b, dtype=torch.bool)
    prev = torch.ones(b, cm, h, w)
    losses = []
    opt = torch.optim.Adam(logits, lr=cfg.lr) if cfg.optimizer == "adam" else None
    for step in range(cfg.steps):
        delete = cfg.game == "hybrid" and step % 2 == 1
        loss_i = _objective(model, x, logits, substrate if delete else keep_sub, targets,
                            cfg, delete)
        grads = torch.autograd.grad(loss_i.sum(), logits)
        losses.append(float(loss_i.detach().mean()))
        with torch.no_grad():
            keep = active.view(b, 1, 1, 1).float()
            if opt is None:
                scale = torch.stack([g.flatten(1).abs().amax(1) for g in grads], 1).amax(1)
                scale = (cfg.lr / scale.clamp_min(1e-30)).view(b, 1, 1, 1) * keep
                for lg, g in zip(logits, grads, strict=True):
                    lg -= scale * g
            else:
                old = [lg.detach().clone() for lg in logits]
                for lg, g in zip(logits, grads, strict=True):
                    lg.grad = g
                opt.step()
                for lg, o in zip(logits, old, strict=True):
                    lg.copy_(keep * lg + (1 - keep) * o)
            a_new = mixing_weights(logits, (h, w), cfg.max_weight)
            change = (a_new - prev).abs().flatten(1).mean(1)
            prev = a_new
            if step + 1 >= cfg.min_steps:
                active &= change > cfg.tol
        if not bool(active.any()):
            break
    out = torch.log(prev.clamp_min(1e-30))
    return (out if per_channel else out[:, 0]), losses


@pytest.mark.parametrize("params", [{}, {"game": "preserve"}, {"scales": (1, 4)},
                                    {"max_weight": 5.0}, {"tol": 0.02, "steps": 12},
                                    {"loss": "margin"}, {"loss": "ce"}, {"loss": "logit"},
                                    {"optimizer": "adam"}, {"tv_weight": 0.3},
                                    {"sparsity_weight": 0.3}])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_fused_step_matches_the_reference(params, per_channel, n_classes):
    model = _frozen(small_cnn(n_classes=n_classes))
    x = torch.randn(3, 2, 20, 20, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2]) % n_classes
    cfg = PCIMConfig(**params)
    _assert_matches_reference(model, x, t, cfg, per_channel)


def _assert_matches_reference(model, x, t, cfg, per_channel=False):
    """pcim_batch gives the reference's losses (every step) and maps."""
    ref, ref_losses = _reference_pcim(model, x, t, cfg, per_channel)
    gen = pcim_batch(model, x, t, cfg, per_channel)
    losses = []
    try:
        while True:
            losses.append(next(gen).partial["loss"])
    except StopIteration as stop:
        got = stop.value
    assert len(losses) == len(ref_losses)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("params", [{}, {"tol": 0.02, "steps": 12}, {"loss": "ce"},
                                    {"optimizer": "adam"}])
def test_single_image_step_matches_the_reference(params):
    """Batch 1 takes its own route (the update's scale and the convergence check as
    Python numbers): same maps, losses and stopping step as the reference."""
    model = _frozen(small_cnn(n_classes=3))
    x = torch.randn(3, 2, 20, 20, generator=torch.Generator().manual_seed(0))
    cfg = PCIMConfig(**params)
    for i in range(3):
        _assert_matches_reference(model, x[i:i + 1], torch.tensor([i]), cfg)


class _PermutedGrad(torch.autograd.Function):
    """Identity whose input gradient comes back in (C, B, H, W) memory order (as a
    model that works channel by channel can return it): same values, not contiguous."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(0, 1).contiguous().transpose(0, 1)


class _ChannelMajor(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(_PermutedGrad.apply(x))


@pytest.mark.parametrize("params", [{}, {"scales": (1, 4)}, {"optimizer": "adam"}])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_non_contiguous_input_gradient_gives_the_same_map(params, per_channel, batch):
    inner = _frozen(small_cnn(n_classes=3))
    x = torch.randn(batch, 2, 20, 20, generator=torch.Generator().manual_seed(0))
    t = torch.arange(batch) % 3
    cfg = PCIMConfig(steps=4, **params)
    ref = run_generator(pcim_batch(inner, x, t, cfg, per_channel))
    got = run_generator(pcim_batch(_ChannelMajor(inner).eval(), x, t, cfg, per_channel))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params", [{}, {"loss": "ce"}, {"loss": "logit"}, {"loss": "margin"},
                                    {"scales": (1, 4)}, {"max_weight": 5.0},
                                    {"tv_weight": 0.3}, {"sparsity_weight": 0.3}])
@pytest.mark.parametrize(("n_classes", "per_channel"), [(2, False), (3, True)])
@pytest.mark.parametrize("phase", [0, 1, 2])
def test_step_gradient_matches_autograd(params, n_classes, per_channel, phase):
    """The step's gradient (only the model under autograd, the rest chained by hand or,
    with scales/cap/regularisers, by autograd through the weights) equals autograd
    through the whole objective, in each game, and so does its objective."""
    from napari_attribution.core.attribution.pcim import (
        _softmax_weights,
        _step_grads,
        _total_logits,
    )

    model = _frozen(small_cnn(n_classes=n_classes))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 20, 20, generator=gen)
    t = torch.tensor([0, 1, 2]) % n_classes
    cfg = PCIMConfig(**params)
    b, c, h, w = x.shape
    cm = c if per_channel else 1
    n = cm * h * w
    logits = [torch.randn(b, cm, math.ceil(h / s), math.ceil(w / s), generator=gen
                          ).requires_grad_(True) for s in cfg.scales]
    delete = phase == 1
    sub = make_substrate(x, "zero" if phase else "blur", cfg.blur_sigma)
    obj = _objective(model, x, logits, sub, t, cfg, delete)  # autograd through everything
    ref = torch.autograd.grad(obj.sum(), logits)
    # PCIM's step
    graph = not _closed_form(cfg)
    with torch.set_grad_enabled(graph):
        p = _softmax_weights(_total_logits(logits, (h, w)), cfg.max_weight, delete)
    p = p.reshape(b, n) if graph else p.detach().reshape(b, n)
    base = None if phase == 2 else sub
    grads, got_obj = _step_grads(model, logits, p, base, (x - sub) * n, t, cfg, delete,
                                 graph, {})
    assert len(grads) == len(ref)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g.view_as(r), r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))
        assert float(r.abs().max()) > 0
    assert got_obj == pytest.approx(float(obj.detach().sum()), rel=1e-5, abs=1e-5)


def test_cli_contrast_and_no_evidence_warning(tmp_path, capsys):
    from napari_attribution.cli import main
    from napari_attribution.io.writers import read_attribution_tiff

    model = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(small_cnn(n_classes=3)), str(model))
    img = tmp_path / "x.npy"
    np.save(img, np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32))
    assert main(["explain", str(model), str(img), "-t", "2", "--contrast", "1", "--trust-model",
                 "--param", "steps=3", "--device", "cpu", "-q"]) == 0
    maps, meta = read_attribution_tiff(tmp_path / "x.pcim.ome.tif")
    prov = meta["provenance"]
    assert prov["contrast"] == 1 and prov["targets"] == [2]
    assert prov["evidence"]["state"][0] in ("localised", "none")
    assert " vs " in capsys.readouterr().out
    assert main(["explain", str(model), str(img), "-t", "1", "--contrast", "1", "--trust-model",
                 "--device", "cpu", "-q", "--overwrite"]) == 1
    assert "same class" in capsys.readouterr().err
    blind = tmp_path / "blind.pt"
    torch.jit.save(torch.jit.script(BlindModel()), str(blind))
    assert main(["explain", str(blind), str(img), "--param", "steps=3", "--device", "cpu",
                 "--trust-model",
                 "-q", "-o", str(tmp_path / "b.ome.tif")]) == 0
    out = capsys.readouterr().out
    assert "evidence-none" in out and "no localised evidence" in out and "elsewhere" in out
    _, meta = read_attribution_tiff(tmp_path / "b.ome.tif")
    assert meta["provenance"]["evidence"]["state"] == ["none"]
    assert main(["explain", str(blind), str(img), "--no-evidence-check", "--device", "cpu",
                 "--trust-model",
                 "-q", "--param", "steps=3", "-o", str(tmp_path / "c.ome.tif")]) == 0
    assert "no localised evidence" not in capsys.readouterr().out


class _Seen(nn.Module):
    """Logit of class 1 = mean of channel 0; keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        s = (x[:, 0] ** 2).mean((1, 2)) + 0.0 * self.conv(x).mean()
        return torch.stack([torch.zeros_like(s), s], 1)


def test_hybrid3_third_game_keeps_on_black():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    x[..., :, :6] = 0.0          # a black band: blur is not zero there, zero is
    model = _frozen(_Seen())
    gen = pcim_batch(model, x, torch.tensor([1]), PCIMConfig(game="hybrid3", steps=6,
                                                               tol=0.0))
    for _ in gen:
        pass
    band = (..., slice(None), slice(0, 6))
    blur = make_substrate(x, "blur", 5.0)
    assert torch.allclose(model.seen[0], x)                          # uniform start
    assert model.seen[2][band].abs().max() == 0                      # on black
    assert model.seen[5][band].abs().max() == 0
    assert model.seen[3][band].abs().min() > 0.01 * blur[band].min()  # on the blur
    assert model.seen[1][band].abs().max() == 0                      # deletion: zero


@pytest.mark.parametrize("shape", [(2, 3, 20, 33), (1, 1, 2, 9), (1, 2, 64, 64)])
@pytest.mark.parametrize("sigma", [1.0, 5.0])
def test_matrix_blur_equals_padded_convolution(shape, sigma):
    from napari_attribution.core.attribution.pcim import gaussian_blur

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    radius = min(math.ceil(3 * sigma), shape[-1] - 1, shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    ref = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    torch.testing.assert_close(gaussian_blur(x, sigma), ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gaussian_blur(x, sigma), x, atol=1e-2)


def test_api_contrast_by_class_name(trained_cells, cell_data):
    import napari_attribution as na
    from napari_attribution.io.models import load_model

    names = list(load_model(trained_cells).class_names)
    res = na.explain(trained_cells, cell_data.images[:3], targets=names[1],
                     contrast=names[0], steps=2, device="cpu", evidence=True)
    assert res.contrast == 0 and list(res.targets) == [1, 1, 1]
    assert len(res.evidence["state"]) == 3
    with pytest.raises(InputError, match="contrast"):
        na.explain(trained_cells, cell_data.images[:1], targets=1, contrast=[0, 1],
                   device="cpu")


class _LoudSpot(SpotModel):
    """SpotModel with logits 20x larger: p(spots) is 1.0 whatever a few deletions do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 20


def test_evidence_sees_through_saturation_in_log_odds():
    x, masks = spot_images(n=4, size=24)
    model = _frozen(_LoudSpot())
    small = dict(fractions=(0.01, 0.02))          # deletes a few spot pixels at most
    truth = masks.astype(np.float32)
    ev = evidence_check(model, x, truth, np.ones(4, int), EvidenceConfig(**small))
    assert min(ev["p_min"]) > 0.999                 # p(target) never moves ...
    assert ev["state"] == ["localised"] * 4         # ... the log-odds do
    assert min(ev["gain"]) > 5
    # in probabilities the same deletions cannot tell: 'undetermined', with the reason
    prob = evidence_check(model, x, truth, np.ones(4, int),
                          EvidenceConfig(score="probability", **small))
    assert prob["state"] == ["undetermined"] * 4
    assert all("saturated" in r for r in prob["reason"])
    # the check as first written called them 'none'
    legacy = evidence_check(model, x, truth, np.ones(4, int),
                            EvidenceConfig(**{**EvidenceConfig.legacy().to_dict(), **small}))
    assert legacy["state"] == ["none"] * 4
    # a random map does not localise in log-odds either
    rand = evidence_check(model, x, np.random.default_rng(0).random((4, 24, 24)),
                          np.ones(4, int), EvidenceConfig(**small))
    assert "localised" not in rand["state"]


class _SureBlind(BlindModel):
    """Ignores the image; class 0 wins by 40 nats (p = 1.0 before and after anything)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 40 / 3


def test_evidence_undetermined_when_saturated_none_when_not():
    from napari_attribution.core.attribution.evidence import evidence_findings

    x, _ = spot_images(n=3, size=24)
    maps = np.random.default_rng(1).random((3, 24, 24)).astype(np.float32)
    sure = evidence_check(_frozen(_SureBlind()), x, maps, np.zeros(3, int))
    assert sure["state"] == ["undetermined"] * 3 and min(sure["p_min"]) > 0.99
    unsure = evidence_check(_frozen(BlindModel()), x, maps, np.zeros(3, int))
    assert unsure["state"] == ["none"] * 3          # p = 0.95: deletions could have shown it
    found = evidence_findings(sure)
    assert [(f.code, f.severity) for f in found] == [("evidence-undetermined", "note")]
    assert found[0].evidence["images"] == [0, 1, 2]
    found = evidence_findings(unsure)
    assert [(f.code, f.severity) for f in found] == [("evidence-none", "caution")]
    assert evidence_findings(None) == []
    # through explain: the result's findings and provenance carry them
    res = run_generator(explain(_SureBlind(), x, 0, device="cpu", evidence=True, steps=2))
    assert res.evidence["state"] == ["undetermined"] * 3 and res.no_evidence() == []
    assert [f["code"] for f in res.provenance()["findings"]] == ["evidence-undetermined"]


def test_evidence_nulls_and_substrates():
    x, masks = spot_images(n=4, size=24)
    model = _frozen(SpotModel())
    truth = masks.astype(np.float32)
    for kw in ({"null": "pixels"}, {"substrate": "blur", "blur_sigma": 3.0},
               {"substrate": "zero"}):
        ev = evidence_check(model, x, truth, np.ones(4, int), EvidenceConfig(**kw))
        assert ev["state"] == ["localised"] * 4, kw
    # the shifted null keeps the top mask's size and moves it by >= a quarter image
    from napari_attribution.core.attribution.evidence import deletion_masks

    m = deletion_masks(truth, EvidenceConfig(n_random=5))
    assert (m.sum(-1) == m[:, :1].sum(-1)).all()
    top = m[:, 0].reshape(4, 2, 24, 24)
    for r in range(1, 6):
        assert not (m[:, r].reshape(4, 2, 24, 24) & top).all()
    with pytest.raises(InputError, match="null"):
        EvidenceConfig(null="nope")
    with pytest.raises(InputError, match="substrate"):
        EvidenceConfig(substrate="nope")
    with pytest.raises(InputError, match="saturation"):
        EvidenceConfig(saturation=1.5)
