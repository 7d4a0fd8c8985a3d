"""Tidy tables of the report: seed aggregation (`summarise`), the leaderboard that puts every
reproduced number beside the paper's (`leaderboard`, `verdict`), and their CSV/Markdown writers.

Decisions recorded here (DESIGN §8, §11):
- Metric direction lives in one place, `benchmark.metrics.direction` (`METRIC_DIRECTION` + prefix/suffix
  rules for the extractor-specific names such as `fd_digitnet`); scaling fits and Pareto fronts use it too.
- Confidence intervals are two-sided 95% Student-t intervals over seeds (std with ddof=1);
  one seed gives CI = nan, so only the relative tolerance can decide.
- A row can only be *reproduced* if metric, extractor family, dataset, resolution and steps all
  equal the paper's and the run's training budget follows the paper's recipe; otherwise it is
  *not comparable* and the reason says which of these differs.
- `REL_TOL = 0.10`: FID between evaluators/implementations (TF vs PyTorch Inception,
  torch-fidelity vs clean-fid resizing) differs by a few percent, the papers report a min or a
  single run over seeds (EDM: min of 3), and FID-50k has seed noise of ~1-2%; 10% absorbs these
  while still separating e.g. CD's 3.55 from 3.95. The comparison is symmetric: a number much
  *better* than the paper's is also *not reproduced* (it usually means a protocol mismatch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import InputError
from benchmark.metrics.direction import isnull as _isnull
from benchmark.metrics.direction import lower_is_better
from benchmark.papers import dataset_key, match_paper, paper_mismatches
from benchmark.papers import fmt_res as _fmt_res
from benchmark.papers import is_blank as _blank
from benchmark.papers import to_float as _num
from benchmark.provenance import to_csv, write_text

REL_TOL = 0.10
CI_LEVEL = 0.95

SUMMARY_KEYS = ["suite", "dataset", "method", "variant", "steps", "nfe", "metric", "extractor", "library"]
# Columns constant within a group (or averaged over seeds for the compute columns).
_CARRIED_FIRST = ["resolution", "hardware", "mode", "ref_sha256", "num_samples", "paper_key", "recipe",
                  "paper_recipe", "recipe_diff", "conditioning", "architecture", "space", "loss_metric",
                  "sampler", "teacher", "teacher_source", "paper_dataset"]
_CARRIED_MEAN = [
    "train_images",
    "train_flops",
    "teacher_flops",
    "total_flops",
    "device_hours",
    "sample_flops_per_image",
]

def _flag_tokens(flags: Any) -> set[str]:
    if _isnull(flags):
        return set()
    return {t for t in re.split(r"[;,|\s]+", str(flags)) if t}


def ci_halfwidth(std: float, n: int, level: float = CI_LEVEL) -> float:
    """Half-width of the two-sided Student-t interval for a mean of n values."""
    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


# ---------------------------------------------------------------------------------------------
# aggregation over seeds


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, dataset, method, variant, steps, nfe, metric, extractor, library):
    mean, std (ddof=1), n seeds, 95% t-CI; compute columns averaged, flags united."""
    missing = [c for c in SUMMARY_KEYS + ["value"] if c not in results.columns]
    if missing:
        raise InputError(f"results table lacks columns {missing}", "regenerate results.csv with `aggregate`")
    df = results.copy()
    for c in _CARRIED_FIRST + _CARRIED_MEAN + ["flags", "seed"]:
        if c not in df.columns:
            df[c] = np.nan
    df[["extractor", "library"]] = df[["extractor", "library"]].fillna("")
    rows = []
    for key, g in df.groupby(SUMMARY_KEYS, sort=True, dropna=False):
        v = g["value"].astype(float).to_numpy()
        v = v[np.isfinite(v)]
        n = len(v)
        mean = float(v.mean()) if n else float("nan")
        std = float(v.std(ddof=1)) if n > 1 else float("nan")
        hw = ci_halfwidth(std, n)
        row = dict(zip(SUMMARY_KEYS, key))
        row.update(
            mean=mean,
            std=std,
            n=n,
            ci_lo=mean - hw,
            ci_hi=mean + hw,
            seeds=";".join(str(s) for s in sorted(g["seed"].dropna().unique())),
        )
        for c in _CARRIED_FIRST:
            vals = g[c].dropna()
            row[c] = vals.iloc[0] if len(vals) else np.nan
        for c in _CARRIED_MEAN:
            row[c] = float(pd.to_numeric(g[c], errors="coerce").mean())
        row["flags"] = ";".join(sorted(set().union(*(_flag_tokens(f) for f in g["flags"]))))
        rows.append(row)
    cols = SUMMARY_KEYS + ["mean", "std", "n", "ci_lo", "ci_hi", "seeds"] + _CARRIED_FIRST + _CARRIED_MEAN
    return pd.DataFrame(rows, columns=cols + ["flags"])


# ---------------------------------------------------------------------------------------------
# leaderboard


def _recipe_gate(row: Mapping[str, Any], paper_row: Mapping[str, Any]) -> str | None:
    """Why the run's training departs from the paper's recipe (None: it does not). Rows from
    `aggregate` carry `paper_recipe` and `recipe_diff` (benchmark.recipes); rows without them
    (hand-made tables) fall back to budget/recipe flags."""
    if "paper_recipe" not in row or _blank(row.get("paper_recipe")):
        flags = sorted(t for t in _flag_tokens(row.get("flags")) if re.search("budget|recipe", t.lower()))
        return f"training departs from the paper's recipe ({', '.join(flags)})" if flags else None
    if not _truthy(row.get("paper_recipe")):
        name = "" if _blank(row.get("recipe")) else f" (recipe: {row.get('recipe')})"
        return f"not trained with a paper recipe{name}"
    diff = "" if _blank(row.get("recipe_diff")) else str(row["recipe_diff"])
    settled: tuple[str, ...] = ()  # diff entries that cannot touch this row's number
    if not _blank(paper_row.get("train_images")):  # the paper row's own budget was matched above
        settled += ("train.images:",)
    if _num(row.get("steps")) == 1:  # a one-step sample never visits the multistep sampler's intermediate times
        settled += MULTISTEP_ONLY
    diff = "; ".join(d for d in diff.split("; ") if d and not d.startswith(settled))
    return f"recipe differs: {diff}" if diff else None


# recipe values only a sampler of two or more steps uses (diffusion.multistep_sigmas: one step starts and
# ends at sigma_max): a difference in them does not touch a one-step result
MULTISTEP_ONLY = ("params.mid_sigmas:", "params.mid_t:")


def _truthy(x: Any) -> bool:
    return not _blank(x) and str(x).strip().lower() in ("true", "1", "yes")


def verdict(
    row: Mapping[str, Any], paper_row: Mapping[str, Any] | None, rel_tol: float = REL_TOL
) -> tuple[str, str]:
    """('reproduced' | 'not reproduced' | 'not comparable', reason). Pure: looks only at the two
    rows. Comparability is checked first (the paper row's facts, then the run's recipe diff), so
    a mismatch can never be called reproduced however close the numbers are."""
    if paper_row is None:
        return "not comparable", "no paper number for this method/dataset/steps"
    ours_pd = row.get("paper_dataset")
    if dataset_key(row["dataset"] if _blank(ours_pd) else ours_pd) != paper_row["dataset_key"]:
        return "not comparable", (
            f"dataset differs: ours {row['dataset']} ({_fmt_res(_num(row.get('resolution')))}) vs paper "
            f"{paper_row.get('dataset', paper_row['dataset_key'])} ({_fmt_res(_num(paper_row.get('resolution')))})"
        )
    if _num(row["steps"]) != _num(paper_row.get("steps")):
        return "not comparable", f"steps differ: ours {row['steps']} vs paper {paper_row.get('steps')}"
    missing = paper_mismatches(row, paper_row)
    if missing:
        return "not comparable", "; ".join(missing)
    gate = _recipe_gate(row, paper_row)
    if gate:
        return "not comparable", gate
    if "crosscheck" in " ".join(_flag_tokens(row.get("flags"))):
        return "not comparable", "torch-fidelity and clean-fid disagree on this shard (flag crosscheck-mismatch)"
    return _compare_values(row, paper_row, rel_tol)


def _compare_values(row: Mapping[str, Any], paper_row: Mapping[str, Any], rel_tol: float) -> tuple[str, str]:
    mean, p = _num(row["mean"]), _num(paper_row["value"])
    if not (np.isfinite(mean) and np.isfinite(p)):
        return "not comparable", "missing value"
    lo, hi = _num(row.get("ci_lo")), _num(row.get("ci_hi"))
    rel = (mean - p) / abs(p) if p else float("inf")
    note = "" if bool(paper_row.get("verified", False)) else "; paper number unverified"
    if np.isfinite(lo) and np.isfinite(hi) and lo <= p <= hi:
        return "reproduced", f"paper value inside the 95% CI [{lo:.4g}, {hi:.4g}]{note}"
    if abs(rel) <= rel_tol:
        return "reproduced", f"within {rel_tol:.0%} of the paper ({rel:+.1%}){note}"
    better = (rel < 0) == lower_is_better(str(row["metric"]))
    side = "better" if better else "worse"
    hint = ": check the evaluator protocol" if better else ""
    return "not reproduced", f"{side} than the paper by {abs(rel):.1%} (tolerance {rel_tol:.0%}){hint}{note}"


LEADERBOARD_COLUMNS = [
    "suite",
    "dataset",
    "resolution",
    "method",
    "variant",
    "steps",
    "nfe",
    "metric",
    "extractor",
    "library",
    "mean",
    "std",
    "n",
    "ci_lo",
    "ci_hi",
    "paper_method",
    "paper_value",
    "paper_metric",
    "paper_extractor",
    "paper_verified",
    "paper_source",
    "ratio",
    "verdict",
    "reason",
    "train_images",
    "total_flops",
    "device_hours",
    "conditioning",
    "architecture",
    "space",
    "loss_metric",
    "sampler",
    "teacher",
    "recipe",
    "recipe_diff",
    "flags",
]


def leaderboard(summary: pd.DataFrame, paper: pd.DataFrame, rel_tol: float = REL_TOL) -> pd.DataFrame:
    """Every summary row with its paper counterpart (if any), ratio ours/paper and verdict."""
    rows = []
    for rec in summary.to_dict("records"):
        pr = match_paper(rec, paper)
        v, reason = verdict(rec, pr, rel_tol)
        pv = _num(pr["value"]) if pr is not None else float("nan")
        rows.append(
            {
                **{c: rec.get(c, np.nan) for c in LEADERBOARD_COLUMNS if c in rec},
                "paper_method": pr["method"] if pr is not None else "",
                "paper_value": pv,
                "paper_metric": pr["metric"] if pr is not None else "",
                "paper_extractor": pr["extractor"] if pr is not None else "",
                "paper_verified": bool(pr["verified"]) if pr is not None else False,
                "paper_source": pr.get("source", "") if pr is not None else "",
                "ratio": rec["mean"] / pv if pv and np.isfinite(pv) else float("nan"),
                "verdict": v,
                "reason": reason,
            }
        )
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


# ---------------------------------------------------------------------------------------------
# writers


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """Markdown via tabulate when installed, else a minimal pipe-table formatter."""
    try:
        import tabulate  # noqa: F401

        return df.to_markdown(index=False, floatfmt=floatfmt) + "\n"
    except ImportError:

        def cell(x: Any) -> str:
            if isinstance(x, float):
                return "" if math.isnan(x) else format(x, floatfmt)
            return str(x).replace("|", "\\|")

        lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
        lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in df.itertuples(index=False)]
        return "\n".join(lines) + "\n"


def write_tables(summary: pd.DataFrame, board: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """summary.csv/.md and leaderboard.csv/.md in out_dir (atomic writes)."""
    out = Path(out_dir)
    paths = {}
    for name, df in (("summary", summary), ("leaderboard", board)):
        for ext, text in (("csv", to_csv(df)), ("md", to_markdown(df))):
            p = out / f"{name}.{ext}"
            write_text(p, text)
            paths[f"{name}_{ext}"] = p
    return paths
