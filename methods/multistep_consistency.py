"""Multistep Consistency Models (Heek, Hoogeboom, Salimans 2024, arXiv 2403.06807): MCD and MCT.

The time axis [0, 1] is cut into S segments; a point z_t of segment (t_step, t_step + 1/S] is made
consistent with the probability-flow ODE point at the segment start t_step (not with t = 0). S = 1 is
a consistency model, S -> infinity is a diffusion model. The sampler makes one call per segment.
Spec: methods-edm-cm-mcm.md §4 with the corrections of addendum-mcm-imm.md (MCM part).

Time setting. VP cosine schedule alpha = cos(pi u / 2), sigma = sin(pi u / 2) (spec §4.1; the paper's
exact schedule is UNVERIFIED, the third-party reimplementation uses the offset cosine). We run it on
u = t * u_max, u_max = (2 / pi) atan(sigma_max), so that t = 1 is the EDM teacher's sigma_max = 80 in VE
units (sigma / alpha = tan(pi u / 2)) and no network is ever asked about alpha = 0. The sampler starts
from z_1 = sigma_1 * noise, i.e. EDM's x_T = sigma_max * noise mapped to VP (alpha_1 x ~ 0.0125 x dropped).

Student parameterisation. f_theta(z_t, t) = D_theta(z_t / alpha_t; sigma_t / alpha_t): the EDM
preconditioned x-prediction evaluated in VE coordinates (x_VE = z / alpha, sigma_VE = sigma / alpha).
MCD students therefore start as the EDM teacher (a diffusion model = MCM with infinitely many
segments). No extra boundary parameterisation is needed: at t = t_step > 0 any x satisfies
DDIM_{t -> t_step}(z_t, x) = z_t, and at t -> 0 EDM's c_skip -> 1, c_out -> 0.

Objective (Algorithm 1, spec §4.2; UNVERIFIED vs paper text): i ~ U{1..T_d}, t = i / T_d, s = t - 1/T_d,
t_step = start of t's segment (T_d must be a multiple of S so that s >= t_step),
    z_s    = DDIM_{t->s}(z_t, x_teacher)        x_teacher = EDM teacher (MCD) or the data x (MCT)
    z_ref  = DDIM_{s->t_step}(z_s, sg f(z_s, s))   (= z_s when s == t_step)
    x_diff = invDDIM_{t->t_step}(z_ref, z_t)
    L      = w(t) ||f(z_t, t) - x_diff||^2   (mean over dimensions)
The target uses the online network under stop-grad with the same dropout mask (no EMA target, spec
§4.2 [memory]). T_d is fixed here (the paper anneals it for MCT; schedule UNVERIFIED).
w(t) is UNVERIFIED; choices: 'uniform' (1), 'snrpk' (alpha^2/sigma^2 + 1/sigma_data^2 = EDM's
1/c_out^2 in VE units, as ECT's ImageNet weighting), 'zspace' (w = (alpha_step - alpha_t sigma_step /
sigma_t)^2: the same error measured on z_{t_step}, which tames the 1/(t - t_step) amplification of
inverse DDIM near segment starts).

Sampler (Algorithm 2): z_1 -> for t = 1, 1 - 1/steps, ..., 1/steps: x_hat = f(z_t, t), z_s = DDIM or aDDIM.
A model trained with S segments samples with steps = m * S (m >= 1): each segment is walked in m
DDIM sub-steps, each evaluating f (which targets the segment start; m = 1 is the paper's sampler).
Other budgets raise ConfigError. NFE = steps.
aDDIM (addendum, third-party "Algorithm 3", UNVERIFIED vs paper): z_s = alpha_s x_hat +
sqrt(sigma_s^2 + d / ||eps_hat||^2 (alpha_s - alpha_t sigma_s / sigma_t)^2 x_var) eps_hat with
x_var = eta / (2 + alpha_t^2 / sigma_t^2) (eta = 0.1: LOW-confidence recollection); x_var = 0 is DDIM.
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

WEIGHTINGS = ("uniform", "snrpk", "zspace")
SAMPLERS = ("ddim", "addim")


# --- aDDIM (adjusted DDIM; addendum's ||eps_hat||-normalised form) --------------------------------

def addim_step(z_t: Tensor, x_hat: Tensor, x_var: Tensor | float, alpha_t: Tensor, sigma_t: Tensor,
               alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """DDIM whose noise term is inflated by the x-prediction's variance x_var (per dimension), so a
    blurry posterior-mean x_hat does not shrink ||z_s||. x_var = 0 gives ddim_step exactly."""
    eps_hat = (z_t - alpha_t * x_hat) / sigma_t
    d = eps_hat[0].numel()
    eps_sq = append_dims((eps_hat**2).flatten(1).sum(1), z_t.ndim)  # ||eps_hat||^2 per example
    z_var = (alpha_s - alpha_t * sigma_s / sigma_t) ** 2 * x_var
    return alpha_s * x_hat + torch.sqrt(sigma_s**2 + d / eps_sq * z_var) * eps_hat


class MultistepConsistency(MethodBase):
    """Shared by MCD (teacher = EDM raw net) and MCT (x_teacher = data)."""

    num_cond = 1

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], segments: int = 8,
                 T_d: int = 1024, weighting: str = "snrpk", sigma_data: float = SIGMA_DATA,
                 sigma_max: float = 80.0, sampler: str = "ddim", addim_eta: float = 0.1):
        super().__init__(total_steps=total_steps, data_shape=data_shape)
        if segments < 1 or T_d < 1 or T_d % segments:
            raise ConfigError(f"MCM needs T_d ({T_d}) to be a positive multiple of segments ({segments})",
                              "choose e.g. T_d = 1024 and segments in {1, 2, 4, 8, 16}")
        check_choice("MCM", "weighting", weighting, WEIGHTINGS)
        check_choice("MCM", "sampler", sampler, SAMPLERS)
        if not 0 < sigma_max < math.inf:
            raise ConfigError(f"MCM sigma_max = {sigma_max} must be finite and > 0", "use 80 (EDM)")
        self.segments, self.T_d, self.weighting = int(segments), int(T_d), weighting
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

    def segment_start(self, i: Tensor) -> Tensor:
        """t_step for t = i / T_d, i in 1..T_d: segments are (k/S, (k+1)/S], so t_step <= s = t - 1/T_d."""
        return torch.div((i - 1) * self.segments, self.T_d, rounding_mode="floor") / self.segments

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
        if self.weighting == "snrpk":
            return a_t**2 / s_t**2 + 1 / self.sigma_data**2  # = 1 / c_out^2 at sigma_VE = sigma_t / alpha_t
        a_u, s_u = self.schedule(t_step)
        return (a_u - a_t * s_u / s_t) ** 2  # 'zspace': d z_{t_step} / d x of DDIM_{t -> t_step}

    # --- loss (Algorithm 1) ---------------------------------------------------------------------
    def targets(self, net: nn.Module, x0: Tensor, rng: StepNoise | torch.Generator,
                labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """Draw (z_t, t, t_step) and build x_diff (no grad)."""
        B, nd, rng = len(x0), x0.ndim, StepNoise.of(rng, len(x0))
        i = rng.randint(1, self.T_d + 1, (B,))
        t = i.to(x0.dtype) / self.T_d
        s = (i - 1).to(x0.dtype) / self.T_d
        t_step = self.segment_start(i).to(x0.dtype)
        eps = rng.randn(x0.shape, dtype=x0.dtype)
        (a_t, s_t), (a_s, s_s), (a_u, s_u) = self.vp(t, nd), self.vp(s, nd), self.vp(t_step, nd)
        z_t = a_t * x0 + s_t * eps
        with torch.no_grad():
            z_s = ddim_step(z_t, self.x_teacher(z_t, t, x0, labels), a_t, s_t, a_s, s_s)
            start = ((i - 1) * self.segments) % self.T_d == 0  # s == t_step (integer test)
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
        z_t, t, t_step, x_diff = self.targets(net, x0, rng, labels)
        restore()
        x_hat = self.f(net, z_t, t)
        return self.weight(t, t_step) * ((x_hat - x_diff) ** 2).flatten(1).mean(1)

    # --- sampler (Algorithm 2) ------------------------------------------------------------------
    def check_steps(self, steps: int) -> None:
        super().check_steps(steps)
        if steps % self.segments:
            raise ConfigError(f"an MCM model with {self.segments} segments cannot sample in {steps} steps",
                              f"use a multiple of {self.segments} (train another model for other budgets)")

    def renoise(self, x_hat: Tensor, z_t: Tensor, t: Tensor, s: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
        """z_s from z_t and the x-prediction: DDIM, or aDDIM with its inflated noise term."""
        (a_t, s_t), (a_s, s_s) = self.vp(t, z_t.ndim), self.vp(s, z_t.ndim)
        if self.sampler == "ddim":
            return ddim_step(z_t, x_hat, a_t, s_t, a_s, s_s)
        x_var = self.addim_eta / (2 + a_t**2 / s_t**2)  # UNVERIFIED sampler variance (addendum)
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
    """MCD: the DDIM step t -> s uses the frozen EDM teacher's x-prediction."""

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
    """MCT: the DDIM step t -> s uses the data x itself (z_s = alpha_s x + sigma_s eps)."""

    name = "mcm-ct"
    teacher = None

    def x_teacher(self, z_t: Tensor, t: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        return x0
