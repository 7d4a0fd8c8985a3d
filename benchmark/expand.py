"""Expansion of a suite's experiments: recipes, scaling grids and PD halving rounds into concrete
experiments, each one's teacher chosen, and the runs put in teacher-first order.

benchmark/config.py turns each expanded experiment into one Run per seed; the names expansion
creates are checked here (benchmark.validation.check_name) because they reach paths and shells.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from benchmark.errors import ConfigError
from benchmark.validation import check_name


def expand_experiments(raw: dict[str, Any]) -> dict[str, dict]:
    """'{dataset}/{method}-{variant}' -> experiment, after recipes, grids and rounds are expanded;
    the expanded names are checked because they reach paths and shells."""
    from methods.base import method_class

    exps: list[dict] = []
    for exp in raw["experiments"]:
        exp = copy.deepcopy(exp)
        if exp["dataset"] not in raw["datasets"]:
            raise ConfigError(f"experiment {exp['method']}-{exp['variant']} names unknown dataset '{exp['dataset']}'",
                              f"add it under `datasets:` or use one of: {', '.join(raw['datasets'])}")
        method_class(exp["method"])  # unknown method -> ConfigError
        exp = _resolve_recipe(exp)
        for e in _expand_grid(exp):
            exps.extend(_expand_rounds(e))

    for e in exps:  # grid values and rounds extend variant names: check the names that reach paths/shells
        check_name(f"{e['method']}-{e['variant']}", f"run name of experiment {e['method']}-{e['variant']}")
    keys = [f"{e['dataset']}/{e['method']}-{e['variant']}" for e in exps]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise ConfigError(f"duplicate experiment(s) {sorted(dupes)}",
                          "give each experiment on a dataset a distinct method+variant")
    return dict(zip(keys, exps))


def _resolve_recipe(exp: dict[str, Any]) -> dict[str, Any]:
    """Fill the experiment from its recipe (unknown recipe -> one line) and check that what a
    run needs (`train`, `steps`) came from one of the two."""
    from benchmark.recipes import resolve_experiment

    exp = resolve_experiment(exp)
    for key in ("train", "steps"):
        if key not in exp:
            raise ConfigError(f"experiment {exp['method']}-{exp['variant']} has no `{key}:` and its recipe gives none",
                              f"add `{key}:` to the experiment or name a recipe that has it")
    for key in ("images", "batch", "lr"):
        if key not in exp["train"]:
            raise ConfigError(f"experiment {exp['method']}-{exp['variant']} has no train.{key}",
                              f"add train.{key} (or name a recipe that sets it)")
    return exp


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _expand_grid(exp: dict) -> list[dict]:
    grid = exp.pop("grid", None)
    if not grid:
        return [exp]
    keys = sorted(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        e = copy.deepcopy(exp)
        tag = []
        for k, v in zip(keys, combo):
            _set_dotted(e, k, v)
            tag.append(f"{k.split('.')[-1]}{v:g}" if isinstance(v, (int, float)) else f"{k.split('.')[-1]}{v}")
        e["variant"] = e["variant"] + "." + ".".join(tag).replace("_", "")
        # the top cell (largest value on every axis) is the grid's headline run
        e["_grid_top"] = all(v == max(grid[k]) for k, v in zip(keys, combo))
        out.append(e)
    return out


def _expand_rounds(exp: dict) -> list[dict]:
    """Halving rounds (PD): round j distils round j-1 (round 0's teacher = the experiment's teacher);
    a round with an entry in the recipe's `round_train` (by student step count) trains with those values."""
    by_round = exp.pop("round_train", None) or {}
    rounds = exp.pop("rounds", None)
    if not rounds:  # one round given by hand (params.student_steps) takes its entry too
        n = (exp.get("params") or {}).get("student_steps")
        if n in by_round:
            exp["train"] = {**exp["train"], **copy.deepcopy(by_round[n])}
        return [exp]
    if any(b >= a for a, b in zip(rounds, rounds[1:])):
        raise ConfigError(f"rounds {rounds} of {exp['method']}-{exp['variant']} must strictly decrease",
                          "list student step counts like [8, 4, 2, 1]")
    out, prev = [], exp.get("teacher")
    base = exp["variant"]
    for n in rounds:
        e = copy.deepcopy(exp)
        e["variant"] = f"{base}.n{n}"
        e["train"] = {**e["train"], **copy.deepcopy(by_round.get(n, {}))}
        e.setdefault("params", {})["student_steps"] = n
        if e["method"] == "pd":  # round 1 distils the EDM teacher, later rounds the previous student
            e["params"].setdefault("teacher_kind", "edm" if prev == exp.get("teacher") else "pd")
        e["steps"] = [n]
        if prev is not None:
            e["teacher"] = prev
        if prev != exp.get("teacher"):  # round 2 on distils round 1, not an imported `teacher_ckpt:`
            e.pop("teacher_ckpt", None)
        e["_round_of"] = base
        out.append(e)
        prev = f"{e['method']}-{e['variant']}"
    return out


def resolve_teacher(key: str, e: dict, by_key: dict[str, dict]) -> str | None:
    """The experiment key of `e`'s teacher: its `teacher:`, else one picked from the suite's
    experiments of the teacher method on the same dataset; None for a method without a teacher."""
    from methods.base import method_class

    cls = method_class(e["method"])
    if e.get("teacher_ckpt"):
        if cls.teacher is None:
            raise ConfigError(f"{key} sets teacher_ckpt '{e['teacher_ckpt']}' but method '{e['method']}' takes no "
                              "teacher", "remove `teacher_ckpt:`")
        if e.get("teacher"):
            raise ConfigError(f"{key} sets both `teacher: {e['teacher']}` and `teacher_ckpt: {e['teacher_ckpt']}`",
                              "keep one: a teacher run of this suite or an imported checkpoint")
        return None  # the imported network stands in for the teacher run (checked in config._experiment_runs)
    teacher_key = f"{e['dataset']}/{e['teacher']}" if e.get("teacher") else None
    if cls.teacher is not None and teacher_key is None:
        cands = [k for k, x in by_key.items() if x["method"] == cls.teacher and x["dataset"] == e["dataset"]]
        if not cands:
            raise ConfigError(f"{key} needs a '{cls.teacher}' teacher on dataset '{e['dataset']}' "
                              "but the suite has none",
                              f"add a {cls.teacher} experiment on {e['dataset']} or set `teacher:`")
        teacher_key = _pick_teacher(e, {k: by_key[k] for k in cands})
    if cls.teacher is None and teacher_key is not None:
        raise ConfigError(f"{key} sets teacher '{teacher_key}' but method '{e['method']}' takes no teacher",
                          "remove `teacher:`")
    if teacher_key is not None:
        if teacher_key not in by_key:
            same = sorted(k.split("/", 1)[1] for k in by_key if k.startswith(e["dataset"] + "/"))
            raise ConfigError(f"{key}: teacher '{e.get('teacher')}' is not an experiment on dataset "
                              f"'{e['dataset']}'", f"use one of: {', '.join(same)}")
    return teacher_key


def _pick_teacher(student: dict, cands: dict[str, dict]) -> str:
    """The default teacher among a dataset's experiments of the teacher method: one with the
    student's own network if any (ECT/CD/PD initialise from their teacher, and with a scaling grid
    each model size then distils its own size), and of those the longest-trained (the top of a
    training-budget grid); ties keep suite order (max returns the first maximum)."""
    same = [k for k, x in cands.items() if x.get("net") == student.get("net")] or list(cands)
    return max(same, key=lambda k: cands[k]["train"].get("images", 0))


def dependency_order(after: dict[str, tuple[str, ...] | list[str]], what: str = "dependency") -> list[str]:
    """The keys of `after` (node -> the nodes it waits for) with every node after what it waits for,
    in depth-first order from the first key; a cycle is a one-line ConfigError naming it."""
    order, seen = [], set()

    def visit(n: str, stack: tuple[str, ...] = ()) -> None:
        if n in seen:
            return
        if n in stack:
            raise ConfigError(f"{what} cycle through {' -> '.join(stack + (n,))}", "remove the cycle")
        for d in after[n]:
            visit(d, stack + (n,))
        seen.add(n)
        order.append(n)

    for n in after:
        visit(n)
    return order


def topo_order(runs: dict[str, Any]) -> list[str]:
    """The ids of `runs` (id -> config.Run) with every teacher before its students; a cycle is a ConfigError."""
    return dependency_order({n: (r.teacher,) if r.teacher else () for n, r in runs.items()}, "teacher")
