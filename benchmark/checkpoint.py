"""Checkpoints: state dicts only (no pickled code), written atomically with a sha256 sidecar,
loaded with `weights_only=True`. A truncated or corrupt file is detected by its hash and the
run resumes from the previous good one (the last two are kept)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import CheckpointError
from benchmark.provenance import atomic_path, sha256_file, write_json

KEEP = 2


def save(path: Path, state: dict[str, Any]) -> str:
    """Write `state` to `path` atomically, then its `.sha256` sidecar; returns the hash."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
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
                              f"delete {path} and re-run training; it resumes from the last good checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt checkpoint
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__})",
                              f"delete {path} and re-run training") from e


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
