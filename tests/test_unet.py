"""The UNet's contract: net(x, c) keeps x's shape, is trainable end to end, is conditioned on c,
and its dropout is random in training but reproducible under a fixed seed."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.nets import build_net
from benchmark.nets.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _time(num_cond: int, b: int = 2) -> torch.Tensor:
    c = torch.randn(b, num_cond)
    return c[:, 0] if num_cond == 1 else c


@pytest.mark.parametrize("num_cond", [1, 2])
@pytest.mark.parametrize("shape,mult,attn", [((1, 8, 8), (1, 2), ()), ((1, 8, 8), (1, 2, 2), (4,)),
                                             ((3, 16, 16), (1, 2), (8,)), ((3, 32, 32), (1, 2, 2), (16,))])
def test_output_shape_equals_input_shape(shape, mult, attn, num_cond):
    torch.manual_seed(0)
    net = UNet(shape[0], shape[1], model_channels=16, channel_mult=mult, attn_resolutions=attn,
               num_cond=num_cond)
    x = torch.randn(2, *shape)
    y = net(x, _time(num_cond))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_build_net_makes_a_unet_from_config():
    net = build_net({"type": "unet", "model_channels": 8, "channel_mult": [1, 2]}, (1, 8, 8), num_cond=2)
    assert isinstance(net, UNet)
    assert net(torch.randn(3, 1, 8, 8), torch.randn(3, 2)).shape == (3, 1, 8, 8)


def test_every_parameter_gets_a_gradient_including_the_first_conv():
    torch.manual_seed(0)
    net = UNet(1, 8, model_channels=8, channel_mult=(1, 2), attn_resolutions=(4,))
    net(torch.randn(2, 1, 8, 8), torch.randn(2)).square().mean().backward()
    assert net.conv_in.weight.grad.abs().sum() > 0
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_dropout_differs_between_train_calls_and_repeats_under_a_fixed_seed():
    torch.manual_seed(0)
    net = UNet(1, 8, model_channels=8, dropout=0.3).train()
    x, c = torch.randn(2, 1, 8, 8), torch.randn(2)
    torch.manual_seed(1)
    a, b = net(x, c), net(x, c)
    torch.manual_seed(1)
    a2 = net(x, c)
    assert not torch.allclose(a, b)
    assert torch.equal(a, a2)
    net.eval()
    assert torch.equal(net(x, c), net(x, c))  # no dropout at evaluation


@pytest.mark.parametrize("num_cond", [1, 2])
def test_different_time_input_gives_different_output(num_cond):
    torch.manual_seed(0)
    net = UNet(3, 16, model_channels=8, num_cond=num_cond).eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    c = torch.tensor([[0.0] * num_cond, [0.5] * num_cond])
    y = net(x, c[:, 0] if num_cond == 1 else c)
    assert (y[0] - y[1]).abs().max() > 1e-3
    if num_cond == 2:  # the second time input is used too
        y2 = net(x, torch.tensor([[0.0, 0.0], [0.0, 0.5]]))
        assert (y2[0] - y2[1]).abs().max() > 1e-3


def test_batch_elements_are_independent_in_eval():
    torch.manual_seed(0)
    net = UNet(1, 8, model_channels=8, attn_resolutions=(8, 4)).eval()
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    torch.testing.assert_close(net(x, c)[1:2], net(x[1:2], c[1:2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"img_resolution": 12},
                                    {"img_resolution": 4, "channel_mult": (1, 2, 2, 2)},
                                    {"img_resolution": 8, "attn_resolutions": (16,)}])
def test_impossible_geometry_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        UNet(1, **kwargs)
