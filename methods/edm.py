"""EDM (Karras et al. 2022): the diffusion baseline and the teacher of CD, MCM-CD, ECT and PD.

Hyperparameters: P_mean = -1.2, P_std = 1.2, sigma_data = 0.5 (EDM Table 1 / NVlabs/edm
training/loss.py); sampler sigma_min = 0.002, sigma_max = 80, rho = 7 (EDM Eq. 5).
`steps` is the number of noise levels N; Heun makes 2N - 1 network calls (the last step,
into sigma = 0, is Euler-only), Euler makes N.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.diffusion import (
    SIGMA_DATA,
    append_dims,
    edm_denoise,
    edm_loss_weight,
    heun_nfe,
    karras_sigmas,
    sample_euler,
    sample_heun,
    with_labels,
)
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise
from methods.base import MethodBase


class EDM(MethodBase):
    name = "edm"
    teacher = None

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], p_mean: float = -1.2,
                 p_std: float = 1.2, sigma_data: float = SIGMA_DATA, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, solver: str = "heun"):
        super().__init__(total_steps=total_steps, data_shape=data_shape)
        if solver not in ("heun", "euler"):
            raise ConfigError(f"unknown EDM solver '{solver}'", "use 'heun' or 'euler'")
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data
        self.sigma_min, self.sigma_max, self.rho, self.solver = sigma_min, sigma_max, rho, solver

    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        """EDM Eq. 2 with ln(sigma) ~ N(P_mean, P_std^2) and lambda = 1/c_out^2 (Table 1)."""
        net, rng = with_labels(net, labels), StepNoise.of(rng, len(x0))
        sigma = (rng.randn((len(x0),)) * self.p_std + self.p_mean).exp()
        n = rng.randn(x0.shape)
        s = append_dims(sigma, x0.ndim)
        d = edm_denoise(net, x0 + s * n, sigma, self.sigma_data)
        return (edm_loss_weight(s, self.sigma_data) * (d - x0) ** 2).flatten(1).mean(1)

    def denoiser(self, net: nn.Module):
        return lambda x, sigma: edm_denoise(net, x, sigma, self.sigma_data)

    def sigmas(self, steps: int) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, self.rho)

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        solver = sample_heun if self.solver == "heun" else sample_euler
        return solver(self.denoiser(net), noise * self.sigma_max, self.sigmas(steps))

    def nfe(self, steps: int) -> int:
        return heun_nfe(steps) if self.solver == "heun" else steps
