"""The ratio table `make perf` prints: every perf test records its headline numbers with the
`perf_row` fixture; `pytest_terminal_summary` prints them as one table after the run (they also
stay in pytest-benchmark's extra_info, hence in --benchmark-json)."""

from __future__ import annotations

import pytest

ROWS: list[dict] = []
COLUMNS = [("benchmark", "{}"), ("case", "{}"), ("device", "{}"), ("img/s", "{:.0f}"),
           ("ratio", "{:.3f}"), ("vs", "{}"), ("GFLOP/s", "{:.1f}"), ("MFU", "{:.1%}"), ("comm", "{:.0%}")]


@pytest.fixture
def perf_row(request):
    """Call with the row's values (keys of COLUMNS); missing keys print as '-'."""
    def add(**values):
        ROWS.append({"benchmark": request.node.originalname, **values})
    return add


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of `rows` (one per ratio)."""
    cells = [[name for name, _ in COLUMNS]]
    for r in rows:
        cells.append([fmt.format(r[name]) if r.get(name) is not None else "-" for name, fmt in COLUMNS])
    width = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, width)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in width), *lines[1:]])


def pytest_terminal_summary(terminalreporter):
    if ROWS:
        terminalreporter.write_sep("=", "throughput ratios (baseline time / our time; >= 1: ours is as fast)")
        terminalreporter.write_line(format_table(ROWS))
