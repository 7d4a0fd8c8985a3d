"""Networks. Every raw network has the signature `net(x, c, labels=None) -> Tensor` with x of the
data's shape ([B, D] for vectors, [B, C, H, W] for images), c the time input(s): [B] or
[B, num_cond], and labels a float one-hot [B, num_classes] (an all-zero row, or None, is the
unconditional model; nets built with num_classes=0 take no labels). Preconditioning (c_in,
c_skip, ...) belongs to the method, not the net."""

from __future__ import annotations

from typing import Any

from torch import nn

from benchmark.errors import ConfigError


def build_net(cfg: dict[str, Any], data_shape: tuple[int, ...], num_cond: int = 1,
              num_classes: int = 0) -> nn.Module:
    """Build the network named by cfg['type'] ('mlp' or 'unet') for data of `data_shape`."""
    cfg = dict(cfg)
    kind = cfg.pop("type", "mlp" if len(data_shape) == 1 else "unet")
    if kind == "mlp":
        from benchmark.nets.mlp import MLP

        if len(data_shape) != 1:
            raise ConfigError(f"net type 'mlp' needs vector data, got shape {data_shape}",
                              "use net.type: unet for images")
        return MLP(dim=data_shape[0], num_cond=num_cond, num_classes=num_classes, **cfg)
    if kind == "unet":
        from benchmark.nets.unet import UNet

        if len(data_shape) != 3:
            raise ConfigError(f"net type 'unet' needs image data [C,H,W], got shape {data_shape}",
                              "use net.type: mlp for vector data")
        return UNet(img_channels=data_shape[0], img_resolution=data_shape[1], num_cond=num_cond,
                    num_classes=num_classes, **cfg)
    raise ConfigError(f"unknown net type '{kind}'", "use 'mlp' or 'unet'")
