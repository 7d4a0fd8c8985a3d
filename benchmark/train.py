"""The generic training loop: Adam, EMA, LR warm-up, gradient clipping, images-seen counting,
checkpoints with automatic resume. It knows nothing method-specific (DESIGN §2).

Every random draw of step k comes from generators seeded by (seed, k), so a resumed run is
bit-identical to an uninterrupted one on CPU: the data batch, the method's noise
(benchmark/noise.py) and dropout. Under torchrun the step runs on PyTorch's DDP or FSDP2
(benchmark/engine.py) and computes the single-process step for any world size and accumulation.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.errors import TrainingError
from benchmark.labels import ClassLabels
from benchmark.runs import compute_json_path, load_net_from_ckpt, step_seed
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


def _method_loss(method, net: nn.Module, x0: Tensor, step: int, rng, y: Tensor | None) -> Tensor:
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
                part_sum = _method_loss(method, module, x0, step, noise.rows(lo, hi),
                                        None if y is None else y[lo:hi]).float().sum()
            (part_sum / divisor).backward()
        loss_sum += part_sum.detach().double()
    loss = (all_reduce_sum(engine.dist if engine is not None else Dist(), loss_sum) / shard.global_batch).float()
    _check_finite(loss, step)
    return loss


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


# --- the file-backed run: checkpoints, resume, logs, compute accounting ---------------------

def _role_forward_flops(nets: dict[str, nn.Module], net: nn.Module, fwd: int, shape: tuple[int, ...],
                        num_cond: int) -> dict[str, int]:
    """Forward FLOPs per example of every non-online network a method evaluated: a copy of the
    online net (target EMA) costs what it does; a teacher is measured (EDM teachers take 1 time
    input)."""
    from benchmark.compute import forward_flops

    out = {}
    for role, m in nets.items():
        if role == "online":
            continue
        same_arch = type(m) is type(net) and sum(p.numel() for p in m.parameters()) == sum(
            p.numel() for p in net.parameters())
        out[role] = fwd if same_arch and role != "teacher" else forward_flops(
            m, shape, num_cond if role != "teacher" else 1)
    return out


def _log_lines(path, upto_step: int) -> list[str]:
    import json

    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            if json.loads(line).get("step", -1) <= upto_step:
                out.append(line)
        except ValueError:
            break  # a torn last line from a kill
    return out


IN_MEMORY_BYTES = 1 << 30  # prepared splits up to 1 GiB are converted once; larger ones per batch


def _nbytes(split) -> int:
    return int(np.prod(split.shape)) * np.dtype(split.dtype).itemsize


class StreamedData:
    """A prepared split too large for memory, read per batch from its memory-mapped shards:
    `data[idx]` is the model-space batch (the same floats a whole-split conversion gives), so
    `train_step` and its (seed, step) -> batch contract work unchanged and resident memory stays
    bounded by the shards' page cache (issue #14)."""

    def __init__(self, split, device: str = "cpu"):
        self.split, self.device = split, device

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: Tensor) -> Tensor:
        from benchmark.data import to_model_space

        return to_model_space(self.split[np.asarray(idx)]).to(self.device)


def model_space_data(run, suite, data_dir, device: str = "cpu"):
    """A run's training set in model space: (data, ClassLabels or None, shape, latent info or None).

    For a dataset with `vae:` these are the latents the encode rule wrote to `{data_dir}/latent/`,
    and the latent info (VAE settings, image shape, encode/decode FLOPs per image) goes into the
    checkpoint so that sampling can decode."""
    from benchmark.data import load_labels, load_manifest, load_split, to_model_space
    from benchmark.errors import DatasetError

    vae = suite.datasets[run.dataset].get("vae") if suite is not None else None
    src = Path(data_dir) / "latent" if vae else Path(data_dir)
    if vae and not (src / "manifest.json").is_file():
        raise DatasetError(f"{run.name} trains on latents but {src / 'manifest.json'} is missing",
                           "run `python -m benchmark encode` (the Snakemake rule `encode`) first")
    man = load_manifest(src)
    split = load_split(src, "train")
    ids = load_labels(src, "train")
    if run.num_classes and ids is None:
        raise DatasetError(f"{run.name} is class-conditional but {src} has no training labels",
                           "use `conditioning: uncond` or a dataset with labels")
    labels = ClassLabels(torch.from_numpy(ids), run.num_classes, run.label_dropout) if run.num_classes else None
    keys = ("vae", "image_shape", "encode_flops_per_image", "decode_flops_per_image", "n_train")
    data = (to_model_space(np.asarray(split)).to(device) if _nbytes(split) <= IN_MEMORY_BYTES
            else StreamedData(split, device))
    return data, labels, tuple(man["shape"]), ({k: man[k] for k in keys} if vae else None)


def train_run(run, suite, data_dir, out, teacher_ckpt=None, *, progress: bool = True,
              device: str = "cpu", nan_at_step: int | None = None) -> dict[str, Any]:
    """Train one run of a suite to `out` (= {run_dir}/ckpt/final.pt), resuming automatically
    from the newest good intermediate checkpoint in the same directory."""
    import time

    from benchmark import checkpoint
    from benchmark import distributed as D
    from benchmark import engine as E
    from benchmark import precision as P
    from benchmark.compute import TrainingPasses
    from benchmark.provenance import write_json

    dcfg = dict(getattr(suite, "distributed", None) or {})
    engine = E.requested(dcfg)
    prec = P.Precision.from_config(getattr(suite, "precision", None))
    P.check(prec, device)  # e.g. compile without a C++ compiler: one line, before anything is written
    dist = D.init(device)  # torchrun's ranks (or one process); rank 0 alone writes files
    device = dist.device
    out = Path(out)
    ckpt_dir, rdir = _run_dirs(out, dist)
    cfg = TrainConfig(**run.train)
    data, labels, shape, latent = model_space_data(run, suite, data_dir, device)
    live, teacher, teacher_info = _build(run, suite, teacher_ckpt, cfg, dist, shape, latent)
    group = int(getattr(live.method, "group_size", None) or getattr(live.method, "M", None) or 1)
    shard = D.plan_shard(cfg.batch, dist.world, dist.rank, dcfg.get("batch_per_gpu"), group)
    resume, opt_state = _resume(live, ckpt_dir)  # into the plain modules: any engine's checkpoint
    amp = P.apply(prec, live.net, device)
    live.engine, live.opt = engage(engine, dist, live.net, live.ema, live.method, teacher, cfg, shard, opt_state)
    log_path = rdir / "train.jsonl"
    _truncate_log(log_path, live.start, dist)
    live.passes = TrainingPasses(live.net, teacher, live.method, base=live.counts)  # target nets exist now
    live.engine.module.train()
    live.t0 = time.perf_counter()
    _train_steps(live, data, labels, shard, amp, ckpt_dir, log_path, resume.name if resume else None,
                 progress=progress, nan_at_step=nan_at_step)
    final = live.state(cfg.total_steps)
    live.passes.remove()
    if not dist.is_main:
        D.barrier(dist)  # rank 0 writes compute.json and final.pt
        D.shutdown(dist)
        return {}
    compute = _compute_record(live, final, amp, shard, teacher_info)
    write_json(compute_json_path(out), compute)
    checkpoint.save(out, final)  # last: final.pt marks the run complete
    D.barrier(dist)
    D.shutdown(dist)
    return compute


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


def _build(run, suite, teacher_ckpt, cfg: TrainConfig, dist, shape: tuple[int, ...], latent) -> tuple:
    """The plain modules of a run (net from the run's init seed, teacher, method with its target
    nets, EMA) and the FLOPs of their passes, measured now on the unwrapped, uncompiled net (an
    FSDP-sharded one would gather its weights for it). Returns (live run, teacher, teacher info)."""
    from benchmark.compute import method_networks
    from benchmark.nets import build_net
    from methods.base import build_method

    method = build_method(run.method, run.params, total_steps=cfg.total_steps, data_shape=shape)
    torch.manual_seed(step_seed(run.seed, -1))
    net = build_net(run.net, shape, method.num_cond, run.num_classes).to(dist.device)
    teacher, teacher_info = _load_teacher(run, suite, teacher_ckpt, net, method, dist.device)
    method.setup(net, teacher)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    flops = _measure_flops(net, method_networks(net, teacher, method), shape, method.num_cond)
    return _LiveRun(run, cfg, dist, method, net, ema, None, shape, latent, flops=flops), teacher, teacher_info


def _measure_flops(net: nn.Module, nets: dict[str, nn.Module], shape: tuple[int, ...], num_cond: int) -> dict:
    """Forward and forward+backward FLOPs per example of the online net, every other role's
    forward FLOPs, and the parameter count (what compute.json multiplies by the pass counts)."""
    from benchmark.compute import forward_flops, fwd_bwd_flops

    fwd = forward_flops(net, shape, num_cond)
    return {"fwd": fwd, "fwdbwd": fwd_bwd_flops(net, shape, num_cond),
            "role_fwd": _role_forward_flops(nets, net, fwd, shape, num_cond),
            "params": sum(p.numel() for p in net.parameters())}


def _run_dirs(out: Path, dist) -> tuple[Path, Path]:
    """(ckpt_dir, run_dir) of a run writing `out`; rank 0 removes temp files a killed run left, so
    that a resume never reads a half-written checkpoint or log."""
    from benchmark.provenance import clean_temp

    ckpt_dir = out.parent
    rdir = ckpt_dir.parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        clean_temp(ckpt_dir)
        clean_temp(rdir)
    return ckpt_dir, rdir


def _load_teacher(run, suite, teacher_ckpt, net: nn.Module, method, device) -> tuple[nn.Module | None, dict | None]:
    """(teacher net, teacher info for compute.json) of a distilling method, or (None, None).

    The teacher is the run's named teacher run or its imported `teacher_ckpt:`; both load and
    initialise the same way (methods that start from the teacher copy its EMA weights into `net`).
    A trained teacher's compute is carried into the student's totals; an imported one's is unknown."""
    from benchmark import checkpoint
    from benchmark.errors import ConfigError

    if method.teacher is None:
        return None, None
    if teacher_ckpt is None:
        raise ConfigError(f"run {run.name} needs a teacher checkpoint", "pass --teacher (snakemake does this)")
    tstate = checkpoint.load(teacher_ckpt)
    teacher_info = _teacher_info(run, suite, tstate, Path(teacher_ckpt))
    teacher = load_net_from_ckpt(tstate).to(device)
    if method.init_from_teacher:
        try:
            net.load_state_dict(tstate["ema"])
        except RuntimeError as e:
            raise ConfigError(f"{run.name}: cannot initialise from teacher {teacher_info['run']} ({str(e)[:80]})",
                              "use the same `net:` settings as the teacher") from e
    return teacher, teacher_info


def _teacher_info(run, suite, tstate: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check that `path` is the run's teacher and describe it for compute.json: the named teacher
    run's checkpoint (its compute.json's totals carried over) or the imported `teacher_ckpt:` whose
    sha256 is in the run's config hash (training compute not measured by us: None, not 0)."""
    import json

    from benchmark import checkpoint
    from benchmark.errors import CheckpointError
    from benchmark.provenance import sha256_file

    digest = sha256_file(path)
    name = str(tstate.get("run"))
    if run.teacher_ckpt:
        if digest != run.teacher_sha256:
            raise CheckpointError(f"teacher checkpoint {path} (sha256 {digest[:12]}) is not the run's teacher_ckpt "
                                  f"{run.teacher_ckpt} (sha256 {str(run.teacher_sha256)[:12]})",
                                  "pass the suite's teacher_ckpt file (snakemake does); a changed file needs a re-run")
        return {"ckpt": str(path), "sha256": digest, "run": name, "imported": True,
                "source": f"imported:{path.name}@{digest[:12]}", "released": tstate.get("source"),
                "total_flops": None, "device_hours": None, "unmeasured": f"imported:{path.name}@{digest[:12]}"}
    if name.startswith("imported:"):
        raise CheckpointError(f"teacher checkpoint {path} is an imported network, but run {run.name}'s teacher is "
                              f"the suite run {run.teacher}",
                              f"name it in the suite as `teacher_ckpt: {path}` (its sha256 enters the config hash)")
    checkpoint.check_owner(tstate, suite.runs[run.teacher], path)  # the named teacher, this config
    tcompute = json.loads(compute_json_path(path).read_text())
    return {"ckpt": str(path), "sha256": digest, "run": run.teacher, "imported": False,
            "source": f"trained:{run.teacher}", "total_flops": tcompute["total_flops"],
            "device_hours": tcompute["device_hours_total"],
            "unmeasured": tcompute.get("unmeasured_teacher")}  # an imported network further up the chain


@dataclass
class _LiveRun:
    """The objects of a file-backed run in training, with the progress a resume restores, so that
    an intermediate and the final checkpoint are built by one `state` (and its pass counts summed
    over ranks by one `counts_now`)."""

    run: Any
    cfg: TrainConfig
    dist: Any
    method: Any
    net: nn.Module  # the trained module (sharded in place under FSDP)
    ema: nn.Module
    opt: torch.optim.Optimizer | None  # built after the engine wraps `net`
    shape: tuple[int, ...]
    latent: dict | None
    start: int = 0
    elapsed: float = 0.0  # wall seconds
    dev_elapsed: float = 0.0  # device-seconds summed over ranks
    counts: dict[str, int] = field(default_factory=dict)
    passes: Any = None
    t0: float = 0.0
    flops: dict = field(default_factory=dict)  # `_measure_flops`
    engine: Any = None  # benchmark.engine.Engine

    def state(self, step: int) -> dict[str, Any]:
        """The checkpoint at `step` (call on every rank: it all-reduces counts, checks replicas and,
        under FSDP, gathers the full state dicts to rank 0, whose dict is the one saved)."""
        import time

        now = time.perf_counter() - self.t0
        run, cfg, eng = self.run, self.cfg, self.engine
        return {"net": eng.model_state(self.net), "ema": eng.model_state(self.ema),
                "opt": eng.optimizer_state(self.opt), "method": eng.gathered(self.method.state_dict()),
                "step": step, "images_seen": step * cfg.batch,
                "elapsed": self.elapsed + now, "counts": self.counts_now(),
                "device_elapsed": self.dev_elapsed + now * self.dist.world,
                "net_cfg": run.net, "data_shape": list(self.shape), "num_cond": self.method.num_cond,
                "num_classes": run.num_classes, "latent": self.latent, "engine": eng.name,
                "run": run.name, "config_hash": run.config_hash}

    def counts_now(self) -> dict[str, int]:
        """Examples passed per role so far, over all ranks (FLOPs are summed over ranks)."""
        from benchmark import distributed as D

        fresh = self.passes.fresh()
        keys = sorted(fresh)  # the same roles on every rank
        summed = D.all_reduce_sum(self.dist, torch.tensor([fresh[k] for k in keys], dtype=torch.int64,
                                                          device=self.dist.device))
        self.engine.check_replicas(list(self.net.parameters()) + list(self.ema.parameters()), "weights/EMA")
        out = dict(self.counts)
        for k, v in zip(keys, summed.tolist()):
            out[k] = out.get(k, 0) + int(v)
        return out


def _resume(live: _LiveRun, ckpt_dir: Path) -> tuple[Path | None, dict | None]:
    """Load the newest good checkpoint of this run's config into the plain modules of `live` (nets,
    method, step, clocks, pass counts), before any engine wraps them, so a checkpoint of any engine
    and world size resumes; returns its path and its optimiser state (loaded once the optimiser
    exists), or (None, None) to start from step 0."""
    from benchmark import checkpoint
    from benchmark import distributed as D

    dist, device = live.dist, live.dist.device
    resume, st = (checkpoint.resume_state(ckpt_dir, live.run, map_location=device)  # never another config's
                  if dist.is_main else (None, None))  # rank 0 alone moves stale checkpoints aside
    resume = D.broadcast_object(dist, resume)  # rank 0's choice, on every rank
    if resume is None:
        return None, None
    if st is None:
        st = checkpoint.load(resume, map_location=device)
    live.net.load_state_dict(st["net"])
    live.ema.load_state_dict(st["ema"])
    live.method.load_state_dict(st["method"])
    live.start, live.elapsed, live.counts = int(st["step"]), float(st["elapsed"]), dict(st["counts"])
    live.dev_elapsed = float(st.get("device_elapsed", live.elapsed))
    return resume, st["opt"]


def _truncate_log(log_path: Path, start: int, dist) -> None:
    """Keep the log lines up to the resumed step, so that a resumed log reads as one run's."""
    from benchmark import distributed as D
    from benchmark.provenance import write_text

    if dist.is_main:
        kept = _log_lines(log_path, start)
        write_text(log_path, "".join(line + "\n" for line in kept))
    D.barrier(dist)


class StopRequest:
    """SIGTERM or SIGUSR1 (a scheduler's stop at the time limit or preemption, or its advance
    warning, e.g. `sbatch --signal=USR1@300`) asks the loop to finish the current step, write a
    checkpoint and exit, so a re-run (Snakemake's retry) resumes there instead of one checkpoint
    interval back. Under torchrun the ranks agree (an all-reduce of the flag after every step) and
    stop after the same step. Installed only in the main thread; the old handlers come back on exit."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _note(self, signum: int, frame) -> None:
        self.signum = signum

    def agreed(self, dist) -> bool:
        """Whether any rank was asked to stop (the same answer on every rank)."""
        from benchmark import distributed as D

        if not dist.active:
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else 1], device=dist.device)
        return bool(D.all_reduce_sum(dist, flag).item())


def _train_steps(live: _LiveRun, data, labels, shard, amp, ckpt_dir: Path, log_path: Path,
                 last_good: str | None, *, progress: bool, nan_at_step: int | None) -> None:
    """Steps live.start .. total_steps: optimiser step, EMA, method hook, log lines and
    intermediate checkpoints; a failed step names the checkpoint a re-run resumes from; a stop
    signal (StopRequest) checkpoints after the current step and raises Stopped."""
    from tqdm import tqdm

    run, cfg, dist = live.run, live.cfg, live.dist
    ckpt_every = max(1, cfg.ckpt_every_images // cfg.batch) if cfg.ckpt_every_images else 0
    bar = tqdm(range(live.start, cfg.total_steps), initial=live.start, total=cfg.total_steps,
               disable=not progress, desc=run.name, unit="step", mininterval=2.0)
    with open(log_path if dist.is_main else os.devnull, "a") as log, StopRequest() as stop:
        for step in bar:
            try:
                if nan_at_step is not None and step == nan_at_step:
                    raise TrainingError(f"non-finite loss (injected) at step {step}", "")
                loss = train_step(live.method, live.net, live.opt, data, cfg, step, run.seed, labels, shard=shard,
                                  engine=live.engine, amp=amp)
            except TrainingError as e:
                raise _step_failed(run, e, ckpt_dir, last_good) from None
            beta = ema_beta(cfg, step)
            update_ema(live.ema, live.net, beta if beta is not None else 0.0)
            live.method.after_step(live.net, step)
            done = step + 1
            if done % cfg.log_every_steps == 0 or done == cfg.total_steps:
                _log_step(log, live, step, loss)
                bar.set_postfix(loss=f"{loss:.4f}")
            saved = bool(ckpt_every) and done % ckpt_every == 0 and done < cfg.total_steps
            if saved:
                last_good = _save_intermediate(live, ckpt_dir, done)
            if done < cfg.total_steps and stop.agreed(dist):
                _stop(live, ckpt_dir, done, last_good if saved else _save_intermediate(live, ckpt_dir, done), stop)


def _stop(live: _LiveRun, ckpt_dir: Path, done: int, name: str, stop: StopRequest) -> None:
    """Raise Stopped: the one line a stopped run prints, naming the checkpoint it resumes from."""
    from benchmark.errors import Stopped

    raise Stopped(f"{live.run.name} stopped by signal {stop.signum or 'on another rank'} after step {done} of "
                  f"{live.cfg.total_steps}; checkpoint {ckpt_dir / name} written",
                  "re-run the same command (or let Snakemake retry the job) to resume there")


def _step_failed(run, e: TrainingError, ckpt_dir: Path, last_good: str | None) -> TrainingError:
    """A failed step's one-line error: what failed and where an unchanged re-run resumes."""
    where = (f"last good checkpoint {ckpt_dir / last_good} (an unchanged re-run resumes there)"
             if last_good else "no checkpoint yet, the run restarts from step 0")
    return TrainingError(f"{run.name}: {e.what}",
                         f"{where}; lower train.lr or set train.grad_clip and re-run (a changed "
                         "config starts from step 0, its old checkpoints move to ckpt/stale-<hash>/)")


def _log_step(log, live: _LiveRun, step: int, loss: float) -> None:
    """One train.jsonl line after `step` (images seen, loss, lr, wall seconds incl. resumed ones)."""
    import json
    import time

    done, cfg = step + 1, live.cfg
    log.write(json.dumps({"step": done, "images": done * cfg.batch, "loss": loss,
                          "lr": lr_at(cfg, step), "seconds": live.elapsed + time.perf_counter() - live.t0})
              + "\n")
    log.flush()


def _save_intermediate(live: _LiveRun, ckpt_dir: Path, done: int) -> str:
    """Write step{done}.pt (rank 0) and prune older ones; returns its name for the error message."""
    from benchmark import checkpoint

    p = ckpt_dir / f"step{done:08d}.pt"
    st_done = live.state(done)  # on every rank: it all-reduces counts and checks replicas
    if live.dist.is_main:
        checkpoint.save(p, st_done)
        checkpoint.prune(ckpt_dir)
    return p.name


def _compute_record(live: _LiveRun, final: dict[str, Any], amp, shard, teacher_info: dict | None) -> dict[str, Any]:
    """compute.json (DESIGN §6): measured FLOPs per example x examples actually passed, device
    time, the settings that explain them and provenance."""
    from benchmark.compute import training_flops
    from benchmark.provenance import hardware, provenance

    run, cfg, latent, fl = live.run, live.cfg, live.latent, live.flops
    fwd, fwdbwd, role_fwd = fl["fwd"], fl["fwdbwd"], fl["role_fwd"]
    c = final["counts"]
    own = training_flops(c, fwd, fwdbwd, role_fwd)
    # the one-off VAE encoding of the training set is charged to the root of a teacher chain
    root = not teacher_info or teacher_info["imported"]  # of the teacher chain trained by us
    vae_flops = latent["encode_flops_per_image"] * latent["n_train"] if latent and root else 0
    own += vae_flops
    # an imported teacher's training compute is unknown: None (null), not 0; totals hold what we measured
    upstream = teacher_info["total_flops"] if teacher_info else 0.0
    up_hours = teacher_info["device_hours"] if teacher_info else 0.0
    unmeasured = teacher_info["unmeasured"] if teacher_info else None
    seconds = final["device_elapsed"]
    return {
        "run": run.name, "config_hash": run.config_hash, "train_images": cfg.total_steps * cfg.batch,
        "train_steps": cfg.total_steps, "effective_batch": cfg.batch, "lr": cfg.lr,
        "ema_halflife_images": cfg.ema_halflife_images, "ema_decay": cfg.ema_decay,
        "forward_flops_per_example": fwd, "fwd_bwd_flops_per_example": fwdbwd,
        "teacher_forward_flops_per_example": role_fwd.get("teacher", 0),
        "examples_grad": c.get("online_grad", 0), "examples_nograd": c.get("online_nograd", 0),
        "teacher_examples": c.get("teacher", 0), "passes": c, "role_forward_flops": role_fwd,
        "train_flops_per_image": float(own) / max(1, cfg.total_steps * cfg.batch),
        "net_params": fl["params"],
        "train_flops": float(own), "teacher_flops": None if upstream is None else float(upstream),
        "total_flops": float(own + (upstream or 0.0)),
        "device_seconds": seconds, "device_hours": seconds / 3600,
        "device_hours_total": seconds / 3600 + (up_hours or 0.0),
        "teacher_source": teacher_info["source"] if teacher_info else "",
        "total_excludes_teacher": unmeasured is not None, "unmeasured_teacher": unmeasured,
        "wall_seconds": final["elapsed"], "world_size": live.dist.world, "batch_per_rank": shard.micro * shard.accum,
        "micro_batch": shard.micro, "grad_accum_steps": shard.accum, "precision": amp.record(),
        "engine": live.engine.record(),
        "hardware": hardware(), "teacher": teacher_info, "recipe": run.recipe,
        "conditioning": run.conditioning, "num_classes": run.num_classes, "label_dropout": run.label_dropout,
        "vae_encode_flops": float(vae_flops), "latent": latent,
        "paper_recipe": run.paper_recipe, "recipe_diff": list(run.recipe_diff),
        "resolved": {"net": run.net, "train": run.train, "params": run.params, "steps": list(run.steps)},
        "provenance": provenance(seed=run.seed, config_hash=run.config_hash),
    }
