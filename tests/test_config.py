"""Suite expansion: grids, halving rounds, teacher resolution and config hashes."""

from __future__ import annotations

import copy

import pytest

from benchmark.config import expand_suite, load_suite
from benchmark.errors import ConfigError
from benchmark.validation import NAME_RE, validate_schema

BASE = {
    "name": "t",
    "seeds": [0, 1],
    "datasets": {"gmm": {"kind": "gmm", "dim": 2}},
    "experiments": [
        {"method": "edm", "dataset": "gmm", "variant": "a", "net": {"type": "mlp", "hidden": 16, "depth": 1},
         "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [1, 2]},
    ],
}


def suite(**extra_exps):
    raw = copy.deepcopy(BASE)
    raw["experiments"] += list(extra_exps.values())
    validate_schema(raw)
    return expand_suite(raw)


def test_every_experiment_runs_once_per_seed_with_distinct_ids():
    s = suite()
    assert sorted(s.runs) == ["gmm/edm-a-s0", "gmm/edm-a-s1"]
    assert s.runs["gmm/edm-a-s1"].seed == 1
    assert s.runs["gmm/edm-a-s0"].config_hash != s.runs["gmm/edm-a-s1"].config_hash


def test_grid_expands_to_the_cartesian_product_with_named_variants():
    s = suite(g={"method": "edm", "dataset": "gmm", "variant": "g", "net": {"type": "mlp", "hidden": 16},
                 "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [1],
                 "grid": {"net.hidden": [8, 16], "train.images": [500, 1000]}})
    grid = sorted(r.variant for r in s.runs.values() if r.variant.startswith("g."))
    expected = sorted(f"g.hidden{h}.images{i}" for h in (8, 16) for i in (500, 1000) for _ in (0, 1))
    assert grid == expected  # 4 grid points x 2 seeds
    r = s.runs["gmm/edm-g.hidden8.images500-s0"]
    assert r.net["hidden"] == 8 and r.train["images"] == 500
    # only the largest-on-every-axis cell is the grid's headline run; runs outside grids have no flag
    tops = sorted(n for n, x in s.runs.items() if x.extra["grid_top"])
    assert tops == ["gmm/edm-g.hidden16.images1000-s0", "gmm/edm-g.hidden16.images1000-s1"]
    assert s.runs["gmm/edm-a-s0"].extra["grid_top"] is None


def test_default_teacher_is_the_longest_trained_teacher_with_the_students_network():
    net = {"type": "mlp", "depth": 1}
    s = suite(g={"method": "edm", "dataset": "gmm", "variant": "g", "net": {**net, "hidden": 16},
                 "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [1],
                 "grid": {"net.hidden": [8, 16], "train.images": [500, 3000, 2000]}},
              ect={"method": "ect", "dataset": "gmm", "variant": "e", "net": {**net, "hidden": 16},
                   "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [1],
                   "grid": {"net.hidden": [8, 16]}},
              cd={"method": "cd", "dataset": "gmm", "variant": "c", "net": {**net, "hidden": 4},
                  "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [1]})
    # each model size of a grid tunes its own size's longest-trained teacher
    assert s.runs["gmm/ect-e.hidden8-s1"].teacher == "gmm/edm-g.hidden8.images3000-s1"
    assert s.runs["gmm/ect-e.hidden16-s0"].teacher == "gmm/edm-g.hidden16.images3000-s0"
    # no teacher with the student's net: the longest-trained one (first in suite order on ties)
    assert s.runs["gmm/cd-c-s0"].teacher == "gmm/edm-g.hidden8.images3000-s0"


def test_pd_rounds_chain_each_round_to_the_previous_student():
    s = suite(pd={"method": "pd", "dataset": "gmm", "variant": "p", "net": {"type": "mlp", "hidden": 16, "depth": 1},
                  "rounds": [4, 2, 1], "steps": [4], "train": {"images": 1000, "batch": 100, "lr": 1e-3}})
    r4, r2, r1 = (s.runs[f"gmm/pd-p.n{n}-s0"] for n in (4, 2, 1))
    assert r4.teacher == "gmm/edm-a-s0" and r4.params["teacher_kind"] == "edm"
    assert r2.teacher == "gmm/pd-p.n4-s0" and r2.params["teacher_kind"] == "pd"
    assert r1.teacher == "gmm/pd-p.n2-s0" and r1.steps == (1,) and r1.params["student_steps"] == 1


def _pd_cifar10(**overrides):
    raw = {"name": "t", "datasets": {"c": {"kind": "cifar10", "path": "x"}}, "experiments": [
        {"method": "edm", "dataset": "c", "variant": "v", "recipe": "cifar10"},
        {"method": "pd", "dataset": "c", "variant": "p", "recipe": "cifar10", "rounds": [8, 4, 2, 1]} | overrides]}
    validate_schema(raw)
    return expand_suite(raw).runs


def test_pd_recipe_trains_the_2_and_1_step_rounds_twice_as_long_as_the_others():
    """PD paper §5.2: 50k updates per halving round, 100k for the distillation to 2 and 1 steps (recipe
    `round_train`); the diff compares each round with its own paper budget."""
    runs = _pd_cifar10()
    images = {n: runs[f"c/pd-p.n{n}-s0"].train["images"] for n in (8, 4, 2, 1)}
    assert images == {8: 50_000 * 128, 4: 50_000 * 128, 2: 100_000 * 128, 1: 100_000 * 128}
    assert not any(d["field"] == "train.images" for r in runs.values() for d in r.recipe_diff)
    # the experiment's own budget wins in every round, and each round's diff names its own paper budget
    runs = _pd_cifar10(train={"images": 128_000})
    assert {runs[f"c/pd-p.n{n}-s0"].train["images"] for n in (8, 4, 2, 1)} == {128_000}
    paper = {n: [d["paper"] for d in runs[f"c/pd-p.n{n}-s0"].recipe_diff if d["field"] == "train.images"]
             for n in (4, 1)}
    assert paper == {4: ["6.4e+06"], 1: ["1.28e+07"]}


def test_a_malformed_round_train_is_named_in_one_line():
    from benchmark.recipes import _round_train_problems

    assert _round_train_problems("x", {"round_train": {2: {"images": 10}}}) == []
    for bad in ({"2": {"images": 10}}, {0: {"images": 10}}, {2: 10}, [2]):
        assert _round_train_problems("x", {"round_train": bad}) == [
            "x: round_train must map student step counts (integers >= 1) to train values"]


def test_student_hash_changes_when_its_teacher_changes():
    exp = {"method": "cd", "dataset": "gmm", "variant": "c", "net": {"type": "mlp", "hidden": 16, "depth": 1},
           "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [1]}
    a = suite(cd=exp)
    raw = copy.deepcopy(BASE)
    raw["experiments"][0]["train"]["lr"] = 2e-3  # only the teacher changes
    raw["experiments"].append(exp)
    b = expand_suite(raw)
    assert a.runs["gmm/cd-c-s0"].config_hash != b.runs["gmm/cd-c-s0"].config_hash


@pytest.mark.parametrize("name", ["smoke", "quick", "cifar10"])
def test_shipped_suites_validate(name):
    s = load_suite(name)
    assert s.runs and all(r.config_hash for r in s.runs.values())


def test_step_budget_the_method_cannot_sample_is_rejected_before_any_work():
    with pytest.raises(ConfigError, match="mcm|segments|steps"):
        suite(m={"method": "mcm-cd", "dataset": "gmm", "variant": "m", "params": {"segments": 2, "T_d": 64},
                 "train": {"images": 1000, "batch": 100, "lr": 1e-3}, "steps": [3]})


@pytest.mark.parametrize("name", ["smoke", "quick", "cifar10", "imagenet64", "imagenet128", "imagenet256",
                                  "lsun256", "scaling"])
def test_every_shipped_suite_validates_with_strict_names(name):
    s = load_suite(name)
    assert s.runs and all(NAME_RE.match(r.name) for r in s.runs.values())


def test_a_changed_hyperparameter_changes_the_run_config_hash_and_nothing_else_does():
    a = suite()
    raw = copy.deepcopy(BASE)
    raw["experiments"][0]["train"]["lr"] = 2e-3
    b = expand_suite(raw)
    raw = copy.deepcopy(BASE)
    raw["description"] = "only words"
    c = expand_suite(raw)
    assert a.runs["gmm/edm-a-s0"].config_hash != b.runs["gmm/edm-a-s0"].config_hash
    assert a.runs["gmm/edm-a-s0"].config_hash == c.runs["gmm/edm-a-s0"].config_hash


def test_dependency_order_puts_each_node_after_what_it_waits_for_and_names_a_cycle():
    """One ordering for teacher chains (expand.topo_order) and the planner's jobs (plan.schedule)."""
    from benchmark.errors import ConfigError
    from benchmark.expand import dependency_order

    assert dependency_order({"student": ("teacher",), "teacher": (), "other": ()}) == ["teacher", "student", "other"]
    with pytest.raises(ConfigError) as e:
        dependency_order({"a": ("b",), "b": ("a",)}, "teacher")
    assert e.value.what == "teacher cycle through a -> b -> a"
