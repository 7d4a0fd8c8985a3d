"""The CSV tables a CLI step is handed (results, scaling, paper results), checked before use.

`fit` and `report` read tables that a person may have edited or a killed job may have left empty;
each is checked here for the columns and numbers the step needs, so a bad table fails in one line
(`error: <what> — <fix>`) instead of deep in pandas.
"""

from __future__ import annotations

from pathlib import Path

# Each `need` below is (columns the table must have, those of them that must be numeric).


def results_need() -> tuple[list[str], list[str]]:
    """results.csv as aggregate writes it: all its columns (fit and report index several of them)."""
    from benchmark.aggregate import COLUMNS

    return list(COLUMNS), ["seed", "steps", "value", "nfe", "train_flops", "total_flops", "num_samples"]


PAPER_NEED = (["method_key", "dataset_key", "resolution", "steps", "metric", "extractor", "value", "verified"],
              ["resolution", "steps", "value"])


def read_table(path: str | Path, need: tuple[list[str], list[str]], what: str, fix: str, *,
               allow_no_rows: bool = False):
    """Read a CSV the CLI was given and check it: exists, parses, UTF-8, has the `need` columns,
    numbers where numbers belong, and (unless allow_no_rows) at least one row. InputError otherwise."""
    import pandas as pd

    from benchmark.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} not found", fix)
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {p} is empty (no header)", fix) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{what} {p} is not a readable CSV table ({e.__class__.__name__})", fix) from None
    cols, numeric = need
    missing = [c for c in cols if c not in df.columns]
    if missing:
        more = f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""
        raise InputError(f"{what} {p} lacks columns {missing[:6]}{more}", fix)
    if not allow_no_rows and df.empty:
        raise InputError(f"{what} {p} has a header but no rows", fix)
    for c in numeric:
        bad = df[c].notna() & pd.to_numeric(df[c], errors="coerce").isna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(f"{what} {p}: column '{c}' has a non-number {df[c].iloc[i]!r} on data row {i + 1}", fix)
    return df
