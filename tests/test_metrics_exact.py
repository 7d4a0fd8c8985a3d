"""Exact toy-data metrics against independent computations and closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmark.data.gmm import GMM
from benchmark.metrics.exact import (
    denoiser_mse,
    fd_to_gaussian,
    frechet_distance,
    mode_coverage,
    sliced_wasserstein2,
)


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_eigh(mu1, s1, mu2, s2):
    """Independent: Tr (S1 S2)^{1/2} = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})), symmetric eigh only."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(w)) @ v.T
    ev = np.linalg.eigvalsh(r @ s2 @ r)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_frechet_distance_matches_independent_float64_computation_and_both_libraries():
    from cleanfid.fid import frechet_distance as cleanfid_fd
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    rng = np.random.default_rng(0)
    for d in (2, 16, 64):
        mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
        want = _fd_eigh(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)
        tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
        tf = tf[KEY_METRIC_FID]
        assert tf == pytest.approx(want, rel=1e-6)
        assert float(cleanfid_fd(mu1, s1, mu2, s2)) == pytest.approx(want, rel=1e-6)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    want = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-9)


def test_fd_to_true_moments_is_near_zero_for_true_samples_and_grows_with_a_shift():
    gmm = GMM.make(dim=2, components=8, seed=0)
    x = gmm.sample(20000, torch.Generator().manual_seed(1)).numpy()
    fd_true = fd_to_gaussian(x, gmm.mean(), gmm.cov())
    assert fd_true < 2e-3
    shift = np.array([0.3, 0.0])
    assert fd_to_gaussian(x + shift, gmm.mean(), gmm.cov()) == pytest.approx(0.09 + fd_true, abs=2e-3)


def test_sliced_w2_of_a_shift_equals_rms_projected_shift():
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((500, 5)), np.array([0.5, -1.0, 0.0, 2.0, 0.3])
    assert sliced_wasserstein2(x, x, 64, torch.Generator().manual_seed(3)) == pytest.approx(0.0, abs=1e-12)
    # W2 between a set and its translate along theta is |theta.c| exactly; same seed -> same theta
    theta = torch.randn(64, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    want = np.sqrt(((theta @ c) ** 2).mean())
    got = sliced_wasserstein2(x, x + c, 64, torch.Generator().manual_seed(3))
    assert got == pytest.approx(want, rel=1e-9)


def test_sliced_w2_with_unequal_sizes_matches_a_fine_quantile_integral():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 1)), rng.standard_normal((11, 1)) + 0.5
    t = (np.arange(200000) + 0.5) / 200000  # 1-D: W2^2 = int_0^1 (Fx^-1(t) - Fy^-1(t))^2 dt
    qx, qy = np.sort(x[:, 0])[(t * 7).astype(int)], np.sort(y[:, 0])[(t * 11).astype(int)]
    want = np.sqrt(((qx - qy) ** 2).mean())
    assert sliced_wasserstein2(x, y, 4, torch.Generator().manual_seed(0)) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.9973])
def test_chi2_quantile_matches_closed_forms(q):
    from benchmark.metrics.exact import chi2_quantile

    assert chi2_quantile(q, 2) == pytest.approx(-2 * math.log(1 - q), rel=1e-12)  # chi2_2 = Exp(1/2)
    z = math.sqrt(2) * float(torch.special.erfinv(torch.tensor(q, dtype=torch.float64)))  # P(|N| <= z) = q
    assert chi2_quantile(q, 1) == pytest.approx(z**2, rel=1e-9)  # chi2_1 = N(0, 1)^2


def test_mode_coverage_is_full_for_true_samples_and_one_eighth_for_a_collapsed_generator():
    gmm = GMM.make(dim=2, components=8, seed=0)
    x = gmm.sample(4000, torch.Generator().manual_seed(0)).numpy()
    full = mode_coverage(x, gmm)
    assert full["coverage"] == 1.0 and full["good_fraction"] == pytest.approx(0.9973, abs=0.005)
    one = gmm.means[0].numpy() + 0.05 * np.random.default_rng(0).standard_normal((4000, 2))
    assert mode_coverage(one, gmm)["coverage"] == pytest.approx(1 / 8)
    far = np.full((100, 2), 5.0)  # off every mode: assigned somewhere, but never "good"
    assert mode_coverage(far, gmm)["good_fraction"] == 0.0


def test_denoiser_mse_is_zero_for_the_exact_denoiser_and_equals_noise_for_identity():
    gmm = GMM.make(dim=2, components=4, seed=0)
    g = torch.Generator().manual_seed(0)
    exact = denoiser_mse(gmm.denoise, gmm, [0.1, 1.0], 2000, g)
    assert all(v < 1e-10 for v in exact.values())
    ident = denoiser_mse(lambda x, s: x, gmm, [1.0], 4000, g)
    assert 0.2 < ident[1.0] < 1.0  # < sigma^2 = 1 (the exact denoiser is better than no denoising)


def test_evaluate_vector_samples_writes_exact_rows_with_evaluator_tuple(tmp_path):
    from test_extractors import write_prepared

    from benchmark.metrics.evaluate import evaluate_samples

    params = {"dim": 2, "components": 8, "seed": 0, "n_train": 2000, "n_test": 2000}
    data = write_prepared(tmp_path / "gmm", "gmm", params)
    gmm = GMM.make(dim=2, components=8, seed=0)
    np.savez(tmp_path / "s.npz", samples=gmm.sample(2000, torch.Generator().manual_seed(7)).float().numpy())
    rows = evaluate_samples(tmp_path / "s.npz", data, tmp_path / "m.json", extractors=[], refs={}, seed=3)
    by = {r["metric"]: r for r in rows}
    assert {"fd_exact", "sw2", "mode_coverage", "good_fraction"} <= set(by)
    assert by["fd_exact"]["value"] < 0.01 and by["sw2"]["value"] < 0.05
    assert by["mode_coverage"]["value"] == 1.0
    for r in rows:
        assert set(r) == {"metric", "value", "extractor", "library", "mode", "ref_sha256", "num_samples",
                          "seed"}
        assert r["num_samples"] == 2000 and r["seed"] == 3 and r["ref_sha256"]
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["rows"] == rows and "git_commit" in written["provenance"]
