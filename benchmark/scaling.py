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
- compute_to_target's default target per (dataset, metric, extractor, library, step budget) is
  the median of the fitted methods' best means over their grids: a level some methods reach inside
  their grid and others not (the worst best, tried first, let a method that fails at that budget —
  EDM at 1-2 steps — set a target everyone else met at their smallest run). `ctt_in_grid` says
  whether the answer is interpolated (inside the group's compute range) or extrapolated.
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
    "ctt_in_grid",
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


MIN_COMPUTE_VALUES = 3  # a, b and c need at least three distinct compute values


def _usable(C: Any, q: Any) -> tuple[np.ndarray, np.ndarray]:
    """The (C, q) points a fit can use: finite and positive (both are logged)."""
    C, q = np.asarray(C, dtype=float).ravel(), np.asarray(q, dtype=float).ravel()
    ok = np.isfinite(C) & np.isfinite(q) & (C > 0) & (q > 0)
    return C[ok], q[ok]


def _fittable(C: Any, q: Any) -> bool:
    return len(np.unique(_usable(C, q)[0])) >= MIN_COMPUTE_VALUES


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


def _fit_batch(x: np.ndarray, L: np.ndarray, p0: np.ndarray, iters: int = 100) -> np.ndarray:
    """Levenberg-Marquardt on many replicates at once (rows of L = log q), each minimising
    sum (L - log(e^la x^-b + c))^2 from p0 = (la, b, c), with b in [0, 20] and c >= 0 by projection.
    One vectorised solve per iteration for all replicates: a bootstrap of 200 fits takes milliseconds
    where 200 scipy calls took a second. Returns (B, 3); rows that never became finite are NaN."""
    B = L.shape[0]
    lx = np.log(x)[None, :]
    lo, hi = np.array([-np.inf, 0.0, 0.0]), np.array([np.inf, 20.0, np.inf])

    def res_jac(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.exp(P[:, :1] - P[:, 1:2] * lx)  # a' x^-b
        m = t + P[:, 2:3]
        return L - np.log(m), np.stack([-t / m, t * lx / m, -1.0 / m], axis=2)

    P = np.tile(np.asarray(p0, float), (B, 1))
    r, J = res_jac(P)
    cost = (r**2).sum(1)
    lam = np.full(B, 1e-3)
    eye = np.eye(3)[None]
    with np.errstate(all="ignore"):
        for _ in range(iters):
            A = J.transpose(0, 2, 1) @ J
            g = (J.transpose(0, 2, 1) @ r[..., None])[..., 0]
            damp = lam[:, None, None] * (eye * np.maximum(np.diagonal(A, axis1=1, axis2=2), 1e-12)[:, None, :])
            try:
                step = np.linalg.solve(A + damp, -g[..., None])[..., 0]
            except np.linalg.LinAlgError:
                break
            Pn = np.clip(P + np.nan_to_num(step), lo, hi)
            rn, Jn = res_jac(Pn)
            cn = (rn**2).sum(1)
            better = np.isfinite(cn) & (cn < cost)
            P[better], r[better], J[better] = Pn[better], rn[better], Jn[better]
            gain = np.where(better, (cost - cn) / np.maximum(cost, 1e-300), 0.0)
            cost = np.where(better, cn, cost)
            lam = np.where(better, lam / 3, lam * 3)
            if np.all(np.where(better, gain < 1e-12, lam > 1e8)):  # converged or stuck everywhere
                break
    P[~np.isfinite(cost)] = np.nan
    return P


def fit_power_law(C: Any, q: Any, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> PowerLawFit:
    """Fit q(C) = a C^-b + c in log space; bootstrap CIs (see module docstring for the scheme).
    C and q are per-point arrays (one point per seed and compute value)."""
    C, q = _usable(C, q)
    if not _fittable(C, q):
        raise InputError(
            f"a power law needs >= {MIN_COMPUTE_VALUES} distinct compute values, got {len(np.unique(C))}",
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
        if stratified:
            idx = np.stack([np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_c])
                            for _ in range(n_boot)])
            # resampling within compute values keeps the design: every replicate has the same x
            x_b, L_b = x[idx[0]], logq[idx]
        else:
            x_b, L_b = x, pred[None, :] + rng.choice(res, size=(n_boot, len(res)), replace=True)
        # warm-started at the point estimate (see _fit_batch)
        P = _fit_batch(x_b, L_b, np.array([la, max(b, 0.05), c]))
        P = P[np.isfinite(P).all(1)]
        boot = np.column_stack([np.exp(P[:, 0] + P[:, 1] * np.log(C0)), P[:, 1], P[:, 2]])
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
    log_c = (math.log(a) - math.log(target - c)) / b
    return math.inf if log_c > 700 else math.exp(log_c)  # a near-flat law (b -> 0) never gets there


def _ctt_ci(fit: PowerLawFit, target: float, level: float = 0.95) -> tuple[float, float]:
    if len(fit.boot) == 0:
        return float("nan"), float("nan")
    vals = np.array([compute_to_target(PowerLawFit(a, b, c, np.nan, 0), target) for a, b, c in fit.boot])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    # no interpolation: replicates whose law never reaches the target give inf, and inf - inf is nan
    return tuple(float(v) for v in np.percentile(vals, [lo, hi], method="inverted_cdf"))


def default_targets(results: pd.DataFrame) -> dict[tuple, float]:
    """Per (dataset, metric, extractor, library, steps): the median of the fitted methods' best seed
    means over their grids (see module docstring). Groups without a fit (< 3 compute values, e.g. a
    single distilled run) and other step budgets do not set it."""
    keys = ["dataset", "metric", "extractor", "library", "steps"]
    fitted = [
        g
        for _, g in results.groupby(GROUP_KEYS, dropna=False)
        if _fittable(pd.to_numeric(g["train_flops"], errors="coerce"), g["value"])
    ]
    if not fitted:
        return {}
    r = pd.concat(fitted)
    means = r.groupby(GROUP_KEYS + ["variant"], dropna=False)["value"].mean().reset_index()
    best = means.groupby(GROUP_KEYS, dropna=False)["value"].min().reset_index()
    return {tuple(k): float(g["value"].median()) for k, g in best.groupby(keys, dropna=False)}


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
        target = targets.get(
            (rec["dataset"], rec["metric"], rec["extractor"], rec["library"], rec["steps"]), float("nan")
        )
        for axis in AXES:
            if axis not in g.columns:
                continue
            C, q = _usable(pd.to_numeric(g[axis], errors="coerce"), g["value"])
            if not _fittable(C, q):
                continue
            fit = fit_power_law(C, q, n_boot=n_boot, seed=seed)
            lo, hi = _ctt_ci(fit, target)
            ctt = compute_to_target(fit, target)
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
                    "n_compute": int(len(np.unique(C))),
                    "target": target,
                    "compute_to_target": ctt,
                    "ctt_in_grid": bool(C.min() <= ctt <= C.max()),
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
