"""Improved Consistency Training (iCT; Song & Dhariwal 2024, arXiv 2310.14189).
Spec: ../shared/spec/methods-edm-cm-mcm.md §3.

iCT is CT (methods/consistency.py) without the EMA target network (theta^- = stopgrad theta), with the
pseudo-Huber metric, the weighting lambda(sigma_i) = 1/(sigma_{i+1} - sigma_i), log-normal sampling of
the discretisation level and an exponential N(k) curriculum (iCT §3.2-3.5). The parameterization
(CM Eq. 5) and the multistep sampler (CM Algorithm 1) are the shared `ConsistencyBase`.

Decisions: the pseudo-Huber metric acts on the per-sample L2 norm (iCT §3.3), not element-wise as some
reimplementations do. No official code, and only the paper's abstract was reachable: the section numbers
above and the constants in config/methods/ict.yaml are `unread` there (benchmark/sources.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.diffusion import append_dims, karras_sigmas, with_labels
from benchmark.noise import StepNoise
from methods.base import snapshot_rng
from methods.consistency import ConsistencyBase

# --- Curriculum, level distribution and metric (pure functions of the step k; K = total steps) -----


def ict_num_scales(k: int, K: int, s0: int, s1: int) -> int:
    """iCT Eq. 8: N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0) + 1))."""
    K_prime = max(1, math.floor(K / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (k // K_prime), s1) + 1


def ict_level_probs(sigmas: Tensor, p_mean: float, p_std: float) -> Tensor:
    """iCT Eq. 9: p(sigma_i) ∝ erf((ln sigma_{i+1} - P_mean)/(sqrt2 P_std))
                             - erf((ln sigma_i - P_mean)/(sqrt2 P_std)).

    `sigmas` ascending (sigma_1 = eps < ... < sigma_N = T); returns the N-1 probabilities of the pairs
    (i, i+1)."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """iCT Eq. 10: d(x, y) = sqrt(||x - y||_2^2 + c^2) - c on each example's flattened difference."""
    return (diff.flatten(1).pow(2).sum(1) + c**2).sqrt() - c


# --- iCT loss (Algorithm 1 of iCT, CT with the changes above) ------------------------------------


class ImprovedConsistencyTraining(ConsistencyBase):
    """iCT: CT with theta^- = stopgrad(theta), pseudo-Huber metric, 1/(sigma_{i+1} - sigma_i) weighting,
    log-normal level sampling and an exponential N(k) curriculum (iCT §3.2-3.5)."""

    name = "ict"
    teacher = None  # and no target network: theta^- = stopgrad(theta)

    def __init__(self, *, s0: int = 10, s1: int = 1280, p_mean: float = -1.1, p_std: float = 2.0,
                 huber_c: float | None = None, **kw: Any):
        super().__init__(**kw)
        self.s0, self.s1, self.p_mean, self.p_std = int(s0), int(s1), p_mean, p_std
        self.huber_c = 0.00054 * math.sqrt(self.data_dim) if huber_c is None else float(huber_c)  # iCT §3.3

    def num_scales(self, step: int) -> int:
        return ict_num_scales(step, self.total_steps, self.s0, self.s1)

    def sigmas(self, step: int) -> Tensor:
        """Ascending Karras grid sigma_1 = eps < ... < sigma_N = T (float64)."""
        return karras_sigmas(self.num_scales(step), self.sigma_min, self.sigma_max, self.rho,
                             append_zero=False).flip(0)

    def level_probs(self, step: int) -> Tensor:
        return ict_level_probs(self.sigmas(step), self.p_mean, self.p_std)

    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        net, rng = with_labels(net, labels), StepNoise.of(rng, len(x0))
        sig = self.sigmas(step)
        probs = ict_level_probs(sig, self.p_mean, self.p_std)
        i = rng.multinomial(probs)
        s_lo, s_hi = sig.to(x0.device)[i], sig.to(x0.device)[i + 1]
        z = rng.randn(x0.shape, dtype=x0.dtype)
        weight = (1 / (s_hi - s_lo)).to(x0.dtype)  # lambda(sigma_i) = 1/(sigma_{i+1} - sigma_i)  (iCT §3.4)
        s_lo, s_hi = s_lo.to(x0.dtype), s_hi.to(x0.dtype)
        restore = snapshot_rng()
        online = self.f(net, x0 + append_dims(s_hi, x0.ndim) * z, s_hi)
        with torch.no_grad():
            restore()  # same dropout mask for the stop-grad evaluation
            target = self.f(net, x0 + append_dims(s_lo, x0.ndim) * z, s_lo)
        return weight * pseudo_huber(online - target, self.huber_c)
