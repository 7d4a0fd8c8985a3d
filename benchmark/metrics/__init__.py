"""Sample-quality metrics (DESIGN §5): library FID/KID/IS/PR (`fid`), offline extractors
(`extractors`), exact toy metrics (`exact`), cached reference statistics (`refstats`) and the
shard evaluator (`evaluate`). `doctor()` says which assets are present and what can run."""

from __future__ import annotations

from benchmark.metrics.evaluate import evaluate_samples
from benchmark.metrics.exact import (
    denoiser_mse,
    fd_to_gaussian,
    frechet_distance,
    mode_coverage,
    sliced_wasserstein2,
)
from benchmark.metrics.extractors import EXTRACTORS, DigitNet, register_with_torch_fidelity, train_digitnet
from benchmark.metrics.fid import (
    compute_cleanfid,
    compute_fidelity,
    inception_weights_status,
    precision_recall,
    require_inception,
)
from benchmark.metrics.refstats import compute_ref_stats, ensure_ref_stats, load_ref_stats

__all__ = [
    "EXTRACTORS", "DigitNet", "compute_cleanfid", "compute_fidelity", "compute_ref_stats", "denoiser_mse",
    "doctor", "ensure_ref_stats", "evaluate_samples", "fd_to_gaussian", "frechet_distance",
    "inception_weights_status", "load_ref_stats", "mode_coverage", "precision_recall",
    "register_with_torch_fidelity", "require_inception", "sliced_wasserstein2", "train_digitnet",
]

from benchmark.doctor import doctor  # noqa: E402  (kept here for `from benchmark.metrics import doctor`)
