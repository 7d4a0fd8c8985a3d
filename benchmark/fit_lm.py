"""Batched Levenberg-Marquardt for the power law fitted in log space: the solver, the law's
residuals and Jacobian, and the bounds of its parameters (la, b, c).

One vectorised solve serves many problems at once (the multi-start fit, every point of every
profile), which is what makes profile-t intervals cost milliseconds (benchmark.profile_t).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

B_MAX = 20.0  # search bound of the exponent: reaching it means "steeper than the data can tell"

ResJac = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def lm(res_jac: ResJac, P0: np.ndarray, lo: np.ndarray, hi: np.ndarray, iters: int = 100,
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


def full_res_jac(lx: np.ndarray, L: np.ndarray) -> ResJac:
    """Residuals of log q = log(e^la x^-b + c) in (la, b, c), x = C/C0, and their Jacobian."""

    def f(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.exp(P[:, :1] - P[:, 1:2] * lx[None, :])  # e^la x^-b
        m = t + P[:, 2:3]
        return L - np.log(m), np.stack([-t / m, t * lx / m, -1.0 / m], axis=2)

    return f


LO3, HI3 = np.array([-np.inf, 0.0, 0.0]), np.array([np.inf, B_MAX, np.inf])
