"""The documentation stays true (issue #24): the MkDocs site builds with `--strict` (no broken link,
no missing page), the README is a front page of at most 10 KB whose links resolve, and
docs/outputs.md explains exactly the columns aggregate writes to results.csv (and the fit's tables)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from benchmark.aggregate import COLUMNS
from benchmark.scaling import COMPARE_COLUMNS, SCALING_COLUMNS

REPO = Path(__file__).resolve().parents[1]
MKDOCS = str(Path(sys.executable).parent / "mkdocs")  # the `docs` extra, installed by `make setup`


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([MKDOCS, "build", "--strict", "--site-dir", str(site)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_site_builds_with_strict_and_writes_every_page(tmp_path):
    r = _build(REPO, tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("running", "datasets", "networks", "recipes", "scaling", "clusters", "performance", "outputs",
                 "internals", "cost"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    assert (tmp_path / "site" / "img" / "quick-digits-fd-vs-nfe.png").is_file()
    html = (tmp_path / "site" / "index.html").read_text()
    assert "fonts.googleapis" not in html  # theme.font: false, the site reads offline


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The check above can fail: a link to a missing heading of another page aborts the build."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    with open(root / "docs" / "cost.md", "a") as f:
        f.write("\n[a broken link](outputs.md#no-such-heading)\n")
    r = _build(root, tmp_path / "site")
    assert r.returncode != 0 and "no-such-heading" in r.stdout + r.stderr


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {next(iter(entry.values())) for entry in nav}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert listed == pages, (listed ^ pages)


def test_readme_is_a_front_page_of_at_most_10_kb_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 10240
    for cmd in ("make demo", "make test", "python -m benchmark doctor"):
        assert cmd in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    for target in links:
        assert not target.startswith("http"), target  # the front page points into the repository
        assert (REPO / target).is_file(), f"README links to missing {target}"
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}  # index.md: the site's own home
    assert pages <= {Path(t).name for t in links}, pages - {Path(t).name for t in links}


def _documented(page: str, heading: str) -> list[str]:
    """The column names in the first column of the table under `heading` of a docs page."""
    text = (REPO / "docs" / page).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)


def test_outputs_page_explains_exactly_the_columns_aggregate_writes():
    documented = _documented("outputs.md", "## `results.csv`, column by column")
    assert documented == list(COLUMNS), (
        f"undocumented: {sorted(set(COLUMNS) - set(documented))}; stale: {sorted(set(documented) - set(COLUMNS))}")


def test_outputs_page_explains_exactly_the_scaling_and_comparison_columns():
    assert _documented("outputs.md", "## `scaling.csv`, column by column") == list(SCALING_COLUMNS)
    assert _documented("outputs.md", "## `scaling_compare.csv`, column by column") == list(COMPARE_COLUMNS)
