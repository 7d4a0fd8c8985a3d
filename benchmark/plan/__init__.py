"""`benchmark plan`: a suite's training and sampling FLOPs, device-hours, peak memory per device and
wall time projected before anything runs, beside the budgets the papers report (docs/cost.md).

flops.py counts (the compute counters on meta-device networks), memory.py the memory model,
budgets.py the papers' budgets, schedule.py the DAG's wall time, core.py puts them together,
render.py prints them, resources.py writes the Slurm/Kubernetes resources a plan implies."""

# The `plan` subcommand's arguments, in benchmark/cli.py's SUBCOMMANDS format (flags, add_argument
# keywords); kept here, torch-free, so that the CLI only registers them.
PLAN_ARGS = [
    (("--suite",), {"required": True, "help": "suite name (config/suites/NAME.yaml) or YAML path"}),
    (("--hardware",), {"default": "a100-80gb:1",
                       "help": "device key[:count] of benchmark/hardware.py, e.g. a100-80gb:8 (default a100-80gb:1)"}),
    (("--mfu",), {"type": float, "help": "model FLOP utilisation (0-1]; default: results/perf/measured.json for "
                                         "the device, else 0.4 (assumed)"}),
    (("--precision",), {"choices": ["bf16", "tf32", "fp32"],
                        "help": "peak to plan at (default: the suite's precision:)"}),
    (("--engine",), {"choices": ["ddp", "fsdp"], "help": "default: the suite's distributed.engine, else ddp"}),
    (("--train-gpus",), {"type": int, "help": "what-if: plan as if the suite set resources.train.gpus N"}),
    (("--batch-per-gpu",), {"type": int, "help": "what-if: plan as if the suite set distributed.batch_per_gpu N"}),
    (("--format",), {"choices": ["text", "markdown", "json"], "default": "text"}),
    (("--out",), {"help": "write the plan to this file (atomically) instead of stdout"}),
    (("--write-resources",), {"nargs": "?", "const": "", "metavar": "FILE",
                              "help": "write each train job's runtime/mem_mb (default FILE: "
                                      "RESULTS/<suite>/planned_resources.json, which the train rule reads)"}),
    (("--safety",), {"type": float, "default": 1.5, "help": "runtime/memory safety factor of --write-resources"}),
    (("--results-root",), {"default": "results"}),
    (("--paper",), {"help": "paper results CSV with the budget columns (default config/paper_results.csv)"}),
    (("--measured",), {"help": "measured-MFU record (default results/perf/measured.json)"}),
]
