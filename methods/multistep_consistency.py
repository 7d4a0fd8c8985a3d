"""Multistep Consistency Models (Heek, Hoogeboom, Salimans 2024, arXiv 2403.06807v3): MCD and MCT.

The time axis [0, 1] is cut into S segments ("student steps"); a point z_t of segment (t_step, t_step +
1/S] is made consistent with the probability-flow ODE point at the segment start t_step, not with t = 0
(Sec. 3.1). S = 1 is a consistency model, S -> infinity a diffusion model. The sampler makes one call per
segment (Algorithm 2).

Time setting. Variance-preserving z_t = alpha_t x + sigma_t eps (Sec. 2) with the cosine schedule alpha =
cos(pi u / 2), sigma = sin(pi u / 2). The paper's ImageNet runs use simple diffusion's "interpolated
cosine" schedule (App. A.1: noise resolution 32 -> 64, "practically identical to a normal cosine
schedule" at 64 px; 32 -> 128 with a multiscale loss at 128 px, which we do not implement). We run it on
u = t * u_max, u_max = (2 / pi) atan(sigma_max), so that t = 1 is the EDM teacher's sigma_max = 80 in VE
units (sigma / alpha = tan(pi u / 2)) and no network is ever asked about alpha = 0. The sampler starts
from z_1 = sigma_1 * noise (EDM's x_T = sigma_max * noise mapped to VP).

Student parameterisation. f_theta(z_t, t) = D_theta(z_t / alpha_t; sigma_t / alpha_t): the EDM
preconditioned x-prediction evaluated in VE coordinates. MCD students therefore start as the EDM teacher,
as the paper's start from their diffusion model (App. A.1: "All runs are initialized using the
parameters of a pretrained diffusion model"; the paper's own networks are v-parameterised UViTs). At
t = t_step > 0 any x satisfies DDIM_{t -> t_step}(z_t, x) = z_t, and at t -> 0 EDM's c_skip -> 1.

Objective (Algorithm 1). T = teacher grid (fixed `T_d`, or annealed: App. A.1 interpolates 64 -> 1280
teacher steps log-linearly over 100,000 iterations, `mcm_schedule.grid_size`), i ~ U{1..T}, t = i / T,
s = t - 1/T, t_step = start of t's segment:
    z_s    = aDDIM_{t->s}(x_teacher, z_t, x_var)   x_teacher = EDM teacher (MCD) or the data x (MCT);
             x_var = eta ||x_teacher - x||^2 / d, eta = `xvar_frac` (0.75, App. A.1); DDIM if x_var = 0
    z_ref  = DDIM_{s->t_step}(z_s, sg f(z_s, s))   (= z_s when s == t_step)
    x_diff = invDDIM_{t->t_step}(z_ref, z_t)        (Eq. 5, 7)
    L      = w(t) d(f(z_t, t), x_diff)
d: 'l2sq' = mean squared error (our default), or 'pseudo-huber' = sqrt(||.||^2 + c^2) - c on the
per-dimension (RMS) norm: the paper uses the l2 norm with a "huber epsilon" of 1e-4 (Sec. 3.1, App. A.1).
w(t): 'snrp1' = SNR(t) + 1 (the paper's v-loss, Sec. 3.1 / Algorithm 1), 'uniform', 'snrpk' =
alpha^2/sigma^2 + 1/sigma_data^2 (EDM's 1/c_out^2 in VE units), 'zspace' = (alpha_step - alpha_t
sigma_step / sigma_t)^2 (the error measured on z_{t_step}). The target uses the online network under
stop-grad with the same dropout mask (no EMA target: Algorithm 1 writes nograd f).

Sampler (Algorithm 2): z_1 -> for t = 1, 1 - 1/steps, ..., 1/steps: x_hat = f(z_t, t), z_s = DDIM. "aDDIM
only replaced the teacher steps. The student model uses a vanilla DDIM step" (Sec. 3.2); `sampler:
addim` (Eq. 14 with the analytic x_var = 0.1 / (2 + SNR) times `addim_eta` / 0.1) is kept for
experiments. A model trained with S segments samples with steps = m * S (m >= 1): each segment is walked
in m DDIM sub-steps (m = 1 is the paper's sampler). Other budgets raise ConfigError. NFE = steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmark.diffusion import (
    SIGMA_DATA,
    append_dims,
    ddim_step,
    edm_denoise,
    inverse_ddim,
    sample_multistep,
    vp_cosine_alpha_sigma,
    with_labels,
)
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise
from methods.base import MethodBase, check_choice, snapshot_rng
from methods.mcm_schedule import addim_step, analytic_x_var, grid_size

__all__ = ["MultistepConsistency", "MultistepConsistencyDistillation", "MultistepConsistencyTraining",
           "addim_step"]

WEIGHTINGS = ("uniform", "snrpk", "zspace", "snrp1")
SAMPLERS = ("ddim", "addim")
LOSS_NORMS = ("l2sq", "pseudo-huber")


class MultistepConsistency(MethodBase):
    """Shared by MCD (teacher = EDM raw net) and MCT (x_teacher = data)."""

    num_cond = 1

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], segments: int = 8,
                 T_d: int = 1024, T_d_start: int | None = None, anneal_steps: int = 100_000,
                 weighting: str = "snrpk", loss_norm: str = "l2sq", huber_c: float = 1e-4,
                 teacher_sampler: str = "ddim", xvar_frac: float = 0.75, sigma_data: float = SIGMA_DATA,
                 sigma_max: float = 80.0, sampler: str = "ddim", addim_eta: float = 0.1):
        super().__init__(total_steps=total_steps, data_shape=data_shape)
        if segments < 1 or T_d < 1 or T_d % segments:
            raise ConfigError(f"MCM needs T_d ({T_d}) to be a positive multiple of segments ({segments})",
                              "choose e.g. T_d = 1024 and segments in {1, 2, 4, 8, 16}")
        if T_d_start is not None and not (0 < T_d_start <= T_d and anneal_steps > 0):
            raise ConfigError(f"MCM T_d_start ({T_d_start}) must be in (0, T_d = {T_d}] with anneal_steps > 0",
                              "use e.g. T_d_start: 64, T_d: 1280, anneal_steps: 100000 (MCM App. A.1)")
        for what, value, allowed in (("weighting", weighting, WEIGHTINGS), ("sampler", sampler, SAMPLERS),
                                     ("teacher_sampler", teacher_sampler, SAMPLERS),
                                     ("loss_norm", loss_norm, LOSS_NORMS)):
            check_choice("MCM", what, value, allowed)
        if not 0 < sigma_max < math.inf:
            raise ConfigError(f"MCM sigma_max = {sigma_max} must be finite and > 0", "use 80 (EDM)")
        self.segments, self.T_d, self.T_d_start, self.anneal_steps = int(segments), int(T_d), T_d_start, anneal_steps
        self.weighting, self.loss_norm, self.huber_c = weighting, loss_norm, huber_c
        self.teacher_sampler, self.xvar_frac = teacher_sampler, xvar_frac
        self.sigma_data, self.sampler, self.addim_eta = sigma_data, sampler, addim_eta
        self.u_max = 2 / math.pi * math.atan(sigma_max)  # t = 1 <-> sigma_VE = sigma_max

    # --- schedule -----------------------------------------------------------------------------
    def schedule(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t, sigma_t of the VP cosine schedule on u = t * u_max."""
        return vp_cosine_alpha_sigma(t * self.u_max)

    def vp(self, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        """alpha_t, sigma_t broadcast against a batch of rank `ndim`."""
        alpha, sigma = self.schedule(t)
        return append_dims(alpha, ndim), append_dims(sigma, ndim)

    def t_from_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """Inverse of sigma_VE(t) = tan(pi u_max t / 2)."""
        return 2 / math.pi * torch.atan(sigma_ve) / self.u_max

    def grid(self, step: int) -> int:
        """T at training step `step` (fixed T_d, or App. A.1's annealing: mcm_schedule.grid_size)."""
        return grid_size(step, self.segments, self.T_d, self.T_d_start, self.anneal_steps)

    def segment_start(self, i: Tensor, T: int | None = None) -> Tensor:
        """t_step for t = i / T, i in 1..T: segments are (k/S, (k+1)/S], so t_step <= s = t - 1/T."""
        T = self.T_d if T is None else T
        return torch.div((i - 1) * self.segments, T, rounding_mode="floor") / self.segments

    # --- parameterisation -----------------------------------------------------------------------
    def f(self, net: nn.Module, z: Tensor, t: Tensor) -> Tensor:
        """x-prediction f(z_t, t) = D(z_t / alpha_t; sigma_t / alpha_t) with EDM preconditioning (t > 0)."""
        alpha, sigma = self.schedule(t)
        return edm_denoise(net, z / append_dims(alpha, z.ndim), sigma / alpha, self.sigma_data)

    def x_teacher(self, z_t: Tensor, t: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def weight(self, t: Tensor, t_step: Tensor) -> Tensor:
        a_t, s_t = self.schedule(t)
        if self.weighting == "uniform":
            return torch.ones_like(t)
        if self.weighting == "snrp1":
            return a_t**2 / s_t**2 + 1  # SNR(t) + 1: the v-loss (Sec. 3.1, Algorithm 1)
        if self.weighting == "snrpk":
            return a_t**2 / s_t**2 + 1 / self.sigma_data**2  # = 1 / c_out^2 at sigma_VE = sigma_t / alpha_t
        a_u, s_u = self.schedule(t_step)
        return (a_u - a_t * s_u / s_t) ** 2  # 'zspace': d z_{t_step} / d x of DDIM_{t -> t_step}

    def distance(self, x_hat: Tensor, x_diff: Tensor) -> Tensor:
        """Per-example d(x_hat, x_diff): mean squared error, or pseudo-Huber on the RMS norm."""
        mse = ((x_hat - x_diff) ** 2).flatten(1).mean(1)
        if self.loss_norm == "l2sq":
            return mse
        return torch.sqrt(mse + self.huber_c**2) - self.huber_c  # sqrt(||.||^2 + c^2) - c (App. A.1)

    # --- loss (Algorithm 1) ---------------------------------------------------------------------
    def teacher_step(self, z_t: Tensor, x_teach: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """z_s from z_t: DDIM, or aDDIM with x_var = xvar_frac ||x_teacher - x||^2 / d (Algorithm 1)."""
        (a_t, s_t), (a_s, s_s) = self.vp(t, z_t.ndim), self.vp(s, z_t.ndim)
        if self.teacher_sampler == "ddim":
            return ddim_step(z_t, x_teach, a_t, s_t, a_s, s_s)
        x_var = self.xvar_frac * append_dims(((x_teach - x0) ** 2).flatten(1).mean(1), z_t.ndim)
        return addim_step(z_t, x_teach, x_var, a_t, s_t, a_s, s_s)

    def targets(self, net: nn.Module, x0: Tensor, rng: StepNoise | torch.Generator,
                labels: Tensor | None = None, step: int = 0) -> tuple[Tensor, ...]:
        """Draw (z_t, t, t_step) on the grid of training step `step` and build x_diff (no grad)."""
        B, nd, T, rng = len(x0), x0.ndim, self.grid(step), StepNoise.of(rng, len(x0))
        i = rng.randint(1, T + 1, (B,))
        t = i.to(x0.dtype) / T
        s = (i - 1).to(x0.dtype) / T
        t_step = self.segment_start(i, T).to(x0.dtype)
        eps = rng.randn(x0.shape, dtype=x0.dtype)
        (a_t, s_t), (a_s, s_s), (a_u, s_u) = self.vp(t, nd), self.vp(s, nd), self.vp(t_step, nd)
        z_t = a_t * x0 + s_t * eps
        with torch.no_grad():
            z_s = self.teacher_step(z_t, self.x_teacher(z_t, t, x0, labels), x0, t, s)
            start = ((i - 1) * self.segments) % T == 0  # s == t_step (integer test)
            at_start = append_dims(start, nd)
            s_eval = torch.where(start, t, s)  # f(z_s, s) is unused there (and s may be 0)
            x_ref = self.f(net, z_s, s_eval)
            z_ref = torch.where(at_start, z_s, ddim_step(z_s, x_ref, a_s, s_s.clamp(min=1e-12), a_u, s_u))
            x_diff = inverse_ddim(z_ref, z_t, a_t, s_t, a_u, s_u)
        return z_t, t, t_step, x_diff

    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        net = with_labels(net, labels)
        restore = snapshot_rng()  # the target pass sees the same dropout mask as the online pass
        z_t, t, t_step, x_diff = self.targets(net, x0, rng, labels, step)
        restore()
        return self.weight(t, t_step) * self.distance(self.f(net, z_t, t), x_diff)

    # --- sampler (Algorithm 2) ------------------------------------------------------------------
    def check_steps(self, steps: int) -> None:
        super().check_steps(steps)
        if steps % self.segments:
            raise ConfigError(f"an MCM model with {self.segments} segments cannot sample in {steps} steps",
                              f"use a multiple of {self.segments} (train another model for other budgets)")

    def renoise(self, x_hat: Tensor, z_t: Tensor, t: Tensor, s: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
        """z_s from z_t and the x-prediction: DDIM (Algorithm 2), or aDDIM with the analytic x_var."""
        (a_t, s_t), (a_s, s_s) = self.vp(t, z_t.ndim), self.vp(s, z_t.ndim)
        if self.sampler == "ddim":
            return ddim_step(z_t, x_hat, a_t, s_t, a_s, s_s)
        x_var = self.addim_eta / 0.1 * analytic_x_var(a_t, s_t)  # addim_eta = 0.1: Sec. 3.2's value
        return addim_step(z_t, x_hat, x_var, a_t, s_t, a_s, s_s)

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        one = torch.ones(len(noise), dtype=noise.dtype, device=noise.device)
        z = append_dims(self.schedule(one)[1], noise.ndim) * noise  # z_1 ~ sigma_1 N(0, I)
        times = [one * (j / steps) for j in range(steps, -1, -1)]  # 1, ..., 1/steps, 0
        return sample_multistep(lambda z_t, t, s: self.f(net, z_t, t), z, times, self.renoise, generator)

    def nfe(self, steps: int) -> int:
        return steps


class MultistepConsistencyDistillation(MultistepConsistency):
    """MCD: the teacher step t -> s uses the frozen EDM teacher's x-prediction."""

    name = "mcm-cd"
    teacher = "edm"
    init_from_teacher = True

    def x_teacher(self, z_t: Tensor, t: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        if getattr(self, "teacher_net", None) is None:
            raise ConfigError("mcm-cd needs an EDM teacher", "train 'edm' first and pass it as the teacher")
        alpha, sigma = self.schedule(t)
        x_ve = z_t / append_dims(alpha, z_t.ndim)
        return edm_denoise(self.teacher_for(labels), x_ve, sigma / alpha, self.sigma_data)


class MultistepConsistencyTraining(MultistepConsistency):
    """MCT: the teacher step t -> s uses the data x itself (z_s = alpha_s x + sigma_s eps; x_var = 0)."""

    name = "mcm-ct"
    teacher = None

    def x_teacher(self, z_t: Tensor, t: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        return x0
