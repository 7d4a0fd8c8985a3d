"""Reliability (issues 8, 13): SIGKILL a train / sample / evaluate job at random (seeded) moments, rerun it,
and check the result equals an uninterrupted run's bit for bit, no `.tmp-*` file is left, and a killed
training run repeats at most one checkpoint interval of work. Every kill must land in a live process
(a kill after the job exited would test nothing).

The whole workflow too: kill -9 the README's command (`python -m benchmark run`, Snakemake and its jobs)
and re-run the same command, with no `snakemake --unlock`; a deleted checkpoint is redone by a plain
re-run, and a changed config re-trains.

The default run kills once per stage and once through Snakemake; the `slow` tests kill 20 times across
the three stages and 3 times through Snakemake."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TINY_GMM_SUITE,
    TINY_RUN,
    cli_env,
    popen_cli,
    run_cli,
    signal_when_logging,
    wait_for_content,
    write_suite,
)

from benchmark import checkpoint

CKPT_EVERY_STEPS = TINY_GMM_SUITE["experiments"][0]["train"]["ckpt_every_images"] // \
    TINY_GMM_SUITE["experiments"][0]["train"]["batch"]
SAMPLE_NUM, SAMPLE_STEPS = 4000, 3


def _train_args(suite, data, out):
    return ["train", "--suite", suite, "--run", TINY_RUN, "--data", data, "--out", out, "--threads", "1",
            "--no-progress"]


def _sample_args(suite, ckpt, out):
    return ["sample", "--suite", suite, "--run", TINY_RUN, "--ckpt", ckpt, "--steps", str(SAMPLE_STEPS),
            "--num", str(SAMPLE_NUM), "--batch", "250", "--out", out, "--threads", "1", "--no-progress"]


def _eval_args(samples, data, out):
    return ["evaluate", "--samples", samples, "--data", data, "--out", out, "--threads", "1"]


def _ok(*args):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r


def _logged_steps(final_pt: Path) -> list[int]:
    p = final_pt.parent.parent / "train.jsonl"
    out = []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line)["step"])
            except ValueError:
                break  # torn last line
    return out


def _no_temp(root: Path) -> None:
    left = [str(p) for p in Path(root).rglob(".tmp-*")]
    assert not left, f"temp files left behind: {left}"


def _same_ckpt(a: Path, b: Path) -> None:
    sa, sb = checkpoint.load(a), checkpoint.load(b)
    for key in ("net", "ema"):
        assert sa[key].keys() == sb[key].keys()
        for k in sa[key]:
            assert torch.equal(sa[key][k], sb[key][k]), f"{key}/{k} differs after kill + rerun"
    assert sa["step"] == sb["step"] and sa["counts"] == sb["counts"]


def _metric_rows(p: Path) -> list[tuple]:
    return [(r["metric"], r["value"]) for r in json.loads(p.read_text())["rows"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_suite_file, gmm_data):
    """Uninterrupted outputs of the three stages, and each stage's wall time (the kill window)."""
    d = tmp_path_factory.mktemp("killref")
    ckpt, samples, metrics = d / "run/ckpt/final.pt", d / "run/samples/s.npz", d / "run/metrics/s.json"
    t = {}
    for name, args in (("train", _train_args(tiny_suite_file, gmm_data, ckpt)),
                       ("sample", _sample_args(tiny_suite_file, ckpt, samples)),
                       ("evaluate", _eval_args(samples, gmm_data, metrics))):
        t0 = time.perf_counter()
        _ok(*args)
        t[name] = time.perf_counter() - t0
    lines = (ckpt.parent.parent / "train.jsonl").read_text().splitlines()
    t["train_loop"] = json.loads(lines[-1])["seconds"]  # wall time of the loop itself (no imports)
    return {"ckpt": ckpt, "samples": samples, "metrics": metrics, "seconds": t}


def _kill_at(args, delay: float, wait_for: Path | None = None) -> bool:
    """Start `python -m benchmark ARGS`, SIGKILL it `delay` s later (after `wait_for` appears, if given).
    Returns whether it was still running when killed."""
    p = popen_cli(*args)
    if wait_for is not None:
        wait_for_content(p, wait_for)
    time.sleep(delay)
    alive = p.poll() is None
    if alive:
        p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    return alive


def _campaign(kills: dict[str, int], seed: int, ref, tmp_path, suite, data) -> dict[str, int]:
    """Kill each stage `kills[stage]` times at seeded random moments; after each kill rerun and compare."""
    rng = random.Random(seed)
    passed = {"train": 0, "sample": 0, "evaluate": 0}
    sec = ref["seconds"]
    for stage, n in kills.items():
        for i in range(n):
            d = tmp_path / f"{stage}{i}"
            if stage == "train":
                out = d / "run/ckpt/final.pt"
                # kill while the loop runs: after the first logged step, within the loop's wall time
                alive = _kill_at(_train_args(suite, data, out), rng.uniform(0, 1.3 * sec["train_loop"]),
                                 wait_for=out.parent.parent / "train.jsonl")
                assert alive, "the kill came after training had finished"
                done = max(_logged_steps(out), default=0)
                good = checkpoint.latest_good(out.parent)
                resume = checkpoint.load(good)["step"] if good else 0
                assert done - resume <= CKPT_EVERY_STEPS, (done, resume)  # at most one interval repeated
                _ok(*_train_args(suite, data, out))
                _same_ckpt(out, ref["ckpt"])
                steps = _logged_steps(out)
                assert steps == sorted(set(steps)) == list(range(1, steps[-1] + 1))  # each step logged once
            elif stage == "sample":
                out = d / "run/samples/s.npz"
                assert _kill_at(_sample_args(suite, ref["ckpt"], out), rng.uniform(0.2, 0.8) * sec["sample"]), \
                    "the kill came after sampling had finished"
                _ok(*_sample_args(suite, ref["ckpt"], out))
                assert np.array_equal(np.load(out)["samples"], np.load(ref["samples"])["samples"])
            else:
                out = d / "run/metrics/s.json"
                assert _kill_at(_eval_args(ref["samples"], data, out), rng.uniform(0.2, 0.8) * sec["evaluate"]), \
                    "the kill came after evaluation had finished"
                _ok(*_eval_args(ref["samples"], data, out))
                assert _metric_rows(out) == _metric_rows(ref["metrics"])
            _no_temp(d)
            passed[stage] += 1
    return passed


def test_killed_jobs_rerun_to_identical_outputs_once_per_stage(reference, tmp_path, tiny_suite_file, gmm_data):
    passed = _campaign({"train": 1, "sample": 1, "evaluate": 1}, 0, reference, tmp_path, tiny_suite_file,
                       gmm_data)
    assert sum(passed.values()) == 3, passed


@pytest.mark.slow
def test_twenty_random_kills_across_stages_all_recover(reference, tmp_path, tiny_suite_file, gmm_data):
    passed = _campaign({"train": 8, "sample": 6, "evaluate": 6}, 1234, reference, tmp_path, tiny_suite_file,
                       gmm_data)
    print(f"kill campaign: {sum(passed.values())}/20 recovered ({passed})")
    assert sum(passed.values()) == 20, passed


# --- the whole workflow: kill -9 the README's command, re-run the same command -----------------------

def _readme_run(workdir: Path, suite: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmark", "run", "--suite", str(suite), "--directory", str(workdir),
            "--cores", "2", *extra]


def _workflow_ok(workdir: Path, suite: Path, *extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run(_readme_run(workdir, suite, *extra), capture_output=True, text=True, env=cli_env(),
                       cwd=workdir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _kill_workflow(workdir: Path, suite: Path, wait_for: Path | None, delay: float) -> None:
    """Start the README's command in its own process group, SIGKILL the whole group (wrapper, Snakemake,
    jobs: a lost node) `delay` s after `wait_for` appears; assert it was live and left a stale lock."""
    p = subprocess.Popen(_readme_run(workdir, suite), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=cli_env(), cwd=workdir, start_new_session=True)
    t_end = time.monotonic() + 300
    while wait_for is not None and not wait_for.exists() and p.poll() is None and time.monotonic() < t_end:
        time.sleep(0.05)
    time.sleep(delay)
    alive = p.poll() is None
    if alive:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert alive, "the workflow had finished before the kill"
    assert any((workdir / ".snakemake/locks").glob("*")), "the kill left no Snakemake lock to recover from"


def _run_ckpt(workdir: Path) -> Path:
    return workdir / "results" / TINY_GMM_SUITE["name"] / TINY_RUN / "ckpt/final.pt"


def _change_lr(suite: Path) -> None:
    exp = TINY_GMM_SUITE["experiments"][0]
    write_suite(suite, {**TINY_GMM_SUITE, "experiments": [{**exp, "train": {**exp["train"], "lr": 0.001}}]})


def test_killed_workflow_resumes_with_the_readme_command(reference, tmp_path):
    suite = write_suite(tmp_path / "tiny.yaml", TINY_GMM_SUITE)
    work = tmp_path / "w"
    work.mkdir()
    # kill while the training job runs (after its first logged step)
    _kill_workflow(work, suite, _run_ckpt(work).parent.parent / "train.jsonl", 0.2)
    _workflow_ok(work, suite)  # the plain re-run: no unlock step
    assert (work / "results" / TINY_GMM_SUITE["name"] / "results.csv").exists()
    assert (work / "reports" / TINY_GMM_SUITE["name"] / "index.html").exists()
    _same_ckpt(_run_ckpt(work), reference["ckpt"])
    _no_temp(work / "results")
    # a changed sample count re-samples without re-training; a changed hyperparameter re-trains
    # (Snakemake's params trigger: num_samples, and the run's config hash)
    write_suite(suite, {**TINY_GMM_SUITE, "num_samples": 48})
    jobs = _job_names(_workflow_ok(work, suite, "--", "--dry-run").stdout)
    assert "sample" in jobs and "train" not in jobs, jobs
    _change_lr(suite)
    r = _workflow_ok(work, suite, "--", "--dry-run")
    assert "train" in _job_names(r.stdout), r.stdout[-2000:]


def _job_names(dry_run: str) -> set[str]:
    """Rule names of a dry run's job-stats table ('job  count' rows)."""
    table = dry_run.split("Job stats:")[-1].split("Reasons:")[0]
    return {ln.split()[0] for ln in table.splitlines() if len(ln.split()) == 2 and ln.split()[1].isdigit()}


@pytest.mark.slow
def test_three_random_workflow_kills_resume_and_a_deleted_checkpoint_is_redone(reference, tmp_path):
    rng = random.Random(7)
    suite = write_suite(tmp_path / "tiny.yaml", TINY_GMM_SUITE)
    work = tmp_path / "w"
    work.mkdir()
    for i in range(3):  # any moment of the first ~20 s: prepare, train, sample, evaluate
        _kill_workflow(work, suite, None, rng.uniform(4, 20))
        _workflow_ok(work, suite)
        _same_ckpt(_run_ckpt(work), reference["ckpt"])
        _no_temp(work / "results")
        if i < 2:
            (work / "results").rename(tmp_path / f"done{i}")  # the next kill starts from scratch
    # a checkpoint deleted "as told" by a corrupt-checkpoint error is redone by the same command
    results = work / "results" / TINY_GMM_SUITE["name"] / "results.csv"
    before = results.stat().st_mtime_ns
    _run_ckpt(work).unlink()
    _workflow_ok(work, suite)
    _same_ckpt(_run_ckpt(work), reference["ckpt"])
    assert results.stat().st_mtime_ns > before, "results.csv was not rebuilt from the redone checkpoint"


def test_run_rebuilds_missing_intermediates_only_once_a_suite_has_results(tmp_path):
    """Snakemake does not redo a missing checkpoint/shard when results.csv looks up to date; `run` then
    names them in --forcerun. Before a first complete run nothing is forced (Snakemake builds it all)."""
    import argparse

    from benchmark.runner import _missing_intermediates

    suite = write_suite(tmp_path / "tiny.yaml", TINY_GMM_SUITE)
    args = argparse.Namespace(suite=str(suite), config=None)
    assert _missing_intermediates(args, tmp_path) == []
    rdir = tmp_path / "results" / TINY_GMM_SUITE["name"] / TINY_RUN
    for rel in ["ckpt/final.pt"] + [f"{d}/steps{k}.{e}" for k in (2, 3) for d, e in
                                    (("samples", "npz"), ("samples", "json"), ("metrics", "json"))]:
        (rdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (rdir / rel).write_bytes(b"x")
    (rdir.parent.parent / "results.csv").write_text("a\n1\n")
    assert _missing_intermediates(args, tmp_path) == []
    (rdir / "ckpt/final.pt").unlink()
    (rdir / "samples/steps3.npz").unlink()
    forced = _missing_intermediates(args, tmp_path)
    assert forced == [str((rdir / p).relative_to(tmp_path)) for p in ("ckpt/final.pt", "samples/steps3.npz")]
    args.config = ["results=elsewhere"]  # --config results=DIR moves where it looks
    assert _missing_intermediates(args, tmp_path) == []


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, gmm_data):
    """The tiny suite trained for 1500 steps without interval checkpoints: (suite file, final.pt)."""
    import copy

    d = tmp_path_factory.mktemp("long")
    suite = copy.deepcopy(TINY_GMM_SUITE)
    suite["experiments"][0]["train"] |= {"images": 48000, "ckpt_every_images": 0}
    sf = write_suite(d / "long.yaml", suite)
    ref = d / "ref/run/ckpt/final.pt"
    _ok(*_train_args(sf, gmm_data, ref))
    return sf, ref


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_scheduler_stop_signal_checkpoints_after_the_current_step_and_a_rerun_resumes_there(
        sig, tmp_path, gmm_data, long_run):
    """SIGTERM (a time limit or preemption) or SIGUSR1 (`sbatch --signal=USR1@300`'s warning): the
    run finishes its step, writes stepN.pt, exits with one line naming it; nothing of the steps done
    is lost (the checkpoint is the last logged step), and a plain re-run resumes at exactly N and
    ends bit-identical to an uninterrupted run."""
    sf, ref = long_run
    out = tmp_path / "stopped/run/ckpt/final.pt"
    rc, err = signal_when_logging(popen_cli(*_train_args(sf, gmm_data, out)), out.parent.parent / "train.jsonl",
                                  sig)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"stopped by signal {int(sig)} after step" in err and "re-run the same command" in err, err
    n = int(err.split("after step ")[1].split()[0])
    ckpts = list(out.parent.glob("step*.pt"))
    assert [checkpoint.load(c)["step"] for c in ckpts] == [n] and not out.exists()
    assert max(_logged_steps(out)) == n  # no finished step is lost
    _ok(*_train_args(sf, gmm_data, out))
    _same_ckpt(out, ref)
    steps = _logged_steps(out)
    assert steps == list(range(1, steps[-1] + 1))  # resumed at n: every step logged once
    _no_temp(tmp_path / "stopped")
