"""The `fit` step (DESIGN §7): results.csv -> scaling.csv and scaling_compare.csv, one power law
q(C) = a * C^(-b) + c (benchmark.powerlaw) per group, compute axis and law.

Decisions:
- Laws per group: `all-cells` (every run of a method x step budget x metric), and where the grid
  varies model size and budget, the compute-efficient `frontier` (the lower envelope of the cells'
  seed means in compute, Hoffmann et al. 2022 approach 1) and one `size:<variant>` law per model size.
- Only lower-is-better metrics are fitted (FID, KID, FD, SW2...): a law decaying to a floor c
  describes an error, not precision/recall/coverage.
- compute_to_target's default target per (dataset, metric, extractor, library, step budget) is
  the median of the fitted methods' best means over their grids: a level some methods reach inside
  their grid and others not. `ctt_in_grid` says whether the answer is interpolated (inside the
  group's compute range) or extrapolated.
- Method comparisons (`compare_exponents`): b_A - b_B with the MOVER interval for a difference of
  independent estimates (Zou & Donner 2008, Stat. Med. 27:1693), built from the two profile
  intervals; measured coverage of the true difference 95-99 % (conservative).
"""

from __future__ import annotations

import math
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import InputError
from benchmark.metrics.direction import is_auxiliary, lower_is_better
from benchmark.powerlaw import LEVEL, PowerLawFit, compute_to_target, ctt_interval, fit_power_law, fittable, usable
from benchmark.provenance import to_csv, write_text

AXES = ("train_flops", "total_flops")  # total: a run whose teacher was imported has none (without_unmeasured_totals)
GROUP_KEYS = ["dataset", "method", "steps", "metric", "extractor", "library"]
SCALING_COLUMNS = [
    "dataset",
    "method",
    "steps",
    "metric",
    "extractor",
    "library",
    "axis",
    "law",
    "a",
    "b",
    "c",
    "r2",
    "a_lo",
    "a_hi",
    "b_lo",
    "b_hi",
    "c_lo",
    "c_hi",
    "n_points",
    "n_compute",
    "target",
    "compute_to_target",
    "ctt_in_grid",
    "ctt_lo",
    "ctt_hi",
    "interval_note",
    "bound_hits",
]
COMPARE_KEYS = ["dataset", "steps", "metric", "extractor", "library", "axis", "law"]
COMPARE_COLUMNS = COMPARE_KEYS + [
    "method_a", "method_b", "b_a", "b_b", "b_diff", "b_diff_lo", "b_diff_hi", "verdict", "note",
]


# ---- the scaling table -----------------------------------------------------------------------

BUDGET_TAG = re.compile(r"^images[0-9.e+]+$")  # the training-budget part of a grid variant name


def model_size(variant: str) -> str:
    """The model-size part of a grid variant (`mlp.hidden64.images128000` -> `mlp.hidden64`): a
    scaling grid names each cell by its values (benchmark.expand._expand_grid), and the cells of
    one size differ only in their `images<N>` budget tag."""
    return ".".join(t for t in str(variant).split(".") if not BUDGET_TAG.match(t))


def frontier_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The compute-efficient frontier of grid cells (columns C, q: compute and seed-mean quality):
    cells better than every cheaper cell, i.e. the lower envelope of quality in compute
    (Hoffmann et al. 2022, approach 1, on whole runs instead of training curves)."""
    s = cells.sort_values(["C", "q"])
    best_before = s["q"].cummin().shift(fill_value=np.inf)
    return s[s["q"] < best_before]


def _laws(g: pd.DataFrame, axis: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(law, C, q) per law to fit for one group on one compute axis: all cells; and where the
    grid varies both model size and budget, the frontier and each size's own budget law."""
    d = g.assign(_C=pd.to_numeric(g[axis], errors="coerce"), _size=g["variant"].map(model_size))
    laws = [("all-cells", d["_C"].to_numpy(), d["value"].to_numpy())]
    cells = d.groupby("variant", sort=True).agg(C=("_C", "mean"), q=("value", "mean"), size=("_size", "first"))
    budgets = cells.groupby("size")["C"].nunique()
    if len(budgets) < 2 or budgets.max() < 2:
        return laws
    front = d[d["variant"].isin(frontier_cells(cells).index)]
    laws.append(("frontier", front["_C"].to_numpy(), front["value"].to_numpy()))
    for size, gs in d.groupby("_size", sort=True):
        laws.append((f"size:{size}", gs["_C"].to_numpy(), gs["value"].to_numpy()))
    return laws


def _row(rec: dict, axis: str, law: str, C: np.ndarray, fit: PowerLawFit, target: float) -> dict:
    ctt = compute_to_target(fit, target)
    lo, hi = ctt_interval(fit, target)
    return {
        **rec, "axis": axis, "law": law, "a": fit.a, "b": fit.b, "c": fit.c, "r2": fit.r2,
        "a_lo": fit.a_ci[0], "a_hi": fit.a_ci[1], "b_lo": fit.b_ci[0], "b_hi": fit.b_ci[1],
        "c_lo": fit.c_ci[0], "c_hi": fit.c_ci[1], "n_points": fit.n_points, "n_compute": fit.n_compute,
        "target": target, "compute_to_target": ctt, "ctt_in_grid": bool(C.min() <= ctt <= C.max()),
        "ctt_lo": lo, "ctt_hi": hi, "interval_note": fit.interval_note, "bound_hits": "; ".join(fit.bound_hits),
    }


def without_unmeasured_totals(results: pd.DataFrame) -> pd.DataFrame:
    """`results` with `total_flops` blank where it excludes an imported teacher's training
    (`total_excludes_teacher`, benchmark/aggregate.py): on the total-compute axis such a point would
    sit at a lower bound, as if the teacher had cost nothing, so it is left out of that axis (its own
    training compute, `train_flops`, is measured and stays)."""
    if "total_excludes_teacher" not in results or "total_flops" not in results:
        return results
    out = results.copy()
    excluded = out["total_excludes_teacher"].astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))
    out["total_flops"] = pd.to_numeric(out["total_flops"], errors="coerce").mask(excluded)
    return out


def default_targets(results: pd.DataFrame) -> dict[tuple, float]:
    """Per (dataset, metric, extractor, library, steps): the median of the fitted methods' best seed
    means over their grids (see module docstring). Groups without a fit (< 3 compute values, e.g. a
    single distilled run) and other step budgets do not set it."""
    keys = ["dataset", "metric", "extractor", "library", "steps"]
    fitted = [
        g
        for _, g in results.groupby(GROUP_KEYS, dropna=False)
        if fittable(pd.to_numeric(g["train_flops"], errors="coerce"), g["value"])
    ]
    if not fitted:
        return {}
    r = pd.concat(fitted)
    means = r.groupby(GROUP_KEYS + ["variant"], dropna=False)["value"].mean().reset_index()
    best = means.groupby(GROUP_KEYS, dropna=False)["value"].min().reset_index()
    return {tuple(k): float(g["value"].median()) for k, g in best.groupby(keys, dropna=False)}


def fit_results(results: pd.DataFrame, targets: dict[tuple, float] | None = None,
                level: float = LEVEL) -> pd.DataFrame:
    """Scaling table for a tidy results frame: one row per group x axis x law with >= 3 compute
    values (`law`: all-cells | frontier | size:<model size>, see `_laws`)."""
    df = without_unmeasured_totals(results)
    df[["extractor", "library"]] = df[["extractor", "library"]].fillna("")
    df = df[df["metric"].map(lambda m: not is_auxiliary(m) and lower_is_better(m))]
    targets = {**default_targets(df), **(targets or {})} if len(df) else {}
    rows = []
    for key, g in df.groupby(GROUP_KEYS, sort=True, dropna=False):
        rec = dict(zip(GROUP_KEYS, key))
        target = targets.get(
            (rec["dataset"], rec["metric"], rec["extractor"], rec["library"], rec["steps"]), float("nan")
        )
        for axis in (a for a in AXES if a in g.columns):
            for law, C, q in _laws(g, axis):
                C, q = usable(C, q)
                if fittable(C, q):
                    rows.append(_row(rec, axis, law, C, fit_power_law(C, q, level=level), target))
    return pd.DataFrame(rows, columns=SCALING_COLUMNS)


def compare_exponents(scaling: pd.DataFrame) -> pd.DataFrame:
    """b_A - b_B for every pair of methods fitted on the same (dataset, steps, metric, evaluator,
    axis, law kind), with the MOVER interval of a difference of independent estimates (Zou &
    Donner 2008, Stat. Med. 27:1693): lo = d - sqrt((b_A - lo_A)^2 + (hi_B - b_B)^2), hi = d + sqrt((hi_A -
    b_A)^2 + (b_B - lo_B)^2). Methods are fitted on disjoint runs, so their estimates are
    independent; a missing interval on either side (refused, or open at b's search bound) leaves
    the difference without one. Per-size laws are not compared (sizes differ between methods)."""
    rows = []
    sc = scaling[scaling["law"].isin(["all-cells", "frontier"])] if len(scaling) else scaling
    for key, g in sc.groupby(COMPARE_KEYS, sort=True, dropna=False):
        g = g.sort_values("method")
        for (_, x), (_, y) in combinations(g.iterrows(), 2):
            rows.append({**dict(zip(COMPARE_KEYS, key)), **_mover(x, y)})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _mover(x: pd.Series, y: pd.Series) -> dict:
    d = x["b"] - y["b"]
    out = {"method_a": x["method"], "method_b": y["method"], "b_a": x["b"], "b_b": y["b"], "b_diff": d,
           "b_diff_lo": float("nan"), "b_diff_hi": float("nan"), "verdict": "", "note": ""}
    ends = [x["b_lo"], x["b_hi"], y["b_lo"], y["b_hi"]]
    if not np.isfinite(d) or not np.isfinite(np.asarray(ends, float)).all():
        out["note"] = "no interval for " + " and ".join(
            m for m, r in ((x["method"], x), (y["method"], y)) if not np.isfinite([r["b"], r["b_lo"], r["b_hi"]]).all()
        )
        return out
    lo = d - math.hypot(x["b"] - x["b_lo"], y["b_hi"] - y["b"])
    hi = d + math.hypot(x["b_hi"] - x["b"], y["b"] - y["b_lo"])
    verdict = "a steeper" if lo > 0 else "b steeper" if hi < 0 else "undecided"
    return {**out, "b_diff_lo": lo, "b_diff_hi": hi, "verdict": verdict}


def compare_path(scaling_csv: str | Path) -> Path:
    """scaling_compare.csv beside scaling.csv."""
    return Path(scaling_csv).with_name("scaling_compare.csv")


def fit_suite(results_csv: str | Path, out_csv: str | Path, level: float = LEVEL) -> pd.DataFrame:
    """results.csv -> scaling.csv and scaling_compare.csv (the `fit` rule). Deterministic."""
    path = Path(results_csv)
    if not path.is_file():
        raise InputError(f"{path} not found", "run the aggregate rule first")
    table = fit_results(pd.read_csv(path), level=level)
    write_text(out_csv, to_csv(table))
    write_text(compare_path(out_csv), to_csv(compare_exponents(table)))
    return table
