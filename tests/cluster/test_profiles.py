"""Cluster profiles resolve against the real DAG (issue 16): every stage is one named wildcard
rule carrying the suite's resources, `snakemake -n --profile profiles/kubernetes` and
`profiles/slurm` resolve with their executor plugins installed (skipped where a plugin is
absent), a multi-GPU suite's train job is one torchrun command, and the real Slurm run
(tests/cluster/run_slurm.sh, `make test-cluster`) is wrapped as a slow test."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
STAGES = {"prepare", "train", "sample", "publish_sample", "evaluate", "publish_metrics", "evaluate_denoiser",
          "ref_stats", "train_extractor", "aggregate", "fit", "report"}


def _dry_run(tmp_path: Path, *args: str, suite: str = "smoke", device: str = "cpu") -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([str(SNAKEMAKE), "-n", "-p", *args, "--config", f"suite={suite}", f"device={device}",
                        f"results={tmp_path}/results", f"reports={tmp_path}/reports"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def _plugin(name: str) -> None:
    if importlib.util.find_spec(f"snakemake_executor_plugin_{name}") is None:
        pytest.skip(f"snakemake-executor-plugin-{name} is not installed (pip install -e '.[cluster]')")


@pytest.fixture(scope="module", autouse=True)
def _snakemake():
    if not SNAKEMAKE.exists():
        pytest.skip(f"snakemake not found beside {sys.executable}")


def test_every_stage_is_one_named_wildcard_rule(tmp_path):
    out = _dry_run(tmp_path, "--cores", "1")
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M))
    assert rules == STAGES | {"all"}, rules ^ (STAGES | {"all"})
    # one sampling and one evaluation job per run (2 runs), one publish job per budget (2 x 2)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert (counts["sample"], counts["evaluate"], counts["publish_sample"], counts["publish_metrics"]) == \
        ("2", "2", "4", "4")


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_profile_selects_its_executor(name):
    from snakemake.cli import parse_args

    _, args = parse_args(["--profile", str(REPO / "profiles" / name)])
    assert args.executor == name and args.jobs >= 32 and args.retries >= 1


def test_kubernetes_profile_resolves_with_gpu_resources(tmp_path):
    _plugin("kubernetes")
    if importlib.util.find_spec("snakemake_storage_plugin_fs") is None:
        pytest.skip("snakemake-storage-plugin-fs (the profile's storage provider) is not installed")
    out = _dry_run(tmp_path, "--profile", "profiles/kubernetes", device="cuda")
    res = re.findall(r"^rule train:\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M)
    assert len(res) == 2 and all("gpu=1" in r.split(", ") for r in res), res


def test_slurm_profile_resolves_and_a_multi_gpu_suite_trains_with_torchrun(tmp_path):
    _plugin("slurm")
    if shutil.which("sinfo") is None:
        pytest.skip("Slurm commands (sinfo) are absent: the Slurm executor refuses to start")
    import yaml

    suite = yaml.safe_load((REPO / "config/suites/smoke.yaml").read_text())
    suite["resources"] = {"train": {"gpus": 4, "mem_mb": 64000, "runtime": 600}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    out = _dry_run(tmp_path, "--profile", "profiles/slurm", "--slurm-no-account", device="cuda",
                   suite=str(tmp_path / "s.yaml"))
    assert "--standalone --nproc_per_node 4 -m benchmark -- --log" in out
    res = re.findall(r"^rule train:\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M)
    assert len(res) == 2 and all({"mem_mb=64000", "runtime=600", "gpu=4"} <= set(r.split(", ")) for r in res), res


@pytest.mark.slow
def test_smoke_suite_through_a_real_slurm_cluster_equals_the_local_run(tmp_path):
    """`make test-cluster` as a test: needs root (to install/start Slurm) or Slurm already there."""
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        pytest.skip("needs root to install slurm-wlm, or Slurm installed")
    _plugin("slurm")
    r = subprocess.run(["bash", str(REPO / "tests/cluster/run_slurm.sh"), str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO, env=dict(os.environ, PY=sys.executable), timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "PASS" in r.stdout
