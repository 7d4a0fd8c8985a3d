"""Provenance attached to every number: config hash, git commit, seed, library versions,
hardware (DESIGN §11), and atomic file writes (write to a temp file, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys): the config hash."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def git_commit() -> str:
    """HEAD of the checkout the code runs from, '+dirty' if it has uncommitted changes."""
    env_commit = os.environ.get("FEWSTEP_GIT_COMMIT")
    if env_commit:
        return env_commit
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty and sha else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "scipy", "torch-fidelity", "clean-fid", "snakemake"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu:{platform.processor() or platform.machine()} threads={torch.get_num_threads()}"


def provenance(**extra: Any) -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": library_versions(), "hardware": hardware(), **extra}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path in the destination's directory; rename onto `path` on success only.

    A crash (even SIGKILL) leaves either the old file or the new one, never a torn file; the
    temp file is removed on exceptions (a SIGKILL can leave a `.tmp-*` file, which readers ignore
    and the next writer cleans with `clean_temp`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".tmp-{glob_escape(path.name)}.*"):  # left by a killed writer of this file
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def clean_temp(directory: str | os.PathLike) -> None:
    """Remove temp files a killed writer left behind in `directory`."""
    d = Path(directory)
    if d.is_dir():
        for p in d.glob(".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
