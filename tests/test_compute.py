"""Compute accounting: measured FLOPs match hand formulas, call counting matches each sampler's
declared NFE, and sampling FLOPs are NFE x the forward cost."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from benchmark.compute import (
    DeviceTimer,
    PassCounter,
    TrainingPasses,
    count_flops,
    forward_flops,
    fwd_bwd_flops,
    hardware,
    training_flops,
)
from benchmark.nets.mlp import MLP
from benchmark.nets.unet import UNet
from methods.edm import EDM

pytestmark = pytest.mark.usefixtures("one_thread")


class Bare(nn.Module):
    """A layer with the `net(x, c)` signature that ignores c."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, c):
        return self.layer(x)


@pytest.mark.parametrize("cin,cout,k,stride,res", [(3, 16, 3, 1, 8), (4, 8, 3, 2, 16), (1, 5, 1, 1, 7)])
def test_conv_forward_flops_equal_2_cin_cout_k2_hout_wout(cin, cout, k, stride, res):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    h_out = (res + 2 * (k // 2) - k) // stride + 1
    assert forward_flops(Bare(conv), (cin, res, res)) == 2 * cin * cout * k * k * h_out * h_out


def test_linear_forward_flops_equal_2_in_out():
    assert forward_flops(Bare(nn.Linear(13, 7)), (13,)) == 2 * 13 * 7


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_fwd_bwd_of_linear_stack_is_3L_minus_1_over_L_times_forward(depth):
    # backward = grad_weight (2*in*out) per layer + grad_input (2*in*out) for all but the first
    # layer, whose input needs no gradient: (3L - 1)/L x forward, -> 3x for deep stacks.
    width = 16
    stack = Bare(nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)]))
    fwd, fwdbwd = forward_flops(stack, (width,)), fwd_bwd_flops(stack, (width,))
    assert fwd == depth * 2 * width * width
    assert fwdbwd * depth == (3 * depth - 1) * fwd


def test_unet_fwd_bwd_is_between_2x_and_3x_forward_and_leaves_grads_untouched():
    net = UNet(1, 8, model_channels=8, channel_mult=(1, 2), attn_resolutions=(4,))
    fwd, fwdbwd = forward_flops(net, (1, 8, 8)), fwd_bwd_flops(net, (1, 8, 8))
    assert 2 * fwd < fwdbwd <= 3 * fwd
    assert all(p.grad is None for p in net.parameters())


def test_flops_per_example_do_not_depend_on_measurement_batch():
    net = UNet(1, 8, model_channels=8, attn_resolutions=(8,))
    assert forward_flops(net, (1, 8, 8), batch=1) == forward_flops(net, (1, 8, 8), batch=3)
    mlp = MLP(dim=2, hidden=16, num_cond=2)
    assert fwd_bwd_flops(mlp, (2,), num_cond=2, batch=1) == fwd_bwd_flops(mlp, (2,), num_cond=2, batch=4)


def test_pass_counter_counts_calls_and_examples_split_by_grad_mode():
    net = MLP(dim=2, hidden=8)
    keys = set(net.state_dict())
    counter = PassCounter(net)
    net(torch.randn(5, 2), torch.randn(5))
    with torch.no_grad():
        net(torch.randn(3, 2), torch.randn(3))
        net(torch.randn(4, 2), torch.randn(4))
    assert (counter.calls, counter.grad_examples, counter.nograd_examples) == (3, 5, 7)
    counts = {"online_grad": counter.grad_examples, "online_nograd": counter.nograd_examples}
    assert training_flops(counts, fwd=10, fwdbwd=30) == 5 * 30 + 7 * 10
    with_teacher = training_flops(counts | {"teacher": 2}, fwd=10, fwdbwd=30, role_fwd={"teacher": 100})
    assert with_teacher == 5 * 30 + 7 * 10 + 2 * 100
    assert set(net.state_dict()) == keys  # a hook, not a wrapper: checkpoints keep their keys
    counter.remove()
    net(torch.randn(2, 2), torch.randn(2))
    assert counter.calls == 3


@pytest.mark.parametrize("solver", ["heun", "euler"])
@pytest.mark.parametrize("steps", range(1, 7))
def test_edm_sampler_calls_equal_declared_nfe_and_flops_equal_nfe_times_forward(solver, steps):
    torch.manual_seed(0)
    batch, dim = 4, 2
    method = EDM(total_steps=1, data_shape=(dim,), solver=solver)
    net = MLP(dim=dim, hidden=16).eval()
    counter = PassCounter(net)
    with torch.no_grad():
        flops = count_flops(lambda: method.sample(net, torch.randn(batch, dim), steps))
    assert counter.calls == method.nfe(steps)
    assert counter.nograd_examples == batch * method.nfe(steps)
    assert flops // batch == method.nfe(steps) * forward_flops(net, (dim,))


def test_edm_training_step_is_one_grad_pass_per_example():
    method = EDM(total_steps=1, data_shape=(2,))
    net = MLP(dim=2, hidden=16)
    fwd, fwdbwd = forward_flops(net, (2,)), fwd_bwd_flops(net, (2,))
    passes = TrainingPasses(net, None, method)
    rng = torch.Generator().manual_seed(0)

    def step():
        method.loss(net, torch.randn(8, 2), 0, rng).mean().backward()

    measured = count_flops(step)
    assert passes.counts() == {"online_grad": 8, "online_nograd": 0}
    assert training_flops(passes.counts(), fwd, fwdbwd) == measured


def test_device_timer_measures_wall_seconds():
    with DeviceTimer(num_devices=2) as t:
        time.sleep(0.05)
    assert 0.04 < t.seconds < 1.0
    assert t.device_seconds == pytest.approx(2 * t.seconds)
    assert t.device_hours == pytest.approx(t.device_seconds / 3600)
    assert isinstance(hardware(), str) and hardware()

