"""`benchmark plan` (issue #22), its parts against analytic answers: the device table, pass counts per
method, the memory terms, the DAG schedule, the paper-budget comparison, the CLI's one-line errors and
the resources file the train rule reads. (Exactness against finished runs: tests/test_plan_exact.py.)"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import assert_one_line_error, cli_in_process, write_suite
from test_compute_counter import PASSES
from torch import nn

from benchmark.config import expand_suite
from benchmark.errors import ConfigError
from benchmark.hardware import DEVICES, GIB, default_mfu, key_for_cuda_name, key_for_hardware, parse_hardware
from benchmark.plan import budgets as B
from benchmark.plan.core import make_settings, plan_suite
from benchmark.plan.memory import saved_activation_bytes
from benchmark.plan.schedule import Job, critical_path, list_schedule
from benchmark.validation import validate_schema

pytestmark = pytest.mark.usefixtures("one_thread")
MLP = {"type": "mlp", "hidden": 32, "depth": 2}


def gmm_suite(experiments: list[dict], **top) -> dict:
    raw = {"name": "plantest", "num_samples": 100, "sample_batch": 50,
           "datasets": {"gmm": {"kind": "gmm", "dim": 2, "components": 4, "n_train": 512, "n_test": 64,
                                "paper_dataset": "toy"}},
           "experiments": experiments, **top}
    validate_schema(raw, "plantest")
    return raw


def exp(method: str, images: int = 640, batch: int = 64, **kw) -> dict:
    return {"method": method, "dataset": "gmm", "variant": "mlp", "net": dict(MLP), "steps": [1, 2],
            "train": {"images": images, "batch": batch, "lr": 1e-3}, **kw}


def plan_of(raw: dict, hardware: str = "cpu", **kw):
    suite = expand_suite(raw)
    return suite, plan_suite(suite, make_settings(suite, hardware, measured={}, **kw), measured={})


# --- the device table -----------------------------------------------------------------------------

def test_device_table_holds_the_shared_keys_with_the_datasheet_dense_peaks():
    assert {"a100-40gb", "a100-80gb", "v100-16gb", "v100-32gb", "h100-80gb", "h200", "cpu"} <= set(DEVICES)
    a100, h200, v100 = DEVICES["a100-80gb"], DEVICES["h200"], DEVICES["v100-32gb"]
    assert (a100.bf16, a100.tf32, a100.fp32, a100.memory_bytes) == (312e12, 156e12, 19.5e12, 80 * GIB)
    assert (h200.bf16, h200.memory_bytes) == (989.4e12, 141 * GIB)
    assert v100.bf16 is None and v100.fp32 == 15.7e12 and DEVICES["a100-40gb"].memory_bytes == 40 * GIB
    with pytest.raises(ConfigError, match="has no bf16 peak"):
        v100.peak("bf16")


def test_hardware_spec_is_name_and_count():
    assert parse_hardware("a100-80gb:8") == (DEVICES["a100-80gb"], 8)
    assert parse_hardware("H200") == (DEVICES["h200"], 1)
    for bad, msg in (("b300:2", "unknown device 'b300'"), ("h200:0", "not an integer >= 1"),
                     ("h200:x", "not an integer >= 1")):
        with pytest.raises(ConfigError, match=msg):
            parse_hardware(bad)


def test_cuda_device_names_map_to_the_most_specific_key():
    assert key_for_cuda_name("NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert key_for_cuda_name("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert key_for_cuda_name("NVIDIA H100 80GB HBM3") == "h100-80gb"
    assert key_for_cuda_name("NVIDIA H200") == "h200" and key_for_cuda_name("Tesla V100-SXM2-16GB") == "v100-16gb"
    assert key_for_cuda_name("NVIDIA B200") is None
    assert key_for_hardware("NVIDIA H200 x8") == "h200" and key_for_hardware("cpu:x86_64 threads=2") == "cpu"


def test_default_mfu_is_the_measured_record_of_the_device_else_40_percent_assumed():
    rec = {"h200": {"mfu_bf16": 0.37, "mfu_fp32": None, "net": "SongUNet", "measured_at": "2026-01-02",
                    "command": "make perf", "git_commit": "abc"}}
    assert default_mfu("h200", "bf16", rec) == (0.37, "measured by `make perf` on 2026-01-02 (SongUNet)")
    assert default_mfu("h200", "fp32", rec) == (0.40, "assumed")  # no fp32 figure measured
    assert default_mfu("a100-80gb", "bf16", rec) == (0.40, "assumed")


# --- FLOPs and passes -----------------------------------------------------------------------------

def test_planned_passes_are_each_methods_closed_count_times_the_images_seen():
    experiments = [exp("edm")] + [exp(m, variant=m.replace("-", "")) for m in PASSES if m not in ("edm", "imm")]
    experiments.append(exp("imm", params={"group_size": 4}))
    for e in experiments:
        if e["method"] == "pd":
            e["params"], e["steps"] = {"student_steps": 2, "teacher_kind": "edm"}, [2]
        if e["method"].startswith("mcm"):
            e["params"], e["steps"] = {"segments": 2, "T_d": 8}, [2]
    suite, plan = plan_of(gmm_suite(experiments))
    images = 640
    for p in plan.runs.values():
        grad, nograd, target, teacher = PASSES[p.run.method]
        want = {"online_grad": grad * images, "online_nograd": nograd * images}
        want |= {"target": target * images} if target else {}
        want |= {"teacher": teacher * images} if p.run.method in ("cd", "pd", "mcm-cd", "ect") else {}
        assert p.flops.counts == want, p.run.id
        f = p.flops
        assert f.train_flops == images * (grad * f.fwd_bwd_flops + (nograd + target) * f.forward_flops
                                          + teacher * f.role_forward_flops.get("teacher", 0))
        assert f.sample_flops_per_image == {k: f.forward_flops * f.nfe[k] for k in f.nfe}
        if p.run.teacher:  # the teacher's total is carried, as compute.json carries it
            assert f.teacher_flops == plan.runs[p.run.teacher].flops.total_flops


def test_ect_makes_the_same_passes_when_every_r_is_zero():
    """At stage 0, r = 0 for t < ln 7: a batch of t = 0.5 has no consistency target at all, yet its step
    makes the target pass like any other, so passes per step never depend on the draws."""
    from benchmark.compute import TrainingPasses
    from benchmark.nets import build_net
    from methods.ect import ECT

    for p_mean in (math.log(0.5), math.log(20.0)):
        m = ECT(total_steps=10, data_shape=(2,), p_mean=p_mean, p_std=0.0)
        net = build_net(MLP, (2,), 1)
        m.setup(net, None)
        passes = TrainingPasses(net, None, m)
        m.loss(net, torch.randn(16, 2), 0, torch.Generator().manual_seed(0))
        assert passes.counts() == {"online_grad": 16, "online_nograd": 16}, p_mean


# --- memory ---------------------------------------------------------------------------------------

def test_saved_activation_bytes_count_each_saved_storage_once_and_no_weights():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.empty(7, 10, device="meta")
    # Linear 1 saves its input (7 x 10), ReLU its output (7 x 20), which Linear 2 saves again: one storage
    assert saved_activation_bytes(lambda: net(x), [net]) == 4 * 7 * 10 + 4 * 7 * 20
    with torch.no_grad():
        assert saved_activation_bytes(lambda: net(x), [net]) == 0


def test_memory_terms_are_the_fp32_byte_counts_of_what_training_holds():
    raw = gmm_suite([exp("edm", batch=64), exp("cd", variant="cd", batch=64)])
    suite, plan = plan_of(raw)
    edm, cd = plan.runs["gmm/edm-mlp-s0"], plan.runs["gmm/cd-cd-s0"]
    P = edm.flops.num_params
    assert {k: edm.memory.terms[k] for k in ("weights", "gradients", "optimizer", "ema", "method nets")} == {
        "weights": 4 * P, "gradients": 4 * P, "optimizer": 8 * P, "ema": 4 * P, "method nets": 0}
    assert cd.memory.terms["method nets"] == 4 * P + 4 * P  # CM target EMA + frozen EDM teacher
    assert edm.memory.terms["data"] == 4 * 512 * 2  # the 512 x 2 float32 training set
    # DDP over 2 ranks: half the batch's activations per device; its buckets are the gradients
    # (gradient_as_bucket_view), so no term is added
    _, ddp = plan_of(dict(raw, resources={"train": {"gpus": 2}}), "cpu:2")
    d = ddp.runs["gmm/edm-mlp-s0"].memory.terms
    assert d["activations"] == pytest.approx(edm.memory.terms["activations"] / 2, rel=0.05)
    assert set(d) == set(edm.memory.terms) and d["gradients"] == 4 * P
    assert ddp.runs["gmm/edm-mlp-s0"].micro_batch == 32
    # FSDP over 4 ranks shards weights, grads, Adam and EMA, plus one gathered block
    _, fsdp = plan_of(raw, "cpu:4", engine="fsdp", train_gpus=4)
    f = fsdp.runs["gmm/edm-mlp-s0"].memory.terms
    assert (f["weights"], f["optimizer"], f["ema"]) == (P, 2 * P, P) and 0 < f["gathered block"] < 4 * P
    assert any("what-if: planned as if the suite set resources.train.gpus = 4" == n for n in fsdp.notes)


def test_bf16_halves_the_activation_term():
    raw = gmm_suite([exp("edm")], precision={"bf16": True})
    _, fp32 = plan_of(raw, "a100-80gb", precision="fp32")
    _, bf16 = plan_of(raw, "a100-80gb")
    a, b = (p.runs["gmm/edm-mlp-s0"] for p in (fp32, bf16))
    assert b.memory.terms["activations"] == a.memory.terms["activations"] / 2
    assert bf16.settings.precision == "bf16" and b.train_device_hours == pytest.approx(a.train_device_hours / 16)


# --- wall time ------------------------------------------------------------------------------------

def test_critical_path_and_list_schedule_of_a_small_dag():
    jobs = {"a": Job("a", 2.0, 1), "b": Job("b", 3.0, 1, ("a",)), "c": Job("c", 4.0, 1)}
    assert critical_path(jobs) == (5.0, ["a", "b"])
    assert list_schedule(jobs, 1)[0] == 9.0  # one device: the jobs one after another
    assert list_schedule(jobs, 2) == (5.0, {"a": 0.0, "c": 0.0, "b": 2.0})  # the critical path's length
    jobs["d"] = Job("d", 1.5, 2, ("c",))  # needs both devices: waits for b to free one
    assert critical_path(jobs) == (5.5, ["c", "d"])
    assert list_schedule(jobs, 2) == (6.5, {"a": 0.0, "c": 0.0, "b": 2.0, "d": 5.0})
    with pytest.raises(ConfigError, match="needs 2 devices but the plan has 1"):
        list_schedule({"d": Job("d", 1.0, 2)}, 1)


def test_students_wait_for_their_teacher_on_the_critical_path():
    suite, plan = plan_of(gmm_suite([exp("edm", images=6400), exp("cd", variant="cd", images=640)]))
    sch = plan.schedule
    assert sch.critical_path[:2] == ["train gmm/edm-mlp-s0", "train gmm/cd-cd-s0"]
    edm, cd = plan.runs["gmm/edm-mlp-s0"], plan.runs["gmm/cd-cd-s0"]
    assert sch.starts["train gmm/cd-cd-s0"] == pytest.approx(edm.train_device_hours)
    assert sch.critical_path_hours == pytest.approx(edm.train_device_hours + cd.train_device_hours
                                                    + cd.sample_device_hours + cd.eval_device_hours)


# --- paper budgets --------------------------------------------------------------------------------

def _paper(tmp_path, rows: list[dict]):
    cols = ["method", "method_key", "dataset", "dataset_key", "resolution", "steps", "metric", "extractor", "value",
            "verified", "recipe", "train_images", *B.BUDGET_COLUMNS]
    path = tmp_path / "paper.csv"
    pd.DataFrame([{c: r.get(c, "") for c in cols} for r in rows], columns=cols).to_csv(path, index=False)
    return path


def test_paper_budgets_without_the_columns_or_values_are_no_budget(tmp_path):
    assert B.load_budgets(tmp_path / "absent.csv") == []
    path = _paper(tmp_path, [{"method_key": "ect", "dataset_key": "cifar10"}])
    assert B.load_budgets(path) == []


def test_a_run_planned_over_3x_the_papers_budget_is_flagged_with_its_reasons(tmp_path):
    raw = gmm_suite([exp("edm", images=64000)])
    row = {"method_key": "edm", "dataset_key": "toy", "recipe": "paper-short", "train_images": "6400",
           "train_hardware": "a100-80gb", "train_devices": "1", "train_device_hours": "1e-9",
           "train_budget_scope": "own", "train_budget_source": "Test et al., Table 1"}
    suite = expand_suite(raw)
    settings = make_settings(suite, "h200", measured={}, mfu=0.5)
    plan = plan_suite(suite, settings, measured={}, paper_csv=_paper(tmp_path, [row]))
    c = plan.runs["gmm/edm-mlp-s0"].comparison
    f = plan.runs["gmm/edm-mlp-s0"].flops
    assert c.on_device == "a100-80gb" and c.budget.source == "Test et al., Table 1"
    assert c.planned_hours == pytest.approx(f.train_flops / (19.5e12 * 0.5 * 3600))  # the paper's device, fp32
    assert c.ratio == pytest.approx(c.planned_hours / 1e-9) and c.flagged
    why = " ".join(c.explanations)
    assert "the paper trained 6400 images, ours 6.4e+04" in why and "with `precision: {bf16: true}`" in why


def test_paper_budget_scope_total_compares_the_total_with_the_teacher(tmp_path):
    raw = gmm_suite([exp("edm", images=6400), exp("ect", variant="ect", images=640)])
    row = {"method_key": "ect", "dataset_key": "toy", "train_hardware": "tpu-v4", "train_devices": "8",
           "train_device_hours": "1", "train_budget_scope": "total"}
    suite = expand_suite(raw)
    plan = plan_suite(suite, make_settings(suite, "cpu", measured={}), measured={},
                      paper_csv=_paper(tmp_path, [row]))
    p = plan.runs["gmm/ect-ect-s0"]
    assert p.comparison.on_device == "cpu"
    assert "tpu-v4 device is not in the device table" in p.comparison.explanations[0]
    assert p.comparison.planned_hours == pytest.approx(p.flops.total_flops / plan.settings.flops_per_hour)


# --- the CLI --------------------------------------------------------------------------------------

def test_plan_text_and_json_agree(capsys, tmp_path):
    from benchmark.cli import main

    path = write_suite(tmp_path / "s.yaml", gmm_suite([exp("edm"), exp("cd", variant="cd")]))
    args = ["plan", "--suite", str(path), "--hardware", "h100-80gb:2", "--measured", str(tmp_path / "no.json")]
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "on 2 x h100-80gb" in text and "fp32 dense peak 66.9 TFLOP/s x MFU 40% (assumed)" in text
    assert "gmm/edm-mlp-s0" in text and "gmm/cd-cd-s0" in text and "total (2 runs)" in text
    assert "critical path" in text and "list-scheduled makespan" in text
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    suite = expand_suite(gmm_suite([exp("edm"), exp("cd", variant="cd")]))
    plan = plan_suite(suite, make_settings(suite, "h100-80gb:2", measured={}), measured={})
    assert doc["runs"]["gmm/cd-cd-s0"]["train_flops"] == plan.runs["gmm/cd-cd-s0"].flops.train_flops
    assert doc["mfu"] == 0.4 and doc["mfu_source"] == "assumed" and doc["count"] == 2


@pytest.mark.parametrize("argv_tail, msg", [
    (["--hardware", "b300"], "unknown device 'b300'"),
    (["--hardware", "h200", "--mfu", "1.5"], "--mfu 1.5 is not a fraction in (0, 1]"),
    (["--hardware", "h200", "--train-gpus", "3"], "global batch 64 does not split over 3 ranks"),
])
def test_bad_plan_arguments_are_one_line_errors(capsys, tmp_path, argv_tail, msg):
    path = write_suite(tmp_path / "s.yaml", gmm_suite([exp("edm")]))
    rc, err = cli_in_process(capsys, "plan", "--suite", path, *argv_tail)
    assert msg in assert_one_line_error(rc, err)


def test_a_suite_that_does_not_validate_is_a_one_line_error(capsys, tmp_path):
    bad = gmm_suite([exp("edm")])
    bad["experiments"][0]["method"] = "nosuch"
    rc, err = cli_in_process(capsys, "plan", "--suite", write_suite(tmp_path / "bad.yaml", bad))
    assert "unknown method 'nosuch'" in assert_one_line_error(rc, err)


def test_a_run_the_device_cannot_hold_is_a_one_line_error_naming_the_memory(capsys, tmp_path):
    big = gmm_suite([exp("edm", images=2**22, batch=2**22, net={"type": "mlp", "hidden": 512, "depth": 4})])
    path = write_suite(tmp_path / "big.yaml", big)
    out = tmp_path / "res.json"
    rc, err = cli_in_process(capsys, "plan", "--suite", path, "--hardware", "v100-16gb", "--write-resources", out)
    line = assert_one_line_error(rc, err)
    assert "run gmm/edm-mlp-s0 needs" in line and "GiB per device" in line and "v100-16gb has 16 GiB" in line
    assert "activations" in line and not out.exists()  # nothing written


# --- resources for the profiles -------------------------------------------------------------------

def test_write_resources_gives_each_train_job_its_runtime_and_memory(capsys, tmp_path):
    from benchmark.cli import main
    from benchmark.plan.resources import OVERHEAD_MINUTES, default_path, read_resources, train_resources

    raw = gmm_suite([exp("edm", images=64000), exp("cd", variant="cd")], resources={"train": {"mem_mb": 999}})
    path = write_suite(tmp_path / "s.yaml", raw)
    assert main(["plan", "--suite", str(path), "--hardware", "cpu", "--mfu", "0.0001", "--results-root",
                 str(tmp_path), "--write-resources", "--measured", str(tmp_path / "no.json")]) == 0
    assert "written to" in capsys.readouterr().err
    doc = json.loads(default_path(tmp_path, "plantest").read_text())
    suite = expand_suite(raw)
    plan = plan_suite(suite, make_settings(suite, "cpu", mfu=0.0001, measured={}), measured={})
    p = plan.runs["gmm/edm-mlp-s0"]
    entry = doc["train"]["gmm/edm-mlp-s0"]
    assert entry["runtime"] == math.ceil(1.5 * p.train_device_hours * 60 + OVERHEAD_MINUTES)
    assert entry["mem_mb"] == math.ceil(1.5 * (2**30 + p.memory.total) / 2**20)  # cpu: the peak is host memory
    assert entry["config_hash"] == suite.runs["gmm/edm-mlp-s0"].config_hash and doc["hardware"] == "cpu:1"
    assert read_resources(default_path(tmp_path, "plantest"), suite)["gmm/edm-mlp-s0"] == {
        "runtime": entry["runtime"], "mem_mb": entry["mem_mb"]}

    class WC:  # the rule's wildcards
        dataset, run = "gmm", "edm-mlp-s0"

    res = train_resources(suite, "cpu", str(tmp_path), lambda wc: suite.runs[f"{wc.dataset}/{wc.run}"])
    assert res["runtime"](WC) == entry["runtime"] and res["mem_mb"](WC) == entry["mem_mb"]
    # a run changed since planning keeps the suite's value; a file that is not a plan stops with one line
    changed = dict(raw, experiments=[exp("edm", images=64000, train={"images": 64000, "batch": 64, "lr": 2e-3})])
    s2 = expand_suite(gmm_suite(changed["experiments"], resources={"train": {"mem_mb": 999}}))
    assert read_resources(default_path(tmp_path, "plantest"), s2) == {}
    default_path(tmp_path, "plantest").write_text("{}")
    with pytest.raises(SystemExit) as e:
        train_resources(suite, "cpu", str(tmp_path), None)
    assert e.value.code == 2
    assert "is not a planned-resources file" in capsys.readouterr().err


def test_the_train_rule_takes_runtime_and_memory_from_the_written_plan(tmp_path):
    """`snakemake -n` on the smoke suite lists each train job with the planned runtime and mem_mb."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import REPO, cli_env, run_cli

    r = run_cli("plan", "--suite", "smoke", "--hardware", "cpu", "--mfu", "0.001", "--results-root",
                tmp_path / "results", "--write-resources", "--measured", tmp_path / "no.json")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "results/smoke/planned_resources.json").read_text())
    snakemake = str(Path(sys.executable).parent / "snakemake")
    dry = subprocess.run([snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n",
                          "--config", "suite=smoke"], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    for rid, e in doc["train"].items():
        block = dry.stdout.split(f"output: results/smoke/{rid}/ckpt/final.pt", 1)[1].split("Shell command", 1)[0]
        assert f"runtime={e['runtime']}, mem_mb={e['mem_mb']}" in block, block


def test_paper_device_names_resolve_and_an_impossible_budget_says_so(tmp_path):
    """`a100` (memory variant unstated) is compared on the A100 peaks; a TPU budget at the TPU's bf16 peak;
    a budget the plan's FLOPs could only meet above the peak is named as such."""
    raw = gmm_suite([exp("edm", images=64000), exp("cd", variant="cd")])
    rows = [{"method_key": "edm", "dataset_key": "toy", "train_hardware": "a100", "train_devices": "8",
             "train_device_hours": "1e-12", "train_budget_scope": "own"},
            {"method_key": "cd", "dataset_key": "toy", "train_hardware": "tpu-v5e", "train_devices": "64",
             "train_device_hours": "1000", "train_budget_scope": "own"}]
    suite = expand_suite(raw)
    plan = plan_suite(suite, make_settings(suite, "h200", measured={}), measured={},
                      paper_csv=_paper(tmp_path, rows))
    edm, cd = plan.runs["gmm/edm-mlp-s0"], plan.runs["gmm/cd-cd-s0"]
    assert edm.comparison.on_device == "a100-80gb" and edm.comparison.flagged
    assert edm.comparison.planned_hours == pytest.approx(edm.flops.train_flops / (19.5e12 * 0.4 * 3600))
    assert "above the peak" in edm.comparison.explanations[-1]
    assert cd.comparison.on_device == "tpu-v5e" and not cd.comparison.flagged
    assert cd.comparison.planned_hours == pytest.approx(cd.flops.train_flops / (197e12 * 0.4 * 3600))
    implied = cd.flops.train_flops / (1000 * 3600 * 197e12)
    assert cd.comparison.explanations[-1] == f"the paper's budget implies {implied:.0%} MFU of tpu-v5e's bf16 peak"
