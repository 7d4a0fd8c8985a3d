"""The `prepare` step: stream a dataset into `results/data/{id}/` (shards + labels + manifest).

The source is read chunk by chunk (`benchmark.data.source`) into `ShardWriter`s, so memory stays
at one shard buffer plus one decode chunk whatever the dataset size. The manifest lists every
shard with its sha256, the layout detected and the raw input's fingerprint (`raw_fingerprint`),
which the Snakemake rule also passes as a parameter: changed raw files or `data_root` re-run it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data import source_fn
from benchmark.data.shards import ShardWriter
from benchmark.errors import DatasetError
from benchmark.provenance import atomic_path, clean_temp, provenance, sha256_file, sha256_json, write_json

log = logging.getLogger("fewstep")


def dataset_params(name: str, spec: dict[str, Any], data_root: str | Path | None) -> dict[str, Any]:
    """The loader's params: the suite entry, its name and kind, `path` resolved against `data_root`."""
    params = {k: v for k, v in spec.items() if k != "kind"} | {"name": name, "dataset_kind": spec["kind"]}
    if "path" in params and data_root is not None and not Path(params["path"]).is_absolute():
        params["path"] = str(Path(data_root) / params["path"])
    return params


def raw_fingerprint(path: str | Path | None) -> str:
    """A cheap content fingerprint of raw data: sha256 of the sorted (relative path, size, mtime)
    listing of every file under `path` (symlinks followed). Changes whenever a raw file is added,
    removed, replaced or rewritten; costs one stat per file (ImageNet: 1.28 M stats, seconds)."""
    if path is None:
        return "generated"
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_file():
        st = p.stat()
        return sha256_json([[p.name, st.st_size, st.st_mtime_ns]])
    rows = []
    for root, dirs, files in os.walk(p, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            rows.append([os.path.relpath(os.path.join(root, f), p), st.st_size, st.st_mtime_ns])
    return sha256_json(rows)


def _write_shards(src, d: Path, shard_items: int | None, progress: bool,
                  log_every: float = 60.0) -> tuple[dict, dict, int]:
    """Stream `src` into shard writers; returns (shard entries, labels per split, items written).
    Progress: a tqdm bar with images/s on a terminal, and a log line every `log_every` seconds
    (what a Snakemake log or a cluster job shows)."""
    from tqdm import tqdm

    writers: dict[str, ShardWriter] = {}
    labels: dict[str, list[np.ndarray]] = {}
    n, t0 = 0, time.perf_counter()
    last = t0
    with tqdm(total=src.total, unit="img", desc=f"prepare ({src.layout})", disable=None if progress else True,
              mininterval=2.0, smoothing=0.1) as bar:
        for split, items, labs in src.chunks():
            if split not in writers:
                # vectors (generated toy data, small) keep the single-file layout `{split}.npy`
                one = len(items) if src.kind == "vector" else shard_items
                writers[split] = ShardWriter(d, split, items.shape[1:], items.dtype, shard_items=one,
                                             single=src.kind == "vector")
            writers[split].add(items)
            if labs is not None:
                labels.setdefault(split, []).append(np.asarray(labs, dtype=np.int64))
            n += len(items)
            bar.update(len(items))
            if progress and time.perf_counter() - last > log_every:
                last = time.perf_counter()
                log.info("prepare: %d/%s images, %.0f images/s", n, src.total or "?", n / (last - t0))
    return {s: w.close() for s, w in writers.items()}, labels, n


def _remove_old(d: Path) -> None:
    """Shards and arrays of an earlier preparation in `d` (the manifest goes first)."""
    for p in [d / "manifest.json", *d.glob("*.npy")]:
        p.unlink(missing_ok=True)


def prepare_dataset(name: str, spec: dict[str, Any], out_manifest: Path, data_root: Path | None = None,
                    progress: bool = True) -> dict:
    """Prepare one suite dataset into `out_manifest`'s directory; returns the manifest."""
    out_manifest = Path(out_manifest)
    d = out_manifest.parent
    d.mkdir(parents=True, exist_ok=True)
    clean_temp(d)
    params = dataset_params(name, spec, data_root)
    src = source_fn(spec["kind"])(params)
    log.info("dataset %s: detected layout '%s' at %s", name, src.layout, src.where)
    _remove_old(d)
    t0 = time.perf_counter()
    shards, labels, n = _write_shards(src, d, params.get("shard_items"), progress)
    seconds = time.perf_counter() - t0
    for split in ("train", "test"):
        have = sum(e["n"] for e in shards.get(split, []))
        if have < 2:
            raise DatasetError(f"dataset '{name}' split '{split}' has {have} items", "point `path` at the full dataset")
    files, sha = {}, {}
    for split, parts in labels.items():
        fname = f"{split}_labels.npy"
        with atomic_path(d / fname) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(parts), allow_pickle=False)
        files[f"{split}_labels"], sha[f"{split}_labels"] = fname, sha256_file(d / fname)
    for split, entries in shards.items():
        sha[split] = sha256_json([e["sha256"] for e in entries])
    fingerprint = "generated" if src.layout == "generated" else raw_fingerprint(src.where)
    manifest = {"name": name, "kind": src.kind, "dataset_kind": spec["kind"], "shape": list(src.shape),
                "n_train": sum(e["n"] for e in shards["train"]), "n_test": sum(e["n"] for e in shards["test"]),
                "layout": src.layout, "source": src.where, "raw_fingerprint": fingerprint,
                "params": params, "shards": shards, "files": files, "sha256": sha,
                "images_per_second": n / max(seconds, 1e-9), "seconds": seconds,
                "spec_hash": sha256_json(spec), "provenance": provenance()}
    write_json(out_manifest, manifest)
    log.info("dataset %s: %d items in %.1f s (%.0f items/s), %d shards", name, n, seconds, n / max(seconds, 1e-9),
             sum(len(v) for v in shards.values()))
    return manifest


def raw_input(name: str, spec: dict[str, Any], data_root: str | Path | None) -> dict[str, Any]:
    """What the `prepare` rule depends on, computed when Snakemake builds the DAG: the raw file or
    folder the loader would read (`path`, None for generated data) and its `raw_fingerprint`.
    Missing raw data is not an error here: the rule runs and `prepare` says what is missing."""
    from benchmark.errors import BenchmarkError

    params = dataset_params(name, spec, data_root)
    if "path" not in params and spec["kind"] in ("gmm", "digits"):
        return {"path": None, "layout": "generated", "fingerprint": "generated"}
    try:
        src = source_fn(spec["kind"])(params)
    except BenchmarkError as e:
        return {"path": None, "layout": "missing", "fingerprint": "missing: " + e.what}
    if src.layout == "generated":
        return {"path": None, "layout": "generated", "fingerprint": "generated"}
    return {"path": src.where, "layout": src.layout, "fingerprint": raw_fingerprint(src.where)}
