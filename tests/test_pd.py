"""Progressive Distillation: schedule, parameterisations, the two-step target, and a trained round."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingNet
from torch import Tensor, nn

from benchmark.data.gmm import GMM, ExactDenoiserNet
from benchmark.diffusion import ddim_sample_logsnr, ddim_step, vp_logsnr_alpha_sigma
from benchmark.errors import ConfigError
from benchmark.nets.mlp import MLP
from benchmark.train_step import fit
from methods.base import build_method
from methods.progressive_distillation import (
    ProgressiveDistillation,
    eps_from_x,
    logsnr_cosine,
    t_from_logsnr,
    v_from_x_eps,
    x_from_eps,
    x_from_v,
)

torch.set_num_threads(1)
F64 = torch.float64


def make_pd(**kw) -> ProgressiveDistillation:
    return ProgressiveDistillation(total_steps=10, data_shape=(kw.pop("dim", 2),), **kw)


def gaussian_1d(mu: float = 0.3, s: float = 0.4) -> GMM:
    """N(mu, s^2) as a one-component GMM, so ExactDenoiserNet gives its exact EDM teacher."""
    return GMM(torch.tensor([[mu]], dtype=F64), torch.tensor([s], dtype=F64), torch.tensor([1.0], dtype=F64))


def gaussian_posterior_mean(z: Tensor, logsnr: Tensor, mu: float, s: float) -> Tensor:
    """E[x | z_t] for x ~ N(mu, s^2), z_t = alpha x + sigma eps (spec §1.8.2)."""
    a, sg = (v[:, None] for v in vp_logsnr_alpha_sigma(logsnr))
    return mu + a * s**2 / (a**2 * s**2 + sg**2) * (z - a * mu)


class ClosedFormStudent(nn.Module):
    """A 'pd' raw net (mean_type 'x') whose output is exactly the round's target x_tilde.

    It recovers z_t and t from the raw inputs (c_in z, -lambda/8), so it is the optimum of the
    round's loss: a perfectly trained student."""

    def __init__(self, method: ProgressiveDistillation, teacher: nn.Module):
        super().__init__()
        self.method, self.teacher = method, teacher

    def forward(self, x_in: Tensor, c: Tensor) -> Tensor:
        m = self.method
        lam = -8 * c
        a, sg = (v[:, None] for v in vp_logsnr_alpha_sigma(lam))
        z = x_in * ((a * m.sigma_data) ** 2 + sg**2).sqrt()
        i = (t_from_logsnr(lam) * m.student_steps).round().long() - 1
        return m.target(self.teacher, z, i)


# --- schedule and algebra -----------------------------------------------------------------------

def test_cosine_logsnr_endpoints_and_variance_preserving():
    t = torch.linspace(0, 1, 101, dtype=F64)
    lam = logsnr_cosine(t)
    assert abs(lam[0].item() - 20) < 1e-5 and abs(lam[-1].item() + 20) < 1e-5
    assert (lam[1:] < lam[:-1]).all()  # monotone decreasing
    a, s = vp_logsnr_alpha_sigma(lam)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-12)
    torch.testing.assert_close(t_from_logsnr(lam), t, rtol=0, atol=1e-10)


def test_v_x_eps_conversions_round_trip_exactly():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(64, 3, generator=g, dtype=F64), torch.randn(64, 3, generator=g, dtype=F64)
    a, s = (v[:, None] for v in vp_logsnr_alpha_sigma(torch.linspace(-8, 8, 64, dtype=F64)))
    z = a * x + s * eps
    v = v_from_x_eps(x, eps, a, s)
    pairs = [(x_from_v(z, v, a, s), x), (x_from_eps(z, eps, a, s), x), (eps_from_x(z, x, a, s), eps)]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_truncated_snr_weight_equals_max_of_x_and_eps_mse():
    """eps_mse == SNR x_mse, v_mse == (1+SNR) x_mse, snr_trunc == max(SNR,1) x_mse per example."""
    from methods.progressive_distillation import loss_weight

    g = torch.Generator().manual_seed(1)
    x, x_hat, eps = (torch.randn(32, 5, generator=g, dtype=F64) for _ in range(3))
    lam = torch.linspace(-10, 10, 32, dtype=F64)
    a, s = (v[:, None] for v in vp_logsnr_alpha_sigma(lam))
    z = a * x + s * eps
    e_hat, e = eps_from_x(z, x_hat, a, s), eps_from_x(z, x, a, s)
    x_mse = (x_hat - x).pow(2).mean(1)
    eps_mse = (e_hat - e).pow(2).mean(1)
    v_mse = (v_from_x_eps(x_hat, e_hat, a, s) - v_from_x_eps(x, e, a, s)).pow(2).mean(1)
    snr = lam.exp()
    torch.testing.assert_close(eps_mse, snr * x_mse, rtol=1e-10, atol=0)
    torch.testing.assert_close(v_mse, loss_weight(lam, "v_mse") * x_mse, rtol=1e-10, atol=0)
    torch.testing.assert_close(loss_weight(lam, "snr_trunc") * x_mse, torch.maximum(x_mse, eps_mse),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(loss_weight(lam, "snr_trunc"), snr.clamp(min=1))


@pytest.mark.parametrize("mean_type", ["edm", "v", "x"])
def test_one_student_step_on_target_reproduces_two_teacher_steps(mean_type):
    """PD Alg. 2: DDIM t -> t'' with x_hat = x_tilde lands on the teacher's z_{t''} (fp64, 1e-5)."""
    torch.manual_seed(0)
    n = 4
    m = make_pd(dim=3, student_steps=n, teacher_kind="pd", mean_type=mean_type)
    teacher = MLP(3, hidden=32, depth=2).double().eval()
    g = torch.Generator().manual_seed(2)
    i = torch.tensor([1, 2, 3, 3, 2, 1], dtype=torch.long)
    z_t = torch.randn(len(i), 3, generator=g, dtype=F64)
    t = (i + 1).double() / n
    lam_t, lam_m, lam_s = logsnr_cosine(t), logsnr_cosine(t - 0.5 / n), logsnr_cosine(t - 1.0 / n)
    (a_t, s_t), (a_m, s_m), (a_s, s_s) = ([v[:, None] for v in vp_logsnr_alpha_sigma(lam)]
                                          for lam in (lam_t, lam_m, lam_s))
    with torch.no_grad():  # the teacher's two DDIM steps, written out independently
        z_mid = ddim_step(z_t, m.predict_x(teacher, z_t, lam_t), a_t, s_t, a_m, s_m)
        z_teacher = ddim_step(z_mid, m.predict_x(teacher, z_mid, lam_m), a_m, s_m, a_s, s_s)
    x_tilde = m.target(teacher, z_t, i)
    z_student = ddim_step(z_t, x_tilde, a_t, s_t, a_s, s_s)
    assert (z_student - z_teacher).abs().max().item() < 1e-5


def test_target_at_last_step_is_teachers_second_x_prediction():
    """i == 0: x_tilde = the teacher's x at t' = 1/(2N) (no division by a degenerate denominator)."""
    n = 2
    m = make_pd(dim=3, student_steps=n, teacher_kind="pd", mean_type="v")
    torch.manual_seed(0)
    teacher = MLP(3, hidden=32, depth=2).double().eval()
    z_t = torch.randn(5, 3, dtype=F64)
    lam_t, lam_m = (logsnr_cosine(torch.full((5,), v, dtype=F64)) for v in (1 / n, 0.5 / n))
    (a_t, s_t), (a_m, s_m) = ([v[:, None] for v in vp_logsnr_alpha_sigma(lam)] for lam in (lam_t, lam_m))
    with torch.no_grad():
        z_mid = ddim_step(z_t, m.predict_x(teacher, z_t, lam_t), a_t, s_t, a_m, s_m)
        x2 = m.predict_x(teacher, z_mid, lam_m)
    x_tilde = m.target(teacher, z_t, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(x_tilde, x2, rtol=0, atol=1e-12)


# --- the EDM teacher and the 1-D Gaussian closed form ------------------------------------------

def test_edm_teacher_is_the_gaussian_posterior_mean_in_vp_coordinates():
    """x_hat = D(z/alpha; sigma/alpha) with the exact EDM denoiser equals E[x | z_t], t in [0, 1]."""
    mu, s = 0.3, 0.4
    m = make_pd(dim=1, teacher_kind="edm")
    t = torch.linspace(0, 1, 33, dtype=F64)
    lam = logsnr_cosine(t)
    z = torch.randn(33, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    got = m.teacher_x(ExactDenoiserNet(gaussian_1d(mu, s)), z, lam)
    torch.testing.assert_close(got, gaussian_posterior_mean(z, lam, mu, s), rtol=1e-9, atol=1e-9)


def test_edm_student_equals_edm_teacher_at_initialisation():
    """mean_type='edm': a student holding the teacher's weights predicts the teacher's x exactly."""
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1).double().eval()
    m = make_pd(teacher_kind="edm", mean_type="edm")
    assert m.init_from_teacher and not make_pd(teacher_kind="edm", mean_type="v").init_from_teacher
    z, lam = torch.randn(8, 2, dtype=F64), torch.linspace(-20, 20, 8, dtype=F64)
    torch.testing.assert_close(m.predict_x(net, z, lam), m.teacher_x(net, z, lam), rtol=0, atol=1e-12)


def test_closed_form_rounds_8_to_1_reproduce_the_8_step_teacher():
    """Perfect students (x_hat = x_tilde) chained 8 -> 4 -> 2 -> 1 from the exact EDM teacher: the
    1-step student's map equals the teacher's 8-step DDIM map (spec §1.8.2), hence same mean/var."""
    mu, s = 0.3, 0.4
    exact = ExactDenoiserNet(gaussian_1d(mu, s))
    noise = torch.randn(256, 1, generator=torch.Generator().manual_seed(4), dtype=F64)
    m1 = make_pd(dim=1, student_steps=4, teacher_kind="edm", mean_type="x")
    teacher_out = ddim_sample_logsnr(lambda z, lam: m1.teacher_x(exact, z, lam), noise,
                              logsnr_cosine(torch.arange(9, dtype=F64) / 8))
    student, method = ClosedFormStudent(m1, exact), m1
    for n in (2, 1):
        method = make_pd(dim=1, student_steps=n, teacher_kind="pd", mean_type="x")
        student = ClosedFormStudent(method, student)
    torch.testing.assert_close(method.sample(student, noise, 1), teacher_out, rtol=0, atol=1e-9)
    # the teacher's 8-step map is affine and close to the exact flow: output moments ~ N(mu, s^2)
    assert abs(teacher_out.mean().item() - mu) < 0.1 and abs(teacher_out.std().item() - s) < 0.1


def test_trained_student_one_step_matches_two_teacher_steps():
    """Round N=2 from the exact EDM teacher of N(0.3, 0.4^2): after 300 Adam steps the student's
    2-step DDIM output matches the teacher's 4-step output. Measured RMS 0.0023 (tolerance 0.02);
    for scale: teacher 2-step vs 4-step RMS 0.11, untrained student 0.21."""
    torch.manual_seed(0)
    mu, s = 0.3, 0.4
    exact = ExactDenoiserNet(gaussian_1d(mu, s))
    m = make_pd(dim=1, student_steps=2, teacher_kind="edm", mean_type="edm", init_from_teacher=False)
    data = gaussian_1d(mu, s).sample(4096, torch.Generator().manual_seed(5)).float()
    net, _ = fit(m, MLP(1, hidden=32, depth=2), data, steps=300, batch=256, lr=3e-3, teacher=exact)
    noise = torch.randn(2048, 1, generator=torch.Generator().manual_seed(6))
    teacher_out = ddim_sample_logsnr(lambda z, lam: m.teacher_x(exact, z, lam), noise,
                              logsnr_cosine(torch.arange(5, dtype=torch.float32) / 4))
    rms = (m.sample(net.eval(), noise, 2) - teacher_out).pow(2).mean().sqrt().item()
    assert rms < 0.02, rms


# --- protocol -----------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_nfe_equals_counted_network_calls(steps):
    m = make_pd(student_steps=steps)
    net = CountingNet(MLP(2, hidden=8, depth=1))
    m.sample(net, torch.randn(4, 2), steps)
    assert net.calls == m.nfe(steps) == steps


def test_check_steps_rejects_other_budgets_and_bad_config():
    m = make_pd(student_steps=4)
    m.check_steps(4)
    for bad in (1, 2, 8):
        with pytest.raises(ConfigError):
            m.check_steps(bad)
    with pytest.raises(ConfigError):
        make_pd(teacher_kind="ddpm")
    with pytest.raises(ConfigError):
        build_method("pd", {"student_step": 2}, total_steps=1, data_shape=(2,))
    assert isinstance(build_method("pd", {"student_steps": 2}, total_steps=1, data_shape=(2,)),
                      ProgressiveDistillation)
