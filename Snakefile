# fewstep-bench: one config -> train every method on every dataset, sample each at a sweep of
# step budgets, measure quality and compute, fit scaling laws, write the report (DESIGN §3).
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
from benchmark.errors import BenchmarkError  # noqa: E402


configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "report/workflow.rst"


try:
    from benchmark.config import check_shell_safe, load_suite, suite_path, validate_workflow_config

    validate_workflow_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    SUITE_FILE = suite_path(config["suite"]).resolve()
    for _what, _v in (("suite path", SUITE_FILE), ("results directory", config.get("results", "results")),
                      ("reports directory", config.get("reports", "reports")),
                      ("data_root", config.get("data_root", "data")), ("python interpreter", sys.executable)):
        check_shell_safe(_v, _what)  # every job's command line is built from these
    S = load_suite(SUITE_FILE)  # validates against schemas/suite.schema.yaml + cross-field checks
    if any("inception" in S.extractors(d) for d in S.datasets):
        from benchmark.metrics.fid import require_inception

        require_inception()  # stop before any training if the FID weights are missing
except BenchmarkError as e:
    sys.stderr.write(f"error: {e.one_line()}\n")
    sys.exit(2)

wildcard_constraints:  # the names validation allows (benchmark.validation.NAME_RE): nothing a shell interprets
    dsid="[A-Za-z0-9][A-Za-z0-9._-]*",
    dataset="[A-Za-z0-9][A-Za-z0-9._-]*",
    run="[A-Za-z0-9][A-Za-z0-9._-]*",
    k=r"\d+",
    ext="[a-z0-9_]+",
    split="train|test",


# Every rule names environment.yml under `conda:`. With --use-conda a job runs in the env built
# from it, which holds the dependencies but not this repository: there its `python` runs the
# workflow's own `benchmark` package (PYTHONPATH; Snakemake clears the caller's for conda jobs).
# Otherwise jobs use the interpreter that runs Snakemake (the .venv of `make setup`).
from snakemake_interface_executor_plugins.settings import DeploymentMethod  # noqa: E402

if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    PY = "python"
    shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(workflow.basedir)}; ")
else:
    PY = sys.executable
R = config.get("results", "results")
REP = config.get("reports", "reports")
SUITE = S.name
THREADS = int(config.get("threads_per_job", 1))
DEVICE = config.get("device", "cpu")
DATA_ROOT = config.get("data_root", "data")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/latent.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        f"{R}/{SUITE}/results.csv",
        f"{R}/{SUITE}/scaling.csv",
        f"{REP}/{SUITE}/index.html",
