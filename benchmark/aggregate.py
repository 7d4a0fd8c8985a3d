"""The `aggregate` step: every metric JSON of a suite -> one tidy `results.csv` (one row per
value, DESIGN §3), joined with the run's compute accounting, sampling cost and provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.config import Suite, run_dir
from benchmark.errors import InputError
from benchmark.provenance import REPO_ROOT, atomic_path

COLUMNS = ["suite", "dataset", "resolution", "method", "variant", "seed", "train_images", "train_flops",
           "train_flops_per_image", "train_passes",
           "teacher_flops", "total_flops", "device_hours", "teacher_source", "total_excludes_teacher",
           "hardware", "world_size", "micro_batch", "grad_accum_steps", "engine", "precision", "steps", "nfe",
           "sample_flops_per_image", "metric", "extractor", "num_samples", "value", "paper_value",
           "config_hash", "git_commit", "library", "mode", "ref_sha256", "recipe", "paper_recipe", "recipe_diff",
           "conditioning", "guidance", "architecture", "space", "loss_metric", "sampler", "teacher", "paper_dataset",
           "crosscheck_rel",
           "flags", "run", "run_dir"]
UNMEASURED_TEACHER_FLAG = "teacher-compute-unmeasured"  # total_* exclude an imported teacher's training
CROSSCHECK_RTOL = 1e-3  # torch-fidelity vs clean-fid FD on the same shard (they agree to ~1e-13 when sound)

DATASET_PAPER_KEY = {"cifar10": ("cifar10", 32), "imagenet64": ("imagenet64", 64),
                     "imagenet128": ("imagenet128", 128), "imagenet256": ("imagenet256", 256),
                     "lsun256": ("lsun-bedroom256", 256)}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing", "run the pipeline (snakemake) so every step writes it") from None
    except ValueError:
        raise InputError(f"{path} is not valid JSON (truncated?)", f"delete {path} and re-run snakemake") from None


def paper_lookup(paper_csv: Path | None = None) -> pd.DataFrame:
    from benchmark.papers import load_paper

    p = paper_csv or REPO_ROOT / "config" / "paper_results.csv"
    return load_paper(p) if Path(p).exists() else pd.DataFrame()


def paper_dataset_key(spec: dict[str, Any]) -> str | None:
    """The paper_results.csv dataset key of a suite dataset: `paper_dataset` if set, else by kind
    (LSUN by its category: the CM paper reports bedroom and cat separately)."""
    if spec.get("paper_dataset"):
        return str(spec["paper_dataset"])
    if spec["kind"] == "lsun256":
        return f"lsun-{spec.get('category', 'bedroom')}256"
    return DATASET_PAPER_KEY.get(spec["kind"], (None, None))[0]


def _paper_value(paper: pd.DataFrame, row: dict[str, Any]) -> float | None:
    """The number of the paper row that matches this result exactly (papers.match_paper)."""
    from benchmark.papers import match_paper, paper_mismatches

    if paper.empty or row["paper_dataset"] is None:
        return None
    pr = match_paper(row, paper)
    return float(pr["value"]) if pr is not None and not paper_mismatches(row, pr) else None


def _run_columns(run, rdir: Path, results_root: Path, ds: dict[str, Any]) -> dict[str, Any]:
    """Columns every row of a run shares: compute, provenance, recipe and the facts a verdict reads.
    A teacher chain rooted in an imported network: `teacher_flops` empty (its training was not measured
    by us: unknown, not 0), totals = what we measured, `total_excludes_teacher` true."""
    from benchmark.recipes import diff_text, fmt_params

    comp = _read(rdir / "compute.json")
    facts = run.extra.get("facts") or {}
    arch = "-".join(x for x in (facts.get("architecture", ""), fmt_params(facts.get("params"))) if x)
    res = {"gmm": None, "digits": 8}.get(ds["kind"], DATASET_PAPER_KEY.get(ds["kind"], (None, None))[1])
    return {"dataset": run.dataset, "resolution": res, "method": run.method,
            "variant": run.variant, "seed": run.seed, "train_images": comp["train_images"],
            "train_flops": comp["train_flops"], "teacher_flops": comp["teacher_flops"],
            "teacher_source": comp.get("teacher_source",  # older compute.json: a trained teacher or none
                                       f"trained:{comp['teacher']['run']}" if comp.get("teacher") else ""),
            "total_excludes_teacher": bool(comp.get("total_excludes_teacher", False)),
            "train_flops_per_image": comp.get("train_flops_per_image"),
            "train_passes": _passes_text(comp.get("passes"), comp.get("train_images")),
            "total_flops": comp["total_flops"], "device_hours": comp["device_hours_total"],
            "hardware": comp["hardware"], "world_size": comp.get("world_size", 1),
            "micro_batch": comp.get("micro_batch", comp.get("effective_batch")),
            "grad_accum_steps": comp.get("grad_accum_steps", 1), "engine": engine_text(comp),
            "precision": precision_text(comp.get("precision")),
            "config_hash": run.config_hash,
            "git_commit": comp["provenance"]["git_commit"], "recipe": run.recipe or "", "run": run.name,
            "paper_recipe": bool(run.paper_recipe), "recipe_diff": diff_text(run.recipe_diff),
            "conditioning": facts.get("conditioning", ""), "guidance": facts.get("guidance", 1.0),
            "architecture": arch, "space": facts.get("space", ""),
            "loss_metric": facts.get("loss_metric", ""), "sampler": facts.get("sampler", ""),
            "teacher": facts.get("teacher", ""), "paper_dataset": paper_dataset_key(ds),
            "run_dir": str(rdir.relative_to(results_root)) if rdir.is_relative_to(results_root) else str(rdir)}


def engine_text(comp: dict[str, Any]) -> str:
    """The engine a run trained on ('plain', 'ddp', 'fsdp'); an older compute.json without the field
    was one process ('plain') or the hand-written flat all-reduce ('allreduce')."""
    rec = comp.get("engine")
    if rec:
        return str(rec["applied"])
    return "plain" if comp.get("world_size", 1) == 1 else "allreduce"


def precision_text(rec: dict[str, Any] | None) -> str:
    """The precision options a training run actually applied, e.g. 'bf16+channels_last' ('fp32': none;
    an option asked for but not applied on this device is not listed: compute.json keeps why)."""
    applied = [k for k, on in ((rec or {}).get("applied") or {}).items() if on]
    return "+".join(applied) or "fp32"


def _passes_text(passes: dict[str, int] | None, images: int | None) -> str:
    """Network passes per training image by role, e.g. 'online_grad=1;target=1;teacher=2'."""
    if not passes or not images:
        return ""
    return ";".join(f"{k}={v / images:.3g}" for k, v in sorted(passes.items()) if v)


def _run_flags(run) -> list[str]:
    if not run.paper_recipe:
        return ["no-paper-recipe"]
    return ["recipe-diff"] if run.recipe_diff else []


def rows_for_run(suite: Suite, run, results_root: Path, paper: pd.DataFrame) -> list[dict[str, Any]]:
    rdir = run_dir(results_root, suite.name, run)
    ds = suite.datasets[run.dataset]
    base = {"suite": suite.name} | _run_columns(run, rdir, results_root, ds)
    rows = []
    flags = _run_flags(run) + ([UNMEASURED_TEACHER_FLAG] if base["total_excludes_teacher"] else [])
    for k in run.steps:
        s = _read(rdir / "samples" / f"steps{k}.json")
        m = _read(rdir / "metrics" / f"steps{k}.json")
        # NFE as the papers count it: with CFG each step evaluates the network twice per sample (one
        # batched call of 2B), e.g. IMM's 8 guided steps are its reported 16 NFE
        nfe = s.get("nfe_guided", s["nfe"])
        for r in m["rows"]:
            rows.append(base | {"steps": k, "nfe": nfe, "sample_flops_per_image": s["sample_flops_per_image"],
                                "metric": r["metric"], "extractor": r.get("extractor", ""),
                                "num_samples": r.get("num_samples", s["num_samples"]), "value": r["value"],
                                "library": r.get("library", ""), "mode": r.get("mode", ""),
                                "ref_sha256": r.get("ref_sha256", ""),
                                "flags": ";".join(flags)})
            rows[-1]["paper_value"] = _paper_value(paper, rows[-1] | {"mean": r["value"]})
    den = rdir / "metrics" / "denoiser.json"
    if den.exists():
        for r in _read(den)["rows"]:
            rows.append(base | {"steps": None, "nfe": None, "sample_flops_per_image": None, "metric": r["metric"],
                                "extractor": r.get("extractor", "exact"), "num_samples": r.get("num_samples"),
                                "value": r["value"], "library": "exact", "mode": r.get("mode", ""),
                                "ref_sha256": "", "paper_value": None, "flags": ";".join(flags)})
    return crosscheck(rows)


def crosscheck(rows: list[dict[str, Any]], rtol: float = CROSSCHECK_RTOL) -> list[dict[str, Any]]:
    """Compare clean-fid's FD with torch-fidelity's on each shard: `crosscheck_rel` on both rows,
    and the flag `crosscheck-mismatch` on both when they differ by more than `rtol` (a wrong
    resize, extractor or reference file in one of the two paths; DESIGN §5)."""
    from benchmark.metrics.direction import metric_kind

    pairs: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["library"] in ("torch-fidelity", "clean-fid") and metric_kind(r["metric"]) == "fd":
            pairs.setdefault((r["steps"], r["metric"], r["extractor"]), {})[r["library"]] = r
    for pair in pairs.values():
        if len(pair) != 2:
            continue
        a, b = pair["torch-fidelity"]["value"], pair["clean-fid"]["value"]
        rel = abs(a - b) / max(abs(a), abs(b), 1e-12)
        for r in pair.values():
            r["crosscheck_rel"] = rel
            if not rel <= rtol:  # NaN counts as a mismatch
                r["flags"] = ";".join(t for t in (r["flags"], "crosscheck-mismatch") if t)
    return rows


def aggregate(suite: Suite, results_root: Path, out_csv: Path, paper_csv: Path | None = None) -> pd.DataFrame:
    paper = paper_lookup(paper_csv)
    rows = [r for run in suite.runs.values() for r in rows_for_run(suite, run, Path(results_root), paper)]
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(
        ["dataset", "method", "variant", "seed", "steps", "metric", "library"], na_position="first", kind="stable")
    for col in ("resolution", "steps", "nfe", "seed", "train_images", "num_samples"):  # ints, blank if n/a
        df[col] = pd.to_numeric(df[col]).round().astype("Int64")
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df
