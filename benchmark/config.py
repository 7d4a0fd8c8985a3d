"""Suites as runs: load a suite YAML and turn its experiments into `Run`s (one per seed, grid
point and halving round) with their config hashes.

Every check that can fail before work starts runs while a suite loads (benchmark/validation.py),
and experiments are expanded in benchmark/expand.py; this module assembles the `Suite`, whose runs
the Snakefile and the CLI read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError
from benchmark.expand import expand_experiments, resolve_teacher, topo_order
from benchmark.provenance import REPO_ROOT, sha256_json
from benchmark.validation import (
    build_checked_method,
    check_datasets,
    check_extractors,
    check_net,
    check_shell_safe,
    conditioning,
    validate_schema,
    validate_workflow_config,
)
from benchmark.yaml_io import read_yaml

# check_shell_safe and validate_workflow_config live in benchmark.validation: re-exported for the
# Snakefile's `from benchmark.config import check_shell_safe, load_suite, suite_path, validate_workflow_config`
__all__ = ["SUITES_DIR", "Run", "Suite", "check_shell_safe", "expand_suite", "load_suite", "run_dir", "suite_path",
           "validate_workflow_config"]

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
    check_datasets(raw)
    by_key = expand_experiments(raw)
    runs: dict[str, Run] = {}
    for key, e in by_key.items():
        teacher_key = resolve_teacher(key, e, by_key)
        runs.update(_experiment_runs(key, e, teacher_key, raw))
    for r in runs.values():
        if r.teacher and runs[r.teacher].conditioning != r.conditioning:
            raise ConfigError(f"{r.id} ({r.conditioning}) has teacher {r.teacher} ({runs[r.teacher].conditioning})",
                              "give student and teacher the same `conditioning:`")
    # a run's hash covers its teacher chain: changing the teacher changes the student
    for name in topo_order(runs):
        r = runs[name]
        if r.teacher:
            runs[name] = _replace_hash(r, sha256_json([r.config_hash, runs[r.teacher].config_hash])[:16])
    suite = Suite(name=raw["name"], raw=raw, runs=runs, path=path)
    check_extractors(suite, raw)
    return suite


def _experiment_runs(key: str, e: dict, teacher_key: str | None, raw: dict[str, Any]) -> dict[str, Run]:
    """One Run per seed of a checked experiment, keyed '{key}-s{seed}'; each hashes its own spec
    (the teacher chain is folded in later)."""
    ds = raw["datasets"][e["dataset"]]
    m, shape = build_checked_method(key, e, ds)
    cond, num_classes = conditioning(key, e, ds)
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


def _recipe_diff(e: dict[str, Any], ds: dict[str, Any], shape: tuple[int, ...],
                 n_params: int, teacher: str = "") -> tuple[bool, list[dict[str, str]], dict[str, Any]]:
    """Whether the experiment follows a paper recipe, where it departs from it, and the run's facts
    (architecture, conditioning, space, loss metric, sampler, teacher) that results rows carry (recipes.py)."""
    from benchmark import recipes

    facts = recipes.run_facts(e, ds, shape, n_params) | {"teacher": teacher}
    is_paper, diff = recipes.recipe_diff(e["method"], e.get("recipe"), e, facts)
    return is_paper, diff, facts


def _replace_hash(r: Run, h: str) -> Run:
    from dataclasses import replace

    return replace(r, config_hash=h)


def run_dir(results_root: Path, suite: str, run: Run) -> Path:
    return Path(results_root) / suite / run.dataset / run.name
