"""Shared fixtures and helpers: tiny suites, a prepared GMM dataset, a CLI runner (subprocess or
in-process), a network-call counter, the Fréchet distance to known moments, and one-thread torch.

Note: tests/test_metrics_*.py import `write_prepared` from test_extractors; nothing here shadows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# The tiny gmm EDM run used by the train/kill/bad-input tests: 2-D mixture, small MLP.
TINY_GMM_SUITE = {
    "name": "tinytest",
    "seeds": [0],
    "num_samples": 64,
    "sample_batch": 32,
    "datasets": {"gmm": {"kind": "gmm", "dim": 2, "components": 4, "n_train": 512, "n_test": 256}},
    "experiments": [{
        "method": "edm", "dataset": "gmm", "variant": "tiny",
        "net": {"type": "mlp", "hidden": 16, "depth": 2},
        "train": {"images": 1280, "batch": 32, "lr": 0.002, "ema_halflife_images": 200,
                  "ckpt_every_images": 320, "log_every_steps": 1},
        "steps": [2, 3],
    }],
}
TINY_RUN = "gmm/edm-tiny-s0"


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FEWSTEP_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               FEWSTEP_GIT_COMMIT="testcommit", PYTHONPATH=str(REPO))
    env.pop("FEWSTEP_INJECT_NAN_STEP", None)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m benchmark ARGS` as a subprocess; returns rc/stdout/stderr (text)."""
    return subprocess.run([PY, "-m", "benchmark", *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=cwd or REPO)


def popen_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "benchmark", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env or cli_env(), cwd=cwd or REPO)


def write_suite(path: Path, suite: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> hex): a before/after snapshot."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(rc: int, stderr: str) -> str:
    """The CLI contract of DESIGN §10: exit 2, exactly one stderr line `error: <what> — <fix>`."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and len(lines) == 1, f"expected exactly one line 'error: ...', got:\n{stderr}"
    assert " — " in err[0], f"error line lacks the '— <fix>' part: {err[0]}"
    return err[0]


@pytest.fixture
def results(tmp_path):
    """A results dir holding earlier outputs; each failing command targets one of them and must
    leave every one untouched (the bad-input tests' 'nothing already written is lost')."""
    r = tmp_path / "results"
    for rel, content in {"out/manifest.json": b"{}", "out/final.pt": b"old ckpt", "out/steps3.npz": b"old npz",
                         "out/steps3.json": b"{}", "out/results.csv": b"a,b\n1,2\n", "out/scaling.csv": b"x\n",
                         "out/denoiser.json": b"{}", "out/index.html": b"old"}.items():
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_bytes(content)
    before = tree_hashes(r)
    yield r / "out"
    assert tree_hashes(r) == before, "a failing command modified an earlier result file"


@pytest.fixture(scope="session")
def tiny_suite_file(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite") / "tinytest.yaml", TINY_GMM_SUITE)


@pytest.fixture(scope="session")
def gmm_data(tmp_path_factory, tiny_suite_file) -> Path:
    """The tiny suite's gmm dataset, prepared once per session through the real `prepare` code."""
    from benchmark.prepare import prepare_dataset

    d = tmp_path_factory.mktemp("data") / "gmm"
    prepare_dataset("gmm", TINY_GMM_SUITE["datasets"]["gmm"], d / "manifest.json")
    return d


@pytest.fixture(scope="session")
def tiny_suite(tiny_suite_file):
    from benchmark.config import load_suite

    return load_suite(tiny_suite_file)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_suite, gmm_data):
    """A finished tiny run (final.pt, compute.json and intermediate checkpoints) to sample and evaluate
    from; one per test module, so a module that damages its files never touches another's."""
    from benchmark.train import train_run

    out = tmp_path_factory.mktemp("trained") / "gmm/edm-tiny-s0/ckpt/final.pt"
    with torch_threads(1):
        train_run(tiny_suite.run(TINY_RUN), tiny_suite, gmm_data, out, progress=False)
    return out


def cli_in_process(capsys, *args) -> tuple[int, str]:
    """In-process `python -m benchmark ARGS`: (exit status, stderr); argparse errors (SystemExit) count
    as exits too."""
    from benchmark.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def signal_when_logging(p: subprocess.Popen, log: Path, sig: int, timeout: float = 60.0) -> tuple[int, str]:
    """Once `log` has its first line (the job is in its loop) and 0.2 s more, send `sig` to the still
    running `p`; returns (exit status, stderr) after it exits."""
    wait_for_content(p, log, timeout)
    time.sleep(0.2)
    assert p.poll() is None, "the job finished before the signal"
    p.send_signal(sig)
    err = p.communicate(timeout=timeout)[1]
    return p.returncode, err


def wait_for_content(p: subprocess.Popen, path: Path, timeout: float = 60.0) -> None:
    """Wait until `path` is non-empty, `p` has exited, or `timeout` seconds have passed."""
    t_end = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size) and p.poll() is None and time.monotonic() < t_end:
        time.sleep(0.01)


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch on `n` threads inside the block (the machine's cores are shared); restores the
    previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run torch on one thread (the machine's cores are shared); restores the previous setting."""
    with torch_threads(1):
        yield


class CountingNet(torch.nn.Module):
    """Wraps a raw net `net(x, c)` and counts its calls: the oracle for a method's `nfe(steps)`."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, c):
        self.calls += 1
        return self.net(x, c)


def frechet_to_moments(x, mean, cov) -> float:
    """Fréchet distance between N(mean(x), cov(x)) of the samples x [N, D] and N(mean, cov), in
    float64 with scipy's matrix square root (independent of benchmark.metrics)."""
    x = np.asarray(x, dtype=np.float64)
    mu, sig = x.mean(0), np.cov(x, rowvar=False)
    covmean = scipy.linalg.sqrtm(sig @ cov).real
    return float(((mu - mean) ** 2).sum() + np.trace(sig + cov - 2 * covmean))


def frechet_to_gmm(x, gmm) -> float:
    """Fréchet distance between the samples' Gaussian and the mixture's exact mean and covariance."""
    return frechet_to_moments(x, gmm.mean().numpy(), gmm.cov().numpy())


class ExactPlusResidual(torch.nn.Module):
    """An 'EDM checkpoint' that is exactly the mixture's denoiser plus a zero-initialised MLP residual:
    a student that starts as the teacher (what init_from_teacher does with a real EDM checkpoint), at a
    fraction of the cost of pre-fitting an EDM net. Used by the ECT and MCM training tests."""

    def __init__(self, gmm, hidden: int = 32):
        from benchmark.data.gmm import ExactDenoiserNet
        from benchmark.nets.mlp import MLP

        super().__init__()
        self.exact = ExactDenoiserNet(gmm)
        self.res = MLP(gmm.dim, hidden=hidden, depth=1)
        torch.nn.init.zeros_(self.res.out[-1].weight)
        torch.nn.init.zeros_(self.res.out[-1].bias)

    def forward(self, x, c):
        return self.exact(x, c) + self.res(x, c)
