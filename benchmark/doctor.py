"""`python -m benchmark doctor`: which assets are present, readable, and which suites can run.

Datasets are checked by the loaders themselves (`check(params)` of cifar10 / imagenet / lsun):
the same layout detection `prepare` uses, then content (non-empty, first and last item readable,
the CIFAR tarball read through, so a truncated archive is caught). Each problem is one line.
Nothing is downloaded; nothing is computed beyond file hashes and those reads.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from benchmark.errors import BenchmarkError


def _suites(root: Path) -> dict[str, dict]:
    """Raw suite YAMLs of `config/suites/` (validation is `validate`'s job, not the doctor's)."""
    from benchmark.yaml_io import read_yaml

    out = {}
    for p in sorted((root / "config" / "suites").glob("*.yaml")):
        try:
            out[p.stem] = read_yaml(p)
        except BenchmarkError:
            continue
    return out


def check_dataset(name: str, spec: dict, data_root: Path) -> tuple[bool, str]:
    """(usable, one line) for one suite dataset, through its loader's own `check`."""
    from benchmark.data import DATASETS
    from benchmark.prepare import dataset_params

    kind = spec.get("kind", name)
    mod = importlib.import_module(DATASETS[kind].split(":")[0]) if kind in DATASETS else None
    if mod is None or not hasattr(mod, "check"):
        return True, "generated (nothing to check)"
    try:
        return True, "ok — " + mod.check(dataset_params(name, spec, data_root))
    except BenchmarkError as e:
        return False, e.one_line()


def doctor(root: str | Path | None = None, data_root: str | Path | None = None) -> str:
    """The report: Inception weights per library, every real dataset a suite names, and per
    suite whether it can run now."""
    from benchmark.metrics.fid import inception_weights_status
    from benchmark.provenance import REPO_ROOT

    root = Path(root) if root is not None else REPO_ROOT
    data_root = Path(data_root) if data_root is not None else root / "data"
    lines = ["assets:"]
    inc = inception_weights_status()
    for lib, s in inc.items():
        state = ("ok" if s["sha256_ok"] else "sha256 MISMATCH (not the standard weights)") if s["present"] \
            else "missing"
        lines.append(f"  inception ({lib}): {state} — {s['path'] or 'put ' + s['file'] + ' in ' + s['dirs'][0]}")
    inception_ok = all(s["present"] and s["sha256_ok"] for s in inc.values())
    seen: dict[str, bool] = {}
    verdicts = []
    for suite, raw in _suites(root).items():
        missing = []
        for name, spec in (raw.get("datasets") or {}).items():
            key = f"{name}: {spec.get('path', '-')}"
            if key not in seen and "path" in spec:
                seen[key], line = check_dataset(name, spec, data_root)
                lines.append(f"  {name} ({spec.get('path')}): {line}")
            if not seen.get(key, True):
                missing.append(name)
            if "inception" in spec.get("extractors", []) and not inception_ok:
                missing.append("inception weights")
        state = "can run" if not missing else f"cannot run (missing {', '.join(dict.fromkeys(missing))})"
        verdicts.append(f"  {suite}: {state}")
    return "\n".join(lines + ["suites:"] + verdicts)
