"""Time embeddings shared by the MLP and the UNet, and their common conditioning prelude."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmark.nets.layers import label_input


class PositionalEmbedding(nn.Module):
    """Sinusoidal features of a scalar (transformer/DDPM++ 'positional' embedding)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, scale: float = 1.0):
        super().__init__()
        self.num_channels, self.max_positions, self.scale = num_channels, max_positions, scale

    def forward(self, c: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.exp(-math.log(self.max_positions) * torch.arange(half, device=c.device) / half)
        args = (c.float() * self.scale)[:, None] * freqs[None].to(c.dtype if c.is_floating_point() else torch.float32)
        return torch.cat([args.cos(), args.sin()], dim=1)


class TimeEmbedding(nn.Module):
    """Embed num_cond scalar time inputs: positional features of each, concatenated, then an MLP.

    Inputs are c_noise-style values (e.g. ln(sigma)/4, 1000*t); `scale` spreads them over the
    sinusoid frequencies."""

    def __init__(self, emb_dim: int, num_cond: int = 1, feat_channels: int = 64, scale: float = 100.0):
        super().__init__()
        self.num_cond = num_cond
        self.pos = PositionalEmbedding(feat_channels, scale=scale)
        self.mlp = nn.Sequential(nn.Linear(feat_channels * num_cond, emb_dim), nn.SiLU(),
                                 nn.Linear(emb_dim, emb_dim))

    def forward(self, c: Tensor) -> Tensor:
        if c.ndim == 1:
            c = c[:, None]
        if c.shape[1] != self.num_cond:
            raise ValueError(f"expected {self.num_cond} time input(s), got {c.shape[1]}")
        return self.mlp(torch.cat([self.pos(c[:, j]) for j in range(self.num_cond)], dim=1))


class TimeLabelConditioned(nn.Module):
    """Base of the nets (MLP, UNet) conditioned on `embed(c)` plus, with classes, a bias-free Linear
    of the float one-hot labels (ADM's label embedding): an all-zero row (unconditional) leaves the
    time embedding unchanged. Submodules keep the names `embed` and `label_emb` (checkpoint keys)."""

    def _init_conditioning(self, emb_dim: int, num_cond: int, num_classes: int) -> None:
        self.embed = TimeEmbedding(emb_dim, num_cond)
        self.num_classes = num_classes
        if num_classes:
            self.label_emb = nn.Linear(num_classes, emb_dim, bias=False)

    def conditioning(self, x: Tensor, c: Tensor, labels: Tensor | None) -> Tensor:
        """The embedding every block is conditioned on (labels checked by `label_input`)."""
        emb = self.embed(c)
        labels = label_input(labels, self.num_classes, x)
        return emb if labels is None else emb + self.label_emb(labels)
