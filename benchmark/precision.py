"""Speed options of a suite (`precision:`): bf16 autocast with fp32 master weights,
channels_last, torch.compile, TF32. Each is requested in the suite and *recorded as applied or
not* in provenance. bf16, channels_last and TF32 are GPU options and recorded no-ops on CPU (CPU
bf16 autocast is slower than fp32 for these nets and changes numerics, so CPU suites keep fp32 and
say so). torch.compile applies on CPU too (inductor's C++ kernels; equal to eager to float
round-off), and where it cannot run (no C++ compiler, no Triton, an unsupported Python) the run
stops with a one-line ConfigError before anything is written.

compile wraps the trained network's `forward` (`net.forward = torch.compile(net.forward)`): the
module, its state_dict keys and its hooks stay eager and unchanged, so pass counting (FLOPs) sees
every call, checkpoints are those of an uncompiled run, and under DDP Dynamo's DDPOptimizer splits
the graph at the gradient buckets (compiled while DDP's forward is active), keeping the overlap.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmark.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """What the suite asks for (defaults: everything off, i.e. plain fp32)."""

    bf16: bool = False  # autocast the forward/loss to bfloat16; weights and optimiser stay fp32
    channels_last: bool = False  # NHWC memory layout for conv nets (faster cuDNN kernels)
    compile: bool = False  # torch.compile the trained net's forward (CPU and CUDA)
    tf32: bool = False  # TF32 matmuls/convolutions for the fp32 parts

    @classmethod
    def from_config(cls, raw: dict | None) -> Precision:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown precision option(s) {unknown}",
                              f"use {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: bool(v) for k, v in raw.items()})


@dataclass
class Applied:
    """The options in effect on this device, with the reason for every one not applied."""

    requested: Precision
    device: str
    applied: dict[str, bool]
    notes: dict[str, str]

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a training forward/loss runs in."""
        if self.applied["bf16"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def record(self) -> dict:
        """What goes into compute.json / provenance."""
        return {"requested": asdict(self.requested), "applied": dict(self.applied), "notes": dict(self.notes),
                "device": self.device}


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot run on `device` here (None: it can): what inductor needs, checked
    before training so the run fails in one line instead of inside its first step."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"TorchDynamo does not support this Python ({sys.version.split()[0]})"
    if str(device).startswith("cuda"):
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (inductor's GPU kernels need it)"
    from torch._inductor import config, cpp_builder

    try:
        cpp_builder.get_cpp_compiler()  # raises InvalidCxxCompiler when none of config.cpp.cxx runs
    except Exception:  # noqa: BLE001 - any failure to find a compiler is the same answer
        return f"no C++ compiler found (tried {[c for c in _as_tuple(config.cpp.cxx) if c]})"
    return None


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def check(p: Precision, device: str) -> None:
    """One-line ConfigError if the suite asks for something this machine cannot do (compile)."""
    why = compile_unavailable(device) if p.compile else None
    if why:
        fix = ("install Triton (pip install triton)" if str(device).startswith("cuda")
               else "install a C++ compiler (e.g. apt-get install g++, or set CXX)")
        raise ConfigError(f"precision.compile is set but torch.compile cannot run here: {why}",
                          f"{fix}, or set precision.compile: false")


def apply(p: Precision, net: nn.Module, device: str) -> Applied:
    """Switch on what the device supports (`check` first): on CPU only compile applies, the
    GPU options are recorded no-ops."""
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    applied = dict.fromkeys(asdict(p), False)
    notes: dict[str, str] = {}
    for k, want in asdict(p).items():
        if want and not cuda and k != "compile":
            notes[k] = "not applied: CPU device (no-op by design)"
    if cuda:
        if p.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            applied["tf32"] = True
        if p.bf16:
            if torch.cuda.is_bf16_supported():
                applied["bf16"] = True
            else:
                notes["bf16"] = f"not applied: {torch.cuda.get_device_name()} lacks bf16"
        if p.channels_last:
            net.to(memory_format=torch.channels_last)
            applied["channels_last"] = True
    if p.compile:
        check(p, device)
        net.forward = torch.compile(net.forward)  # the forward only: module, hooks, state_dict stay eager
        applied["compile"] = True
    return Applied(requested=p, device=str(device), applied=applied, notes=notes)


def to_layout(x: torch.Tensor, a: Applied | None) -> torch.Tensor:
    """A batch in the net's memory layout (channels_last for NCHW images when applied)."""
    if a is not None and a.applied["channels_last"] and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
