"""openai ADM (guided-diffusion / consistency_models `UNetModel`) state dicts -> our DhariwalUNet.

The two are the same network (Dhariwal & Nichol 2021, App. A) with different names:

| openai | ours |
|---|---|
| time_embed.0 / time_embed.2 | map_layer0 / map_layer1 |
| label_emb.weight [K, E] (nn.Embedding) | map_label.weight [E, K] (bias-free Linear of one-hot) |
| input_blocks.0.0 | enc.{R}x{R}_conv |
| input_blocks.k.0 (ResBlock; a `down` one ends a level) | enc.{r}x{r}_block{i} / enc.{r}x{r}_down |
| input_blocks.k.1 (AttentionBlock) | the same block's norm2 / qkv / proj |
| middle_block.0, .1, .2 | dec.{r}x{r}_in0 (+ its attention), dec.{r}x{r}_in1 |
| output_blocks.k.0 (+ .1 attention), last of a level + `up` ResBlock | dec.{r}x{r}_block{i}, dec.{r}x{r}_up |
| out.0 / out.2 | out_norm / out_conv |

ResBlock: in_layers.0 -> norm0, in_layers.2 -> conv0, emb_layers.1 -> affine, out_layers.0 ->
norm1, out_layers.3 -> conv1, skip_connection -> skip. Attention: norm -> norm2, qkv/proj_out
(1-D convs, [O, I, 1]) -> qkv/proj ([O, I, 1, 1]); the qkv output rows are reordered from
openai's (q/k/v, head, channel) layout ('flash' attention, the released checkpoints) or
(head, q/k/v, channel) ('legacy') to ours, (head, channel, q/k/v).

openai feeds the net c_noise = 1000 ln(sigma)/4; ours take ln(sigma)/4, so the imported config
sets `time_scale: 1000`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from benchmark.errors import CheckpointError

RES = ("in_layers.0", "norm0"), ("in_layers.2", "conv0"), ("emb_layers.1", "affine"), ("out_layers.0", "norm1"), \
    ("out_layers.3", "conv1"), ("skip_connection", "skip")
ATTN = ("norm", "norm2"), ("qkv", "qkv"), ("proj_out", "proj")


def _indices(sd: dict[str, Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})


def cm_config(sd: dict[str, Tensor], resolution: int) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """Our `adm` net config (and data shape) of an openai UNetModel state dict at `resolution`."""
    if "time_embed.0.weight" not in sd or "input_blocks.0.0.weight" not in sd:
        raise CheckpointError("the state dict has no `time_embed.0.weight` / `input_blocks.0.0.weight`",
                              "pass an openai consistency-models .pt (or use --kind edm for EDM networks)")
    mc = sd["time_embed.0.weight"].shape[1]
    out_blocks = _indices(sd, "output_blocks.")
    ups = [k for k in out_blocks if any(f"output_blocks.{k}.{j}.in_layers.0.weight" in sd for j in (1, 2))]
    num_blocks = ups[0] if ups else len(out_blocks) - 1  # the first `up` ends the lowest level
    inputs = _indices(sd, "input_blocks.")[1:]
    levels = (len(inputs) + 1) // (num_blocks + 1)
    mult, attn = [], []
    for lvl in range(levels):
        first = 1 + lvl * (num_blocks + 1)
        mult.append(sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0] // mc)
        if f"input_blocks.{first}.1.qkv.weight" in sd:
            attn.append(resolution >> lvl)
    out_ch = sd["out.2.weight"].shape[0]
    in_ch = sd["input_blocks.0.0.weight"].shape[1]
    if out_ch != in_ch:
        raise CheckpointError(f"the network outputs {out_ch} channels for {in_ch} input channels (learned variance)",
                              "import a consistency model (out channels = in channels)")
    affine = sd[f"input_blocks.{1}.0.emb_layers.1.weight"].shape[0]
    cfg: dict[str, Any] = {"type": "adm", "model_channels": mc, "channel_mult": mult, "num_blocks": num_blocks,
                           "attn_resolutions": attn, "channel_mult_emb": sd["time_embed.0.weight"].shape[0] // mc,
                           "dropout": 0.0, "adaptive_scale": affine == 2 * mult[0] * mc, "time_scale": 1000.0}
    if "label_emb.weight" in sd:
        cfg["label_dim"] = sd["label_emb.weight"].shape[0]
    return cfg, (in_ch, resolution, resolution)


def _qkv_perm(channels: int, heads: int, attention: str) -> Tensor:
    """Row order taking openai's qkv rows to ours (head, channel, q/k/v)."""
    d = channels // heads
    if attention == "flash":  # rows laid out (q/k/v, head, channel)
        return torch.arange(3 * channels).reshape(3, heads, d).permute(1, 2, 0).reshape(-1)
    return torch.arange(3 * channels).reshape(heads, 3, d).permute(0, 2, 1).reshape(-1)  # (head, q/k/v, channel)


def _map_block(sd, src: str, dst: str, out: dict, used: set, heads: int | None, attention: str, attn_src=None):
    """Map one ResBlock (and optionally its AttentionBlock) onto our UNetBlock `dst`."""
    for a, b in RES:
        for leaf in ("weight", "bias"):
            if f"{src}.{a}.{leaf}" in sd:
                out[f"{dst}.{b}.{leaf}"] = sd[f"{src}.{a}.{leaf}"]
                used.add(f"{src}.{a}.{leaf}")
    if attn_src is None or f"{attn_src}.qkv.weight" not in sd:
        return
    for a, b in ATTN:
        for leaf in ("weight", "bias"):
            t = sd[f"{attn_src}.{a}.{leaf}"]
            used.add(f"{attn_src}.{a}.{leaf}")
            if a == "qkv":
                t = t[_qkv_perm(t.shape[0] // 3, heads, attention)]
            out[f"{dst}.{b}.{leaf}"] = t[..., None] if t.ndim == 3 else t


def cm_to_ours(sd: dict[str, Tensor], net: torch.nn.Module, attention: str = "flash") -> dict[str, Tensor]:
    """openai keys -> our keys for `net` (built from cm_config); unmapped source keys raise."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, fn=lambda t: t) -> None:
        for leaf in ("weight", "bias"):
            if f"{src}.{leaf}" in sd:
                out[f"{dst}.{leaf}"] = fn(sd[f"{src}.{leaf}"])
                used.add(f"{src}.{leaf}")

    take("time_embed.0", "map_layer0")
    take("time_embed.2", "map_layer1")
    take("label_emb", "map_label", lambda t: t.t())
    take("out.0", "out_norm")
    take("out.2", "out_conv")
    enc = list(net.enc.items())
    take("input_blocks.0.0", f"enc.{enc[0][0]}")
    for k, (name, blk) in enumerate(enc[1:], start=1):
        _map_block(sd, f"input_blocks.{k}.0", f"enc.{name}", out, used, blk.num_heads, attention,
                   f"input_blocks.{k}.1")
    dec = list(net.dec.items())
    _map_block(sd, "middle_block.0", f"dec.{dec[0][0]}", out, used, dec[0][1].num_heads, attention, "middle_block.1")
    _map_block(sd, "middle_block.2", f"dec.{dec[1][0]}", out, used, None, attention)
    k, last_attn = -1, False
    for name, blk in dec[2:]:
        if name.endswith("_up"):
            _map_block(sd, f"output_blocks.{k}.{2 if last_attn else 1}", f"dec.{name}", out, used, None, attention)
        else:
            k += 1
            last_attn = f"output_blocks.{k}.1.qkv.weight" in sd
            _map_block(sd, f"output_blocks.{k}.0", f"dec.{name}", out, used, blk.num_heads, attention,
                       f"output_blocks.{k}.1")
    left = [key for key in sd if key not in used]
    if left:
        raise CheckpointError(f"openai key '{left[0]}' has no counterpart in our ADM ({len(left)} unmapped)",
                              "the checkpoint is not an openai UNetModel of the supported options")
    return out
