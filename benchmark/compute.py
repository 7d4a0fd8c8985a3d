"""Compute accounting (DESIGN §6): FLOPs per network pass, counted passes, wall time, compute.json.

FLOP convention: `torch.utils.flop_counter.FlopCounterMode` counts matrix products and
convolutions (mm, addmm, bmm, convolution and their backward, attention kernels) at 2 FLOPs per
multiply-accumulate. Elementwise work (norms, activations, preconditioning, optimizer updates)
is not counted; for conv/attention nets it is a few percent of the total. Costs are measured,
not derived from parameter counts, so they hold for any architecture, and they are per *example*:
measured on a small batch and divided by its size.

Training compute = sum over every network pass actually made (`TrainingPasses`, hooks on every
network a method evaluates) of its per-example cost; a result's total = its own + its teacher's /
earlier rounds' (summed by the caller).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmark.provenance import hardware

__all__ = ["DeviceTimer", "PassCounter", "TrainingPasses", "compute_record", "count_flops", "forward_flops",
           "forwards_per_step", "fwd_bwd_flops", "hardware", "measure_flops", "method_networks",
           "role_forward_flops", "sample_flops_per_image", "training_flops"]


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs (2 per multiply-accumulate) of everything `fn()` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _example_inputs(net: nn.Module, data_shape: tuple[int, ...], num_cond: int, batch: int):
    p = next(net.parameters())
    x = torch.randn(batch, *data_shape, device=p.device, dtype=p.dtype)
    c = torch.randn(batch, num_cond, device=p.device, dtype=p.dtype)
    return x, (c[:, 0] if num_cond == 1 else c)


def forward_flops(net: nn.Module, data_shape: tuple[int, ...], num_cond: int = 1, batch: int = 2) -> int:
    """FLOPs of one forward pass `net(x, c)` for one example of `data_shape` (no batch dim)."""
    x, c = _example_inputs(net, data_shape, num_cond, batch)
    with torch.no_grad():
        return count_flops(lambda: net(x, c)) // batch


def fwd_bwd_flops(net: nn.Module, data_shape: tuple[int, ...], num_cond: int = 1, batch: int = 2) -> int:
    """FLOPs of a forward pass plus the backward to all trainable parameters, per example.

    The input does not require grad (as in training), so the first layer computes no input
    gradient: for a stack of L equal Linear layers this is (3L - 1)/L x the forward cost, which
    tends to the usual 3x. Parameter .grad fields are left untouched."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fwd_bwd_flops needs a network with trainable parameters")
    x, c = _example_inputs(net, data_shape, num_cond, batch)

    def step() -> None:
        with torch.enable_grad():
            out = net(x, c)
            torch.autograd.grad(out, params, grad_outputs=torch.ones_like(out), allow_unused=True)

    return count_flops(step) // batch


def forwards_per_step(guidance: float, conditional: bool) -> int:
    """Network forwards per denoiser call: 2 for a classifier-free-guided call (conditional and
    unconditional, batched as one call of 2B: `benchmark.diffusion.guided_forward`), else 1
    (s = 1 is the conditional net alone, s = 0 the unconditional one)."""
    return 2 if conditional and float(guidance) not in (0.0, 1.0) else 1


def sample_flops_per_image(fwd: float, nfe: int, forwards: int = 1) -> float:
    """Sampling FLOPs per image: FLOPs per forward x sequential network calls x forwards per call."""
    return float(fwd) * nfe * forwards


class PassCounter:
    """Counts examples through one network, split by grad mode, via a forward pre-hook (the
    network object stays untouched, so its state_dict keys do too). Passes made with autograd
    enabled are backpropagated in a training step (charged forward + backward), the rest
    (teacher evaluations, stop-gradient targets, sampling) are forward only."""

    def __init__(self, net: nn.Module):
        self.grad_examples = 0
        self.nograd_examples = 0
        self.calls = 0
        self._h = net.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        n = int(args[0].shape[0])
        self.calls += 1
        if torch.is_grad_enabled():
            self.grad_examples += n
        else:
            self.nograd_examples += n

    def remove(self) -> None:
        self._h.remove()


def method_networks(net: nn.Module, teacher: nn.Module | None, method: Any) -> dict[str, nn.Module]:
    """Every network a training step can evaluate, by role: the online net, the teacher, and each
    network the method holds itself (CM's target EMA, ...), found after `method.setup` made them."""
    roles: dict[str, nn.Module] = {"online": net}
    if teacher is not None:
        roles["teacher"] = teacher
    for name, v in sorted(vars(method).items()):
        if isinstance(v, nn.Module) and not any(v is m for m in roles.values()):
            roles[name] = v
    return roles


class TrainingPasses:
    """The one training-compute counter (DESIGN §6): a PassCounter on every network of
    `method_networks`, so no pass is missed whatever a method evaluates. `counts()` returns
    examples per role: `online_grad`, `online_nograd` and one entry per other role."""

    def __init__(self, net: nn.Module, teacher: nn.Module | None, method: Any, base: Mapping[str, int] | None = None):
        self.nets = method_networks(net, teacher, method)
        self.counters = {role: PassCounter(m) for role, m in self.nets.items()}
        self.base = dict(base or {})

    def counts(self) -> dict[str, int]:
        out = dict(self.base)
        for k, v in self.fresh().items():
            out[k] = out.get(k, 0) + v
        return out

    def fresh(self) -> dict[str, int]:
        """Examples counted since this counter was made (without `base`, e.g. to sum over ranks)."""
        out: dict[str, int] = {}
        for role, c in self.counters.items():
            if role == "online":
                out["online_grad"] = out.get("online_grad", 0) + c.grad_examples
                out["online_nograd"] = out.get("online_nograd", 0) + c.nograd_examples
            else:
                out[role] = out.get(role, 0) + c.grad_examples + c.nograd_examples
        return out

    def remove(self) -> None:
        for c in self.counters.values():
            c.remove()


def training_flops(counts: Mapping[str, int], fwd: float, fwdbwd: float,
                   role_fwd: Mapping[str, float] | None = None) -> float:
    """FLOPs of the counted passes: online grad-enabled examples at fwd+bwd, online no-grad
    examples at fwd, every other role's examples at that role's forward cost (`role_fwd`,
    default: the online net's, as for a target EMA copy).

    Approximation: a pass made with autograd enabled is charged a backward even if its output is
    never backpropagated, and a pass backpropagated twice is charged once. Every method here
    backpropagates each grad-enabled online pass exactly once (tests/test_compute_counter.py)."""
    role_fwd = dict(role_fwd or {})
    total = counts.get("online_grad", 0) * float(fwdbwd) + counts.get("online_nograd", 0) * float(fwd)
    for role, n in counts.items():
        if role not in ("online_grad", "online_nograd"):
            total += n * float(role_fwd.get(role, fwd))
    return total


def role_forward_flops(nets: dict[str, nn.Module], net: nn.Module, fwd: int, shape: tuple[int, ...],
                       num_cond: int) -> dict[str, int]:
    """Forward FLOPs per example of every non-online network a method evaluated: a copy of the
    online net (target EMA) costs what it does; a teacher is measured (EDM teachers take 1 time
    input)."""
    out = {}
    for role, m in nets.items():
        if role == "online":
            continue
        same_arch = type(m) is type(net) and sum(p.numel() for p in m.parameters()) == sum(
            p.numel() for p in net.parameters())
        out[role] = fwd if same_arch and role != "teacher" else forward_flops(
            m, shape, num_cond if role != "teacher" else 1)
    return out


def measure_flops(net: nn.Module, nets: dict[str, nn.Module], shape: tuple[int, ...], num_cond: int) -> dict:
    """Forward and forward+backward FLOPs per example of the online net, every other role's
    forward FLOPs, and the parameter count (what compute.json multiplies by the pass counts)."""
    fwd = forward_flops(net, shape, num_cond)
    return {"fwd": fwd, "fwdbwd": fwd_bwd_flops(net, shape, num_cond),
            "role_fwd": role_forward_flops(nets, net, fwd, shape, num_cond),
            "params": sum(p.numel() for p in net.parameters())}



class DeviceTimer:
    """Wall seconds of a `with` block, synchronising CUDA so queued kernels are included.

    `device_seconds` multiplies by the number of devices the work occupied (DDP ranks)."""

    def __init__(self, device: torch.device | str | None = None, num_devices: int = 1):
        self.device = torch.device(device) if device is not None else None
        self.num_devices = num_devices
        self.seconds = 0.0

    def _sync(self) -> None:
        on_cuda = self.device.type == "cuda" if self.device is not None else torch.cuda.is_initialized()
        if on_cuda:
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> DeviceTimer:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start

    @property
    def device_seconds(self) -> float:
        return self.seconds * self.num_devices

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600


# --- compute.json: the record of a finished training run ------------------------------------

def compute_record(live: Any, final: dict[str, Any], amp, shard, teacher_info: dict | None) -> dict[str, Any]:
    """compute.json (DESIGN §6): measured FLOPs per example x examples actually passed, device
    time, the settings that explain them and provenance. `live` is the finished benchmark.train._LiveRun
    (run, cfg, dist, engine, latent and the `measure_flops` result), `final` its last checkpoint state."""
    from benchmark.provenance import provenance

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
