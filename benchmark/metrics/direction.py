"""Which way each metric is better, and what it measures regardless of extractor.

Metric direction lives in one place, `METRIC_DIRECTION` (+ prefix/suffix rules for the
extractor-specific names such as `fd_digitnet`): aggregation's cross-check, scaling fits, Pareto
fronts and the leaderboard all read it. A wrong direction flips fronts and fits, so an unknown
metric is an error.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmark.errors import InputError

# Metric -> 'lower' | 'higher' is better. Extractor-specific names use the prefix rules below.
METRIC_DIRECTION: dict[str, str] = {
    "fid": "lower",
    "kid": "lower",
    "fd_exact": "lower",
    "sw2": "lower",
    "fd_dinov2": "lower",
    "denoiser_mse": "lower",
    "pf_map_error": "lower",
    "is": "higher",
    "precision": "higher",
    "recall": "higher",
    "mode_coverage": "higher",
    "good_fraction": "higher",
}
_PREFIX_DIRECTION = {
    "fd_": "lower",
    "kid_": "lower",
    "fid_": "lower",
    "sw_": "lower",
    "denoiser_": "lower",
    "precision_": "higher",
    "recall_": "higher",
    "is_": "higher",
}
_SUFFIX_DIRECTION = {"_error": "lower", "_mse": "lower", "_mae": "lower", "_coverage": "higher"}


def metric_direction(metric: str) -> str:
    """'lower' or 'higher' is better; unknown metrics are an error rather than a silent guess,
    because a wrong direction flips Pareto fronts and scaling fits."""
    m = str(metric).lower().split("@", 1)[0]  # denoiser_mse@0.5 -> denoiser_mse
    if m in METRIC_DIRECTION:
        return METRIC_DIRECTION[m]
    for table, match in ((_PREFIX_DIRECTION, m.startswith), (_SUFFIX_DIRECTION, m.endswith)):
        for key, direction in table.items():
            if match(key):
                return direction
    raise InputError(
        f"unknown metric direction for {metric!r}", "add it to METRIC_DIRECTION in benchmark/metrics/direction.py"
    )


def lower_is_better(metric: str) -> bool:
    return metric_direction(metric) == "lower"


def is_auxiliary(metric: str) -> bool:
    """Uncertainties reported beside a metric (kid_std, is_std_digitnet): kept in the tables,
    left out of plots and scaling fits."""
    return "_std" in str(metric).lower()


def extractor_family(extractor: Any) -> str:
    """'inception-v3-compat', 'inception_v3' -> 'inception'; 'dinov2-vitl14' -> 'dinov2'."""
    e = "" if isnull(extractor) else str(extractor).lower()
    for family in ("inception", "dinov2", "clip"):
        if family in e:
            return family
    return e


def metric_kind(metric: Any) -> str:
    """What a metric measures regardless of extractor: 'fid'/'fd_dinov2'/'fd_digitnet' -> 'fd',
    'kid_digitnet' -> 'kid', 'precision_digitnet' -> 'precision'. Only rows of the same kind
    are ever put side by side in the leaderboard."""
    m = str(metric).lower()
    if m == "fid" or m.startswith(("fd_", "fid_")):
        return "fd"
    return m.split("_", 1)[0]


def isnull(x: Any) -> bool:
    """None, float NaN, pd.NA or pd.NaT: a blank cell of a results table."""
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA or x is pd.NaT
