"""`StopRequest`: a scheduler's stop signal (SIGTERM, SIGUSR1) becomes a checkpoint after the
current training step and a clean exit, agreed by every torchrun rank."""

from __future__ import annotations

from typing import Any

import torch


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
