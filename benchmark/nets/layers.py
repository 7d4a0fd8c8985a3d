"""Building blocks of the paper networks (DDPM++/NCSN++ SongUNet, ADM DhariwalUNet).

Written from the papers (Song et al. 2021, App. H; Dhariwal & Nichol 2021, App. A; Karras et
al. 2022, App. F.2) and the shapes of the released configs. Attribute names follow the released
EDM networks (`norm0`, `conv0`, `affine`, ..., `resample_filter`) so that their state dicts load
into ours by stripping the wrapper's `model.` prefix (benchmark/import_ckpt.py): the names are an
interface, not a style choice.

Class labels follow EDM's convention: a float one-hot row per example, an all-zero row meaning
"unconditional" (label dropout and classifier-free guidance are then a zeroing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError


def init_weight(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, scale: float = 1.0) -> Tensor:
    """A tensor drawn from the initialiser the released configs name (xavier/kaiming,
    uniform/normal), times `scale`. One in-place draw: cheap also on the meta device."""
    t = torch.empty(*shape)
    if scale == 0:
        return t.zero_()
    if mode == "xavier_uniform":
        return t.uniform_(-scale * math.sqrt(6 / (fan_in + fan_out)), scale * math.sqrt(6 / (fan_in + fan_out)))
    if mode == "xavier_normal":
        return t.normal_(0, scale * math.sqrt(2 / (fan_in + fan_out)))
    if mode == "kaiming_uniform":
        return t.uniform_(-scale * math.sqrt(3 / fan_in), scale * math.sqrt(3 / fan_in))
    if mode == "kaiming_normal":
        return t.normal_(0, scale * math.sqrt(1 / fan_in))
    raise ConfigError(f"unknown init mode '{mode}'",
                      "use xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal")


class Linear(nn.Linear):
    """nn.Linear (same state-dict keys) with the papers' initialisation and scale factors."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight_scale: float = 1.0, init_bias_scale: float = 0.0):
        super().__init__(in_features, out_features, bias=bias)
        with torch.no_grad():
            fan = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
            self.weight.copy_(init_weight([out_features, in_features], **fan, scale=init_weight_scale))
            if bias:
                self.bias.copy_(init_weight([out_features], **fan, scale=init_bias_scale))


class Conv2d(nn.Module):
    """3x3/1x1 convolution with optional 2x up/downsampling by a separable FIR filter.

    `kernel=0` is a pure resampler (no weights): ADM's skip path of a resampling block and
    NCSN++'s auxiliary image pyramid. Filters: [1,1] = box (DDPM++, ADM), [1,3,3,1] = the
    binomial filter of StyleGAN2 used by NCSN++. `fused` does conv then stride-2 filtering in
    one pass (NCSN++'s residual encoder branch)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[int] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight_scale: float = 1.0, init_bias_scale: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.fused_resample = fused_resample
        fan = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (nn.Parameter(init_weight([out_channels, in_channels, kernel, kernel], **fan,
                                                scale=init_weight_scale)) if kernel else None)
        self.bias = nn.Parameter(init_weight([out_channels], **fan, scale=init_bias_scale)) if kernel and bias else None
        f = None
        if up or down:  # separable 2-D filter of unit gain
            f1 = [float(v) for v in resample_filter]
            f = torch.tensor([[a * b / sum(f1) ** 2 for b in f1] for a in f1])[None, None]
        self.register_buffer("resample_filter", f)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                   padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:  # zero-insertion upsampling then the filter (x4 keeps the mean)
                x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


def group_norm(num_channels: int, eps: float = 1e-5, num_groups: int = 32, min_per_group: int = 4) -> nn.GroupNorm:
    """GroupNorm with min(32, C/4) groups, as in the released DDPM++/ADM configs."""
    return nn.GroupNorm(min(num_groups, num_channels // min_per_group), num_channels, eps=eps)


class UNetBlock(nn.Module):
    """One residual block of DDPM++/NCSN++/ADM, optionally resampling and/or followed by
    multi-head self-attention.

    h = conv0(SiLU(norm0(x))); then the embedding enters either as a bias (DDPM++:
    `adaptive_scale=False`) or as ADM's scale-shift norm (norm1(h) * (1 + scale) + shift);
    h = conv1(dropout(SiLU(.))); out = (h + skip(x)) * skip_scale. Attention: qkv 1x1 conv,
    channels laid out as (head, channel, q/k/v), softmax(q^T k / sqrt(d)), proj 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[int] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight_scale": 0.0}
        self.in_channels, self.out_channels = in_channels, out_channels
        # heads of channels_per_head channels; at least one, so narrow test configs still attend
        self.num_heads = 0 if not attention else (num_heads or max(1, out_channels // channels_per_head))
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = group_norm(in_channels, eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = group_norm(out_channels, eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter,
                               **init)
        if self.num_heads:
            self.norm2 = group_norm(out_channels, eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            # contiguous: as in unet.AttnBlock, else proj's weight gradient is channels-last and DDP copies it
            x = (self.proj(a.transpose(1, 2).reshape(b, c, h, w).contiguous()) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of a scalar: [cos(c w_i), sin(c w_i)], w_i = (1/max_positions)^(i/n)
    (`endpoint` makes the last frequency exactly 1/max_positions, as DDPM++ does)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, c: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=c.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(c, freqs.to(c.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (NCSN++): frequencies ~ N(0, scale^2), kept as a buffer."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, c: Tensor) -> Tensor:
        x = torch.outer(c, (2 * math.pi * self.freqs).to(c.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def split_cond(c: Tensor, num_cond: int) -> list[Tensor]:
    """[B] or [B, num_cond] time inputs -> a list of num_cond [B] tensors."""
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[1] != num_cond:
        raise ValueError(f"expected {num_cond} time input(s) per example, got shape {tuple(c.shape)}")
    return [c[:, j] for j in range(num_cond)]


def label_input(labels: Tensor | None, label_dim: int, x: Tensor) -> Tensor | None:
    """Check labels against the net's classes. None -> all-zero rows (unconditional) for a
    class-conditional net; labels given to a net without classes -> ConfigError."""
    if label_dim == 0:
        if labels is not None:
            raise ConfigError("class labels were given to a network built without classes (num_classes=0)",
                              "build the net with num_classes (or net.label_dim) > 0, or pass labels=None")
        return None
    if labels is None:
        return torch.zeros(x.shape[0], label_dim, device=x.device, dtype=x.dtype)
    if labels.shape != (x.shape[0], label_dim):
        raise ConfigError(f"labels have shape {tuple(labels.shape)}, the net expects [{x.shape[0]}, {label_dim}]",
                          "pass float one-hot labels [B, num_classes] (an all-zero row = unconditional)")
    return labels.to(x.dtype)
