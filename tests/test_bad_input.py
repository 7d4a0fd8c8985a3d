"""Reliability (issue 8): every malformed config or input fails fast through the CLI with exit 2 and
exactly one stderr line `error: <what> — <fix>`, no traceback, and no earlier result file touched.

Most cases run in-process through `benchmark.cli.main` (a subprocess costs ~3-7 s of torch import);
a handful run as real subprocesses to check the whole path, logging included."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY_GMM_SUITE,
    TINY_RUN,
    assert_one_line_error,
    cli_in_process,
    run_cli,
    write_suite,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- suite mutations: (id, function(suite dict) -> suite dict | str (raw YAML text)) --------------

def _exp(s):
    return s["experiments"][0]


def _set(path, value):
    def f(s):
        d = s
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        return s
    return f


def _pop(path):
    def f(s):
        d = s
        for k in path[:-1]:
            d = d[k]
        d.pop(path[-1])
        return s
    return f


def _add_exp(**e):
    def f(s):
        base = copy.deepcopy(_exp(s))
        base.update(e)
        s["experiments"].append(base)
        return s
    return f


def _only_exp(**e):
    def f(s):
        base = copy.deepcopy(_exp(s))
        base.update(e)
        s["experiments"] = [base]
        return s
    return f


def _with_digits_cd(s):
    s["datasets"]["digits"] = {"kind": "digits"}
    s["experiments"].append({"method": "cd", "dataset": "digits", "variant": "x", "teacher": "edm-tiny",
                             "train": {"images": 64, "batch": 32, "lr": 1e-3}, "steps": [1]})
    return s


CONFIG_CASES = {
    "malformed_yaml": "name: x\ndatasets: {gmm: {kind: gmm}\nexperiments: [\n",
    "yaml_is_a_list": "- name\n- datasets\n",
    "empty_file": "",
    "unknown_top_level_key": _set(["sedes"], [0]),
    "unknown_train_key": _set(["experiments", 0, "train", "learning_rate"], 0.1),
    "unknown_dataset_key": _set(["datasets", "gmm", "dims"], 3),
    "unknown_dataset_kind": _set(["datasets", "gmm", "kind"], "mnist"),
    "unknown_method": _set(["experiments", 0, "method"], "flowmatch"),
    "wrong_type_images": _set(["experiments", 0, "train", "images"], "lots"),
    "wrong_type_steps": _set(["experiments", 0, "steps"], "4"),
    "wrong_type_lr": _set(["experiments", 0, "train", "lr"], [0.1]),
    "negative_training_budget": _set(["experiments", 0, "train", "images"], -5),
    "zero_batch": _set(["experiments", 0, "train", "batch"], 0),
    "zero_lr": _set(["experiments", 0, "train", "lr"], 0),
    "negative_seed": _set(["seeds"], [-1]),
    "num_samples_below_2": _set(["num_samples"], 1),
    "missing_experiments": _pop(["experiments"]),
    "empty_experiments": _set(["experiments"], []),
    "missing_train": _pop(["experiments", 0, "train"]),
    "experiment_on_unknown_dataset": _set(["experiments", 0, "dataset"], "cifar"),
    "duplicate_step_budgets": _set(["experiments", 0, "steps"], [2, 2]),
    "zero_step_budget": _set(["experiments", 0, "steps"], [0]),
    "negative_step_budget": _set(["experiments", 0, "steps"], [-3]),
    "missing_teacher": _only_exp(method="cd", variant="x"),
    "teacher_on_another_dataset": _with_digits_cd,
    "teacher_not_an_experiment": _add_exp(method="cd", variant="x", teacher="edm-huge"),
    "teacher_for_a_teacherless_method": _add_exp(variant="y", teacher="edm-tiny"),
    "unknown_method_param": _set(["experiments", 0, "params"], {"p_meen": -1.2}),
    "unknown_edm_solver": _set(["experiments", 0, "params"], {"solver": "rk4"}),
    "imm_batch_not_divisible_by_group": _only_exp(method="imm", variant="x",
                                                  train={"images": 60, "batch": 30, "lr": 1e-3}),
    "mcm_steps_not_multiple_of_segments": _only_exp(method="mcm-ct", variant="x", params={"segments": 4},
                                                    steps=[2]),
    "pd_rounds_not_decreasing": _add_exp(method="pd", variant="x", rounds=[2, 4]),
    "duplicate_experiment": _add_exp(),
    "dataset_dim_zero": _set(["datasets", "gmm", "dim"], 0),
    "suite_name_with_spaces": _set(["name"], "my suite!"),
    "variant_with_slash": _set(["experiments", 0, "variant"], "tiny/x"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_malformed_suite_fails_with_one_line(case, tmp_path, capsys, results):
    mut = CONFIG_CASES[case]
    path = tmp_path / "bad.yaml"
    if isinstance(mut, str):
        path.write_text(mut)
    else:
        write_suite(path, mut(copy.deepcopy(TINY_GMM_SUITE)))
    rc, err = cli_in_process(capsys, "validate", "--suite", path)
    assert_one_line_error(rc, err)
    # the same suite must also stop `train` before any work (out is an earlier result: untouched)
    rc, err = cli_in_process(capsys, "train", "--suite", path, "--run", TINY_RUN, "--data", tmp_path / "nodata",
                   "--out", results / "final.pt", "--no-progress")
    assert_one_line_error(rc, err)


# --- CLI / file inputs ---------------------------------------------------------------------------

def _truncated(src: Path, dst: Path) -> Path:
    """A copy cut in half, with the original's sidecar (a crash mid-copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    side = src.with_suffix(src.suffix + ".sha256")
    if side.exists():
        shutil.copy(side, dst.with_suffix(dst.suffix + ".sha256"))
    return dst


def _cd_suite(tmp_path):
    s = copy.deepcopy(TINY_GMM_SUITE)
    s["experiments"].append({"method": "cd", "dataset": "gmm", "variant": "x",
                             "net": {"type": "mlp", "hidden": 16, "depth": 2},
                             "train": {"images": 64, "batch": 32, "lr": 1e-3}, "steps": [1]})
    return write_suite(tmp_path / "cd.yaml", s)


def _npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# each case: (tmp_path, suite_file, data_dir, trained final.pt, results out dir) -> argv
INPUT_CASES = {
    "unknown_suite_name": lambda t, s, d, c, o: ["validate", "--suite", "nonexistent"],
    "suite_file_missing": lambda t, s, d, c, o: ["validate", "--suite", t / "missing.yaml"],
    "unknown_run_id": lambda t, s, d, c, o: ["train", "--suite", s, "--run", "gmm/edm-huge-s0", "--data", d,
                                             "--out", o / "final.pt"],
    "run_id_for_unknown_seed": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", "gmm/edm-tiny-s7",
                                                      "--ckpt", c, "--steps", "2", "--out", o / "steps3.npz"],
    "prepare_unknown_dataset": lambda t, s, d, c, o: ["prepare", "--suite", s, "--dataset", "imagenet",
                                                      "--out", o / "manifest.json"],
    "prepare_cifar10_empty_dir": lambda t, s, d, c, o: [
        "prepare", "--suite", _cifar_suite(t), "--dataset", "cifar", "--out", o / "manifest.json"],
    "train_on_unprepared_data": lambda t, s, d, c, o: ["train", "--suite", s, "--run", TINY_RUN,
                                                       "--data", t / "empty", "--out", o / "final.pt"],
    "train_on_tampered_data": lambda t, s, d, c, o: ["train", "--suite", s, "--run", TINY_RUN,
                                                     "--data", _tampered(d, t), "--out", o / "final.pt"],
    "train_unknown_net_type": lambda t, s, d, c, o: [
        "train", "--suite", write_suite(t / "net.yaml", _set(["experiments", 0, "net"], {"type": "transformer"})(
            copy.deepcopy(TINY_GMM_SUITE))), "--run", TINY_RUN, "--data", d, "--out", o / "final.pt"],
    "train_missing_teacher_ckpt": lambda t, s, d, c, o: ["train", "--suite", _cd_suite(t), "--run", "gmm/cd-x-s0",
                                                         "--data", d, "--teacher", t / "no.pt",
                                                         "--out", o / "final.pt"],
    "train_truncated_teacher_ckpt": lambda t, s, d, c, o: [
        "train", "--suite", _cd_suite(t), "--run", "gmm/cd-x-s0", "--data", d,
        "--teacher", _truncated(c, t / "tt/ckpt/final.pt"), "--out", o / "final.pt"],
    "train_nan_step_not_an_integer": None,  # env var case, below
    "sample_zero_steps": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN, "--ckpt", c,
                                                "--steps", "0", "--out", o / "steps3.npz"],
    "sample_negative_steps": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN, "--ckpt", c,
                                                    "--steps", "-2", "--out", o / "steps3.npz"],
    "sample_steps_not_an_integer": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN, "--ckpt", c,
                                                          "--steps", "two", "--out", o / "steps3.npz"],
    "sample_one_sample": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN, "--ckpt", c,
                                                "--steps", "2", "--num", "1", "--out", o / "steps3.npz"],
    "sample_zero_batch": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN, "--ckpt", c,
                                                "--steps", "2", "--batch", "0", "--out", o / "steps3.npz"],
    "sample_truncated_ckpt": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN,
                                                    "--ckpt", _truncated(c, t / "trunc/final.pt"), "--steps", "2",
                                                    "--out", o / "steps3.npz"],
    "sample_ckpt_without_sidecar": lambda t, s, d, c, o: [
        "sample", "--suite", s, "--run", TINY_RUN, "--ckpt", _copy_no_sidecar(c, t), "--steps", "2",
        "--out", o / "steps3.npz"],
    "sample_missing_ckpt": lambda t, s, d, c, o: ["sample", "--suite", s, "--run", TINY_RUN, "--ckpt", t / "no.pt",
                                                  "--steps", "2", "--out", o / "steps3.npz"],
    "evaluate_corrupt_npz": lambda t, s, d, c, o: [
        "evaluate", "--samples", _bytes(t / "bad.npz", b"PK\x03\x04garbage" * 10), "--data", d,
        "--out", o / "steps3.json"],
    "evaluate_npz_without_samples": lambda t, s, d, c, o: [
        "evaluate", "--samples", _npz(t / "x.npz", images=np.zeros((4, 2), np.float32)), "--data", d,
        "--out", o / "steps3.json"],
    "evaluate_wrong_vector_dim": lambda t, s, d, c, o: [
        "evaluate", "--samples", _npz(t / "x.npz", samples=np.zeros((64, 3), np.float32)), "--data", d,
        "--out", o / "steps3.json"],
    "evaluate_images_for_vector_data": lambda t, s, d, c, o: [
        "evaluate", "--samples", _npz(t / "x.npz", samples=np.zeros((8, 8, 8, 1), np.uint8)), "--data", d,
        "--out", o / "steps3.json"],
    "evaluate_nonfinite_samples": lambda t, s, d, c, o: [
        "evaluate", "--samples", _npz(t / "x.npz", samples=np.full((64, 2), np.nan, np.float32)), "--data", d,
        "--out", o / "steps3.json"],
    "evaluate_missing_samples": lambda t, s, d, c, o: ["evaluate", "--samples", t / "none.npz", "--data", d,
                                                       "--out", o / "steps3.json"],
    "evaluate_ref_without_equals": lambda t, s, d, c, o: [
        "evaluate", "--samples", _npz(t / "x.npz", samples=np.zeros((64, 2), np.float32)), "--data", d,
        "--ref", "digitnet", "--out", o / "steps3.json"],
    "evaluate_denoiser_truncated_ckpt": lambda t, s, d, c, o: [
        "evaluate-denoiser", "--suite", s, "--run", TINY_RUN, "--ckpt", _truncated(c, t / "tr/final.pt"),
        "--data", d, "--out", o / "denoiser.json"],
    "aggregate_with_missing_metrics": lambda t, s, d, c, o: ["aggregate", "--suite", s, "--results-root", t / "r",
                                                             "--out", o / "results.csv"],
    "fit_missing_results_csv": lambda t, s, d, c, o: ["fit", "--results", t / "none.csv",
                                                      "--out", o / "scaling.csv"],
    "fit_corrupt_results_csv": lambda t, s, d, c, o: ["fit", "--results", _bytes(t / "r.csv", b"\x00\xff,,\n\"x"),
                                                      "--out", o / "scaling.csv"],
    "unknown_subcommand": lambda t, s, d, c, o: ["trian", "--suite", s],
}
del INPUT_CASES["train_nan_step_not_an_integer"]


def _bytes(p: Path, b: bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b)
    return p


def _copy_no_sidecar(c: Path, t: Path) -> Path:
    dst = t / "nosidecar/final.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(c, dst)
    return dst


def _tampered(d: Path, t: Path) -> Path:
    bad = t / "tampered"
    shutil.copytree(d, bad)
    arr = np.load(bad / "train.npy")
    arr[0, 0] += 1
    np.save(bad / "train.npy", arr)
    return bad


def _cifar_suite(t: Path) -> Path:
    (t / "emptycifar").mkdir(exist_ok=True)
    s = copy.deepcopy(TINY_GMM_SUITE)
    s["datasets"]["cifar"] = {"kind": "cifar10", "path": str(t / "emptycifar")}
    return write_suite(t / "cifar.yaml", s)


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_bad_cli_input_fails_with_one_line(case, tmp_path, capsys, tiny_suite_file, gmm_data, trained, results):
    argv = INPUT_CASES[case](tmp_path, tiny_suite_file, gmm_data, trained, results)
    rc, err = cli_in_process(capsys, *argv)
    assert_one_line_error(rc, err)


@pytest.mark.parametrize("var", ["FEWSTEP_INJECT_NAN_STEP", "FEWSTEP_THREADS"])
def test_malformed_environment_variable_fails_with_one_line(var, tmp_path, capsys, monkeypatch, tiny_suite_file,
                                                            gmm_data, results):
    monkeypatch.setenv(var, "abc")
    rc, err = cli_in_process(capsys, "train", "--suite", tiny_suite_file, "--run", TINY_RUN, "--data", gmm_data,
                   "--out", results / "final.pt", "--no-progress")
    line = assert_one_line_error(rc, err)
    assert var in line


# --- the same contract through a real process (logging handlers, interpreter exit) --------------

SUBPROCESS_CASES = ["malformed_yaml", "sample_zero_steps", "sample_truncated_ckpt", "evaluate_corrupt_npz",
                    "prepare_cifar10_empty_dir"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_through_a_subprocess(case, tmp_path, tiny_suite_file, gmm_data, trained, results):
    if case in CONFIG_CASES:
        (tmp_path / "bad.yaml").write_text(CONFIG_CASES[case])
        argv = ["validate", "--suite", tmp_path / "bad.yaml"]
    else:
        argv = INPUT_CASES[case](tmp_path, tiny_suite_file, gmm_data, trained, results)
    r = run_cli(*argv)
    assert_one_line_error(r.returncode, r.stderr)
