"""The papers' reported training budgets (`config/paper_results.csv` columns `train_hardware`,
`train_devices`, `train_device_hours`, `train_budget_scope`, `train_budget_source`) and the ratio of a
planned run to them. A missing column or an empty cell means the paper states no budget.

Scope `own` compares with the run's own training, `total` with its total (teacher pre-training
included). The planned hours are converted to the paper's hardware when our device table knows it
(same precision and MFU assumption as the plan); a run planned at more than FLAG_RATIO times the
paper's budget is flagged: a recipe or counting error is more likely than a real difference. Every
difference that explains a ratio (image count, recipe, device) is named beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.provenance import REPO_ROOT

PAPER_CSV = REPO_ROOT / "config" / "paper_results.csv"
BUDGET_COLUMNS = ("train_hardware", "train_devices", "train_device_hours", "train_budget_scope", "train_budget_source")
FLAG_RATIO = 3.0


@dataclass(frozen=True)
class PaperBudget:
    method: str
    dataset: str
    hardware: str
    devices: int | None
    device_hours: float
    scope: str  # own | total
    source: str
    recipe: str
    train_images: float | None


@dataclass
class Comparison:
    budget: PaperBudget
    planned_hours: float  # ours, on the paper's device where the table has it
    on_device: str
    ratio: float
    explanations: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return self.ratio > FLAG_RATIO


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load_budgets(path: Path = PAPER_CSV) -> list[PaperBudget]:
    """Every paper row that states a training budget (device-hours > 0)."""
    if not Path(path).is_file():
        return []
    df = pd.read_csv(path, dtype=str).fillna("")
    if "train_device_hours" not in df.columns:
        return []
    out = []
    for r in df.to_dict("records"):
        hours = _num(r.get("train_device_hours"))
        if hours is None or hours <= 0:
            continue
        devices = _num(r.get("train_devices"))
        out.append(PaperBudget(r["method_key"], r["dataset_key"], str(r.get("train_hardware", "")).strip().lower(),
                               int(devices) if devices else None, hours,
                               str(r.get("train_budget_scope", "") or "own").strip().lower(),
                               str(r.get("train_budget_source", "") or r.get("source", "")), str(r.get("recipe", "")),
                               _num(r.get("train_images"))))
    return out


def pick_budget(budgets: list[PaperBudget], method: str, dataset: str, recipe: str | None,
                train_images: int) -> PaperBudget | None:
    """The paper budget of a run's method and dataset: the same recipe first, then the closest stated
    image count, then file order (several rows of one paper usually repeat one budget)."""
    cands = [b for b in budgets if b.method == method and b.dataset == dataset]
    if not cands:
        return None

    def key(ib: tuple[int, PaperBudget]) -> tuple:
        i, b = ib
        gap = abs(math.log(b.train_images / train_images)) if b.train_images and train_images else math.inf
        return (b.recipe != (recipe or ""), gap, i)

    return min(enumerate(cands), key=key)[1]


def compare(budget: PaperBudget, own_flops: float, total_flops: float, rates: dict[str, dict[str, tuple]],
            plan_device: str, precision: str, run_recipe: str | None, train_images: int) -> Comparison:
    """Planned vs the paper's device-hours. `rates[device][precision]` = (dense peak FLOP/s, MFU) of the
    plan's assumptions for every table device and the precisions it has. The planned hours are on the
    paper's device when the table has it (at the plan's precision, else the device's fastest), else on
    the plan's device; the explanations name what differs and the MFU the paper's budget implies."""
    from benchmark.hardware import paper_device_key

    flops = total_flops if budget.scope == "total" else own_flops
    hw, notes = paper_device_key(budget.hardware), []
    if hw in rates:
        on = hw
        prec = precision if precision in rates[hw] else max(rates[hw], key=lambda p: rates[hw][p][0])
        if prec != precision:
            notes.append(f"the paper's {hw} has no {precision} peak: compared at its {prec} peak")
    else:
        on, prec = plan_device, precision
        notes.append(f"the paper's {budget.hardware or 'unnamed'} device is not in the device table: "
                     f"compared on {plan_device}")
    peak, mfu = rates[on][prec]
    hours = flops / (peak * mfu * 3600)
    if budget.recipe and run_recipe and budget.recipe != run_recipe:
        notes.append(f"the budget is the paper's '{budget.recipe}' recipe, the run follows '{run_recipe}'")
    if prec != "bf16" and "bf16" in rates[on]:
        bf = flops / (rates[on]["bf16"][0] * rates[on]["bf16"][1] * 3600)
        notes.append(f"planned at the {prec} peak (the suite sets no bf16); with `precision: {{bf16: true}}` "
                     f"{bf:.3g} device-hours, {bf / budget.device_hours:.2f}x the paper")
    notes += _image_notes(budget, flops, train_images, peak, mfu, on, prec)
    return Comparison(budget, hours, on, hours / budget.device_hours, notes)


def _image_notes(budget: PaperBudget, flops: float, train_images: int, peak: float, mfu: float, on: str,
                 prec: str) -> list[str]:
    """The plan at the paper's image count (where it differs), and the MFU the paper's budget implies."""
    notes, paper_flops = [], flops
    if budget.train_images and train_images and abs(budget.train_images / train_images - 1) > 0.05:
        paper_flops = flops / train_images * budget.train_images
        notes.append(f"the paper trained {budget.train_images:.4g} images, ours {train_images:.4g}: at the paper's "
                     f"image count {paper_flops / (peak * mfu * 3600):.3g} device-hours")
    implied = paper_flops / (budget.device_hours * 3600 * peak)
    notes.append(f"the paper's budget implies {implied:.0%} MFU of {on}'s {prec} peak" + (
        " — above the peak: the paper used a faster precision, fewer images or more devices than stated"
        if implied > 1 else ""))
    return notes
