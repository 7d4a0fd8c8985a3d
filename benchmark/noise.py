"""The noise of a training step, the same for every example however the step is split.

Scheme (explicit, no interception of torch calls): the k-th draw a method's loss makes in step `step`
is ONE tensor for the whole global batch (first dimension = global examples, or global groups),
drawn from a generator seeded by (run seed, step); a micro-batch holding global examples lo..hi-1
gets rows lo..hi-1 of it. So example i of step k gets the same noise under 1, 2 or 64 ranks and any
gradient accumulation, and a resumed run redraws it bit-identically. The draws are those a
single process makes for the whole batch (`torch.randn((B, ...), generator=g)` etc.), so
single-process results are unchanged by this scheme.

Cost: every rank draws the global batch's noise for each draw (on a GPU a fraction of a
millisecond even for ImageNet-64 batches of 2048). Under gradient accumulation the global draws
are kept for the step and shared by its micro-batches (`StepNoise.rows`), so a rank draws each
global tensor once per step, not once per micro-batch; without accumulation nothing is kept.

Contract for a method: every draw from the step's noise has the examples (or the groups of
`group` examples) as its first dimension, and a step makes the same draws (kinds, shapes, in
order) in every micro-batch. A draw that breaks the order raises TrainingError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from benchmark.errors import TrainingError

Shape = Sequence[int] | torch.Size


class StepNoise:
    """Rows lo..hi-1 of one step's global draws (see the module docstring).

    Methods call `randn(shape)`, `rand(shape)`, `randint(low, high, shape)`, `multinomial(probs)`
    with `shape[0]` = this micro-batch's examples (`len(x0)`), or its groups when `group` > 1;
    the result is what a single process gets for these examples."""

    def __init__(self, generator: torch.Generator | None, global_batch: int, lo: int = 0, hi: int | None = None,
                 *, keep: bool = False, _draws: list | None = None):
        self.generator, self.global_batch = generator, int(global_batch)
        self.lo, self.hi = int(lo), int(global_batch if hi is None else hi)
        self.keep = keep  # share the global draws with the other micro-batches of this step
        self._draws: list[tuple[tuple, Tensor]] = [] if _draws is None else _draws
        self._next = 0

    @classmethod
    def for_step(cls, seed: int, global_batch: int, device: torch.device | str = "cpu", *,
                 keep: bool = False) -> StepNoise:
        """The step's noise: a generator on `device` seeded by `seed` (the train loop passes
        step_seed(run seed, step) + 1); `keep` when several micro-batches will read it."""
        return cls(torch.Generator(device=device).manual_seed(int(seed)), global_batch, keep=keep)

    @classmethod
    def of(cls, rng: StepNoise | torch.Generator, batch: int) -> StepNoise:
        """`rng` itself, or a plain generator as the noise of an unsplit batch of `batch` examples
        (what tests and notebooks pass to `method.loss`)."""
        return rng if isinstance(rng, StepNoise) else cls(rng, batch)

    @classmethod
    def on_meta(cls, global_batch: int) -> StepNoise:
        """Draws of the right shapes and no values, on the meta device: `benchmark plan` runs a
        method's loss on meta tensors to count its network passes, and a CPU generator's draws
        could not meet meta tensors."""
        return cls(None, global_batch)

    def rows(self, lo: int, hi: int) -> StepNoise:
        """A reader of examples lo..hi-1 of the same step, starting again at the step's first draw."""
        return StepNoise(self.generator, self.global_batch, lo, hi, keep=self.keep, _draws=self._draws)

    @property
    def device(self) -> torch.device:
        return torch.device("meta") if self.generator is None else self.generator.device

    # --- draws ------------------------------------------------------------------------------------
    def randn(self, shape: Shape, *, dtype: torch.dtype | None = None, group: int = 1) -> Tensor:
        return self._draw("randn", shape, group, (dtype,),
                          lambda full: torch.randn(full, generator=self.generator, device=self.device, dtype=dtype))

    def rand(self, shape: Shape, *, dtype: torch.dtype | None = None, group: int = 1) -> Tensor:
        return self._draw("rand", shape, group, (dtype,),
                          lambda full: torch.rand(full, generator=self.generator, device=self.device, dtype=dtype))

    def randint(self, low: int, high: int, shape: Shape, *, group: int = 1) -> Tensor:
        return self._draw("randint", shape, group, (low, high), lambda full: torch.randint(
            low, high, full, generator=self.generator, device=self.device))

    def multinomial(self, probs: Tensor) -> Tensor:
        """One index per example drawn from the 1-D `probs`, with replacement."""
        return self._draw("multinomial", (self.hi - self.lo,), 1, (probs.numel(),), lambda full: torch.multinomial(
            probs.to(self.device), full[0], replacement=True, generator=self.generator))

    # --- the one rule ---------------------------------------------------------------------------
    def _draw(self, kind: str, shape: Shape, group: int, extra: tuple[Any, ...],
              make: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
        """Rows lo/group..hi/group of this step's next global draw (made now, or kept from the
        micro-batch that made it)."""
        shape = tuple(int(s) for s in shape)
        lo, hi = self._bounds(kind, shape, group)
        key = (kind, (self.global_batch // group, *shape[1:]), extra)
        k, self._next = self._next, self._next + 1
        if k < len(self._draws):
            made, full = self._draws[k]
            if made != key:
                raise TrainingError(f"draw {k} of this step's noise is {kind}{key[1]} in one micro-batch but "
                                    f"{made[0]}{made[1]} in another",
                                    "make a loss's noise draws the same (kinds, shapes, order) for every batch")
        else:
            full = make(key[1])
            if self.keep:
                self._draws.append((key, full))
        rows = full[lo:hi]
        return rows if self.keep or (lo, hi) == (0, len(full)) else rows.clone()  # clone: free the global draw

    def _bounds(self, kind: str, shape: tuple[int, ...], group: int) -> tuple[int, int]:
        n = self.hi - self.lo
        if group < 1 or n % group or self.lo % group or self.global_batch % group or not shape \
                or shape[0] * group != n:
            raise TrainingError(f"{kind}{shape} with group={group} does not give one row per example (or group) "
                                f"of this micro-batch of {n} examples",
                                "draw with the micro-batch's examples (or groups) as the first dimension")
        return self.lo // group, self.hi // group
