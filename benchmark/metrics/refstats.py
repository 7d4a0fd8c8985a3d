"""Reference statistics, computed once per (dataset, resolution, extractor, split) and reused by
every evaluation (DESIGN §5; k-diffusion#19).

`ref_{extractor}_{split}.npz` holds, for torch-fidelity, `mu`, `sigma`, `n` and (up to
`keep_features` rows, a seeded subset) `features` for KID and precision/recall; and for
clean-fid `cleanfid_mu`, `cleanfid_sigma` (its own extraction path: the same TF1 protocol for the
Inception, so they agree with torch-fidelity's to float rounding; kept apart so each library's FD is
computed against its own statistics). Published statistics serve both. The
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
    from benchmark.data import load_manifest, split_sha256
    from benchmark.metrics import fid
    from benchmark.metrics.extractors import extractor_sha256
    from benchmark.metrics.fid import inception_weights_status
    from benchmark.provenance import sha256_file

    man = load_manifest(data_dir)
    if man.get("kind") != "image":
        raise DatasetError(f"reference feature stats need an image dataset; '{man.get('name')}' is "
                           f"'{man.get('kind')}'",
                           "use the exact metrics (benchmark.metrics.exact) for vectors")
    ident = {"dataset": man["name"], "split": split, "resolution": list(man["shape"]), "extractor": extractor,
             "data_sha256": split_sha256(man, split),
             "manifest_sha256": sha256_file(Path(data_dir) / "manifest.json"),
             "extractor_sha256": extractor_sha256(extractor, extractor_ckpt),
             "modes": {"torch-fidelity": fid.tf_mode(extractor), "clean-fid": fid.cleanfid_mode(extractor)}}
    from benchmark.metrics.extractors import get_spec

    if get_spec(extractor).inception_arch:
        st = inception_weights_status()
        ident["extractor_sha256"] = {lib: s["sha256"] for lib, s in st.items()}
    return ident


class _Moments:
    """Running mean and covariance in float64 over feature chunks: the reference statistics of a
    split too large to hold its features (ImageNet: 1.28 M x 2048 floats = 10 GB)."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def add(self, f: np.ndarray) -> None:
        f = np.asarray(f, dtype=np.float64)
        if self.s is None:
            self.s, self.ss = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += len(f)
        self.s += f.sum(0)
        self.ss += f.T @ f

    def stats(self) -> dict[str, np.ndarray]:
        mu = self.s / self.n
        return {"mu": mu, "sigma": (self.ss - self.n * np.outer(mu, mu)) / (self.n - 1)}


def _features_and_stats(images, extractor: str, extractor_ckpt, batch_size: int, keep: np.ndarray,
                        chunk: int) -> tuple[dict, dict, np.ndarray]:
    """(torch-fidelity stats, clean-fid stats, kept torch-fidelity features) of `images`.

    A split of at most `chunk` images goes through each library's own statistics function; a
    larger one is streamed chunk by chunk into float64 running moments (same numbers up to
    rounding), so memory stays one chunk of images and features."""
    from benchmark.metrics import fid
    from benchmark.metrics.extractors import get_spec

    layer = get_spec(extractor).layer_fd
    if len(images) <= chunk:
        x = np.asarray(images)
        feats = fid.tf_features(x, extractor, extractor_ckpt, batch_size, [layer])[layer]
        cf = fid.cleanfid_stats(fid.cleanfid_features(x, extractor, extractor_ckpt, batch_size))
        return fid.fd_stats(feats), cf, feats.numpy()[keep]
    tf_m, cf_m, kept = _Moments(), _Moments(), []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk]
        f = fid.tf_features(x, extractor, extractor_ckpt, batch_size, [layer])[layer].numpy()
        tf_m.add(f)
        cf_m.add(fid.cleanfid_features(x, extractor, extractor_ckpt, batch_size))
        sel = keep[(keep >= start) & (keep < start + len(x))]
        kept.append(f[sel - start])
    tf, cf = tf_m.stats(), cf_m.stats()
    return ({"mu": tf["mu"].astype(np.float32), "sigma": tf["sigma"]}, cf,
            np.concatenate(kept) if kept else np.empty((0, len(tf["mu"])), np.float32))


def compute_ref_stats(data_dir: str | Path, extractor: str, out_npz: str | Path, split: str = "train",
                      extractor_ckpt: str | Path | None = None, keep_features: int = 10000,
                      seed: int = 0, batch_size: int = 64, chunk: int = 20000) -> None:
    """Compute and write reference statistics (npz + json, both atomically) with both libraries,
    streaming the split in chunks of `chunk` images."""
    from benchmark.data import load_split
    from benchmark.metrics import fid
    from benchmark.metrics.extractors import get_spec
    from benchmark.provenance import provenance, save_npz, write_json

    spec = get_spec(extractor)
    fid.require_extractor(extractor, extractor_ckpt)  # before any work
    ident = _identity(data_dir, extractor, split, extractor_ckpt)
    images = load_split(data_dir, split)
    n = len(images)
    keep = np.arange(n) if n <= keep_features else np.sort(
        np.random.default_rng(seed).choice(n, keep_features, replace=False))
    st, cf, kept = _features_and_stats(images, extractor, extractor_ckpt, batch_size,
                                       keep if keep_features > 0 else keep[:0], chunk)
    arrays = {"mu": st["mu"], "sigma": st["sigma"], "n": np.int64(n),
              "cleanfid_mu": cf["mu"], "cleanfid_sigma": cf["sigma"]}
    if keep_features > 0:
        arrays["features"] = kept
    out_npz = Path(out_npz)
    save_npz(out_npz, **arrays)
    write_json(out_npz.with_suffix(".json"), {
        **ident, "n": n, "n_features": int(len(arrays.get("features", []))), "feature_seed": seed,
        "layer": spec.layer_fd, "provenance": provenance()})
    COMPUTE_COUNT[str(out_npz.resolve())] += 1


def _read_published(src: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(format, {mu, sigma}) of a published reference file: an `.npz` with `mu`/`sigma` (EDM's
    `cifar10-32x32.npz`; openai's ImageNet reference batches, whose `arr_0` images and spatial
    `mu_s`/`sigma_s` are ignored) or torch-fidelity's cached `...-stat-fid-2048.pt` (a dict of
    numpy arrays, read with `weights_only=True` and numpy's array globals allowed, no code run)."""
    fix = "pass an .npz with mu and sigma (EDM / openai reference) or torch-fidelity's *-stat-fid-*.pt"
    try:
        if src.suffix == ".npz":
            with np.load(src, allow_pickle=False) as z:
                fmt = "openai-reference-batch" if "arr_0" in z.files else "npz-mu-sigma"
                return fmt, {k: np.asarray(z[k]) for k in ("mu", "sigma")}
        import torch
        from numpy._core.multiarray import _reconstruct

        # numpy's array-rebuilding globals, under the numpy >= 2 and the numpy 1.x module name
        allowed = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                   type(np.dtype(np.float64)), type(np.dtype(np.float32))]
        with torch.serialization.safe_globals(allowed):
            d = torch.load(src, map_location="cpu", weights_only=True)
        return "torch-fidelity-cache", {k: np.asarray(d[k]) for k in ("mu", "sigma")}
    except (KeyError, TypeError, IndexError) as e:
        raise InputError(f"{src} has no mu/sigma arrays ({e.__class__.__name__}: {e})", fix) from None
    except Exception as e:  # unreadable zip/pickle: numpy and torch raise many types
        raise InputError(f"{src} is not a readable reference-statistics file ({e.__class__.__name__})", fix) from None


def import_ref_stats(data_dir: str | Path, extractor: str, src: str | Path, out_npz: str | Path,
                     split: str = "train") -> dict:
    """Write `out_npz` (+ json) from a published reference file instead of computing it, so a
    FID is measured against exactly the statistics a paper used. The json records the source
    file, its format and sha256; `load_ref_stats` then names that sha256 as the reference."""
    from benchmark.data import load_manifest
    from benchmark.metrics.extractors import get_spec
    from benchmark.provenance import provenance, save_npz, sha256_file, write_json

    src = Path(src)
    if not src.is_file():
        raise InputError(f"reference file {src} not found", "put the published .npz/.pt there or fix the path")
    fmt, st = _read_published(src)
    mu, sigma = st["mu"].astype(np.float64).reshape(-1), st["sigma"].astype(np.float64)
    dim = 2048 if get_spec(extractor).inception_arch else None
    if sigma.shape != (len(mu), len(mu)) or (dim and len(mu) != dim) or not np.isfinite(sigma).all():
        raise InputError(f"{src} holds mu {st['mu'].shape} and sigma {st['sigma'].shape}, expected finite "
                         f"[{dim or 'D'}] and [{dim or 'D'}, {dim or 'D'}]", f"use the {extractor} statistics file")
    man = load_manifest(data_dir)
    out_npz = Path(out_npz)
    save_npz(out_npz, mu=mu, sigma=sigma, n=np.int64(0), cleanfid_mu=mu, cleanfid_sigma=sigma)
    meta = {"dataset": man["name"], "split": split, "resolution": list(man["shape"]), "extractor": extractor,
            "imported": {"file": str(src.resolve()), "format": fmt, "sha256": sha256_file(src)},
            "n": 0, "n_features": 0, "modes": {"torch-fidelity": "as published", "clean-fid": "as published"},
            "provenance": provenance()}
    write_json(out_npz.with_suffix(".json"), meta)
    return meta


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
    # an imported reference is named by the published file's own sha256 (the evaluator tuple)
    out["sha256"] = out["provenance"].get("imported", {}).get("sha256") or sha256_file(p)
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
    if "imported" in ref["provenance"]:  # published statistics: not derived from our data or weights
        want = {k: want[k] for k in ("dataset", "split", "resolution", "extractor")}
    have = {k: ref["provenance"].get(k) for k in want}
    if have != want:
        diff = ", ".join(k for k in want if have[k] != want[k])
        raise InputError(f"reference statistics {out_npz} are stale (differ in: {diff})",
                         f"delete {out_npz} and {out_npz.with_suffix('.json')}, "
                         "then re-run the `ref_stats` rule")
    return ref
