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


def to_model_space(arr: np.ndarray) -> torch.Tensor:
    """Stored array -> float32 tensor in model space: vectors as is, uint8 NHWC -> [-1,1] NCHW."""
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
    import importlib

    if kind not in DATASETS:
        raise ConfigError(f"unknown dataset kind '{kind}'", f"use one of: {', '.join(sorted(DATASETS))}")
    module, fn = DATASETS[kind].split(":")
    return getattr(importlib.import_module(module), fn)


def load_manifest(data_dir) -> dict:
    """Read `manifest.json` of a prepared dataset; a clear error if it is not there."""
    import json
    from pathlib import Path

    from benchmark.errors import DatasetError

    p = Path(data_dir) / "manifest.json"
    if not p.exists():
        raise DatasetError(f"dataset not prepared: {p} is missing",
                           "run `python -m benchmark prepare` (or the Snakemake rule `prepare`) first")
    return json.loads(p.read_text())


def load_split(data_dir, split: str = "train") -> np.ndarray:
    """The stored array of one split (`train`, `test`, `train_labels`, ...), checked against
    the manifest's sha256 so a corrupt or swapped file is never used silently."""
    from pathlib import Path

    from benchmark.errors import DatasetError
    from benchmark.provenance import sha256_file

    man = load_manifest(data_dir)
    if split not in man["files"]:
        raise DatasetError(f"dataset '{man['name']}' has no split '{split}'",
                           f"use one of: {', '.join(man['files'])}")
    p = Path(data_dir) / man["files"][split]
    if not p.exists() or sha256_file(p) != man["sha256"][split]:
        raise DatasetError(f"{p} is missing or does not match its manifest sha256",
                           f"delete {Path(data_dir)} and re-run the prepare rule")
    return np.load(p, allow_pickle=False)
