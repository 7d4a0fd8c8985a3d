"""Reliability, second pass (issue 13): bad inputs of kinds tests/test_bad_input.py does not hold.
Each fails through the CLI with exit 2 and exactly one stderr line `error: <what> — <fix>`, no
traceback, no earlier result touched, and no shell command smuggled in a name ever runs. Plus the
behaviours that replaced silent wrong results: a checkpoint of another config is never resumed or
sampled, a changed config re-trains.

In-process through `benchmark.cli.main` wherever possible; Snakemake only where the shell path matters."""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    TINY_GMM_SUITE,
    TINY_RUN,
    assert_one_line_error,
    cli_env,
    cli_in_process,
    write_suite,
)

from benchmark import checkpoint
from benchmark.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PWNED = "PWNED"  # the file every injected command would create: `$(touch <tmp>/PWNED)`


def _inject(tmp: Path) -> str:
    return f"$(touch {tmp}/{PWNED})"


# --- suite mutations: function(suite dict, tmp_path) -> suite dict | str | bytes -------------------

def _set(path, value):
    def f(s, t):
        d = s
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value(t) if callable(value) else value
        return s
    return f


def _net(**kw):
    return _set(["experiments", 0, "net"], {"type": "mlp", "hidden": 16, "depth": 2, **kw})


def _rename_dataset(key):
    def f(s, t):
        k = key(t) if callable(key) else key
        s["datasets"] = {k: s["datasets"]["gmm"]}
        s["experiments"][0]["dataset"] = k
        return s
    return f


def _grid(grid):
    def f(s, t):
        s["experiments"][0]["grid"] = {(k(t) if callable(k) else k): (v(t) if callable(v) else v)
                                       for k, v in grid.items()}
        return s
    return f


def _with_digits(num_samples):
    def f(s, t):
        s["datasets"]["digits"] = {"kind": "digits"}
        s["num_samples"] = num_samples
        return s
    return f


GOOD_YAML = """name: t
datasets: {gmm: {kind: gmm, dim: 2}}
experiments:
  - {method: edm, dataset: gmm, variant: tiny, steps: [2], train: {images: 64, batch: 32, lr: 0.002}}
"""

CONFIG_CASES = {
    # duplicate keys (PyYAML keeps the last silently), encoding
    "duplicate_top_level_key": GOOD_YAML + "name: u\n",
    "duplicate_train_key": GOOD_YAML.replace("lr: 0.002}", "lr: 0.002, lr: 0.2}"),
    "duplicate_dataset_key": GOOD_YAML.replace("{gmm: {kind: gmm, dim: 2}}", "{gmm: {kind: gmm}, gmm: {kind: gmm}}"),
    "duplicate_key_in_block_style": "name: t\nseeds: [0]\nseeds: [1]\n" + GOOD_YAML.split("\n", 1)[1],
    "suite_not_utf8": ("name: t\xe9\n" + GOOD_YAML.split("\n", 1)[1]).encode("latin-1"),
    "suite_utf16": GOOD_YAML.encode("utf-16"),
    # integers that are floats (jsonschema accepts 1.0 as an integer)
    "float_seed": _set(["seeds"], [1.0]),
    "fractional_seed": _set(["seeds"], [0.5]),
    "float_batch": _set(["experiments", 0, "train", "batch"], 32.0),
    "float_images": _set(["experiments", 0, "train", "images"], 1280.0),
    "float_components": _set(["datasets", "gmm", "components"], 4.0),
    "float_step_budget": _set(["experiments", 0, "steps"], [2.0]),
    "bool_batch": _set(["experiments", 0, "train", "batch"], True),
    "seed_above_int32": _set(["seeds"], [2**40]),
    # non-finite numbers anywhere
    "nan_lr": _set(["experiments", 0, "train", "lr"], float("nan")),
    "inf_lr": _set(["experiments", 0, "train", "lr"], float("inf")),
    "nan_grad_clip": _set(["experiments", 0, "train", "grad_clip"], float("nan")),
    "nan_method_param": _set(["experiments", 0, "params"], {"p_mean": float("nan")}),
    "inf_dataset_std": _set(["datasets", "gmm", "std"], float("inf")),
    "nan_in_betas": _set(["experiments", 0, "train", "betas"], [0.9, float("nan")]),
    "beta_above_one": _set(["experiments", 0, "train", "betas"], [0.9, 1.5]),
    "eps_zero": _set(["experiments", 0, "train", "eps"], 0),
    # networks
    "negative_width": _net(hidden=-16),
    "negative_depth": _net(depth=-1),
    "fractional_width": _net(hidden=2.5),
    "unknown_net_key": _net(widht=32),
    "unet_for_vector_data": _set(["experiments", 0, "net"], {"type": "unet", "model_channels": 8}),
    "nan_dropout": _net(dropout=float("nan")),
    # bounds
    "step_budget_above_cap": _set(["experiments", 0, "steps"], [100000]),
    "pd_round_above_cap": lambda s, t: {**s, "experiments": s["experiments"] + [
        {**copy.deepcopy(s["experiments"][0]), "method": "pd", "variant": "r", "rounds": [8192, 1]}]},
    "huge_sample_batch": _set(["sample_batch"], 10**9),
    "huge_gmm_dimension": _set(["datasets", "gmm", "dim"], 10**7),
    "huge_training_set": _set(["datasets", "gmm", "n_train"], 10**12),
    "too_few_samples_for_image_metrics": _with_digits(3),
    # names: recipes, and anything that reaches a path, a rule name or a shell
    "unknown_recipe": _set(["experiments", 0, "recipe"], "imagenet512"),
    "recipe_with_path": _set(["experiments", 0, "recipe"], "../../etc/passwd"),
    "dataset_key_with_command": _rename_dataset(_inject),
    "dataset_key_with_space": _rename_dataset("my data"),
    "dataset_key_leading_dash": _rename_dataset("-rf"),
    "dataset_key_with_backtick": _rename_dataset("a`id`"),
    "variant_with_command": _set(["experiments", 0, "variant"], _inject),
    "variant_with_semicolon": _set(["experiments", 0, "variant"], "a;b"),
    "method_with_command": _set(["experiments", 0, "method"], _inject),
    "teacher_with_command": lambda s, t: {**s, "experiments": s["experiments"] + [
        {**copy.deepcopy(s["experiments"][0]), "method": "cd", "variant": "x", "teacher": _inject(t)}]},
    "grid_value_with_command": _grid({"net.hidden": lambda t: [8, _inject(t)]}),
    "grid_value_with_space": _grid({"net.act": ["a b"]}),
    "grid_value_a_list": _grid({"net.hidden": [[8, 16]]}),
    "grid_key_with_command": _grid({_inject: [1, 2]}),
    "suite_name_leading_dot": _set(["name"], ".hidden"),
    "suite_name_with_command": _set(["name"], _inject),
    "lsun_category_with_command": lambda s, t: {**s, "datasets": {**s["datasets"], "lsun": {
        "kind": "lsun256", "category": _inject(t)}}},
}



@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_malformed_suite_fails_with_one_line_before_any_work(case, tmp_path, capsys, results):
    mut = CONFIG_CASES[case]
    path = tmp_path / "bad.yaml"
    if isinstance(mut, bytes):
        path.write_bytes(mut)
    elif isinstance(mut, str):
        path.write_text(mut)
    else:
        write_suite(path, mut(copy.deepcopy(TINY_GMM_SUITE), tmp_path))
    rc, err = cli_in_process(capsys, "validate", "--suite", path)
    assert_one_line_error(rc, err)
    rc, err = cli_in_process(capsys, "train", "--suite", path, "--run", TINY_RUN, "--data", tmp_path / "nodata",
                   "--out", results / "final.pt", "--no-progress")
    assert_one_line_error(rc, err)
    assert not (tmp_path / PWNED).exists()


def test_duplicate_key_error_names_both_lines(tmp_path, capsys):
    (tmp_path / "d.yaml").write_text(CONFIG_CASES["duplicate_key_in_block_style"])
    line = assert_one_line_error(*cli_in_process(capsys, "validate", "--suite", tmp_path / "d.yaml"))
    assert "'seeds'" in line and "lines 2 and 3" in line, line


def test_yaml_merge_keys_may_be_overridden(tmp_path, capsys):
    """`<<: *anchor` then a key of the anchor is an override, not a duplicate."""
    text = GOOD_YAML.replace("experiments:", "x-t: &t {images: 64, batch: 32, lr: 0.002}\nexperiments:").replace(
        "train: {images: 64, batch: 32, lr: 0.002}", "train: {<<: *t, lr: 0.001}")
    (tmp_path / "m.yaml").write_text(text)
    rc, err = cli_in_process(capsys, "validate", "--suite", tmp_path / "m.yaml")
    assert rc == 0, err


# --- CLI / file inputs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    from benchmark.prepare import prepare_dataset

    d = tmp_path_factory.mktemp("digits") / "digits"
    prepare_dataset("digits", {"kind": "digits"}, d / "manifest.json")
    return d


def _suite_with(t: Path, name: str, mutate) -> Path:
    s = copy.deepcopy(TINY_GMM_SUITE)
    mutate(s)
    return write_suite(t / f"{name}.yaml", s)


def _other_lr(t):
    return _suite_with(t, "lr", lambda s: s["experiments"][0]["train"].update(lr=0.001))


def _other_run(t):
    return _suite_with(t, "other", lambda s: s["experiments"].append({**copy.deepcopy(s["experiments"][0]),
                                                                      "variant": "other"}))


def _bytes(p: Path, b: bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b)
    return p


def _npz(p: Path, **arrays) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def _bare_state_dict(t: Path) -> Path:
    p = t / "bare/final.pt"
    checkpoint.save(p, {"weight": torch.zeros(3, 3)})  # valid sidecar: only the contents are wrong
    return p


def _run_copy(c: Path, t: Path, compute: bytes | None) -> Path:
    """A copy of the trained run dir (ckpt + sidecar), with compute.json replaced by `compute`."""
    d = t / "copy/gmm/edm-tiny-s0"
    shutil.copytree(c.parent.parent, d)
    if compute is not None:
        (d / "compute.json").write_bytes(compute)
    return d / "ckpt/final.pt"


def _npy_as_npz(t: Path) -> Path:
    p = t / "x.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((64, 2), np.float32))
    return p


def _bad_sidecar(t: Path, content: bytes) -> Path:
    p = _npz(t / "s/steps3.npz", samples=np.zeros((64, 2), np.float32))
    (t / "s/steps3.npz.sha256").write_bytes(content)
    return p


def _tampered_metrics(t: Path) -> Path:
    """A results root whose metrics JSON was edited after `evaluate` wrote it and its sidecar."""
    from benchmark.provenance import write_json

    p = t / "r" / TINY_GMM_SUITE["name"] / TINY_RUN / "metrics/steps2.json"
    write_json(p, {"rows": [{"metric": "fd_exact", "value": 0.1}]}, sidecar=True)
    p.write_text(p.read_text().replace("0.1", "0.01"))  # a better number, by hand
    return t / "r"


def _extractor(t: Path, kind: str) -> Path:
    from benchmark.metrics.extractors import DigitNet

    p = t / "ext/extractor_digitnet.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        p.write_bytes(b"\x80\x02garbage" * 20)
    else:
        torch.save(DigitNet().state_dict(), p)
        (t / "ext/extractor_digitnet.json").write_text(json.dumps({"sha256": "0" * 64}))  # recorded != actual
    return p


def _images(t: Path, n: int) -> Path:
    return _npz(t / "img.npz", samples=np.zeros((n, 8, 8, 1), np.uint8))


def _csv(t: Path, name: str, text: str | bytes) -> Path:
    return _bytes(t / name, text if isinstance(text, bytes) else text.encode())


def _results_csv() -> tuple[str, str]:
    """(header line, header + one row) of a results.csv with aggregate's columns."""
    from benchmark.aggregate import COLUMNS

    row = {"suite": "t", "dataset": "gmm", "method": "edm", "variant": "tiny", "seed": 0, "steps": 2, "nfe": 3,
           "metric": "fd_exact", "extractor": "none", "library": "fewstep-bench", "value": 0.5}
    header = ",".join(COLUMNS) + "\n"
    return header, header + ",".join(str(row.get(c, "")) for c in COLUMNS) + "\n"


RESULTS_HEADER, GOOD_RESULTS = _results_csv()
PAPER = (REPO / "config/paper_results.csv").read_text()


def _report(t, o, results=GOOD_RESULTS, scaling=None, paper=None):
    args = ["report", "--suite-name", "x", "--results", _csv(t, "r.csv", results), "--out", o / "index.html",
            "--scaling", _csv(t, "s.csv", scaling) if scaling is not None else t / "none.csv"]
    return args + (["--paper", _csv(t, "p.csv", paper)] if paper is not None else [])


def _evaluate(t, d, samples, *extra):
    return ["evaluate", "--samples", samples, "--data", d, "--out", t / "o/steps3.json", *extra]


def _sample(suite, c, o, run=TINY_RUN):
    return ["sample", "--suite", suite, "--run", run, "--ckpt", c, "--steps", "2", "--out", o / "steps3.npz",
            "--no-progress"]


# each case: (tmp_path, suite_file, gmm data, trained final.pt, digits data, results out dir) -> argv
INPUT_CASES = {
    # checkpoints that do not belong to the run (silently sampled before)
    "sample_ckpt_of_another_config": lambda t, s, d, c, g, o: _sample(_other_lr(t), c, o),
    "sample_ckpt_of_another_run": lambda t, s, d, c, g, o: _sample(_other_run(t), c, o, "gmm/edm-other-s0"),
    "denoiser_ckpt_of_another_config": lambda t, s, d, c, g, o: [
        "evaluate-denoiser", "--suite", _other_lr(t), "--run", TINY_RUN, "--ckpt", c, "--data", d,
        "--out", o / "steps3.json", "--no-progress"],
    "sample_bare_state_dict": lambda t, s, d, c, g, o: _sample(s, _bare_state_dict(t), o),
    "train_bare_state_dict_as_teacher": lambda t, s, d, c, g, o: [
        "train", "--suite", _suite_with(t, "cd", lambda x: x["experiments"].append(
            {**copy.deepcopy(x["experiments"][0]), "method": "cd", "variant": "x", "steps": [1]})),
        "--run", "gmm/cd-x-s0", "--data", d, "--teacher", _bare_state_dict(t), "--out", o / "final.pt"],
    "train_teacher_of_another_config": lambda t, s, d, c, g, o: [
        "train", "--suite", _suite_with(t, "cdlr", lambda x: (x["experiments"][0]["train"].update(lr=0.001),
                                                             x["experiments"].append(
            {**copy.deepcopy(x["experiments"][0]), "method": "cd", "variant": "x", "steps": [1]}))),
        "--run", "gmm/cd-x-s0", "--data", d, "--teacher", c, "--out", o / "final.pt"],
    "train_teacher_with_corrupt_compute_json": lambda t, s, d, c, g, o: [
        "train", "--suite", _suite_with(t, "cd2", lambda x: x["experiments"].append(
            {**copy.deepcopy(x["experiments"][0]), "method": "cd", "variant": "x", "steps": [1]})),
        "--run", "gmm/cd-x-s0", "--data", d, "--teacher", _run_copy(c, t, b"[1, 2"), "--out", o / "final.pt"],
    "sample_corrupt_compute_json": lambda t, s, d, c, g, o: _sample(s, _run_copy(c, t, b'{"forward_fl'), o),
    "sample_compute_json_not_utf8": lambda t, s, d, c, g, o: _sample(s, _run_copy(c, t, b"\xff\xfe{}"), o),
    # sample shards
    "evaluate_npy_saved_as_npz": lambda t, s, d, c, g, o: _evaluate(t, d, _npy_as_npz(t)),
    "evaluate_bool_vector_samples": lambda t, s, d, c, g, o: _evaluate(
        t, d, _npz(t / "b.npz", samples=np.ones((64, 2), bool))),
    "evaluate_int_vector_samples": lambda t, s, d, c, g, o: _evaluate(
        t, d, _npz(t / "i.npz", samples=np.ones((64, 2), np.int64))),
    "evaluate_samples_sidecar_mismatch": lambda t, s, d, c, g, o: _evaluate(
        t, d, _bad_sidecar(t, json.dumps({"sha256": "0" * 64}).encode())),
    "evaluate_samples_sidecar_unreadable": lambda t, s, d, c, g, o: _evaluate(t, d, _bad_sidecar(t, b"{not json")),
    "evaluate_too_few_image_samples": lambda t, s, d, c, g, o: _evaluate(t, g, _images(t, 3)),
    "evaluate_corrupt_extractor_weights": lambda t, s, d, c, g, o: _evaluate(
        t, g, _images(t, 8), "--ref", f"digitnet={t / 'ref.npz'}", "--extractor-ckpt",
        f"digitnet={_extractor(t, 'garbage')}"),
    "evaluate_extractor_sha_mismatch": lambda t, s, d, c, g, o: _evaluate(
        t, g, _images(t, 8), "--ref", f"digitnet={t / 'ref.npz'}", "--extractor-ckpt",
        f"digitnet={_extractor(t, 'mismatch')}"),
    "ref_stats_corrupt_extractor_weights": lambda t, s, d, c, g, o: [
        "ref-stats", "--data", g, "--extractor", "digitnet", "--extractor-ckpt", _extractor(t, "garbage"),
        "--out", t / "o/ref.npz"],
    "aggregate_metrics_not_matching_sidecar": lambda t, s, d, c, g, o: [
        "aggregate", "--suite", s, "--results-root", _tampered_metrics(t), "--out", o / "results.csv"],
    # tables given to fit / report
    "fit_empty_results_csv": lambda t, s, d, c, g, o: ["fit", "--results", _csv(t, "r.csv", ""),
                                                       "--out", o / "scaling.csv"],
    "fit_header_only_results_csv": lambda t, s, d, c, g, o: ["fit", "--results", _csv(t, "r.csv", RESULTS_HEADER),
                                                             "--out", o / "scaling.csv"],
    "fit_results_without_value_column": lambda t, s, d, c, g, o: [
        "fit", "--results", _csv(t, "r.csv", "dataset,method\ngmm,edm\n"), "--out", o / "scaling.csv"],
    "fit_results_value_not_a_number": lambda t, s, d, c, g, o: [
        "fit", "--results", _csv(t, "r.csv", GOOD_RESULTS.replace(",0.5,", ",abc,")), "--out", o / "scaling.csv"],
    "fit_results_not_utf8": lambda t, s, d, c, g, o: [
        "fit", "--results", _csv(t, "r.csv", GOOD_RESULTS.replace("edm", "\xe9dm").encode("latin-1")),
        "--out", o / "scaling.csv"],
    "report_results_without_library_column": lambda t, s, d, c, g, o: _report(
        t, o, results=GOOD_RESULTS.replace("library", "lib", 1)),
    "report_empty_results_csv": lambda t, s, d, c, g, o: _report(t, o, results=""),
    "report_header_only_results_csv": lambda t, s, d, c, g, o: _report(t, o, results=RESULTS_HEADER),
    "report_empty_scaling_csv": lambda t, s, d, c, g, o: _report(t, o, scaling=""),
    "report_scaling_without_columns": lambda t, s, d, c, g, o: _report(t, o, scaling="a,b\n1,2\n"),
    "report_paper_csv_missing_columns": lambda t, s, d, c, g, o: _report(t, o, paper="method,value\nedm,1\n"),
    "report_paper_value_not_a_number": lambda t, s, d, c, g, o: _report(
        t, o, paper=PAPER.replace(",1.97,", ",one point nine,", 1)),
    "report_paper_csv_ragged": lambda t, s, d, c, g, o: _report(t, o, paper=PAPER + 'x,"unclosed\n'),
    "report_paper_csv_empty": lambda t, s, d, c, g, o: _report(t, o, paper=""),
    # the environment: paths that cannot be written
    "prepare_out_under_a_file": lambda t, s, d, c, g, o: [
        "prepare", "--suite", s, "--dataset", "gmm", "--out", _bytes(t / "f", b"x") / "manifest.json"],
    "log_file_under_a_file": lambda t, s, d, c, g, o: [
        "--log", _bytes(t / "f", b"x") / "x.log", "validate", "--suite", s],
    "sample_out_under_a_file": lambda t, s, d, c, g, o: [
        *_sample(s, c, o)[:-3], "--out", _bytes(t / "f", b"x") / "steps3.npz", "--no-progress"],
    # devices and budgets given on the command line
    "train_on_a_missing_gpu": lambda t, s, d, c, g, o: [
        "train", "--suite", s, "--run", TINY_RUN, "--data", d, "--out", o / "final.pt", "--device", "cuda:7"],
    "sample_unknown_device": lambda t, s, d, c, g, o: [*_sample(s, c, o), "--device", "gpu"],
    "sample_steps_above_cap": lambda t, s, d, c, g, o: [*_sample(s, c, o)[:-5], "--steps", "100000",
                                                        "--out", o / "steps3.npz"],
    # the `run` wrapper
    "run_unknown_suite": lambda t, s, d, c, g, o: ["run", "--suite", "nonexistent", "--directory", t],
}


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_bad_cli_input_fails_with_one_line(case, tmp_path, capsys, tiny_suite_file, gmm_data, trained, digits_data,
                                           results):
    argv = INPUT_CASES[case](tmp_path, tiny_suite_file, gmm_data, trained, digits_data, results)
    line = assert_one_line_error(*cli_in_process(capsys, *argv))
    assert "Traceback" not in line
    assert not list(tmp_path.rglob(".tmp-*")), "a temp file was left behind"


def test_foreign_checkpoint_error_names_both_config_hashes(tmp_path, capsys, tiny_suite, trained, results):
    from benchmark.config import load_suite

    other = load_suite(_other_lr(tmp_path)).run(TINY_RUN)
    line = assert_one_line_error(*cli_in_process(capsys, *_sample(_other_lr(tmp_path), trained, results)))
    assert tiny_suite.run(TINY_RUN).config_hash in line and other.config_hash in line, line


def test_read_only_results_dir_in_prepare_is_one_line_naming_the_path(tmp_path, capsys, tiny_suite_file,
                                                                      monkeypatch):
    """(Tests run as root, which chmod cannot stop: the refusal is injected where the OS raises it.)"""
    import tempfile

    out = tmp_path / "ro/manifest.json"

    def denied(*a, dir=None, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    line = assert_one_line_error(*cli_in_process(capsys, "prepare", "--suite", tiny_suite_file, "--dataset", "gmm",
                                       "--out", out))
    assert "Permission denied" in line and str(out.parent) in line, line


def test_disk_full_during_checkpoint_save_is_one_line_and_leaves_no_temp(tmp_path, capsys, tiny_suite_file,
                                                                         gmm_data, monkeypatch):
    real_save = torch.save

    def full(obj, f, *a, **kw):
        real_save({"partial": torch.zeros(8)}, f)  # some bytes reached the disk, then it filled up
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    line = assert_one_line_error(*cli_in_process(capsys, "train", "--suite", tiny_suite_file, "--run", TINY_RUN,
                                                 "--data", gmm_data, "--out", out, "--no-progress"))
    assert "No space left" in line and "free disk space" in line, line
    assert not list(tmp_path.rglob(".tmp-*")) and not list(out.parent.glob("*.pt")), list(out.parent.iterdir())


def test_nan_before_the_first_checkpoint_names_no_phantom_checkpoint(tmp_path, capsys, tiny_suite_file, gmm_data,
                                                                     monkeypatch):
    monkeypatch.setenv("FEWSTEP_INJECT_NAN_STEP", "3")
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    line = assert_one_line_error(*cli_in_process(capsys, "train", "--suite", tiny_suite_file, "--run", TINY_RUN,
                                                 "--data", gmm_data, "--out", out, "--no-progress"))
    assert "ckpt/none" not in line and "no checkpoint yet" in line and "step 0" in line, line


def test_out_of_memory_is_one_line_not_a_traceback(tmp_path, capsys, tiny_suite_file, trained, monkeypatch):
    """(Injected: a real allocation failure would first take the shared test machine's memory.)"""
    import benchmark.sample

    def alloc(*a, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 34359738368 bytes")

    monkeypatch.setattr(benchmark.sample, "noise_batch", alloc)
    line = assert_one_line_error(*cli_in_process(capsys, *_sample(tiny_suite_file, trained, tmp_path)))
    assert "out of memory in `sample`" in line, line
    assert not list(tmp_path.glob("steps3*")), "nothing may be written"


def test_a_genuine_bug_keeps_its_traceback(tmp_path, tiny_suite_file, trained, monkeypatch):
    import benchmark.sample

    monkeypatch.setattr(benchmark.sample, "noise_batch", lambda *a, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main([str(a) for a in _sample(tiny_suite_file, trained, tmp_path)])


def test_second_run_in_the_same_directory_is_refused_while_one_is_live(tmp_path, capsys, tiny_suite_file):
    (tmp_path / ".snakemake").mkdir()
    with open(tmp_path / ".snakemake/fewstep-run.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a live run holds it
        line = assert_one_line_error(*cli_in_process(capsys, "run", "--suite", tiny_suite_file,
                                                     "--directory", tmp_path))
    assert "live" in line, line
    assert not (tmp_path / "results").exists()


# --- a changed config: never resumed from the old checkpoints, re-trained from step 0 ---------------

def test_changed_config_moves_old_checkpoints_aside_and_trains_fresh(tmp_path, tiny_suite_file, gmm_data, caplog):
    from benchmark.config import load_suite
    from benchmark.errors import TrainingError
    from benchmark.train import train_run

    a = load_suite(tiny_suite_file)
    b = load_suite(_other_lr(tmp_path))
    ra, rb = a.run(TINY_RUN), b.run(TINY_RUN)
    out = tmp_path / "run/gmm/edm-tiny-s0/ckpt/final.pt"
    with pytest.raises(TrainingError):  # config A stops at step 25, leaving step 10 and 20 checkpoints
        train_run(ra, a, gmm_data, out, progress=False, nan_at_step=25)
    assert checkpoint.latest_good(out.parent) is not None
    caplog.set_level("WARNING", logger="fewstep")
    train_run(rb, b, gmm_data, out, progress=False)  # the lr changed: a plain re-run
    stale = out.parent / f"stale-{ra.config_hash[:8]}"
    assert sorted(p.name for p in stale.glob("*.pt")) == ["step00000010.pt", "step00000020.pt"]
    assert all(checkpoint.load(p)["config_hash"] == ra.config_hash for p in stale.glob("*.pt"))
    assert any(ra.config_hash in m and rb.config_hash in m for m in caplog.messages), caplog.messages
    # the result is config B's from step 0, equal to B trained in a clean directory
    fresh = tmp_path / "fresh/gmm/edm-tiny-s0/ckpt/final.pt"
    train_run(rb, b, gmm_data, fresh, progress=False)
    sa, sb = checkpoint.load(out), checkpoint.load(fresh)
    assert sa["config_hash"] == rb.config_hash and sa["counts"] == sb["counts"]
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sb["ema"])
    steps = [json.loads(x)["step"] for x in (out.parent.parent / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, steps[-1] + 1)), "the log restarted at step 1 without config A's lines"


# --- the shell: names and paths with metacharacters never run ------------------------------------

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def test_shell_metacharacters_in_paths_and_names_never_run(tmp_path):
    """Through the real command lines: a suite path, a results directory and a dataset key each
    carrying `$(touch PWNED)` stop with one `error:` line (no job starts), and PWNED never appears;
    a bad workflow config value is one line too (Snakemake's own validation printed the whole schema)."""
    bad_dir = tmp_path / f"a{_inject(tmp_path)}"
    bad_dir.mkdir(parents=True)
    suite = write_suite(bad_dir / "s.yaml", TINY_GMM_SUITE)
    key = copy.deepcopy(TINY_GMM_SUITE)
    key["datasets"] = {_inject(tmp_path): key["datasets"]["gmm"]}
    key["experiments"][0]["dataset"] = _inject(tmp_path)
    key_suite = write_suite(tmp_path / "key.yaml", key)
    good = write_suite(tmp_path / "good.yaml", TINY_GMM_SUITE)
    env = cli_env()
    cases = [
        [sys.executable, "-m", "benchmark", "run", "--suite", str(suite), "--directory", str(tmp_path)],
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1", "--config", f"suite={key_suite}"],
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1", "--config", f"suite={good}",
         f"results={_inject(tmp_path)}"],
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1", "--config", f"suite={good}", "device=gpu"],
    ]
    for argv in cases:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and " — " in errors[0], (argv, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        assert not (tmp_path / PWNED).exists(), f"an injected command ran: {argv}"
    assert not (tmp_path / "results").exists()


def test_plots_are_written_atomically(tmp_path):
    """A figure that fails half-way (here: an unknown format option) leaves neither a torn file nor a temp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.provenance import atomic_savefig

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    atomic_savefig(fig, tmp_path / "ok.png", dpi=50)
    assert (tmp_path / "ok.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception):  # noqa: B017 - matplotlib's own error type is not the point
        atomic_savefig(fig, tmp_path / "bad.png", format="no-such-format")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]


def test_an_imported_network_may_stand_in_as_teacher_but_is_never_sampled_as_a_run(tiny_suite):
    from benchmark.errors import CheckpointError

    run = tiny_suite.run(TINY_RUN)
    imported = {"run": "imported:edm-cifar10-32x32-uncond-vp.pkl", "config_hash": "0123456789abcdef"}
    checkpoint.check_owner(imported, run, Path("edm.pt"), imported_ok=True)  # explicit teacher: accepted
    with pytest.raises(CheckpointError, match="belongs to run imported:"):
        checkpoint.check_owner(imported, run, Path("edm.pt"))
    checkpoint.check_owner({"run": run.name, "config_hash": run.config_hash}, run, Path("own.pt"))
