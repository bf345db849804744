"""The DCMIX mixing layer and classifier: maths, shapes, gradients, errors."""

import numpy as np
import pytest
import torch

from napari_attribution.core.channels.dcmix import ChannelMixing, DCMIXClassifier, ModelConfig
from napari_attribution.core.runtime.errors import InputError


def test_weights_are_convex_combination():
    layer = ChannelMixing(5, n_heads=3)
    with torch.no_grad():
        layer.logits.copy_(torch.randn(3, 5) * 4)
    w = layer.weights()
    assert w.shape == (3, 5)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(1), torch.ones(3))


def test_uniform_init_and_mixing_equals_weighted_sum():
    layer = ChannelMixing(4)
    torch.testing.assert_close(layer.weights(), torch.full((1, 4), 0.25))
    x = torch.rand(2, 4, 8, 9)
    with torch.no_grad():
        layer.logits.copy_(torch.tensor([[2.0, 0.0, -1.0, 0.5]]))
    w = layer.weights()[0]
    expected = (w[None, :, None, None] * x).sum(1, keepdim=True)
    torch.testing.assert_close(layer(x), expected)


def test_two_heads_specialise_from_distinct_init():
    layer = ChannelMixing(3, n_heads=2)
    assert not torch.allclose(layer.logits[0], layer.logits[1])


def test_gradients_reach_the_mixing_logits():
    model = DCMIXClassifier(ModelConfig(n_channels=3, n_classes=2))
    x = torch.rand(4, 3, 16, 16)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    g = model.mixing.logits.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # softmax gradients over one head sum to zero
    assert abs(g.sum().item()) < 1e-5


def test_entropy_is_one_for_uniform_and_small_for_peaked():
    layer = ChannelMixing(4)
    assert layer.entropy().item() == pytest.approx(1.0)
    with torch.no_grad():
        layer.logits.copy_(torch.tensor([[10.0, 0, 0, 0]]))
    assert layer.entropy().item() < 0.01


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
@pytest.mark.parametrize("size", [(17, 23), (64, 64)])
def test_any_input_size(backbone, size):
    model = DCMIXClassifier(ModelConfig(n_channels=2, n_classes=3, backbone=backbone,
                                        width=8)).eval()
    out = model(torch.rand(2, 2, *size))
    assert out.shape == (2, 3)


def test_without_mixing_backbone_takes_all_channels():
    model = DCMIXClassifier(ModelConfig(n_channels=4, n_classes=2, mixing=False))
    assert model.mixing_weights() is None
    assert model(torch.rand(1, 4, 16, 16)).shape == (1, 2)


def test_wrong_channel_count_is_a_clear_error():
    model = DCMIXClassifier(ModelConfig(n_channels=3, n_classes=2))
    with pytest.raises(InputError, match="expects.*3"):
        model(torch.rand(1, 2, 16, 16))


def test_unknown_backbone_and_single_class():
    with pytest.raises(InputError, match="unknown backbone"):
        DCMIXClassifier(ModelConfig(n_channels=3, n_classes=2, backbone="vgg"))
    with pytest.raises(InputError, match="two classes"):
        DCMIXClassifier(ModelConfig(n_channels=3, n_classes=1))


def test_mixing_overhead_is_a_handful_of_parameters():
    with_mix = DCMIXClassifier(ModelConfig(n_channels=6, n_classes=10))
    plain = DCMIXClassifier(ModelConfig(n_channels=6, n_classes=10, mixing=False))
    n = sum(p.numel() for p in with_mix.parameters())
    m = sum(p.numel() for p in plain.parameters())
    # the mixing layer adds C logits and the first conv shrinks from C to 1 input
    assert n - sum(p.numel() for p in with_mix.mixing.parameters()) < m
    assert with_mix.mixing.logits.numel() == 6
    assert np.isclose(with_mix.mixing_weights().sum().item(), 1.0)
