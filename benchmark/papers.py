"""The papers' numbers (`config/paper_results.csv`) and which paper row a result is compared with.

Read by `aggregate` (the `paper_value` column of results.csv) and by the report's leaderboard and
verdicts (`benchmark.report.tables`). A result is matched with the paper row of its method, dataset,
step count and metric kind that differs in the fewest `MATCH_FIELDS` (docs/internals.md, "Recipes,
facts and verdicts").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import InputError
from benchmark.metrics.direction import extractor_family, isnull, metric_kind

DATASET_KEYS: dict[str, str] = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "imagenet64": "imagenet64",
    "imagenet128": "imagenet128",
    "imagenet256": "imagenet256",
    "lsun256": "lsun256",
    "lsun-bedroom256": "lsun-bedroom256",
    "lsunbedroom256": "lsun-bedroom256",
    "lsun-cat256": "lsun-cat256",
    "lsuncat256": "lsun-cat256",
}
METHOD_KEYS = ("edm", "cd", "ct", "ict", "mcm-cd", "mcm-ct", "ect", "pd", "imm")


def dataset_key(name: Any) -> str:
    """Normalise a dataset name ('CIFAR-10', 'cifar10', 'LSUN Bedroom' + 256) to our key."""
    k = re.sub(r"[\s_]+", "", str(name).lower())
    return DATASET_KEYS.get(k, k)


def parse_paper_key(paper_key: Any) -> dict[str, Any]:
    """`paper_key` (results.csv, optional) names the paper row a run stands for, e.g. 'cifar10',
    'CIFAR-10@32', 'cifar10/ect' or 'imagenet64:mcm-cd'. Tokens split on / : @ , ; an integer is
    a resolution, a known method key a method, anything else a dataset."""
    out: dict[str, Any] = {}
    if isnull(paper_key) or str(paper_key).strip() == "":
        return out
    for tok in re.split(r"[/:@,]+", str(paper_key).strip()):
        t = tok.strip()
        if not t:
            continue
        if t.isdigit():
            out["resolution"] = int(t)
        elif t.lower() in METHOD_KEYS:
            out["method"] = t.lower()
        else:
            out["dataset"] = dataset_key(t)
    return out


# What each paper says its training cost (read by the cost planner; empty where the paper is silent):
# device key or the paper's own name, device count, device-hours (devices x wall hours, stated or derived
# as the source says), whether that covers the method's own training or also its teacher's ('own' /
# 'total'), and where it is written.
BUDGET_COLUMNS = ("train_hardware", "train_devices", "train_device_hours", "train_budget_scope",
                  "train_budget_source")
BUDGET_SCOPES = ("own", "total")


def load_paper(path: str | Path) -> pd.DataFrame:
    """config/paper_results.csv with typed columns (verified as bool; device counts and hours as numbers,
    the budget columns present, empty, in a table that predates them)."""
    paper = pd.read_csv(path)
    need = {"method_key", "dataset_key", "resolution", "steps", "metric", "extractor", "value", "verified"}
    if not need <= set(paper.columns):
        raise InputError(
            f"{path} lacks columns {sorted(need - set(paper.columns))}",
            "use the columns of config/paper_results.csv",
        )
    paper["verified"] = paper["verified"].astype(str).str.lower().isin(["true", "1", "yes"])
    for col in BUDGET_COLUMNS:
        if col not in paper.columns:
            paper[col] = np.nan
    for col in ("train_devices", "train_device_hours"):
        paper[col] = pd.to_numeric(paper[col], errors="coerce")
    bad = paper["train_budget_scope"].dropna()
    bad = bad[~bad.isin(BUDGET_SCOPES)]
    if len(bad):
        raise InputError(f"{path}: train_budget_scope '{bad.iloc[0]}' is not one of {', '.join(BUDGET_SCOPES)}",
                         "write 'own' (the method's own training) or 'total' (including its teacher's)")
    return paper


def _target(row: Mapping[str, Any]) -> tuple[str, str, Any]:
    """(method key, dataset key, resolution or None) the row should be compared with."""
    pk = parse_paper_key(row.get("paper_key"))
    ours = row.get("paper_dataset")  # aggregate's key for the suite's dataset (kind + LSUN category)
    return (
        pk.get("method", str(row["method"]).lower()),
        pk.get("dataset", dataset_key(row["dataset"] if is_blank(ours) else ours)),
        pk.get("resolution"),
    )


# Fields a paper row must share with a result before the two are compared (besides method, dataset
# and step count, which select the candidates). A paper row that leaves a field blank does not
# constrain it (except `num_samples`: see CONVENTIONAL_NUM_SAMPLES). `train_images` is matched within
# 5 % (ECT reports one number per budget).
# `num_samples` must be equal: a Fréchet distance is biased upwards by ~1/N, so an FID-10k is not an FID-50k.
# The sample count a paper that does not state it is assumed to use (every stated count here is 50000).
CONVENTIONAL_NUM_SAMPLES = 50000
MATCH_FIELDS = ("resolution", "metric", "nfe", "num_samples", "conditioning", "architecture", "space",
                "loss_metric", "sampler", "recipe", "train_images")
# What makes a paper row unique (test): two rows equal on all of these would tie in match_paper.
PAPER_KEY = ("method_key", "dataset_key", "steps") + tuple(f for f in MATCH_FIELDS if f != "metric") + (
    "metric", "extractor")


def is_blank(x: Any) -> bool:
    return isnull(x) or str(x).strip() == ""


def _field_mismatch(field: str, row: Mapping[str, Any], p: Mapping[str, Any]) -> str | None:
    """'<field>: ours X vs paper Y' when the paper row states `field` and the result differs."""
    if field == "metric":
        ours = (str(row["metric"]).lower(), extractor_family(row.get("extractor")))
        theirs = (str(p["metric"]).lower(), extractor_family(p.get("extractor")))
        if ours != theirs:
            return (f"metric/extractor: ours {ours[0]} ({ours[1] or '-'}) vs paper {theirs[0]} "
                    f"({theirs[1] or '-'})")
        return None
    theirs = p.get(field)
    if field == "num_samples" and is_blank(theirs):
        # unstated (MCM, the PD text read): the field's FID-50k convention, so that an FID-10k, biased
        # upwards by ~1/N, is never judged against such a number
        if to_float(row.get(field)) == CONVENTIONAL_NUM_SAMPLES:
            return None
        return (f"num_samples: ours {_fmt_field(field, row.get(field))} vs paper unstated "
                f"(FID-{CONVENTIONAL_NUM_SAMPLES // 1000}k convention)")
    if is_blank(theirs):
        return None
    ours = row.get(field)
    if field in ("resolution", "nfe", "num_samples"):
        same = to_float(ours) == to_float(theirs)
    elif field == "train_images":
        same = np.isfinite(to_float(ours)) and abs(to_float(ours) / to_float(theirs) - 1) <= 0.05
    elif field == "architecture":  # 'unet-57.4M' is family 'unet'
        same = not is_blank(ours) and str(ours).split("-")[0].lower() == str(theirs).split("-")[0].lower()
    else:
        same = not is_blank(ours) and str(ours).lower() == str(theirs).lower()
    if same:
        return None
    return f"{field}: ours {_fmt_field(field, ours)} vs paper {_fmt_field(field, theirs)}"


def _fmt_field(field: str, v: Any) -> str:
    if is_blank(v):
        return "?"
    if field == "resolution":
        return fmt_res(to_float(v))
    if field in ("nfe", "num_samples"):
        return f"{to_float(v):.0f}"
    return f"{to_float(v):.3g}" if field == "train_images" else str(v)


def paper_mismatches(row: Mapping[str, Any], p: Mapping[str, Any]) -> list[str]:
    """Every MATCH_FIELDS difference between a result and a paper row (empty: they match)."""
    return [m for f in MATCH_FIELDS if (m := _field_mismatch(f, row, p)) is not None]


def _candidates(row: Mapping[str, Any], paper: pd.DataFrame) -> pd.DataFrame:
    method, dkey, _ = _target(row)
    return paper[
        (paper["method_key"] == method)
        & (paper["dataset_key"] == dkey)
        & (pd.to_numeric(paper["steps"], errors="coerce") == to_float(row["steps"]))
        & (paper["metric"].map(metric_kind) == metric_kind(row["metric"]))
    ]


def match_paper(row: Mapping[str, Any], paper: pd.DataFrame) -> Mapping[str, Any] | None:
    """The paper row this result should be judged against: among the rows of the same method,
    dataset, step count and metric kind (FD vs KID), the one with the fewest MATCH_FIELDS
    differences; ties go to verified numbers, then file order. Its differences, if any, make
    the verdict *not comparable* and are its reason. Paper rows are unique on the match key
    (tests), so two rows can never both match a result exactly."""
    cand = _candidates(row, paper)
    if cand.empty:
        return None
    recs = cand.to_dict("records")
    ours_b = to_float(row.get("train_images"))
    budget = pd.to_numeric(cand["train_images"], errors="coerce") if "train_images" in cand else np.nan
    order = pd.DataFrame({
        "miss": [len(paper_mismatches(row, p)) for p in recs],
        "recipe": [_field_mismatch("recipe", row, p) is not None for p in recs],  # same recipe first
        "d": (np.abs(np.log(budget / ours_b)) if ours_b > 0 else pd.Series(np.nan, index=cand.index)),
        "v": ~cand["verified"].astype(bool), "i": np.arange(len(cand))}, index=cand.index)
    order["d"] = order["d"].fillna(np.inf)  # closest stated training budget next
    return cand.loc[order.sort_values(["miss", "recipe", "d", "v", "i"]).index[0]].to_dict()


def to_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def fmt_res(r: float) -> str:
    return f"{int(r)}px" if np.isfinite(r) else "?px"
