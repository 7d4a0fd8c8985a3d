"""An imported (released) network as a run's teacher (`teacher_ckpt:` in a suite): it replaces the
teacher run, its sha256 is part of the student's config hash, a bad file or combination is a one-line
error before anything is written, the student starts from its weights exactly as from a trained
teacher, compute.json says the teacher's training compute was not measured (null, not 0), and the
Snakemake train job takes the file as an input.

The teacher files are written the way `import-checkpoint` writes them (`import_ckpt.imported_state`
+ `checkpoint.save`: state dicts, sha256 sidecar, run 'imported:<released file>'), around the tiny
MLP the gmm suites use; one test imports a real (tiny) DDPM++ state dict through the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_GMM_SUITE, assert_one_line_error, cli_env, torch_threads, write_suite

from benchmark import checkpoint
from benchmark.cli import main
from benchmark.config import expand_suite, run_dir
from benchmark.errors import ConfigError
from benchmark.import_ckpt import imported_state
from benchmark.nets import build_net
from benchmark.provenance import sha256_file
from benchmark.validation import validate_schema

NET = TINY_GMM_SUITE["experiments"][0]["net"]  # {type: mlp, hidden: 16, depth: 2}
STUDENT = "gmm/cd-imp-s0"

pytestmark = pytest.mark.usefixtures("one_thread")


def write_imported(path: Path, net_cfg=NET, shape=(2,), num_classes: int = 0, seed: int = 0,
                   name: str = "edm-gmm-tiny.pkl") -> Path:
    """A released EDM network converted to our format, as `import-checkpoint` saves it."""
    torch.manual_seed(seed)
    net = build_net(net_cfg, tuple(shape), 1, num_classes)
    for p in net.parameters():  # not the init: a teacher the student could not match by chance
        torch.nn.init.normal_(p, std=0.1)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    info = {"kind": "edm", "path": name, "sha256": hashlib.sha256(f"{name}:{seed}".encode()).hexdigest(),
            "params": sum(v.numel() for v in state.values())}
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path, imported_state(name, net_cfg, shape, state, info, num_classes=num_classes))
    return path


def raw_suite(teacher_ckpt, *, method: str = "cd", **extra) -> dict:
    raw = copy.deepcopy(TINY_GMM_SUITE)
    exp = {"method": method, "dataset": "gmm", "variant": "imp", "net": dict(NET), "teacher_ckpt": str(teacher_ckpt),
           "train": {"images": 64, "batch": 32, "lr": 1e-3, "log_every_steps": 1}, "steps": [1, 2]}
    raw["experiments"] = [exp | extra]
    return raw


def expand(raw: dict):
    validate_schema(raw)
    return expand_suite(raw)


# --- (a) config expansion -----------------------------------------------------------------------

def test_teacher_ckpt_replaces_the_teacher_run_and_its_sha256_is_in_the_config_hash(tmp_path, monkeypatch):
    ckpt = write_imported(tmp_path / "ckpt" / "edm.pt")
    run = expand(raw_suite(ckpt)).runs[STUDENT]
    assert run.teacher is None and run.teacher_ckpt == str(ckpt)
    assert run.teacher_sha256 == sha256_file(ckpt)
    assert run.extra["facts"]["teacher"] == "imported:edm-gmm-tiny.pkl"

    # the same bytes elsewhere (relative to the working directory): the same run, nothing re-trains
    monkeypatch.chdir(tmp_path)
    assert expand(raw_suite("ckpt/edm.pt")).runs[STUDENT].config_hash == run.config_hash

    # another network in the same file: another run
    write_imported(ckpt, seed=1)
    changed = expand(raw_suite("ckpt/edm.pt")).runs[STUDENT]
    assert changed.config_hash != run.config_hash and changed.teacher_sha256 != run.teacher_sha256


def test_a_suite_teacher_run_still_hashes_as_before_and_is_a_trained_teacher_fact(tmp_path):
    raw = copy.deepcopy(TINY_GMM_SUITE)
    raw["experiments"].append({"method": "cd", "dataset": "gmm", "variant": "imp", "net": dict(NET),
                               "train": {"images": 64, "batch": 32, "lr": 1e-3}, "steps": [1]})
    run = expand(raw).runs[STUDENT]
    assert run.teacher == "gmm/edm-tiny-s0" and run.teacher_ckpt is None and run.teacher_sha256 is None
    assert run.extra["facts"]["teacher"] == "trained"
    assert expand(raw).runs["gmm/edm-tiny-s0"].extra["facts"]["teacher"] == ""


def test_pd_rounds_take_the_imported_teacher_in_round_one_and_the_previous_round_after(tmp_path):
    ckpt = write_imported(tmp_path / "edm.pt")
    raw = raw_suite(ckpt, method="pd", rounds=[2, 1])
    runs = expand(raw).runs
    first, second = runs["gmm/pd-imp.n2-s0"], runs["gmm/pd-imp.n1-s0"]
    assert first.teacher is None and first.teacher_ckpt == str(ckpt) and first.params["teacher_kind"] == "edm"
    assert second.teacher == first.id and second.teacher_ckpt is None and second.params["teacher_kind"] == "pd"


# --- (b) bad inputs: one line, nothing written --------------------------------------------------

def _corrupt(p: Path) -> Path:
    p.write_bytes(p.read_bytes()[:-7] + b"garbage")
    return p


BAD = {
    "method_without_teacher": (lambda c: raw_suite(c, method="ct"), "takes no teacher", "remove `teacher_ckpt:`"),
    "both_teacher_and_teacher_ckpt": (lambda c: raw_suite(c, teacher="edm-tiny"), "sets both", "keep one"),
    "missing_file": (lambda c: raw_suite(c.parent / "nope.pt"), "nope.pt does not exist",
                     "import-checkpoint SRC --kind edm --out"),
    "corrupt_file": (lambda c: raw_suite(_corrupt(c)), "does not match its sha256 sidecar", "import-checkpoint"),
    "missing_sidecar": (lambda c: (c.with_suffix(".pt.sha256").unlink(), raw_suite(c))[1], "no readable sha256",
                        "import-checkpoint"),
    "wrong_data_shape": (lambda c: raw_suite(write_imported(c, shape=(3,))), "shape (3,)",
                         "this dataset's resolution"),
    "wrong_class_count": (lambda c: raw_suite(write_imported(c, num_classes=4)), "has 4 classes",
                          "conditioning"),
    "student_net_differs": (lambda c: raw_suite(c, net={"type": "mlp", "hidden": 8, "depth": 2}),
                            "cannot start from teacher_ckpt", "set `net:`"),
    "a_consistency_model": (lambda c: (checkpoint.save(c, {**(st := checkpoint.load(c)),
                                                            "source": {**st["source"], "kind": "cm"}}),
                                       raw_suite(c))[1], "holds a 'cm' network", "--kind edm"),
    "a_trained_checkpoint": (lambda c: (checkpoint.save(c, {**checkpoint.load(c), "run": "edm-tiny-s0"}),
                                        raw_suite(c))[1], "not an imported network", "teacher:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_teacher_ckpt_is_a_one_line_error_and_writes_nothing(case, tmp_path, capsys, gmm_data):
    make, what, fix = BAD[case]
    ckpt = write_imported(tmp_path / "in" / "edm.pt")
    raw = make(ckpt)
    with pytest.raises(ConfigError) as e:
        expand(raw)
    assert what in e.value.what and fix in e.value.fix, e.value.one_line()
    suite = write_suite(tmp_path / "in" / "s.yaml", raw)
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    out = tmp_path / "out"
    for argv in (["validate", "--suite", str(suite)],
                 ["train", "--suite", str(suite), "--run", STUDENT, "--data", str(gmm_data),
                  "--teacher", str(ckpt), "--out", str(out / "ckpt" / "final.pt")]):
        rc = main(argv)
        line = assert_one_line_error(rc, capsys.readouterr().err)
        assert what in line
    assert not out.exists() and sorted(p.name for p in (tmp_path / "in").iterdir()) == before


def test_a_trained_teachers_run_refuses_an_imported_file_passed_as_its_teacher(tmp_path, gmm_data, capsys):
    """An imported network enters a run only through `teacher_ckpt:` (hashed), never as a stand-in
    for the named teacher run on the command line."""
    raw = copy.deepcopy(TINY_GMM_SUITE)
    raw["experiments"].append({"method": "cd", "dataset": "gmm", "variant": "imp", "net": dict(NET),
                               "train": {"images": 64, "batch": 32, "lr": 1e-3}, "steps": [1]})
    suite = write_suite(tmp_path / "s.yaml", raw)
    ckpt = write_imported(tmp_path / "edm.pt")
    out = tmp_path / "out"
    rc = main(["train", "--suite", str(suite), "--run", STUDENT, "--data", str(gmm_data), "--teacher", str(ckpt),
               "--out", str(out / "ckpt" / "final.pt")])
    line = assert_one_line_error(rc, capsys.readouterr().err)
    assert "is an imported network" in line and f"teacher_ckpt: {ckpt}" in line
    assert not (out / "ckpt" / "final.pt").exists() and not (out / "compute.json").exists()


def test_train_refuses_a_teacher_file_other_than_the_hashed_one(tmp_path, gmm_data, capsys):
    ckpt = write_imported(tmp_path / "edm.pt")
    suite = write_suite(tmp_path / "s.yaml", raw_suite(ckpt))
    other = write_imported(tmp_path / "other.pt", seed=3)
    rc = main(["train", "--suite", str(suite), "--run", STUDENT, "--data", str(gmm_data), "--teacher", str(other),
               "--out", str(tmp_path / "out" / "ckpt" / "final.pt")])
    assert "is not the run's teacher_ckpt" in assert_one_line_error(rc, capsys.readouterr().err)
    assert not (tmp_path / "out" / "compute.json").exists()


# --- (c) training from the imported teacher ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, gmm_data):
    """A CD run trained for 2 steps from an imported teacher, with the student's weights as they
    were just before its first optimiser step."""
    from benchmark import train as T

    tmp = tmp_path_factory.mktemp("imported")
    ckpt = write_imported(tmp / "ckpt" / "edm.pt")
    suite = expand(raw_suite(ckpt))
    run = suite.runs[STUDENT]
    seen = {}
    real = T._train_steps

    def spy(live, *args, **kw):
        seen.update({k: v.detach().clone() for k, v in live.net.state_dict().items()})
        return real(live, *args, **kw)

    final = run_dir(tmp / "results", suite.name, run) / "ckpt" / "final.pt"
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setattr(T, "_train_steps", spy)
        comp = T.train_run(run, suite, gmm_data, final, ckpt, progress=False)
    return {"suite": suite, "run": run, "ckpt": ckpt, "final": final, "comp": comp, "step0": seen,
            "root": tmp / "results"}


def test_cd_trains_from_the_imported_teacher_starting_from_its_weights_and_reports_unmeasured_teacher_compute(
        trained):
    ckpt, final, comp = trained["ckpt"], trained["final"], trained["comp"]
    teacher, seen = checkpoint.load(ckpt)["ema"], trained["step0"]
    assert seen.keys() == teacher.keys() and all(torch.equal(seen[k], teacher[k]) for k in teacher)
    after = checkpoint.load(final)["net"]
    assert any(not torch.equal(after[k], teacher[k]) for k in teacher)  # and then it trained

    on_disk = json.loads((final.parent.parent / "compute.json").read_text())
    assert on_disk == json.loads(json.dumps(comp))
    sha = sha256_file(ckpt)
    assert comp["teacher_source"] == f"imported:edm.pt@{sha[:12]}"
    assert comp["teacher_flops"] is None and comp["total_excludes_teacher"] is True  # unknown, not 0
    assert comp["unmeasured_teacher"] == comp["teacher_source"]
    assert comp["total_flops"] == comp["train_flops"] > 0 and comp["device_hours_total"] == comp["device_hours"]
    assert comp["teacher"]["sha256"] == sha and comp["teacher"]["run"] == "imported:edm-gmm-tiny.pkl"
    assert comp["teacher_examples"] > 0 and comp["teacher_forward_flops_per_example"] > 0  # its forwards are ours


def test_results_csv_leaves_the_imported_teachers_flops_empty_and_flags_the_total(trained, tmp_path):
    """aggregate: teacher_flops empty (not 0), teacher_source, total_excludes_teacher, the flag and
    the `teacher` fact; the leaderboard marks the total as excluding the imported teacher."""
    import pandas as pd

    from benchmark.aggregate import UNMEASURED_TEACHER_FLAG, aggregate
    from benchmark.report.html import headline_tables
    from benchmark.report.tables import summarise

    suite, run, root = trained["suite"], trained["run"], trained["root"]
    rdir = run_dir(root, suite.name, run)
    for k in run.steps:
        (rdir / "samples").mkdir(exist_ok=True)
        (rdir / "metrics").mkdir(exist_ok=True)
        (rdir / "samples" / f"steps{k}.json").write_text(json.dumps(
            {"nfe": k, "sample_flops_per_image": 1e3 * k, "num_samples": 64}))
        (rdir / "metrics" / f"steps{k}.json").write_text(json.dumps({"rows": [
            {"metric": "fd_exact", "value": 1.0 / k, "extractor": "exact", "library": "exact", "num_samples": 64}]}))
    aggregate(suite, root, tmp_path / "results.csv")
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df) == len(run.steps)
    assert df["teacher_flops"].isna().all() and df["total_excludes_teacher"].all()
    assert (df["total_flops"] == df["train_flops"]).all()
    assert (df["teacher_source"] == trained["comp"]["teacher_source"]).all()
    assert (df["teacher"] == "imported:edm-gmm-tiny.pkl").all()
    assert df["flags"].str.contains(UNMEASURED_TEACHER_FLAG).all()
    (_, _, table, _), = headline_tables(summarise(df))
    assert table["train FLOPs (total)"].str.endswith("+ imported teacher (not measured)").all()


def test_compute_axis_fits_leave_out_totals_that_exclude_an_imported_teacher(tmp_path):
    """scaling.csv: a method whose teacher was imported is fitted on its own training FLOPs only;
    on the total-compute axis its points would sit at a lower bound (as if the teacher were free)."""
    import numpy as np
    import pandas as pd

    from benchmark.scaling import fit_results

    rows = []
    for method, excludes in (("cd", True), ("ect", False)):
        for i, train in enumerate((1e14, 1e15, 1e16, 1e17)):
            rows.append(dict(dataset="cifar10", method=method, variant=f"v{i}", seed=0, steps=1, metric="fid",
                             extractor="inception", library="torch-fidelity", train_flops=train, total_flops=train,
                             total_excludes_teacher=excludes, value=1e4 * train ** -0.3 + 2))
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)  # through the CSV, as the fit rule reads it
    table = fit_results(pd.read_csv(tmp_path / "r.csv"))
    assert sorted(zip(table["method"], table["axis"])) == [
        ("cd", "train_flops"), ("ect", "total_flops"), ("ect", "train_flops")]
    assert np.isfinite(table["b"]).all()


def test_the_imported_teachers_unmeasured_compute_propagates_down_a_pd_chain(tmp_path, gmm_data):
    from benchmark.train import train_run

    ckpt = write_imported(tmp_path / "edm.pt")
    raw = raw_suite(ckpt, method="pd", rounds=[2, 1], train={"images": 64, "batch": 32, "lr": 1e-3})
    suite = expand(raw)
    comps = {}
    for rid, teacher in (("gmm/pd-imp.n2-s0", ckpt), ("gmm/pd-imp.n1-s0", None)):
        run = suite.runs[rid]
        final = run_dir(tmp_path / "r", suite.name, run) / "ckpt" / "final.pt"
        teacher = teacher or run_dir(tmp_path / "r", suite.name, suite.runs[run.teacher]) / "ckpt" / "final.pt"
        comps[rid] = train_run(run, suite, gmm_data, final, teacher, progress=False)
    one, two = comps["gmm/pd-imp.n2-s0"], comps["gmm/pd-imp.n1-s0"]
    assert one["teacher_flops"] is None and two["teacher_flops"] == one["total_flops"]
    assert two["teacher_source"] == "trained:gmm/pd-imp.n2-s0"
    assert two["total_excludes_teacher"] and two["unmeasured_teacher"] == one["teacher_source"]


def test_a_real_import_checkpoint_file_is_a_valid_teacher_ckpt_of_an_image_suite(tmp_path):
    """Through the CLI: a (tiny) DDPM++ state dict of 8x8 grayscale images becomes a teacher of CD on
    digits; a student of another class count is refused."""
    tiny = {"type": "ddpmpp", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
    net = build_net(tiny, (1, 8, 8))
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "edm-digits.pt")
    out = tmp_path / "ckpt" / "edm-digits.pt"
    assert main(["import-checkpoint", str(tmp_path / "edm-digits.pt"), "--kind", "edm", "--out", str(out)]) == 0
    raw = {"name": "img", "num_samples": 1000, "datasets": {"digits": {"kind": "digits"}},
           "experiments": [{"method": "cd", "dataset": "digits", "variant": "imp", "net": tiny,
                            "teacher_ckpt": str(out), "train": {"images": 64, "batch": 32, "lr": 1e-3},
                            "steps": [1]}]}
    run = expand(raw).runs["digits/cd-imp-s0"]
    assert run.teacher_ckpt == str(out) and run.extra["facts"]["teacher"] == "imported:edm-digits.pt"
    raw["experiments"][0]["conditioning"] = "class"
    with pytest.raises(ConfigError, match="has 0 classes, the run \\(class\\) needs 10"):
        expand(raw)


# --- (d) the DAG -------------------------------------------------------------------------------

def test_snakemake_train_job_takes_the_imported_checkpoint_as_input_and_reruns_when_it_changes(tmp_path, monkeypatch):
    """Dry runs of the student's checkpoint: with the teacher file, the data manifest and a finished
    final.pt in place nothing is to be done; a rewritten teacher file re-runs the train job, which
    lists it as an input and passes it as --teacher."""
    import time

    from benchmark.config import load_suite
    from benchmark.provenance import sha256_json

    write_imported(tmp_path / "ckpt" / "edm-gmm.pt")
    suite = write_suite(tmp_path / "s.yaml", raw_suite("ckpt/edm-gmm.pt"))  # relative to the working directory
    monkeypatch.chdir(tmp_path)  # where the workflow resolves the relative teacher_ckpt
    spec = load_suite(suite).datasets["gmm"]
    manifest = tmp_path / "results" / "data" / f"gmm-{sha256_json(spec)[:8]}" / "manifest.json"
    final = Path("results/tinytest/gmm/cd-imp-s0/ckpt/final.pt")
    for p in (manifest, tmp_path / final):  # outputs newer than their inputs
        p.parent.mkdir(parents=True, exist_ok=True)
        time.sleep(0.01)
        p.write_text("{}")

    def dry_run() -> str:
        r = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"),
                            "--directory", str(tmp_path), "--cores", "1", "-n", "-p", str(final),
                            "--config", f"suite={suite}"],
                           capture_output=True, text=True, timeout=300, env=cli_env(), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr

    assert "Nothing to be done" in dry_run()
    time.sleep(0.01)
    write_imported(tmp_path / "ckpt" / "edm-gmm.pt", seed=1)
    out = dry_run()
    job = next(b for b in out.split("\n\n") if "rule train:" in b)
    assert "ckpt/edm-gmm.pt" in job.split("input:")[1].split("output:")[0], job
    assert "Updated input files: ckpt/edm-gmm.pt" in job, job
    assert "--teacher ckpt/edm-gmm.pt" in out or "--teacher 'ckpt/edm-gmm.pt'" in out, out[-3000:]


def test_a_paper_block_stating_its_teacher_compares_it_and_blocks_without_it_do_not():
    from benchmark.recipes import facts_diff

    released = "imported:edm-cifar10-32x32-uncond-vp.pkl"
    assert facts_diff({"teacher": released}, {"teacher": released}) == []
    assert facts_diff({"teacher": released}, {"teacher": "trained"}) == [
        {"field": "teacher", "paper": released, "ours": "trained"}]
    assert facts_diff({"space": "pixel"}, {"teacher": "trained", "space": "pixel"}) == []  # a block stating none


def test_validate_lists_the_imported_file_as_the_runs_teacher(tmp_path, capsys):
    ckpt = write_imported(tmp_path / "edm.pt")
    assert main(["validate", "--suite", str(write_suite(tmp_path / "s.yaml", raw_suite(ckpt)))]) == 0
    assert f"teacher={ckpt} " in capsys.readouterr().out
