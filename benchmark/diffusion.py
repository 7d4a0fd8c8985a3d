"""Shared diffusion formulas: EDM preconditioning, the consistency-model boundary preconditioning
(CD/CT/iCT and ECT), the Karras sigma grid, ODE solvers, the multistep sampler of one-step maps
(CM, ECT, MCM, PD, IMM) and the VP/DDIM algebra used by PD, MCM and IMM.
Each formula lives here once; methods compose them.

Notation follows Karras et al. 2022 (EDM): x_sigma = x0 + sigma * n, sigma_data = 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

SIGMA_DATA = 0.5
Denoiser = Callable[[Tensor, Tensor], Tensor]  # D(x, sigma) with sigma of shape [B]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Broadcast a per-example vector [B] against a batch of rank `ndim`."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or [B] noise level as a [B] tensor on x's device/dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


# --- EDM preconditioning (Karras et al. 2022, Table 1 / Eq. 7) -----------------------------

def c_skip(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    return sigma_data**2 / (sigma**2 + sigma_data**2)  # EDM Table 1


def c_out(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()  # EDM Table 1


def c_in(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    return 1 / (sigma**2 + sigma_data**2).sqrt()  # EDM Table 1


def c_noise(sigma: Tensor) -> Tensor:
    return sigma.log() / 4  # EDM Table 1


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """lambda(sigma) = 1 / c_out^2 (EDM Table 1): unit effective weight on F's target."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(net: torch.nn.Module, x: Tensor, sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)  (EDM Eq. 7)."""
    sigma = as_batch(sigma, x)
    s = append_dims(sigma, x.ndim)
    f = net(c_in(s, sigma_data) * x, c_noise(sigma))
    return c_skip(s, sigma_data) * x + c_out(s, sigma_data) * f


# --- Consistency-model boundary preconditioning (CM §3, Eq. 5; cm/karras_diffusion.py l.68-78) ---
# CD/CT/iCT and ECT's eval mode (eps = sigma_min): f(x, eps) = x exactly, for any F.


def cm_c_skip(t: Tensor, eps: float, sigma_data: float = SIGMA_DATA) -> Tensor:
    return sigma_data**2 / ((t - eps) ** 2 + sigma_data**2)  # = 1 at t = eps


def cm_c_out(t: Tensor, eps: float, sigma_data: float = SIGMA_DATA) -> Tensor:
    return (t - eps) * sigma_data / (t**2 + sigma_data**2).sqrt()  # = 0 at t = eps; denominator uses t


def consistency_eval(net: nn.Module, x: Tensor, t: Tensor, eps: float,
                     sigma_data: float = SIGMA_DATA) -> Tensor:
    """f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(c_in(t) x, c_noise(t))  (CM Eq. 5)."""
    t = as_batch(t, x)
    s = append_dims(t, x.ndim)
    F = net(c_in(s, sigma_data) * x, c_noise(t))
    return cm_c_skip(s, eps, sigma_data) * x + cm_c_out(s, eps, sigma_data) * F


# --- Class conditioning and classifier-free guidance (Ho & Salimans 2022) --------------------

def guided_forward(net: nn.Module, x: Tensor, c: Tensor, labels: Tensor | None,
                   guidance: float = 1.0) -> Tensor:
    """The raw output with classifier-free guidance, F = F_u + s (F_c - F_u) (CFG Eq. 6, s = 1 + w).

    Guiding F guides D: every preconditioning here is D = c_skip x + c_out F (EDM Eq. 7, CM Eq. 5,
    ECT, IMM's f_{s,t}, PD's v/x forms), affine in F with the same coefficients for both branches,
    so D_u + s (D_c - D_u) = c_skip x + c_out (F_u + s (F_c - F_u)). labels: float one-hot [B, K];
    an all-zero row is the unconditional model (EDM's label dropout), None an unconditional net."""
    if labels is None:
        return net(x, c)
    if guidance == 1.0:
        return net(x, c, labels=labels)
    zeros = torch.zeros_like(labels)
    if guidance == 0.0:
        return net(x, c, labels=zeros)
    f_c, f_u = net(torch.cat([x, x]), torch.cat([c, c]), labels=torch.cat([labels, zeros])).chunk(2)
    return f_u + guidance * (f_c - f_u)


class Conditioned(nn.Module):
    """A raw net with its labels (and guidance scale) bound: `Conditioned(net, y, s)(x, c)` is
    `guided_forward(net, x, c, y, s)`, so every method formula written for `net(x, c)` is unchanged.
    It holds no parameters of its own and takes the wrapped net's train/eval mode."""

    def __init__(self, net: nn.Module, labels: Tensor, guidance: float = 1.0):
        super().__init__()
        self.net, self.labels, self.guidance = net, labels, float(guidance)
        self.training = net.training

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return guided_forward(self.net, x, c, self.labels, self.guidance)


def with_labels(net: nn.Module | None, labels: Tensor | None, guidance: float = 1.0) -> nn.Module | None:
    """`net` conditioned on `labels` (guided with scale `guidance`); `net` itself when there are no labels."""
    if labels is None and float(guidance) not in (0.0, 1.0):
        from benchmark.errors import ConfigError

        raise ConfigError(f"classifier-free guidance {guidance:g} needs class labels",
                          "sample a class-conditional model with labels, or use guidance 1")
    if net is None or labels is None:
        return net
    return Conditioned(net, labels, guidance)


# --- Time discretisation ------------------------------------------------------------------

def karras_level(i: Tensor, n: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """Level i of n: (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (EDM Eq. 5).

    i = 0 is sigma_max, i = n - 1 is sigma_min; i may be fractional or a tensor of indices (CD/CT)."""
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True) -> Tensor:
    """EDM Eq. 5: n levels from sigma_max down to sigma_min (float64), then 0 if append_zero."""
    if n < 1:
        raise ValueError("karras_sigmas needs n >= 1")
    if n == 1:
        s = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        s = karras_level(torch.arange(n, dtype=torch.float64), n, sigma_min, sigma_max, rho)
    return torch.cat([s, s.new_zeros(1)]) if append_zero else s


def multistep_sigmas(steps: int, mids: list[float] | None, sigma_min: float, sigma_max: float,
                     rho: float = 7.0) -> list[float]:
    """[sigma_max, tau_1, ..., tau_{steps-1}]: the levels of a multistep consistency sampler (CM, ECT).

    `mids` when it holds steps - 1 levels (the papers' hand-tuned ones), else the interior points of a
    (steps + 1)-level Karras grid (EDM Eq. 5; our rule, docs/internals.md)."""
    if mids is None or len(mids) != steps - 1:
        mids = karras_sigmas(steps + 1, sigma_min, sigma_max, rho, append_zero=False)[1:-1].tolist()
    return [sigma_max] + [float(m) for m in mids]


# --- ODE solvers on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma -----------

@torch.no_grad()
def sample_euler(denoise: Denoiser, x: Tensor, sigmas: Tensor) -> Tensor:
    """First-order solver; one D call per interval (NFE = len(sigmas) - 1)."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, as_batch(s, x))) / s
        x = x + (s_next - s) * d
    return x


@torch.no_grad()
def sample_heun(denoise: Denoiser, x: Tensor, sigmas: Tensor) -> Tensor:
    """EDM Algorithm 1 (deterministic, S_churn = 0): Heun steps, Euler into sigma = 0.

    With N levels plus the final 0 this makes 2N - 1 denoiser calls."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, as_batch(s, x))) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:  # 2nd-order correction (EDM Alg. 1, line 7-8)
            d2 = (x_next - denoise(x_next, as_batch(s_next, x))) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
    return x


def heun_nfe(num_levels: int) -> int:
    """Denoiser calls made by `sample_heun` on `karras_sigmas(num_levels)`: 2N - 1."""
    return 2 * num_levels - 1


# --- Multistep sampling of a one-step map (CM Alg. 1, ECT, MCM, PD's DDIM, IMM) -------------

OneStep = Callable[[Tensor, Any, Any], Tensor]  # f(x_t, t, s) -> estimate (x0-hat, or x_s for a flow map)
Renoise = Callable[[Tensor, Tensor, Any, Any, "torch.Generator | None"], Tensor]  # (x_hat, x_t, t, s, gen) -> x_s


@torch.no_grad()
def sample_multistep(f: OneStep, x: Tensor, times: Sequence[Any], renoise: Renoise,
                     generator: torch.Generator | None = None) -> Tensor:
    """For each (t, s) of consecutive `times`: x_hat = f(x, t, s); x = renoise(x_hat, x, t, s) puts
    the estimate back at s. The last x_hat is the sample; NFE = len(times) - 1.

    One loop in k-diffusion's style for every few-step sampler here: CM/ECT/IMM-restart re-noise
    x_hat with fresh noise (`ve_renoise`, `renoise`), MCM and PD take a DDIM step from x_t, and
    IMM's pushforward f already lands on s (`keep_estimate`). `x` is the start point at times[0];
    noise comes from `generator`, or torch's global RNG when it is None (the sampler CLI seeds it)."""
    if len(times) < 2:
        raise ValueError(f"sample_multistep needs at least two times (start and end), got {len(times)}")
    pairs = list(zip(times[:-1], times[1:]))
    for t, s in pairs[:-1]:
        x = renoise(f(x, t, s), x, t, s, generator)
    return f(x, *pairs[-1])


def keep_estimate(x_hat: Tensor, x_t: Tensor, t: Any, s: Any, generator: torch.Generator | None = None) -> Tensor:
    """The `renoise` of a flow map whose estimate already lies at s (IMM pushforward)."""
    return x_hat


def ve_renoise(x0: Tensor, t: float, generator: torch.Generator | None = None,
               sigma_min: float = 0.0) -> Tensor:
    """x_t = x0 + sqrt(t^2 - sigma_min^2) z, z ~ N(0, I)  (CM Alg. 1 line 5; sigma_min = 0: x0 + t z)."""
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return x0 + (t if sigma_min == 0 else math.sqrt(t**2 - sigma_min**2)) * z


def ve_renoise_to_next(sigma_min: float = 0.0) -> Renoise:
    """`ve_renoise` as a `sample_multistep` step: re-noise x_hat to the next level s, fresh noise."""
    return lambda x_hat, x_t, t, s, generator=None: ve_renoise(x_hat, s, generator, sigma_min)


# --- Interpolants z_t = alpha_t x + sigma_t eps, one alpha_sigma per schedule -----------------

def vp_logsnr_alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """VP at log-SNR lambda: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) (PD, used by PD)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()  # PD §2; dpm.py diffusion_forward


def vp_cosine_alpha_sigma(u: Tensor) -> tuple[Tensor, Tensor]:
    """VP cosine at time u in [0, 1], unclipped (MCM §4.1, used by MCM on u = t u_max)."""
    return torch.cos(math.pi * u / 2), torch.sin(math.pi * u / 2)  # alpha_u = cos(pi u/2), sigma_u = sin


def flow_alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    """OT flow matching at time t in [0, 1] (IMM §3.1 'fm'; lumalabs/imm preconds.py, used by IMM)."""
    return 1 - t, t  # alpha_t = 1 - t, sigma_t = t


# --- DDIM on a VP/flow interpolant (PD Eq. 4-6; MCM Eq. 4-5; IMM's `ddim`); PD's DDIM sampler ------


def ddim_step(z_t: Tensor, x_hat: Tensor, alpha_t: Tensor, sigma_t: Tensor,
              alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t  (DDIM, deterministic)."""
    eps_hat = (z_t - alpha_t * x_hat) / sigma_t
    return alpha_s * x_hat + sigma_s * eps_hat


def inverse_ddim(z_s: Tensor, z_t: Tensor, alpha_t: Tensor, sigma_t: Tensor,
                 alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """The x for which ddim_step(z_t, x, t -> s) == z_s  (PD Alg. 2 target; MCM Eq. 5)."""
    ratio = sigma_s / sigma_t
    return (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)


@torch.no_grad()
def ddim_sample_logsnr(x_pred, z: Tensor, logsnrs: Tensor) -> Tensor:
    """DDIM over logsnrs[N] (noise) down to logsnrs[0]; the last step returns x_hat (PD spec §1.3).

    x_pred(z, lambda[B]) -> x_hat; one call per step."""
    def ddim(x_hat: Tensor, z_t: Tensor, lam_t: Tensor, lam_s: Tensor, generator=None) -> Tensor:
        return ddim_step(z_t, x_hat, *vp_logsnr_alpha_sigma(lam_t), *vp_logsnr_alpha_sigma(lam_s))

    return sample_multistep(lambda z_t, lam_t, lam_s: x_pred(z_t, lam_t.expand(z.shape[0])), z,
                            logsnrs.flip(0), ddim)
