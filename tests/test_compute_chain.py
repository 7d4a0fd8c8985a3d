"""Compute accounting along a teacher chain (DESIGN §6): a distilled result's total compute is its own
plus everything upstream, so PD round k's total equals the sum over EDM + rounds 1..k."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import TINY_GMM_SUITE

from benchmark.config import expand_suite, run_dir
from benchmark.train import train_run


@pytest.fixture(scope="module")
def chain(tmp_path_factory, gmm_data):
    raw = copy.deepcopy(TINY_GMM_SUITE)
    raw["experiments"][0]["train"].update(images=320, ckpt_every_images=0)
    raw["experiments"].append({
        "method": "pd", "dataset": "gmm", "variant": "p", "net": raw["experiments"][0]["net"],
        "rounds": [2, 1], "steps": [2], "train": {"images": 160, "batch": 32, "lr": 1e-3}})
    suite = expand_suite(raw)
    root = tmp_path_factory.mktemp("results")
    out = {}
    for rid in ("gmm/edm-tiny-s0", "gmm/pd-p.n2-s0", "gmm/pd-p.n1-s0"):
        run = suite.runs[rid]
        teacher = run_dir(root, suite.name, suite.runs[run.teacher]) / "ckpt" / "final.pt" if run.teacher else None
        final = run_dir(root, suite.name, run) / "ckpt" / "final.pt"
        train_run(run, suite, gmm_data, final, teacher, progress=False)
        out[rid] = json.loads((final.parent.parent / "compute.json").read_text())
    return out


def test_pd_round_total_flops_is_the_sum_over_its_chain(chain):
    edm, r1, r2 = chain["gmm/edm-tiny-s0"], chain["gmm/pd-p.n2-s0"], chain["gmm/pd-p.n1-s0"]
    assert edm["teacher_flops"] == 0 and edm["total_flops"] == edm["train_flops"] > 0
    assert r1["teacher_flops"] == pytest.approx(edm["total_flops"])
    assert r2["total_flops"] == pytest.approx(edm["train_flops"] + r1["train_flops"] + r2["train_flops"])


def test_distillation_counts_two_teacher_forwards_per_example(chain):
    """PD's target needs two teacher DDIM steps per example (PD Alg. 2): teacher forwards are
    counted in the student's own training FLOPs."""
    r1 = chain["gmm/pd-p.n2-s0"]
    assert r1["teacher_examples"] == 2 * r1["train_images"]
    own = (r1["examples_grad"] * r1["fwd_bwd_flops_per_example"] + r1["examples_nograd"]
           * r1["forward_flops_per_example"] + r1["teacher_examples"] * r1["teacher_forward_flops_per_example"])
    assert r1["train_flops"] == pytest.approx(own)
    assert r1["teacher"]["sha256"] and r1["teacher"]["run"] == "gmm/edm-tiny-s0"
