"""Scaling laws of sample quality in compute (DESIGN §7): q(C) = a * C^(-b) + c.

Decisions:
- Fit in log space, minimising sum (log q - log(a C^-b + c))^2: the maximum-likelihood fit under
  multiplicative (log-normal) noise, so FIDs of 2 and 200 weigh the same relatively. Positivity by
  parameterisation/bounds: a = A * C0^b with log A free, 0 <= b <= 20 (20: a search bound),
  c >= 0, where C0 is the geometric mean of C (conditioning: C ~ 1e15 FLOPs would otherwise push
  log a to ~35 b). Several starts (b, c grids) solved at once by a batched Levenberg-Marquardt.
- R^2 is that of log q (the space the fit is made in).
- Intervals are profile-likelihood intervals calibrated with Student's t on the residual degrees of
  freedom n - 3 (Bates & Watts 1988, "Nonlinear Regression Analysis", §6.1, profile t):
  {theta : (RSS_prof(theta) - RSS_min) / s^2 <= t_{n-3, 0.975}^2}, s^2 = RSS_min / (n - 3), for b, c,
  log a and log compute-to-target (the law re-parameterised by C*). Why not the bootstrap used
  before: percentile bootstraps over 5-9 points ignore that 3 fitted parameters eat the residuals'
  degrees of freedom and that s is itself estimated; on synthetic laws their 95 % intervals covered
  the true b only 40-85 % of the time. The profile-t interval covers 92-98 % (README, tests/
  test_scaling_coverage.py) and, unlike Wald intervals, follows the law's curvature (asymmetric).
- Honest refusals: with fewer than MIN_INTERVAL_COMPUTE distinct compute values only the point
  estimate is reported and `interval_note` says why: at 4 values and one seed the profile-t
  interval measured 91 % (below the 92 % the benchmark promises) with t_1 = 12.7 making it nearly
  uninformative, and 3 values leave no residual to estimate the noise from. A search bound
  (b = 20) reached by an estimate or an interval end is written as NaN and named in `bound_hits`;
  the natural bounds b = 0 and c = 0 are values (an end at 0 is a real end of the parameter space)
  but an estimate there is still named.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import InputError
from benchmark.metrics.direction import is_auxiliary, lower_is_better
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

LEVEL = 0.95
MIN_COMPUTE_VALUES = 3  # a, b and c need at least three distinct compute values
MIN_INTERVAL_COMPUTE = 5  # below this the profile-t interval under-covers (see module docstring)
B_MAX = 20.0  # search bound of the exponent: reaching it means "steeper than the data can tell"
NOTE_FEW = "too few compute values for an interval"
NAN2 = (float("nan"), float("nan"))


@dataclass(frozen=True)
class PowerLawFit:
    """q(C) = a C^-b + c with 95% profile-t intervals (nan when refused, see `interval_note`).
    `profile` keeps the data and estimate so that compute-to-target intervals can be profiled later."""

    a: float
    b: float
    c: float
    r2: float
    n_points: int
    a_ci: tuple[float, float] = NAN2
    b_ci: tuple[float, float] = NAN2
    c_ci: tuple[float, float] = NAN2
    n_compute: int = 0
    interval_note: str = ""
    bound_hits: tuple[str, ...] = ()
    profile: _Profiler | None = field(default=None, repr=False, compare=False)

    def __call__(self, C: Any) -> np.ndarray:
        return power_law(np.asarray(C, dtype=float), self.a, self.b, self.c)


def power_law(C: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(C, -b) + c


def _usable(C: Any, q: Any) -> tuple[np.ndarray, np.ndarray]:
    """The (C, q) points a fit can use: finite and positive (both are logged)."""
    C, q = np.asarray(C, dtype=float).ravel(), np.asarray(q, dtype=float).ravel()
    ok = np.isfinite(C) & np.isfinite(q) & (C > 0) & (q > 0)
    return C[ok], q[ok]


def _fittable(C: Any, q: Any) -> bool:
    return len(np.unique(_usable(C, q)[0])) >= MIN_COMPUTE_VALUES


# ---- batched Levenberg-Marquardt -------------------------------------------------------------

ResJac = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _lm(res_jac: ResJac, P0: np.ndarray, lo: np.ndarray, hi: np.ndarray, iters: int = 100,
        atol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt (Marquardt's diagonal scaling) on many problems at once: row i of P
    minimises sum_j r_ij(P_i)^2 within [lo, hi] (by projection). One vectorised k x k solve per
    iteration for all rows: the multi-start fit and the profiles take milliseconds where one scipy
    call per problem took seconds. A row is done when a step gains < 1e-10 relatively or < atol
    absolutely, or finds no descent. Returns (P, cost); rows never finite get cost inf."""
    P = np.array(P0, dtype=float)
    k = P.shape[1]
    lo, hi = np.broadcast_to(lo, P.shape), np.broadcast_to(hi, P.shape)
    with np.errstate(all="ignore"):
        P = np.clip(P, lo, hi)
        r, J = res_jac(P)
        cost = np.where(np.isfinite(r).all(1), (r**2).sum(1), np.inf)
        lam = np.full(len(P), 1e-3)
        done = ~np.isfinite(cost)
        eye = np.eye(k)[None]
        for _ in range(iters):
            Jf, rf = np.where(np.isfinite(J), J, 0.0), np.where(np.isfinite(r), r, 0.0)
            A = Jf.transpose(0, 2, 1) @ Jf
            g = (Jf.transpose(0, 2, 1) @ rf[..., None])[..., 0]
            damp = lam[:, None, None] * eye * np.maximum(np.diagonal(A, axis1=1, axis2=2), 1e-12)[:, None, :]
            try:
                step = np.linalg.solve(A + damp, -g[..., None])[..., 0]
            except np.linalg.LinAlgError:
                break
            Pn = np.clip(P + np.where(np.isfinite(step), step, 0.0), lo, hi)
            rn, Jn = res_jac(Pn)
            cn = np.where(np.isfinite(rn).all(1), (rn**2).sum(1), np.inf)
            better = cn < cost
            P[better], r[better], J[better] = Pn[better], rn[better], Jn[better]
            drop = np.where(better, cost - cn, 0.0)
            small = (drop < 1e-10 * np.maximum(cost, 1e-300)) | (drop < atol)
            cost = np.where(better, cn, cost)
            lam = np.where(better, lam / 3, lam * 3)
            done |= (better & small) | (lam > 1e6)  # converged, or no descent left
            if done.all():
                break
    return P, cost


def _full_res_jac(lx: np.ndarray, L: np.ndarray) -> ResJac:
    """Residuals of log q = log(e^la x^-b + c) in (la, b, c), x = C/C0, and their Jacobian."""

    def f(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.exp(P[:, :1] - P[:, 1:2] * lx[None, :])  # e^la x^-b
        m = t + P[:, 2:3]
        return L - np.log(m), np.stack([-t / m, t * lx / m, -1.0 / m], axis=2)

    return f


_LO3, _HI3 = np.array([-np.inf, 0.0, 0.0]), np.array([np.inf, B_MAX, np.inf])


def _fit_point(x: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, float]:
    """Best (la, b, c) over a grid of starts (b0 x c0), all solved in one batch; and its RSS."""
    q = np.exp(L)
    starts = []
    for b0 in (0.25, 0.5, 1.0, 2.0):
        for c0 in (0.0, 0.5 * q.min(), 0.9 * q.min()):
            la0 = np.log(max(float(np.median((q - c0) * np.power(x, b0))), 1e-12))
            starts.append((la0, b0, c0))
    f = _full_res_jac(np.log(x), L[None, :])
    # converged once a step gains < 1e-9 of log q's total variation (R^2 exact to 1e-9)
    P, cost = _lm(f, np.array(starts), _LO3, _HI3, iters=100, atol=1e-9 * float(np.sum((L - L.mean()) ** 2)))
    if not np.isfinite(cost).any():
        raise InputError("power-law fit failed", "check that the quality values are positive and finite")
    i = int(np.argmin(cost))
    return P[i], float(cost[i])


# ---- profile-t intervals ---------------------------------------------------------------------

Interval = tuple[tuple[float, float], tuple[bool, bool]]  # (lo, hi), (lo at its bound, hi at its bound)
_GRID = np.geomspace(0.02, 200.0, 24)  # outward offsets from the estimate, in Wald standard errors


class _Profiler:
    """Profile RSS of the fitted law for one quantity held fixed at many values at once: b, c,
    log a or log compute-to-target; the two other parameters are re-fitted (two starts each,
    the better kept). Bates & Watts 1988 §6.1: the profile t statistic is
    tau(theta) = sign(theta - theta_hat) sqrt(RSS(theta) - RSS_min) / s."""

    def __init__(self, C: np.ndarray, q: np.ndarray, p_hat: np.ndarray, rss0: float, level: float):
        self.lC0 = float(np.mean(np.log(C)))
        self.lx, self.L = np.log(C) - self.lC0, np.log(q)
        self.p, self.rss0 = np.asarray(p_hat, float), rss0
        df = len(C) - 3
        self.s2 = max(rss0 / df, 1e-300)
        self.tq = float(stats.t.ppf(0.5 + level / 2, df))  # two-sided level, t with n - 3 df
        J = _full_res_jac(self.lx, self.L[None, :])(self.p[None, :])[1][0]
        try:
            self.cov = self.s2 * np.linalg.inv(J.T @ J)  # Wald covariance: only sets the grid's scale
        except np.linalg.LinAlgError:
            self.cov = np.full((3, 3), np.nan)

    def _rss(self, V: np.ndarray, starts: list[np.ndarray], res_jac: Callable, lo: Any, hi: Any) -> np.ndarray:
        """min over starts of the RSS with the free pair fitted, for each fixed value in V."""
        S = len(starts)
        if len(V) == 0:
            return np.empty(0)
        VV = np.tile(V, S)
        # the profile is compared with t^2 s^2 (4-160 s^2): an RSS within 1e-3 s^2 is exact enough
        P, cost = _lm(lambda P: res_jac(VV[:, None], P), np.concatenate(starts), lo, hi, iters=50,
                      atol=1e-3 * self.s2)
        return cost.reshape(S, len(V)).min(0)

    def rss_abc(self, which: np.ndarray, V: np.ndarray) -> np.ndarray:
        """Profile RSS with, per row, one of (log a, b, c) fixed at V (which = 0, 1, 2), all rows
        solved in one batch. Parameters (theta, b, c) of q = e^(theta - b z) + c, where z = log C
        and theta = log a for the log-a rows, z = log(C/C0) and theta = log A otherwise; the fixed
        one is pinned by lo = hi = V and its Jacobian column zeroed. Two starts per row."""
        if len(V) == 0:
            return np.empty(0)
        which, V = np.asarray(which, int), np.asarray(V, float)
        la, b, c = self.p
        q = np.exp(self.L)
        # closed-form starts: for fixed b the law is linear in (A, c) (least squares of relative
        # errors); for fixed c, log(q - c) is linear in log x
        with np.errstate(all="ignore"):  # rows of other quantities give junk here, never used
            z = np.exp(-V[:, None] * self.lx[None, :]) / q
            w = 1.0 / q
            szz, szw, sww, sz1, sw1 = (z * z).sum(1), (z * w).sum(1), (w * w).sum(), z.sum(1), w.sum()
            det = szz * sww - szw**2
            y = np.log(np.maximum(q[None, :] - V[:, None], 1e-6 * q[None, :]))
            dx = self.lx - self.lx.mean()
            slope = ((y - y.mean(1, keepdims=True)) * dx).sum(1) / max((dx**2).sum(), 1e-300)
            A_ls, c_ls = (sz1 * sww - sw1 * szw) / det, (szz * sw1 - szw * sz1) / det
            pivot = np.clip((V - la) / self.lC0, 0, B_MAX) if abs(self.lC0) > 1e-9 else np.full(len(V), b)
        la_ls = np.log(np.clip(np.nan_to_num(A_ls, nan=1.0), 1e-12, None))
        s1 = np.select([which[:, None] == 0, which[:, None] == 1],
                       [np.column_stack([V, np.full(len(V), b), np.full(len(V), c)]),
                        np.column_stack([la_ls, V, np.clip(np.nan_to_num(c_ls), 0, None)])],
                       np.column_stack([y.mean(1) - slope * self.lx.mean(), np.clip(-slope, 0, B_MAX), V]))
        s2 = np.tile(self.p, (len(V), 1))
        s2[:, 1] = np.where(which == 0, pivot, b)
        for s in (s1, s2):
            s[np.arange(len(V)), which] = V
        W, VV = np.tile(which, 2), np.tile(V, 2)
        pinned = np.eye(3, dtype=bool)[W]
        lo, hi = np.where(pinned, VV[:, None], _LO3), np.where(pinned, VV[:, None], _HI3)
        Z = np.where((W == 0)[:, None], self.lx[None, :] + self.lC0, self.lx[None, :])
        free = (~pinned).astype(float)[:, None, :]

        def rj(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t = np.exp(P[:, :1] - P[:, 1:2] * Z)
            m = t + P[:, 2:3]
            return self.L[None, :] - np.log(m), np.stack([-t / m, t * Z / m, -1.0 / m], axis=2) * free

        # the profile is compared with t^2 s^2 (4-160 s^2): an RSS within 1e-3 s^2 is exact enough
        _, cost = _lm(rj, np.concatenate([s1, s2]), lo, hi, iters=50, atol=1e-3 * self.s2)
        return cost.reshape(2, len(V)).min(0)

    def rss_b(self, V: np.ndarray) -> np.ndarray:
        return self.rss_abc(np.full(len(V), 1), V)

    def rss_c(self, V: np.ndarray) -> np.ndarray:
        return self.rss_abc(np.full(len(V), 2), V)


    def rss_log_ctt(self, V: np.ndarray, target: float) -> np.ndarray:
        """The law re-parameterised by u = log C* (q(C*) = target): q = (T - c) e^{b (u - log C)} + c."""
        lC, L, T = self.lx + self.lC0, self.L[None, :], target

        def rj(u: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            e = np.exp(P[:, :1] * (u - lC))
            t = (T - P[:, 1:2]) * e
            m = t + P[:, 1:2]
            return L - np.log(m), np.stack([-t * (u - lC) / m, -(1.0 - e) / m], axis=2)

        la, b, c = self.p
        q1 = np.exp(la) + c  # the fitted law at C0
        with np.errstate(all="ignore"):
            e1 = np.exp(b * (V - self.lC0))
            s1 = np.column_stack([np.full(len(V), b), (q1 - T * e1) / (1 - e1)])
            s2 = np.column_stack([(la - np.log(max(T - c, 1e-300))) / (V - self.lC0), np.full(len(V), c)])
        starts = [np.nan_to_num(s, nan=0.0, posinf=B_MAX, neginf=0.0) for s in (s1, s2)]
        hi = np.array([B_MAX, T * (1 - 1e-9)])
        starts = [np.clip(s, 0.0, hi) for s in starts]
        return self._rss(V, starts, rj, np.array([0.0, 0.0]), hi)

    def se(self, grad: np.ndarray) -> float:
        v = float(grad @ self.cov @ grad)
        return math.sqrt(v) if np.isfinite(v) and v > 0 else float("nan")

    def _tau(self, rss: np.ndarray) -> np.ndarray:
        """|profile t| = sqrt(RSS - RSS_min) / s; a failed fit counts as far outside."""
        return np.sqrt(np.nan_to_num(np.maximum(rss - self.rss0, 0) / self.s2, nan=np.inf))

    def intervals(self, rss: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  specs: list[tuple[float, float, float, float]]) -> list[Interval]:
        """Profile-t intervals {theta : |tau(theta)| <= t} of several quantities at once, one spec
        (estimate, scale, lower bound, upper bound) each, rss(ids, values) their profile RSS. Per side:
        a geometric grid outwards (offsets 0.02-200 x scale, clipped to the bound, the bound itself
        evaluated), then 8 points inside the first bracket where |tau| crosses t, and linear
        interpolation of |tau| there. An end that never crosses is the bound (flag True) or +-inf."""
        sides = []  # (spec id, sign, bound, estimate, grid)
        for k, (theta, scale, lb, ub) in enumerate(specs):
            for sign, bound in ((-1.0, lb), (1.0, ub)):
                v = theta + sign * scale * _GRID
                inside = (v > lb) & (v < ub)
                v = v[inside] if inside.all() or not np.isfinite(bound) else np.append(v[inside], bound)
                sides.append((k, sign, bound, theta, v))
        coarse = self._batch(rss, [(k, v) for k, _, _, _, v in sides])
        brackets = []
        for (_, _, _, theta, v), t in zip(sides, coarse):
            over = np.flatnonzero(t > self.tq)
            i = over[0] if len(over) else -1
            brackets.append(None if i < 0 else ((theta, 0.0) if i == 0 else (v[i - 1], t[i - 1])) + (v[i], t[i]))
        fine_v = [np.linspace(b[0], b[2], 10)[1:-1] if b else np.empty(0) for b in brackets]
        fine = self._batch(rss, [(k, v) for (k, *_), v in zip(sides, fine_v)])
        ends = []
        for (_, sign, bound, _, _), br, vf, t in zip(sides, brackets, fine_v, fine):
            if br is None:
                ends.append((bound if np.isfinite(bound) else sign * np.inf, bool(np.isfinite(bound))))
                continue
            vv, tt = np.concatenate([[br[0]], vf, [br[2]]]), np.concatenate([[br[1]], t, [br[3]]])
            j = int(np.flatnonzero(tt > self.tq)[0])
            f = (self.tq - tt[j - 1]) / (tt[j] - tt[j - 1]) if np.isfinite(tt[j]) else 1.0
            ends.append((float(vv[j - 1] + min(max(f, 0.0), 1.0) * (vv[j] - vv[j - 1])), False))
        return [((float(lo[0]), float(hi[0])), (lo[1], hi[1])) for lo, hi in zip(ends[::2], ends[1::2])]

    def _batch(self, rss: Callable, parts: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """|tau| at every (spec id, values) part, computed in one call of rss."""
        ids = np.concatenate([np.full(len(v), k) for k, v in parts])
        tau = self._tau(rss(ids, np.concatenate([v for _, v in parts])))
        return np.split(tau, np.cumsum([len(v) for _, v in parts])[:-1])


# ---- the fit ---------------------------------------------------------------------------------


def fit_power_law(C: Any, q: Any, level: float = LEVEL, intervals: bool = True) -> PowerLawFit:
    """Fit q(C) = a C^-b + c in log space, with profile-t intervals where calibrated (module
    docstring). C and q are per-point arrays (one point per seed and compute value)."""
    C, q = _usable(C, q)
    n_compute = len(np.unique(C))
    if n_compute < MIN_COMPUTE_VALUES:
        raise InputError(
            f"a power law needs >= {MIN_COMPUTE_VALUES} distinct compute values, got {n_compute}",
            "add training budgets/model sizes to the suite's grid",
        )
    lC0 = float(np.mean(np.log(C)))
    p, rss0 = _fit_point(np.exp(np.log(C) - lC0), np.log(q))
    la, b, c = (float(v) for v in p)
    ss_tot = float(np.sum((np.log(q) - np.log(q).mean()) ** 2))
    r2 = 1.0 - rss0 / ss_tot if ss_tot > 0 else float("nan")
    a = math.exp(la + b * lC0)
    hits, note, profiler = [], "", None
    if b >= B_MAX * (1 - 1e-9):  # steeper than the grid can tell: no value, no interval
        hits.append(f"b at search bound {B_MAX:g}")
        a = b = float("nan")
        note = "b at its search bound"
    else:
        hits += ["b=0 (flat law)"] if b <= 1e-9 else []
        hits += ["c=0 (no floor)"] if c <= 1e-9 * float(q.min()) else []
    cis = [NAN2] * 3
    if not note and n_compute < MIN_INTERVAL_COMPUTE:
        note = NOTE_FEW
    elif not note and intervals:
        profiler = _Profiler(C, q, p, rss0, level)
        cis, more = _parameter_intervals(profiler)
        hits += more
    return PowerLawFit(a=a, b=b, c=c, r2=r2, n_points=int(len(C)), a_ci=cis[0], b_ci=cis[1], c_ci=cis[2],
                       n_compute=n_compute, interval_note=note, bound_hits=tuple(hits), profile=profiler)


def _parameter_intervals(pr: _Profiler) -> tuple[list[tuple[float, float]], list[str]]:
    """Profile-t intervals of a, b, c; an end at the search bound of b is NaN and named."""
    la, b, c = pr.p
    se_b, se_c = pr.se(np.array([0.0, 1.0, 0.0])), pr.se(np.array([0.0, 0.0, 1.0]))
    se_la = pr.se(np.array([1.0, pr.lC0, 0.0]))
    (la_ci, _), (b_ci, b_hit), (c_ci, _) = pr.intervals(pr.rss_abc, [
        (la + b * pr.lC0, _scale(se_la, 1.0), -np.inf, np.inf),
        (b, _scale(se_b, 0.1 * max(b, 0.1)), 0.0, B_MAX),
        (c, _scale(se_c, 0.1 * float(np.exp(pr.L).min())), 0.0, np.inf),
    ])
    hits = []
    if b_hit[1]:
        b_ci = (b_ci[0], float("nan"))
        hits.append(f"b_hi beyond search bound {B_MAX:g}")
    with np.errstate(over="ignore"):
        a_ci = (float(np.exp(la_ci[0])), float(np.exp(la_ci[1])))
    return [a_ci, b_ci, c_ci], hits


def _scale(se: float, fallback: float) -> float:
    """Grid scale of a profile: the Wald standard error when it exists, else a rough size."""
    return se if np.isfinite(se) and se > 0 else fallback


def compute_to_target(fit: Any, target: float) -> float:
    """Compute C with q(C) = target: C = (a / (target - c))^(1/b); inf if target <= c (the floor
    is never reached) or b == 0; nan when the law has no exponent (b at its search bound)."""
    a, b, c = float(fit.a), float(fit.b), float(fit.c)
    if not (np.isfinite(a) and np.isfinite(b)):
        return float("nan")
    if not np.isfinite(target) or target <= c or b <= 0 or a <= 0:
        return float("inf")
    log_c = (math.log(a) - math.log(target - c)) / b
    return math.inf if log_c > 700 else math.exp(log_c)  # a near-flat law (b -> 0) never gets there


def ctt_interval(fit: PowerLawFit, target: float) -> tuple[float, float]:
    """Profile-t interval of compute-to-target (in log C*, mapped back). NaN when the fit has no
    interval (too few compute values) or the target is not finite; the upper end is inf when laws
    that never reach the target fit the data well enough."""
    pr = fit.profile
    if pr is None or not np.isfinite(target):
        return NAN2
    ctt = compute_to_target(fit, target)
    if not (0 < ctt < math.inf):
        return NAN2  # the estimate itself never reaches the target: no point to profile from
    u = math.log(ctt)
    la, b, c = pr.p
    # delta-method gradient of u = log C0 + (la - log(T - c)) / b, only to scale the grid
    grad = np.array([1.0 / b, -(la - math.log(target - c)) / b**2, 1.0 / ((target - c) * b)])
    spec = (u, _scale(pr.se(grad), 1.0), -np.inf, np.inf)
    [((lo, hi), _)] = pr.intervals(lambda _, V: pr.rss_log_ctt(V, target), [spec])
    # laws that never reach the target (c >= T) are the limit u -> inf, which the u-profile cannot
    # reach (it keeps c < T); the best of them is the c-profile at c = T: inside the set -> no upper end
    if pr._tau(pr.rss_c(np.array([target])))[0] <= pr.tq:
        hi = math.inf
    with np.errstate(over="ignore"):
        return float(np.exp(lo)), float(np.exp(hi))


# ---- the scaling table -----------------------------------------------------------------------

BUDGET_TAG = re.compile(r"^images[0-9.e+]+$")  # the training-budget part of a grid variant name


def model_size(variant: str) -> str:
    """The model-size part of a grid variant (`mlp.hidden64.images128000` -> `mlp.hidden64`): a
    scaling grid names each cell by its values (benchmark.config._expand_grid), and the cells of
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
        if _fittable(pd.to_numeric(g["train_flops"], errors="coerce"), g["value"])
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
                C, q = _usable(C, q)
                if _fittable(C, q):
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
