"""The data of the report's "planned vs spent" section (html.py renders it): for every finished run
(its compute.json exists) the FLOPs `benchmark plan` projects beside the FLOPs training counted (the
same counters: they must agree exactly), and the device-hours the plan projects at its MFU
assumption on the device the run used beside the device-hours it took, with the MFU that implies
(planned FLOPs / (measured device-seconds x the device's dense peak at the precision the run
applied)).

The plan is made from the suite config of that name (config/suites/<name>.yaml); a run whose config
hash differs from the finished one's is listed as not planned (its config changed since)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["run", "hardware", "planned train FLOPs", "spent train FLOPs", "FLOPs agree", "planned device-hours",
           "spent device-hours", "planned / spent", "achieved MFU", "MFU assumed"]


def applied_precision(comp: dict[str, Any]) -> str:
    """bf16 / tf32 / fp32: the precision compute.json says training applied."""
    applied = ((comp.get("precision") or {}).get("applied") or {})
    return "bf16" if applied.get("bf16") else "tf32" if applied.get("tf32") else "fp32"


def _row(rid: str, flops: Any, comp: dict[str, Any], measured: dict) -> dict[str, Any]:
    from benchmark.hardware import default_mfu, device_for_hardware
    from benchmark.plan.core import effective_precision

    dev = device_for_hardware(comp.get("hardware"))
    spent_h = float(comp.get("device_hours") or 0.0)
    row = {"run": rid, "hardware": comp.get("hardware", ""), "planned train FLOPs": flops.train_flops,
           "spent train FLOPs": float(comp["train_flops"]),
           "FLOPs agree": "exact" if flops.train_flops == float(comp["train_flops"]) else
           f"{flops.train_flops / float(comp['train_flops']):.6g}x"}
    if dev is None:
        return row | {"spent device-hours": spent_h, "MFU assumed": "device not in benchmark/hardware.py"}
    prec = effective_precision(dev, applied_precision(comp))[0]
    mfu, source = default_mfu(dev.key, prec, measured)
    planned_h = flops.train_flops / (dev.peak(prec) * mfu * 3600)
    achieved = flops.train_flops / (spent_h * 3600 * dev.peak(prec)) if spent_h > 0 else math.nan
    return row | {"planned device-hours": planned_h, "spent device-hours": spent_h,
                  "planned / spent": planned_h / spent_h if spent_h > 0 else math.nan, "achieved MFU": achieved,
                  "MFU assumed": f"{mfu:.0%} {prec} ({source})"}


def planned_vs_spent(suite: Any, results_root: Path, measured: dict | None = None) -> pd.DataFrame:
    """One row per finished run of `suite` under `results_root` (COLUMNS)."""
    from benchmark.config import run_dir
    from benchmark.hardware import read_measured
    from benchmark.plan.core import make_settings, plan_suite

    measured = read_measured(Path(results_root) / "perf" / "measured.json") if measured is None else measured
    done = {}
    for rid, run in suite.runs.items():
        p = run_dir(results_root, suite.name, run) / "compute.json"
        if p.is_file():
            done[rid] = json.loads(p.read_text())
    if not done:
        return pd.DataFrame(columns=COLUMNS)
    plan = plan_suite(suite, make_settings(suite, "cpu", measured=measured), measured=measured)
    rows = []
    for rid, comp in done.items():
        if comp.get("config_hash") != suite.runs[rid].config_hash:
            rows.append({"run": rid, "hardware": comp.get("hardware", ""),
                         "FLOPs agree": "not planned: config changed"})
            continue
        rows.append(_row(rid, plan.runs[rid].flops, comp, measured))
    return pd.DataFrame(rows, columns=COLUMNS)
