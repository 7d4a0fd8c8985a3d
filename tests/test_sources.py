"""Every recipe value names where it comes from (issue #25, benchmark/sources.py): the recipe files carry a
source for each value, nothing says UNVERIFIED or memory, the loader refuses a recipe that does not, and
a verdict treats a value by its source (not stated / unread / departs)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from benchmark import recipes, sources
from benchmark.errors import ConfigError, InputError
from benchmark.papers import load_paper
from benchmark.yaml_io import read_yaml

REPO = Path(__file__).resolve().parents[1]
METHOD_FILES = sorted((REPO / "config" / "methods").glob("*.yaml"))


def test_every_recipe_value_has_a_well_formed_source_read_in_a_paper_or_its_code():
    problems, counted = [], 0
    for f in METHOD_FILES:
        for name, entry in read_yaml(f).items():
            problems += sources.check_entry(f"{f.name} {name}", entry)
            counted += len(sources.leaves(entry))
    assert problems == []
    assert counted > 500  # the walk reaches every leaf of the 8 files (559 values when written)


def test_no_config_file_says_unverified_or_memory():
    hits = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "config").rglob("*") if p.is_file()
            for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"unverified|memory;", line, re.I)]
    assert hits == []


def test_paper_recipes_cite_a_source_for_each_value_and_demo_recipes_say_why_they_are_ours():
    for f in METHOD_FILES:
        for name, entry in read_yaml(f).items():
            kinds = {s.kind for s in sources.recipe_sources(entry).values()}
            if isinstance(entry.get("paper"), dict):
                assert "ours" not in kinds and "*" not in entry["sources"], (f.name, name)
                assert "cited" in kinds, (f.name, name)
            else:
                assert kinds == {"ours"}, (f.name, name)


def test_paper_recipes_state_every_value_a_run_takes_from_code_defaults():
    """A value left to a default (Adam's betas, a warm-up, sigma_max) is the same on both sides of a diff, so
    it could never show in a verdict: every paper recipe states each one, with its source."""
    left = {f"{f.stem} {name}": missing for f in METHOD_FILES for name, entry in read_yaml(f).items()
            if (missing := recipes.unstated_defaults(f.stem, entry))}
    assert left == {}


def test_unstated_defaults_names_method_and_optimiser_keys_and_takes_either_ema_form():
    paper = {"paper": {"architecture": "ddpmpp"}, "train": {"batch": 512, "ema_halflife_images": 5e5}}
    missing = recipes.unstated_defaults("edm", paper)
    assert {"train.betas", "train.grad_clip", "train.ema_rampup_ratio", "params.sigma_max", "params.p_mean"} \
        <= set(missing)
    assert not {"train.batch", "train.ema_decay", "train.ckpt_every_images", "train.log_every_steps"} & set(missing)
    by_decay = recipes.unstated_defaults("edm", {"paper": {}, "train": {"ema_decay": 0.9999}})
    assert "train.ema_decay" not in by_decay and "train.ema_halflife_images" not in by_decay
    assert "params.segments" not in recipes.unstated_defaults("mcm", {"paper": {}})  # set by the DAG
    assert {"params.T_d", "params.addim_eta"} <= set(recipes.unstated_defaults("mcm", {"paper": {}}))
    assert recipes.unstated_defaults("edm", {"train": {"batch": 8}}) == []  # demo recipes: never judged
    ncsnpp = recipes.unstated_defaults("ct", {"paper": {}, "net": {"type": "ncsnpp", "dropout": 0.0}})
    assert {"net.embedding_type", "net.resample_filter", "net.augment_dim"} <= set(ncsnpp)  # preset values too
    assert not {"net.dropout", "net.label_dim", "net.num_cond", "net.type"} & set(ncsnpp)  # stated; set by the data
    assert not any(p.startswith("net.") for p in recipes.unstated_defaults("pd", {"paper": {}}))  # the teacher's


@pytest.mark.parametrize("text,message", [
    ("batch 512, as I recall [memory; UNVERIFIED]", "UNVERIFIED or memory"),
    ("the usual value", "names no paper section/table/appendix and no repository file"),
    ("not stated in CM paper; ours 0.5 because", "does not follow its form"),
    ("not stated in CM paper; ours: 0.5, because x; depends: somewhere", "names no paper section"),
    ("departs: a blog gives 3; ours: 4, because y", "names no paper section or repository file"),
    ("", "not a non-empty string"),
])
def test_a_malformed_or_remembered_source_is_refused_with_a_one_line_reason(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sources.parse_source(text)


def test_source_forms_and_what_they_say_about_a_verdict():
    cited = sources.parse_source("MCM paper App. A.1 (batch size 2048)")
    repo = sources.parse_source("NVlabs/edm@008a4e5:train.py (--batch 512)")
    free = sources.parse_source("not stated in MCM paper; ours: adam, because EDM uses Adam")
    dep = sources.parse_source("not stated in MCM paper; ours: 1.5, because x; depends: MCM paper §5.1")
    unread = sources.parse_source("unread: iCT paper appendix not reachable; ours: 1024, because ECT's README")
    departs = sources.parse_source("departs: PD paper Table 1 gives x; ours: edm, because exact init")
    assert (cited.kind, repo.kind, free.kind, unread.kind, departs.kind) == (
        "cited", "cited", "not_stated", "unread", "departs")
    assert free.ignored_in_diff and not free.always_differs and free.value == "adam"
    assert dep.always_differs and dep.depends == "MCM paper §5.1"
    assert unread.always_differs and unread.value == "1024"
    assert departs.paper_value == "x" and not departs.always_differs and not departs.ignored_in_diff


def test_check_entry_names_missing_stale_and_misstated_sources():
    entry = {"paper": {"conditioning": "uncond", "space": "pixel"}, "train": {"batch": 512, "lr": 1e-3},
             "sources": {"paper": "EDM paper Table 2", "train.batch": "not stated in EDM paper; ours: 256, because x",
                         "train.momentum": "EDM paper Table 2", "*": "ours: demo, because y"}}
    problems = sources.check_entry("e", entry)
    assert "e: sources key 'train.momentum' names no value of the entry" in problems
    assert "e: a paper recipe needs a source per value, not '*'" in problems
    assert "e: train.batch: source says ours: 256 but the value is 512" in problems
    assert "e: train.lr: a paper recipe value needs a citation or 'not stated in ...'" in problems  # via '*'
    del entry["sources"]["*"]
    assert "e: train.lr has no source" in sources.check_entry("e", entry)
    assert sources.check_entry("e", {"train": {"batch": 1}}) == ["e: no `sources:` mapping"]
    demo = {"train": {"batch": 8}, "sources": {"*": "ours: tiny, because CPU"}}
    assert sources.check_entry("d", demo) == []


@pytest.fixture
def methods_dir(tmp_path, monkeypatch):
    """A config/methods directory of our own for the recipe loader."""
    monkeypatch.setattr(recipes, "METHODS_DIR", tmp_path)
    recipes._read_file.cache_clear()
    yield tmp_path
    recipes._read_file.cache_clear()


def test_the_recipe_loader_refuses_a_file_whose_values_lack_sources(methods_dir):
    (methods_dir / "edm.yaml").write_text("t:\n  train: {batch: 512}\n")
    with pytest.raises(ConfigError, match=r"config/methods/edm.yaml t: no `sources:` mapping"):
        recipes.load_recipe("edm", "t")
    recipes._read_file.cache_clear()
    (methods_dir / "edm.yaml").write_text('t:\n  train: {batch: 512}\n  sources: {train.batch: "UNVERIFIED"}\n')
    with pytest.raises(ConfigError, match="UNVERIFIED or memory"):
        recipes.load_recipe("edm", "t")


RECIPE = textwrap.dedent("""\
    t:
      paper: {architecture: ddpmpp, conditioning: uncond, space: pixel}
      params: {p_mean: -1.2, p_std: 1.2, sigma_data: 0.5}
      train: {batch: 512, lr: 1.0e-3}
      sources:
        paper: "EDM paper Table 2"
        params.p_mean: "EDM paper Table 1"
        params.p_std: "not stated in EDM paper; ours: 1.2, because it pairs with p_mean"
        params.sigma_data: "not stated in EDM paper; ours: 0.5, because x; depends: EDM paper Sec. 5"
        train.batch: "unread: EDM paper App. F not reachable; ours: 512, because the README says so"
        train.lr: "departs: NVlabs/edm@008a4e5:train.py gives 0.002; ours: 1.0e-3, because y"
    """)
FACTS = {"architecture": "ddpmpp", "params": 1, "conditioning": "uncond", "space": "pixel"}


def _diff(params, train):
    """The diff's sourced entries; the fixture leaves most defaults unstated, whose entries are checked apart."""
    _, diff = recipes.recipe_diff("edm", "t", {"params": params, "train": train}, FACTS)
    unstated = recipes.unstated_defaults("edm", recipes.load_recipe("edm", "t"))
    assert [d["field"] for d in diff if d["paper"] == "no source"] == unstated
    return {d["field"]: (d["ours"], d["paper"]) for d in diff if d["paper"] != "no source"}


def test_a_verdict_uses_each_value_as_its_source_allows(methods_dir):
    """not stated: never a difference (p_std); not stated but the result depends on it, and unread: always
    one, even at the recipe's own value (sigma_data, batch); departs: the run meets the paper's value, not
    ours (lr); cited: the usual comparison (p_mean)."""
    (methods_dir / "edm.yaml").write_text(RECIPE)
    as_recipe = _diff({"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5}, {"batch": 512, "lr": 1e-3})
    assert as_recipe == {"params.sigma_data": ("0.5", "not stated"), "train.batch": ("512", "unread"),
                         "train.lr": ("0.001", "0.002")}
    changed = _diff({"p_mean": -1.0, "p_std": 9.0, "sigma_data": 0.5}, {"batch": 512, "lr": 2e-3})
    assert changed == {"params.p_mean": ("-1.0", "-1.2"), "params.sigma_data": ("0.5", "not stated"),
                       "train.batch": ("512", "unread")}


def test_a_value_a_paper_recipe_leaves_to_a_code_default_is_always_a_difference(methods_dir):
    """A user's paper recipe that does not state Adam's betas is not judged as if the paper used ours."""
    (methods_dir / "edm.yaml").write_text(RECIPE)
    _, diff = recipes.recipe_diff("edm", "t", {"params": {}, "train": {"batch": 512, "betas": [0.9, 0.99]}}, FACTS)
    by_field = {d["field"]: (d["ours"], d["paper"]) for d in diff}
    assert by_field["train.betas"] == ("[0.9,0.99]", "no source")
    assert by_field["params.sigma_max"] == ("80.0", "no source") and "train.batch" in by_field  # unread
    assert "params.p_std" not in by_field and "train.lr" in by_field  # not stated; departs (ours 1e-3 vs 0.002)


def test_a_paper_fact_our_code_cannot_reproduce_is_always_a_difference():
    facts = dict(FACTS, xflip=False)
    paper = {"architecture": "ddpmpp", "xflip": True, "not_implemented": ["minimum t-r gap 1e-4", "FP16 training"]}
    diff = {d["field"]: (d["ours"], d["paper"]) for d in recipes.facts_diff(paper, facts)}
    assert diff == {"xflip": ("False", "True"), "not_implemented": ("none", "minimum t-r gap 1e-4 + FP16 training")}


# ---------------------------------------------------------------------------------------------
# config/paper_results.csv: every number with the table it is read in, and the papers' training budgets

PAPER = load_paper(REPO / "config" / "paper_results.csv")
HARDWARE_KEYS = {"a100-40gb", "a100-80gb", "v100-16gb", "v100-32gb", "h100-80gb", "h200"}


def test_every_paper_number_names_its_table_and_only_numbers_read_there_are_verified():
    for r in PAPER.itertuples():
        src = str(r.source)
        assert src and src != "nan" and not sources.BANNED.search(src), r
        if r.verified:  # read by us where the source says: a table/figure/section/abstract or a repository file
            assert sources.PAPER_CITE.search(src) or sources.REPO_CITE.search(src), src
        else:
            assert "not read" in src or "shifted" in src, src
    assert (PAPER["verified"]).mean() > 0.9  # 146 of 152 rows now (iCT and ECT-XL rows quoted from other tables)


def test_the_full_tables_are_there_mcm_table_1_imm_table_2_cm_tables_1_and_2():
    def values(method, dataset, recipe):
        g = PAPER[(PAPER.method_key == method) & (PAPER.dataset_key == dataset) & (PAPER.recipe == recipe)]
        return dict(zip(g.steps.astype(int), g.value))
    assert values("mcm-cd", "imagenet64", "imagenet64") == {1: 3.2, 2: 1.9, 4: 1.6, 8: 1.4, 16: 1.4}
    assert values("mcm-ct", "imagenet128", "imagenet128-small") == {1: 16.0, 2: 6.0, 4: 4.0, 8: 3.3, 16: 3.4}
    assert set(PAPER[PAPER.recipe == "imagenet128-small"].conditioning) == {"class+cfg"}  # §5.1: guided
    assert values("imm", "imagenet256", "imagenet256-w1.25") == {1: 7.77, 2: 5.33, 4: 3.66, 8: 2.77}
    imm = PAPER[(PAPER.method_key == "imm") & (PAPER.recipe == "imagenet256") & (PAPER.conditioning == "class+cfg")]
    assert dict(zip(imm.steps.astype(int), imm.nfe.astype(int))) == {1: 2, 2: 4, 4: 8, 8: 16, 10: 20, 16: 32, 32: 64}
    cat = PAPER[(PAPER.method_key == "ct") & (PAPER.dataset_key == "lsun-cat256")]  # rows without a recipe
    assert sorted(cat.value) == [11.7, 20.7]
    assert values("imm", "cifar10", "cifar10") == {1: 3.2, 2: 1.98}  # no longer 'inferred': IMM Table 1
    assert PAPER[(PAPER.method_key == "imm") & (PAPER.dataset_key == "cifar10")].verified.all()


def test_training_budgets_name_a_device_a_count_a_scope_and_where_they_are_written():
    budget = PAPER[PAPER.train_hardware.notna()]
    assert len(budget) > 40
    for r in budget.itertuples():
        assert r.train_hardware in HARDWARE_KEYS or re.fullmatch(r"[a-z0-9-]+", r.train_hardware), r
        assert r.train_devices >= 1 and float(r.train_devices).is_integer(), r
        assert r.train_budget_scope in ("own", "total"), r
        assert sources.PAPER_CITE.search(r.train_budget_source) or sources.REPO_CITE.search(r.train_budget_source), r
    mcm = PAPER[(PAPER.method_key == "mcm-cd") & (PAPER.recipe == "imagenet64")].iloc[0]
    assert (mcm.train_hardware, mcm.train_devices) == ("tpu-v5e", 256)
    assert mcm.train_device_hours == pytest.approx(256 * 200_000 / 2.5 / 3600, abs=0.05)  # MCM App. A.1-A.2
    ect = PAPER[PAPER.recipe == "cifar10-1hour"].iloc[0]
    assert (ect.train_hardware, ect.train_devices, ect.train_device_hours, ect.train_budget_scope) == (
        "a100", 1, 1, "own")  # ECT abstract: 1 hour on a single A100, the EDM it tunes not counted
    edm = PAPER[(PAPER.method_key == "edm") & (PAPER.recipe == "cifar10")].iloc[0]
    assert (edm.train_devices, edm.train_device_hours) == (8, 8 * 48)  # NVlabs/edm README: 8xV100, ~2 days


def test_a_budget_scope_other_than_own_or_total_is_refused(tmp_path):
    bad = PAPER.head(2).copy()
    bad["train_budget_scope"] = ["own", "most"]
    bad.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(InputError, match="train_budget_scope 'most' is not one of own, total"):
        load_paper(tmp_path / "p.csv")
