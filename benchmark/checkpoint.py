"""Checkpoints: state dicts only (no pickled code), written atomically with a sha256 sidecar,
loaded with `weights_only=True`. A truncated or corrupt file is detected by its hash and the
run resumes from the previous good one (the last two are kept)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import CheckpointError
from benchmark.provenance import atomic_path, sha256_file, write_json

KEEP = 2
REQUIRED_KEYS = ("ema", "net_cfg", "data_shape", "num_cond")  # what sampling and resume read
log = logging.getLogger("fewstep")


def save(path: Path, state: dict[str, Any]) -> str:
    """Write `state` to `path` atomically, then its `.sha256` sidecar; returns the hash."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # the temp file is removed if this fails (e.g. disk full)
            torch.save(state, tmp)
    except OSError as e:  # name the checkpoint, not the temp file, in the one-line error
        raise type(e)(e.errno, e.strerror or str(e), str(path)) from None
    digest = sha256_file(path)
    write_json(path.with_suffix(path.suffix + ".sha256"), {"sha256": digest, "file": path.name})
    return digest


def verify(path: Path) -> bool:
    side = Path(path).with_suffix(Path(path).suffix + ".sha256")
    if not Path(path).exists() or not side.exists():
        return False
    try:
        return json.loads(side.read_text())["sha256"] == sha256_file(path)
    except (ValueError, KeyError, OSError):
        return False


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint, checking its hash; CheckpointError (one line) if missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist",
                              "train the run first (snakemake will do it) or fix the path")
    if not verify(path):
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (sha256 mismatch or missing sidecar)",
                              f"delete {path} and re-run the suite (`python -m benchmark run --suite S`): "
                              "training resumes from its last good checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt checkpoint
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__})",
                              f"delete {path} and re-run the suite (`python -m benchmark run --suite S`)") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a fewstep-bench checkpoint (no {', '.join(missing)}; a bare "
                              "state_dict?)", "pass a ckpt/*.pt written by `python -m benchmark train`")
    return state


def owner(state: dict[str, Any]) -> tuple[str | None, str | None]:
    """(run name, config hash) recorded in a checkpoint; None for what it lacks."""
    return state.get("run"), state.get("config_hash")


def check_owner(state: dict[str, Any], run, path: Path, *, imported_ok: bool = False) -> None:
    """Refuse a checkpoint written by another run or another config of this run: sampling it
    would file another model's numbers under this run's config hash. imported_ok: a released
    network converted by `import-checkpoint` (run 'imported:<file>') may stand in, e.g. as a teacher
    given explicitly on the command line (its sha256 enters the student's provenance)."""
    name, h = owner(state)
    if imported_ok and str(name).startswith("imported:"):
        return
    if (name, h) != (run.name, run.config_hash):
        raise CheckpointError(f"checkpoint {path} belongs to run {name} config {h}, not to run {run.name} "
                              f"config {run.config_hash}",
                              f"retrain {run.name} with its current config (snakemake does) or pass its own checkpoint")


def _peek(path: Path) -> dict[str, Any] | None:
    """A verified checkpoint's dict, memory-mapped (cheap even for big nets); None if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: not a resume candidate, the caller skips it
        return None


def _move_aside(paths: list[Path], ckpt_dir: Path, old_hash: str | None) -> Path:
    """Move checkpoints (and their sidecars) of another config into ckpt/stale-<hash8>/: kept, not resumed."""
    dest = Path(ckpt_dir) / f"stale-{(old_hash or 'unknown')[:8]}"
    dest.mkdir(exist_ok=True)
    for p in paths:
        for q in (p, p.with_suffix(p.suffix + ".sha256")):
            if q.exists():
                os.replace(q, dest / q.name)
    return dest


def resume_state(ckpt_dir: Path, run, map_location: str | torch.device = "cpu"
                 ) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest good intermediate checkpoint of `run` (same run name and config hash) and its
    state, or (None, None). Checkpoints of another config (e.g. a changed `lr`) are never resumed:
    they move to ckpt/stale-<hash8>/ and training starts fresh, with a log line naming both hashes."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / "final.pt"
    for p in [*reversed(intermediate(ckpt_dir))] + ([final] if final.exists() else []):
        if not verify(p):
            continue  # corrupt/torn: skipped as before (prune removes it later)
        st = _peek(p)
        if st is None:
            continue
        name, h = owner(st)
        if (name, h) == (run.name, run.config_hash):
            if p == final:
                continue  # a finished run of this config is re-trained only on request; never resumed
            return p, load(p, map_location=map_location)
        dest = _move_aside([p], ckpt_dir, h)
        log.warning("checkpoint %s was written by run %s config %s, this is run %s config %s: moved to %s, "
                    "not resumed", p.name, name, h, run.name, run.config_hash, dest)
    return None, None


def intermediate(ckpt_dir: Path) -> list[Path]:
    """Intermediate checkpoints `step########.pt`, oldest first."""
    return sorted(Path(ckpt_dir).glob("step*.pt"))


def latest_good(ckpt_dir: Path) -> Path | None:
    """Newest intermediate checkpoint whose hash verifies (corrupt ones are skipped)."""
    for p in reversed(intermediate(ckpt_dir)):
        if verify(p):
            return p
    return None


def prune(ckpt_dir: Path, keep: int = KEEP) -> None:
    good = [p for p in intermediate(ckpt_dir)]
    for p in good[:-keep]:
        for q in (p, p.with_suffix(p.suffix + ".sha256")):
            with contextlib.suppress(FileNotFoundError):
                q.unlink()
