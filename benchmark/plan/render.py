"""A SuitePlan as text (the terminal), Markdown (README / docs) or JSON (scripts): the same rows."""

from __future__ import annotations

import json
from typing import Any

from benchmark.hardware import FIT_FRACTION, GIB
from benchmark.plan.budgets import FLAG_RATIO
from benchmark.plan.core import SuitePlan

RUN_COLUMNS = ["run", "gpus", "batch/dev", "train FLOP", "total FLOP", "train dev-h", "sample+FID dev-h",
               "mem/dev GiB", "fits", "paper dev-h", "ratio"]
BUDGET_COLUMNS = ["run (seeds alike)", "steps", "NFE", "sample FLOP/img", "sample FLOP", "FID extract FLOP"]


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _h(x: float) -> str:
    return f"{x:,.3g}" if x < 1000 else f"{x:,.0f}"


def run_rows(plan: SuitePlan) -> list[list[str]]:
    """One row per run (RUN_COLUMNS) and a total row."""
    rows = []
    for rid, p in plan.runs.items():
        c = p.comparison
        paper = f"{c.budget.device_hours:g} ({c.budget.devices or '?'}x {c.budget.hardware or '?'})" if c else "-"
        ratio = (f"{c.ratio:.2f}" + (" FLAG" if c.flagged else "")) if c else "-"
        rows.append([rid, str(p.gpus), f"{p.micro_batch}x{p.accum}" if p.accum > 1 else str(p.micro_batch),
                     _e(p.flops.train_flops), _e(p.flops.total_flops), _h(p.train_device_hours),
                     _h(p.sample_device_hours + p.eval_device_hours), f"{p.memory.total / GIB:.3g}",
                     "yes" if p.fits else "NO", paper, ratio])
    t = plan.runs.values()
    rows.append([f"total ({len(plan.runs)} runs)", "", "", _e(sum(p.flops.train_flops for p in t)), "",
                 _h(sum(p.train_device_hours for p in t)),
                 _h(sum(p.sample_device_hours + p.eval_device_hours for p in t)),
                 f"{max(p.memory.total for p in t) / GIB:.3g} max", "", "", ""])
    return rows


def budget_rows(plan: SuitePlan) -> list[list[str]]:
    """One row per (experiment, step budget): sampling and FID extraction at the suite's num_samples."""
    rows, seen, n = [], set(), plan.suite.num_samples
    for p in plan.runs.values():
        key = f"{p.run.dataset}/{p.run.key}"
        if key in seen:
            continue
        seen.add(key)
        for k, per in p.flops.sample_flops_per_image.items():
            rows.append([key, str(k), str(p.flops.nfe[k]), _e(per), _e(per * n),
                         _e(p.flops.eval_flops_per_image[k] * n)])
    return rows


def header(plan: SuitePlan) -> list[str]:
    """The assumptions first: device, precision, peak, MFU and where it comes from, the fit rule."""
    s, d = plan.settings, plan.settings.device
    peak = d.peak(s.precision)
    return [f"plan of suite '{plan.suite.name}' on {s.count} x {d.key} ({d.name}, {d.memory_bytes / GIB:.0f} GiB): "
            f"{s.precision} dense peak {peak / 1e12:.4g} TFLOP/s x MFU {s.mfu:.0%} ({s.mfu_source}) = "
            f"{peak * s.mfu / 1e12:.4g} TFLOP/s per device; engine {s.engine}",
            "FLOPs are what compute.json and the sample records will hold (the same counters, on meta-device "
            "networks); device-hours = FLOPs / achieved FLOP/s; batch/dev = micro-batch per device (x gradient "
            f"accumulation steps); a run fits when its peak memory per device is <= {FIT_FRACTION:.0%} of the device's"]


def footer(plan: SuitePlan) -> list[str]:
    """Wall time of the DAG, each paper comparison with its explanations, and the plan's notes."""
    sch, s = plan.schedule, plan.settings
    chain = " -> ".join(j.split(" ", 1)[1] if j.startswith("train ") else j for j in sch.critical_path)
    out = [f"wall time on {s.count} x {s.device.key}: critical path {_h(sch.critical_path_hours)} h ({chain}); "
           f"list-scheduled makespan {_h(sch.makespan_hours)} h"]
    for rid, p in plan.runs.items():
        c = p.comparison
        if c is None:
            continue
        why = "; ".join(c.explanations) or "no recipe difference found"
        flag = f" — FLAGGED: > {FLAG_RATIO:g}x the paper's budget" if c.flagged else ""
        out.append(f"{rid}: {c.planned_hours:.3g} {c.on_device} device-hours planned vs the paper's "
                   f"{c.budget.device_hours:g} ({c.budget.scope}; {c.budget.source}) = {c.ratio:.2f}x{flag} ({why})")
    out += [f"note: {n}" for n in plan.notes]
    return out


def _table(cols: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    w = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(n) if i == 0 else str(x).rjust(n) for i, (x, n) in enumerate(zip(r, w)))  # noqa: E731
    return "\n".join([fmt(cols), "  ".join("-" * n for n in w), *map(fmt, rows)])


def as_text(plan: SuitePlan, markdown: bool = False) -> str:
    """The whole plan as fixed-width text (terminal) or Markdown (docs)."""
    sep = "\n\n" if markdown else "\n"
    head = header(plan)
    parts = [sep.join(head), _table(RUN_COLUMNS, run_rows(plan), markdown),
             f"sampling and evaluation per step budget at {plan.suite.num_samples} samples:",
             _table(BUDGET_COLUMNS, budget_rows(plan), markdown),
             sep.join(("- " if markdown else "") + line for line in footer(plan))]
    return "\n\n".join(parts) + "\n"


def as_dict(plan: SuitePlan) -> dict[str, Any]:
    """The plan as plain data (`--format json`): every number the text shows, unrounded."""
    s = plan.settings
    runs = {}
    for rid, p in plan.runs.items():
        c = p.comparison
        runs[rid] = {"train_flops": p.flops.train_flops, "teacher_flops": p.flops.teacher_flops,
                     "total_flops": p.flops.total_flops, "passes": p.flops.counts,
                     "forward_flops_per_example": p.flops.forward_flops,
                     "fwd_bwd_flops_per_example": p.flops.fwd_bwd_flops,
                     "sample_flops_per_image": {str(k): v for k, v in p.flops.sample_flops_per_image.items()},
                     "eval_flops_per_image": {str(k): v for k, v in p.flops.eval_flops_per_image.items()},
                     "train_device_hours": p.train_device_hours, "sample_device_hours": p.sample_device_hours,
                     "eval_device_hours": p.eval_device_hours, "gpus": p.gpus, "micro_batch": p.micro_batch,
                     "grad_accum_steps": p.accum, "memory_bytes": p.memory.total, "memory_terms": p.memory.terms,
                     "fits": p.fits, "paper": None if c is None else {
                         "device_hours": c.budget.device_hours, "hardware": c.budget.hardware,
                         "devices": c.budget.devices, "scope": c.budget.scope, "source": c.budget.source,
                         "planned_device_hours": c.planned_hours, "on_device": c.on_device, "ratio": c.ratio,
                         "flagged": c.flagged, "explanations": c.explanations}}
    return {"suite": plan.suite.name, "device": s.device.key, "count": s.count, "precision": s.precision,
            "peak_flops": s.device.peak(s.precision), "mfu": s.mfu, "mfu_source": s.mfu_source, "engine": s.engine,
            "runs": runs, "critical_path_hours": plan.schedule.critical_path_hours,
            "critical_path": plan.schedule.critical_path, "makespan_hours": plan.schedule.makespan_hours,
            "notes": plan.notes}


def as_json(plan: SuitePlan) -> str:
    return json.dumps(as_dict(plan), indent=1, sort_keys=True) + "\n"
