"""`python -m benchmark plan`: print a suite's plan, optionally write the resources it implies, and
stop with a one-line error when a run cannot fit the named device (after printing the plan)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from benchmark.errors import ConfigError, DoesNotFit
from benchmark.hardware import GIB, MEASURED_PATH, read_measured


def _too_big_error(plan) -> DoesNotFit:
    from benchmark.plan.core import suggest_batch_per_gpu

    worst = max(plan.too_big, key=lambda p: p.memory.total)
    b = suggest_batch_per_gpu(plan)
    hint = f"set distributed.batch_per_gpu: {b} (every run fits then; accumulation keeps the batch), " if b else ""
    d = plan.settings.device
    terms = ", ".join(f"{k} {v / GIB:.3g}" for k, v in sorted(worst.memory.terms.items(), key=lambda kv: -kv[1])
                      if v > 0)
    n = len(plan.too_big)
    return DoesNotFit(f"run {worst.run.id} needs {worst.memory.total / GIB:.3g} GiB per device ({terms} GiB) but "
                      f"{d.key} has {d.memory_bytes / GIB:.0f} GiB" + (f" ({n} runs do not fit)" if n > 1 else ""),
                      hint + "plan on a larger device, or shard with distributed.engine: fsdp over more GPUs "
                      "(resources.train.gpus)")


def _command(args) -> str:
    """The plan's command line (recorded in the resources file), rebuilt from its arguments."""
    parts = ["python", "-m", "benchmark", "plan", "--suite", str(args.suite), "--hardware", args.hardware]
    for flag in ("mfu", "precision", "engine", "safety"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    return " ".join(shlex.quote(x) for x in parts)


def run_plan(args) -> int:
    """The `plan` subcommand: validate, plan, print (or --out), optionally write the resources file;
    a run that cannot fit is a one-line DoesNotFit after the plan is printed (nothing written)."""
    from benchmark.config import load_suite
    from benchmark.plan import render, resources
    from benchmark.plan.budgets import PAPER_CSV
    from benchmark.plan.core import make_settings, plan_suite
    from benchmark.provenance import write_text

    suite = load_suite(args.suite)  # a suite that does not validate: its one-line ConfigError
    if args.write_resources is not None and (args.train_gpus or args.batch_per_gpu):
        raise ConfigError("--write-resources plans the suite as written, not a what-if",
                          "set resources.train.gpus / distributed.batch_per_gpu in the suite instead of "
                          "--train-gpus / --batch-per-gpu")
    measured = read_measured(Path(args.measured) if args.measured else MEASURED_PATH)
    settings = make_settings(suite, args.hardware, mfu=args.mfu, precision=args.precision, engine=args.engine,
                             measured=measured, train_gpus=args.train_gpus, batch_per_gpu=args.batch_per_gpu)
    plan = plan_suite(suite, settings, paper_csv=Path(args.paper) if args.paper else PAPER_CSV, measured=measured)
    text = {"text": render.as_text, "json": render.as_json,
            "markdown": lambda p: render.as_text(p, markdown=True)}[args.format](plan)
    if plan.too_big:
        sys.stdout.write(text)
        raise _too_big_error(plan)
    if args.write_resources is not None:
        path = Path(args.write_resources or resources.default_path(args.results_root, suite.name))
        resources.write_resources(plan, path, _command(args), args.safety)
        sys.stderr.write(f"resources: runtime/mem_mb of {len(plan.runs)} train jobs written to {path}\n")
    if args.out:
        write_text(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0
