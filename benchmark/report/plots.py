"""Report figures, made from the tidy tables only (summary / results / scaling) plus the sample
files the tables point to. Each figure is written as PNG (embedded in the HTML) and SVG
(linked), with deterministic metadata so the same tables give the same files.

Conventions: one library per metric is plotted (exact > torch-fidelity > clean-fid; the
leaderboard keeps both), methods keep one colour across all figures, and curves over step
budgets use each method's largest variant (most total compute)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.metrics.direction import is_auxiliary, lower_is_better, metric_direction  # noqa: E402
from benchmark.powerlaw import power_law  # noqa: E402
from benchmark.provenance import atomic_savefig  # noqa: E402
from benchmark.scaling import AXES, frontier_cells  # noqa: E402

LIBRARY_PREFERENCE = ("fewstep-bench", "exact", "torch-fidelity", "clean-fid")
from matplotlib import ticker  # noqa: E402

plt.rcParams.update(
    {"svg.hashsalt": "fewstep-bench", "figure.dpi": 100, "font.size": 9, "axes.formatter.use_mathtext": False}
)


@dataclass(frozen=True)
class Figure:
    """A written figure: paths relative to the report's out_dir plus what it shows."""

    kind: str
    dataset: str
    metric: str
    png: str
    svg: str
    caption: str


def slug(*parts: object) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", str(p)).strip("-") for p in parts if str(p) != "")


def method_colors(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted(set(methods)))}


def save_figure(fig: plt.Figure, out_dir: Path, stem: str, tight: bool = True) -> tuple[str, str]:
    """PNG + SVG under out_dir/plots/; returns paths relative to out_dir. tight=False keeps the
    caller's layout (tight_layout measures every tick label: seconds for a multi-panel figure)."""
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:  # plain-text log labels: mathtext layout is most of the drawing time
        if ax.xaxis.get_scale() == "log" and ax.xaxis.get_transform().base == 10:
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 3.0)))  # 1, 3, 10, 30...
            ax.xaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if ax.yaxis.get_scale() == "log":
            ax.yaxis.set_major_formatter(ticker.LogFormatter())
            ax.yaxis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(1, 0.4)))
    if tight:
        fig.tight_layout()
    atomic_savefig(fig, plots / f"{stem}.png", dpi=110, metadata={"Software": None})  # no torn plot on a kill
    atomic_savefig(fig, plots / f"{stem}.svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return f"plots/{stem}.png", f"plots/{stem}.svg"


def preferred_library(df: pd.DataFrame) -> pd.DataFrame:
    """Plottable rows: sampled step budgets only (not the per-run denoiser rows), no auxiliary
    *_std metrics, and one library per (dataset, metric, extractor), the first of
    LIBRARY_PREFERENCE present."""
    df = df[pd.to_numeric(df["steps"], errors="coerce").notna() & ~df["metric"].map(is_auxiliary)]
    rank = {lib: i for i, lib in enumerate(LIBRARY_PREFERENCE)}
    d = df.assign(_r=df["library"].fillna("").map(lambda x: rank.get(x, len(rank))))
    best = d.groupby(["dataset", "metric", "extractor"], dropna=False)["_r"].transform("min")
    return d[d["_r"] == best].drop(columns="_r")


def variant_family(variant: str) -> str:
    """Variants that are one model family specialised per step budget share a family: PD halving
    rounds (`mlp.n8`, `mlp.n4`, ...) and MCM segment counts (`mlp.S2`, `mlp.S4`, ...)."""
    return re.sub(r"\.(n|S)\d+$", "", str(variant))


def largest_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each (dataset, method)'s variant family with the most total compute (ties: name
    order); a family of per-budget variants (PD rounds, MCM segments) is kept whole, so it draws
    one quality-vs-steps curve."""
    df = df.assign(family=df["variant"].map(variant_family))
    comp = df.groupby(["dataset", "method", "family"], dropna=False)["total_flops"].max().reset_index()
    comp = comp.sort_values(["dataset", "method", "total_flops", "family"], na_position="first")
    keep = comp.groupby(["dataset", "method"], dropna=False).tail(1)[["dataset", "method", "family"]]
    return df.merge(keep, on=["dataset", "method", "family"])


def pareto_mask(cost: np.ndarray, quality: np.ndarray, lower_better: bool = True) -> np.ndarray:
    """True for points not dominated by another with <= cost and better-or-equal quality (one
    strictly better)."""
    q = np.asarray(quality, float) if lower_better else -np.asarray(quality, float)
    x = np.asarray(cost, float)
    mask = np.ones(len(x), bool)
    for i in range(len(x)):
        dom = (x <= x[i]) & (q <= q[i]) & ((x < x[i]) | (q < q[i]))
        mask[i] = not dom.any()
    return mask


def _ylabel(metric: str, extractor: str, library: str) -> str:
    """Short axis label; extractor and library go into the title/caption to keep labels uncut."""
    arrow = "lower" if lower_is_better(metric) else "higher"
    return f"{metric} ({arrow} is better)"


def _title(ds: str, metric: str, what: str, library: str) -> str:
    return f"{ds}: {metric} vs {what}" + (f" [{library}]" if library else "")


def _finish_axes(fig: plt.Figure, ax: plt.Axes, out: Path, kind: str, key: tuple[str, str, str], library: str,
                 what: str, caption: str) -> Figure:
    """The y label, title, grid and legend of a one-panel figure of `key` = (dataset, metric,
    extractor) against `what`; saves it as `{kind}-...` (PNG + SVG) and returns its `Figure`."""
    ds, metric, ext = key
    ax.set_ylabel(_ylabel(metric, ext, library))
    ax.set_title(_title(ds, metric, what, library), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png, svg = save_figure(fig, out, slug(kind, ds, metric, ext))
    return Figure(kind, ds, metric, png, svg, caption)


def plot_quality_vs_nfe(summary: pd.DataFrame, out_dir: str | Path) -> list[Figure]:
    """One figure per (dataset, metric): mean ± std over seeds vs NFE, one line per method."""
    out, figs = Path(out_dir), []
    s = largest_variant(preferred_library(summary))
    colors = method_colors(list(summary["method"]))
    for (ds, metric, ext), g in s.groupby(["dataset", "metric", "extractor"], sort=True, dropna=False):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for method, gm in g.groupby("method", sort=True):
            gm = gm.sort_values("nfe")
            ax.errorbar(
                gm["nfe"],
                gm["mean"],
                yerr=gm["std"].fillna(0),
                marker="o",
                ms=4,
                capsize=2,
                color=colors[method],
                label=f"{method} ({gm['family'].iloc[0]})",
            )
        ax.set_xscale("log", base=2)
        vals = g["mean"].to_numpy(float)
        if (vals > 0).all() and vals.max() / vals.min() > 100:  # distances span decades (e.g. Heun at NFE 3)
            ax.set_yscale("log")
        ax.set_xticks(sorted(g["nfe"].unique()))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("NFE per sample")
        caption = f"{metric} vs NFE on {ds} (mean ± std over seeds; largest variant per method)"
        figs.append(_finish_axes(fig, ax, out, "nfe", (ds, metric, ext), g["library"].iloc[0], "NFE", caption))
    return figs


def compute_plot_steps(steps_with_fit: list, steps_all: list, most: int = 4) -> list:
    """The step budgets a quality-vs-compute figure shows, one column each: those with a fitted
    law (else every sampled budget), at most `most` of them: the smallest ones, where few-step
    methods differ, plus the largest, where the teacher is at its best."""
    cand = sorted(set(steps_with_fit)) or sorted(set(steps_all))
    return cand if len(cand) <= most else cand[: most - 1] + cand[-1:]


LAW_STYLE = {"frontier": "-", "all-cells": "--"}
LAW_CAPTION = {
    "frontier": "solid: the law of the compute-efficient frontier, the cells better than every cheaper "
    "cell (hollow points: cells off the frontier)",
    "all-cells": "dashed: one law over all cells of the method",
}


def drawn_law(fits: pd.DataFrame) -> pd.Series | None:
    """The fitted law a method's panel draws (a scaling.csv row): the compute-efficient frontier's
    where the grid varies model size and budget, else the one over all its cells; None without a
    finite fit (a law whose exponent hit its search bound has no a and b to draw)."""
    if fits.empty:
        return None
    ok = fits[np.isfinite(fits[["a", "b", "c"]].to_numpy(float)).all(1)]
    for law in ("frontier", "all-cells"):
        if (ok["law"] == law).any():
            return ok[ok["law"] == law].iloc[0]
    return None


def _draw_law(ax: plt.Axes, cells: pd.DataFrame, fit: pd.Series, color: tuple) -> None:
    """The fitted law over the cells' compute range (+-0.15 decades); for a frontier law, the cells
    off the frontier (not fitted) are drawn hollow."""
    cc = np.logspace(np.log10(cells["C"].min()) - 0.15, np.log10(cells["C"].max()) + 0.15, 60)
    ax.plot(cc, power_law(cc, fit["a"], fit["b"], fit["c"]), LAW_STYLE[fit["law"]], color=color, lw=1.2)
    if fit["law"] == "frontier":
        off = cells.drop(frontier_cells(cells).index)
        ax.plot(off["C"], off["q"], "o", ms=3, mfc="white", mec=color, zorder=3)


def _compute_panel(ax: plt.Axes, cells: pd.DataFrame, fits: pd.DataFrame, colors: dict, shown: set[str],
                   drawn: set[str]) -> None:
    """One step budget on one compute axis: each method's cells (seed mean ± std) and its drawn law;
    `shown`/`drawn` collect the methods and law kinds for the legend."""
    for method, gm in cells.groupby("method", sort=True):
        gm = gm[(gm["C"] > 0) & (gm["q"] > 0)].sort_values("C")
        if gm.empty:
            continue
        ax.errorbar(gm["C"], gm["q"], yerr=gm["s"].fillna(0), fmt="o", ms=3, capsize=2, color=colors[method],
                    alpha=0.85)
        shown.add(method)
        fr = drawn_law(fits[fits["method"] == method] if len(fits) else fits)
        if fr is not None:
            _draw_law(ax, gm, fr, colors[method])
            drawn.add(fr["law"])


def plot_quality_vs_compute(
    results: pd.DataFrame, scaling: pd.DataFrame, out_dir: str | Path
) -> list[Figure]:
    """Log-log quality vs training compute, one column per step budget (a law is fitted per method
    and budget) and one row per compute axis (incremental, incl. teacher); points are seed means of
    each variant (grid cell), lines the fitted laws."""
    out, figs = Path(out_dir), []
    r = preferred_library(
        results.assign(extractor=results["extractor"].fillna(""), library=results["library"].fillna(""))
    )
    sc = (
        scaling.assign(extractor=scaling["extractor"].fillna(""), library=scaling["library"].fillna(""),
                       law=scaling["law"] if "law" in scaling else "all-cells")  # older files: one law
        if len(scaling)
        else scaling
    )
    colors = method_colors(list(results["method"]))
    keys = ["method", "steps", "variant"]
    for (ds, metric, ext), g in r.groupby(["dataset", "metric", "extractor"], sort=True, dropna=False):
        if g["total_flops"].nunique() < 2 or metric_direction(metric) != "lower":
            continue
        lib = g["library"].iloc[0]
        fits = (
            sc[(sc["dataset"] == ds) & (sc["metric"] == metric) & (sc["extractor"] == ext) & (sc["library"] == lib)]
            if len(sc)
            else sc
        )
        cols = compute_plot_steps(list(fits["steps"]) if len(fits) else [], list(g["steps"]))
        fig, axes = plt.subplots(
            len(AXES), len(cols), figsize=(2.5 * len(cols) + 1.6, 4.6), sharey=True, squeeze=False
        )
        shown: set[str] = set()
        drawn: set[str] = set()
        for i, axis in enumerate(AXES):
            m = g.groupby(keys, dropna=False).agg(C=(axis, "mean"), q=("value", "mean"), s=("value", "std"))
            m = m.reset_index()
            for j, steps in enumerate(cols):
                ax = axes[i][j]
                f = fits[(fits["steps"] == steps) & (fits["axis"] == axis)] if len(fits) else fits
                _compute_panel(ax, m[m["steps"] == steps], f, colors, shown, drawn)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.grid(alpha=0.3)
                if i == 0:
                    ax.set_title(f"{steps:g} step{'s' if steps != 1 else ''}", fontsize=8)
                if i == len(AXES) - 1:
                    ax.set_xlabel("training FLOPs", fontsize=8)
                if j == 0:
                    ax.set_ylabel(("own compute" if axis == "train_flops" else "incl. teacher") + f"\n{metric}",
                                  fontsize=8)
        handles = [plt.Line2D([], [], color=colors[k], marker="o", ms=4, lw=0, label=k) for k in sorted(shown)]
        handles += [plt.Line2D([], [], color="0.3", ls=LAW_STYLE[k], lw=1.2, label=f"{k} law") for k in sorted(drawn)]
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
        fig.suptitle(_title(ds, metric, "training compute", lib), fontsize=9)
        w = fig.get_figwidth()
        fig.subplots_adjust(left=1.0 / w, right=1 - 1.0 / w, bottom=0.12, top=0.86, wspace=0.08, hspace=0.25)
        png, svg = save_figure(fig, out, slug("compute", ds, metric, ext), tight=False)
        figs.append(Figure("compute", ds, metric, png, svg, _compute_caption(metric, ds, cols, drawn)))
    return figs


def _compute_caption(metric: str, ds: str, cols: list, drawn: set[str]) -> str:
    return (
        f"{metric} (lower is better) vs training compute on {ds}, "
        f"one column per step budget ({', '.join(f'{c:g}' for c in cols)}): points are seed means ± "
        "std of each run variant (grid cell), lines the fitted q = a·C^-b + c "
        f"({' and '.join(LAW_CAPTION[k] for k in sorted(drawn)) or 'none fitted'}; "
        "top: the run's own training FLOPs, bottom: including its teacher's)"
    )


def plot_pareto(summary: pd.DataFrame, out_dir: str | Path) -> list[Figure]:
    """Quality vs sampling FLOPs per image over every (method, variant, steps); front in black."""
    out, figs = Path(out_dir), []
    s = preferred_library(summary)
    colors = method_colors(list(summary["method"]))
    for (ds, metric, ext), g in s.groupby(["dataset", "metric", "extractor"], sort=True, dropna=False):
        g = g[np.isfinite(g["mean"])]
        use_flops = g["sample_flops_per_image"].notna().all() and (g["sample_flops_per_image"] > 0).all()
        xcol = "sample_flops_per_image" if use_flops else "nfe"
        if g.empty:
            continue
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for method, gm in g.groupby("method", sort=True):
            ax.scatter(gm[xcol], gm["mean"], s=14, color=colors[method], label=method, alpha=0.8)
        front = g[pareto_mask(g[xcol].to_numpy(), g["mean"].to_numpy(), lower_is_better(metric))]
        front = front.sort_values(xcol)
        ax.step(front[xcol], front["mean"], where="post", color="k", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("sampling FLOPs per image" if use_flops else "NFE (FLOPs not recorded)")
        caption = f"{metric} vs sampling cost on {ds}; every method × variant × step budget, black: the Pareto front"
        figs.append(_finish_axes(fig, ax, out, "pareto", (ds, metric, ext), g["library"].iloc[0], "sampling cost",
                                 caption))
    return figs


def resolve_run_dir(run_dir: str, results_root: Path) -> Path:
    """run_dir is relative to results_root (or, failing that, to its parent or the cwd)."""
    for base in (results_root, results_root.parent, Path.cwd()):
        p = base / str(run_dir)
        if p.is_dir():
            return p
    return results_root / str(run_dir)


def tile_images(x: np.ndarray, max_images: int = 16) -> np.ndarray:
    """uint8 NHWC -> one HWC (or HW for 1 channel) mosaic, ceil(sqrt(n)) columns."""
    x = x[:max_images]
    n, h, w, ch = x.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.zeros((rows * h, cols * w, ch), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = x[i]
    return canvas[..., 0] if ch == 1 else canvas


def _draw_samples(ax: plt.Axes, path: Path) -> None:
    if not path.is_file():
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    with np.load(path) as z:
        x = z["samples"]
    if x.dtype == np.uint8 and x.ndim == 4:
        img = tile_images(x)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        v = np.asarray(x, float).reshape(len(x), -1)[:2000]
        # rasterized: thousands of SVG circles per panel made the SVG slow to write and to open
        ax.scatter(v[:, 0], v[:, 1] if v.shape[1] > 1 else np.zeros(len(v)), s=1, alpha=0.4, color="C0",
                   rasterized=True)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=6)


def plot_sample_grids(results: pd.DataFrame, results_root: str | Path, out_dir: str | Path) -> list[Figure]:
    """Per dataset: rows = methods (largest variant, lowest seed), columns = step budgets."""
    out, root, figs = Path(out_dir), Path(results_root), []
    if "run_dir" not in results.columns:
        return figs
    r = largest_variant(results[pd.to_numeric(results["steps"], errors="coerce").notna()])
    for ds, g in r.groupby("dataset", sort=True):
        methods = sorted(g["method"].unique())
        steps = sorted(g["steps"].unique())
        fig, axes = plt.subplots(
            len(methods), len(steps), figsize=(1.9 * len(steps), 1.9 * len(methods)), squeeze=False
        )
        for i, method in enumerate(methods):
            gm = g[g["method"] == method]
            for j, k in enumerate(steps):
                ax = axes[i][j]
                row = gm[gm["steps"] == k].sort_values("seed")
                if row.empty:  # a blank cell; its axes stay (unframed) so the row label still shows
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                else:
                    run_dir = resolve_run_dir(row["run_dir"].iloc[0], root)
                    _draw_samples(ax, run_dir / "samples" / f"steps{int(k)}.npz")
                if i == 0:
                    ax.set_title(f"{int(k)} step" + ("s" if k != 1 else ""), fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{method}\n{gm['family'].iloc[0]}", fontsize=8)
        fig.suptitle(f"{ds}: samples per method and step budget", fontsize=9)
        png, svg = save_figure(fig, out, slug("samples", ds))
        figs.append(
            Figure(
                "samples",
                ds,
                "",
                png,
                svg,
                f"Samples on {ds}: rows are methods (largest variant, first seed), columns step "
                "budgets" + ("; vector data: first two coordinates" if _is_vector(g, root) else ""),
            )
        )
    return figs


def _is_vector(g: pd.DataFrame, root: Path) -> bool:
    for rd, k in zip(g["run_dir"], g["steps"]):
        p = resolve_run_dir(rd, root) / "samples" / f"steps{int(k)}.npz"
        if p.is_file():
            with np.load(p) as z:
                return z["samples"].dtype != np.uint8
    return False
