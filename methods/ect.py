"""ECT: Easy Consistency Tuning (Geng, Pokle, Luo, Lin, Kolter 2024, arXiv 2406.14548).

A diffusion model is a consistency model with an infinitesimal gap t - r ("r = t - dt"). ECT starts
from the EDM checkpoint (`init_from_teacher`; no frozen teacher enters the loss) and tunes it with
the self-consistency loss between x_t = x + t eps and x_r = x + r eps (shared eps, shared dropout
mask), enlarging the gap t - r stage by stage through r(t) (spec methods-pd-ect-imm.md §2).

Hyperparameters (CIFAR-10 defaults, locuslab/ect:training/loss.py, ct_train.py, run_ecm.sh):
P_mean = -1.1, P_std = 2.0, k = 8, b = 1, q = 2, c = 0 (pseudo-Huber off: L = ||f_t - f_r||_2),
weighting 1/(t - r); ImageNet-64 (imgnet branch): P_mean = -0.8, P_std = 1.6, q = 4, c = 0.06,
weighting 'snrpk'. The stage advances every `stage_steps` optimiser steps (CIFAR: 25k of 200k, i.e.
8 stages); if unset it is ceil(total_steps / num_stages). Upstream advances at tick boundaries, which
shifts each stage by < 1 tick (100 steps): ignored.

Preconditioning: training mode is the EDM denoiser (so step 0 reproduces the EDM teacher exactly);
eval mode moves the boundary to sigma_min = 0.003 so that f(x, sigma_min) = x for any network
(ECMPrecond in locuslab/ect:training/networks.py switches on `self.training`; here it is an explicit
flag: the loss uses training mode, the sampler eval mode).

Sampling: t = [t_max = 80] + mid_t + [0]; x = f(x, t_i), then re-noised to t_{i+1} with fresh noise
(generator_fn in ct_training_loop.py). NFE = steps. Fresh noise comes from the global torch RNG, which
the caller seeds. `mid_t` is used when steps == len(mid_t) + 1 (CIFAR 2-step: [0.821]; ImageNet-64:
[1.526]); other budgets use the interior levels of a (steps + 1)-level Karras grid (rho = 7) — our rule,
not the paper's (the paper reports only 1- and 2-step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from benchmark.diffusion import (
    SIGMA_DATA,
    append_dims,
    as_batch,
    consistency_eval,
    edm_denoise,
    multistep_sigmas,
    sample_multistep,
    ve_renoise_to_next,
    with_labels,
)
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise
from methods.base import MethodBase, check_choice, snapshot_rng

WEIGHTINGS = ("inv_dt", "snrpk")


# --- schedule: the mapping t -> r(t) and its stages (spec §2.3) ---------------------------------

def stage_at(step: int, stage_steps: int) -> int:
    """stage = floor(step / stage_steps) (ct_training_loop.py: stage = cur_tick // double_ticks)."""
    return step // stage_steps


def t_to_r(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0,
           mapping: str = "sigmoid") -> Tensor:
    """r(t) = max(0, t (1 - n(t) / q^(stage+1))), n(t) = 1 + k sigmoid(-b t)  (ECT Eq. 13, loss.py).

    mapping='const' uses n(t) = 1: r = t (1 - q^-(stage+1))."""
    n = 1 + k * torch.sigmoid(-b * t) if mapping == "sigmoid" else torch.ones_like(t)
    return (t * (1 - n / q ** (stage + 1))).clamp(min=0)


# --- parameterisation (ECMPrecond) -------------------------------------------------------------

def ect_precond(net: nn.Module, x: Tensor, t: Tensor, *, boundary: bool, sigma_min: float = 0.003,
                sigma_data: float = SIGMA_DATA) -> Tensor:
    """f(x, t) = c_skip x + c_out F(c_in x, c_noise).

    boundary=False: EDM's c_skip, c_out (training mode; equals the EDM teacher at init).
    boundary=True:  c_skip = sd^2 / ((t - sigma_min)^2 + sd^2), c_out = (t - sigma_min) sd / sqrt(t^2 + sd^2),
                    hence f(x, sigma_min) = x exactly (eval mode; CM Eq. 8 with eps = sigma_min)."""
    if not boundary:
        return edm_denoise(net, x, t, sigma_data)
    return consistency_eval(net, x, t, sigma_min, sigma_data)


class ECT(MethodBase):
    name = "ect"
    teacher = "edm"  # initialisation only; no frozen teacher in the loss
    init_from_teacher = True
    supports_editing = True

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], p_mean: float = -1.1,
                 p_std: float = 2.0, sigma_data: float = SIGMA_DATA, q: float = 2.0, k: float = 8.0,
                 b: float = 1.0, mapping: str = "sigmoid", c: float = 0.0, weighting: str = "inv_dt",
                 stage_steps: int | None = None, num_stages: int = 8, sigma_min: float = 0.003,
                 sigma_max: float = 80.0, mid_t: Sequence[float] = (0.821,), rho: float = 7.0):
        super().__init__(total_steps=total_steps, data_shape=data_shape)
        check_choice("ECT", "weighting", weighting, WEIGHTINGS)
        check_choice("ECT", "mapping", mapping, ("sigmoid", "const"))
        if q <= 1:
            raise ConfigError(f"ECT q = {q} must be > 1", "use q = 2 (CIFAR-10) or q = 4 (ImageNet-64)")
        if stage_steps is None:
            stage_steps = math.ceil(self.total_steps / max(1, num_stages))
        if stage_steps < 1:
            raise ConfigError(f"ECT stage_steps = {stage_steps} must be >= 1",
                              "set stage_steps or num_stages")
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data
        self.q, self.k, self.b, self.mapping, self.c, self.weighting = q, k, b, mapping, c, weighting
        self.stage_steps = int(stage_steps)
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.mid_t = [float(m) for m in mid_t]

    # --- schedule ----------------------------------------------------------------------------
    def stage(self, step: int) -> int:
        return stage_at(step, self.stage_steps)

    def pass_phases(self) -> list[int]:
        """The stage starts (r(t) changes there; the passes per step do not)."""
        return list(range(0, max(1, self.total_steps), self.stage_steps))

    def r_of(self, t: Tensor, step: int) -> Tensor:
        return t_to_r(t, self.stage(step), self.q, self.k, self.b, self.mapping)

    def f(self, net: nn.Module, x: Tensor, t: Tensor, *, boundary: bool) -> Tensor:
        return ect_precond(net, x, t, boundary=boundary, sigma_min=self.sigma_min, sigma_data=self.sigma_data)

    def consistency_fn(self, net: nn.Module):
        """f(x, sigma) with the sampling-time boundary condition, for zero-shot editing."""
        return lambda x, sigma: self.f(net, x, as_batch(sigma, x), boundary=True)

    def weight(self, t: Tensor, r: Tensor) -> Tensor:
        if self.weighting == "inv_dt":
            return 1 / (t - r)  # CIFAR-10 (main branch)
        return (t**2 + self.sigma_data**2) / (t * self.sigma_data) ** 2  # 'snrpk': 1/t^2 + 1/sd^2 (imgnet)

    # --- loss (ECMLoss.__call__) ----------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        """w(t, r) (sqrt(||f(x_t, t) - sg f(x_r, r)||^2 + c^2) - c), shared eps and dropout mask (ECT §3)."""
        net, rng = with_labels(net, labels), StepNoise.of(rng, len(x0))
        t = (rng.randn((len(x0),), dtype=x0.dtype) * self.p_std
             + self.p_mean).exp()  # log t ~ N(P_mean, P_std^2)
        r = self.r_of(t, step)
        eps = rng.randn(x0.shape, dtype=x0.dtype)
        x_t = x0 + append_dims(t, x0.ndim) * eps
        x_r = x0 + append_dims(r, x0.ndim) * eps  # same noise direction
        restore = snapshot_rng()
        f_t = self.f(net, x_t, t, boundary=False)
        # One target pass for every batch, also one whose every r is 0 (its rows are then replaced by
        # x0): the passes of a step depend on the batch size only, never on the draws, so `benchmark
        # plan` counts them exactly on meta tensors, every rank makes the same net calls (FSDP gathers
        # in each), and there is no host sync.
        with torch.no_grad():
            restore()  # same dropout mask for the target pass
            r_safe = torch.where(r > 0, r, t)  # avoids ln(0) in c_noise; those rows are replaced below
            f_r = self.f(net, x_r, r_safe, boundary=False).nan_to_num()
            f_r = torch.where(append_dims(r > 0, x0.ndim), f_r, x0)  # r = 0: the target is the data
        d = ((f_t - f_r) ** 2).flatten(1).sum(1)
        return (torch.sqrt(d + self.c**2) - self.c) * self.weight(t, r)  # pseudo-Huber; c = 0: ||.||_2

    # --- sampler (generator_fn) -----------------------------------------------------------------
    def times(self, steps: int) -> list[float]:
        """[t_max] + mid times + [0] for a `steps`-step budget (mid_t, else interior Karras levels)."""
        return [*multistep_sigmas(steps, self.mid_t, self.sigma_min, self.sigma_max, self.rho), 0.0]

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        ts = self.times(steps)  # f maps every level but the final 0 to 0
        f = self.consistency_fn(net)
        renoise = ve_renoise_to_next()  # x + t z, fresh noise
        return sample_multistep(lambda x, t, s: f(x, t), noise * ts[0], ts, renoise, generator)

    def nfe(self, steps: int) -> int:
        return steps
