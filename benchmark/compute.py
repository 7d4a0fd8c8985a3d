"""Compute accounting (DESIGN §6): FLOPs per network pass, counted network passes, wall time.

FLOP convention: `torch.utils.flop_counter.FlopCounterMode` counts matrix products and
convolutions (mm, addmm, bmm, convolution and their backward, attention kernels) at 2 FLOPs per
multiply-accumulate. Elementwise work (norms, activations, preconditioning, optimizer updates)
is not counted; for conv/attention nets it is a few percent of the total. Costs are measured,
not derived from parameter counts, so they hold for any architecture, and they are per *example*:
measured on a small batch and divided by its size.

Training compute = sum over every network pass actually made (`CallCounter`) of its per-example
cost; a result's total = its own + its teacher's / earlier rounds' (summed by the caller).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from benchmark.provenance import hardware

__all__ = ["CallCounter", "DeviceTimer", "count_flops", "forward_flops", "forwards_per_step", "fwd_bwd_flops",
           "hardware", "sample_flops_per_image", "training_flops"]


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


class CallCounter(nn.Module):
    """Wraps a network and counts the passes made through it, split by grad mode.

    `calls` counts invocations and `examples` the summed batch sizes; *_grad are those made with
    autograd enabled (they will be backpropagated in a training step), *_nograd the rest
    (teacher evaluations, stop-gradient targets, sampling). Counters are plain ints, not
    buffers, so a state_dict holds only the wrapped net's weights under the prefix 'net.';
    save `counter.net` to keep checkpoints unwrapped."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.reset()

    def reset(self) -> None:
        self.calls_grad = self.calls_nograd = self.examples_grad = self.examples_nograd = 0

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            self.calls_grad += 1
            self.examples_grad += len(x)
        else:
            self.calls_nograd += 1
            self.examples_nograd += len(x)
        return self.net(x, *args, **kwargs)

    @property
    def calls(self) -> int:
        return self.calls_grad + self.calls_nograd

    @property
    def examples(self) -> int:
        return self.examples_grad + self.examples_nograd

    def counts(self) -> dict[str, int]:
        return {"calls_grad": self.calls_grad, "calls_nograd": self.calls_nograd,
                "examples_grad": self.examples_grad, "examples_nograd": self.examples_nograd}


def training_flops(counts: Mapping[str, int] | CallCounter, fwd: float, fwdbwd: float) -> float:
    """FLOPs of the counted passes: grad-enabled examples at fwd+bwd, no-grad examples at fwd.

    Approximation: a pass made with autograd enabled is charged a backward even if its output
    is never backpropagated, and a pass that is backpropagated twice is charged once. Every
    method in this repo backpropagates each grad-enabled pass exactly once, so this is exact
    for them up to the FLOP convention of the module docstring."""
    if isinstance(counts, CallCounter):
        counts = counts.counts()
    return counts["examples_grad"] * float(fwdbwd) + counts["examples_nograd"] * float(fwd)


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
