"""ADM (Dhariwal & Nichol 2021, "Diffusion models beat GANs", App. A / Table 11), in the form
EDM and the consistency-model papers train it on ImageNet-64: `net(x, c, labels=None)`.

Differences from DDPM++ (benchmark/nets/songunet.py): scale-shift norm (adaptive GroupNorm),
heads of 64 channels, attention after every block at the attention resolutions (decoder
included), resampling inside residual blocks with box filters and a parameter-free skip,
class labels as a bias-free Linear added to the embedding after the mapping MLP (a one-hot row
times it is ADM's nn.Embedding lookup), zero-initialised output and residual convs.

Released ImageNet-64 config: model_channels 192, channel_mult [1, 2, 3, 4], num_blocks 3,
attention at 32/16/8, dropout 0.1, 1000 classes: 295,899,267 parameters.

`adaptive_scale: false` replaces the scale-shift norm by an added bias (openai's
use_scale_shift_norm=False, the consistency-models LSUN-256 config).

`time_scale` multiplies the time input before the sinusoids: 1000 for networks trained with
openai's c_noise = 1000 ln(sigma)/4 (consistency-models checkpoints), since our methods pass
EDM's ln(sigma)/4.

num_cond = 2 (IMM): the second time input's sinusoids get their own first mapping layer
(`map_cond1_layer0`), added before the SiLU; num_cond = 1 has the released layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.nets.layers import Conv2d, Linear, PositionalEmbedding, UNetBlock, group_norm, label_input, split_cond


class DhariwalUNet(nn.Module):
    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, adaptive_scale: bool = True, time_scale: float = 1.0, num_cond: int = 1):
        super().__init__()
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ConfigError(f"resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}",
                              "resize the data or shorten net.channel_mult")
        self.label_dim, self.num_cond, self.time_scale = label_dim, num_cond, time_scale
        emb_ch = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight_scale=math.sqrt(1 / 3), init_bias_scale=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight_scale=0.0, init_bias_scale=0.0)
        block = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout, adaptive_scale=adaptive_scale,
                     init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)
        self.map_label = (Linear(label_dim, emb_ch, bias=False, init_mode="kaiming_normal",
                                 init_weight_scale=math.sqrt(label_dim)) if label_dim else None)
        for j in range(1, num_cond):
            self.add_module(f"map_cond{j}_layer0", Linear(model_channels, emb_ch, **init))

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        self.out_norm = group_norm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def embed(self, c: Tensor, labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        """The block embedding (already through its final SiLU) of time, labels, augmentation."""
        cs = [ci * self.time_scale for ci in split_cond(c, self.num_cond)]
        emb = self.map_noise(cs[0])
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer0(emb)
        for j in range(1, self.num_cond):
            emb = emb + getattr(self, f"map_cond{j}_layer0")(self.map_noise(cs[j]))
        emb = self.map_layer1(F.silu(emb))
        if self.map_label is not None:
            emb = emb + self.map_label(labels)
        return F.silu(emb)

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c.to(x.dtype), label_input(labels, self.label_dim, x), augment_labels)
        skips = []
        for blk in self.enc.values():
            x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
            skips.append(x)
        for blk in self.dec.values():
            if x.shape[1] != blk.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = blk(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
