"""Pure formulas of Multistep Consistency Models (Heek, Hoogeboom & Salimans 2024, arXiv 2403.06807v3)
that the method and its tests share: the annealed teacher-step count (App. A.1) and the adjusted DDIM
step (Sec. 3.2, Eq. 14 / Algorithm 3).

Each is a pure function of its arguments (the annealing of the training step only), so a resumed
run draws exactly the grid it would have drawn without the interruption (DESIGN §2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.diffusion import append_dims


def teacher_steps(step: int, start: int, end: int, anneal_steps: int) -> float:
    """N_teacher(i) = exp(log start + clip(i / anneal_steps, 0, 1) (log end - log start))  (App. A.1:
    64 -> 1280 teacher steps over 100,000 iterations, "log-linear interpolated")."""
    frac = min(max(step / anneal_steps, 0.0), 1.0)
    return math.exp(math.log(start) + frac * (math.log(end) - math.log(start)))


def grid_size(step: int, segments: int, T_d: int, T_d_start: int | None, anneal_steps: int) -> int:
    """T, the teacher grid at training step `step`: T_d when not annealed, else
    segments * N_per_segment with N_per_segment = round(N_teacher(i) / student_steps) (Algorithm 1),
    so every segment holds a whole number of teacher steps. Python's round (half to even) stands for
    the paper's unspecified `round`; an exact tie needs N_teacher(i) / S = k + 1/2 exactly."""
    if T_d_start is None:
        return int(T_d)
    per_segment = max(1, round(teacher_steps(step, T_d_start, T_d, anneal_steps) / segments))
    return per_segment * segments


def analytic_x_var(alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """tr(Var[x | z_t]) / d = 0.1 / (2 + alpha_t^2 / sigma_t^2)  (Sec. 3.2 / Algorithm 3: 10 % of the
    posterior variance of x under a factorised Gaussian prior of variance 0.5)."""
    return 0.1 / (2 + alpha_t**2 / sigma_t**2)


def addim_step(z_t: Tensor, x_hat: Tensor, x_var: Tensor | float, alpha_t: Tensor, sigma_t: Tensor,
               alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """Adjusted DDIM (Eq. 14, Algorithm 3): z_s = alpha_s x_hat + sqrt(sigma_s^2 + (d / ||eps_hat||^2)
    z_s,var) eps_hat with eps_hat = (z_t - alpha_t x_hat) / sigma_t and z_s,var = (alpha_s - alpha_t
    sigma_s / sigma_t)^2 x_var, x_var = tr(Var[x | z_t]) / d per example. It restores the norm that DDIM
    with a posterior-mean x_hat loses (Eq. 12-13); x_var = 0 is DDIM (Eq. 4) exactly."""
    eps_hat = (z_t - alpha_t * x_hat) / sigma_t
    d = eps_hat[0].numel()
    eps_sq = append_dims((eps_hat**2).flatten(1).sum(1), z_t.ndim)  # ||eps_hat||^2 per example
    z_var = (alpha_s - alpha_t * sigma_s / sigma_t) ** 2 * x_var
    return alpha_s * x_hat + torch.sqrt(sigma_s**2 + d / eps_sq * z_var) * eps_hat
