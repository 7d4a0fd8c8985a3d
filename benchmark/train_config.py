"""What one run optimises (`TrainConfig`): a plain dataclass without torch, so that validation,
recipes and run loading read a run's step count without importing the training loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """What one run optimises; recorded in every checkpoint and in compute.json."""

    images: int = 100_000  # training budget in images seen (kimg-style, as EDM counts)
    batch: int = 128
    lr: float = 1e-3
    lr_warmup_images: int = 0  # linear warm-up (EDM: lr_rampup_kimg)
    lr_decay: str = "none"  # 'none' or 'linear' (PD anneals to 0 each round)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    optimizer: str = "adam"  # 'adam' or 'radam' (CM/ECT use RAdam)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_halflife_images: float | None = None  # EDM-style EMA by half-life in images
    ema_decay: float | None = None  # or a fixed per-step decay (CM/ECT style)
    ema_rampup_ratio: float | None = None  # EDM: half-life <= images_seen * ratio
    ckpt_every_images: int = 0  # 0: only the final checkpoint
    log_every_steps: int = 50
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.images / self.batch))
