"""GPU speed options of a suite (`precision:`): bf16 autocast with fp32 master weights,
channels_last, torch.compile, TF32. Each is requested in the suite and *recorded as applied or
not* in provenance: on CPU they are no-ops (CPU bf16 autocast is slower than fp32 for these
nets and changes numerics, so CPU suites keep fp32 and say so).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmark.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """What the suite asks for (defaults: everything off, i.e. plain fp32)."""

    bf16: bool = False  # autocast the forward/loss to bfloat16; weights and optimiser stay fp32
    channels_last: bool = False  # NHWC memory layout for conv nets (faster cuDNN kernels)
    compile: bool = False  # nn.Module.compile (in place: state_dict keys unchanged)
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


def apply(p: Precision, net: nn.Module, device: str) -> Applied:
    """Switch on what the device supports; on CPU every option is a recorded no-op."""
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    applied = dict.fromkeys(asdict(p), False)
    notes: dict[str, str] = {}
    for k, want in asdict(p).items():
        if want and not cuda:
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
            net.compile()
            applied["compile"] = True
    return Applied(requested=p, device=str(device), applied=applied, notes=notes)


def to_layout(x: torch.Tensor, a: Applied | None) -> torch.Tensor:
    """A batch in the net's memory layout (channels_last for NCHW images when applied)."""
    if a is not None and a.applied["channels_last"] and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
