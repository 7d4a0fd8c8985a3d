"""DDPM++ and NCSN++ (Song et al. 2021, "Score-based generative modeling through SDEs"), in the
form EDM trains them (Karras et al. 2022, App. F.2, Table 7): `net(x, c, labels=None)`.

Both are one U-Net family ("SongUNet"); the options select the paper variant:

| option | DDPM++ | NCSN++ |
|---|---|---|
| embedding_type | positional | fourier |
| channel_mult_noise | 1 | 2 |
| encoder_type | standard | residual |
| resample_filter | [1, 1] | [1, 3, 3, 1] |

Mapping network: time features (+ label Linear of sqrt(label_dim)-scaled one-hot, + augment
Linear) -> Linear-SiLU-Linear-SiLU, giving the embedding every block receives as a bias.
Encoder: a 3x3 conv, then per level a downsampling block (except the first) and num_blocks
blocks (attention at `attn_resolutions`); 'skip' adds a filtered copy of the input image per
level, 'residual' a strided conv of the previous level's features. Decoder: two blocks at the
lowest resolution (the first with attention), then per level an upsampling block (except the
lowest) and num_blocks + 1 blocks that consume the encoder's outputs; the output is
GroupNorm-SiLU-conv at the top level ('skip' decoder: at every level, summed after upsampling).

num_cond = 2 (IMM's (t, s)): the second time input gets its own two-layer mapping
(`map_cond1_layer0`, SiLU, `map_cond1_layer1`) whose output is added to the first input's after
`map_layer1`, before the final SiLU, as IMM's SongUNet embeds s (lumalabs/imm@c9473e9:
training/unets.py `map_layer0_s`/`map_layer1_s`; IMM paper App. I.1); the features of s come from the
same `map_noise` (positional: identical to IMM's separate one; Fourier: the same random frequencies
instead of a second draw). num_cond = 1 has the released layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.nets.layers import (
    Conv2d,
    FourierEmbedding,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    group_norm,
    label_input,
    split_cond,
)

PRESETS = {
    "ddpmpp": dict(embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                   decoder_type="standard", resample_filter=(1, 1)),
    "ncsnpp": dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                   decoder_type="standard", resample_filter=(1, 3, 3, 1)),
}


def _check(embedding_type: str, encoder_type: str, decoder_type: str, img_resolution: int, levels: int) -> None:
    for name, value, allowed in (("embedding_type", embedding_type, ("positional", "fourier")),
                                 ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                 ("decoder_type", decoder_type, ("standard", "skip"))):
        if value not in allowed:
            raise ConfigError(f"net.{name} '{value}' is unknown", f"use one of {', '.join(allowed)}")
    if img_resolution % (1 << (levels - 1)):
        raise ConfigError(f"resolution {img_resolution} is not divisible by 2^{levels - 1} ({levels} levels)",
                          "resize the data or shorten net.channel_mult")


class SongUNet(nn.Module):
    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, embedding_type: str = "positional", channel_mult_noise: int = 1,
                 encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1), num_cond: int = 1):
        super().__init__()
        _check(embedding_type, encoder_type, decoder_type, img_resolution, len(channel_mult))
        self.label_dim, self.num_cond = label_dim, num_cond
        emb_ch, noise_ch = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight_scale=1e-5)
        block = dict(emb_channels=emb_ch, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=init,
                     init_zero=init_zero, init_attn=dict(init_mode="xavier_uniform", init_weight_scale=math.sqrt(0.2)))

        # mapping: time (and label, augmentation) features -> embedding
        self.map_noise = (PositionalEmbedding(noise_ch, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_ch))
        self.map_label = Linear(label_dim, noise_ch, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)
        for j in range(1, num_cond):
            self.add_module(f"map_cond{j}_layer0", Linear(noise_ch, emb_ch, **init))
            self.add_module(f"map_cond{j}_layer1", Linear(emb_ch, emb_ch, **init))

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, fused_resample=True,
                                                                   resample_filter=resample_filter, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = self._decoder(img_resolution, out_channels, model_channels, channel_mult, num_blocks,
                                 attn_resolutions, decoder_type, resample_filter, cout, skips, block, init_zero)

    @staticmethod
    def _decoder(img_resolution: int, out_channels: int, model_channels: int, channel_mult: Sequence[int],
                 num_blocks: int, attn_resolutions: Sequence[int], decoder_type: str,
                 resample_filter: Sequence[int], cout: int, skips: list[int], block: dict,
                 init_zero: dict) -> nn.ModuleDict:
        """The decoder: consumes the encoder's outputs `skips` (widths) last-in first-out."""
        dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                        resample_filter=resample_filter)
                dec[f"{res}x{res}_aux_norm"] = group_norm(cout, eps=1e-6)
                dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)
        return dec

    def embed(self, c: Tensor, labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        """The block embedding of the time input(s), class labels and augmentation labels."""
        cs = split_cond(c, self.num_cond)

        def features(ci: Tensor) -> Tensor:  # [cos | sin] -> [sin | cos], the released layout
            f = self.map_noise(ci)
            return f.reshape(f.shape[0], 2, -1).flip(1).reshape(f.shape)

        emb = features(cs[0])
        if self.map_label is not None:
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        for j in range(1, self.num_cond):  # IMM: each further time input through its own two layers, then added
            layer0, layer1 = getattr(self, f"map_cond{j}_layer0"), getattr(self, f"map_cond{j}_layer1")
            emb = emb + layer1(F.silu(layer0(features(cs[j]))))
        return F.silu(emb)

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c.to(x.dtype), label_input(labels, self.label_dim, x), augment_labels)
        skips, aux = [], x
        for name, blk in self.enc.items():
            if "aux_down" in name:
                aux = blk(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + blk(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + blk(aux)) / math.sqrt(2)
            else:
                x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
                skips.append(x)
        aux = tmp = None
        for name, blk in self.dec.items():
            if "aux_up" in name:
                aux = blk(aux)
            elif "aux_norm" in name:
                tmp = blk(x)
            elif "aux_conv" in name:
                tmp = blk(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != blk.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = blk(x, emb)
        return aux
