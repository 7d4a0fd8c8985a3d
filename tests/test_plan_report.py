"""The report's "planned vs spent" section (issue #22) on a small set of finished runs: projected FLOPs
equal the counted ones exactly, projected device-hours are the FLOPs at the plan's MFU on the device
the run used, and the achieved MFU is what the measured device-hours imply."""

from __future__ import annotations

import json

import pytest
from conftest import torch_threads

from benchmark.config import expand_suite, run_dir
from benchmark.hardware import CPU_CORE_PEAK
from benchmark.report.html import planned_html, planned_section
from benchmark.report.planned import planned_vs_spent
from benchmark.validation import validate_schema

MLP = {"type": "mlp", "hidden": 16, "depth": 2}


def _suite(lr: float = 1e-3):
    raw = {"name": "plannedtest", "datasets": {"gmm": {"kind": "gmm", "dim": 2, "components": 4, "n_train": 256,
                                                        "n_test": 64}},
           "experiments": [
               {"method": "edm", "dataset": "gmm", "variant": "t", "net": MLP, "steps": [1],
                "train": {"images": 256, "batch": 32, "lr": lr}},
               {"method": "cd", "dataset": "gmm", "variant": "t", "net": MLP, "steps": [1],
                "train": {"images": 128, "batch": 32, "lr": 1e-3}}]}
    validate_schema(raw, "plannedtest")
    return expand_suite(raw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from benchmark.prepare import prepare_dataset
    from benchmark.train import train_run

    root = tmp_path_factory.mktemp("planned")
    suite = _suite()
    data = root / "data" / "gmm"
    prepare_dataset("gmm", suite.datasets["gmm"], data / "manifest.json", progress=False)
    with torch_threads(1):
        for rid in ("gmm/edm-t-s0", "gmm/cd-t-s0"):
            run = suite.runs[rid]
            out = run_dir(root, suite.name, run) / "ckpt" / "final.pt"
            teacher = run_dir(root, suite.name, suite.runs[run.teacher]) / "ckpt" / "final.pt" if run.teacher else None
            train_run(run, suite, data, out, teacher, progress=False)
    return suite, root


def test_planned_flops_equal_the_spent_ones_and_hours_follow_the_mfu(finished):
    suite, root = finished
    df = planned_vs_spent(suite, root, measured={}).set_index("run")
    assert list(df.index) == ["gmm/edm-t-s0", "gmm/cd-t-s0"]
    for rid in df.index:
        comp = json.loads((run_dir(root, suite.name, suite.runs[rid]) / "compute.json").read_text())
        r = df.loc[rid]
        assert r["FLOPs agree"] == "exact" and r["planned train FLOPs"] == comp["train_flops"]
        peak = int(comp["hardware"].rpartition("threads=")[2]) * CPU_CORE_PEAK  # the threads the run used
        assert r["planned device-hours"] == pytest.approx(comp["train_flops"] / (peak * 0.4 * 3600))
        assert r["spent device-hours"] == comp["device_hours"]
        assert r["achieved MFU"] == pytest.approx(comp["train_flops"] / (comp["device_seconds"] * peak))
        assert r["MFU assumed"] == "40% fp32 (assumed)"
    html = "\n".join(planned_html(df.reset_index()))
    assert '<h2 id="planned">Planned vs spent</h2>' in html and "gmm/cd-t-s0" in html and "exact" in html


def test_a_run_whose_config_changed_since_it_finished_is_not_planned(finished):
    _, root = finished
    df = planned_vs_spent(_suite(lr=2e-3), root, measured={}).set_index("run")
    assert df.loc["gmm/edm-t-s0", "FLOPs agree"] == "not planned: config changed"
    assert df.loc["gmm/cd-t-s0", "FLOPs agree"] == "not planned: config changed"  # its teacher changed


def test_the_section_says_why_when_the_suite_config_is_unknown(tmp_path):
    out = "\n".join(planned_section("nosuchsuite", tmp_path))
    assert "Not planned: the suite config could not be loaded (unknown suite &#x27;nosuchsuite&#x27;)" in out
    assert planned_section("smoke", tmp_path)[1] == "<p>No finished run yet.</p>"
