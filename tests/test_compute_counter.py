"""One compute counter for every network a training step evaluates (issue #12): the per-image FLOPs
of one training step equal the closed count of forward/backward passes each paper describes, and
an independent FlopCounterMode measurement of the same step."""

from __future__ import annotations

import pytest
import torch

from benchmark.compute import TrainingPasses, count_flops, forward_flops, fwd_bwd_flops, training_flops
from benchmark.nets import build_net
from benchmark.train_config import TrainConfig
from benchmark.train_step import make_optimizer, train_step
from methods.base import METHODS, build_method

# per example: (online forward+backward, online no-grad forwards, target-net forwards, teacher forwards)
PASSES = {
    "edm": (1, 0, 0, 0),     # denoising score matching: one pass, backpropagated
    "cd": (1, 0, 1, 2),      # student + target EMA at t_n + one Heun step of the teacher (2 forwards)
    "ct": (1, 0, 1, 0),      # student + target EMA
    "ict": (1, 1, 0, 0),     # student + stop-grad copy of itself (no EMA target)
    "mcm-cd": (1, 1, 0, 1),  # student + stop-grad student at s + one DDIM step of the teacher
    "mcm-ct": (1, 1, 0, 0),
    "ect": (1, 1, 0, 0),     # f(x_t) with grad + f(x_r) no-grad with the same dropout mask
    "pd": (1, 0, 0, 2),      # student + two DDIM steps of the teacher
    "imm": (1, 1, 0, 0),     # f(x_t, t, s) with grad + f(x_r, r, s) stop-grad
}
NET = {"type": "mlp", "hidden": 32, "depth": 2}
BATCH = 64


def test_every_method_has_a_pass_count():
    assert set(PASSES) == set(METHODS)


@pytest.mark.parametrize("name", sorted(PASSES))
def test_training_step_flops_match_the_closed_pass_count(name, one_thread):
    torch.manual_seed(0)
    m = build_method(name, {}, total_steps=100, data_shape=(2,))
    net = build_net(NET, (2,), m.num_cond)
    teacher = build_net(NET, (2,), 1).eval().requires_grad_(False) if m.teacher else None
    if m.init_from_teacher and teacher is not None and m.num_cond == 1:
        net.load_state_dict(teacher.state_dict())
    m.setup(net, teacher)
    fwd, fwdbwd = forward_flops(net, (2,), m.num_cond), fwd_bwd_flops(net, (2,), m.num_cond)
    t_fwd = forward_flops(teacher, (2,), 1) if teacher is not None else 0
    passes = TrainingPasses(net, teacher, m)  # after setup, as train_run does: target nets exist now
    cfg = TrainConfig(images=100 * BATCH, batch=BATCH, lr=1e-3)
    opt = make_optimizer(cfg, net.parameters())
    measured = count_flops(lambda: train_step(m, net, opt, torch.randn(512, 2), cfg, 5, 0))
    c = passes.counts()
    grad, nograd, target, teach = PASSES[name]
    assert c["online_grad"] == grad * BATCH and c["online_nograd"] == nograd * BATCH
    assert c.get("target", 0) == target * BATCH and c.get("teacher", 0) == teach * BATCH
    counted = training_flops(c, fwd, fwdbwd, {"teacher": t_fwd})
    assert counted == BATCH * (grad * fwdbwd + (nograd + target) * fwd + teach * t_fwd)
    assert counted == pytest.approx(measured, rel=1e-6)  # nothing evaluated escaped the counter
