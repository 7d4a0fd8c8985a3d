"""Progressive Distillation (Salimans & Ho 2022, arXiv:2202.00512): one halving round.

A student with N DDIM steps learns to reproduce, in one step, two DDIM steps of a frozen teacher
that samples with 2N steps (Alg. 2). One training run is ONE round (`student_steps` = N); the DAG
chains rounds, each round's teacher being the previous round's checkpoint.

Process: variance preserving, z_t = alpha_t x + sigma_t eps with alpha_t^2 = sigmoid(lambda_t),
sigma_t^2 = sigmoid(-lambda_t) and the clipped cosine log-SNR schedule lambda(t) in [-20, 20]
(google-research diffusion_distillation `schedules.py`, spec §1.1). Sampler: deterministic DDIM on
the grid t_i = i/N, the last step returning x_hat (dpm.py `ddim_step`), so NFE = N.

Round 1's teacher is the benchmark's EDM checkpoint, wrapped as a DDIM teacher (`teacher_kind='edm'`).
Why not a PD-native (VP, v-parameterised) base model, as in the paper? z_t / alpha_t = x + (sigma_t /
alpha_t) eps is exactly EDM's x_sigma at sigma = sigma_t / alpha_t = exp(-lambda/2), so an EDM
denoiser *is* an x-prediction in VP coordinates, and DDIM on the cosine grid is the first-order
(Euler) solver of the same probability-flow ODE (Song et al. 2021, DDIM Eq. 14 / EDM §3).
A PD-native teacher would mean training a second diffusion model whose cost the compute
accounting would have to add, while every other distillation method here (CD, MCM-CD, ECT) starts
from the EDM checkpoint; sharing it keeps the comparison fair. logsnr_min = -20 keeps alpha_1 =
4.5e-5 > 0, so z/alpha is finite (and computed in the caller's dtype; the EDM preconditioning then
rescales it to O(1)).

Student parameterisation (`mean_type`). Every type feeds the raw net F the same input,
F(c_in z_t, c_noise) with c_in = 1/sqrt(alpha^2 sigma_data^2 + sigma^2) (unit-variance input) and
c_noise = -lambda/8 (= ln(sigma/alpha)/4, EDM's c_noise of the equivalent sigma):
  'edm' (default): x_hat = EDM D(z/alpha; sigma/alpha) (EDM Eq. 7). With sigma_data = 1 this is
        literally the v-parameterisation (c_skip = alpha^2, c_out = sigma, F = -v), so it keeps v's
        stability at lambda -> -inf; and the student equals the EDM teacher at initialisation, so
        `init_from_teacher` is exact in round 1 and in every later round.
  'v':  x_hat = alpha z - sigma F (PD §4, dpm.py `predict_x_from_v`).
  'x':  x_hat = F (the CIFAR distillation config's `mean_type='x'`).
With 'v'/'x' and an EDM teacher the outputs differ in meaning, so the student is NOT initialised
from the teacher in round 1 (unless `init_from_teacher=True` is forced); with a 'pd' teacher of the
same mean_type it is.

Step budgets: a PD checkpoint is distilled for exactly one step count, so `check_steps` accepts only
`student_steps` (spec §4: "each k needs its own distilled student"); the DAG samples budget k from
the round whose student_steps = k.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmark.diffusion import (
    SIGMA_DATA,
    append_dims,
    ddim_sample_logsnr,
    ddim_step,
    edm_denoise,
    inverse_ddim,
    vp_logsnr_alpha_sigma,
    with_labels,
)
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise
from methods.base import MethodBase, check_choice

MEAN_TYPES = ("edm", "v", "x")
LOSS_WEIGHTS = ("snr_trunc", "snr", "constant", "v_mse")


# --- Schedule (spec §1.1; schedules.py `_logsnr_schedule_cosine`) ------------------------------

def logsnr_cosine(t: Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> Tensor:
    """lambda(t) = -2 log tan(a t + b): lambda(0) = logsnr_max, lambda(1) = logsnr_min."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return -2 * torch.log(torch.tan(a * t + b))


def t_from_logsnr(logsnr: Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> Tensor:
    """Inverse of `logsnr_cosine` (for nets that only see lambda)."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return (torch.atan(torch.exp(-0.5 * logsnr)) - b) / a


# --- Parameterisation conversions (dpm.py `predict_*`, PD §4) -----------------------------------

def x_from_eps(z: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (z - sigma * eps) / alpha  # z = alpha x + sigma eps


def eps_from_x(z: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (z - alpha * x) / sigma  # z = alpha x + sigma eps


def v_from_x_eps(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * eps - sigma * x  # PD Eq. (after 4): v = alpha eps - sigma x


def x_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * z - sigma * v  # PD §4, using alpha^2 + sigma^2 = 1


# --- Loss weighting (spec §1.5; dpm.py `mean_loss_weight_type`) ---------------------------------

def loss_weight(logsnr: Tensor, kind: str = "snr_trunc") -> Tensor:
    """Weight on x_mse that gives each PD loss: eps_mse = SNR x_mse, v_mse = (1 + SNR) x_mse."""
    snr = logsnr.exp()
    if kind == "snr_trunc":
        return snr.clamp(min=1.0)  # max(x_mse, eps_mse), PD Eq. 9 "truncated SNR"
    if kind == "snr":
        return snr
    if kind == "v_mse":
        return 1 + snr  # "SNR+1" weighting
    if kind == "constant":
        return torch.ones_like(snr)
    raise ConfigError(f"unknown PD loss weight '{kind}'", f"use one of {LOSS_WEIGHTS}")


class ProgressiveDistillation(MethodBase):
    name = "pd"
    teacher = "edm"  # the DAG resolves the chain: round 1 from EDM, round k from round k-1
    num_cond = 1
    init_from_teacher = True

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], student_steps: int = 1,
                 teacher_kind: str = "pd", mean_type: str = "edm", loss_weight: str = "snr_trunc",
                 logsnr_min: float = -20.0, logsnr_max: float = 20.0, sigma_data: float = SIGMA_DATA,
                 init_from_teacher: bool | None = None):
        super().__init__(total_steps=total_steps, data_shape=data_shape)
        if not isinstance(student_steps, int) or student_steps < 1:
            raise ConfigError(f"PD student_steps={student_steps!r} is invalid",
                              "use an integer >= 1 (the teacher uses 2x)")
        check_choice("PD", "teacher_kind", teacher_kind, ("edm", "pd"),
                     "use 'edm' (round 1) or 'pd' (later rounds)")
        check_choice("PD", "mean_type", mean_type, MEAN_TYPES)
        check_choice("PD", "loss_weight", loss_weight, LOSS_WEIGHTS)
        self.student_steps, self.teacher_kind, self.mean_type = student_steps, teacher_kind, mean_type
        self.loss_weight_type = loss_weight
        self.logsnr_min, self.logsnr_max, self.sigma_data = logsnr_min, logsnr_max, sigma_data
        if init_from_teacher is None:  # exact only when student and teacher outputs mean the same thing
            init_from_teacher = teacher_kind == "pd" or mean_type == "edm"
        self.init_from_teacher = bool(init_from_teacher)

    # schedule ---------------------------------------------------------------------------------
    def logsnr(self, t: Tensor) -> Tensor:
        return logsnr_cosine(t, self.logsnr_min, self.logsnr_max)

    def grid(self, steps: int, x: Tensor) -> Tensor:
        """DDIM times t_i = i / steps, i = 0..steps (spec §1.3)."""
        return torch.arange(steps + 1, dtype=x.dtype, device=x.device) / steps

    # x-predictions ----------------------------------------------------------------------------
    def predict_x(self, net: nn.Module, z: Tensor, logsnr: Tensor, mean_type: str | None = None) -> Tensor:
        """x_hat of a PD raw net F(c_in z, -lambda/8) for the given mean_type (module docstring)."""
        mean_type = mean_type or self.mean_type
        alpha, sigma = (append_dims(a, z.ndim) for a in vp_logsnr_alpha_sigma(logsnr))
        if mean_type == "edm":  # EDM D(z/alpha; sigma/alpha), EDM Eq. 7
            return edm_denoise(net, z / alpha, (-0.5 * logsnr).exp(), self.sigma_data)
        c_in = ((alpha * self.sigma_data) ** 2 + sigma**2).rsqrt()
        out = net(c_in * z, -logsnr / 8)
        return x_from_v(z, out, alpha, sigma) if mean_type == "v" else out

    def teacher_x(self, teacher: nn.Module, z: Tensor, logsnr: Tensor) -> Tensor:
        """The teacher raw net as an x-prediction in VP coordinates.

        'edm': x_hat = D(z_t/alpha_t; sigma_t/alpha_t) through the shared `edm_denoise`;
        'pd' : the previous round's student, which shares this round's mean_type."""
        if self.teacher_kind == "edm":
            alpha, sigma = vp_logsnr_alpha_sigma(logsnr)
            return edm_denoise(teacher, z / append_dims(alpha, z.ndim), sigma / alpha, self.sigma_data)
        return self.predict_x(teacher, z, logsnr)

    # target (spec §1.4; PD Alg. 2; dpm.py `training_losses`, distillation branch) ---------------
    @torch.no_grad()
    def target(self, teacher: nn.Module, z_t: Tensor, i: Tensor) -> Tensor:
        """x_tilde: the x for which one student DDIM step t -> t'' lands on the teacher's two steps.

        t = (i+1)/N, t' = t - 1/(2N), t'' = t - 1/N. At i == 0 the target is the teacher's second
        x prediction (its DDIM returns x_hat at the last step)."""
        n = self.student_steps
        t = (i + 1).to(z_t.dtype) / n
        lam_t, lam_mid, lam_s = self.logsnr(t), self.logsnr(t - 0.5 / n), self.logsnr(t - 1.0 / n)
        (a_t, s_t), (a_mid, s_mid), (a_s, s_s) = (
            tuple(append_dims(v, z_t.ndim) for v in vp_logsnr_alpha_sigma(lam)) for lam in (lam_t, lam_mid, lam_s))
        x1 = self.teacher_x(teacher, z_t, lam_t)
        z_mid = ddim_step(z_t, x1, a_t, s_t, a_mid, s_mid)  # teacher step t -> t'
        x2 = self.teacher_x(teacher, z_mid, lam_mid)
        z_teacher = ddim_step(z_mid, x2, a_mid, s_mid, a_s, s_s)  # teacher step t' -> t''
        x_tilde = inverse_ddim(z_teacher, z_t, a_t, s_t, a_s, s_s)  # PD Alg. 2, line 9
        return torch.where(append_dims(i == 0, z_t.ndim), x2, x_tilde)

    # loss -------------------------------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        """Weighted x-MSE to x_tilde; with 'snr_trunc' this is max(x_mse, eps_mse) (spec §1.5)."""
        if getattr(self, "teacher_net", None) is None:
            raise ConfigError("PD needs a teacher network", "train the previous round (or EDM) first")
        net, rng = with_labels(net, labels), StepNoise.of(rng, len(x0))
        i = rng.randint(0, self.student_steps, (len(x0),))
        eps = rng.randn(x0.shape, dtype=x0.dtype)
        lam = self.logsnr((i + 1).to(x0.dtype) / self.student_steps)
        alpha, sigma = (append_dims(v, x0.ndim) for v in vp_logsnr_alpha_sigma(lam))
        z_t = alpha * x0 + sigma * eps  # PD Eq. 1
        x_tilde = self.target(self.teacher_for(labels), z_t, i)
        x_mse = (self.predict_x(net, z_t, lam) - x_tilde).pow(2).flatten(1).mean(1)
        return loss_weight(lam, self.loss_weight_type) * x_mse

    # sampler ----------------------------------------------------------------------------------
    def check_steps(self, steps: int) -> None:
        super().check_steps(steps)
        if steps != self.student_steps:
            raise ConfigError(f"this PD checkpoint was distilled for {self.student_steps} step(s), "
                              f"not {steps}", f"use the round with student_steps={steps}")

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        """Deterministic DDIM from z_1 = noise (dpm.py `sample_loop`, sampler='ddim')."""
        logsnrs = self.logsnr(self.grid(steps, noise))
        return ddim_sample_logsnr(lambda z, lam: self.predict_x(net, z, lam), noise, logsnrs)

    def nfe(self, steps: int) -> int:
        return steps  # one network call per DDIM step
