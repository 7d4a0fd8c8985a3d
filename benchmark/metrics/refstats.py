"""Reference statistics, computed once per (dataset, resolution, extractor, split) and reused by
every evaluation (DESIGN §5; k-diffusion#19).

`ref_{extractor}_{split}.npz` holds, for torch-fidelity, `mu`, `sigma`, `n` and (up to
`keep_features` rows, a seeded subset) `features` for KID and precision/recall; and for
clean-fid `cleanfid_mu`, `cleanfid_sigma` (its own resize path gives different features). The
`.json` beside it is the provenance: sha256 of the data split and manifest, extractor weights,
library versions and modes. Its sha256 is what every metric row cites (`ref_sha256`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from benchmark.errors import DatasetError, InputError

# How many times reference stats were computed in this process, per output path: lets tests
# (and curious users) check that an evaluation reused the cache instead of recomputing.
COMPUTE_COUNT: Counter[str] = Counter()

REQUIRED_KEYS = ("mu", "sigma", "n", "cleanfid_mu", "cleanfid_sigma")


def ref_path(data_dir: str | Path, extractor: str, split: str = "train") -> Path:
    """The canonical location (docs/internals.md)."""
    return Path(data_dir) / f"ref_{extractor}_{split}.npz"


def _identity(data_dir, extractor: str, split: str, extractor_ckpt) -> dict:
    """What the stats depend on; a cached file whose identity differs is stale."""
    from benchmark.data import load_manifest
    from benchmark.metrics.extractors import extractor_sha256
    from benchmark.metrics.fid import inception_weights_status
    from benchmark.provenance import sha256_file

    man = load_manifest(data_dir)
    if man.get("kind") != "image":
        raise DatasetError(f"reference feature stats need an image dataset; '{man.get('name')}' is "
                           f"'{man.get('kind')}'",
                           "use the exact metrics (benchmark.metrics.exact) for vectors")
    if split not in man["sha256"]:
        raise DatasetError(f"dataset '{man['name']}' has no split '{split}'",
                           f"use one of: {', '.join(man['files'])}")
    ident = {"dataset": man["name"], "split": split, "resolution": list(man["shape"]), "extractor": extractor,
             "data_sha256": man["sha256"][split],
             "manifest_sha256": sha256_file(Path(data_dir) / "manifest.json"),
             "extractor_sha256": extractor_sha256(extractor, extractor_ckpt)}
    from benchmark.metrics.extractors import get_spec

    if get_spec(extractor).standard_inception:
        st = inception_weights_status()
        ident["extractor_sha256"] = {lib: s["sha256"] for lib, s in st.items()}
    return ident


def compute_ref_stats(data_dir: str | Path, extractor: str, out_npz: str | Path, split: str = "train",
                      extractor_ckpt: str | Path | None = None, keep_features: int = 10000,
                      seed: int = 0, batch_size: int = 64) -> None:
    """Compute and write reference statistics (npz + json, both atomically) with both libraries."""
    from benchmark.data import load_split
    from benchmark.metrics import fid
    from benchmark.metrics.extractors import get_spec
    from benchmark.provenance import provenance, save_npz, write_json

    spec = get_spec(extractor)
    if spec.standard_inception:
        fid.require_inception()  # before any work
    ident = _identity(data_dir, extractor, split, extractor_ckpt)
    images = load_split(data_dir, split)
    feats = fid.tf_features(images, extractor, extractor_ckpt, batch_size, [spec.layer_fd])[spec.layer_fd]
    st = fid.fd_stats(feats)
    cf = fid.cleanfid_stats(fid.cleanfid_features(images, extractor, extractor_ckpt, batch_size))
    arrays = {"mu": st["mu"], "sigma": st["sigma"], "n": np.int64(len(feats)),
              "cleanfid_mu": cf["mu"], "cleanfid_sigma": cf["sigma"]}
    if keep_features > 0:
        f = feats.numpy()
        if len(f) > keep_features:
            f = f[np.sort(np.random.default_rng(seed).choice(len(f), keep_features, replace=False))]
        arrays["features"] = f
    out_npz = Path(out_npz)
    save_npz(out_npz, **arrays)
    write_json(out_npz.with_suffix(".json"), {
        **ident, "n": len(feats), "n_features": int(len(arrays.get("features", []))), "feature_seed": seed,
        "layer": spec.layer_fd, "modes": {"torch-fidelity": fid.tf_mode(extractor),
                                          "clean-fid": fid.cleanfid_mode(extractor)},
        "provenance": provenance()})
    COMPUTE_COUNT[str(out_npz.resolve())] += 1


def load_ref_stats(path: str | Path) -> dict:
    """Arrays of a reference-stats npz plus `sha256` (of the npz) and `provenance` (its json)."""
    from benchmark.provenance import sha256_file

    p = Path(path)
    if not p.is_file():
        raise InputError(f"reference statistics {p} not found", "run the `ref_stats` rule for this extractor")
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"reference statistics {p} are unreadable ({e.__class__.__name__})",
                         f"delete {p} and re-run the `ref_stats` rule") from e
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if missing:
        raise InputError(f"reference statistics {p} lack {', '.join(missing)}",
                         f"delete {p} and re-run the `ref_stats` rule")
    meta = p.with_suffix(".json")
    out["provenance"] = json.loads(meta.read_text()) if meta.exists() else {}
    out["sha256"] = sha256_file(p)
    return out


def ensure_ref_stats(data_dir: str | Path, extractor: str, out_npz: str | Path | None = None,
                     split: str = "train", extractor_ckpt: str | Path | None = None, **kwargs) -> dict:
    """Load the cached stats if they exist and match the data and extractor they claim;
    compute them once if absent; refuse stale ones (the DAG's `ref_stats` rule owns the file)."""
    out_npz = Path(out_npz) if out_npz is not None else ref_path(data_dir, extractor, split)
    if not out_npz.exists():
        compute_ref_stats(data_dir, extractor, out_npz, split, extractor_ckpt, **kwargs)
    ref = load_ref_stats(out_npz)
    want = _identity(data_dir, extractor, split, extractor_ckpt)
    have = {k: ref["provenance"].get(k) for k in want}
    if have != want:
        diff = ", ".join(k for k in want if have[k] != want[k])
        raise InputError(f"reference statistics {out_npz} are stale (differ in: {diff})",
                         f"delete {out_npz} and {out_npz.with_suffix('.json')}, "
                         "then re-run the `ref_stats` rule")
    return ref
