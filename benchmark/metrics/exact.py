"""Exact metrics for toy (vector) data whose distribution is known in closed form (DESIGN §5).

For a Gaussian mixture we know the true mean/covariance, the components and the exact denoiser,
so sample quality can be measured without any learned feature extractor: the Fréchet distance
to the true moments, the sliced 2-Wasserstein distance to held-out data, which modes are hit,
and how far a learned denoiser is from E[x0 | x_sigma].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from scipy import linalg, special

from benchmark.data.gmm import GMM


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), in float64 (Dowson & Landau 1982).

    The one FD formula this project uses for its own computations; library FIDs come from
    torch-fidelity / clean-fid and are cross-checked against it in tests. A tiny diagonal
    offset is added only if the product is numerically singular (sqrtm returns non-finite)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-10 * max(np.trace(s1), np.trace(s2), 1.0)
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def moments(x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and unbiased covariance in float64 (the convention both FID libraries use)."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def fd_to_gaussian(samples, mean, cov) -> float:
    """FD between the samples' moments and the true moments (e.g. GMM.mean(), GMM.cov())."""
    mu, sigma = moments(samples)
    return frechet_distance(mu, sigma, np.asarray(mean, np.float64), np.asarray(cov, np.float64))


def _w2sq_1d_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact squared W2 between empirical 1-D distributions, per row; a [P, n], b [P, m] sorted.

    Quantile functions are piecewise constant with breaks at i/n and j/m; integrating their
    squared difference over the merged breakpoints is exact for any n, m."""
    n, m = a.shape[1], b.shape[1]
    t = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid, w = (t[:-1] + t[1:]) / 2, np.diff(t)
    ia, ib = np.minimum((mid * n).astype(int), n - 1), np.minimum((mid * m).astype(int), m - 1)
    return ((a[:, ia] - b[:, ib]) ** 2 * w).sum(1)


def sliced_wasserstein2(x, y, n_proj: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance: sqrt(E_theta W2^2(theta·x, theta·y)), theta uniform on the
    sphere (Rabin et al. 2011), Monte Carlo over `n_proj` directions; exact per direction."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need [N, D] arrays of equal D, got {x.shape} and {y.shape}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(n_proj, x.shape[1], generator=g, dtype=torch.float64).numpy()
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    px, py = np.sort(theta @ x.T, axis=1), np.sort(theta @ y.T, axis=1)
    return float(np.sqrt(_w2sq_1d_sorted(px, py).mean()))


def chi2_quantile(q: float, dim: int) -> float:
    """Quantile of the chi-squared law with `dim` degrees of freedom: chi2_D = 2 Gamma(D/2, 1), so
    its quantile is 2 P^-1(D/2, q) with P the regularised lower incomplete gamma (scipy.special;
    scipy.stats would cost a second of import in every evaluation job)."""
    return float(2 * special.gammaincinv(dim / 2, q))


def mode_coverage(samples, gmm: GMM, min_share: float = 0.1, quantile: float = 0.9973) -> dict:
    """Which mixture components the samples reach, and how many samples are "good".

    Each sample goes to its most probable component at sigma = 0. A component is covered if it
    receives at least `min_share` of its expected count n·pi_k. A sample is good if it lies
    inside the `quantile` ellipsoid of its component (||x - mu_k||^2 <= s_k^2 chi2_D(quantile);
    0.9973 is the "3 std" mass in any dimension), so true samples score ≈ `quantile`."""
    x = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    k = gmm.posterior(x, torch.zeros(())).argmax(1)
    counts = torch.bincount(k, minlength=len(gmm.weights)).double()
    covered = counts >= min_share * len(x) * gmm.weights
    d2 = ((x - gmm.means[k]) ** 2).sum(1)
    good = d2 <= gmm.stds[k] ** 2 * chi2_quantile(quantile, gmm.dim)
    return {"coverage": float(covered.double().mean()), "good_fraction": float(good.double().mean()),
            "counts": counts.long().tolist()}


def denoiser_mse(denoise_fn: Callable[..., torch.Tensor], gmm: GMM,
                 sigmas: Iterable[float], n: int, generator: torch.Generator,
                 conditional: bool = False) -> dict[float, float]:
    """Mean squared error (per coordinate) of `denoise_fn(x, sigma)` against the exact
    D*(x; sigma) = E[x0 | x] on fresh x = x0 + sigma·noise, x0 ~ gmm: how far a learned
    denoiser is from the optimum at each noise level, independent of sampler error.
    conditional: `denoise_fn(x, sigma, labels)` against E[x0 | x, k], x0's component k as its class."""
    out = {}
    for sigma in sigmas:
        x0, k = gmm.sample_labeled(n, generator)
        y = torch.nn.functional.one_hot(k, len(gmm.weights)).float() if conditional else None
        x = (x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)).float()
        s = torch.full((n,), float(sigma))
        with torch.no_grad():
            d = denoise_fn(x, s) if y is None else denoise_fn(x, s, y)
            err = d.double() - gmm.denoise(x.double(), s.double(), y)
        out[float(sigma)] = float((err**2).mean())
    return out
