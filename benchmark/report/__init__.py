"""The report stage (DESIGN §8): `tables` (seed aggregation, leaderboard, verdicts), `plots`
(matplotlib figures made from the tidy tables only) and `html` (the static, offline report).

`build_report` is re-exported lazily (PEP 562) so that importing the tables, as
`benchmark.scaling` does, neither pulls in matplotlib nor creates an import cycle."""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def __getattr__(name: str) -> Any:
    if name == "build_report":
        from benchmark.report.html import build_report

        return build_report
    raise AttributeError(f"module 'benchmark.report' has no attribute {name!r}")
