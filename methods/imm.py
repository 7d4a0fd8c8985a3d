"""Inductive Moment Matching (Zhou, Ermon & Song 2025, arXiv:2503.07565): single-stage, from scratch.

One network f_{s,t}(x_t) maps a noisy sample at time t to time s <= t. It is trained so that the
distribution of f_{s,t}(x_t) matches that of f_{s,r}(x_r) (stop-grad, same net, same dropout mask)
for some r in [s, t): an MMD between groups of M particles that share (s, r, t). Induction over
r -> t makes f_{s,t} the pushforward of the data interpolant, so 1, 2, 4, 8 steps all work.

Interpolant (OT-FM, lumalabs/imm `training/preconds.py`, spec §3.1): x_t = (1 - t) x + t n with
n ~ N(0, sigma_d^2 I), sigma_d = 0.5, t in [eps, T] = [0.006, 0.994]; eta_t = t / (1 - t).

Network (spec §3.2, 'simple_edm'): f = c_skip(s,t) x_t + c_out(s,t) G(c_in x_t, c), with f_{t,t} = x_t.
The raw net takes two time inputs (`num_cond = 2`). Upstream feeds (1000 t, 1000 s) to a DDPM++
positional embedding; our `TimeEmbedding` already multiplies its input by 100 and expects
EDM-c_noise-sized values (|c| ~ 1), so we feed c = (t, s) ('identity') or (t, t - s) ('stride'),
i.e. upstream's inputs divided by 1000. Both stay finite at s = 0, unlike ln eta.

Loss constants (addendum, CIFAR-10 "Table 5" via lumalabs/imm PR #4 = stockeh/imm `training/loss.py`,
second-hand): M = 4, a = 1, b = 5, k = 15, eta_max = 160, eta_min = 0; t ~ U(eps, T), s ~ U(eps, t)
per group; Laplace kernel with bandwidth 1/|c_out(s,t)|, V-statistic MMD; no EMA target. k sets
the induction step eps_step = (eta_max - eta_min)/2^k: k = 15 means r is 0.005 in eta below t,
which needs the paper's ~10^5 iterations to propagate from s to t; the CPU demo uses k ~ 8.

Samplers (lumalabs/imm `generate_images.py`): pushforward x <- f_{t_{i+1}, t_i}(x) (default) and
restart x <- f_{eps, t_i}(x), re-noised to t_{i+1}. Grid: 'uniform' in t from T to eps (upstream's
ImageNet configs, for every step count) or 'edm' (rho = 7 in eta). NFE = steps, one call per step.
The restart sampler's fresh noise comes from the global torch RNG (the caller seeds it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.diffusion import SIGMA_DATA, append_dims, flow_alpha_sigma, keep_estimate, sample_multistep, with_labels
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise
from methods.base import MethodBase, check_choice, snapshot_rng

F_TYPES = ("simple_edm", "euler_fm")


# --- Interpolant (spec §3.1, 'fm') --------------------------------------------------------------
# alpha_t = 1 - t, sigma_t = t: benchmark.diffusion.flow_alpha_sigma

def eta(t: Tensor) -> Tensor:
    return t / (1 - t)  # eta_t = sigma_t / alpha_t  (preconds.py `get_log_nt`, exponentiated)


def t_from_eta(e: Tensor) -> Tensor:
    return e / (1 + e)  # inverse of eta (preconds.py `nt_to_t`)


def logsnr(t: Tensor) -> Tensor:
    return 2 * torch.log((1 - t) / t)  # lambda_t = log(alpha_t^2 / sigma_t^2)


# --- Parameterisation f_{s,t} (spec §3.2) -------------------------------------------------------

def c_skip(s: Tensor, t: Tensor) -> Tensor:
    (a_t, s_t), (a_s, s_s) = flow_alpha_sigma(t), flow_alpha_sigma(s)
    return (a_t * a_s + s_t * s_s) / (a_t**2 + s_t**2)  # simple_edm c_skip


def c_out(s: Tensor, t: Tensor, sigma_data: float = SIGMA_DATA, f_type: str = "simple_edm") -> Tensor:
    if f_type == "euler_fm":
        return -(t - s) * sigma_data  # f = x_t - (t - s) sigma_d G
    (a_t, s_t), (a_s, s_s) = flow_alpha_sigma(t), flow_alpha_sigma(s)
    return -(a_s * s_t - a_t * s_s) * sigma_data / (a_t**2 + s_t**2).sqrt()  # simple_edm c_out


def c_in(t: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    a_t, s_t = flow_alpha_sigma(t)
    return 1 / (sigma_data * (a_t**2 + s_t**2).sqrt())  # unit-variance network input


# --- Induction mapping and weights (addendum; spec §3.3) ----------------------------------------

def r_of(s: Tensor, t: Tensor, k: int, eta_max: float = 160.0, eta_min: float = 0.0) -> Tensor:
    """r(s,t) = max(s, t(eta_t - eps_step)), eps_step = (eta_max - eta_min)/2^k: s <= r < t."""
    e = (eta(t) - (eta_max - eta_min) / 2**k).clamp(min=0.0)  # constant decrement in eta, kept >= 0
    return torch.maximum(s, t_from_eta(e))  # (unclamped, e < -1 would map to r > 1)


def loss_weight(t: Tensor, a: float = 1.0, b: float = 5.0) -> Tensor:
    """w(s,t) = 1/2 sigmoid(b - lambda_t) (-dlambda/dt) alpha_t^a / (alpha_t^2 + sigma_t^2)."""
    a_t, s_t = flow_alpha_sigma(t)
    dlam = 2 / (t * (1 - t))  # -d lambda_t / dt for OT-FM
    return 0.5 * torch.sigmoid(b - logsnr(t)) * dlam * a_t**a / (a_t**2 + s_t**2)


def mmd_laplace(y: Tensor, z: Tensor, w: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-group MMD^2 V-statistic (diagonals included) with k(x,y) = exp(-w max(|x-y|, eps) / D).

    y, z: [G, M, D] particles; w: [G] kernel weights. Returns [G]."""
    dim = y.shape[-1]

    def kernel(u: Tensor, v: Tensor) -> Tensor:
        d2 = (u[:, :, None] - v[:, None]).pow(2).sum(-1)  # [G, M, M]; no cdist: finite grad at 0
        return torch.exp(-w[:, None, None] * d2.clamp(min=eps**2).sqrt() / dim)

    return (kernel(y, y) + kernel(z, z) - 2 * kernel(y, z)).mean(dim=(1, 2))


# --- Sampler grids ------------------------------------------------------------------------------

def time_grid(steps: int, T: float = 0.994, eps: float = 0.006, kind: str = "uniform",
              rho: float = 7.0) -> Tensor:
    """t_0 = T > t_1 > ... > t_steps = eps (float64)."""
    if kind == "uniform":
        return torch.linspace(T, eps, steps + 1, dtype=torch.float64)
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    e_max, e_min = T / (1 - T), eps / (1 - eps)
    e = (e_max ** (1 / rho) + i * (e_min ** (1 / rho) - e_max ** (1 / rho))) ** rho  # EDM Eq. 5 in eta
    return t_from_eta(e)


class IMM(MethodBase):
    name = "imm"
    teacher = None  # single stage, from scratch
    num_cond = 2  # the raw net sees (t, s)

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], group_size: int = 4,
                 a: float = 1.0, b: float = 5.0, k: int = 15, eta_max: float = 160.0, eta_min: float = 0.0,
                 T: float = 0.994, eps: float = 0.006, sigma_data: float = SIGMA_DATA,
                 f_type: str = "simple_edm", temb: str = "identity", sampler: str = "pushforward",
                 grid: str = "uniform"):
        super().__init__(total_steps=total_steps, data_shape=data_shape)
        check_choice("IMM", "f_type", f_type, F_TYPES)
        check_choice("IMM", "temb", temb, ("identity", "stride"),
                     "use 'identity' (t, s) or 'stride' (t, t - s)")
        check_choice("IMM", "sampler", sampler, ("pushforward", "restart"))
        check_choice("IMM", "grid", grid, ("uniform", "edm"))
        if not (isinstance(group_size, int) and group_size >= 2):
            raise ConfigError(f"IMM group_size={group_size!r} is invalid", "use an integer >= 2 (paper: 4)")
        if not 0 <= eps < T < 1:
            raise ConfigError(f"IMM times eps={eps}, T={T} are invalid", "need 0 <= eps < T < 1")
        self.M, self.a, self.b, self.k = group_size, a, b, int(k)
        self.eta_max, self.eta_min, self.T, self.eps = eta_max, eta_min, T, eps
        self.sigma_data, self.f_type, self.temb = sigma_data, f_type, temb
        self.sampler, self.grid = sampler, grid

    # network ----------------------------------------------------------------------------------
    def f(self, net: nn.Module, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """f_{s,t}(x_t) = c_skip x_t + c_out G(c_in x_t, c) ('simple_edm'), or x_t + c_out G ('euler_fm')."""
        cond = torch.stack([t, s if self.temb == "identity" else t - s], dim=1).to(x_t.dtype)
        tb, sb = append_dims(t, x_t.ndim).to(x_t.dtype), append_dims(s, x_t.ndim).to(x_t.dtype)
        g = net(c_in(tb, self.sigma_data) * x_t, cond)
        skip = c_skip(sb, tb) if self.f_type == "simple_edm" else 1.0
        return skip * x_t + c_out(sb, tb, self.sigma_data, self.f_type) * g

    def r(self, s: Tensor, t: Tensor) -> Tensor:
        return r_of(s, t, self.k, self.eta_max, self.eta_min)

    # loss (spec §3.3; addendum) -----------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        """w(s,t) MMD^2(f_{s,t}(x_t), sg f_{s,r}(x_r)) per group, returned once per particle."""
        net, rng = with_labels(net, labels), StepNoise.of(rng, len(x0))
        B, M = len(x0), self.M
        if B % M:
            raise ConfigError(f"IMM batch {B} is not divisible by group_size M={M}",
                              f"use a batch that is a multiple of {M}")
        G, dt = B // M, x0.dtype
        u = rng.rand((G, 2), dtype=dt, group=M)  # one (t, s) draw per group of M particles
        t = self.eps + (self.T - self.eps) * u[:, 0]  # t ~ U(eps, T)
        s = self.eps + (t - self.eps) * u[:, 1]  # s ~ U(eps, t)
        r = self.r(s, t)
        tb, sb, rb = (v.repeat_interleave(M) for v in (t, s, r))
        n = rng.randn(x0.shape, dtype=dt) * self.sigma_data
        (a_t, s_t), (a_r, s_r) = (tuple(append_dims(v, x0.ndim) for v in flow_alpha_sigma(v)) for v in (tb, rb))
        x_t, x_r = a_t * x0 + s_t * n, a_r * x0 + s_r * n  # same x, n (x_r = DDIM(x_t, x, t -> r))
        restore = snapshot_rng()
        y = self.f(net, x_t, tb, sb).reshape(G, M, -1)
        restore()  # same dropout mask for the target
        with torch.no_grad():
            z = self.f(net, x_r, rb, sb).reshape(G, M, -1)
        w_kernel = 1 / c_out(s, t, self.sigma_data, self.f_type).abs()  # kernel bandwidth 1/|c_out(s,t)|
        loss_g = loss_weight(t, self.a, self.b) * mmd_laplace(y, z, w_kernel)
        return loss_g.repeat_interleave(M)  # per-example; its mean is the mean over groups

    # samplers (lumalabs/imm generate_images.py) -------------------------------------------------
    def times(self, steps: int) -> Tensor:
        return time_grid(steps, self.T, self.eps, self.grid)

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        ts = self.times(steps).tolist()
        x = noise * self.sigma_data  # x_T ~ N(0, sigma_d^2 I)
        full = lambda v: torch.full((len(x),), v, device=x.device, dtype=x.dtype)  # noqa: E731
        if self.sampler == "restart":  # x <- f_{eps, t_i}(x), re-noised to t_{i+1} with fresh noise
            jump = lambda x_t, t, s: self.f(net, x_t, full(t), full(self.eps))  # noqa: E731
            return sample_multistep(jump, x, ts, self.renoise, generator)
        push = lambda x_t, t, s: self.f(net, x_t, full(t), full(s))  # noqa: E731  pushforward f_{s,t}
        return sample_multistep(push, x, ts, keep_estimate, generator)

    def renoise(self, x0: Tensor, x_t: Tensor, t: float, s: float,
                generator: torch.Generator | None = None) -> Tensor:
        """x_s = alpha_s x0 + sigma_s n, n ~ N(0, sigma_d^2 I): the interpolant at s with fresh noise."""
        n = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = flow_alpha_sigma(s)
        return alpha * x0 + sigma * n * self.sigma_data

    def nfe(self, steps: int) -> int:
        return steps  # one network call per step (no CFG)

