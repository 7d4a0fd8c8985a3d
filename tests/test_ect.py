"""ECT (methods/ect.py): parameterisation, the r(t) curriculum, the loss's fixed point on Gaussian
data, the sampler's NFE, and a short tuning run on the 2-D Gaussian mixture."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CountingNet, ExactPlusResidual, frechet_to_gmm
from torch import nn

from benchmark.data.gmm import GMM
from benchmark.diffusion import c_in, c_out, c_skip, edm_denoise, karras_sigmas
from benchmark.errors import ConfigError
from benchmark.nets.mlp import MLP
from benchmark.train_step import fit
from methods.ect import ECT, ect_precond, t_to_r

torch.set_num_threads(1)


def make(**kw) -> ECT:
    kw.setdefault("total_steps", 1000)
    kw.setdefault("data_shape", (2,))
    return ECT(**kw)


# --- parameterisation ------------------------------------------------------------------------

def test_eval_parameterization_satisfies_boundary_exactly_for_any_network():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1).eval()
    x = torch.randn(64, 2) * 3
    sigma_min = torch.tensor(0.003)
    assert torch.equal(ect_precond(net, x, sigma_min, boundary=True), x)
    assert not torch.allclose(ect_precond(net, x, torch.tensor(0.5), boundary=True), x)


def test_training_parameterization_is_the_edm_denoiser():
    """So ECT's step 0 reproduces the EDM teacher it was initialised from."""
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1)
    x, t = torch.randn(32, 2), torch.rand(32) * 5 + 0.01
    assert torch.equal(ect_precond(net, x, t, boundary=False), edm_denoise(net, x, t))


# --- the r(t) mapping and its stages -----------------------------------------------------------

def test_r_is_zero_below_ln7_at_stage_zero():
    """k=8, b=1, q=2: r = max(0, t(1 - n(t)/2)) is 0 iff n(t) >= 2 iff t <= ln 7."""
    assert t_to_r(torch.tensor(1.0), 0).item() == 0
    assert t_to_r(torch.tensor(3.0), 0).item() > 0
    assert t_to_r(torch.tensor(math.log(7) - 1e-4), 0).item() == 0
    assert t_to_r(torch.tensor(math.log(7) + 1e-3), 0).item() > 0


def test_gap_halves_per_stage_and_r_tends_to_t():
    t = torch.logspace(-2, 2, 50, dtype=torch.float64)
    gaps = [t - t_to_r(t, stage) for stage in range(3, 12)]  # stage >= 3: r > 0 for every t (n <= 5 < 16)
    for g0, g1 in zip(gaps[:-1], gaps[1:]):
        torch.testing.assert_close(g1, g0 / 2, rtol=1e-12, atol=0)
    r = t_to_r(t, 40)
    assert torch.all(r <= t) and torch.all(r >= 0)
    torch.testing.assert_close(r / t, torch.ones_like(t), rtol=1e-10, atol=0)


def test_r_at_stage_boundaries_matches_hand_computation():
    m = make(stage_steps=100)
    t = torch.tensor([3.0], dtype=torch.float64)
    n = 1 + 8 / (1 + math.exp(3.0))  # n(3) = 1 + k sigmoid(-b t)
    hand = {99: 3 * (1 - n / 2), 100: 3 * (1 - n / 4), 199: 3 * (1 - n / 4), 200: 3 * (1 - n / 8)}
    for step, r in hand.items():
        assert m.r_of(t, step).item() == pytest.approx(r, rel=1e-12)
    assert hand[99] == pytest.approx(0.9308895218692, rel=1e-10)


def test_stage_length_derived_from_num_stages():
    assert make(total_steps=200_000, num_stages=8).stage_steps == 25_000  # CIFAR: 8 stages of 25k
    assert make(total_steps=1000, stage_steps=7).stage(13) == 1
    with pytest.raises(ConfigError):
        make(weighting="nope")


# --- loss ------------------------------------------------------------------------------------

class GaussianConsistencyNet(nn.Module):
    """Raw net whose EDM-preconditioned output is f*(x, sigma) + delta h(x, sigma), where
    f*(x, sigma) = x s / sqrt(s^2 + sigma^2) is the exact consistency function of N(0, s^2) data
    (boundary at sigma = 0) and h = x sigma / (1 + sigma) a perturbation."""

    def __init__(self, s: float, delta: float = 0.0):
        super().__init__()
        self.s = s
        self.delta = nn.Parameter(torch.tensor(delta, dtype=torch.float64))

    def forward(self, x_in, c):
        sigma = (4 * c).exp()[:, None]
        x = x_in / c_in(sigma)
        f = x * self.s / torch.sqrt(self.s**2 + sigma**2) + self.delta * x * sigma / (1 + sigma)
        return (f - c_skip(sigma) * x) / c_out(sigma)


def test_training_signal_vanishes_at_the_gaussian_consistency_function():
    """The ECT loss is not ~0 at f* (x_t and x_r share eps, so they are not on one ODE trajectory;
    with weight 1/(t - r) the loss stays O(1)). Its training signal is: the target is stop-grad, and
    E[f*(x_r, r) | x_t] = f*(Euler step of x_t) = f*(x_t, t) + O(dt^2), so the semi-gradient at f*
    is O(dt) while at a perturbed f it grows like 1/dt. Checked at stage 6 (dt/t <= 5/128)."""
    s = 0.5
    m = make(total_steps=100, data_shape=(1,), stage_steps=1)
    x0 = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * s
    grads, losses = [], []
    for delta in (0.0, 0.05):
        net = GaussianConsistencyNet(s, delta)
        loss = m.loss(net, x0, 6, torch.Generator().manual_seed(1)).mean()
        loss.backward()
        grads.append(abs(net.delta.grad.item()))
        losses.append(loss.item())
    assert losses[0] > 0.3  # the loss value itself does not vanish
    assert grads[0] < 0.02 * grads[1], grads


def test_stage_zero_small_t_target_is_the_data():
    """r = 0 below ln 7 at stage 0: the loss is a (pseudo-Huber) denoising loss against x0."""
    m = make(p_mean=math.log(0.5), p_std=0.0, c=0.03, data_shape=(2,))
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1)
    x0 = torch.randn(16, 2)
    loss = m.loss(net, x0, 0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = (torch.randn(16, generator=g) * 0.0 + math.log(0.5)).exp()
    eps = torch.randn(x0.shape, generator=g)
    d = ((edm_denoise(net, x0 + t[:, None] * eps, t) - x0) ** 2).sum(1)
    torch.testing.assert_close(loss, (torch.sqrt(d + 0.03**2) - 0.03) / t)


def test_shared_dropout_mask_makes_nearby_passes_agree():
    """With r ~ t (q = 1e6) the online and target passes share one dropout mask, so
    ||f_t - f_r|| = loss * (t - r) is tiny; two independent masks differ by O(1e-1)."""
    torch.manual_seed(0)
    net = MLP(2, hidden=64, depth=2, dropout=0.5).train()
    x0 = torch.randn(256, 2)
    m = make(q=1e6, p_mean=0.0, p_std=0.5)
    loss = m.loss(net, x0, 0, torch.Generator().manual_seed(0))
    t = (torch.randn(256, generator=torch.Generator().manual_seed(0)) * 0.5).exp()  # the loss's t draw
    dist = loss * (t - t_to_r(t, 0, q=1e6))
    x, one = x0 + torch.randn_like(x0), torch.ones(256)
    independent = (edm_denoise(net, x, one) - edm_denoise(net, x, one)).norm(dim=1)
    assert independent.mean() > 1e-2
    assert dist.mean() < 1e-3 * independent.mean()


# --- sampler -------------------------------------------------------------------------------

def test_sampler_times_and_nfe_equal_counted_calls():
    m = make()
    assert m.times(1) == [80.0, 0.0]
    assert m.times(2) == [80.0, 0.821, 0.0]
    karras = karras_sigmas(4, 0.003, 80.0, 7.0, append_zero=False)[1:-1].tolist()
    assert m.times(3) == [80.0, *karras, 0.0]
    torch.manual_seed(0)
    net = CountingNet(MLP(2, hidden=16, depth=1).eval())
    for steps in (1, 2, 3, 4):
        net.calls = 0
        out = m.sample(net, torch.randn(8, 2), steps)
        assert net.calls == m.nfe(steps) == steps and out.shape == (8, 2)


# --- training on the 2-D mixture -----------------------------------------------------------

def test_ect_from_exact_edm_gives_one_step_samples_near_the_mixture():
    """Measured (seed 0): FD of 1-step samples 0.50 before tuning (the denoiser at sigma = 80 is the
    data mean), ~0.025 after 300 steps; bound 0.1."""
    gmm = GMM.make(dim=2, components=8)
    data = gmm.sample(20000, torch.Generator().manual_seed(0)).float()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    net = ExactPlusResidual(gmm)
    m = ECT(total_steps=300, data_shape=(2,), stage_steps=50)
    before = frechet_to_gmm(m.sample(net.eval(), noise, 1).numpy(), gmm)
    _, ema = fit(m, net.train(), data, steps=300, batch=128, lr=3e-3, ema_decay=0.95)
    torch.manual_seed(2)
    after = frechet_to_gmm(m.sample(ema, noise, 1).numpy(), gmm)
    assert before > 0.3
    assert after < 0.1, after


@pytest.mark.slow
def test_ect_from_prefitted_edm_mlp_gives_good_one_and_two_step_samples():
    """Full recipe: fit an MLP as EDM, copy it (init_from_teacher), tune with ECT. Measured: EDM
    Heun-18 FD 0.001; EDM as 1-step 0.45; ECT 1500 steps: 1-step 0.005, 2-step 0.0005. Bounds 0.05."""
    from methods.edm import EDM

    gmm = GMM.make(dim=2, components=8)
    data = gmm.sample(20000, torch.Generator().manual_seed(0)).float()
    noise = torch.randn(5000, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    edm = EDM(total_steps=1500, data_shape=(2,))
    _, teacher = fit(edm, MLP(2, hidden=64, depth=2), data, steps=1500, batch=256, lr=2e-3,
                     ema_halflife_images=20000)
    m = ECT(total_steps=1500, data_shape=(2,), stage_steps=250)
    _, ema = fit(m, MLP(2, hidden=64, depth=2), data, steps=1500, batch=256, lr=1e-3, ema_decay=0.99,
                 teacher=teacher)  # init_from_teacher copies the EDM weights
    torch.manual_seed(2)
    assert frechet_to_gmm(m.sample(ema, noise, 1).numpy(), gmm) < 0.05
    assert frechet_to_gmm(m.sample(ema, noise, 2).numpy(), gmm) < 0.05
