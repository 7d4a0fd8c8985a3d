"""Sample-quality metrics (DESIGN §5): library FID/KID/IS/PR (`fid`), offline extractors
(`extractors`), exact toy metrics (`exact`), cached reference statistics (`refstats`) and the
shard evaluator (`evaluate`). `doctor()` says which assets are present and what can run."""

from __future__ import annotations

from pathlib import Path

from benchmark.metrics.evaluate import evaluate_samples
from benchmark.metrics.exact import (
    denoiser_mse,
    fd_to_gaussian,
    frechet_distance,
    mode_coverage,
    sliced_wasserstein2,
)
from benchmark.metrics.extractors import EXTRACTORS, DigitNet, register_with_torch_fidelity, train_digitnet
from benchmark.metrics.fid import (
    compute_cleanfid,
    compute_fidelity,
    inception_weights_status,
    precision_recall,
    require_inception,
)
from benchmark.metrics.refstats import compute_ref_stats, ensure_ref_stats, load_ref_stats

__all__ = [
    "EXTRACTORS", "DigitNet", "compute_cleanfid", "compute_fidelity", "compute_ref_stats", "denoiser_mse",
    "doctor", "ensure_ref_stats", "evaluate_samples", "fd_to_gaussian", "frechet_distance",
    "inception_weights_status", "load_ref_stats", "mode_coverage", "precision_recall",
    "register_with_torch_fidelity", "require_inception", "sliced_wasserstein2", "train_digitnet",
]

# Raw datasets the suites need, relative to the repository root (DESIGN §4); any one path per
# entry suffices. The lead aligns these with config/suites/*.yaml.
RAW_DATA: dict[str, list[str]] = {
    "cifar10": ["data/cifar10/cifar-10-python.tar.gz", "data/cifar10/cifar-10-batches-py"],
    "imagenet": ["data/imagenet/train", "data/imagenet64"],
    "lsun256": ["data/lsun"],
}
# suite -> (raw datasets, needs Inception weights)
SUITES: dict[str, tuple[list[str], bool]] = {
    "smoke": ([], False), "quick": ([], False), "cifar10": (["cifar10"], True),
    "imagenet64": (["imagenet"], True), "imagenet128": (["imagenet"], True),
    "imagenet256": (["imagenet"], True), "lsun256": (["lsun256"], True),
}


def doctor(root: str | Path | None = None) -> str:
    """A human-readable list of assets (Inception weights per library, raw datasets) and of the
    suites that could run now; nothing is downloaded or computed beyond file hashes."""
    from benchmark.provenance import REPO_ROOT

    root = Path(root) if root is not None else REPO_ROOT
    lines = ["assets:"]
    inc = inception_weights_status()
    for lib, s in inc.items():
        state = ("ok" if s["sha256_ok"] else "sha256 MISMATCH") if s["present"] else "missing"
        where = s["path"] or f"put {s['file']} in {s['dirs'][0]}"
        lines.append(f"  inception ({lib}): {state} — {where}")
    raw_ok = {}
    for name, paths in RAW_DATA.items():
        found = next((p for p in paths if (root / p).exists()), None)
        raw_ok[name] = found is not None
        lines.append(f"  {name}: {'ok — ' + str(root / found) if found else 'missing — expected one of '}"
                     f"{'' if found else ', '.join(str(root / p) for p in paths)}")
    inception_ok = all(s["present"] and s["sha256_ok"] for s in inc.values())
    lines.append("suites:")
    for suite, (needs, needs_inc) in SUITES.items():
        missing = [n for n in needs if not raw_ok[n]]
        missing += ["inception weights"] if needs_inc and not inception_ok else []
        state = "can run" if not missing else f"cannot run (missing {', '.join(missing)})"
        lines.append(f"  {suite}: {state}")
    return "\n".join(lines)
