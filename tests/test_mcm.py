"""Multistep Consistency Models (methods/multistep_consistency.py): DDIM algebra, segment bookkeeping,
the CM (S = 1) and diffusion (S = T_d) limits, the exact Gaussian segment map, sampler NFE."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingNet, ExactPlusResidual, frechet_to_gmm
from torch import nn

from benchmark.data.gmm import GMM, ExactDenoiserNet
from benchmark.diffusion import c_in, c_out, c_skip, ddim_step, edm_denoise, inverse_ddim
from benchmark.errors import ConfigError
from benchmark.nets.mlp import MLP
from methods.multistep_consistency import (
    MultistepConsistency,
    MultistepConsistencyDistillation,
    MultistepConsistencyTraining,
    addim_step,
)

torch.set_num_threads(1)
S0 = 0.5  # std of the 1-component "mixture" N(0, S0^2 I)


def mcd(segments: int, T_d: int = 64, **kw) -> MultistepConsistencyDistillation:
    m = MultistepConsistencyDistillation(total_steps=1, data_shape=(2,), segments=segments, T_d=T_d, **kw)
    m.setup(None, ExactDenoiserNet(GMM.make(dim=2, components=1, radius=0.0, std=S0)))
    return m


class ExactSegmentNet(nn.Module):
    """Raw net whose MCM output f(z_t, t) is the exact segment map of N(0, s^2) data, times (1 + delta):
    the x for which DDIM_{t -> t_step}(z_t, x) lands on the probability-flow ODE solution at t_step.
    For Gaussian data the ODE is linear in VE units: x(sigma) ∝ sqrt(s^2 + sigma^2)."""

    def __init__(self, m: MultistepConsistency, s: float, delta: float = 0.0):
        super().__init__()
        self.m, self.s, self.delta = m, s, delta

    def forward(self, x_in, c):
        m, s = self.m, self.s
        sig = (4 * c.double()).exp()[:, None]  # sigma_VE
        x = x_in.double() / c_in(sig)  # z_t / alpha_t
        t = m.t_from_ve_sigma(sig[:, 0])
        u = m.segment_start(torch.round(t * m.T_d)).double()
        (a_t, s_t), (a_u, s_u) = m.vp(t, 2), m.vp(u, 2)
        z_u = a_u * x * torch.sqrt(s**2 + (s_u / a_u) ** 2) / torch.sqrt(s**2 + sig**2)  # exact ODE map
        f = inverse_ddim(z_u, a_t * x, a_t, s_t, a_u, s_u) * (1 + self.delta)
        return ((f - c_skip(sig) * x) / c_out(sig)).to(x_in.dtype)


# --- DDIM algebra ---------------------------------------------------------------------------

def test_ddim_inverse_ddim_round_trip():
    m = mcd(4)
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(64, 3, generator=g, dtype=torch.float64)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.1
    s = t * torch.rand(64, generator=g, dtype=torch.float64)
    (a_t, s_t), (a_s, s_s) = m.vp(t, 2), m.vp(s, 2)
    z_s = ddim_step(z_t, x, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(inverse_ddim(z_s, z_t, a_t, s_t, a_s, s_s), x, rtol=1e-9, atol=1e-9)


def test_addim_with_zero_variance_is_ddim_and_positive_variance_inflates_noise():
    m = mcd(4)
    g = torch.Generator().manual_seed(1)
    z_t, x = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g) * 0.1
    (a_t, s_t), (a_s, s_s) = m.vp(torch.full((16,), 0.7), 2), m.vp(torch.full((16,), 0.4), 2)
    ddim = ddim_step(z_t, x, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(addim_step(z_t, x, 0.0, a_t, s_t, a_s, s_s), ddim, rtol=0, atol=0)
    inflated = addim_step(z_t, x, 0.05, a_t, s_t, a_s, s_s)
    assert torch.all((inflated - a_s * x).norm(dim=1) > (ddim - a_s * x).norm(dim=1))


# --- segments -------------------------------------------------------------------------------

def test_segment_start_partitions_time_so_that_s_stays_in_segment():
    for S in (1, 2, 4, 8, 16):
        m = mcd(S, T_d=64)
        i = torch.arange(1, 65)
        t, s, u = i / 64, (i - 1) / 64, m.segment_start(i)
        assert torch.all(u <= s + 1e-12) and torch.all(t - u <= 1 / S + 1e-12)
        assert torch.equal(u * S, torch.round(u * S))  # on the segment grid
    assert torch.all(mcd(1).segment_start(torch.arange(1, 65)) == 0)  # S = 1: t_step = 0 (CM)


def test_one_segment_target_is_the_consistency_model_target():
    """S = 1: z_ref = DDIM_{s->0} = x_ref and x_diff = invDDIM_{t->0}(x_ref, z_t) = x_ref = f(z_s, s)."""
    torch.manual_seed(0)
    m = MultistepConsistencyTraining(total_steps=1, data_shape=(2,), segments=1, T_d=32)
    net = MLP(2, hidden=16, depth=1)
    x0 = torch.randn(128, 2, dtype=torch.float64) * S0
    net = net.double()
    z_t, t, t_step, x_diff = m.targets(net, x0, torch.Generator().manual_seed(0))
    i = torch.round(t * 32)
    s = (i - 1) / 32
    (a_t, s_t), (a_s, s_s) = m.vp(t, 2), m.vp(s, 2)
    z_s = ddim_step(z_t, x0, a_t, s_t, a_s, s_s)  # MCT: the data as x_teacher
    interior = s > 0
    cm_target = m.f(net, z_s[interior], s[interior])
    torch.testing.assert_close(x_diff[interior], cm_target, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_diff[~interior], x0[~interior], rtol=1e-10, atol=1e-10)  # s = 0: z_s = x
    assert torch.all(t_step == 0)


def test_every_step_a_segment_start_gives_the_teacher_diffusion_target():
    """S = T_d (the diffusion limit): s is always a segment start, so x_diff is the teacher's x."""
    m = mcd(16, T_d=16)
    x0 = torch.randn(64, 2, dtype=torch.float64) * S0
    z_t, t, _, x_diff = m.targets(MLP(2, hidden=8, depth=1).double(), x0, torch.Generator().manual_seed(0))
    alpha, sigma = m.schedule(t)
    teacher = edm_denoise(m.teacher_net, z_t / alpha[:, None], sigma / alpha)
    torch.testing.assert_close(x_diff, teacher, rtol=1e-9, atol=1e-9)


# --- the exact Gaussian segment map ---------------------------------------------------------

@pytest.mark.parametrize("segments", [1, 2, 8])
def test_mcd_loss_vanishes_at_the_exact_gaussian_segment_map(segments):
    """The teacher's DDIM step t -> s = t - 1/T_d has local error O(1/T_d^2), so with f = exact segment
    map the loss is O(T_d^-4) (measured S=8: 3e-6 at T_d=64, 8e-10 at 1024); a 5% perturbation of f
    gives 1e-5..1e-6. Checked: exact < 1e-3 x perturbed at T_d=1024 and >= 16x decay from 256 to 1024."""
    x0 = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * S0
    losses = {}
    for T_d in (256, 1024):
        m = mcd(segments, T_d=T_d)
        for delta in (0.0, 0.05):
            losses[T_d, delta] = m.loss(ExactSegmentNet(m, S0, delta), x0, 0,
                                        torch.Generator().manual_seed(1)).mean().item()
    assert losses[1024, 0.0] < 1e-3 * losses[1024, 0.05]
    assert losses[1024, 0.0] < losses[256, 0.0] / 16


@pytest.mark.parametrize("segments", [1, 2, 4])
def test_sampler_with_exact_segment_map_follows_the_ode_exactly(segments):
    """DDIM with the exact segment map lands on the ODE at every segment start, so the sample is
    x_VE(sigma_max) * s / sqrt(s^2 + sigma_max^2) with x_VE(sigma_max) = sigma_max * noise."""
    m = mcd(segments, T_d=64)
    noise = torch.randn(32, 2, dtype=torch.float64)
    out = m.sample(ExactSegmentNet(m, S0), noise, segments)
    torch.testing.assert_close(out, 80 * noise * S0 / (S0**2 + 80**2) ** 0.5, rtol=1e-9, atol=1e-12)


# --- sampler bookkeeping ----------------------------------------------------------------------

def test_nfe_equals_counted_calls_and_budgets_are_multiples_of_segments():
    torch.manual_seed(0)
    net = CountingNet(MLP(2, hidden=16, depth=1).eval())
    for S in (1, 2, 4):
        for steps in (S, 2 * S):
            for sampler in ("ddim", "addim"):
                m = mcd(S, sampler=sampler)
                net.calls = 0
                out = m.sample(net, torch.randn(8, 2), steps)
                assert net.calls == m.nfe(steps) == steps and out.isfinite().all()
    with pytest.raises(ConfigError):
        mcd(4).check_steps(2)
    with pytest.raises(ConfigError):
        mcd(3, T_d=64)  # T_d must be a multiple of S


# --- training on the 2-D mixture -------------------------------------------------------------

def test_mcd_two_segments_from_the_exact_teacher_gives_good_two_step_samples():
    """Measured (seed 0, 300 steps): FD of 2-step samples 0.17 at init (the teacher used as a 2-step DDIM
    sampler), 0.0035 after MCD with 'zspace' weighting ('snrpk' 0.058, 'uniform' 0.068); bound 0.03."""
    from benchmark.train_step import fit

    gmm = GMM.make(dim=2, components=8)
    data = gmm.sample(20000, torch.Generator().manual_seed(0)).float()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))

    torch.manual_seed(0)
    net = ExactPlusResidual(gmm)
    m = MultistepConsistencyDistillation(total_steps=300, data_shape=(2,), segments=2, T_d=64, weighting="zspace")
    m.init_from_teacher = False  # the student is not the teacher's architecture; it starts equal to it
    before = frechet_to_gmm(m.sample(net.eval(), noise, 2).numpy(), gmm)
    _, ema = fit(m, net.train(), data, steps=300, batch=128, lr=3e-3, ema_decay=0.95,
                 teacher=ExactDenoiserNet(gmm))
    after = frechet_to_gmm(m.sample(ema, noise, 2).numpy(), gmm)
    assert before > 0.1
    assert after < 0.03, after


# --- the paper's recipe pieces (MCM App. A.1, Sec. 3.2) ---------------------------------------

def test_teacher_steps_anneal_log_linearly_from_64_to_1280_over_100k_iterations():
    """App. A.1: N_teacher(i) = exp(log 64 + clip(i / 100000, 0, 1) (log 1280 - log 64)); Algorithm 1
    rounds N_teacher / student_steps to whole steps per segment."""
    from methods.mcm_schedule import grid_size, teacher_steps

    assert teacher_steps(0, 64, 1280, 100_000) == pytest.approx(64)
    assert teacher_steps(50_000, 64, 1280, 100_000) == pytest.approx((64 * 1280) ** 0.5)  # geometric midpoint
    assert teacher_steps(100_000, 64, 1280, 100_000) == pytest.approx(1280)
    assert teacher_steps(250_000, 64, 1280, 100_000) == pytest.approx(1280)  # clipped after the anneal
    for S in (1, 2, 4, 8, 16):
        sizes = [grid_size(i, S, 1280, 64, 100_000) for i in range(0, 200_001, 5_000)]
        assert all(T % S == 0 for T in sizes) and sizes == sorted(sizes)
        assert sizes[0] == 64 and sizes[-1] == 1280  # 64 and 1280 are multiples of every S <= 16
    assert grid_size(12_345, 8, 1280, 64, 100_000) == 8 * round(teacher_steps(12_345, 64, 1280, 100_000) / 8)
    assert grid_size(7, 8, 1024, None, 100_000) == 1024  # no T_d_start: the fixed grid


def test_annealed_training_draws_times_on_the_grid_of_its_own_step_so_resume_is_exact():
    m = MultistepConsistencyTraining(total_steps=1, data_shape=(2,), segments=4, T_d=1280, T_d_start=64)
    x0 = torch.randn(512, 2, dtype=torch.float64) * S0
    net = MLP(2, hidden=8, depth=1).double()
    for step in (0, 30_000, 100_000):
        T = m.grid(step)
        _, t, t_step, _ = m.targets(net, x0, torch.Generator().manual_seed(0), step=step)
        assert torch.allclose(t * T, torch.round(t * T)) and t.min() >= 1 / T
        assert torch.all(t - t_step <= 1 / 4 + 1e-12)
    fresh = MultistepConsistencyTraining(total_steps=1, data_shape=(2,), segments=4, T_d=1280, T_d_start=64)
    a = m.targets(net, x0, torch.Generator().manual_seed(3), step=41_000)
    b = fresh.targets(net, x0, torch.Generator().manual_seed(3), step=41_000)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # a pure function of (step, rng): resume is exact
    with pytest.raises(ConfigError, match="T_d_start"):
        MultistepConsistencyTraining(total_steps=1, data_shape=(2,), segments=4, T_d=64, T_d_start=128)


def test_addim_is_eq14_and_adds_exactly_the_conditional_variance_to_the_squared_norm():
    """Eq. 14: z_s = alpha_s x_hat + sqrt(sigma_s^2 + tr(Var[z_s|z_t]) / ||eps_hat||^2) eps_hat with
    tr(Var[z_s|z_t]) = (alpha_s - alpha_t sigma_s / sigma_t)^2 tr(Var[x|z_t]) (Eq. 13). With x_hat
    orthogonal to eps_hat (the paper's assumption) ||z_s||^2 exceeds the DDIM iterate's by that trace."""
    g = torch.Generator().manual_seed(5)
    B, d = 16, 12
    eps_hat = torch.randn(B, d, generator=g, dtype=torch.float64)
    x_hat = torch.randn(B, d, generator=g, dtype=torch.float64)
    x_hat -= (x_hat * eps_hat).sum(1, keepdim=True) / (eps_hat**2).sum(1, keepdim=True) * eps_hat  # x_hat ⟂ eps_hat
    a_t, s_t, a_s, s_s = (torch.tensor(v, dtype=torch.float64) for v in (0.6, 0.8, 0.9, 0.43588989435406733))
    z_t = a_t * x_hat + s_t * eps_hat
    x_var = torch.rand(B, 1, generator=g, dtype=torch.float64) * 0.2  # tr(Var[x|z_t]) / d per example
    trace = (a_s - a_t * s_s / s_t) ** 2 * x_var * d
    eq14 = a_s * x_hat + torch.sqrt(s_s**2 + trace / (eps_hat**2).sum(1, keepdim=True)) * eps_hat
    z_s = addim_step(z_t, x_hat, x_var, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(z_s, eq14, rtol=1e-12, atol=1e-12)
    gap = (z_s**2).sum(1, keepdim=True) - (ddim_step(z_t, x_hat, a_t, s_t, a_s, s_s) ** 2).sum(1, keepdim=True)
    torch.testing.assert_close(gap, trace, rtol=1e-10, atol=1e-12)


def test_analytic_posterior_variance_is_ten_percent_of_a_variance_half_prior():
    """Sec. 3.2: tr(Var[x|z_t]) / d = 0.1 / (2 + alpha^2 / sigma^2), i.e. 0.1 x the posterior variance
    (1/2 + SNR)^-1 of x under a factorised N(0, 0.5) prior; pure noise (SNR = 0) gives 0.05."""
    from methods.mcm_schedule import analytic_x_var

    alpha, sigma = torch.tensor([0.0, 0.6, 0.8]), torch.tensor([1.0, 0.8, 0.6])
    posterior = 1 / (1 / 0.5 + alpha**2 / sigma**2)
    torch.testing.assert_close(analytic_x_var(alpha, sigma), 0.1 * posterior)


def test_the_addim_teacher_step_uses_the_scaled_teacher_error_and_is_ddim_for_consistency_training():
    """Algorithm 1 / App. A.1: x_var = 0.75 ||x_teacher - x||^2 / d per example; for MCT x_teacher = x,
    so aDDIM is exactly DDIM there."""
    m = mcd(4, teacher_sampler="addim", xvar_frac=0.75)
    g = torch.Generator().manual_seed(2)
    x0, x_teach = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    z_t = torch.randn(8, 6, generator=g)
    t, s = torch.full((8,), 0.6), torch.full((8,), 0.55)
    (a_t, s_t), (a_s, s_s) = m.vp(t, 2), m.vp(s, 2)
    want = addim_step(z_t, x_teach, 0.75 * ((x_teach - x0) ** 2).mean(1, keepdim=True), a_t, s_t, a_s, s_s)
    torch.testing.assert_close(m.teacher_step(z_t, x_teach, x0, t, s), want)
    torch.testing.assert_close(m.teacher_step(z_t, x0, x0, t, s), ddim_step(z_t, x0, a_t, s_t, a_s, s_s))


def test_v_loss_weight_and_pseudo_huber_distance_follow_the_paper():
    """w = SNR(t) + 1 = 1 / sigma_t^2 in VP (Sec. 3.1: the v-loss); the l2 (not squared) distance with a
    huber epsilon c: sqrt(||d||^2 + c^2) - c on the RMS norm (App. A.1), -> |delta| for c << |delta|."""
    m = mcd(2, weighting="snrp1", loss_norm="pseudo-huber", huber_c=1e-4)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(m.weight(t, torch.zeros_like(t)), 1 / m.schedule(t)[1] ** 2)
    delta = torch.tensor([[0.3], [1e-5]], dtype=torch.float64).expand(2, 10)
    got = m.distance(torch.zeros_like(delta), delta)
    torch.testing.assert_close(got, torch.sqrt(delta[:, 0] ** 2 + 1e-8) - 1e-4)
    assert got[0] == pytest.approx(0.3, rel=1e-3)
    assert mcd(2).distance(torch.zeros_like(delta), delta)[0] == pytest.approx(0.09)  # default 'l2sq'
