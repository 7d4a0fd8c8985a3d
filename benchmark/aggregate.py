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
           "teacher_flops", "total_flops", "device_hours", "hardware", "steps", "nfe",
           "sample_flops_per_image", "metric", "extractor", "num_samples", "value", "paper_value",
           "config_hash", "git_commit", "library", "mode", "ref_sha256", "recipe", "flags", "run", "run_dir"]

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
    p = paper_csv or REPO_ROOT / "config" / "paper_results.csv"
    return pd.read_csv(p) if Path(p).exists() else pd.DataFrame()


def _paper_value(paper: pd.DataFrame, method: str, dataset_kind: str, steps: int, metric: str) -> float | None:
    if paper.empty or dataset_kind not in DATASET_PAPER_KEY or "method_key" not in paper:
        return None
    key, res = DATASET_PAPER_KEY[dataset_kind]
    m = paper[(paper.method_key == method) & (paper.dataset_key == key) & (paper.steps == steps)
              & (paper.metric.str.lower() == metric.lower())]
    return float(m.value.iloc[0]) if len(m) else None


def rows_for_run(suite: Suite, run, results_root: Path, paper: pd.DataFrame) -> list[dict[str, Any]]:
    rdir = run_dir(results_root, suite.name, run)
    comp = _read(rdir / "compute.json")
    ds = suite.datasets[run.dataset]
    res = {"gmm": None, "digits": 8}.get(ds["kind"], DATASET_PAPER_KEY.get(ds["kind"], (None, None))[1])
    base = {"suite": suite.name, "dataset": run.dataset, "resolution": res, "method": run.method,
            "variant": run.variant, "seed": run.seed, "train_images": comp["train_images"],
            "train_flops": comp["train_flops"], "teacher_flops": comp["teacher_flops"],
            "total_flops": comp["total_flops"], "device_hours": comp["device_hours_total"],
            "hardware": comp["hardware"], "config_hash": run.config_hash,
            "git_commit": comp["provenance"]["git_commit"], "recipe": run.recipe or "", "run": run.name,
            "run_dir": str(rdir.relative_to(results_root)) if rdir.is_relative_to(results_root) else str(rdir)}
    rows = []
    flags = [] if run.recipe else ["no-paper-recipe"]
    for k in run.steps:
        s = _read(rdir / "samples" / f"steps{k}.json")
        m = _read(rdir / "metrics" / f"steps{k}.json")
        for r in m["rows"]:
            rows.append(base | {"steps": k, "nfe": s["nfe"], "sample_flops_per_image": s["sample_flops_per_image"],
                                "metric": r["metric"], "extractor": r.get("extractor", ""),
                                "num_samples": r.get("num_samples", s["num_samples"]), "value": r["value"],
                                "library": r.get("library", ""), "mode": r.get("mode", ""),
                                "ref_sha256": r.get("ref_sha256", ""),
                                "paper_value": _paper_value(paper, run.method, ds["kind"], k, r["metric"]),
                                "flags": ";".join(flags)})
    den = rdir / "metrics" / "denoiser.json"
    if den.exists():
        for r in _read(den)["rows"]:
            rows.append(base | {"steps": None, "nfe": None, "sample_flops_per_image": None, "metric": r["metric"],
                                "extractor": r.get("extractor", "exact"), "num_samples": r.get("num_samples"),
                                "value": r["value"], "library": "exact", "mode": r.get("mode", ""),
                                "ref_sha256": "", "paper_value": None, "flags": ";".join(flags)})
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
