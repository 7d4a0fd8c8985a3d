"""The engine a data-parallel training step runs on: PyTorch's DDP or FSDP2, never our own collectives.

Suite option `distributed: {engine: ddp | fsdp}` (default ddp), used when the job has several ranks
(torchrun); one process trains the plain module whatever it names ("plain" in compute.json).

- **ddp** (`torch.nn.parallel.DistributedDataParallel`): every rank holds the whole network, Adam
  state and EMA; gradients are all-reduced in buckets while backward is still running (overlap),
  `no_sync()` skips that on all but the last micro-batch of gradient accumulation. Options:
  `gradient_as_bucket_view` (gradients live in the buckets: no second copy); `static_graph` (the
  parameters a step uses are found once; off under gradient accumulation, because PyTorch's static
  graph cannot begin with a `no_sync` micro-step); `forward_sync_buffers=False` (no net here
  changes a buffer in forward, so a broadcast per forward would be pure cost). A loss may call the
  online net several times but only once under autograd (true of every method here). The method's
  frozen networks (teacher, target EMA) stay plain modules.
- **fsdp** (`torch.distributed.fsdp.fully_shard`, FSDP2): parameters, gradients and Adam state are
  sharded over the ranks (1/world each); blocks (the elements of the nets' ModuleLists/Dicts) are
  gathered for their forward/backward and freed again. The EMA and the method's copies of the
  online net (CM's target) are sharded the same way, so `update_ema` and a method's `after_step`
  stay element-wise on local shards. The teacher (forward only, possibly another architecture)
  stays a plain replica. Every forward gathers weights, i.e. is a collective: a loss must make the
  same network calls on every rank (no data-dependent skips). Choose fsdp when the replica leaves
  no room for activations on one GPU: weights + gradients + Adam moments are 16 bytes/parameter in
  fp32 (+4 EMA, +4 CM target), 4.7-7.1 GB for ADM-64 (296 M parameters), 10.8-16 GB for DiT-XL/2.

Gradients: both engines average over ranks; each rank's loss is scaled by the world size
(`loss_scale`), so the average is the global-batch gradient the single process computes (exact for
a power-of-two world size). Checkpoints hold full state dicts gathered on rank 0 (FSDP:
`torch.distributed.checkpoint.state_dict` with `full_state_dict`), in the same format for every
engine, so a run resumes on any world size and engine, and in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.distributed import Dist, check_replicas_equal
from benchmark.errors import ConfigError

ENGINES = ("ddp", "fsdp")


def requested(dcfg: dict[str, Any] | None) -> str:
    """The suite's `distributed.engine` (default ddp); one-line ConfigError for another value."""
    name = str((dcfg or {}).get("engine", "ddp"))
    if name not in ENGINES:
        raise ConfigError(f"unknown distributed.engine '{name}'", f"use one of {list(ENGINES)}")
    return name


@dataclass
class Engine:
    """How this process trains: `name` applied ('plain', 'ddp', 'fsdp'); `net` the trained module
    (sharded in place under FSDP; optimiser, EMA and `after_step` read it); `module` what the loss
    calls (the DDP wrapper, else `net`)."""

    name: str
    requested: str
    dist: Dist
    net: nn.Module
    module: nn.Module

    @property
    def loss_scale(self) -> int:
        """Both engines average gradients over ranks: x world turns the average into the sum."""
        return 1 if self.name == "plain" else self.dist.world

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        """The context of one micro-batch's forward + backward: gradients are synchronised over
        ranks only in the last one of a step (DDP `no_sync`, FSDP `set_requires_gradient_sync`)."""
        if self.name == "ddp" and not last:
            return self.module.no_sync()
        if self.name == "fsdp":
            self.net.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def model_state(self, m: nn.Module) -> dict[str, Any]:
        """`m`'s full state dict (FSDP: gathered to rank 0 on CPU; empty on the other ranks)."""
        if self.name != "fsdp":
            return m.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def gathered(self, tree: Any) -> Any:
        """`tree` (e.g. a method's state_dict) with every sharded tensor replaced by the full one
        (a collective: call on every rank)."""
        from torch.distributed.tensor import DTensor

        if isinstance(tree, DTensor):
            return tree.full_tensor()
        if isinstance(tree, dict):
            return {k: self.gathered(v) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(self.gathered(v) for v in tree)
        return tree

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser's full state keyed by parameter name (torch.distributed.checkpoint's
        format, the same for every engine; rank 0 holds it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.net, opt, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a full optimiser state (any engine's, or an older checkpoint's integer-keyed one)
        into `opt` (FSDP: each rank keeps its shard). Call before the first step (it clears gradients)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = name_keyed(state, self.net)
        opt.zero_grad(set_to_none=True)  # it builds the local state with a zero-gradient step, only if none exist
        set_optimizer_state_dict(self.net, opt, state, options=StateDictOptions(full_state_dict=True))
        for group, saved in zip(opt.param_groups, state["param_groups"]):  # it turns tuples (betas) into lists
            group.update({k: v for k, v in saved.items() if isinstance(v, tuple)})

    def check_replicas(self, tensors: list[torch.Tensor], what: str) -> None:
        """DDP: raise if the replicas diverged (FSDP keeps one copy of each shard: nothing to check)."""
        if self.name == "ddp":
            check_replicas_equal(self.dist, tensors, what)

    def record(self) -> dict[str, Any]:
        """What compute.json says about the engine."""
        return {"requested": self.requested, "applied": self.name}


def name_keyed(state: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter names; a checkpoint written before the engines
    (torch's integer ids, in `net.parameters()` order, which is how the optimiser was built) is
    renamed, a name-keyed one returned as it is."""
    groups = state.get("param_groups") or []
    if not groups or not groups[0]["params"] or isinstance(groups[0]["params"][0], str):
        return state
    names = [n for n, _ in net.named_parameters()]
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups]}


def net_copies(net: nn.Module, method: Any, teacher: nn.Module | None) -> list[nn.Module]:
    """The networks a method holds that are copies of the online net (CM's target EMA): same
    parameter names and shapes, not the teacher. FSDP shards them like `net`."""
    from benchmark.compute import method_networks

    layout = _layout(net)
    return [m for role, m in method_networks(net, teacher, method).items()
            if role not in ("online", "teacher") and _layout(m) == layout]


def _layout(m: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in m.named_parameters()]


def wrap(name: str, dist: Dist, net: nn.Module, copies: Iterable[nn.Module] = (), accum: int = 1) -> Engine:
    """Put `net` on the engine `name` for this job (one process: plain). FSDP also shards
    `copies` (the EMA and `net_copies`) with the same layout as `net`. The optimiser must be built
    afterwards, on `net.parameters()` (FSDP replaces them by sharded ones). `accum`: micro-batches
    per step (DDP's static graph cannot start with a `no_sync` step, so it is off under accumulation)."""
    if not dist.active:
        return Engine("plain", name, dist, net, net)
    if name == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        cuda = str(dist.device).startswith("cuda")
        ddp = DistributedDataParallel(net, device_ids=[dist.local_rank] if cuda else None,
                                      forward_sync_buffers=False, gradient_as_bucket_view=True,
                                      static_graph=accum == 1)
        return Engine("ddp", name, dist, net, ddp)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(torch.device(dist.device).type, (dist.world,))
    shard(net, mesh)
    for m in copies:  # forward-only: resharded after every forward, so their parameters stay shards
        shard(m, mesh, root_reshard=True)
    return Engine("fsdp", name, dist, net, net)


def shard(m: nn.Module, mesh, root_reshard: bool | None = None) -> None:
    """FSDP2 on every block of `m` (the elements of its ModuleLists/Dicts), then on `m` itself
    (the remaining parameters: embeddings, input/output layers). The root keeps its parameters
    gathered from forward to backward unless `root_reshard` (FSDP2's default for a root)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks(m):
        fully_shard(block, mesh=mesh)
    fully_shard(m, mesh=mesh, reshard_after_forward=root_reshard)


def blocks(m: nn.Module) -> Iterator[nn.Module]:
    """The outermost elements (with parameters) of the ModuleLists/ModuleDicts inside `m`."""
    for child in m.children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            yield from (b for b in child.children() if next(b.parameters(), None) is not None)
        else:
            yield from blocks(child)
