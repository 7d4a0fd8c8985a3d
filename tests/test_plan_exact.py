"""`benchmark plan` predicts exactly what finished runs record (issue #22): for every run of the smoke
and quick suites, trained through the real file-backed `train_run` and sampled through `sample_run`,
the planned training FLOPs (own, teacher, total, passes per role) and sampling FLOPs per image of
every step budget equal compute.json's and the sample records' numbers exactly; and the planned peak
memory of a tiny CPU run is within 25 % of torch's measured CPU allocations.

Training budgets are shrunk for speed (every `train.images` becomes a few steps of the recipe's
batch, the grid's budget axis keeps distinct values, ECT advances a stage every step so that each
run crosses phases); the plan is computed for the same shrunk suite, so the comparison stays exact.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import REPO, torch_threads

from benchmark.config import expand_suite, run_dir
from benchmark.expand import topo_order
from benchmark.plan.core import make_settings, plan_suite
from benchmark.validation import validate_schema


def shrunk(name: str, steps: int = 3) -> dict:
    """Suite `name` with every training budget cut to `steps` optimiser steps of its own batch."""
    raw = yaml.safe_load((REPO / "config" / "suites" / f"{name}.yaml").read_text())
    raw = copy.deepcopy(raw)
    for e in raw["experiments"]:
        t = e.setdefault("train", {})
        b = t.get("batch", 128)
        t["images"], t["ckpt_every_images"] = steps * b, 0
        grid = e.get("grid") or {}
        if "train.images" in grid:
            grid["train.images"] = [(steps - 1 + i) * b for i in range(len(grid["train.images"]))]
        if e["method"] == "ect":
            e.setdefault("params", {})["stage_steps"] = 1  # every step a new stage: the probe per phase
    raw["num_samples"], raw["sample_batch"] = 8, 8
    validate_schema(raw, name)
    return raw


def _prepare(suite, root):
    from benchmark.prepare import prepare_dataset

    dirs = {}
    for ds, spec in suite.datasets.items():
        d = root / "data" / ds
        prepare_dataset(ds, spec, d / "manifest.json", progress=False)
        dirs[ds] = d
    return dirs


def _train_and_sample(suite, root):
    """Every run trained (teachers first) and sampled at each budget; returns {run id: (compute, {k: info})}."""
    from benchmark.sample import sample_run
    from benchmark.train import train_run

    data = _prepare(suite, root)
    out = {}
    for rid in topo_order(suite.runs):
        run = suite.runs[rid]
        ckpt = run_dir(root, suite.name, run) / "ckpt" / "final.pt"
        teacher = run_dir(root, suite.name, suite.runs[run.teacher]) / "ckpt" / "final.pt" if run.teacher else None
        comp = train_run(run, suite, data[run.dataset], ckpt, teacher, progress=False)
        infos = {k: sample_run(run, ckpt, k, ckpt.parent.parent / "samples" / f"steps{k}.npz", num_samples=2,
                               batch=2, progress=False) for k in run.steps}
        out[rid] = (comp, infos)
    return out


@pytest.mark.parametrize("name", ["smoke", "quick"])
def test_planned_flops_equal_what_every_finished_run_records(name, tmp_path):
    suite = expand_suite(shrunk(name))
    with torch_threads(1):
        done = _train_and_sample(suite, tmp_path)
        plan = plan_suite(suite, make_settings(suite, "cpu", measured={}), measured={})
    assert set(plan.runs) == set(suite.runs) == set(done)
    methods = set()
    for rid, p in plan.runs.items():
        comp, infos = done[rid]
        f = p.flops
        assert f.counts == comp["passes"], rid
        assert (f.forward_flops, f.fwd_bwd_flops, f.role_forward_flops) == (
            comp["forward_flops_per_example"], comp["fwd_bwd_flops_per_example"], comp["role_forward_flops"]), rid
        assert (f.train_flops, f.teacher_flops, f.total_flops) == (
            comp["train_flops"], comp["teacher_flops"], comp["total_flops"]), rid
        assert f.train_images == comp["train_images"]
        for k, info in infos.items():
            assert f.sample_flops_per_image[k] == info["sample_flops_per_image"], (rid, k)
            assert f.nfe[k] == info["nfe"]
        methods.add(p.run.method)
    if name == "quick":  # every method, with a teacher chain (PD rounds) and a scaling grid
        assert methods == {"edm", "cd", "ct", "ict", "pd", "imm", "ect", "mcm-cd", "mcm-ct"}
        assert any(p.flops.teacher_flops and suite.runs[p.run.teacher].teacher for p in plan.runs.values())


def _measured_train_peak(run, suite, data_dir, out) -> int:
    """Peak bytes of torch's CPU allocations during a whole train_run, from the allocation events of
    torch.profiler (profile_memory=True records every alloc/free of the CPU allocator; tracemalloc
    does not see it): the running sum's maximum over the job."""
    from torch.profiler import ProfilerActivity, profile

    from benchmark.train import train_run

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_run(run, suite, data_dir, out, progress=False)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("method", ["edm", "imm"])
def test_planned_peak_memory_of_a_tiny_cpu_run_is_within_25_percent_of_the_measured(method, tmp_path):
    """A digits UNet at batch 128: the activations dominate, as on a GPU at paper scale."""
    raw = {"name": "memtest", "datasets": {"digits": {"kind": "digits"}}, "experiments": [{
        "method": method, "dataset": "digits", "variant": "unet", "steps": [1],
        "net": {"type": "unet", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1},
        "params": {"group_size": 4} if method == "imm" else {},
        "train": {"images": 3 * 128, "batch": 128, "lr": 1e-3, "ema_decay": 0.99}}]}
    validate_schema(raw, "memtest")
    suite = expand_suite(raw)
    run = next(iter(suite.runs.values()))
    with torch_threads(1):
        data = _prepare(suite, tmp_path)["digits"]
        measured = _measured_train_peak(run, suite, data, tmp_path / "r" / "ckpt" / "final.pt")
        planned = plan_suite(suite, make_settings(suite, "cpu", measured={}), measured={}).runs[run.id].memory
    assert planned.terms["activations"] > 0.5 * planned.total  # the term the test is about
    assert 0.75 <= planned.total / measured <= 1.25, (planned.terms, measured)


def test_planned_flops_of_a_run_distilling_an_imported_teacher_equal_the_recorded(tmp_path):
    """An imported `teacher_ckpt:` network: its training compute is unknown (null, not 0), the
    teacher's forwards are charged at the imported network's measured cost."""
    from test_imported_teacher import raw_suite, write_imported

    from benchmark.train import train_run

    raw = raw_suite(write_imported(tmp_path / "ckpt" / "edm.pt"))
    validate_schema(raw, "imported")
    suite = expand_suite(raw)
    run = suite.runs["gmm/cd-imp-s0"]
    with torch_threads(1):
        data = _prepare(suite, tmp_path)["gmm"]
        comp = train_run(run, suite, data, tmp_path / "r" / "ckpt" / "final.pt", Path(run.teacher_ckpt),
                         progress=False)
        f = plan_suite(suite, make_settings(suite, "cpu", measured={}), measured={}).runs[run.id].flops
    assert comp["teacher_flops"] is None and f.teacher_flops is None
    assert (f.train_flops, f.total_flops, f.counts, f.role_forward_flops) == (
        comp["train_flops"], comp["total_flops"], comp["passes"], comp["role_forward_flops"])
