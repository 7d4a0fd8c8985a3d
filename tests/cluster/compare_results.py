"""Compare two results.csv files (a Slurm run and a local run of the same suite): the same rows
with the same values. Timing-dependent columns (device-hours, hardware, seconds) are ignored;
values are compared exactly, since both runs execute the same deterministic CPU code.

Usage: python tests/cluster/compare_results.py SLURM.csv LOCAL.csv   (exit 0 equal, 1 differ)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

KEY = ["dataset", "method", "variant", "seed", "steps", "metric", "extractor", "library", "mode"]
SKIP = {"device_hours", "hardware", "seconds", "git_commit"}


def compare(a: Path, b: Path) -> list[str]:
    """Differences between two results tables, as readable lines (empty if equal)."""
    da, db = pd.read_csv(a), pd.read_csv(b)
    key = [k for k in KEY if k in da.columns]
    cols = [c for c in da.columns if c not in SKIP and c in db.columns]
    da, db = (d[cols].sort_values(key).reset_index(drop=True) for d in (da, db))
    if len(da) != len(db):
        return [f"{len(da)} rows vs {len(db)} rows"]
    out = []
    for c in cols:
        sa, sb = da[c], db[c]
        same = (sa == sb) | (sa.isna() & sb.isna())
        for i in (~same).to_numpy().nonzero()[0][:5]:
            out.append(f"{c} row {dict(da.loc[i, key])}: {sa[i]!r} vs {sb[i]!r}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    diffs = compare(Path(argv[0]), Path(argv[1]))
    rows = len(pd.read_csv(argv[0]))
    if diffs:
        print("results differ:\n  " + "\n  ".join(diffs))
        return 1
    print(f"results.csv equal: {rows} rows, every value identical (timing columns ignored)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
