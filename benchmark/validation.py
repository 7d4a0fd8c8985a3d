"""Validation: every check of a suite that can fail before any work, each a one-line ConfigError.

The schemas (`schemas/suite.schema.yaml`, and the Snakemake config against
`schemas/config.schema.yaml`), finite and non-negative numbers, names and paths that reach shells,
dataset kinds and sample counts, each experiment's method (parameters, step budgets, group size),
network (built on the meta device), conditioning and feature extractors. benchmark/config.py calls
them while it expands a suite, so a bad config fails in seconds with one line instead of after an
hour of training (issue: reliability).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import ConfigError
from benchmark.provenance import REPO_ROOT

SCHEMA_PATH = REPO_ROOT / "schemas" / "suite.schema.yaml"

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


def check_datasets(raw: dict[str, Any]) -> None:
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


def build_checked_method(key: str, e: dict, ds: dict[str, Any]) -> tuple[Any, tuple[int, ...]]:
    """(method, data shape) of the experiment: the method is built once so that its parameters,
    step budgets and batch/group size are validated before any work."""
    from benchmark.train_config import TrainConfig
    from methods.base import build_method

    tcfg = TrainConfig(**{k: v for k, v in e["train"].items()})
    shape = dataset_shape(ds)
    m = build_method(e["method"], e.get("params"), total_steps=tcfg.total_steps, data_shape=shape)
    steps = e["steps"]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"{key}: duplicate step budgets {steps}", "list each step budget once")
    for k in steps:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"{key}: step budget {k!r} is invalid", "step budgets are integers >= 1")
        m.check_steps(k)
    from methods.base import batch_group

    gs = batch_group(m)
    if gs > 1:
        if tcfg.batch % gs:
            raise ConfigError(f"{key}: batch {tcfg.batch} is not divisible by the group size {gs}",
                              "choose a batch that is a multiple of the group size")
    return m, shape


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


def conditioning(key: str, e: dict, ds: dict[str, Any]) -> tuple[dict[str, Any], int]:
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


def check_extractors(suite: Any, raw: dict[str, Any]) -> None:
    """An extractor that cannot read a dataset's (decoded) images fails now, not at evaluation
    (`suite`: the expanded benchmark.config.Suite, whose `extractors(dataset)` lists them)."""
    from benchmark.metrics.extractors import check_fits

    for ds, spec in raw["datasets"].items():
        for ext in suite.extractors(ds):
            image_spec = {k: v for k, v in spec.items() if k != "vae"}  # extractors see decoded images
            check_fits(ext, dataset_shape(image_spec), f"dataset '{ds}'")


def dataset_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    """Model-space shape known from the config alone (validation before any data is read):
    the latent shape for a dataset with `vae:`."""
    if spec.get("vae"):
        from benchmark.latent import latent_shape, vae_spec

        if spec["kind"] == "gmm":
            raise ConfigError("a gmm dataset cannot have `vae:` (a VAE encodes images)", "remove `vae:`")
        return latent_shape(dataset_shape({k: v for k, v in spec.items() if k != "vae"}), vae_spec(spec["vae"]))
    kind = spec["kind"]
    if kind == "gmm":
        return (int(spec.get("dim", 2)),)
    if kind == "digits":
        return (1, 8, 8)
    res = {"cifar10": 32, "imagenet64": 64, "imagenet128": 128, "imagenet256": 256, "lsun256": 256}[kind]
    return (3, res, res)
