"""The workflow passes `snakemake --lint`, the check the Snakemake workflow catalog applies
(issue #24): every rule names a software environment and a log, shell commands take their
non-file arguments from `params:`, and rule files hold no functions (those live in rules/common.smk)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _lint(snakefile: Path, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir), "--lint"],
                          capture_output=True, text=True, timeout=300)


def test_snakemake_lint_reports_nothing_on_the_workflow_with_its_default_config(tmp_path):
    r = _lint(REPO / "Snakefile", tmp_path)
    out = r.stdout + r.stderr
    assert "Lints for" not in out, out
    assert r.returncode == 0 and "Congratulations" in out, out


def test_lint_check_fails_on_a_rule_without_log_or_environment(tmp_path):
    """The check above can fail: the same call on a rule that lacks `log:` and `conda:` and reads a
    module-level variable in its shell command reports each."""
    sf = tmp_path / "Snakefile"
    sf.write_text('X = "1"\n\nrule bad:\n    output:\n        "out.txt",\n    shell:\n        "echo {X} > {output}"\n')
    r = _lint(sf, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for lint in ("No log directive defined", "Specify a conda environment", "directly uses variable X"):
        assert lint in out, out


def test_every_rule_names_an_environment_file_that_exists():
    """`conda:` paths are relative to the rule file; each must be a real env file (--use-conda
    builds it; tests/test_environment.py keeps environment.yml's pins equal to pyproject's)."""
    rules = conda = 0
    for f in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        text = f.read_text()
        rules += len(re.findall(r"^rule \w+:", text, flags=re.M))
        for path in re.findall(r"^    conda:\n        \"([^\"]+)\"", text, flags=re.M):
            conda += 1
            assert (f.parent / path).resolve().is_file(), f"{f.name}: conda env {path} not found"
    assert rules > 10 and conda == rules - 1, (rules, conda)  # all but `rule all` (no job of its own)
