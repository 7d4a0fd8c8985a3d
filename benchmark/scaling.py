"""Scaling laws of sample quality in compute (DESIGN §7): q(C) = a * C^(-b) + c.

Decisions:
- Fit in log space, minimising sum (log q - log(a C^-b + c))^2, so FIDs of 2 and 200 weigh the
  same relatively; positivity by parameterisation/bounds: a = A * C0^b with log A free, b >= 0,
  c >= 0, where C0 is the geometric mean of C (conditioning: C ~ 1e15 FLOPs would otherwise
  push log a to ~35 b). Several starts (b, c grids), best cost wins.
- R^2 is that of log q (the space the fit is made in).
- Bootstrap (percentile, 95%): when some compute value has >= 2 seeds, resample seeds *within*
  each compute value (keeps the design grid, so every replicate still has >= 3 distinct C);
  with one value per C, resample log-space residuals instead.
- Only lower-is-better metrics are fitted (FID, KID, FD, SW2...): a law decaying to a floor c
  describes an error, not precision/recall/coverage.
- compute_to_target's default target per (dataset, metric, extractor, library) is the
  worst of the methods' best means over the grid: a quality every fitted method reached, so the
  compute needed for it is interpolated, not extrapolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from benchmark.errors import InputError
from benchmark.provenance import write_text
from benchmark.report.tables import is_auxiliary, lower_is_better, to_csv

AXES = ("train_flops", "total_flops")
GROUP_KEYS = ["dataset", "method", "steps", "metric", "extractor", "library"]
SCALING_COLUMNS = [
    "dataset",
    "method",
    "steps",
    "metric",
    "extractor",
    "library",
    "axis",
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
    "ctt_lo",
    "ctt_hi",
]


@dataclass(frozen=True)
class PowerLawFit:
    """q(C) = a C^-b + c with 95% bootstrap intervals (nan when not bootstrapped)."""

    a: float
    b: float
    c: float
    r2: float
    n_points: int
    a_ci: tuple[float, float] = (float("nan"), float("nan"))
    b_ci: tuple[float, float] = (float("nan"), float("nan"))
    c_ci: tuple[float, float] = (float("nan"), float("nan"))
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 3)), repr=False)  # rows (a, b, c)

    def __call__(self, C: Any) -> np.ndarray:
        return power_law(np.asarray(C, dtype=float), self.a, self.b, self.c)


def power_law(C: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(C, -b) + c


def _fit_once(
    x: np.ndarray, logq: np.ndarray, starts: list[tuple[float, float]]
) -> tuple[float, float, float]:
    """Best (log A, b, c) over starts, x = C/C0; q = A x^-b + c."""
    qmin = float(np.exp(logq.min()))
    best, best_cost = None, np.inf

    lx = np.log(x)

    def resid(p: np.ndarray) -> np.ndarray:
        return logq - np.log(np.exp(p[0]) * np.power(x, -p[1]) + p[2])

    def jac(p: np.ndarray) -> np.ndarray:  # d resid / d (log A, b, c)
        t = np.exp(p[0]) * np.power(x, -p[1])
        m = t + p[2]
        return np.stack([-t / m, t * lx / m, -1.0 / m], axis=1)

    for b0, c0 in starts:
        c0 = min(c0, 0.95 * qmin)
        span = np.exp(logq) - c0
        la0 = float(np.log(max(np.median(span * np.power(x, b0)), 1e-12)))
        try:
            r = least_squares(
                resid,
                x0=[la0, b0, c0],
                jac=jac,
                bounds=([-np.inf, 0.0, 0.0], [np.inf, 20.0, np.inf]),
                method="trf",
                x_scale="jac",
                max_nfev=2000,
            )
        except ValueError:
            continue
        if np.isfinite(r.cost) and r.cost < best_cost:
            best, best_cost = r.x, r.cost
    if best is None:
        raise InputError("power-law fit failed", "check that the quality values are positive and finite")
    return float(best[0]), float(best[1]), float(best[2])


def fit_power_law(C: Any, q: Any, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> PowerLawFit:
    """Fit q(C) = a C^-b + c in log space; bootstrap CIs (see module docstring for the scheme).
    C and q are per-point arrays (one point per seed and compute value)."""
    C = np.asarray(C, dtype=float).ravel()
    q = np.asarray(q, dtype=float).ravel()
    ok = np.isfinite(C) & np.isfinite(q) & (C > 0) & (q > 0)
    C, q = C[ok], q[ok]
    if len(np.unique(C)) < 3:
        raise InputError(
            f"a power law needs >= 3 distinct compute values, got {len(np.unique(C))}",
            "add training budgets/model sizes to the suite's grid",
        )
    C0 = float(np.exp(np.mean(np.log(C))))
    x, logq = C / C0, np.log(q)
    qmin = float(q.min())
    starts = [(b0, c0) for b0 in (0.25, 0.5, 1.0, 2.0) for c0 in (0.0, 0.5 * qmin, 0.9 * qmin)]
    la, b, c = _fit_once(x, logq, starts)
    pred = np.log(np.exp(la) * np.power(x, -b) + c)
    ss_res = float(np.sum((logq - pred) ** 2))
    ss_tot = float(np.sum((logq - logq.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    a = float(np.exp(la + b * np.log(C0)))

    boot = np.empty((0, 3))
    cis = [(float("nan"), float("nan"))] * 3
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        uniq, inv = np.unique(C, return_inverse=True)
        by_c = [np.flatnonzero(inv == i) for i in range(len(uniq))]
        stratified = any(len(ix) > 1 for ix in by_c)
        res = logq - pred
        out = []
        for _ in range(n_boot):
            if stratified:
                idx = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_c])
                xb, lb = x[idx], logq[idx]
            else:
                xb, lb = x, pred + rng.choice(res, size=len(res), replace=True)
            try:
                lab, bb, cb = _fit_once(xb, lb, [(max(b, 0.05), c)])
            except InputError:
                continue
            out.append((float(np.exp(lab + bb * np.log(C0))), bb, cb))
        boot = np.asarray(out, dtype=float).reshape(-1, 3)
        lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
        if len(boot):
            cis = [tuple(float(v) for v in np.percentile(boot[:, j], [lo, hi])) for j in range(3)]
    return PowerLawFit(
        a=a, b=b, c=c, r2=r2, n_points=int(len(C)), a_ci=cis[0], b_ci=cis[1], c_ci=cis[2], boot=boot
    )


def compute_to_target(fit: Any, target: float) -> float:
    """Compute C with q(C) = target: C = (a / (target - c))^(1/b); inf if target <= c (the floor
    is never reached) or b == 0."""
    a, b, c = float(fit.a), float(fit.b), float(fit.c)
    if not np.isfinite(target) or target <= c or b <= 0 or a <= 0:
        return float("inf")
    return float(math.exp((math.log(a) - math.log(target - c)) / b))


def _ctt_ci(fit: PowerLawFit, target: float, level: float = 0.95) -> tuple[float, float]:
    if len(fit.boot) == 0:
        return float("nan"), float("nan")
    vals = np.array([compute_to_target(PowerLawFit(a, b, c, np.nan, 0), target) for a, b, c in fit.boot])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return tuple(float(v) for v in np.percentile(vals, [lo, hi]))


def default_targets(results: pd.DataFrame) -> dict[tuple, float]:
    """Per (dataset, metric, extractor, library): max over (method, steps) of the best seed-mean
    over the grid — a quality level every method reached somewhere (see module docstring)."""
    keys = ["dataset", "metric", "extractor", "library"]
    means = results.groupby(GROUP_KEYS + ["variant"], dropna=False)["value"].mean().reset_index()
    best = means.groupby(GROUP_KEYS, dropna=False)["value"].min().reset_index()
    return {tuple(k): float(g["value"].max()) for k, g in best.groupby(keys, dropna=False)}


def fit_results(
    results: pd.DataFrame, n_boot: int = 200, seed: int = 0, targets: dict[tuple, float] | None = None
) -> pd.DataFrame:
    """Scaling table for a tidy results frame: one row per group x axis with >= 3 compute values."""
    df = results.copy()
    df[["extractor", "library"]] = df[["extractor", "library"]].fillna("")
    df = df[df["metric"].map(lambda m: not is_auxiliary(m) and lower_is_better(m))]
    targets = {**default_targets(df), **(targets or {})} if len(df) else {}
    rows = []
    for key, g in df.groupby(GROUP_KEYS, sort=True, dropna=False):
        rec = dict(zip(GROUP_KEYS, key))
        target = targets.get((rec["dataset"], rec["metric"], rec["extractor"], rec["library"]), float("nan"))
        for axis in AXES:
            if axis not in g.columns:
                continue
            C = pd.to_numeric(g[axis], errors="coerce").to_numpy(float)
            q = g["value"].to_numpy(float)
            ok = np.isfinite(C) & (C > 0) & np.isfinite(q) & (q > 0)
            if len(np.unique(C[ok])) < 3:
                continue
            fit = fit_power_law(C[ok], q[ok], n_boot=n_boot, seed=seed)
            lo, hi = _ctt_ci(fit, target)
            rows.append(
                {
                    **rec,
                    "axis": axis,
                    "a": fit.a,
                    "b": fit.b,
                    "c": fit.c,
                    "r2": fit.r2,
                    "a_lo": fit.a_ci[0],
                    "a_hi": fit.a_ci[1],
                    "b_lo": fit.b_ci[0],
                    "b_hi": fit.b_ci[1],
                    "c_lo": fit.c_ci[0],
                    "c_hi": fit.c_ci[1],
                    "n_points": fit.n_points,
                    "n_compute": int(len(np.unique(C[ok]))),
                    "target": target,
                    "compute_to_target": compute_to_target(fit, target),
                    "ctt_lo": lo,
                    "ctt_hi": hi,
                }
            )
    return pd.DataFrame(rows, columns=SCALING_COLUMNS)


def fit_suite(results_csv: str | Path, out_csv: str | Path, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """results.csv -> scaling.csv (the `fit` rule). Deterministic for a fixed seed."""
    path = Path(results_csv)
    if not path.is_file():
        raise InputError(f"{path} not found", "run the aggregate rule first")
    table = fit_results(pd.read_csv(path), n_boot=n_boot, seed=seed)
    write_text(out_csv, to_csv(table))
    return table
