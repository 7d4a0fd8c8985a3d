"""The static report (DESIGN §8): `reports/{suite}/index.html` plus `plots/*.png|svg` and the
leaderboard/summary as CSV and Markdown next to it.

Decisions: images are referenced relatively (`plots/...`), never from outside out_dir (editing
panels are copied in), so the folder works when opened from disk or moved; no scripts, no
external CSS/fonts (offline). The page is a pure function of its inputs: no timestamps or
host-dependent values, so rebuilding from the same CSVs gives byte-identical tables and HTML."""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.aggregate import UNMEASURED_TEACHER_FLAG as _UNMEASURED_FLAG
from benchmark.errors import InputError
from benchmark.metrics.direction import lower_is_better
from benchmark.papers import load_paper
from benchmark.provenance import to_csv, write_text
from benchmark.report import plots
from benchmark.report.tables import (
    leaderboard,
    summarise,
    to_markdown,
    write_tables,
)
from benchmark.scaling import COMPARE_COLUMNS, SCALING_COLUMNS, compare_exponents, without_unmeasured_totals

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1250px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.8em;margin:.6em 0}th,td{border:1px solid #ddd;padding:2px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.reproduced{background:#dff5df}.not-reproduced{background:#fbe0e0}.not-comparable{background:#f1f1f1;color:#555}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}figure img{max-width:100%;
border:1px solid #eee}figcaption{font-size:.8em;color:#555;max-width:640px}nav a{margin-right:1em}
footer{margin-top:3em;font-size:.75em;color:#777}code{font-size:.9em}
"""


_UNMEASURED = " + imported teacher (not measured)"  # its training compute is unknown, not 0


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x: Any, spec: str = ".4g") -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else ("inf" if math.isinf(x) else format(x, spec))
    return "" if x is None else str(x)


def html_table(df: pd.DataFrame, classes: Sequence[str] | None = None, num_cols: Iterable[str] = ()) -> str:
    """A plain HTML table; `classes` gives one CSS class per row (e.g. the verdict)."""
    num = set(num_cols)
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for i, rec in enumerate(df.itertuples(index=False)):
        cls = f' class="{_e(classes[i])}"' if classes is not None else ""
        cells = "".join(
            f'<td class="num">{_e(_fmt(v))}</td>' if c in num else f"<td>{_e(_fmt(v))}</td>"
            for c, v in zip(df.columns, rec)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pm(mean: float, std: float, lo: float, hi: float) -> str:
    s = _fmt(mean)
    if isinstance(std, float) and not math.isnan(std):
        s += f" ± {_fmt(std, '.2g')}"
    if isinstance(lo, float) and not math.isnan(lo):
        s += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return s


def leaderboard_view(board: pd.DataFrame) -> pd.DataFrame:
    """Display columns of the leaderboard: mean ± std [95% CI] next to the paper number."""
    return pd.DataFrame(
        {
            "dataset": board["dataset"],
            "method": board["method"],
            "variant": board["variant"],
            "steps": board["steps"],
            "NFE": board["nfe"],
            "metric": board["metric"],
            "extractor / library": board["extractor"].fillna("") + " / " + board["library"].fillna(""),
            "ours: mean ± std [95% CI]": [
                _pm(*r) for r in zip(board["mean"], board["std"], board["ci_lo"], board["ci_hi"])
            ],
            "seeds": board["n"],
            "paper": [
                f"{_fmt(v)} {m} ({x})" + ("" if ok else " unverified") if not math.isnan(v) else ""
                for v, m, x, ok in zip(
                    board["paper_value"],
                    board["paper_metric"],
                    board["paper_extractor"],
                    board["paper_verified"],
                )
            ],
            "paper row": board["paper_method"],
            "ratio": board["ratio"],
            "verdict": board["verdict"],
            "reason": board["reason"],
        }
    )


def headline_metric(metrics: Iterable[str]) -> str | None:
    """The metric a dataset's leaderboard is ranked by: FID where it exists (Inception), else the
    Fréchet distance of the dataset's own extractor (fd_digitnet, fd_exact), else the first."""
    ms = sorted(set(metrics))
    for pick in (lambda m: m == "fid", lambda m: m.startswith("fd_") and m != "fd_exact", lambda m: m == "fd_exact"):
        hit = [m for m in ms if pick(m)]
        if hit:
            return hit[0]
    return ms[0] if ms else None


def headline_tables(summary: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Per dataset: (dataset, metric, table, best-mask). Rows are methods (their headline variant:
    the family with the most compute, a PD/MCM family kept whole), columns are step budgets with
    their NFE, cells mean ± std over seeds; `best` marks the best cell of each column; the
    training compute (total FLOPs incl. teacher, device-hours) stands beside each method, marked
    where an imported teacher's training is not in it."""
    s = plots.largest_variant(plots.preferred_library(summary))
    out = []
    for ds, g in s.groupby("dataset", sort=True):
        metric = headline_metric(g["metric"])
        g = g[g["metric"] == metric]
        steps = sorted(int(k) for k in g["steps"].unique())
        rows, best_val = [], {}
        low = lower_is_better(metric)
        for method, gm in g.groupby("method", sort=True):
            row: dict[str, Any] = {"method": method, "variant": gm["family"].iloc[0]}
            for k in steps:
                c = gm[gm["steps"] == k]
                if c.empty:
                    row[k] = ""
                    continue
                m, sd, nfe = float(c["mean"].iloc[0]), c["std"].iloc[0], int(c["nfe"].iloc[0])
                row[k] = _fmt(m) + (f" ± {_fmt(float(sd), '.2g')}" if pd.notna(sd) else "") + (
                    f" (NFE {nfe})" if nfe != k else "")
                if k not in best_val or (m < best_val[k][0] if low else m > best_val[k][0]):
                    best_val[k] = (m, method)
            unmeasured = _UNMEASURED if any(_UNMEASURED_FLAG in str(f) for f in gm["flags"]) else ""
            row["train FLOPs (total)"] = _fmt(float(gm["total_flops"].max()), ".3g") + unmeasured
            row["device-hours"] = _fmt(float(gm["device_hours"].max()), ".3g") + unmeasured
            rows.append(row)
        table = pd.DataFrame(rows, columns=["method", "variant", *steps, "train FLOPs (total)", "device-hours"])
        best = pd.DataFrame({k: table["method"] == best_val[k][1] if k in best_val else False for k in steps})
        table.columns = ["method", "variant", *[f"{k} step{'s' if k > 1 else ''}" for k in steps],
                         "train FLOPs (total)", "device-hours"]
        out.append((ds, metric, table, best))
    return out


def headline_html(summary: pd.DataFrame) -> str:
    parts = []
    for ds, metric, table, best in headline_tables(summary):
        arrow = "lower is better" if lower_is_better(metric) else "higher is better"
        head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
        body = []
        for i, rec in enumerate(table.itertuples(index=False)):
            cells = []
            for j, v in enumerate(rec):
                bold = 2 <= j < 2 + best.shape[1] and bool(best.iloc[i, j - 2])
                txt = f"<strong>{_e(v)}</strong>" if bold else _e(v)
                cells.append(f'<td class="num">{txt}</td>' if j >= 2 else f"<td>{txt}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3>{_e(ds)}: <code>{_e(metric)}</code> ({arrow}; mean ± std over seeds, best per "
                     f"column in bold)</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return "\n".join(parts) or "<p>No sampled results.</p>"


def scaling_view(scaling: pd.DataFrame) -> pd.DataFrame:
    """Display columns of scaling.csv: estimates with their 95% profile-t intervals; a refused
    interval shows nothing (the note says why), an end beyond b's search bound shows '>bound'."""
    if scaling.empty:
        return scaling
    empty = pd.Series("", index=scaling.index)
    note = scaling["interval_note"].fillna("") if "interval_note" in scaling else empty
    hits = scaling["bound_hits"].fillna("") if "bound_hits" in scaling else empty

    def ci(lo: pd.Series, hi: pd.Series) -> list[str]:
        return [
            "" if n else f"[{_fmt(a, '.3g')}, {'>bound' if math.isnan(float(b)) and 'b_hi' in h else _fmt(b, '.3g')}]"
            for a, b, n, h in zip(lo, hi, note, hits)
        ]

    return pd.DataFrame(
        {
            "dataset": scaling["dataset"],
            "method": scaling["method"],
            "steps": scaling["steps"],
            "metric": scaling["metric"],
            "extractor / library": scaling["extractor"].fillna("").astype(str)
            + " / "
            + scaling["library"].fillna("").astype(str),
            "axis": scaling["axis"],
            "law": scaling["law"] if "law" in scaling else "all-cells",
            "a": scaling["a"],
            "b": scaling["b"],
            "b 95% CI": ci(scaling["b_lo"], scaling["b_hi"]),
            "c": scaling["c"],
            "c 95% CI": ci(scaling["c_lo"], scaling["c_hi"]),
            "r2": scaling["r2"],
            "n_points": scaling["n_points"],
            "target": scaling["target"],
            "compute_to_target": scaling["compute_to_target"],
            "in grid": scaling["ctt_in_grid"] if "ctt_in_grid" in scaling else "",
            "ctt 95% CI": ci(scaling["ctt_lo"], scaling["ctt_hi"]),
            "note": [", ".join(x for x in (n, h) if x) for n, h in zip(note, hits)],
        }
    )


def _figures_html(figs: list[plots.Figure]) -> str:
    if not figs:
        return "<p>No data for this figure.</p>"
    return "\n".join(
        f'<figure><a href="{_e(f.svg)}"><img src="{_e(f.png)}" alt="{_e(f.kind)} {_e(f.dataset)} '
        f'{_e(f.metric)}"></a><figcaption>{_e(f.caption)} (<a href="{_e(f.svg)}">SVG</a>)'
        "</figcaption></figure>"
        for f in figs
    )


def run_versions(results: pd.DataFrame, results_root: Path) -> dict[str, str]:
    """run_dir -> 'pkg=version, ...' from the provenance of its metrics/steps*.json files."""
    out: dict[str, str] = {}
    if "run_dir" not in results.columns:
        return out
    for rd in sorted(results["run_dir"].dropna().unique()):
        versions: dict[str, str] = {}
        for p in sorted((plots.resolve_run_dir(rd, results_root) / "metrics").glob("steps*.json")):
            try:
                prov = json.loads(p.read_text()).get("provenance", {})
            except (OSError, ValueError):
                continue
            versions.update(prov.get("versions", {}) or {})
        out[rd] = ", ".join(f"{k}={v}" for k, v in sorted(versions.items()))
    return out


def provenance_tables(results: pd.DataFrame, results_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: config hash, commit, hardware, versions; evaluators: the evaluator tuple per metric)."""
    r = results.copy()
    for c in ("config_hash", "git_commit", "hardware", "run", "run_dir", "mode", "ref_sha256", "num_samples"):
        if c not in r.columns:
            r[c] = ""
    versions = run_versions(r, results_root)
    r["versions"] = r["run_dir"].map(versions).fillna("")
    runs = (
        r[
            [
                "dataset",
                "method",
                "variant",
                "seed",
                "run",
                "config_hash",
                "git_commit",
                "hardware",
                "versions",
            ]
        ]
        .drop_duplicates()
        .sort_values(["dataset", "method", "variant", "seed"])
        .reset_index(drop=True)
    )
    ev = (
        r[["dataset", "metric", "library", "mode", "extractor", "ref_sha256", "num_samples"]]
        .fillna("")
        .drop_duplicates()
        .sort_values(["dataset", "metric", "library"])
        .reset_index(drop=True)
    )
    return runs, ev


def build_report(
    results_csv: str | Path,
    scaling_csv: str | Path,
    paper_csv: str | Path,
    out_dir: str | Path,
    *,
    suite: str,
    results_root: str | Path,
    editing_panels: Sequence[str | Path] | None = None,
) -> Path:
    """Write out_dir/index.html (+ plots/, leaderboard/summary CSV+MD, scaling.csv copy); return
    the index path. results_root is where run_dir paths in results.csv are relative to."""
    out = Path(out_dir)
    results = _suite_results(Path(results_csv), suite)
    scaling = (
        pd.read_csv(scaling_csv) if Path(scaling_csv).is_file() else pd.DataFrame(columns=SCALING_COLUMNS)
    )
    summary = summarise(results)
    board = leaderboard(summary, load_paper(paper_csv))
    out.mkdir(parents=True, exist_ok=True)
    compare = _write_report_tables(summary, board, scaling, out)

    root = Path(results_root)
    figs_nfe = plots.plot_quality_vs_nfe(summary, out)
    figs_compute = plots.plot_quality_vs_compute(without_unmeasured_totals(results), scaling, out)
    figs_pareto = plots.plot_pareto(summary, out)
    figs_samples = plots.plot_sample_grids(results, root, out)
    figs_edit = _copy_editing_panels(editing_panels or [], out)

    parts = [
        *_head_html(suite, bool(figs_edit)),
        *_leaderboard_html(results, summary),
        *_paper_html(board),
        '<h2 id="nfe">Quality vs NFE</h2>',
        _figures_html(figs_nfe),
        '<h2 id="compute">Quality vs training compute</h2>',
        _figures_html(figs_compute),
        *_scaling_html(scaling, compare),
        '<h2 id="pareto">Quality vs sampling FLOPs</h2>',
        _figures_html(figs_pareto),
        '<h2 id="samples">Samples</h2>',
        _figures_html(figs_samples),
    ]
    if figs_edit:
        parts += ['<h2 id="editing">Zero-shot editing (consistency models)</h2>', _figures_html(figs_edit)]
    parts += planned_section(suite, root)  # projected (benchmark plan) vs measured FLOPs and device-hours
    parts += _provenance_html(results, root)
    index = out / "index.html"
    write_text(index, "\n".join(parts) + "\n")
    return index


def _suite_results(results_csv: Path, suite: str) -> pd.DataFrame:
    """The suite's rows of results.csv (a shared CSV may hold several suites), with empty
    extractor/library as '' so that grouping and matching never meet NaN."""
    if not results_csv.is_file():
        raise InputError(f"{results_csv} not found", "run the aggregate rule first")
    results = pd.read_csv(results_csv)
    if "suite" in results.columns:
        results = results[results["suite"].astype(str) == str(suite)].reset_index(drop=True)
    if results.empty:
        raise InputError(f"{results_csv} has no rows for suite {suite!r}", "check the suite name")
    results[["extractor", "library"]] = results[["extractor", "library"]].fillna("")
    return results


def _write_report_tables(summary: pd.DataFrame, board: pd.DataFrame, scaling: pd.DataFrame,
                         out: Path) -> pd.DataFrame:
    """The report's files besides the page (leaderboard, summary, scaling laws and their exponent
    comparisons as CSV/Markdown), so that every number on the page is also a table; returns the
    comparisons."""
    write_tables(summary, board, out)
    write_text(out / "scaling.csv", to_csv(scaling))
    write_text(out / "scaling.md", to_markdown(scaling))
    compare = compare_exponents(scaling) if "law" in scaling else pd.DataFrame(columns=COMPARE_COLUMNS)
    write_text(out / "scaling_compare.csv", to_csv(compare))
    return compare


def _copy_editing_panels(panels: Sequence[str | Path], out: Path) -> list[plots.Figure]:
    """Editing panels copied into out/plots/ (the report never links outside its folder)."""
    figs = []
    for i, p in enumerate(panels):
        p = Path(p)
        if not p.is_file():
            raise InputError(f"editing panel {p} not found", "run the editing rule or drop the panel")
        dest = out / "plots" / f"editing_{i}_{plots.slug(p.stem)}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
        rel = dest.relative_to(out).as_posix()
        figs.append(plots.Figure("editing", "", "", rel, rel, f"Consistency-model zero-shot editing: {p.stem}"))
    return figs


def _head_html(suite: str, has_editing: bool) -> list[str]:
    """Doctype, title, inline CSS and the navigation bar (an Editing link only when panels exist)."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fewstep-bench report: {_e(suite)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body>",
        f"<h1>fewstep-bench: suite <code>{_e(suite)}</code></h1>",
        '<nav><a href="#leaderboard">Leaderboard</a><a href="#paper">Paper vs ours</a><a href="#nfe">Quality vs NFE</a>'
        '<a href="#compute">Quality vs compute</a><a href="#pareto">Pareto front</a>'
        '<a href="#samples">Samples</a>'
        + ('<a href="#editing">Editing</a>' if has_editing else "")
        + '<a href="#planned">Planned vs spent</a><a href="#provenance">Provenance</a></nav>',
    ]


def _leaderboard_html(results: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The leaderboard section: what it counts and the headline metric per dataset."""
    return [
        '<h2 id="leaderboard">Leaderboard</h2>',
        f"<p>{len(results)} values from {results['run_dir'].nunique() if 'run_dir' in results else '?'} runs. "
        "Per dataset, its headline metric: methods as rows (the variant with the most training compute; "
        "PD rounds and MCM segment counts as one row), step budgets as columns. "
        'Files: <a href="leaderboard.csv">leaderboard.csv</a>, <a href="leaderboard.md">leaderboard.md</a>, '
        '<a href="summary.csv">summary.csv</a>.</p>',
        headline_html(summary),
    ]


def _paper_html(board: pd.DataFrame) -> list[str]:
    """The paper-vs-ours section: verdict counts, the rule that decides them, the rows with a paper
    number (coloured by verdict) and, folded, the rows without one."""
    with_paper = board[board["paper_value"].notna()].reset_index(drop=True)
    without = board[board["paper_value"].isna()].reset_index(drop=True)
    verdict_cls = [v.replace(" ", "-") for v in with_paper["verdict"]]
    counts = (
        with_paper["verdict"]
        .value_counts()
        .reindex(["reproduced", "not reproduced", "not comparable"], fill_value=0)
    )
    return [
        '<h2 id="paper">Reproduced vs paper</h2>',
        f"<p>{len(with_paper)} rows have a paper row of the same method, dataset, step count and metric: "
        f"{counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, "
        f"{counts['not comparable']} not comparable. A row is compared only when the paper row's facts "
        "(resolution, metric and extractor, NFE, conditioning, architecture, space, loss metric, sampler, "
        "recipe, training budget where stated) all match and the run's recipe diff is empty; then it is "
        "<em>reproduced</em> when the paper value lies in our 95% t-interval over seeds or within 10% of our "
        "mean. Otherwise the reason names every difference.</p>",
        html_table(leaderboard_view(with_paper), verdict_cls, ["NFE", "seeds", "ratio"])
        if len(with_paper)
        else "<p>No result has a paper counterpart (the paper suites do: cifar10, imagenet64, ...).</p>",
        f"<details><summary>All results ({len(without)} rows without a paper number)</summary>"
        + html_table(
            leaderboard_view(without).drop(columns=["paper", "paper row", "ratio", "verdict", "reason"]),
            None,
            ["NFE", "seeds"],
        )
        + "</details>",
    ]


def _scaling_html(scaling: pd.DataFrame, compare: pd.DataFrame) -> list[str]:
    """Below the compute figures: how the laws are fitted, the fitted laws and the exponent
    comparisons (or how to get laws when no group has enough compute values)."""
    sc_view = scaling_view(scaling)
    num_cols = ["steps", "a", "b", "c", "r2", "n_points", "target", "compute_to_target"]
    return [
        "<p>Fits of q(C) = a·C<sup>-b</sup> + c in log space with 95% profile-likelihood intervals "
        "(t on n&minus;3 degrees of freedom), given only with &ge; 5 compute values (else the note says "
        "<em>too few compute values for an interval</em>); <em>law</em>: all cells of a method, the "
        "compute-efficient frontier, or one model size; a b beyond its search bound is named, not shown; "
        "method-vs-method exponent differences in <a href=\"scaling_compare.csv\">scaling_compare.csv</a>; "
        "compute_to_target is the compute at which the law reaches <code>target</code> "
        "(per step budget, the median of the fitted methods' best results; inf: below the fitted floor c; "
        '<em>in grid</em>: interpolated within the runs\' compute range). <a href="scaling.csv">scaling.csv</a></p>',
        (
            f"<details{' open' if len(sc_view) <= 24 else ''}><summary>Fitted laws ({len(sc_view)} rows: "
            "method × step budget × metric × compute axis)</summary>" + html_table(sc_view, None, num_cols)
            + "</details>"
        )
        if len(sc_view)
        else "<p>No group has 3 or more compute values: declare a <code>grid:</code> of model sizes "
        "and/or training budgets in the suite to fit scaling laws.</p>",
        (
            f"<details><summary>Exponent comparisons ({len(compare)} method pairs: b_a &minus; b_b with a 95% "
            "MOVER interval; <em>undecided</em> when it contains 0)</summary>"
            + html_table(compare, None, ["steps", "b_a", "b_b", "b_diff", "b_diff_lo", "b_diff_hi"]) + "</details>"
        )
        if len(compare)
        else "",
    ]


def _provenance_html(results: pd.DataFrame, root: Path) -> list[str]:
    """The provenance section (runs: hashes, commits, hardware, versions; evaluators) and the end
    of the page."""
    runs, evaluators = provenance_tables(results, root)
    return [
        '<h2 id="provenance">Provenance</h2>',
        "<h3>Runs</h3>",
        html_table(runs),
        "<h3>Evaluators</h3>",
        html_table(evaluators),
        "<footer>Generated by fewstep-bench from results.csv, scaling.csv and paper_results.csv; "
        "plots are made from these tables only.</footer>",
        "</body></html>",
    ]


def planned_html(df: pd.DataFrame) -> list[str]:
    """The section's heading, one paragraph saying what the columns are, and the table."""
    from benchmark.report.planned import COLUMNS

    intro = ("<p>FLOPs projected by <code>python -m benchmark plan</code> (the training counters run on "
             "meta-device networks before any training) beside the FLOPs each finished run counted; device-hours "
             "projected at the plan's MFU on the device the run used beside the device-hours it took, and the "
             "MFU those imply (docs/cost.md).</p>")
    if df.empty:
        return ['<h2 id="planned">Planned vs spent</h2>', "<p>No finished run yet.</p>"]
    num = [c for c in COLUMNS if c not in ("run", "hardware", "FLOPs agree", "MFU assumed")]
    return ['<h2 id="planned">Planned vs spent</h2>', intro, html_table(df, num_cols=num)]


def planned_section(suite_name: str, results_root: Path) -> list[str]:
    """The section for the report: the plan of config/suites/<suite_name>.yaml, or one sentence why not."""
    from benchmark.config import load_suite
    from benchmark.errors import BenchmarkError
    from benchmark.report.planned import planned_vs_spent

    try:
        suite = load_suite(suite_name)
    except BenchmarkError as e:
        return ['<h2 id="planned">Planned vs spent</h2>',
                f"<p>Not planned: the suite config could not be loaded ({html.escape(e.what)}).</p>"]
    return planned_html(planned_vs_spent(suite, Path(results_root)))
