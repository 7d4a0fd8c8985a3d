"""Sample-quality metrics (DESIGN §5): library FID/KID/IS/PR (`fid`), offline extractors
(`extractors`), exact toy metrics (`exact`), cached reference statistics (`refstats`), the
shard evaluator (`evaluate`) and which way each metric is better (`direction`). `doctor()` says
which assets are present and what can run.

The names below are imported on first use (PEP 562), so `benchmark.metrics.direction` (read by
aggregation, scaling fits and the report) does not pull in torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "evaluate_samples": "benchmark.metrics.evaluate",
    **dict.fromkeys(["denoiser_mse", "fd_to_gaussian", "frechet_distance", "mode_coverage",
                     "sliced_wasserstein2"], "benchmark.metrics.exact"),
    **dict.fromkeys(["EXTRACTORS", "DigitNet", "register_with_torch_fidelity", "train_digitnet"],
                    "benchmark.metrics.extractors"),
    **dict.fromkeys(["compute_cleanfid", "compute_fidelity", "inception_weights_status", "precision_recall",
                     "require_inception"], "benchmark.metrics.fid"),
    **dict.fromkeys(["compute_ref_stats", "ensure_ref_stats", "load_ref_stats"], "benchmark.metrics.refstats"),
    "doctor": "benchmark.doctor",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
