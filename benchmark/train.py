"""The file-backed training run (`train_run`): one suite run trained to its final checkpoint, with
automatic resume from its newest good checkpoint, its log and its compute.json.

The step (Adam, EMA, LR warm-up, gradient clipping, the sharded backward) is benchmark/train_step.py,
the training set benchmark/train_data.py, the teacher benchmark/teacher.py and the stop signal
benchmark/stop.py; nothing here is method-specific (DESIGN §2). A resumed run is bit-identical to an
uninterrupted one on CPU: every random draw of step k comes from generators seeded by (seed, k), and
a checkpoint of any engine and world size resumes into the plain modules.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.errors import TrainingError
from benchmark.runs import compute_json_path, step_seed
from benchmark.stop import StopRequest
from benchmark.teacher import load_teacher
from benchmark.train_config import TrainConfig
from benchmark.train_data import model_space_data
from benchmark.train_step import ema_beta, engage, lr_at, train_step, update_ema


def train_run(run, suite, data_dir, out, teacher_ckpt=None, *, progress: bool = True,
              device: str = "cpu", nan_at_step: int | None = None) -> dict[str, Any]:
    """Train one run of a suite to `out` (= {run_dir}/ckpt/final.pt), resuming automatically
    from the newest good intermediate checkpoint in the same directory."""
    import time

    from benchmark import checkpoint
    from benchmark import distributed as D
    from benchmark import engine as E
    from benchmark import precision as P
    from benchmark.compute import TrainingPasses, compute_record
    from benchmark.provenance import write_json
    from methods.base import batch_group

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
    shard = D.plan_shard(cfg.batch, dist.world, dist.rank, dcfg.get("batch_per_gpu"), batch_group(live.method))
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
    compute = compute_record(live, final, amp, shard, teacher_info)
    write_json(compute_json_path(out), compute)
    checkpoint.save(out, final)  # last: final.pt marks the run complete
    D.barrier(dist)
    D.shutdown(dist)
    return compute


def _build(run, suite, teacher_ckpt, cfg: TrainConfig, dist, shape: tuple[int, ...], latent) -> tuple:
    """The plain modules of a run (net from the run's init seed, teacher, method with its target
    nets, EMA) and the FLOPs of their passes, measured now on the unwrapped, uncompiled net (an
    FSDP-sharded one would gather its weights for it). Returns (live run, teacher, teacher info)."""
    from benchmark.compute import measure_flops, method_networks
    from benchmark.nets import build_net
    from methods.base import build_method

    method = build_method(run.method, run.params, total_steps=cfg.total_steps, data_shape=shape)
    torch.manual_seed(step_seed(run.seed, -1))
    net = build_net(run.net, shape, method.num_cond, run.num_classes).to(dist.device)
    teacher, teacher_info = load_teacher(run, suite, teacher_ckpt, net, method, dist.device)
    method.setup(net, teacher)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    flops = measure_flops(net, method_networks(net, teacher, method), shape, method.num_cond)
    return _LiveRun(run, cfg, dist, method, net, ema, None, shape, latent, flops=flops), teacher, teacher_info


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
    flops: dict = field(default_factory=dict)  # `compute.measure_flops`
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
