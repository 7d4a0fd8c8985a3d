"""Expected failures. Each carries *what* went wrong and *how to fix it*; the CLI prints
them as one line (`error: <what> — <fix>`) and exits 2, never a traceback (DESIGN §10)."""

from __future__ import annotations


class BenchmarkError(Exception):
    """Base class of every expected failure."""

    def __init__(self, what: str, fix: str = ""):
        self.what = what
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        msg = f"{self.what} — {self.fix}" if self.fix else self.what
        return " ".join(msg.split())  # guarantee a single line


class ConfigError(BenchmarkError):
    """The suite/config is malformed or names something unknown."""


class DatasetError(BenchmarkError):
    """A dataset is missing, empty or in the wrong format."""


class CheckpointError(BenchmarkError):
    """A checkpoint is missing, truncated or corrupt."""


class AssetError(BenchmarkError):
    """A required external asset (e.g. Inception weights) is missing."""


class TrainingError(BenchmarkError):
    """Training diverged (non-finite loss or gradient)."""


class Stopped(BenchmarkError):
    """Training was asked to stop (SIGTERM/SIGUSR1 from a scheduler) and saved a checkpoint to resume from."""


class InputError(BenchmarkError):
    """A file given on the command line is missing or malformed (samples, stats, CSV)."""


class DoesNotFit(BenchmarkError):
    """A planned run needs more memory per device than the named device has (`benchmark plan`)."""
