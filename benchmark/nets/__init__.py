"""Networks. Every raw network has the signature `net(x, c, labels=None) -> Tensor` with x of the
data's shape ([B, D] for vectors, [B, C, H, W] for images), c the time input(s) ([B] or
[B, num_cond]) and labels a float one-hot [B, num_classes] or None; an all-zero row means
"unconditional" (EDM's convention: label dropout and classifier-free guidance are a zeroing).
A net built with num_classes=0 raises ConfigError when given labels. Preconditioning
(c_in, c_skip, ...) belongs to the method, not the net.

`net.type`:
  mlp      residual MLP for vector data (benchmark/nets/mlp.py)
  unet     our small DDPM++/ADM-style UNet (benchmark/nets/unet.py)
  ddpmpp   DDPM++ (SongUNet, positional embedding, [1,1] filter)   benchmark/nets/songunet.py
  ncsnpp   NCSN++ (SongUNet, Fourier embedding, residual encoder, [1,3,3,1] filter)
  songunet SongUNet with every option explicit (embedding_type, encoder_type, decoder_type, ...)
  adm      ADM (DhariwalUNet)                                        benchmark/nets/dhariwal.py
  dit      DiT, `size: S|B|L|XL`, `patch: 2|4|8`                    benchmark/nets/dit.py
Class-conditional paper nets take `label_dim` (= num_classes); either may be given, they must agree.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from benchmark.errors import ConfigError

TYPES = ("mlp", "unet", "ddpmpp", "ncsnpp", "songunet", "adm", "dit")


def _num_classes(cfg: dict[str, Any], num_classes: int) -> int:
    """Classes from the caller (the data) and/or the net config (`label_dim`); they must agree."""
    label_dim = int(cfg.pop("label_dim", 0) or 0)
    if label_dim and num_classes and label_dim != num_classes:
        raise ConfigError(f"net.label_dim is {label_dim} but the data has {num_classes} classes",
                          f"set net.label_dim: {num_classes} or remove it")
    return int(num_classes or label_dim)


def _image_shape(kind: str, data_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ConfigError(f"net type '{kind}' needs square image data [C,H,W], got shape {data_shape}",
                          "use net.type: mlp for vector data")
    return data_shape[0], data_shape[1]


def build_net(cfg: dict[str, Any], data_shape: tuple[int, ...], num_cond: int = 1, num_classes: int = 0) -> nn.Module:
    """Build the network named by cfg['type'] for data of `data_shape` with `num_cond` time
    inputs and `num_classes` classes (0: unconditional)."""
    cfg = dict(cfg)
    kind = cfg.pop("type", "mlp" if len(data_shape) == 1 else "unet")
    classes = _num_classes(cfg, num_classes)
    try:
        return _build(kind, cfg, data_shape, num_cond, classes)
    except TypeError as e:  # an unknown keyword in the net config
        if "unexpected keyword" not in str(e):
            raise
        raise ConfigError(f"net type '{kind}': {e}", "check the `net:` keys against benchmark/nets/") from None


def _net_class(kind: str) -> type[nn.Module]:
    """The constructor a `net.type` names (imported on first use)."""
    if kind not in TYPES:
        raise ConfigError(f"unknown net type '{kind}'", f"use one of: {', '.join(TYPES)}")
    if kind == "mlp":
        from benchmark.nets.mlp import MLP

        return MLP
    if kind == "unet":
        from benchmark.nets.unet import UNet

        return UNet
    if kind == "adm":
        from benchmark.nets.dhariwal import DhariwalUNet

        return DhariwalUNet
    if kind == "dit":
        from benchmark.nets.dit import DiT

        return DiT
    from benchmark.nets.songunet import SongUNet

    return SongUNet


def _presets(kind: str) -> dict[str, Any]:
    """The keyword values a preset type stands for (ddpmpp, ncsnpp); empty for the others."""
    from benchmark.nets.songunet import PRESETS

    return dict(PRESETS.get(kind, {}))


def _build(kind: str, cfg: dict[str, Any], data_shape: tuple[int, ...], num_cond: int, classes: int) -> nn.Module:
    cls = _net_class(kind)
    if kind == "mlp":
        if len(data_shape) != 1:
            raise ConfigError(f"net type 'mlp' needs vector data, got shape {data_shape}",
                              "use net.type: unet for images")
        return cls(dim=data_shape[0], num_cond=num_cond, num_classes=classes, **cfg)
    ch, res = _image_shape(kind, data_shape)
    if kind == "unet":
        return cls(img_channels=ch, img_resolution=res, num_cond=num_cond, num_classes=classes, **cfg)
    if kind == "dit":
        return cls(input_size=res, in_channels=ch, num_classes=classes, num_cond=num_cond, **cfg)
    return cls(img_resolution=res, in_channels=ch, out_channels=ch, label_dim=classes, num_cond=num_cond,
               **(_presets(kind) | cfg))  # SongUNet (ddpmpp, ncsnpp, songunet) and ADM share these inputs


# constructor keywords that the data and the method set, not the recipe
STRUCTURAL = ("label_dim", "num_classes", "num_cond")


def net_defaults(kind: str) -> dict[str, Any]:
    """The keyword defaults of the constructor a `net.type` builds (a preset type's own values included):
    what a recipe's net leaves to the code (recipes.unstated_defaults)."""
    import inspect

    params = inspect.signature(_net_class(kind).__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty and p.name not in STRUCTURAL} | \
        _presets(kind)


def count_params(cfg: dict[str, Any], data_shape: tuple[int, ...], num_cond: int = 1, num_classes: int = 0) -> int:
    """Parameter count of the net a config builds, on the meta device (no memory, instant)."""
    import torch

    with torch.device("meta"):
        net = build_net(cfg, data_shape, num_cond, num_classes)
    return sum(p.numel() for p in net.parameters())
