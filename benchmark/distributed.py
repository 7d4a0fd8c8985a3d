"""What data-parallel jobs need beyond PyTorch's engines: launching (torchrun), this process's
rank, splitting a step's global batch, and merging sampled/evaluated shards in order.

Gradient synchronisation and sharding are PyTorch's (DDP / FSDP2: benchmark/engine.py); the
per-example noise is benchmark/noise.py's. A run's global batch is fixed by its recipe; how it is
split (ranks x gradient-accumulation micro-batches, `plan_shard`) must not change the result:
every rank draws the *global* batch's index tensor from the (seed, step) generator and takes its
contiguous slice (`Shard.bounds`), so the union over ranks is the single-process batch.

Dropout masks come from the per-rank global RNG and so differ from a single process; with
dropout > 0 a DDP run matches single-process training in distribution, not bitwise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmark.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: `world` processes, this one is `rank` (0 writes)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    try:
        return int(v) if v else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not an integer",
                          "launch with torchrun, which sets RANK/WORLD_SIZE/LOCAL_RANK") from None


def init(device: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); a plain single process when WORLD_SIZE is unset or 1.

    CUDA ranks use NCCL on `cuda:LOCAL_RANK`; CPU ranks use gloo (tests, CPU clusters)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return Dist(device=device)
    import torch.distributed as td

    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank} wants cuda:{local} but {torch.cuda.device_count()} GPU(s) are visible",
                              "set --nproc_per_node to the number of GPUs (resources.train.gpus)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not td.is_initialized():
        import atexit

        td.init_process_group("nccl" if cuda else "gloo")
        atexit.register(lambda: td.is_initialized() and td.destroy_process_group())
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def shutdown(d: Dist) -> None:
    """Leave the process group (after the last collective)."""
    if d.active:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as td

        td.barrier()


def all_reduce_sum(d: Dist, t: Tensor) -> Tensor:
    """In-place SUM over ranks (identity on one process); returns `t`."""
    if d.active:
        import torch.distributed as td

        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def broadcast_object(d: Dist, obj):
    """Rank 0's `obj` on every rank (e.g. which checkpoint to resume from)."""
    if not d.active:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class Shard:
    """How one optimiser step's global batch is split: `world` ranks x `accum` micro-batches of
    `micro` examples; this rank owns parts rank*accum ... rank*accum + accum - 1."""

    global_batch: int
    world: int = 1
    rank: int = 0
    accum: int = 1

    @property
    def parts(self) -> int:
        return self.world * self.accum

    @property
    def micro(self) -> int:
        return self.global_batch // self.parts

    def bounds(self, a: int) -> tuple[int, int, int]:
        """(part index, lo, hi) of this rank's micro-batch `a` within the global batch."""
        part = self.rank * self.accum + a
        return part, part * self.micro, (part + 1) * self.micro


def plan_shard(global_batch: int, world: int, rank: int, batch_per_gpu: int | None,
               group: int = 1) -> Shard:
    """The split of `global_batch` over `world` ranks with micro-batches <= `batch_per_gpu`
    (gradient accumulation fills the rest); one-line ConfigError when it does not divide."""
    if global_batch % world:
        raise ConfigError(f"global batch {global_batch} does not split over {world} ranks",
                          "use a number of GPUs (resources.train.gpus) that divides train.batch")
    per_rank = global_batch // world
    accum = 1 if not batch_per_gpu else math.ceil(per_rank / batch_per_gpu)
    while per_rank % accum:  # the smallest accumulation count with equal micro-batches
        accum += 1
    micro = per_rank // accum
    if micro % max(group, 1):
        raise ConfigError(f"micro-batch {micro} (batch {global_batch} / {world} ranks / {accum} accumulation "
                          f"steps) is not a multiple of the method's group size {group}",
                          "choose distributed.batch_per_gpu and the GPU count so micro-batches hold whole groups")
    return Shard(global_batch=global_batch, world=world, rank=rank, accum=accum)


def my_batches(num: int, batch: int, d: Dist) -> range:
    """Start indices of this rank's sampling batches: a contiguous block of the unsplit run's
    batches. Noise (and labels) depend on a batch's absolute start only, so the split samples
    are bit-identical to the unsplit ones (same batch boundaries, same per-batch seeds)."""
    starts = range(0, num, batch)
    return starts[d.rank * len(starts) // d.world:(d.rank + 1) * len(starts) // d.world]


def gather_in_order(d: Dist, chunks: list, counts: list[int]) -> tuple[list, list[int]]:
    """The merge: every rank's sample chunks in rank order (= the unsplit run's order, since rank
    blocks are contiguous and ascending) and the element-wise sums of `counts`, on every rank."""
    if not d.active:
        return chunks, counts
    import torch.distributed as td

    box: list = [None] * d.world
    td.all_gather_object(box, (chunks, counts))
    return [c for part, _ in box for c in part], [sum(x) for x in zip(*(cn for _, cn in box))]


def check_replicas_equal(d: Dist, tensors: list[Tensor], what: str) -> None:
    """Raise if ranks disagree on `tensors` (a sum and a position-weighted sum, in float64):
    run at checkpoints, where a silently diverged replica would otherwise be saved as rank 0's."""
    if not d.active or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    probe = torch.stack([flat.sum(), (flat * torch.linspace(1, 2, len(flat), dtype=torch.float64,
                                                            device=flat.device)).sum()])
    lo, hi = probe.clone(), probe.clone()
    import torch.distributed as td

    td.all_reduce(lo, op=td.ReduceOp.MIN)
    td.all_reduce(hi, op=td.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise TrainingError(f"{what} differ between ranks (checksums {lo.tolist()} vs {hi.tolist()})",
                            "a nondeterministic op or a rank-dependent draw broke replica equality; "
                            "report it with the run's config")


def launcher(python: str, procs: int) -> list[str]:
    """The command (argv) that runs `python -m benchmark` in a rule: plain for one process, else
    `torchrun --standalone --nproc_per_node N -m benchmark --` (this interpreter's torchrun; the
    `--` stops torchrun's own parser, which would take `--run`/`--log` for its abbreviations).
    Multi-node jobs are launched by the executor instead (e.g. `srun torchrun --nnodes ...
    --rdzv-backend c10d -m benchmark -- train ...`); `init` reads whatever torchrun sets."""
    if procs <= 1:
        return [python, "-m", "benchmark"]
    tr = Path(python).with_name("torchrun")
    prefix = [str(tr)] if tr.exists() else [python, "-m", "torch.distributed.run"]
    return [*prefix, "--standalone", "--nproc_per_node", str(int(procs)), "-m", "benchmark", "--"]
