"""`python -m benchmark run`: Snakemake on a suite, safe to re-run after any interruption.

The plain `snakemake` command needs `snakemake --unlock` after a kill and does not rebuild an
intermediate file a user deleted (the final targets look up to date). This wrapper removes a stale
lock when no run is live, passes missing checkpoints/shards/metrics to `--forcerun`, and
supervises Snakemake as its child so a signal reaches it and a dead wrapper leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("fewstep")


def _snakemake_live(root: Path) -> int | None:
    """pid of a live Snakemake process working in `root` (its cwd or its --directory), else None.
    Linux /proc only; elsewhere None (the flock below still guards runs started by `run`)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not any(Path(a).name == "snakemake" for a in argv[:3]):
                continue
            where = Path(os.readlink(d / "cwd"))
            for flag in ("--directory", "-d"):
                if flag in argv[:-1]:
                    where = (where / argv[argv.index(flag) + 1]).resolve()
        except (OSError, ValueError):
            continue  # exited meanwhile, or not ours to inspect
        if where.resolve() == root:
            return int(d.name)
    return None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the `run` wrapper dies (Linux prctl PR_SET_PDEATHSIG), so a
    kill -9 of the wrapper cannot leave a Snakemake behind that still holds the workflow lock."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the wrapper ignores Ctrl-C; Snakemake handles it
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass


def _supervise(argv: list[str]) -> int:
    """Run Snakemake as a child and wait: Ctrl-C reaches it directly (same process group) and a
    SIGTERM to the wrapper (a scheduler's stop) is passed on, so it can stop cleanly and unlock."""
    import signal
    import subprocess

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent)  # noqa: PLW1509 - signal setup only
    old_term = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _missing_intermediates(args, root: Path) -> list[str]:
    """DAG files of the suite (checkpoints, sample shards, metrics) that are missing while the
    suite's results.csv exists. Snakemake does not rebuild a missing intermediate file when the
    final targets look up to date, so deleting a corrupt final.pt "as told" changed nothing;
    `run` passes these to --forcerun, which rebuilds them and everything downstream."""
    from benchmark.config import load_suite, run_dir

    opts = dict(kv.partition("=")[::2] for kv in args.config or [])
    results = root / opts.get("results", "results")
    s = load_suite(args.suite)
    if not (results / s.name / "results.csv").exists():
        return []  # a first or interrupted run: Snakemake builds whatever is missing anyway
    want = []
    for r in s.runs.values():
        d = run_dir(results, s.name, r)
        want += [d / "ckpt" / "final.pt"] + [d / sub / f"steps{k}.{ext}" for k in r.steps
                                              for sub, ext in (("samples", "npz"), ("samples", "json"),
                                                               ("metrics", "json"))]
    return [str(p.relative_to(root)) for p in want if not p.exists()]


def cmd_run(args) -> int:
    """The README's command: `snakemake` on a suite that can simply be re-run after a kill -9.
    Holds an flock on .snakemake/fewstep-run.lock for the whole run (the kernel drops it when the
    process dies); when it can take that lock and no Snakemake process works in the directory, any
    Snakemake lock left there is stale (a killed run) and is removed with `snakemake --unlock`."""
    import fcntl
    import subprocess

    from benchmark.config import suite_path
    from benchmark.errors import ConfigError
    from benchmark.provenance import REPO_ROOT

    root = Path(args.directory).resolve()
    suite_path(args.suite)  # an unknown suite: one line before anything starts
    (root / ".snakemake").mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".snakemake" / "fewstep-run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"another `python -m benchmark run` is live in {root}",
                          "wait for it to finish (a second run would fight over the same files)") from None
    pid = _snakemake_live(root)
    if pid is not None:
        raise ConfigError(f"a Snakemake process (pid {pid}) is live in {root}", "wait for it or stop it, then re-run")
    base = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(root),
            "--config", f"suite={args.suite}", *(args.config or [])]
    locks = root / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        log.info("removing a stale Snakemake lock in %s (left by a killed run; no run is live)", root)
        subprocess.run([*base, "--unlock"], check=False, capture_output=True)
    extra = [a for a in args.snakemake_args if a != "--"]
    missing = _missing_intermediates(args, root)
    if missing:
        log.info("rebuilding %d missing file(s) and what depends on them, e.g. %s", len(missing), missing[0])
        extra += ["--forcerun", *missing]
    rc = _supervise([*base, "--cores", str(args.cores), "--rerun-incomplete", *extra])
    os.close(fd)
    return rc
