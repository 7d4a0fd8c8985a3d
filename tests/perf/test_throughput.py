"""Throughput of our training step and sampler against bare-PyTorch baselines (pytest-benchmark).

Run: `pytest tests/perf -m perf` (deselected by default). Uses CUDA when available, and then
also larger images. Each round runs the baseline(s) first (inside pedantic's untimed `setup`,
timed here with DeviceTimer) and then ours (timed by pytest-benchmark), so both see the same
machine load. Ratios (baseline time / our time, >1 means ours is faster) compare the fastest
rounds and land in `extra_info`, hence in the saved JSON (--benchmark-json).

Baselines:
- training: (a) the same UNet with a plain MSE step (no EDM sigma sampling, preconditioning or
  weighting): the ratio is our method/loss overhead, ~1 expected; (b) a hand-written minimal
  conv net with plain MSE at the same batch and resolution: a floor on what a step can cost.
- sampling: the same UNet called nfe times in a bare no-grad loop: the ratio is the sampler's
  overhead (Karras grid, Heun algebra, preconditioning), ~1 expected.
Achieved GFLOP/s (FlopCounterMode convention, benchmark.compute) put ours and (b) on one scale.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.compute import DeviceTimer, forward_flops, fwd_bwd_flops, hardware
from benchmark.distributed import plan_shard
from benchmark.nets.unet import UNet
from benchmark.train import TrainConfig, make_optimizer, train_step
from methods.edm import EDM

pytestmark = pytest.mark.perf

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int]
    batch: int
    net: dict = field(default_factory=dict)
    cuda_only: bool = False


CASES = [
    Case("8x8x1", (1, 8, 8), 128, {"model_channels": 32, "channel_mult": (1, 2)}),
    Case("32x32x3", (3, 32, 32), 256, {"model_channels": 64, "channel_mult": (1, 2, 2), "num_blocks": 2,
                                       "attn_resolutions": (16,)}, cuda_only=True),
    Case("64x64x3", (3, 64, 64), 128, {"model_channels": 64, "channel_mult": (1, 2, 2, 4), "num_blocks": 2,
                                       "attn_resolutions": (16, 8)}, cuda_only=True),
]
ROUNDS, WARMUP = (10, 3) if DEVICE.type == "cuda" else (3, 1)
SAMPLE_STEPS = 8 if DEVICE.type == "cuda" else 3  # Heun: 2N - 1 network calls


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    if request.param.cuda_only and DEVICE.type != "cuda":
        pytest.skip("larger sizes run on CUDA only")
    return request.param


class BareConvNet(nn.Module):
    """A minimal hand-written denoiser: conv stack with one down/up level, no time input."""

    def __init__(self, ch_in: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch_in, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, ch_in, 3, padding=1))

    def forward(self, x, c):
        return self.body(x)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, record: list[float]):
    """Wrap fn so each call appends its wall seconds to `record` (for the baselines)."""
    def run():
        with DeviceTimer(DEVICE) as t:
            fn()
        record.append(t.seconds)
    return run


def best(record: list[float]) -> float:
    """Fastest timed round (warmup dropped): interference from other load only adds time."""
    return min(record[WARMUP:])


def plain_mse_step(net: nn.Module, opt: torch.optim.Optimizer, x0: torch.Tensor):
    """The textbook step: noise the batch at a random level, regress x0 with MSE, Adam."""
    def step():
        sigma = torch.rand(len(x0), device=DEVICE)
        x = x0 + sigma[:, None, None, None] * torch.randn_like(x0)
        loss = F.mse_loss(net(x, sigma), x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
    return step


def test_train_step_throughput_unet_edm_vs_bare_pytorch(benchmark, case, perf_row):
    torch.manual_seed(0)
    x0 = torch.randn(case.batch, *case.shape, device=DEVICE).clamp(-1, 1)
    method = EDM(total_steps=1, data_shape=case.shape)
    net = UNet(case.shape[0], case.shape[1], **case.net).to(DEVICE).train()
    cfg = TrainConfig(images=10**9, batch=case.batch, lr=1e-4)
    opt, steps = make_optimizer(cfg, net.parameters()), itertools.count()

    def ours():  # the training loop's own step: batch draw, per-step seeds, EDM loss, Adam
        train_step(method, net, opt, x0, cfg, next(steps), seed=0)
        sync()

    same_net = UNet(case.shape[0], case.shape[1], **case.net).to(DEVICE).train()
    bare = BareConvNet(case.shape[0], case.net["model_channels"]).to(DEVICE).train()
    t_same, t_bare = [], []
    run_same = timed(plain_mse_step(same_net, torch.optim.Adam(same_net.parameters(), 1e-4), x0), t_same)
    run_bare = timed(plain_mse_step(bare, torch.optim.Adam(bare.parameters(), 1e-4), x0), t_bare)
    benchmark.group = f"train-{case.name}"
    benchmark.pedantic(ours, setup=lambda: (run_same(), run_bare()) and None, rounds=ROUNDS,
                       warmup_rounds=WARMUP)
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    t_ours = benchmark.stats.stats.min
    flops_ours = fwd_bwd_flops(net, case.shape) * case.batch
    flops_bare = fwd_bwd_flops(bare, case.shape) * case.batch
    benchmark.extra_info.update({
        "device": hardware(), "batch": case.batch, "shape": list(case.shape),
        "img_per_s": case.batch / t_ours,
        "img_per_s_same_unet_plain_mse": case.batch / best(t_same),
        "img_per_s_bare_convnet": case.batch / best(t_bare),
        "ratio_vs_same_unet_plain_mse": best(t_same) / t_ours,
        "ratio_vs_bare_convnet": best(t_bare) / t_ours,
        "gflop_per_s": flops_ours / t_ours / 1e9,
        "gflop_per_s_bare_convnet": flops_bare / best(t_bare) / 1e9,
    })
    info = benchmark.extra_info
    perf_row(case=case.name, device=info["device"], ratio=info["ratio_vs_same_unet_plain_mse"],
             vs="same UNet, plain MSE step", **{"img/s": info["img_per_s"], "GFLOP/s": info["gflop_per_s"]})
    perf_row(case=case.name, device=info["device"], ratio=info["ratio_vs_bare_convnet"],
             vs="bare conv net (floor)", **{"img/s": info["img_per_s"]})
    # the EDM loss adds only elementwise work around the same network pass
    assert info["ratio_vs_same_unet_plain_mse"] > 0.5


def test_heun_sampling_throughput_vs_bare_forward_loop(benchmark, case, perf_row):
    torch.manual_seed(0)
    method = EDM(total_steps=1, data_shape=case.shape, solver="heun")
    net = UNet(case.shape[0], case.shape[1], **case.net).to(DEVICE).eval()
    noise = torch.randn(case.batch, *case.shape, device=DEVICE)
    nfe = method.nfe(SAMPLE_STEPS)

    def ours():
        method.sample(net, noise, SAMPLE_STEPS)
        sync()

    @torch.no_grad()
    def bare_loop():
        x, c = noise, torch.zeros(case.batch, device=DEVICE)
        for _ in range(nfe):
            x = net(x, c)
        sync()

    t_bare: list[float] = []
    benchmark.group = f"sample-{case.name}"
    benchmark.pedantic(ours, setup=timed(bare_loop, t_bare), rounds=ROUNDS, warmup_rounds=WARMUP)
    if benchmark.stats is None:
        return
    t_ours = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "device": hardware(), "batch": case.batch, "shape": list(case.shape), "steps": SAMPLE_STEPS,
        "nfe": nfe, "img_per_s": case.batch / t_ours, "img_per_s_bare_loop": case.batch / best(t_bare),
        "ratio_vs_bare_loop": best(t_bare) / t_ours,
        "gflop_per_s": nfe * forward_flops(net, case.shape) * case.batch / t_ours / 1e9,
    })
    info = benchmark.extra_info
    perf_row(case=case.name, device=info["device"], ratio=info["ratio_vs_bare_loop"],
             vs=f"bare forward loop ({nfe} NFE)", **{"img/s": info["img_per_s"], "GFLOP/s": info["gflop_per_s"]})
    assert info["ratio_vs_bare_loop"] > 0.5


def test_split_step_overhead_two_micro_batches_vs_one_batch(benchmark, perf_row):
    """The price of splitting a step (what 2 DDP ranks or 2 accumulation micro-batches run, here in
    one process): ShardedDraws intercepts every torch call of the loss, and each part draws the
    global batch's noise. Ratio = one-batch step time / split step time (communication excluded)."""
    case = CASES[0] if DEVICE.type == "cpu" else CASES[1]
    torch.manual_seed(0)
    x0 = torch.randn(4 * case.batch, *case.shape, device=DEVICE).clamp(-1, 1)
    method = EDM(total_steps=1, data_shape=case.shape)
    cfg = TrainConfig(images=10**9, batch=case.batch, lr=1e-4)
    nets = [UNet(case.shape[0], case.shape[1], **case.net).to(DEVICE).train() for _ in range(2)]
    opts = [make_optimizer(cfg, n.parameters()) for n in nets]
    shard, steps, t_one = plan_shard(case.batch, 1, 0, case.batch // 2), itertools.count(), []

    def one():
        train_step(method, nets[0], opts[0], x0, cfg, next(steps), seed=0)
        sync()

    def split():
        train_step(method, nets[1], opts[1], x0, cfg, next(steps), seed=0, shard=shard)
        sync()

    benchmark.group = f"split-{case.name}"
    benchmark.pedantic(split, setup=timed(one, t_one), rounds=ROUNDS, warmup_rounds=WARMUP)
    if benchmark.stats is None:
        return
    ratio = best(t_one) / benchmark.stats.stats.min
    benchmark.extra_info.update({"device": hardware(), "ratio_vs_one_batch": ratio, "parts": shard.parts})
    perf_row(case=case.name, device=hardware(), ratio=ratio, vs="same step, unsplit (2 parts)",
             **{"img/s": case.batch / benchmark.stats.stats.min})
    assert ratio > 0.5
