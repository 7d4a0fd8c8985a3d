"""A D-dimensional Gaussian mixture with known parameters, hence an exact denoiser.

p(x0) = sum_k pi_k N(mu_k, s_k^2 I). Under x = x0 + sigma n the posterior over components is
p(k|x) ∝ pi_k N(x; mu_k, (s_k^2 + sigma^2) I) and E[x0 | x, k] = mu_k + s_k^2/(s_k^2+sigma^2) (x - mu_k),
so D*(x; sigma) = sum_k p(k|x) E[x0|x,k] in closed form. This validates samplers and losses
independently of training (DESIGN §4). Each component is a class (labels k): the exact class-
conditional denoiser is the same formula with the weights pi replaced by the one-hot of k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GMM:
    means: Tensor  # [K, D] float64
    stds: Tensor  # [K]
    weights: Tensor  # [K], sums to 1

    @classmethod
    def make(cls, dim: int = 2, components: int = 8, radius: float = 0.7, std: float = 0.1,
             seed: int = 0) -> GMM:
        """Means on a circle (D = 2) or at random directions (D > 2), all at `radius`."""
        g = torch.Generator().manual_seed(seed)
        if dim == 2:
            ang = torch.arange(components, dtype=torch.float64) * 2 * math.pi / components
            means = torch.stack([ang.cos(), ang.sin()], 1) * radius
        else:
            v = torch.randn(components, dim, generator=g, dtype=torch.float64)
            means = v / v.norm(dim=1, keepdim=True) * radius
        stds = torch.full((components,), float(std), dtype=torch.float64)
        weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
        return cls(means, stds, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.sample_labeled(n, generator)[0]

    def sample_labeled(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n draws and their component (class) indices k."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z, k

    def class_weights(self, labels: Tensor | None) -> Tensor | None:
        """Per-example mixture weights: the one-hot of the class, or pi where the row is all zero."""
        if labels is None:
            return None
        lab = labels.double()
        return torch.where(lab.sum(1, keepdim=True) > 0, lab, self.weights[None])

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def cov(self) -> Tensor:
        """Exact covariance: sum_k pi_k (s_k^2 I + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = sum(w * (s**2 * torch.eye(self.dim, dtype=torch.float64) + torch.outer(mu, mu))
                     for w, mu, s in zip(self.weights, self.means, self.stds))
        return second - torch.outer(m, m)

    def posterior(self, x: Tensor, sigma: Tensor, weights: Tensor | None = None) -> Tensor:
        """p(k | x_sigma): [B, K]. sigma is [B] or scalar; weights [B, K] replace pi per example."""
        x = x.double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)  # [B or 1, 1]
        var = self.stds[None] ** 2 + sigma**2  # [B, K]
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # [B, K]
        w = self.weights[None] if weights is None else weights.double()
        logp = w.log() - 0.5 * d2 / var - 0.5 * self.dim * var.log()
        return torch.softmax(logp, dim=1)

    def denoise(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact D*(x; sigma) = E[x0 | x0 + sigma n = x] (float64 internally, x's dtype out); with
        one-hot labels [B, K], E[x0 | x, k] (an all-zero row: unconditional)."""
        xd = x.double()
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        post = self.posterior(xd, sig.reshape(-1), self.class_weights(labels))  # [B, K]
        shrink = (self.stds[None] ** 2 / (self.stds[None] ** 2 + sig**2))  # [B, K]
        cond = self.means[None] + shrink[..., None] * (xd[:, None, :] - self.means[None])  # [B, K, D]
        return (post[..., None] * cond).sum(1).to(x.dtype)


def from_params(params: dict) -> GMM:
    keys = ("dim", "components", "radius", "std", "seed")
    return GMM.make(**{k: params[k] for k in keys if k in params})


def prepare(params: dict) -> dict:
    """Generate train/test splits; returns arrays and the parameters that define them."""
    gmm = from_params(params)
    seed = int(params.get("seed", 0))
    n_train, n_test = int(params.get("n_train", 20000)), int(params.get("n_test", 5000))
    g = torch.Generator().manual_seed(seed + 1)
    train, train_labels = gmm.sample_labeled(n_train, g)
    test, test_labels = gmm.sample_labeled(n_test, g)
    return {"train": train.float().numpy(), "test": test.float().numpy(), "shape": [gmm.dim], "kind": "vector",
            "train_labels": train_labels.numpy(), "test_labels": test_labels.numpy()}


class ExactDenoiserNet(torch.nn.Module):
    """The exact GMM denoiser dressed as a raw EDM network F, so that
    `edm_denoise(ExactDenoiserNet(gmm), x, sigma) == gmm.denoise(x, sigma)`.

    Lets any method that expects an EDM teacher (CD, ECT, PD, MCM-CD) use the exact answer:
    F(c_in x, c_noise) = (D*(x; sigma) - c_skip x) / c_out with sigma = exp(4 c_noise)."""

    def __init__(self, gmm: GMM, sigma_data: float = 0.5):
        super().__init__()
        self.gmm, self.sigma_data = gmm, sigma_data
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives it a device

    def forward(self, x_in: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        from benchmark.diffusion import c_in, c_out, c_skip

        sigma = (4 * c.reshape(-1).double()).exp()
        s = sigma[:, None]
        x = x_in.double() / c_in(s, self.sigma_data)
        d = self.gmm.denoise(x, sigma, labels)
        return ((d - c_skip(s, self.sigma_data) * x) / c_out(s, self.sigma_data)).to(x_in.dtype)
