"""DiT (Peebles & Xie 2023, "Scalable diffusion models with transformers"), the ImageNet-256
latent model IMM trains (on 32x32x4 SD-VAE latents): `net(x, c, labels=None)`.

Patchify (a p x p stride-p conv) + fixed 2-D sin-cos position embedding; N transformer blocks
with adaLN-Zero conditioning (per block a Linear of SiLU(cond) gives shift/scale/gate for the
attention and MLP branches, zero-initialised so every block starts as the identity); a final
adaLN LayerNorm + Linear (zero-initialised) and unpatchify. cond = time embedding (256
sinusoids -> MLP) + class embedding.

Class embedding: a table of num_classes + 1 rows, the last the null class used for
classifier-free guidance. Our labels are float one-hot rows with an all-zero row meaning
"unconditional", so the lookup is written linearly: labels @ table[:K] + (1 - sum(labels)) *
table[K] maps a one-hot row to its class and the zero row to the null class.

Sizes (Table 1 of the paper): S (12 blocks, 384 wide, 6 heads), B (12, 768, 12), L (24, 1024,
16), XL (28, 1152, 16). `learn_sigma: true` doubles the output channels as the released DiT
does (the extra channels, a variance, are dropped from our output): DiT-XL/2 then has
675,129,632 parameters (incl. the frozen position embedding), the paper's "675M".
num_cond = 2 (IMM's (t, s)): a second timestep embedder (`cond1_embedder`) is added to cond.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.nets.layers import label_input, split_cond

SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D position embedding [grid*grid, dim]: half the channels encode the column, half
    the row, each as [sin(pos w), cos(pos w)] with w = 10000^(-i/(dim/4))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def one_d(pos: Tensor) -> Tensor:
        out = torch.outer(pos.reshape(-1), omega)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_d(cols), one_d(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """256 sinusoids of the scalar time input -> Linear-SiLU-Linear."""

    def __init__(self, hidden: int, freq_channels: int = 256):
        super().__init__()
        self.freq_channels = freq_channels
        self.mlp = nn.Sequential(nn.Linear(freq_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, c: Tensor) -> Tensor:
        half = self.freq_channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=c.device) / half)
        args = c.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=1).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with a null row (index num_classes), looked up linearly from one-hot rows."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, labels: Tensor) -> Tensor:
        table = self.embedding_table.weight
        null = 1 - labels.sum(dim=1, keepdim=True)
        return labels @ table[:-1] + null * table[-1]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """x += gate * Attn(adaLN(x)); x += gate * MLP(adaLN(x)) with (shift, scale, gate) x 2 from cond."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.adaLN_modulation(cond).chunk(6, dim=1)
        x = x + g_a[:, None] * self.attn(modulate(self.norm1(x), sh_a, sc_a))
        return x + g_m[:, None] * self.mlp(modulate(self.norm2(x), sh_m, sc_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, input_size: int, in_channels: int, size: str = "XL", patch: int = 2, num_classes: int = 0,
                 num_cond: int = 1, learn_sigma: bool = False, mlp_ratio: float = 4.0,
                 depth: int | None = None, hidden: int | None = None, num_heads: int | None = None):
        super().__init__()
        if size not in SIZES:
            raise ConfigError(f"DiT size '{size}' is unknown", f"use one of {', '.join(SIZES)}")
        if input_size % patch:
            raise ConfigError(f"DiT patch {patch} does not divide the input size {input_size}",
                              "use net.patch: 2, 4 or 8 dividing the (latent) resolution")
        d0, h0, n0 = SIZES[size]
        depth, hidden, num_heads = depth or d0, hidden or h0, num_heads or n0
        self.in_channels, self.patch, self.grid = in_channels, patch, input_size // patch
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes, self.num_cond = num_classes, num_cond
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.t_embedder = TimestepEmbedder(hidden)
        for j in range(1, num_cond):
            self.add_module(f"cond{j}_embedder", TimestepEmbedder(hidden))
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        self.pos_embed = nn.Parameter(sincos_2d(hidden, self.grid)[None], requires_grad=False)  # as released
        self.blocks = nn.ModuleList(DiTBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch, self.out_channels)
        self.initialize()

    def initialize(self) -> None:
        """DiT's init: Xavier Linear layers, N(0, 0.02) time/class embeddings, adaLN-Zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for emb in [self.t_embedder] + [getattr(self, f"cond{j}_embedder") for j in range(1, self.num_cond)]:
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                      self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, T, p*p*C] tokens -> [B, C, H, W]."""
        b, g, p, c = x.shape[0], self.grid, self.patch, self.out_channels
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        labels = label_input(labels, self.num_classes, x)
        cs = split_cond(c, self.num_cond)
        tokens = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        cond = self.t_embedder(cs[0])
        for j in range(1, self.num_cond):
            cond = cond + getattr(self, f"cond{j}_embedder")(cs[j])
        if self.y_embedder is not None:
            cond = cond + self.y_embedder(labels)
        for blk in self.blocks:
            tokens = blk(tokens, cond)
        return self.unpatchify(self.final_layer(tokens, cond))[:, : self.in_channels]
