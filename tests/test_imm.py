"""Inductive Moment Matching: kernel MMD, the f_{s,t} boundary, the r(s,t) mapping, samplers, and
a trained 2-D GMM model whose 2-step samples beat its 1-step samples."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingNet, frechet_to_gmm
from torch import Tensor, nn

from benchmark.data.gmm import GMM
from benchmark.diffusion import ddim_step, flow_alpha_sigma
from benchmark.errors import ConfigError
from benchmark.nets.mlp import MLP
from benchmark.train_step import fit
from methods.base import build_method
from methods.imm import IMM, c_in, c_out, c_skip, eta, mmd_laplace, r_of, t_from_eta, time_grid

torch.set_num_threads(1)
F64 = torch.float64


def make_imm(dim: int = 2, **kw) -> IMM:
    return IMM(total_steps=10, data_shape=(dim,), **kw)


class GaussianFlowMap(nn.Module):
    """Raw G that makes f_{s,t} the exact ODE map of x ~ N(0, s0^2): f = sqrt(v_s / v_t) x_t,
    v_t = alpha_t^2 s0^2 + sigma_t^2 sigma_d^2 (linear flow between isotropic Gaussians).
    `scale` != 1 gives a wrong map with the right boundary f_{t,t} = x_t only when scale = 1."""

    def __init__(self, s0: float, scale: float = 1.0, sigma_data: float = 0.5):
        super().__init__()
        self.s0, self.scale, self.sd = s0, scale, sigma_data

    def forward(self, x_in: Tensor, c: Tensor) -> Tensor:
        t, s = c[:, 0:1], c[:, 1:2]
        x_t = x_in / c_in(t, self.sd)

        def var(u: Tensor) -> Tensor:
            a, sg = flow_alpha_sigma(u)
            return a**2 * self.s0**2 + sg**2 * self.sd**2

        f = self.scale * (var(s) / var(t)).sqrt() * x_t
        co = c_out(s, t, self.sd)
        return torch.where(co == 0, 0.0, (f - c_skip(s, t) * x_t) / co)  # s == t: f = x_t for any G


# --- kernel and MMD -----------------------------------------------------------------------------

def test_mmd_of_identical_particle_sets_is_zero():
    y = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    w = torch.rand(6, dtype=F64) + 0.5
    assert mmd_laplace(y, y.clone(), w).abs().max().item() == 0.0
    z = torch.randn(6, 4, 3, dtype=F64)
    torch.testing.assert_close(mmd_laplace(y, z, w), mmd_laplace(z, y, w))  # symmetric
    assert (mmd_laplace(y, z, w) >= 0).all()  # Laplace kernel is positive definite


def test_mmd_grows_monotonically_with_a_shift():
    y = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    direction = torch.tensor([0.6, 0.8], dtype=F64)
    shifts = [0.0, 0.05, 0.2, 0.5, 1.0, 3.0]
    vals = [mmd_laplace(y, y + d * direction, torch.ones(1, dtype=F64)).item() for d in shifts]
    assert vals[0] == 0.0 and all(b > a for a, b in zip(vals, vals[1:])), vals


def test_mmd_gradient_is_finite_at_coincident_particles():
    y = torch.zeros(2, 4, 3, dtype=F64, requires_grad=True)
    mmd_laplace(y, torch.ones(2, 4, 3, dtype=F64), torch.ones(2, dtype=F64)).sum().backward()
    assert torch.isfinite(y.grad).all()


# --- parameterisation, interpolant and mapping ---------------------------------------------------

@pytest.mark.parametrize("f_type", ["simple_edm", "euler_fm"])
def test_f_tt_is_the_identity(f_type):
    torch.manual_seed(0)
    m = make_imm(3, f_type=f_type)
    net = MLP(3, hidden=16, depth=1, num_cond=2).double()
    x = torch.randn(16, 3, dtype=F64)
    t = torch.rand(16, dtype=F64) * 0.98 + 0.01
    torch.testing.assert_close(m.f(net, x, t, t), x, rtol=0, atol=1e-12)


def test_shared_noise_x_r_is_ddim_of_x_t():
    """x_r = (1 - r) x + r n equals DDIM(x_t, x, t -> r) of x_t = (1 - t) x + t n (spec §3.6.2)."""
    g = torch.Generator().manual_seed(2)
    x, n = torch.randn(8, 2, generator=g, dtype=F64), torch.randn(8, 2, generator=g, dtype=F64) * 0.5
    t = torch.rand(8, 1, generator=g, dtype=F64) * 0.9 + 0.05
    r = torch.rand(8, 1, generator=g, dtype=F64) * 0.05
    (a_t, s_t), (a_r, s_r) = flow_alpha_sigma(t), flow_alpha_sigma(r)
    torch.testing.assert_close(ddim_step(a_t * x + s_t * n, x, a_t, s_t, a_r, s_r), a_r * x + s_r * n,
                               rtol=0, atol=1e-12)


def test_r_lies_in_s_t_and_approaches_t_as_k_grows():
    g = torch.Generator().manual_seed(3)
    t = 0.006 + (0.994 - 0.006) * torch.rand(4096, generator=g, dtype=F64)
    s = 0.006 + (t - 0.006) * torch.rand(4096, generator=g, dtype=F64)
    gaps = []
    for k in (6, 10, 15):
        r = r_of(s, t, k)
        assert (r >= s).all() and (r < t).all()  # k = 6: eps_step 2.5 > eta(t) for small t
        gaps.append((t - r).mean().item())
    assert gaps[0] > gaps[1] > gaps[2] > 0
    # eta-decrement is exact: eta(r) = eta(t) - 160/2^k where that is above eta(s)
    e = eta(t) - 160 / 2**10
    free = t_from_eta(e) > s
    torch.testing.assert_close(eta(r_of(s, t, 10))[free], e[free])
    torch.testing.assert_close(t_from_eta(eta(t)), t, rtol=0, atol=1e-14)


def test_sampler_grids_run_from_T_to_eps():
    for kind in ("uniform", "edm"):
        for steps in (1, 2, 4, 8):
            ts = time_grid(steps, 0.994, 0.006, kind)
            assert len(ts) == steps + 1 and (ts[1:] < ts[:-1]).all()
            torch.testing.assert_close(ts[[0, -1]], torch.tensor([0.994, 0.006], dtype=F64))


# --- loss ---------------------------------------------------------------------------------------

def test_loss_is_zero_when_r_equals_t_even_with_dropout():
    """Target and prediction see the same input and (restored RNG) the same dropout mask."""
    torch.manual_seed(0)
    m = make_imm()
    m.r = lambda s, t: t  # degenerate mapping: the target is the prediction itself
    net = MLP(2, hidden=32, depth=2, num_cond=2, dropout=0.5).train()
    loss = m.loss(net, torch.randn(16, 2), 0, torch.Generator().manual_seed(0))
    assert loss.shape == (16,) and loss.abs().max().item() == 0.0


def test_loss_prefers_the_exact_gaussian_flow_map():
    """1-D N(0, 0.3^2): the IMM loss is smallest at the exact ODE map and grows as the map is scaled
    away from it (spec §3.6.5). Measured (16 groups, M = 256): 2.6e-2, 1.5e-2, 1.0e-2, 1.5e-2, 2.2e-2
    for scales 0.8 ... 1.2; large groups keep the V-statistic's MC error below the gaps."""
    m = make_imm(1, group_size=256, k=8)
    x0 = torch.randn(256 * 16, 1, generator=torch.Generator().manual_seed(4), dtype=F64) * 0.3

    def loss(scale: float) -> float:
        return m.loss(GaussianFlowMap(0.3, scale), x0, 0, torch.Generator().manual_seed(5)).mean().item()

    vals = [loss(sc) for sc in (0.8, 0.9, 1.0, 1.1, 1.2)]
    assert vals[0] > vals[1] > vals[2] < vals[3] < vals[4], vals


def test_batch_not_divisible_by_group_size_raises():
    with pytest.raises(ConfigError):
        make_imm(group_size=4).loss(MLP(2, 8, 1, num_cond=2), torch.randn(10, 2), 0, torch.Generator())
    with pytest.raises(ConfigError):
        build_method("imm", {"M": 4}, total_steps=1, data_shape=(2,))


# --- samplers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["pushforward", "restart"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_nfe_equals_counted_network_calls(sampler, steps):
    m = make_imm(sampler=sampler)
    net = CountingNet(MLP(2, hidden=8, depth=1, num_cond=2))
    out = m.sample(net, torch.randn(4, 2), steps)
    assert out.shape == (4, 2) and net.calls == m.nfe(steps) == steps


def test_pushforward_with_exact_flow_map_reproduces_the_data_distribution():
    """Sampler check independent of training: with the exact Gaussian map every step count gives
    std s0 (x_T has std ~ sigma_d, scaled by sqrt(v_eps / v_T))."""
    m = make_imm(1)
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(6), dtype=F64)
    for steps in (1, 2, 8):
        x = m.sample(GaussianFlowMap(0.3), noise, steps)
        a, sg = flow_alpha_sigma(torch.tensor(0.006, dtype=F64))
        v_eps = a**2 * 0.09 + sg**2 * 0.25
        a, sg = flow_alpha_sigma(torch.tensor(0.994, dtype=F64))
        v_T = a**2 * 0.09 + sg**2 * 0.25
        want = (v_eps / v_T).sqrt().item() * 0.5 * noise.std().item()
        assert abs(x.std().item() - want) < 1e-9


# --- training on the 2-D GMM --------------------------------------------------------------------

def _train_gmm(steps: int, batch: int, hidden: int, k: int, seed: int = 0):
    gmm = GMM.make()
    data = gmm.sample(20000, torch.Generator().manual_seed(1)).float()
    m = IMM(total_steps=steps, data_shape=(2,), k=k)
    torch.manual_seed(seed)
    net, _ = fit(m, MLP(2, hidden=hidden, depth=2, num_cond=2), data, steps=steps, batch=batch, lr=3e-3,
                 seed=seed)
    noise = torch.randn(8000, 2, generator=torch.Generator().manual_seed(7))
    net.eval()
    return {n: frechet_to_gmm(m.sample(net, noise, n), gmm) for n in (1, 2, 4)}


def test_trained_imm_two_steps_beat_one_step_in_frechet_distance():
    """300 steps x batch 128, k = 8 (eps_step = 0.625 in eta). Measured FD(1 step) / FD(2 steps):
    0.062 / 0.023 (seed 0), 0.041 / 0.0049 (seed 1), 0.055 / 0.010 (seed 2)."""
    fd = _train_gmm(steps=300, batch=128, hidden=64, k=8)
    assert fd[2] < 0.6 * fd[1], fd


@pytest.mark.slow
def test_trained_imm_longer_run_improves_with_steps():
    """1000 steps x batch 256 (~60 s): measured FD 0.0166 (1 step), 0.0032 (2), 0.0023 (4)."""
    fd = _train_gmm(steps=1000, batch=256, hidden=64, k=8)
    assert fd[1] < 0.03 and fd[2] < 0.5 * fd[1] and fd[4] < fd[1], fd
