"""Paper recipes as data (DESIGN §9b): `config/methods/<method>.yaml` holds, per dataset, what a
paper trained (`params`, `train`, `net`, `steps`, `conditioning`, `guidance`) and a `paper:` block
with the facts a comparison needs (architecture, parameter count, conditioning, space, loss
metric, augmentation). A suite experiment names a recipe and overrides fields; the run records the
resolved recipe and its *diff* against the paper, and the leaderboard gives a verdict only where
that diff is empty.

Why a diff rather than a label: a run that says `recipe: cifar10` but changes the batch, the
budget or the network is not the paper's experiment, and its number must not be judged against
the paper's. Entries without a `paper:` block (e.g. `quick`) are demo recipes: runs that use them
are never comparable.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import fields
from functools import cache
from typing import Any

from benchmark import sources
from benchmark.errors import ConfigError
from benchmark.provenance import REPO_ROOT
from benchmark.train_config import TrainConfig
from benchmark.yaml_io import read_yaml  # strict: UTF-8, no duplicate keys

METHODS_DIR = REPO_ROOT / "config" / "methods"

# keys an experiment may take from its recipe (the rest of a recipe entry is documentation/DAG input)
MERGED_KEYS = ("params", "train", "net", "steps", "conditioning", "guidance", "label_dropout")
# settings that change how a run is operated, not what it computes: never part of a diff
OPERATIONAL = {"train.ckpt_every_images", "train.log_every_steps", "net.dropout_seed"}
# DAG-set parameters: PD's round and MCM's segment count come from `rounds` / the variant
DAG_SET = {"params.student_steps", "params.teacher_kind", "params.segments"}


def recipe_file(method: str) -> str:
    """mcm-cd and mcm-ct share mcm.yaml; every other method has its own file."""
    return method.split("-")[0]


@cache
def _read_file(stem: str) -> dict[str, Any]:
    p = METHODS_DIR / f"{stem}.yaml"
    if not p.is_file():
        return {}
    data = read_yaml(p) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must map recipe names to recipes", "see config/methods/edm.yaml for the layout")
    for name, entry in data.items():  # every value names where it comes from (benchmark/sources.py)
        problems = sources.check_entry(f"config/methods/{stem}.yaml {name}", entry) if isinstance(entry, dict) \
            else [f"config/methods/{stem}.yaml {name}: a recipe must be a mapping"]
        problems += _round_train_problems(f"config/methods/{stem}.yaml {name}", entry)
        if problems:
            raise ConfigError(problems[0], "give the value a source as benchmark/sources.py describes")
    return data


def _round_train_problems(where: str, entry: Any) -> list[str]:
    """`round_train:` maps a halving round's student step count to that round's own `train` values."""
    rt = entry.get("round_train") if isinstance(entry, dict) else None
    if rt is None:
        return []
    if not isinstance(rt, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                           and isinstance(t, dict) for n, t in rt.items()):
        return [f"{where}: round_train must map student step counts (integers >= 1) to train values"]
    return []


def recipe_names(method: str) -> list[str]:
    return sorted(_read_file(recipe_file(method)))


def load_recipe(method: str, name: str) -> dict[str, Any]:
    """The recipe `name` of `method` (a deep copy); one-line ConfigError for an unknown name."""
    recipes = _read_file(recipe_file(method))
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise ConfigError(f"unknown recipe '{name}' for method '{method}' "
                          f"(config/methods/{recipe_file(method)}.yaml has: {known})",
                          "name one of those recipes or add it to that file")
    return copy.deepcopy(recipes[name])


def _deep_merge(base: Any, over: Any) -> Any:
    """`over` wins; mappings merge key by key, everything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def resolve_experiment(exp: dict[str, Any]) -> dict[str, Any]:
    """The experiment with its recipe's fields filled in under the experiment's own overrides."""
    name = exp.get("recipe")
    if not name:
        return exp
    recipe = load_recipe(exp["method"], name)
    out = dict(exp)
    for key in MERGED_KEYS:
        if key in recipe:
            out[key] = _deep_merge(recipe[key], exp[key]) if key in exp else copy.deepcopy(recipe[key])
    if _other_net_type(recipe.get("net"), exp.get("net")):  # another constructor: none of the recipe's kwargs apply
        out["net"] = copy.deepcopy(exp["net"])
    if recipe.get("round_train"):  # a round's own budget (PD's last rounds), under the experiment's `train:`/grid
        grid = {k.split(".", 1)[1] for k in exp.get("grid") or {} if k.startswith("train.")}
        own = set(exp.get("train") or {}) | grid
        out["round_train"] = {n: {k: v for k, v in t.items() if k not in own} for n, t in recipe["round_train"].items()}
    return out


def _other_net_type(recipe_net: Any, exp_net: Any) -> bool:
    """Whether the experiment's `net:` names another network type than its recipe's (e.g. a CD student on
    the suite's DDPM++ teacher instead of the paper's NCSN++): its keys then replace the recipe's net
    rather than merge into it, so no keyword of one constructor (NCSN++'s Fourier embedding, ADM's
    adaptive_scale) leaks into the other."""
    return (isinstance(recipe_net, dict) and isinstance(exp_net, dict) and "type" in exp_net
            and exp_net["type"] != recipe_net.get("type"))


def paper_section(recipe: dict[str, Any], section: str, resolved: dict[str, Any]) -> Any:
    """A recipe section as the paper ran it for this run: a halving round's `round_train` entry (keyed by
    its student step count) over the recipe's `train`."""
    d = recipe.get(section)
    n = (resolved.get("params") or {}).get("student_steps")
    if section == "train" and n in (recipe.get("round_train") or {}):
        d = _deep_merge(d, recipe["round_train"][n])
    return d


# ---------------------------------------------------------------------------------------------
# effective values: method and TrainConfig defaults filled in, so "unset" and "set to the default"
# compare equal


def method_defaults(method: str) -> dict[str, Any]:
    """Keyword defaults of a method's constructor chain (subclass defaults win)."""
    from methods.base import method_class

    out: dict[str, Any] = {}
    for cls in reversed(method_class(method).__mro__):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and p.name not in ("total_steps", "data_shape"):
                out[p.name] = p.default
    return out


def train_defaults() -> dict[str, Any]:
    d = TrainConfig()
    return {f.name: getattr(d, f.name) for f in fields(TrainConfig) if f.name != "extra"}


# the two ways of averaging weights: a recipe that states one needs no value for the other's keys
EMA_ALTERNATIVES = ({"train.ema_decay"}, {"train.ema_halflife_images", "train.ema_rampup_ratio"})


def unstated_defaults(stem: str, entry: dict[str, Any]) -> list[str]:
    """Paths of the values a run of this paper recipe takes from code defaults (a method's keyword
    defaults, TrainConfig's fields, its network constructor's keywords) because the recipe does not
    state them. A diff sets "unset" equal to the default on both sides, so such a value could never
    show in a verdict: Adam's betas, a warm-up or a clipping threshold nobody read in the paper would
    pass as the paper's. A paper recipe must state each one with its source (tests/test_sources.py);
    demo recipes need not."""
    from methods.base import METHODS

    if not isinstance(entry.get("paper"), dict):
        return []
    stated = set(sources.leaves(entry))
    need = {f"train.{k}" for k in train_defaults()} - OPERATIONAL
    for m in (m for m in METHODS if recipe_file(m) == stem):
        need |= {f"params.{k}" for k in method_defaults(m)} - DAG_SET
    if isinstance(entry.get("net"), dict):  # a recipe without a net trains its teacher's (PD)
        from benchmark.nets import net_defaults

        need |= {f"net.{k}" for k in net_defaults(entry["net"].get("type", "unet"))} - OPERATIONAL
    for chosen, other in (EMA_ALTERNATIVES, EMA_ALTERNATIVES[::-1]):
        if chosen & stated:
            need -= other
    return sorted(need - stated)


def loss_metric(method: str, params: dict[str, Any]) -> str:
    """The distance the training loss measures, in the papers' words (l2, lpips, pseudo-huber, mmd)."""
    p = method_defaults(method) | dict(params or {})
    if method in ("cd", "ct", "mcm-cd", "mcm-ct") and "loss_norm" in p:
        return str(p["loss_norm"])
    if method == "ict":
        return "pseudo-huber"
    if method == "ect":
        return "pseudo-huber" if float(p.get("c", 0.0) or 0.0) > 0 else "l2"
    if method == "imm":
        return "mmd"
    return "l2"


def _flatten(prefix: str, d: Any) -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: list(d) if isinstance(d, tuple) else d}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _effective(method: str, section: str, d: dict[str, Any] | None) -> dict[str, Any]:
    base = {"params": lambda: method_defaults(method), "train": train_defaults}.get(section, dict)()
    if section == "net" and isinstance(d, dict) and d.get("type") is not None:
        from benchmark.nets import net_defaults

        base = net_defaults(d["type"])  # what the constructor (and a preset type) fills in
    return base | dict(d or {})


def _fmt(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, float) and (abs(v) >= 1e5 or (v != 0 and abs(v) < 1e-3)):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 100_000:
        return f"{v:.4g}"
    return str(v).replace(" ", "")


def fmt_params(n: int | None) -> str:
    """'55.7M', '1.23B' (the papers' way of writing parameter counts)."""
    if not n:
        return ""
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


# ---------------------------------------------------------------------------------------------
# the diff a verdict looks at


def sampler_of(method: str, params: dict[str, Any]) -> str:
    """The sampler a run uses, where a method has a choice (EDM's ODE solver, IMM's and MCM's)."""
    p = method_defaults(method) | dict(params or {})
    if method == "edm":
        return str(p.get("solver", ""))
    return str(p.get("sampler", "")) if method in ("imm", "mcm-cd", "mcm-ct") else ""


def run_facts(exp: dict[str, Any], ds: dict[str, Any], shape: tuple[int, ...], n_params: int) -> dict[str, Any]:
    """What a comparison with a paper row looks at, as this run has it (resolved experiment;
    `n_params` from validation's meta-device build, validation.check_net)."""
    net = dict(exp.get("net") or {})
    return {"architecture": net.get("type", "mlp" if len(shape) == 1 else "unet"),
            "params": n_params,
            "conditioning": conditioning_label(exp.get("conditioning"), exp.get("guidance")),
            "space": "latent" if ds.get("vae") else "pixel",
            "loss_metric": loss_metric(exp["method"], exp.get("params") or {}),
            "sampler": sampler_of(exp["method"], exp.get("params") or {}),
            "guidance": float(exp["guidance"]) if exp.get("guidance") is not None else 1.0,
            "augment": 0.0,  # EDM's non-leaking augmentation is not implemented: ours is always 0
            "xflip": False}  # nor are horizontal flips of the training images (CM App. C, IMM Table 5 use them)


def conditioning_label(conditioning: str | None, guidance: float | None) -> str:
    """'uncond', 'class' or 'class+cfg' (class labels with a guidance scale other than 1)."""
    c = conditioning or "uncond"
    if c == "class" and guidance is not None and not _same(float(guidance), 1.0):
        return "class+cfg"
    return c


def _entry(field: str, paper: Any, ours: Any) -> dict[str, str]:
    return {"field": field, "paper": _fmt(paper), "ours": _fmt(ours)}


def _section_diff(method: str, section: str, paper: dict | None, ours: dict | None) -> list[dict[str, str]]:
    p = _flatten(section, _effective(method, section, paper))
    o = _flatten(section, _effective(method, section, ours))
    out = []
    for key in sorted(set(p) | set(o)):
        if key in OPERATIONAL or key in DAG_SET:
            continue
        if not _same(p.get(key), o.get(key)):
            out.append(_entry(key, p.get(key), o.get(key)))
    return out


def facts_diff(paper: dict[str, Any], ours: dict[str, Any]) -> list[dict[str, str]]:
    """Paper facts (`paper:` block) against the run's: only facts the paper block states count
    (`teacher: imported:<released file>` where the paper distilled/tuned a released network, compared
    with the run's `teacher` fact: 'imported:<file>' for a `teacher_ckpt:`, 'trained' for a suite run)."""
    out = []
    arch_p, arch_o = paper.get("architecture"), ours.get("architecture")
    n_p, n_o = paper.get("params"), ours.get("params")
    if arch_p is not None and (arch_p != arch_o or (n_p and n_o != n_p)):
        out.append({"field": "architecture", "paper": f"{arch_p}-{fmt_params(n_p)}".rstrip("-"),
                    "ours": f"{arch_o}-{fmt_params(n_o)}".rstrip("-")})
    for key, default in (("conditioning", None), ("guidance", 1.0), ("space", "pixel"), ("loss_metric", None),
                         ("augment", 0.0), ("xflip", False), ("teacher", None)):
        if key in paper and not _same(paper[key], ours.get(key, default)):
            out.append(_entry(key, paper[key], ours.get(key, default)))
    if paper.get("not_implemented"):  # what the paper's run used and this code cannot do
        out.append({"field": "not_implemented", "paper": " + ".join(paper["not_implemented"]), "ours": "none"})
    return out


def recipe_diff(method: str, recipe_name: str | None, resolved: dict[str, Any],
                facts: dict[str, Any]) -> tuple[bool, list[dict[str, str]]]:
    """(is a paper recipe, diff entries {field, paper, ours}) of a resolved experiment.

    `facts` are the run's: architecture (net type), params (count), conditioning label, space,
    loss_metric, augment. A run without a recipe, or with a demo recipe (no `paper:` block), is
    not a paper recipe and gets no diff."""
    if not recipe_name:
        return False, []
    recipe = load_recipe(method, recipe_name)
    paper = recipe.get("paper")
    if not isinstance(paper, dict):
        return False, []
    paper = dict(paper)
    if "conditioning" in paper:
        paper["conditioning"] = conditioning_label(paper["conditioning"], recipe.get("guidance", paper.get("guidance")))
    out = facts_diff(paper, facts)
    for section in ("params", "train", "net"):
        if section in recipe:
            out += _section_diff(method, section, paper_section(recipe, section, resolved), resolved.get(section))
    return True, _by_sources(method, recipe, resolved, facts, out)


def _by_sources(method: str, recipe: dict[str, Any], resolved: dict[str, Any], facts: dict[str, Any],
                diff: list[dict[str, str]]) -> list[dict[str, str]]:
    """The diff as the recipe's sources allow it (benchmark/sources.py): a value the paper does not state
    is no departure from the paper, unless the paper says its result depends on it; a value we could not
    read in the paper (or an unstated one it depends on) is always a difference; where ours departs on
    purpose from a stated value, the run is compared with the paper's value."""
    srcs = {_field_of(p): s for p, s in sources.recipe_sources(recipe).items()}
    ours = {**facts, **{k: v for sec in ("params", "train", "net")
                         for k, v in _flatten(sec, _effective(method, sec, resolved.get(sec))).items()}}
    out = [d for d in diff if d["field"] not in srcs or srcs[d["field"]].kind in ("cited", "ours")]
    for field, s in srcs.items():
        if field in {d["field"] for d in out}:
            continue
        if s.always_differs:
            out.append({"field": field, "paper": "unread" if s.kind == "unread" else "not stated",
                        "ours": _fmt(ours.get(field))})
        elif s.kind == "departs" and not _same(paper := sources.stated_value(s.paper_value), ours.get(field)):
            out.append({"field": field, "paper": paper if isinstance(paper, str) else _fmt(paper),
                        "ours": _fmt(ours.get(field))})
    # a value the recipe leaves to a code default has no source (the default is not the paper's value):
    # like an unread one, always a difference
    unstated = unstated_defaults(recipe_file(method), recipe)
    return [d for d in out if d["field"] not in unstated] + [
        {"field": path, "paper": "no source", "ours": _fmt(ours.get(path))} for path in unstated]


def _field_of(path: str) -> str:
    """Diff field of a recipe path: `paper.X` is the fact X (its parameter count is the 'architecture')."""
    return {"paper.params": "architecture"}.get(path, path.removeprefix("paper."))


def diff_text(diff: list[dict[str, str]] | tuple) -> str:
    """'architecture: ours unet-57.4M vs paper ddpmpp-55.7M; train.batch: ours 128 vs paper 512'."""
    return "; ".join(f"{d['field']}: ours {d['ours']} vs paper {d['paper']}" for d in diff)
