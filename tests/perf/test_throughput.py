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
import time
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.compute import DeviceTimer, forward_flops, fwd_bwd_flops, hardware
from benchmark.distributed import plan_shard
from benchmark.nets.unet import UNet
from benchmark.train_config import TrainConfig
from benchmark.train_step import make_optimizer, train_step
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
    one process): two smaller forward/backward passes, and StepNoise slicing the step's global draws
    (made once per step and shared by the micro-batches). Ratio = one-batch step time / split step
    time (communication excluded)."""
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


# --- data parallelism: PyTorch's DDP on 2 ranks vs 1 process, the old flat all-reduce, FSDP2 -----

WORLD, PROFILED = 2, 3


def _flat_allreduce_step(method, net, opt, data, cfg, step, shard):
    """The step before issue 26 (re-implemented here as the baseline): this rank's micro-batch
    backpropagates sum(loss)/global batch, then ONE all-reduce of all gradients (+ the loss)
    flattened into a single tensor, after backward (no overlap with compute), then Adam."""
    import torch.distributed as td

    from benchmark.noise import StepNoise
    from benchmark.runs import step_seed
    from benchmark.train_step import batch_indices

    s = step_seed(0, step)
    idx = batch_indices(len(data), cfg.batch, torch.Generator().manual_seed(s))
    opt.zero_grad(set_to_none=True)
    _, lo, hi = shard.bounds(0)
    noise = StepNoise.for_step(s + 1, cfg.batch, data.device).rows(lo, hi)
    part = method.loss(net, data[idx[lo:hi]], step, noise).sum()
    (part / cfg.batch).backward()
    grads = [p.grad for p in net.parameters()]
    flat = torch.cat([g.reshape(-1) for g in grads] + [part.detach().reshape(1)])
    td.all_reduce(flat)
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
    nn.utils.get_total_norm(grads)
    opt.step()


def _dp_steps(rank: int) -> dict:
    """The same UNet step four ways on this rank (the process group is up): 'one' (1 process, the
    per-rank batch), 'flat' (old all-reduce), 'ddp' and 'fsdp' (both ranks, global batch 2x)."""
    from benchmark import engine as E
    from benchmark.distributed import Dist

    case = CASES[0]
    torch.manual_seed(0)
    x0 = torch.randn(4 * case.batch, *case.shape).clamp(-1, 1)
    method = EDM(total_steps=1, data_shape=case.shape)
    nets = {k: UNet(case.shape[0], case.shape[1], **case.net).train() for k in ("one", "flat", "ddp", "fsdp")}
    dist = Dist(rank=rank, world=WORLD)
    one_cfg = TrainConfig(images=10**9, batch=case.batch, lr=1e-4)
    cfg = TrainConfig(images=10**9, batch=WORLD * case.batch, lr=1e-4)
    shard = plan_shard(cfg.batch, WORLD, rank, None)
    eng = {k: E.wrap(k, dist, nets[k]) for k in ("ddp", "fsdp")}
    opts = {k: make_optimizer(cfg, n.parameters()) for k, n in nets.items()}  # after wrap (FSDP)
    counter = itertools.count()
    return {
        "one": lambda: train_step(method, nets["one"], opts["one"], x0, one_cfg, next(counter), seed=0),
        "flat": lambda: _flat_allreduce_step(method, nets["flat"], opts["flat"], x0, cfg, next(counter), shard),
        **{k: (lambda k=k: train_step(method, nets[k], opts[k], x0, cfg, next(counter), seed=0, shard=shard,
                                      engine=eng[k])) for k in ("ddp", "fsdp")},
    }


def _dp_sequence(steps: dict, rounds: int) -> None:
    """What rank 1 runs, collective for collective in rank 0's order (pedantic: setup, then ours).
    A barrier before every timed step starts both ranks together (rank 0's 1-process step would
    otherwise give rank 1 a head start on the next one)."""
    import torch.distributed as td

    for _ in range(rounds):
        for k in ("flat", "fsdp", "ddp"):
            td.barrier()
            steps[k]()
    for k in ("ddp", "flat", "fsdp"):  # profiled (comm_share)
        for _ in range(PROFILED):
            steps[k]()


def _dp_peer(port: int, rounds: int) -> None:
    import torch.distributed as td

    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=WORLD)
    _dp_sequence(_dp_steps(1), rounds)
    td.destroy_process_group()


def comm_share(run, steps: int) -> float:
    """Share of the wall time of `steps` calls of `run` during which a gloo/NCCL collective is in
    flight (torch.profiler: the union of the collectives' intervals on their worker threads,
    including the wait for the other rank). With DDP's overlap this time is partly hidden behind
    backward; after the flat all-reduce it is not; FSDP's all-gathers/reduce-scatters count too."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        wall = time.perf_counter() - t0
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.name.startswith(("gloo:", "nccl:")))
    busy, end = 0.0, -1.0
    for a, b in spans:  # union of intervals (microseconds)
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    return busy / 1e6 / wall


def test_ddp_step_on_two_gloo_ranks_vs_one_process_and_the_flat_all_reduce(benchmark, perf_row):
    """PyTorch's DDP (ours) on 2 gloo ranks, each with the per-rank batch of the 1-process step
    (weak scaling: 1.0 = communication is free), against the pre-issue-26 flat all-reduce after
    backward and FSDP2, all in the same run; plus the share of step time with an all-reduce in
    flight (torch.profiler). One torch thread per rank; rank 0 is this process."""
    import multiprocessing as std_mp
    import socket

    import torch.distributed as td

    from benchmark.compute import hardware

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    peer = std_mp.get_context("spawn").Process(target=_dp_peer, args=(port, ROUNDS + WARMUP))
    peer.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=WORLD)
        steps = _dp_steps(0)
        t = {k: [] for k in ("one", "flat", "fsdp")}
        setup = [timed(steps["one"], t["one"]), td.barrier, timed(steps["flat"], t["flat"]), td.barrier,
                 timed(steps["fsdp"], t["fsdp"]), td.barrier]
        benchmark.group = "ddp-8x8x1"
        benchmark.pedantic(steps["ddp"], setup=lambda: [f() for f in setup] and None, rounds=ROUNDS,
                           warmup_rounds=WARMUP)
        share = {k: comm_share(steps[k], PROFILED) for k in ("ddp", "flat", "fsdp")}
        device = f"{hardware()} x{WORLD} gloo"  # one thread per rank
        peer.join(timeout=300)
    finally:
        torch.set_num_threads(threads)
        if td.is_initialized():
            td.destroy_process_group()
        if peer.is_alive():
            peer.kill()
    assert peer.exitcode == 0
    if benchmark.stats is None:
        return
    t_ddp, batch = benchmark.stats.stats.min, WORLD * CASES[0].batch
    info = {"device": device, "world": WORLD, "global_batch": batch,
            "img_per_s": batch / t_ddp, "ratio_vs_one_process": best(t["one"]) / t_ddp,
            "ratio_vs_flat_allreduce": best(t["flat"]) / t_ddp, "ratio_vs_fsdp": best(t["fsdp"]) / t_ddp,
            "comm_share_ddp": share["ddp"], "comm_share_flat_allreduce": share["flat"],
            "comm_share_fsdp": share["fsdp"]}
    benchmark.extra_info.update(info)
    row = {"case": "8x8x1", "device": info["device"], "img/s": info["img_per_s"]}
    perf_row(**row, ratio=info["ratio_vs_one_process"], vs="1 process, same per-rank batch",
             comm=share["ddp"])
    perf_row(**row, ratio=info["ratio_vs_flat_allreduce"], vs="flat all-reduce after backward (old)",
             comm=share["flat"])
    perf_row(**row, ratio=info["ratio_vs_fsdp"], vs="FSDP2 fully_shard step", comm=share["fsdp"])
    assert info["ratio_vs_flat_allreduce"] > 0.5 and info["ratio_vs_one_process"] > 0.2
