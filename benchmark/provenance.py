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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

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


def sidecar_path(path: str | os.PathLike) -> Path:
    """`x.npz` -> `x.npz.sha256` (the format checkpoints use: {"sha256": hex, "file": name})."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def _write_sidecar_for(tmp: Path, final: Path) -> None:
    """Record the sha256 of `tmp` (about to be renamed onto `final`) in final's sidecar. Written
    before the rename, so a kill in between leaves an old file that fails verification (and is
    redone), never a new file without its checksum."""
    write_json(sidecar_path(final), {"sha256": sha256_file(tmp), "file": final.name})


def verify_sidecar(path: str | os.PathLike, rule: str) -> str | None:
    """Check a DAG artefact against its `.sha256` sidecar; InputError (one line) on a mismatch or an
    unreadable sidecar. Returns the hash, or None when there is no sidecar (a file made outside the
    DAG, e.g. by hand or by an older version: its own format checks still apply)."""
    from benchmark.errors import InputError

    p, side = Path(path), sidecar_path(path)
    if not side.exists():
        return None
    try:
        want = json.loads(side.read_text())["sha256"]
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
        raise InputError(f"checksum sidecar {side} is unreadable", f"delete {p} and {side}, then re-run the "
                         f"`{rule}` rule") from None
    have = sha256_file(p)
    if have != want:
        raise InputError(f"{p} does not match its sha256 sidecar (torn or modified file)",
                         f"delete {p} and re-run the `{rule}` rule")
    return have


def read_json(path: str | os.PathLike, rule: str, *, verify: bool = True, fix: str | None = None) -> Any:
    """A JSON artefact of the DAG, checked against its sidecar if it has one; InputError (one line
    naming the file and how to redo it: `fix`, or re-running `rule`) if missing, corrupt or not UTF-8."""
    from benchmark.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} not found", fix or f"run the `{rule}` rule first")
    if verify:
        verify_sidecar(p, rule)
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{p} is not valid JSON (torn or corrupt)",
                         fix or f"delete {p} and re-run the `{rule}` rule") from None


def write_json(path: str | os.PathLike, obj: Any, *, sidecar: bool = False) -> None:
    """Atomic JSON write; with sidecar=True also `path.sha256` for readers that verify."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        if sidecar:
            _write_sidecar_for(tmp, Path(path))


def to_csv(df: pd.DataFrame) -> str:
    """Stable CSV text (fixed float format), so the same inputs give byte-identical files."""
    return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | os.PathLike, *, sidecar: bool = False, **arrays: Any) -> None:
    """Atomic `np.savez`; with sidecar=True also `path.sha256` (see verify_sidecar)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        if sidecar:
            _write_sidecar_for(tmp, Path(path))


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """`fig.savefig(path, **kwargs)` through a temp file and a rename: a killed report never leaves a
    half-written PNG/SVG that a re-run would take for finished. The format comes from `path`."""
    fmt = kwargs.pop("format", None) or Path(path).suffix.lstrip(".") or None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
