"""Cluster resources from a plan: `benchmark plan --write-resources [FILE]` writes each run's train-job
`runtime` (minutes) and host `mem_mb`; the train rule (rules/train.smk) reads them, per run, from
`{results}/{suite}/planned_resources.json` when that file exists, so Slurm / Kubernetes time limits
come from the plan instead of a guess. An entry is used only while its run's config hash is unchanged
(a changed recipe needs a new plan); other runs keep the suite's `resources.train`.

runtime = ceil(SAFETY x planned wall minutes + OVERHEAD_MINUTES): the safety factor covers an MFU
below the plan's assumption, the overhead start-up, FLOP counting and checkpoint writes.
mem_mb (host RAM of the job, what Slurm's --mem limits) = SAFETY x processes x (HOST_BASE + the
training set held in memory + one copy of the training state, as checkpointing stages it); on a CPU
device the planned peak itself lives in host memory and is added.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import BenchmarkError, ConfigError

if TYPE_CHECKING:  # the train rule imports this module at parse time: no torch import for it
    from benchmark.plan.core import RunPlan, SuitePlan

SAFETY = 1.5
OVERHEAD_MINUTES = 10
HOST_BASE_GPU = 3 * 2**30  # per process: interpreter, torch, CUDA runtime and cuDNN host-side
HOST_BASE_CPU = 1 * 2**30
FILE_NAME = "planned_resources.json"
FORMAT = "fewstep-planned-resources/1"


def default_path(results_root: str | Path, suite: str) -> Path:
    return Path(results_root) / suite / FILE_NAME


def run_resources(p: RunPlan, device_key: str, safety: float = SAFETY) -> dict[str, int]:
    """{runtime (minutes), mem_mb} of one run's train job."""
    t = p.memory.terms
    state = t["weights"] + t["ema"] + t["optimizer"] + t["method nets"]
    base = HOST_BASE_CPU + p.memory.total if device_key == "cpu" else HOST_BASE_GPU + t["data"] + state
    wall_min = p.train_device_hours / p.gpus * 60
    return {"runtime": max(1, math.ceil(safety * wall_min + OVERHEAD_MINUTES)),
            "mem_mb": max(1, math.ceil(safety * p.gpus * base / 2**20))}


def resources_document(plan: SuitePlan, command: str, safety: float = SAFETY) -> dict[str, Any]:
    """The file's content: the plan's assumptions (so a reader knows what the limits rest on) and one
    {config_hash, runtime, mem_mb} entry per train job."""
    from benchmark.provenance import git_commit

    s = plan.settings
    return {"format": FORMAT, "suite": plan.suite.name, "hardware": f"{s.device.key}:{s.count}",
            "precision": s.precision, "mfu": s.mfu, "mfu_source": s.mfu_source, "safety_factor": safety,
            "overhead_minutes": OVERHEAD_MINUTES, "command": command, "git_commit": git_commit(),
            "train": {rid: {"config_hash": p.run.config_hash, **run_resources(p, s.device.key, safety)}
                      for rid, p in plan.runs.items()}}


def write_resources(plan: SuitePlan, path: str | Path, command: str, safety: float = SAFETY) -> Path:
    """Write the resources file atomically (temp file + rename)."""
    from benchmark.provenance import write_json

    write_json(Path(path), resources_document(plan, command, safety))
    return Path(path)


def read_resources(path: str | Path, suite: Any) -> dict[str, dict[str, int]]:
    """{run id: {runtime, mem_mb}} of the entries whose config hash matches the suite's run; {} when the
    file is absent. A file that is not a resources file of this suite is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        return {}
    fix = f"delete {p} or re-write it: python -m benchmark plan --suite {suite.name} --write-resources"
    try:
        doc = json.loads(p.read_text())
        ok = doc.get("format") == FORMAT and isinstance(doc.get("train"), dict)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError(f"{p} is not a planned-resources file", fix)
    if doc.get("suite") != suite.name:
        raise ConfigError(f"{p} was planned for suite '{doc.get('suite')}', not '{suite.name}'", fix)
    out = {}
    for rid, e in doc["train"].items():
        r = suite.runs.get(rid)
        if r is not None and isinstance(e, dict) and e.get("config_hash") == r.config_hash:
            out[rid] = {k: int(e[k]) for k in ("runtime", "mem_mb") if isinstance(e.get(k), int) and e[k] > 0}
    return out


def train_resources(suite: Any, device: str, results_root: str, run_of) -> dict[str, Any]:
    """The train rule's `resources:`: the suite's `resources.train`, with `runtime` and `mem_mb` per run
    from the planned-resources file where it has the run. `run_of(wildcards)` is the rule's Run lookup.
    A bad file stops the workflow with the CLI's one-line error (exit 2), as the Snakefile does."""
    static = suite.resources("train", device)
    try:
        planned = read_resources(default_path(results_root, suite.name), suite)
    except BenchmarkError as e:
        sys.stderr.write(f"error: {e.one_line()}\n")
        sys.exit(2)
    if not planned:
        return static

    def pick(key: str, fallback: int):
        return lambda wildcards: planned.get(run_of(wildcards).id, {}).get(key, fallback)

    out = dict(static)
    for key in ("runtime", "mem_mb"):
        values = [v[key] for v in planned.values() if key in v]
        if values:  # a run the file lacks (changed since planning) keeps the suite's value, else the largest planned
            out[key] = pick(key, static.get(key, max(values)))
    return out
