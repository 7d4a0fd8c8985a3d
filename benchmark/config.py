"""Suite configs: load YAML, validate against `schemas/suite.schema.yaml`, cross-check, and expand
experiments into concrete runs (one per seed, grid point and halving round).

Everything that can be checked before work starts is checked here, so a bad config fails in
seconds with one line instead of after an hour of training (issue: reliability).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import ConfigError
from benchmark.provenance import REPO_ROOT, sha256_json
from benchmark.yaml_io import read_yaml

SCHEMA_PATH = REPO_ROOT / "schemas" / "suite.schema.yaml"
SUITES_DIR = REPO_ROOT / "config" / "suites"


@dataclass(frozen=True)
class Run:
    """One training run: a node of the DAG. `name` = `{method}-{variant}-s{seed}`."""

    name: str
    method: str
    variant: str
    seed: int
    dataset: str
    net: dict[str, Any]
    train: dict[str, Any]
    params: dict[str, Any]
    steps: tuple[int, ...]
    teacher: str | None  # id (`{dataset}/{name}`) of the teacher run (same seed) or None
    recipe: str | None = None
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    conditioning: str = "uncond"  # 'uncond' or 'class' (class labels of the dataset)
    guidance: float = 1.0  # classifier-free guidance scale of the sampler
    label_dropout: float = 0.0  # training: probability of zeroing an example's labels
    num_classes: int = 0  # one-hot width of the labels (0: unconditional)
    paper_recipe: bool = False  # `recipe` names a paper recipe (one with a `paper:` block)
    recipe_diff: tuple[dict[str, str], ...] = ()  # {field, paper, ours} where the run departs from it
    teacher_ckpt: str | None = None  # an imported network standing in for the teacher run (`teacher_ckpt:`)
    teacher_sha256: str | None = None  # that file's sha256 (in the config hash)

    @property
    def key(self) -> str:
        """Run name without the seed (what `teacher:` refers to)."""
        return f"{self.method}-{self.variant}"

    @property
    def id(self) -> str:
        """Unique within a suite: `{dataset}/{name}` (the same variant may exist per dataset)."""
        return f"{self.dataset}/{self.name}"


@dataclass
class Suite:
    name: str
    raw: dict[str, Any]
    runs: dict[str, Run]
    path: Path | None = None

    @property
    def datasets(self) -> dict[str, dict[str, Any]]:
        return self.raw["datasets"]

    @property
    def seeds(self) -> list[int]:
        return list(self.raw.get("seeds", [0]))

    @property
    def num_samples(self) -> int:
        return int(self.raw.get("num_samples", 2000))

    @property
    def sample_batch(self) -> int:
        return int(self.raw.get("sample_batch", 1000))

    @property
    def distributed(self) -> dict[str, Any]:
        """How a training step is split over ranks (`batch_per_gpu`); see benchmark/distributed.py."""
        return dict(self.raw.get("distributed") or {})

    @property
    def precision(self) -> dict[str, Any]:
        """GPU speed options (bf16, channels_last, compile, tf32); see benchmark/precision.py."""
        return dict(self.raw.get("precision") or {})

    def resources(self, stage: str, device: str = "cpu") -> dict[str, int]:
        """What a stage's rule asks the executor for: `resources.default` overlaid by
        `resources.<stage>`, in Snakemake's standard names (`gpu`, `mem_mb`, `runtime` minutes,
        `cpus_per_task`) that the Slurm and Kubernetes executors translate. `gpu` defaults to 1 on
        cuda and is left out on cpu (where `gpus` > 1 still sets the training processes, `procs`)."""
        res = self.raw.get("resources") or {}
        spec = {**res.get("default", {}), **res.get(stage, {})}
        out = {k: int(spec[k]) for k in ("mem_mb", "runtime") if k in spec}
        if "cpus" in spec:
            out["cpus_per_task"] = int(spec["cpus"])
        if device == "cuda" and int(spec.get("gpus", 1)) > 0:
            out["gpu"] = int(spec.get("gpus", 1))
        return out

    def procs(self, stage: str = "train") -> int:
        """Processes a stage's job launches (torchrun --nproc_per_node): `resources.<stage>.gpus`, >= 1."""
        res = self.raw.get("resources") or {}
        return max(1, int({**res.get("default", {}), **res.get(stage, {})}.get("gpus", 1)))

    def extractors(self, dataset: str) -> list[str]:
        ds = self.datasets[dataset]
        if "extractors" in ds:
            return list(ds["extractors"])
        return ["digitnet"] if ds["kind"] == "digits" else ([] if ds["kind"] == "gmm" else ["inception"])

    def run(self, run_id: str) -> Run:
        """Look a run up by id `{dataset}/{method}-{variant}-s{seed}`."""
        if run_id not in self.runs:
            raise ConfigError(f"suite '{self.name}' has no run '{run_id}'",
                              f"use one of: {', '.join(sorted(self.runs)[:20])}")
        return self.runs[run_id]


def suite_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"suite file {p} does not exist", "check the path")
        return p
    q = SUITES_DIR / f"{name_or_path}.yaml"
    if not q.exists():
        names = sorted(x.stem for x in SUITES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown suite '{name_or_path}'", f"use one of: {', '.join(names)} or a path to a YAML")
    return q


# Names that end up in file paths, rule names and shell commands: a strict pattern, checked at
# validation, so no user string can carry shell metacharacters, path separators or a leading dash.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_STEPS = 4096  # largest step budget (NFE grows with it; beyond this a sweep only burns compute)


def _validator_class():
    """Draft 2020-12, except that 'integer' means a YAML integer: jsonschema counts 1.0 as an
    integer, but a float seed or batch breaks range()/indexing far from the config."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def _nonfinite(obj: Any, where: str = "") -> str | None:
    """Path of the first NaN/inf number in a parsed config (JSON schema bounds let NaN through:
    every comparison with NaN is false), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        hit = _nonfinite(v, f"{where}/{k}" if where else str(k))
        if hit:
            return hit
    return None


def validate_schema(raw: Any, source: str = "suite") -> None:
    import jsonschema

    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping, got {type(raw).__name__}",
                          "see config/suites/quick.yaml for the layout")
    bad = _nonfinite(raw)
    if bad:
        raise ConfigError(f"{source}: invalid value at '{bad}': not a finite number",
                          "write a finite number (NaN and inf cannot train or be compared)")
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    try:
        _validator_class()(schema).validate(raw)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        msg = e.message if len(e.message) < 200 else e.message[:200] + "..."
        raise ConfigError(f"{source}: invalid value at '{where}': {msg}",
                          "compare with schemas/suite.schema.yaml and config/suites/quick.yaml") from None


def validate_workflow_config(config: dict[str, Any], schema_path: Path) -> None:
    """The Snakemake config (config/config.yaml + --config KEY=VALUE) against schemas/config.schema.yaml,
    with a one-line error (snakemake.utils.validate prints the schema and the whole config)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    try:
        _validator_class()(schema).validate(dict(config))
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"workflow config: invalid value at '{where}': {e.message[:200]}",
                          "see config/config.yaml for the keys; set them with --config KEY=VALUE") from None


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


def load_suite(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Load, validate and expand a suite; raises ConfigError with a one-line message."""
    path = suite_path(name_or_path)
    raw = read_yaml(path)
    if overrides:
        raw = {**raw, **overrides}
    validate_schema(raw, source=str(path.name))
    return expand_suite(raw, path)


def expand_suite(raw: dict[str, Any], path: Path | None = None) -> Suite:
    """A validated suite YAML as a Suite: experiments expanded (recipes, grids, rounds) into one
    Run per seed, teachers resolved, every check that can fail done before any work."""
    _check_datasets(raw)
    by_key = _expand_experiments(raw)
    runs: dict[str, Run] = {}
    for key, e in by_key.items():
        teacher_key = _resolve_teacher(key, e, by_key)
        runs.update(_experiment_runs(key, e, teacher_key, raw))
    for r in runs.values():
        if r.teacher and runs[r.teacher].conditioning != r.conditioning:
            raise ConfigError(f"{r.id} ({r.conditioning}) has teacher {r.teacher} ({runs[r.teacher].conditioning})",
                              "give student and teacher the same `conditioning:`")
    # a run's hash covers its teacher chain: changing the teacher changes the student
    for name in _topo_order(runs):
        r = runs[name]
        if r.teacher:
            runs[name] = _replace_hash(r, sha256_json([r.config_hash, runs[r.teacher].config_hash])[:16])
    suite = Suite(name=raw["name"], raw=raw, runs=runs, path=path)
    _check_extractors(suite, raw)
    return suite


def _check_datasets(raw: dict[str, Any]) -> None:
    """Known dataset kinds, and enough samples for image metrics (precision/recall need them)."""
    from benchmark.data import DATASETS

    for ds, spec in raw["datasets"].items():
        if spec["kind"] not in DATASETS:
            raise ConfigError(f"dataset '{ds}' has unknown kind '{spec['kind']}'",
                              f"use one of: {', '.join(sorted(DATASETS))}")
    from benchmark.metrics.evaluate import MIN_IMAGE_SAMPLES

    images = [d for d, spec in raw["datasets"].items() if spec["kind"] != "gmm"]
    if images and raw.get("num_samples", 2000) < MIN_IMAGE_SAMPLES:
        raise ConfigError(f"num_samples={raw['num_samples']} is too few for image metrics on {', '.join(images)}",
                          f"use num_samples >= {MIN_IMAGE_SAMPLES} (precision/recall compare nearest neighbours)")


def _expand_experiments(raw: dict[str, Any]) -> dict[str, dict]:
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


def _resolve_teacher(key: str, e: dict, by_key: dict[str, dict]) -> str | None:
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
        return None  # the imported network stands in for the teacher run (checked in _experiment_runs)
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


def _build_checked_method(key: str, e: dict, ds: dict[str, Any]) -> tuple[Any, tuple[int, ...]]:
    """(method, data shape) of the experiment: the method is built once so that its parameters,
    step budgets and batch/group size are validated before any work."""
    from benchmark.train_config import TrainConfig
    from methods.base import build_method

    tcfg = TrainConfig(**{k: v for k, v in e["train"].items()})
    shape = _dataset_shape(ds)
    m = build_method(e["method"], e.get("params"), total_steps=tcfg.total_steps, data_shape=shape)
    steps = e["steps"]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"{key}: duplicate step budgets {steps}", "list each step budget once")
    for k in steps:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"{key}: step budget {k!r} is invalid", "step budgets are integers >= 1")
        m.check_steps(k)
    gs = int(getattr(m, "group_size", None) or getattr(m, "M", None) or 0)  # IMM stores it as M
    if gs > 1:
        if tcfg.batch % gs:
            raise ConfigError(f"{key}: batch {tcfg.batch} is not divisible by the group size {gs}",
                              "choose a batch that is a multiple of the group size")
    return m, shape


def _experiment_runs(key: str, e: dict, teacher_key: str | None, raw: dict[str, Any]) -> dict[str, Run]:
    """One Run per seed of a checked experiment, keyed '{key}-s{seed}'; each hashes its own spec
    (the teacher chain is folded in later)."""
    ds = raw["datasets"][e["dataset"]]
    m, shape = _build_checked_method(key, e, ds)
    cond, num_classes = _conditioning(key, e, ds)
    n_params = check_net(key, e.get("net") or {}, shape, m.num_cond, num_classes)
    imported = None
    if e.get("teacher_ckpt"):  # an imported network as the teacher: checked before any work
        from benchmark.import_ckpt import check_init_from, imported_teacher

        imported = imported_teacher(key, e["teacher_ckpt"], shape, num_classes,
                                    cond["conditioning"], m.teacher)
        if m.init_from_teacher:
            check_init_from(key, e.get("net") or {}, imported, shape, m.num_cond, num_classes)
    teacher = "" if m.teacher is None else imported["name"] if imported else "trained"
    is_paper, diff, facts = _recipe_diff(e, ds, shape, n_params, teacher)
    runs = {}
    for seed in raw.get("seeds", [0]):
        teacher_run = f"{teacher_key}-s{seed}" if teacher_key else None
        runs[f"{key}-s{seed}"] = Run(name=f"{e['method']}-{e['variant']}-s{seed}", method=e["method"],
                                     variant=e["variant"], seed=seed, dataset=e["dataset"],
                                     net=dict(e.get("net") or {}), train=dict(e["train"]),
                                     params=dict(e.get("params") or {}), steps=tuple(e["steps"]),
                                     teacher=teacher_run, recipe=e.get("recipe"),
                                     config_hash=sha256_json(_run_spec(e, ds, seed, teacher_run, imported))[:16],
                                     extra={"round_of": e.get("_round_of"), "grid_top": e.get("_grid_top"),
                                            "facts": facts},
                                     paper_recipe=is_paper, recipe_diff=tuple(diff), num_classes=num_classes,
                                     teacher_ckpt=imported["path"] if imported else None,
                                     teacher_sha256=imported["sha256"] if imported else None, **cond)
    return runs


def _run_spec(e: dict, ds: dict[str, Any], seed: int, teacher_run: str | None,
              imported: dict[str, str] | None = None) -> dict[str, Any]:
    """What a run's config hash (its training) covers; conditioning keys only when set, so that older
    hashes hold. The guidance scale is a sampling setting, not hashed: changing it re-samples (the
    sample rule's params) without re-training. An imported teacher enters by its file's sha256 (not
    its path: moving the file re-trains nothing)."""
    spec = {k: e.get(k) for k in ("method", "variant", "net", "train", "params", "steps", "recipe")}
    if e.get("conditioning"):  # hashed only when set: old hashes hold
        spec.update(conditioning=e.get("conditioning"))
    if e.get("label_dropout") is not None:
        spec.update(label_dropout=e.get("label_dropout"))
    spec.update(seed=seed, dataset=ds | {"name": e["dataset"]}, teacher=teacher_run)
    if imported:  # only when set: old hashes hold
        spec.update(teacher_ckpt_sha256=imported["sha256"])
    return spec


def _check_extractors(suite: Suite, raw: dict[str, Any]) -> None:
    """An extractor that cannot read a dataset's (decoded) images fails now, not at evaluation."""
    from benchmark.metrics.extractors import check_fits

    for ds, spec in raw["datasets"].items():
        for ext in suite.extractors(ds):
            image_spec = {k: v for k, v in spec.items() if k != "vae"}  # extractors see decoded images
            check_fits(ext, _dataset_shape(image_spec), f"dataset '{ds}'")


def check_name(name: str, what: str) -> None:
    """A name that becomes a path component, rule name or shell argument must match NAME_RE."""
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 200:
        raise ConfigError(f"{what} {name!r} has characters outside [A-Za-z0-9._-] (or starts with one of '._-')",
                          "use letters, digits, '.', '_' and '-' only")


SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+=,:@%~-]+$")


def check_shell_safe(value: str | Path, what: str) -> None:
    """Paths the workflow passes to its jobs' command lines hold no character a shell interprets
    (the rules also quote them; this guards any command line that does not)."""
    v = str(value)
    if not SAFE_PATH_RE.match(v) or v.startswith("-"):
        bad = sorted({c for c in v if not SAFE_PATH_RE.match(c)}) or ["leading '-'"]
        raise ConfigError(f"{what} {v!r} contains characters a shell would interpret ({' '.join(bad)})",
                          "use a path of letters, digits and . _ / + = , : @ % ~ - only")


def _negative(obj: Any, where: str) -> str | None:
    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and obj < 0:
        return where
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    return next((h for k, v in items if (h := _negative(v, f"{where}.{k}"))), None)


def check_net(key: str, net: dict[str, Any], shape: tuple[int, ...], num_cond: int, num_classes: int = 0) -> int:
    """Build the network on the meta device (no memory, milliseconds) so that unknown keys,
    negative or fractional widths fail at validation instead of as a traceback in the job.
    Returns its parameter count (the `architecture` fact a paper comparison reads)."""
    import torch

    from benchmark.nets import build_net

    neg = _negative(net, "net")
    if neg:
        raise ConfigError(f"{key}: {neg} is negative", "network sizes and rates are >= 0")
    try:
        with torch.device("meta"):
            built = build_net(net, shape, num_cond, num_classes)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e.what}", e.fix) from None
    except (TypeError, ValueError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        msg = " ".join(str(e).split())[:160]
        raise ConfigError(f"{key}: invalid `net:` {net} ({type(e).__name__}: {msg})",
                          "see benchmark/nets/ for the accepted keys and sizes") from None
    return sum(p.numel() for p in built.parameters())


COND_DEFAULTS: dict[str, Any] = {"conditioning": "uncond", "guidance": 1.0, "label_dropout": 0.0}


def _conditioning(key: str, e: dict, ds: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """An experiment's (conditioning, guidance, label_dropout) and its label width, checked against
    its dataset: class conditioning needs labels; guidance and label dropout need class conditioning."""
    cond = {k: v if e.get(k) is None else e[k] for k, v in COND_DEFAULTS.items()}
    cond["guidance"], cond["label_dropout"] = float(cond["guidance"]), float(cond["label_dropout"])
    if cond["conditioning"] == "uncond":
        for k in ("guidance", "label_dropout"):
            if cond[k] != COND_DEFAULTS[k]:
                raise ConfigError(f"{key}: {k} = {cond[k]:g} needs class conditioning",
                                  f"set `conditioning: class` or remove `{k}:`")
        return cond, 0
    num_classes = dataset_num_classes(ds)
    if not num_classes:
        raise ConfigError(f"{key}: conditioning 'class' but dataset kind '{ds['kind']}' has no class labels",
                          "use `conditioning: uncond` for this dataset")
    return cond, num_classes


def dataset_num_classes(spec: dict[str, Any]) -> int:
    """Number of classes of a dataset kind (0: unlabelled); a GMM's classes are its components."""
    kind = spec["kind"]
    if kind == "gmm":
        return int(spec.get("components", 8))  # GMM.make's default
    return {"digits": 10, "cifar10": 10, "imagenet64": 1000, "imagenet128": 1000,
            "imagenet256": 1000}.get(kind, 0)


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


def _recipe_diff(e: dict[str, Any], ds: dict[str, Any], shape: tuple[int, ...],
                 n_params: int, teacher: str = "") -> tuple[bool, list[dict[str, str]], dict[str, Any]]:
    """Whether the experiment follows a paper recipe, where it departs from it, and the run's facts
    (architecture, conditioning, space, loss metric, sampler, teacher) that results rows carry (recipes.py)."""
    from benchmark import recipes

    facts = recipes.run_facts(e, ds, shape, n_params) | {"teacher": teacher}
    is_paper, diff = recipes.recipe_diff(e["method"], e.get("recipe"), e, facts)
    return is_paper, diff, facts


def _pick_teacher(student: dict, cands: dict[str, dict]) -> str:
    """The default teacher among a dataset's experiments of the teacher method: one with the
    student's own network if any (ECT/CD/PD initialise from their teacher, and with a scaling grid
    each model size then distils its own size), and of those the longest-trained (the top of a
    training-budget grid); ties keep suite order (max returns the first maximum)."""
    same = [k for k, x in cands.items() if x.get("net") == student.get("net")] or list(cands)
    return max(same, key=lambda k: cands[k]["train"].get("images", 0))


def _replace_hash(r: Run, h: str) -> Run:
    from dataclasses import replace

    return replace(r, config_hash=h)


def _topo_order(runs: dict[str, Run]) -> list[str]:
    order, seen = [], set()

    def visit(n: str, stack: tuple[str, ...] = ()) -> None:
        if n in seen:
            return
        if n in stack:
            raise ConfigError(f"teacher cycle through {' -> '.join(stack + (n,))}", "remove the cycle")
        t = runs[n].teacher
        if t:
            visit(t, stack + (n,))
        seen.add(n)
        order.append(n)

    for n in runs:
        visit(n)
    return order


def _dataset_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    """Model-space shape known from the config alone (validation before any data is read):
    the latent shape for a dataset with `vae:`."""
    if spec.get("vae"):
        from benchmark.latent import latent_shape, vae_spec

        if spec["kind"] == "gmm":
            raise ConfigError("a gmm dataset cannot have `vae:` (a VAE encodes images)", "remove `vae:`")
        return latent_shape(_dataset_shape({k: v for k, v in spec.items() if k != "vae"}), vae_spec(spec["vae"]))
    kind = spec["kind"]
    if kind == "gmm":
        return (int(spec.get("dim", 2)),)
    if kind == "digits":
        return (1, 8, 8)
    res = {"cifar10": 32, "imagenet64": 64, "imagenet128": 128, "imagenet256": 256, "lsun256": 256}[kind]
    return (3, res, res)


def run_dir(results_root: Path, suite: str, run: Run) -> Path:
    return Path(results_root) / suite / run.dataset / run.name
