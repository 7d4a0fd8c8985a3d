"""Datasets. Each is prepared once into `results/data/{name}/` (arrays + manifest.json) and
then read from there by every rule: files are the interface (DESIGN §3, §4).

Storage convention: vector data as float32 [N, D]; images as uint8 NHWC (the format sample
shards use too), converted to float [-1, 1] NCHW by `to_model_space`.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.errors import ConfigError

# name -> "module:function"; each function takes the dataset's params and returns a Prepared
DATASETS: dict[str, str] = {
    "gmm": "benchmark.data.gmm:prepare",
    "digits": "benchmark.data.digits:prepare",
    "cifar10": "benchmark.data.cifar10:prepare",
    "imagenet64": "benchmark.data.imagenet:prepare",
    "imagenet128": "benchmark.data.imagenet:prepare",
    "imagenet256": "benchmark.data.imagenet:prepare",
    "lsun256": "benchmark.data.lsun:prepare",
}


def dataset_kind(name: str) -> str:
    """The registry key for a suite dataset entry: its `kind` field or its own name."""
    return name


def to_model_space(arr) -> torch.Tensor:
    """Stored items -> float32 tensor in model space: vectors as is, uint8 NHWC -> [-1,1] NCHW.
    Takes a numpy array, a `ShardedArray` batch or a tensor (an already converted float tensor
    passes through), so the training loop can convert per batch whatever `data[idx]` returns."""
    if isinstance(arr, torch.Tensor):
        if arr.dtype == torch.uint8:
            return arr.permute(0, 3, 1, 2).float() / 127.5 - 1
        return arr
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def to_storage(x: torch.Tensor, image: bool) -> np.ndarray:
    """Model-space tensor -> stored array: images clamp to [-1,1] and quantise to uint8 NHWC."""
    if image:
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return u8.permute(0, 2, 3, 1).cpu().numpy()
    return x.detach().cpu().numpy().astype(np.float32)


def prepare_fn(kind: str):
    """The loader's `prepare(params) -> dict of arrays` (small sets, tests)."""
    import importlib

    if kind not in DATASETS:
        raise ConfigError(f"unknown dataset kind '{kind}'", f"use one of: {', '.join(sorted(DATASETS))}")
    module, fn = DATASETS[kind].split(":")
    return getattr(importlib.import_module(module), fn)


def source_fn(kind: str):
    """The loader's streaming `source(params) -> Source`; small sets wrap their arrays."""
    import importlib

    from benchmark.data.source import from_arrays

    prepare_fn(kind)  # unknown kind -> ConfigError
    mod = importlib.import_module(DATASETS[kind].split(":")[0])
    if hasattr(mod, "source"):
        return mod.source
    return lambda params: from_arrays(mod.prepare(params))


def load_manifest(data_dir) -> dict:
    """Read `manifest.json` of a prepared dataset; a clear one-line error if it is missing or unreadable."""
    import json
    from pathlib import Path

    from benchmark.errors import DatasetError

    p = Path(data_dir) / "manifest.json"
    fix = "run `python -m benchmark prepare` (or the Snakemake rule `prepare`) first"
    if not p.exists():
        raise DatasetError(f"dataset not prepared: {p} is missing", fix)
    try:
        man = json.loads(p.read_text())
        if not isinstance(man, dict) or "name" not in man or ("files" not in man and "shards" not in man):
            raise ValueError("not a manifest")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{p} is unreadable ({e.__class__.__name__})",
                           f"delete {p.parent} and re-run the prepare rule") from None
    return man


def split_entries(man: dict, split: str) -> list[dict]:
    """[{file, n, sha256}] of a split: its shards, or its one file (single-file manifests)."""
    from benchmark.errors import DatasetError

    if split in man.get("shards", {}):
        return man["shards"][split]
    if split in man.get("files", {}):
        return [{"file": man["files"][split], "n": None, "sha256": man["sha256"][split]}]
    have = list(man.get("shards", {})) + list(man.get("files", {}))
    raise DatasetError(f"dataset '{man['name']}' has no split '{split}'", f"use one of: {', '.join(have)}")


def load_split(data_dir, split: str = "train", verify: bool | None = None):
    """One split (`train`, `test`) as a `ShardedArray` over its memory-mapped `.npy` shards:
    `len()`, `.shape`, indexing by an index tensor returns a numpy batch; `np.asarray` gives it
    all (small sets only). Label splits (`train_labels`) come back as numpy arrays.

    Shards are checked against the manifest: every shard's item count always; its sha256 when
    the split is small (<= `shards.VERIFY_BYTES`) or `verify=True` (`doctor --verify`), so a corrupt or
    swapped file is never used silently, without re-hashing 250 GB at every start."""
    from pathlib import Path

    from benchmark.data.shards import VERIFY_BYTES, ShardedArray, split_nbytes, verify_shards

    d = Path(data_dir)
    man = load_manifest(d)
    entries = split_entries(man, split)
    if verify is None:
        verify = split_nbytes(d, entries) <= VERIFY_BYTES
    verify_shards(d, [e for e in entries if e["n"] is not None or verify], full=verify)
    if split.endswith("_labels"):
        return np.load(d / entries[0]["file"], allow_pickle=False)
    maps = [np.load(d / e["file"], mmap_mode="r", allow_pickle=False) for e in entries]
    arr = ShardedArray([d / e["file"] for e in entries], [len(m) for m in maps], maps[0].shape[1:], maps[0].dtype)
    del maps
    return arr


def load_labels(data_dir, split: str = "train") -> np.ndarray | None:
    """int64 class labels of a split, aligned with `load_split`; None for unlabelled data (LSUN, gmm)."""
    man = load_manifest(data_dir)
    key = f"{split}_labels"
    if key not in man.get("files", {}):
        return None
    return np.asarray(load_split(data_dir, key), dtype=np.int64)


def split_sha256(man: dict, split: str) -> str:
    """One sha256 naming a split's content: the file's, or the digest of its shards' hashes."""
    from benchmark.provenance import sha256_json

    entries = split_entries(man, split)
    if split in man.get("files", {}):
        return entries[0]["sha256"]
    return sha256_json([e["sha256"] for e in entries])
