"""Profile-t intervals of a fitted power law (Bates & Watts 1988, "Nonlinear Regression
Analysis", §6.1): {theta : (RSS_prof(theta) - RSS_min) / s^2 <= t_{n-3, 0.975}^2}, s^2 = RSS_min / (n - 3).

Calibrated with Student's t on the n - 3 residual degrees of freedom, unlike a percentile bootstrap
over 5-9 points, which ignores that the 3 fitted parameters eat those degrees of freedom and that s
is itself estimated (measured coverage: docs/scaling.md, tests/test_scaling_coverage.py). Unlike Wald
intervals they follow the law's curvature, so they are asymmetric where the data are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from benchmark.fit_lm import B_MAX, HI3, LO3, full_res_jac, lm

Interval = tuple[tuple[float, float], tuple[bool, bool]]  # (lo, hi), (lo at its bound, hi at its bound)
_GRID = np.geomspace(0.02, 200.0, 24)  # outward offsets from the estimate, in Wald standard errors


class ProfileT:
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
        J = full_res_jac(self.lx, self.L[None, :])(self.p[None, :])[1][0]
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
        P, cost = lm(lambda P: res_jac(VV[:, None], P), np.concatenate(starts), lo, hi, iters=50,
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
        lo, hi = np.where(pinned, VV[:, None], LO3), np.where(pinned, VV[:, None], HI3)
        Z = np.where((W == 0)[:, None], self.lx[None, :] + self.lC0, self.lx[None, :])
        free = (~pinned).astype(float)[:, None, :]

        def rj(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t = np.exp(P[:, :1] - P[:, 1:2] * Z)
            m = t + P[:, 2:3]
            return self.L[None, :] - np.log(m), np.stack([-t / m, t * Z / m, -1.0 / m], axis=2) * free

        # the profile is compared with t^2 s^2 (4-160 s^2): an RSS within 1e-3 s^2 is exact enough
        _, cost = lm(rj, np.concatenate([s1, s2]), lo, hi, iters=50, atol=1e-3 * self.s2)
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
