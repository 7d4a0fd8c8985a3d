"""The spine end to end (issue 3): the smoke suite through Snakemake in a temp dir produces
results.csv (DESIGN §3 columns, provenance on every row) and the HTML report; a second run has
nothing to do; a bad suite name stops with one line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DESIGN_COLUMNS = ["suite", "dataset", "resolution", "method", "variant", "seed", "train_images", "train_flops",
                  "teacher_flops", "total_flops", "device_hours", "hardware", "steps", "nfe",
                  "sample_flops_per_image", "metric", "extractor", "num_samples", "value", "paper_value",
                  "config_hash", "git_commit"]

# The smoke DAG (prepare, train 2 nets + digitnet, sample, evaluate, aggregate, fit, report) plus
# `snakemake --report` takes ~80 s on 2 cores: the spine is worth that in the default run.


def _snakemake(workdir: Path, *extra: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                           *extra], capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=workdir)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("smoke")
    r = _snakemake(d, "--config", "suite=smoke")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    return d


def test_smoke_suite_writes_results_csv_with_provenance_on_every_row(smoke):
    path = smoke / "results/smoke/results.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        header = rows[0].keys() if rows else []
    assert set(DESIGN_COLUMNS) <= set(header), set(DESIGN_COLUMNS) - set(header)
    assert {r["dataset"] for r in rows} == {"gmm", "digits"}
    assert {r["steps"] for r in rows if r["steps"]} == {"1", "4"}
    for r in rows:
        for col in ("config_hash", "git_commit", "seed", "extractor", "library"):
            assert r[col] not in ("", "nan", "None"), (col, r)
        assert float(r["value"]) == float(r["value"])  # finite number, not NaN
    # one process, no accumulation, plain fp32 on CPU: what a DDP/bf16 run would record instead
    assert {(r["world_size"], r["grad_accum_steps"], r["engine"], r["precision"]) for r in rows} == {
        ("1", "1", "plain", "fp32")}
    assert all(int(r["micro_batch"]) > 0 for r in rows)
    assert any(r["metric"] == "fd_exact" for r in rows) and any(r["metric"].startswith("fd_digitnet") for r in rows)
    # the denoiser rule: EDM on gmm against the exact denoiser, one row per sigma, no step budget
    den = [r for r in rows if r["metric"].startswith("denoiser_mse") and r["method"] == "edm"]
    assert den and all(r["dataset"] == "gmm" and r["steps"] == "" for r in den)


def test_smoke_suite_writes_the_html_report(smoke):
    html = (smoke / "reports/smoke/index.html").read_text()
    assert "<html" in html.lower() and "edm" in html
    planned = html.split('<h2 id="planned">', 1)[1].split("<h2", 1)[0]  # benchmark plan vs the finished runs
    assert planned.count("<td>exact</td>") == 2, planned


def test_second_run_with_nothing_changed_does_no_work(smoke):
    r = _snakemake(smoke, "-n", "--config", "suite=smoke", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr


def test_snakemake_report_has_every_category_and_caption(smoke):
    out = smoke / "reports/smoke/snakemake-report.html"
    r = _snakemake(smoke, "--config", "suite=smoke", "--report", str(out), timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    html = out.read_text()
    for category in ("Report", "Results", "Scaling laws", "Figures"):
        assert category in html, category
    # captions are rendered from report/*.rst (with the suite name filled in)
    assert "The static report (category" in html and "smoke" in html
    assert "Power-law fits quality(C)" in html and "one row per (run, step budget, metric)" in html
    # the figures directory contributes its PNGs, the workflow's index.html is embedded
    assert "nfe_gmm_fd-exact" in html and "index.html" in html


def test_unknown_suite_stops_with_one_line_error(tmp_path):
    r = _snakemake(tmp_path, "--config", "suite=nonexistent", timeout=300)
    assert r.returncode != 0
    err = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "unknown suite 'nonexistent'" in err[0] and " — " in err[0], r.stdout + r.stderr
    assert "Traceback" not in r.stderr
