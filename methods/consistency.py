"""Consistency models: CD and CT (Song, Dhariwal, Chen, Sutskever 2023), on `ConsistencyBase`, which
iCT (methods/ict.py) shares. Spec: ../shared/spec/methods-edm-cm-mcm.md §2.

A consistency function maps any point x_t of a probability-flow ODE trajectory to its origin:
f(x_t, t) = x_eps. The boundary condition f(x, eps) = x is built into the parameterization
(CM Eq. 5, `benchmark.diffusion.consistency_eval`): c_skip(eps) = 1 and c_out(eps) = 0 for any F.

Decisions (recorded here, see the spec's [memory] tags):
- c_noise = ln(t)/4 (EDM), not the CM code's 1000 * ln(t)/4: our raw nets take EDM-style time inputs
  (benchmark/nets), and a CD student starts from an EDM teacher's weights, so it must see the same c_noise.
- CT target EMA: mu(k) = exp(s0 ln mu0 / (N(k) - 1)), dividing by the discretisation count *before* its
  "+1", as both official codes do (cm/script_util.py create_ema_and_scales_fn; consistency_models_cifar10
  jcm/losses.py get_ema_scales_fn). The paper writes N(k); the code produced the published numbers.
  Consequence: mu(0) = mu0^(s0/(s0-1)) (= mu0^2 for s0 = 2), not mu0.
- CIFAR-10 CD uses mu = 0 (theta^- = stopgrad theta): the JAX code's 'consistency' loss has no target
  network (jcm/losses.py: `if target_params is None: target_params = params`). ImageNet-64 CD: mu = 0.95.
- Metrics: 'l2' (mean over dims, the code's mean_flat) and 'l1'; LPIPS is not implemented (it needs
  downloaded VGG weights); the config files name the paper's choice and the metric actually used.
- Sampling clamps every f output to [-1, 1] (karras_sample's clip_denoised=True) unless clip_denoised=False.
- Multistep sampling (CM Algorithm 1, `benchmark.diffusion.sample_multistep`): x = f(T z, T); then
  x = f(x + sqrt(tau^2 - eps^2) z', tau) at each level tau (`multistep_sigmas` of `mid_sigmas`, a list for
  len+1 steps or {steps: list}); extra noise from `generator` if given, else torch's global RNG.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.diffusion import (
    SIGMA_DATA,
    append_dims,
    consistency_eval,
    edm_denoise,
    karras_level,
    multistep_sigmas,
    sample_multistep,
    ve_renoise_to_next,
    with_labels,
)
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise
from methods.base import MethodBase, snapshot_rng

ConsistencyFn = Callable[[Tensor, Tensor], Tensor]  # f(x, sigma) with sigma [B] or scalar

# --- Discretisation and curricula (pure functions of the step k; K = total steps) -----------


def ct_num_scales(k: int, K: int, s0: int, s1: int) -> int:
    """CM Appendix C: N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1

    The code clamps the ceil term at >= 1 (cm/script_util.py create_ema_and_scales_fn)."""
    n = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)
    return max(n, 1) + 1


def ct_target_ema(k: int, K: int, s0: int, s1: int, mu0: float) -> float:
    """mu(k) = exp(s0 ln mu0 / (N(k) - 1))  (official code; the paper divides by N(k), see module doc)."""
    return math.exp(s0 * math.log(mu0) / (ct_num_scales(k, K, s0, s1) - 1))


def mean_metric(diff: Tensor, norm: str) -> Tensor:
    """The CM code's l1 / l2 metrics: mean over all non-batch dims (mean_flat)."""
    return (diff.abs() if norm == "l1" else diff**2).flatten(1).mean(1)


# --- Shared machinery ----------------------------------------------------------------------


class ConsistencyBase(MethodBase):
    """Parameterization (CM Eq. 5) and the multistep sampler (CM Algorithm 1) common to CD, CT and iCT."""

    supports_editing = True  # consistency_fn maps any noise level to x0 in one step

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, sigma_data: float = SIGMA_DATA,
                 mid_sigmas: list[float] | dict[int, list[float]] | None = None,
                 clip_denoised: bool = True, **params: Any):
        super().__init__(total_steps=total_steps, data_shape=data_shape, **params)
        self.sigma_min, self.sigma_max, self.rho, self.sigma_data = sigma_min, sigma_max, rho, sigma_data
        self.mid_sigmas, self.clip_denoised = mid_sigmas, clip_denoised

    def f(self, net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return consistency_eval(net, x, t, self.sigma_min, self.sigma_data)

    def consistency_fn(self, net: nn.Module) -> ConsistencyFn:
        """f(x, sigma) for sampling and zero-shot editing (benchmark.editing); clamped if clip_denoised."""
        def fn(x: Tensor, sigma: Tensor) -> Tensor:
            out = self.f(net, x, sigma)
            return out.clamp(-1, 1) if self.clip_denoised else out
        return fn

    # sampler (CM Algorithm 1) -------------------------------------------------------------------
    def sample_sigmas(self, steps: int) -> list[float]:
        """[T, tau_1, ..., tau_{steps-1}]: the levels at which f is evaluated."""
        self.check_steps(steps)
        mids = self.mid_sigmas
        if isinstance(mids, dict):
            mids = mids.get(steps, mids.get(str(steps)))
        return multistep_sigmas(steps, mids, self.sigma_min, self.sigma_max, self.rho)

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        f = self.consistency_fn(net)
        levels = [*self.sample_sigmas(steps), self.sigma_min]  # f maps every level to sigma_min
        renoise = ve_renoise_to_next(self.sigma_min)  # x + sqrt(tau^2 - eps^2) z
        return sample_multistep(lambda x, t, s: f(x, t), noise * levels[0], levels, renoise, generator)

    def nfe(self, steps: int) -> int:
        return steps  # one f evaluation per step


# --- CD and CT (CM Algorithms 2 and 3) --------------------------------------------------------


class _CMLoss(ConsistencyBase):
    """Shared CD/CT loss: lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_{theta^-}(x_hat_{t_n}, t_n)) (CM Eq. 7),
    written in the code's descending indexing: t_i > t_{i+1}, i ~ U{0..N-2}."""

    def __init__(self, *, loss_norm: str = "l2", **kw: Any):
        super().__init__(**kw)
        if loss_norm not in ("l2", "l1"):
            raise ConfigError(f"loss_norm '{loss_norm}' is not supported",
                              "use 'l2' or 'l1' (LPIPS needs pretrained VGG weights and is not implemented)")
        self.loss_norm = loss_norm
        self.target: nn.Module | None = None
        self._pending_target: dict[str, Tensor] | None = None

    # target network theta^- ---------------------------------------------------------------
    def setup(self, net: nn.Module, teacher: nn.Module | None) -> None:
        super().setup(net, teacher)
        self.target = copy.deepcopy(net).requires_grad_(False)
        if self._pending_target is not None:  # load_state_dict came before setup (resume)
            self.target.load_state_dict(self._pending_target)
            self._pending_target = None

    def target_ema(self, step: int) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, net: nn.Module, step: int) -> None:
        """theta^- <- stopgrad(mu theta^- + (1 - mu) theta)  (CM Alg. 2/3; cm/train_util.py _update_target_ema)."""
        if self.target is None:
            return
        mu = self.target_ema(step)
        for pt, p in zip(self.target.parameters(), net.parameters()):
            pt.lerp_(p.detach(), 1 - mu)
        for bt, b in zip(self.target.buffers(), net.buffers()):
            bt.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict()} if self.target is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "target" not in state:
            return
        if self.target is None:
            self._pending_target = state["target"]
        else:
            self.target.load_state_dict(state["target"])

    def target_net(self, net: nn.Module) -> nn.Module:
        """theta^- in the student's train/eval mode, so the restored RNG gives it the same dropout mask."""
        tgt = self.target if self.target is not None else net
        return tgt.train(net.training) if tgt is not net else tgt

    # loss (CM Eq. 7) ------------------------------------------------------------------------
    def num_scales(self, step: int) -> int:
        raise NotImplementedError

    def ode_step(self, x_t: Tensor, t: Tensor, t2: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor:
        target_net = with_labels(self.target_net(net), labels)
        net = with_labels(net, labels)
        N, rng = self.num_scales(step), StepNoise.of(rng, len(x0))
        i = rng.randint(0, N - 1, (len(x0),)).to(x0.dtype)
        t = karras_level(i, N, self.sigma_min, self.sigma_max, self.rho)
        t2 = karras_level(i + 1, N, self.sigma_min, self.sigma_max, self.rho)
        z = rng.randn(x0.shape, dtype=x0.dtype)
        x_t = x0 + append_dims(t, x0.ndim) * z
        restore = snapshot_rng()
        online = self.f(net, x_t, t)
        with torch.no_grad():
            x_t2 = self.ode_step(x_t, t, t2, x0, labels)
            restore()  # same dropout mask for theta and theta^- (cm/karras_diffusion.py l.193-201)
            target = self.f(target_net, x_t2, t2)
        return mean_metric(online - target, self.loss_norm)  # lambda(t_n) = 1 ('uniform' in all CM runs)


class ConsistencyDistillation(_CMLoss):
    """CD (CM Alg. 2): the target point x_hat_{t_{n}} is one Heun step of the EDM teacher's PF-ODE."""

    name = "cd"
    teacher = "edm"
    init_from_teacher = True

    def __init__(self, *, num_scales: int = 18, mu: float = 0.95, teacher_sigma_data: float = SIGMA_DATA,
                 **kw: Any):
        super().__init__(**kw)
        self.N, self.mu, self.teacher_sigma_data = int(num_scales), float(mu), teacher_sigma_data

    def num_scales(self, step: int) -> int:
        return self.N  # fixed N (scale_mode=fixed in every CD run)

    def target_ema(self, step: int) -> float:
        return self.mu

    def ode_step(self, x_t: Tensor, t: Tensor, t2: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        """Heun step of dx/dt = (x - D_phi(x, t))/t from t to t2 (EDM Alg. 1; cm heun_solver)."""
        teacher = self.teacher_for(labels)
        D = lambda x, s: edm_denoise(teacher, x, s, self.teacher_sigma_data)  # noqa: E731
        s, s2 = append_dims(t, x_t.ndim), append_dims(t2, x_t.ndim)
        d = (x_t - D(x_t, t)) / s
        x_e = x_t + (s2 - s) * d
        d2 = (x_e - D(x_e, t2)) / s2
        return x_t + (s2 - s) * (d + d2) / 2


class ConsistencyTraining(_CMLoss):
    """CT (CM Alg. 3): the teacher's denoiser is replaced by x0 itself, so x_hat_{t2} = x0 + t2 z (same z)."""

    name = "ct"
    teacher = None

    def __init__(self, *, s0: int = 2, s1: int = 150, mu0: float = 0.9, **kw: Any):
        super().__init__(**kw)
        self.s0, self.s1, self.mu0 = int(s0), int(s1), float(mu0)

    def num_scales(self, step: int) -> int:
        return ct_num_scales(step, self.total_steps, self.s0, self.s1)

    def target_ema(self, step: int) -> float:
        return ct_target_ema(step, self.total_steps, self.s0, self.s1, self.mu0)

    def ode_step(self, x_t: Tensor, t: Tensor, t2: Tensor, x0: Tensor, labels: Tensor | None = None) -> Tensor:
        """Euler step with D = x0 (cm euler_solver): equals x0 + t2 z up to rounding."""
        s, s2 = append_dims(t, x_t.ndim), append_dims(t2, x_t.ndim)
        return x_t + (s2 - s) * (x_t - x0) / s
