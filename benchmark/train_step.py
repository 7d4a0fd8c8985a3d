"""One optimiser step of the generic training loop (LR warm-up, gradient clipping, Adam, EMA) on
any engine, and `fit`, the in-memory loop built on it. It knows nothing method-specific (DESIGN §2).

Every random draw of step k comes from generators seeded by (seed, k), so a resumed run is
bit-identical to an uninterrupted one on CPU: the data batch, the method's noise
(benchmark/noise.py) and dropout. Under torchrun the step runs on PyTorch's DDP or FSDP2
(benchmark/engine.py, `engage`) and computes the single-process step for any world size and accumulation.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import Tensor, nn

from benchmark.errors import TrainingError
from benchmark.labels import ClassLabels
from benchmark.runs import step_seed
from benchmark.train_config import TrainConfig


def lr_at(cfg: TrainConfig, step: int) -> float:
    seen = step * cfg.batch
    lr = cfg.lr
    if cfg.lr_warmup_images > 0:
        lr *= min(seen / cfg.lr_warmup_images, 1.0)  # EDM training_loop.py warm-up
    if cfg.lr_decay == "linear":
        lr *= max(0.0, 1 - step / cfg.total_steps)
    return lr


def ema_beta(cfg: TrainConfig, step: int) -> float | None:
    """Per-step EMA decay: fixed, or EDM's half-life in images (with optional ramp-up)."""
    if cfg.ema_decay is not None:
        return cfg.ema_decay
    if cfg.ema_halflife_images is None:
        return None
    half = cfg.ema_halflife_images
    if cfg.ema_rampup_ratio is not None:
        half = min(half, (step + 1) * cfg.batch * cfg.ema_rampup_ratio)
    return 0.5 ** (cfg.batch / max(half, 1e-8))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[cfg.optimizer]
    # foreach: one multi-tensor kernel per update instead of a Python loop over tensors (torch
    # only defaults to it on CUDA); the arithmetic is the same
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
               foreach=True)


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta ema + (1 - beta) net, one fused call over all tensors (per-tensor Python loops
    dominated the step time of the small CPU nets)."""
    pe, p = list(ema.parameters()), [q.detach() for q in net.parameters()]
    if pe:
        torch._foreach_lerp_(pe, p, 1 - beta)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


def batch_indices(n: int, batch: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, n, (batch,), generator=gen)


def train_step(method, net: nn.Module, opt: torch.optim.Optimizer, data: Tensor, cfg: TrainConfig,
               step: int, seed: int, labels: ClassLabels | None = None, *, shard=None, engine=None,
               amp=None) -> float:
    """One optimiser step at `step`; returns the mean loss. Raises TrainingError on NaN/Inf.

    labels (class-conditional runs): the batch's one-hot labels, after label dropout, go to the
    method's loss, where student, target and teacher all see the same labels. `shard`
    (benchmark.distributed.Shard) splits the global batch over ranks / micro-batches, `engine`
    (benchmark.engine.Engine: DDP or FSDP) synchronises the gradients, `amp`
    (benchmark.precision.Applied) sets autocast/layout. A split step computes the single-process
    step: every rank draws the global batch's indices and takes its slice, and each example gets
    the single-process noise (benchmark.noise.StepNoise)."""
    from benchmark.distributed import Shard
    from benchmark.noise import StepNoise

    s = step_seed(seed, step)
    gen = torch.Generator().manual_seed(s)
    idx = batch_indices(len(data), cfg.batch, gen)  # the global batch, drawn identically on every rank
    dev = _data_device(data)
    y = None if labels is None else labels.batch(idx, gen, dev)  # whole batch: the same dropout on every rank
    # dropout masks: seed only the generator of the data's device (torch.manual_seed also seeds
    # every lazy accelerator backend, which cost ~2 ms a step on CPU); per rank under DDP/FSDP
    (torch.cuda.manual_seed if dev.type == "cuda" else torch.default_generator.manual_seed)(
        s + (engine.dist.rank if engine is not None else 0))
    for g in opt.param_groups:
        g["lr"] = lr_at(cfg, step)
    opt.zero_grad(set_to_none=True)
    shard = shard or Shard(cfg.batch)
    noise = StepNoise.for_step(s + 1, cfg.batch, dev, keep=shard.accum > 1)
    loss = _backward(method, net if engine is None else engine.module, data, idx, step, noise, shard, engine,
                     amp, y)
    if cfg.grad_clip:
        gnorm = nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    else:
        gnorm = nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
    if not torch.isfinite(_full(gnorm)):
        raise TrainingError(f"non-finite gradient norm at step {step}",
                            "lower the learning rate or enable grad_clip; the last good checkpoint is kept")
    opt.step()
    return float(loss)


def _full(t: Tensor) -> Tensor:
    """A sharded (FSDP DTensor) result as a plain tensor; others unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def method_loss(method, net: nn.Module, x0: Tensor, step: int, rng, y: Tensor | None) -> Tensor:
    """Per-example loss; labels only for class-conditional runs (unconditional calls stay as before)."""
    return method.loss(net, x0, step, rng) if y is None else method.loss(net, x0, step, rng, labels=y)


def _data_device(data) -> torch.device:
    """The device batches of `data` land on (a tensor, or StreamedData that moves each batch)."""
    return data.device if isinstance(data, Tensor) else torch.device(getattr(data, "device", "cpu"))


def _check_finite(loss: Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"non-finite loss ({loss.item()}) at step {step}",
                            "lower the learning rate or enable grad_clip; the last good checkpoint is kept")


def _backward(method, module: nn.Module, data, idx: Tensor, step: int, noise, shard, engine, amp,
              y: Tensor | None) -> Tensor:
    """This rank's micro-batches of the global batch: each backpropagates sum(loss) / global batch
    (x world size: the engine averages over ranks) with its rows of the step's noise; the engine
    synchronises gradients in the last one. Returns the global mean loss (the same on every rank,
    summed over ranks in float64, so every rank raises together on a non-finite loss)."""
    from benchmark.distributed import Dist, all_reduce_sum
    from benchmark.precision import to_layout

    divisor = shard.global_batch / (engine.loss_scale if engine is not None else 1)  # exact for 2^k ranks
    loss_sum = torch.zeros((), dtype=torch.float64, device=_data_device(data))
    for a in range(shard.accum):
        _, lo, hi = shard.bounds(a)
        x0 = to_layout(data[idx[lo:hi]], amp)
        with engine.micro_step(last=a == shard.accum - 1) if engine is not None else contextlib.nullcontext():
            with amp.autocast if amp is not None else contextlib.nullcontext():
                part_sum = method_loss(method, module, x0, step, noise.rows(lo, hi),
                                        None if y is None else y[lo:hi]).float().sum()
            (part_sum / divisor).backward()
        loss_sum += part_sum.detach().double()
    loss = (all_reduce_sum(engine.dist if engine is not None else Dist(), loss_sum) / shard.global_batch).float()
    _check_finite(loss, step)
    return loss


def engage(name: str, dist, net: nn.Module, ema: nn.Module, method, teacher: nn.Module | None, cfg: TrainConfig,
           shard, opt_state: dict | None = None):
    """Put a set-up run (net, EMA, method with its target nets, weights already loaded) on the
    engine `name` and build its optimiser (after wrapping: FSDP replaces the parameters), loading
    `opt_state` (a checkpoint's, of any engine) if given; `shard` is the step's split
    (benchmark.distributed.Shard). Returns (engine, optimiser)."""
    from benchmark import engine as E

    eng = E.wrap(name, dist, net, [ema, *E.net_copies(net, method, teacher)], accum=shard.accum)
    opt = make_optimizer(cfg, net.parameters())
    if opt_state is not None:
        eng.load_optimizer_state(opt, opt_state)
    return eng, opt


def fit(method, net: nn.Module, data: Tensor, *, steps: int, batch: int = 128, lr: float = 1e-3,
        seed: int = 0, teacher: nn.Module | None = None, ema_halflife_images: float | None = None,
        ema_decay: float | None = None, grad_clip: float | None = None,
        optimizer: str = "adam", labels: ClassLabels | None = None) -> tuple[nn.Module, nn.Module]:
    """In-memory training (no files): for tests and notebooks. Returns (net, ema_net).

    labels: the class labels of `data` for a class-conditional net (see `train_step`)."""
    cfg = TrainConfig(images=steps * batch, batch=batch, lr=lr, grad_clip=grad_clip,
                      ema_halflife_images=ema_halflife_images, ema_decay=ema_decay, optimizer=optimizer)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
        if getattr(method, "init_from_teacher", False):
            net.load_state_dict(teacher.state_dict())
    method.setup(net, teacher)
    net.train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = make_optimizer(cfg, net.parameters())
    for step in range(steps):
        train_step(method, net, opt, data, cfg, step, seed, labels)
        beta = ema_beta(cfg, step)
        update_ema(ema, net, beta if beta is not None else 0.0)
        method.after_step(net, step)
    return net, ema
