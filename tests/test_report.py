"""Seed aggregation, leaderboard verdicts, paper table, and the HTML report (pure, renders in a
headless browser with every image loaded and no console errors)."""

from __future__ import annotations

import html as htmlmod
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import InputError
from benchmark.metrics.direction import metric_direction
from benchmark.papers import load_paper
from benchmark.report.tables import (
    leaderboard,
    summarise,
    to_markdown,
    verdict,
    write_tables,
)

sys.path.insert(0, str(Path(__file__).parent))
from conftest_report_data import SUITE, make_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "config" / "paper_results.csv"
SPEC_CSV = REPO.parent / "shared" / "spec" / "paper_results.csv"


def _row(**kw):
    base = dict(
        suite="t",
        dataset="cifar10",
        resolution=32,
        method="cd",
        variant="v",
        steps=1,
        nfe=1,
        metric="fid",
        extractor="inception",
        num_samples=50000,
        library="torch-fidelity",
        mean=3.6,
        std=0.1,
        n=3,
        ci_lo=3.4,
        ci_hi=3.8,
        train_images=np.nan,
        flags="",
        paper_key="",
    )
    base.update(kw)
    return base


PAPER_CD = dict(
    method="CD (LPIPS)",
    method_key="cd",
    dataset="CIFAR-10",
    dataset_key="cifar10",
    resolution=32,
    steps=1,
    nfe=1,
    metric="fid",
    extractor="inception",
    value=3.55,
    verified=True,
    train_images=np.nan,
    source="CM paper",
)


# ---------------------------------------------------------------------------------------------
# aggregation


def test_seed_aggregation_matches_hand_computation():
    df = pd.DataFrame(
        [
            dict(
                suite="t",
                dataset="gmm",
                method="ect",
                variant="v",
                steps=1,
                nfe=1,
                metric="sw2",
                extractor="exact",
                library="exact",
                seed=s,
                value=v,
                total_flops=f,
                flags=fl,
            )
            for s, v, f, fl in ((0, 1.0, 10.0, ""), (1, 2.0, 20.0, "a"), (2, 4.0, 30.0, "b;a"))
        ]
    )
    single = df.iloc[[0]].assign(metric="fd_exact")
    s = summarise(pd.concat([df, single])).set_index("metric")
    r = s.loc["sw2"]
    mean = 7 / 3
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)  # = sqrt(7/3)
    half = 4.302652729749464 * std / math.sqrt(3)  # t_{0.975, 2 dof} from tables
    assert r["n"] == 3 and r["mean"] == pytest.approx(mean) and r["std"] == pytest.approx(std)
    assert r["ci_lo"] == pytest.approx(mean - half) and r["ci_hi"] == pytest.approx(mean + half)
    assert r["total_flops"] == pytest.approx(20.0) and r["flags"] == "a;b" and r["seeds"] == "0;1;2"
    one = s.loc["fd_exact"]
    assert one["n"] == 1 and one["mean"] == 1.0
    assert math.isnan(one["std"]) and math.isnan(one["ci_lo"]) and math.isnan(one["ci_hi"])


def test_metric_direction_table():
    assert (
        metric_direction("fid")
        == metric_direction("fd_digitnet")
        == metric_direction("kid_digitnet")
        == "lower"
    )
    assert metric_direction("sw2") == metric_direction("fd_exact") == "lower"
    assert metric_direction("denoiser_mse_sigma0.5") == metric_direction("denoiser_mse@0.5") == "lower"
    assert metric_direction("good_fraction") == "higher"
    assert (
        metric_direction("mode_coverage")
        == metric_direction("recall_digitnet")
        == metric_direction("is")
        == "higher"
    )
    with pytest.raises(InputError, match="METRIC_DIRECTION"):
        metric_direction("mystery_score")


# ---------------------------------------------------------------------------------------------
# verdicts


def test_different_extractor_is_not_comparable_even_with_equal_value():
    v, reason = verdict(
        _row(metric="fd_digitnet", extractor="digitnet", mean=3.55, ci_lo=3.5, ci_hi=3.6), PAPER_CD
    )
    assert v == "not comparable" and "extractor" in reason
    v, reason = verdict(_row(extractor="dinov2", mean=3.55), PAPER_CD)
    assert v == "not comparable" and "extractor" in reason


def test_equal_metric_within_tolerance_is_reproduced():
    v, reason = verdict(_row(mean=3.80, ci_lo=3.75, ci_hi=3.85), PAPER_CD)  # +7%, CI excludes 3.55
    assert v == "reproduced" and "within 10%" in reason
    v, reason = verdict(_row(mean=4.2, ci_lo=3.0, ci_hi=5.4), PAPER_CD)  # +18% but paper inside the CI
    assert v == "reproduced" and "CI" in reason
    v, _ = verdict(_row(mean=3.6, n=1, std=np.nan, ci_lo=np.nan, ci_hi=np.nan), PAPER_CD)  # one seed
    assert v == "reproduced"


def test_outside_ci_and_tolerance_is_not_reproduced_in_either_direction():
    v, reason = verdict(_row(mean=4.5, ci_lo=4.4, ci_hi=4.6), PAPER_CD)
    assert v == "not reproduced" and "worse" in reason
    v, reason = verdict(_row(mean=2.0, ci_lo=1.9, ci_hi=2.1), PAPER_CD)
    assert v == "not reproduced" and "better" in reason


def test_dataset_resolution_steps_and_budget_mismatches_are_not_comparable():
    cases = {
        "dataset": _row(dataset="digits", resolution=8, paper_key="cifar10"),
        "resolution": _row(resolution=16),
        "steps": _row(steps=2, nfe=2),
        "budget": _row(flags="budget_differs"),
        "recipe": _row(flags="no-paper-recipe"),  # the flag benchmark.aggregate writes
    }
    for what, row in cases.items():
        v, reason = verdict(row, PAPER_CD)
        assert v == "not comparable" and what in reason, (what, reason)
    v, reason = verdict(_row(), None)
    assert v == "not comparable" and "no paper" in reason


def test_leaderboard_never_reproduces_across_extractors_for_any_paper_row():
    paper = load_paper(PAPER_CSV)
    rows = []
    for p in paper.dropna(subset=["steps"]).to_dict("records"):
        for ext, metric in (("digitnet", "fd_digitnet"), ("clip", p["metric"])):
            rows.append(
                _row(
                    dataset=p["dataset_key"],
                    resolution=p["resolution"],
                    method=p["method_key"],
                    steps=p["steps"],
                    nfe=p["nfe"],
                    metric=metric,
                    extractor=ext,
                    mean=p["value"],
                    ci_lo=p["value"] * 0.99,
                    ci_hi=p["value"] * 1.01,
                    train_images=p["train_images"],
                )
            )
    board = leaderboard(pd.DataFrame(rows), paper)
    assert len(board) == len(rows)
    assert (board["verdict"] == "not comparable").all()
    assert board["reason"].str.contains("extractor").all()


def test_leaderboard_matches_paper_rows_by_metric_and_budget():
    paper = load_paper(PAPER_CSV)
    cm = dict(conditioning="uncond", space="pixel", recipe="cifar10", paper_recipe=True, recipe_diff="")
    cd = cm | dict(architecture="ncsnpp-56.4M", loss_metric="lpips")
    ect = cm | dict(architecture="ddpmpp-55.7M", loss_metric="l2")
    summary = pd.DataFrame(
        [
            _row(mean=3.6, **cd),  # CD CIFAR 1-step FID 3.55
            _row(method="ect", mean=3.9, ci_lo=3.8, ci_hi=4.0, train_images=25.6e6, **ect),  # ECM 200k: 3.86
            _row(
                method="ect",
                steps=2,
                nfe=2,
                metric="fd_dinov2",
                extractor="dinov2",
                mean=130.0,
                ci_lo=np.nan,
                ci_hi=np.nan,
                **ect,
            ),
            _row(method="ect", metric="kid", mean=0.01, **ect),  # no KID in the papers: never beside a FID
        ]
    )
    board = leaderboard(summary, paper)
    assert list(board["paper_value"][:3]) == [3.55, 3.86, 128.63]
    assert list(board["verdict"][:3]) == ["reproduced"] * 3
    assert math.isnan(board["paper_value"][3]) and board["verdict"][3] == "not comparable"
    assert board["ratio"][0] == pytest.approx(3.6 / 3.55)


def test_paper_table_holds_every_spec_number_and_never_unverifies_one():
    """Every number of the spec's table is in ours; a number the spec had verified stays verified, and one we
    verified since (issue #25: read in the paper's table) names that table (tests/test_sources.py)."""
    paper = load_paper(PAPER_CSV)
    assert set(paper["method_key"]) <= {"edm", "cd", "ct", "ict", "mcm-cd", "mcm-ct", "ect", "pd", "imm"}
    assert set(paper["extractor"]) == {"inception", "dinov2"}
    if not SPEC_CSV.is_file():
        pytest.skip(f"{SPEC_CSV} not present")
    spec = pd.read_csv(SPEC_CSV)
    ours: dict[tuple, bool] = {}
    for r in paper.itertuples():
        key = (r.dataset, r.resolution, r.steps if r.steps == r.steps else -1, round(r.value, 4))
        ours[key] = ours.get(key, False) or bool(r.verified)
    for r in spec.itertuples():
        key = (r.dataset, r.resolution, r.steps if r.steps == r.steps else -1, round(r.value, 4))
        assert key in ours, key
        if str(r.verified).lower() == "true":
            assert ours[key], key


def test_markdown_falls_back_without_tabulate(monkeypatch, tmp_path):
    df = pd.DataFrame({"method": ["cd", "ect|x"], "mean": [1.23456, float("nan")]})
    monkeypatch.setitem(sys.modules, "tabulate", None)
    md = to_markdown(df)
    assert md.splitlines()[0] == "| method | mean |"
    assert "| cd | 1.235 |" in md and "ect\\|x" in md
    paths = write_tables(df, df, tmp_path)
    assert paths["leaderboard_md"].read_text() == md


# ---------------------------------------------------------------------------------------------
# the report


def _build(root: Path, out: Path, panels=None) -> Path:
    from benchmark.report.html import build_report
    from benchmark.scaling import fit_suite

    if not (root / "results").exists():
        make_suite(root)
    csv = root / "results" / SUITE / "results.csv"
    scaling = root / "results" / SUITE / "scaling.csv"
    if not scaling.exists():
        fit_suite(csv, scaling)
    return build_report(
        csv, scaling, PAPER_CSV, out, suite=SUITE, results_root=root / "results", editing_panels=panels
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    make_suite(root)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.imshow(np.arange(12).reshape(3, 4))
    panel = root / "editing_inpainting.png"
    fig.savefig(panel)
    plt.close(fig)
    return _build(root, root / "report", [panel])


def test_report_contains_every_section_and_relative_images_only(report):
    text = report.read_text()
    for section in ("leaderboard", "nfe", "compute", "pareto", "samples", "editing", "provenance"):
        assert f'id="{section}"' in text
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) >= 10
    for s in srcs:
        assert not s.startswith(("/", "http", "file:")) and (report.parent / s).is_file()
    assert "dataset differs" in text  # digits is mapped to CIFAR-10 by paper_key: shown, not judged
    for name in ("leaderboard.csv", "leaderboard.md", "summary.csv", "scaling.csv"):
        assert (report.parent / name).is_file()
    assert "2.x-test" in text and "cfgb3" in text  # versions and config hash in the provenance table


def test_report_opens_with_a_headline_leaderboard_per_dataset(report):
    text = report.read_text()
    body = text[text.index('id="leaderboard"'):]
    first_table = body[: body.index("</table>")]
    assert body.index("<table>") < body.index('id="paper"')  # the leaderboard comes before the paper table
    # digits ranks by its extractor's Fréchet distance; steps are the columns, methods the rows
    assert "digits: <code>fd_digitnet</code>" in first_table
    for col in ("1 step", "2 steps", "4 steps", "train FLOPs (total)", "device-hours"):
        assert f"<th>{col}</th>" in first_table
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td>", first_table)
    assert rows == [("cd", "b3"), ("ect", "b3")]  # the headline (most-compute) variant of each method
    assert first_table.count("<strong>") == 3  # one best cell per step column
    gmm = body[body.index("gmm: <code>fd_exact</code>"):]
    assert gmm.index("<table>") < gmm.index("</table>")


def test_headline_metric_prefers_fid_then_the_datasets_own_extractor():
    from benchmark.report.html import headline_metric

    assert headline_metric(["kid", "fid", "fd_clip"]) == "fid"
    assert headline_metric(["fd_exact", "sw2", "fd_digitnet"]) == "fd_digitnet"
    assert headline_metric(["mode_coverage", "fd_exact"]) == "fd_exact"
    assert headline_metric([]) is None


def test_report_is_a_pure_function_of_the_csvs(report):
    again = _build(
        report.parent.parent,
        report.parent.parent / "report2",
        [report.parent.parent / "editing_inpainting.png"],
    )
    a, b = report.parent, again.parent
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --- headless Chromium ------------------------------------------------------------------------
# Robust check used here: a *copy* of index.html (same folder, so relative paths resolve) gets an
# inline script first in <head> that records window 'error' events (capturing phase: also failed
# <img>/<link> loads) and console.error calls, and on 'load' writes
# {n images, broken srcs, errors} as JSON into <pre id="render-check">. `--dump-dom` after
# `--virtual-time-budget` returns the DOM after load, so the test parses that element. Chromium's
# own console log (`--enable-logging=stderr --v=0`, lines containing "CONSOLE") is checked on the
# unmodified page together with a screenshot.

CHECK_SCRIPT = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__errs.push('error: ' + (e.message || t.src || t.href || 'resource'));
}, true);
var __ce = console.error;
console.error = function () { window.__errs.push('console: ' + Array.prototype.join.call(arguments, ' '));
  __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var bad = [], imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) bad.push(imgs[i].getAttribute('src'));
  }
  var pre = document.createElement('pre');
  pre.id = 'render-check';
  pre.textContent = JSON.stringify({n: imgs.length, bad: bad, errors: window.__errs});
  document.body.appendChild(pre);
});
</script>"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("FEWSTEP_INSTALL_CHROMIUM") == "1" and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=600)
        if path := shutil.which("chromium"):
            return path
    pytest.skip(
        "headless Chromium not found: `apt-get install -y chromium` (or run as root with "
        "FEWSTEP_INSTALL_CHROMIUM=1 to let this test install it)"
    )


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _page_with_embedded_images_for_reference_check(report: Path) -> Path:
    text = report.read_text()
    check = report.parent / "_render_check.html"
    check.write_text(text.replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    return check


def test_report_renders_in_headless_chromium_with_all_images_loaded(report, tmp_path):
    binary = _chromium()
    check = _page_with_embedded_images_for_reference_check(report)
    try:
        dom = _run_chromium(
            binary, tmp_path / "p1", "--virtual-time-budget=10000", "--dump-dom", check.as_uri()
        )
    finally:
        check.unlink()
    m = re.search(r'<pre id="render-check">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"no render-check element; chromium stderr: {dom.stderr[-2000:]}"
    status = json.loads(htmlmod.unescape(m.group(1)))
    assert status["n"] >= 10
    assert status["bad"] == [], status
    assert status["errors"] == [], status

    shot = tmp_path / "shot.png"
    res = _run_chromium(
        binary,
        tmp_path / "p2",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        report.as_uri(),
    )
    assert shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
    from PIL import Image

    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50  # not a blank page


def test_sample_grid_labels_every_method_row_even_one_without_the_first_step_budget(tmp_path, monkeypatch):
    """A method that samples no 1-step budget (an MCM family whose smallest model has 2 segments) still
    gets its row label: the blank first cell keeps its axes, unframed."""
    import numpy as np
    import pandas as pd

    from benchmark.report import plots

    rows = []
    for method, budgets in (("edm", (1, 2)), ("mcm-cd", (2,))):
        run_dir = tmp_path / "digits" / f"{method}-v-s0"
        (run_dir / "samples").mkdir(parents=True)
        for k in budgets:
            np.savez(run_dir / "samples" / f"steps{k}.npz", samples=np.zeros((4, 8, 8, 1), np.uint8))
            rows.append({"dataset": "digits", "method": method, "variant": "v", "seed": 0, "steps": k,
                         "total_flops": 1.0, "run_dir": str(run_dir)})
    seen = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out, stem, **kw: (seen.append(fig), ("a.png", "a.svg"))[1])
    plots.plot_sample_grids(pd.DataFrame(rows), tmp_path, tmp_path / "out")
    (fig,) = seen
    labels = [ax.get_ylabel().split("\n")[0] for ax in fig.axes[::2]]  # first column of each row
    assert labels == ["edm", "mcm-cd"], labels
    assert fig.axes[2].get_visible() and not any(s.get_visible() for s in fig.axes[2].spines.values())
