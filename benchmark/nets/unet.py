"""A small DDPM++/ADM-style UNet for images: `net(x, c) -> F(x, c)` of x's shape.

Structure (Ho et al. 2020; Song et al. 2021 'DDPM++'; Dhariwal & Nichol 2021 'ADM'):
an encoder of `len(channel_mult)` levels, each with `num_blocks` residual blocks and a stride-2
downsampling conv; a middle block (res, attention, res) at the lowest resolution, as in both
DDPM++ and ADM; a mirrored decoder whose blocks take the encoder's activations as skip
connections (num_blocks + 1 per level) and upsample by nearest-neighbour + conv.
Self-attention follows every residual block whose resolution is in `attn_resolutions`.

Time conditioning is ADM's scale-shift norm: GroupNorm(h) * (1 + scale) + shift with
(scale, shift) a linear map of the time embedding. Residual sums are scaled by 1/sqrt(2)
(DDPM++'s skip_scale) so activations stay O(1) with depth.

Class labels (num_classes > 0): a bias-free Linear of the float one-hot row added to the time
embedding (ADM's label embedding), so an all-zero row ("unconditional") changes nothing.

Initialisation is PyTorch's default everywhere (no zero-initialised layers): every parameter
gets a gradient on the first step and the time input changes the output from the start; with
EDM preconditioning the initial F only needs to be O(1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.nets.embedding import TimeLabelConditioned


def group_norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of >= 4 channels each; the group count divides ch."""
    groups = max(1, min(32, ch // 4))
    while ch % groups:
        groups -= 1
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    """norm-SiLU-conv, scale-shift by the time embedding, norm-SiLU-dropout-conv, plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.conv2 = group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), scale + 1))  # ADM use_scale_shift_norm
        h = self.conv2(self.drop(h))
        return (self.skip(x) + h) / math.sqrt(2)


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (heads of <= 64 channels, as in ADM)."""

    def __init__(self, ch: int):
        super().__init__()
        self.heads = max(1, ch // 64)
        self.norm, self.qkv, self.proj = group_norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, ch, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, ch // self.heads, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        # contiguous: the transposed view is channels-last in effect, and a 1x1 conv on it returns a weight
        # gradient in that layout, which DDP's bucket views (laid out like the parameter) must copy each step
        return (x + self.proj(a.transpose(-1, -2).reshape(b, ch, h, w).contiguous())) / math.sqrt(2)


class Level(nn.Module):
    """A residual block optionally followed by attention; the unit of encoder and decoder."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(TimeLabelConditioned):
    def __init__(self, img_channels: int, img_resolution: int, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2), num_blocks: int = 1,
                 attn_resolutions: Sequence[int] = (), dropout: float = 0.0, num_cond: int = 1,
                 emb_dim: int | None = None, num_classes: int = 0):
        super().__init__()
        levels = len(channel_mult)
        res_at = [img_resolution >> i for i in range(levels)]
        if img_resolution & (img_resolution - 1) or img_resolution < 2 ** (levels - 1):
            raise ConfigError(f"UNet needs a power-of-two resolution >= {2 ** (levels - 1)} for "
                              f"{levels} levels, got {img_resolution}",
                              "resize the data or shorten net.channel_mult")
        if bad := sorted(set(attn_resolutions) - set(res_at)):
            raise ConfigError(f"attn_resolutions {bad} are not UNet levels {res_at}",
                              f"choose net.attn_resolutions among {res_at}")
        emb_dim = emb_dim or 4 * model_channels  # ADM: 4x the base width
        self._init_conditioning(emb_dim, num_cond, num_classes)
        self.conv_in = nn.Conv2d(img_channels, model_channels, 3, padding=1)

        # encoder: remember each output's width; the decoder consumes them last-in first-out
        self.down, skips, ch = nn.ModuleList(), [model_channels], model_channels
        for i, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                out = model_channels * mult
                self.down.append(Level(ch, out, emb_dim, dropout, res_at[i] in attn_resolutions))
                ch = out
                skips.append(ch)
            if i < levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([Level(ch, ch, emb_dim, dropout, attn=True),
                                  Level(ch, ch, emb_dim, dropout, attn=False)])

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                out = model_channels * mult
                self.up.append(Level(ch + skips.pop(), out, emb_dim, dropout, res_at[i] in attn_resolutions))
                ch = out
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, img_channels, 3, padding=1))

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.conditioning(x, c, labels)
        h = self.conv_in(x)
        hs = [h]
        for blk in self.down:
            h = blk(h, emb) if isinstance(blk, Level) else blk(h)
            hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blk in self.up:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(blk, Level) else blk(h)
        return self.out(h)
