"""Evaluate one sample shard: `samples/steps{k}.npz` -> `metrics/steps{k}.json`.

Every row carries its evaluator tuple (DESIGN §11): library, mode, extractor, the sha256 of the
reference it was measured against, number of samples, seed. Image data gets each extractor's
FD from torch-fidelity and from clean-fid (two rows, `library` differs) plus torch-fidelity's
KID and precision/recall; only the standard Inception's numbers are called fid/kid/is/...
Vector (toy) data gets exact metrics against the known distribution.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import InputError

OWN = "fewstep-bench"  # `library` of the numbers computed by benchmark.metrics.exact


PRC_K = 3  # precision/recall neighbourhood (torch-fidelity's default): needs more than k samples
MIN_IMAGE_SAMPLES = PRC_K + 1


def load_samples(samples_npz: str | Path) -> np.ndarray:
    """The `samples` array of a shard, verified against its sha256 sidecar (written by `sample`)."""
    from benchmark.provenance import verify_sidecar

    p = Path(samples_npz)
    if not p.is_file():
        raise InputError(f"sample shard {p} not found", "run the `sample` rule first")
    verify_sidecar(p, "sample")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"sample shard {p} is unreadable ({e.__class__.__name__})",
                         f"delete {p} and re-run the `sample` rule") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # np.save output (.npy) under an .npz name
        raise InputError(f"sample shard {p} is a bare .npy array, not an .npz archive",
                         "save it with np.savez(path, samples=array) or re-run the `sample` rule")
    try:
        with z:
            if "samples" not in z.files:
                raise InputError(f"{p} has no `samples` array (has: {', '.join(z.files)})",
                                 "re-run the `sample` rule")
            return z["samples"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"sample shard {p} is unreadable ({e.__class__.__name__})",
                         f"delete {p} and re-run the `sample` rule") from None


def check_samples(x: np.ndarray, man: dict, source: str | Path) -> None:
    """Fail in one line, before any metric work, on a shard the metrics cannot use: too few samples,
    a shape that does not match the prepared dataset, the wrong dtype (uint8 images, float vectors),
    non-finite values."""
    shape = list(man["shape"])
    want = shape if man["kind"] == "vector" else [shape[1], shape[2], shape[0]]
    least = 2 if man["kind"] == "vector" else MIN_IMAGE_SAMPLES
    if list(x.shape[1:]) != want or len(x) < least:
        raise InputError(f"{source} holds samples of shape {list(x.shape)}, dataset '{man['name']}' needs "
                         f"[N>={least}, {', '.join(map(str, want))}]",
                         "re-sample from a run trained on this dataset (num_samples >= "
                         f"{least}: precision/recall use {PRC_K} neighbours)")
    if man["kind"] == "image" and x.dtype != np.uint8:
        raise InputError(f"image samples must be uint8 NHWC, got {x.dtype} {x.shape}", "re-run the `sample` rule")
    if man["kind"] == "vector" and not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{source}: vector samples must be floating point, got {x.dtype}",
                         "re-run the `sample` rule (it writes float32)")
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        raise InputError(f"{source} contains non-finite values", "the model diverged; retrain and re-sample")


def check_extractor_file(name: str, weights: str | Path | None) -> None:
    """An offline extractor's weights must match the sha256 recorded beside them at training
    (`extractor_<name>.json`, or a `.sha256` sidecar) and be loadable; one line otherwise."""
    import json

    from benchmark.provenance import sha256_file, verify_sidecar

    if weights is None or not Path(weights).is_file():
        return  # load_offline_net reports a missing file with its own message
    p = Path(weights)
    fix = f"delete {p} and re-run (the `train_extractor` rule retrains it)"
    verify_sidecar(p, "train_extractor")
    info = p.with_suffix(".json")
    if info.is_file():
        try:
            want = json.loads(info.read_bytes().decode("utf-8")).get("sha256")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise InputError(f"extractor record {info} is corrupt", f"delete it and {p}, then re-run") from None
        if want and want != sha256_file(p):
            raise InputError(f"extractor weights {p} do not match the sha256 in {info.name}", fix)
    try:
        torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise InputError(f"extractor weights {p} of '{name}' are unreadable ({type(e).__name__})", fix) from None


def _row(metric: str, value: float, extractor: str, library: str, mode: str, ref_sha256: str,
         num_samples: int, seed: int) -> dict:
    return {"metric": metric, "value": float(value), "extractor": extractor, "library": library,
            "mode": mode, "ref_sha256": ref_sha256, "num_samples": int(num_samples), "seed": int(seed)}


def vector_rows(samples: np.ndarray, data_dir: str | Path, man: dict, seed: int) -> list[dict]:
    """Exact metrics of toy samples: FD to the true moments, sliced W2 to the test split, mode
    coverage and good-sample share. (The trained denoiser's error to the exact one is a property of
    the network, not of a sample shard: benchmark/denoiser_eval.py, its own rule.)"""
    from benchmark.data import load_split
    from benchmark.data.gmm import from_params
    from benchmark.metrics import exact
    from benchmark.provenance import sha256_json

    if samples.ndim != 2 or not np.issubdtype(samples.dtype, np.floating):
        raise InputError(f"vector dataset '{man['name']}' needs float [N, D] samples, got {samples.dtype} "
                         f"{samples.shape}", "re-run the `sample` rule")
    gmm = from_params(man["params"])
    n, params_sha = len(samples), sha256_json(man["params"])
    row = lambda metric, v, ref: _row(metric, v, "none", OWN, "exact", ref, n, seed)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    cov = exact.mode_coverage(samples, gmm)
    rows = [row("fd_exact", exact.fd_to_gaussian(samples, gmm.mean(), gmm.cov()), params_sha),
            row("sw2", exact.sliced_wasserstein2(samples, load_split(data_dir, "test"), 256, g),
                man["sha256"]["test"]),
            row("mode_coverage", cov["coverage"], params_sha),
            row("good_fraction", cov["good_fraction"], params_sha)]
    return rows


def metric_name(base: str, extractor: str) -> str:
    """fid/kid/is/precision/recall for the standard Inception only; `<base>_<extractor>`
    otherwise (fd_digitnet, kid_digitnet, ...): never call a number FID unless it is one."""
    from benchmark.metrics.extractors import metric_name as name_for

    return name_for(base, extractor)


def crosschecked(mode: str, index: int) -> bool:
    """Whether clean-fid cross-checks the `index`-th step budget of a run (0 = the first) under the
    suite's `crosscheck` mode: `all`, `first` (the first budget only: clean-fid's file-based path
    costs seconds per shard on CPU suites) or `none`."""
    return mode == "all" or (mode == "first" and index == 0)


def image_rows(samples: np.ndarray, data_dir: str | Path, extractors: list[str],
               refs: Mapping[str, str | Path], seed: int,
               extractor_ckpts: Mapping[str, str | Path], crosscheck: bool = True, dist=None) -> list[dict]:
    """FD/KID/IS/PR rows of image samples; under torchrun (`dist`) every rank extracts features of
    its block of the samples and rank 0 computes the rows (other ranks return [])."""
    from benchmark import distributed as D
    from benchmark.metrics import fid
    from benchmark.metrics.extractors import get_spec
    from benchmark.metrics.refstats import ensure_ref_stats

    # Check every asset before any work: a missing file fails in seconds, not after an hour.
    for name in extractors:
        if get_spec(name).net is not None:  # an offline extractor: its weights match their recorded sha256
            check_extractor_file(name, extractor_ckpts.get(name))
        fid.require_extractor(name, extractor_ckpts.get(name))
        if name not in refs:
            raise InputError(f"no reference statistics given for extractor '{name}'",
                             "pass refs={extractor: path}")
    dist = dist or D.Dist()
    n, rows = len(samples), []
    for name in extractors:
        ckpt = extractor_ckpts.get(name)
        if dist.active:  # under torchrun: computed once if absent (rank 0), then read by every rank
            if dist.is_main:
                ensure_ref_stats(data_dir, name, refs[name], extractor_ckpt=ckpt)
            D.barrier(dist)
        ref = ensure_ref_stats(data_dir, name, refs[name], extractor_ckpt=ckpt)
        sha = ref["sha256"]
        tf = fid.compute_fidelity(samples, ref, name, weights_path=ckpt, seed=seed, prc_k=PRC_K, dist=dist)
        for base in ("fd", "kid", "kid_std", "is", "is_std", "precision", "recall"):
            if base in tf:
                rows.append(_row(metric_name(base, name), tf[base], name, "torch-fidelity", fid.tf_mode(name),
                                 sha, n, seed))
        if crosscheck:
            cf = fid.compute_cleanfid(samples, ref, name, weights_path=ckpt, dist=dist)
            if not dist.is_main:
                continue
            rows.append(_row(metric_name("fd", name), cf["fd"], name, "clean-fid", cf["mode"], sha, n, seed))
    return rows


def evaluate_samples(samples_npz: str | Path, data_dir: str | Path, out_json: str | Path, *,
                     extractors: list[str], refs: Mapping[str, str | Path], seed: int,
                     extractor_ckpts: Mapping[str, str | Path] | None = None,
                     crosscheck: bool = True, dist=None) -> list[dict]:
    """Measure one sample shard and write {"rows": [...], "provenance": {...}} atomically.

    `refs` maps each extractor to its reference-stats npz (computed here once if absent);
    `extractor_ckpts` maps offline extractors to their weights; crosscheck=False skips clean-fid's second FD (a
    suite may cross-check only its first step budget per run: see `crosscheck` in the suite
    schema). Under torchrun (`dist`) the ranks split the feature extraction and rank 0 writes;
    other ranks return []. Returns the rows."""
    from benchmark.data import load_manifest
    from benchmark.provenance import provenance, sha256_file, write_json

    man = load_manifest(data_dir)
    samples = load_samples(samples_npz)
    check_samples(samples, man, samples_npz)
    if man["kind"] == "vector":  # exact metrics of toy data: cheap, rank 0 alone
        rows = vector_rows(samples, data_dir, man, seed) if dist is None or dist.is_main else []
    else:
        rows = image_rows(samples, data_dir, list(extractors), refs, seed, dict(extractor_ckpts or {}),
                          crosscheck=crosscheck, dist=dist)
    if dist is not None and not dist.is_main:
        return []
    write_json(out_json, sidecar=True, obj={"rows": rows, "provenance": provenance(
        samples=str(samples_npz), samples_sha256=sha256_file(samples_npz), dataset=man["name"],
        data_dir=str(data_dir), seed=seed, extractors=list(extractors),
        refs={k: str(v) for k, v in refs.items()})})
    return rows
