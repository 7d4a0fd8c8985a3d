"""The CLI explains itself (issue #24): every subcommand's --help ends with an example that parses
as that subcommand, and `python -m benchmark --help` lists the subcommands grouped, the ones a
user types first (run, validate, doctor, plan) at the top."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import EXAMPLES, SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
NAMES = [name for name, *_ in SUBCOMMANDS]


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Walk the parser: name -> subparser."""
    [action] = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_parser_walk_finds_every_registered_subcommand():
    assert sorted(_subparsers(build_parser())) == sorted(NAMES) and len(NAMES) >= 17


@pytest.mark.parametrize("name", NAMES)
def test_every_subcommand_help_ends_with_an_example_that_parses_as_that_subcommand(name):
    sp = _subparsers(build_parser())[name]
    text = sp.format_help()
    m = re.search(r"example:\n  (python -m benchmark .+)\n?$", text)
    assert m, f"`{name} --help` has no example:\n{text}"
    argv = shlex.split(m.group(1))[3:]
    assert argv[0] == name
    args = build_parser().parse_args(argv)  # SystemExit if a flag is unknown or a required one missing
    assert args.cmd == name and callable(args.fn)


def test_top_level_help_lists_each_subcommand_once_grouped_with_run_validate_doctor_first():
    r = subprocess.run([sys.executable, "-m", "benchmark", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^  ([a-z][a-z-]+)  +\S", r.stdout, flags=re.M)
    assert sorted(listed) == sorted(NAMES), listed  # each once, none missing
    first = ["run", "validate", "doctor"] + (["plan"] if "plan" in NAMES else [])
    assert listed[:len(first)] == first
    assert re.search(r"^run a suite:$", r.stdout, flags=re.M)
    assert r.stdout.index("run a suite:") < r.stdout.index("workflow steps")
    assert f"example:\n  {EXAMPLES['run']}" in r.stdout


def test_a_subcommand_missing_from_the_groups_is_still_listed():
    """A new subcommand (e.g. one merged from another branch) shows up under "other", not nowhere."""
    from benchmark.cli import grouped_commands

    text = grouped_commands({"run": "run a suite", "brand-new": "something new"})
    assert text.index("run a suite:") < text.index("other:") < text.index("brand-new")
