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


def compare(budget: PaperBudget, own_flops: float, total_flops: float, flops_per_hour: dict[str, float | None],
            plan_device: str, run_recipe: str | None, train_images: int) -> Comparison:
    """Planned vs the paper's device-hours; `flops_per_hour` maps device keys to the plan's achieved
    FLOP per device-hour at its precision and MFU (None where the device lacks that precision)."""
    flops = total_flops if budget.scope == "total" else own_flops
    on = budget.hardware if flops_per_hour.get(budget.hardware) else plan_device
    hours = flops / flops_per_hour[on]
    notes = []
    if on != budget.hardware:
        notes.append(f"paper's {budget.hardware or 'unnamed'} device is not in the device table (or lacks "
                     f"the plan's precision): compared on {plan_device}")
    if budget.train_images and train_images and abs(budget.train_images / train_images - 1) > 0.05:
        per_image = hours / train_images * budget.train_images / budget.device_hours
        notes.append(f"paper trained {budget.train_images:.4g} images, ours {train_images:.4g}: "
                     f"{per_image:.2f}x the paper per image")
    if budget.recipe and run_recipe and budget.recipe != run_recipe:
        notes.append(f"the budget is the paper's '{budget.recipe}' recipe, the run follows '{run_recipe}'")
    return Comparison(budget, hours, on, hours / budget.device_hours, notes)
