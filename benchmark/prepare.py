"""The `prepare` step: materialise a dataset into `results/data/{name}/` (arrays + manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data import prepare_fn
from benchmark.errors import DatasetError
from benchmark.provenance import atomic_path, clean_temp, provenance, sha256_file, sha256_json, write_json


def prepare_dataset(name: str, spec: dict[str, Any], out_manifest: Path, data_root: Path | None = None) -> dict:
    out_manifest = Path(out_manifest)
    d = out_manifest.parent
    d.mkdir(parents=True, exist_ok=True)
    clean_temp(d)
    params = {k: v for k, v in spec.items() if k != "kind"} | {"name": name, "dataset_kind": spec["kind"]}
    if "path" in params and data_root is not None and not Path(params["path"]).is_absolute():
        params["path"] = str(Path(data_root) / params["path"])
    res = prepare_fn(spec["kind"])(params)
    files, sha = {}, {}
    for split in ("train", "test", "train_labels", "test_labels"):
        if split not in res:
            continue
        arr = np.ascontiguousarray(res[split])
        if split in ("train", "test") and len(arr) < 2:
            raise DatasetError(f"dataset '{name}' split '{split}' has {len(arr)} items",
                               "point `path` at the full dataset")
        fname = f"{split}.npy"
        with atomic_path(d / fname) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        files[split], sha[split] = fname, sha256_file(d / fname)
    manifest = {"name": name, "kind": res["kind"], "dataset_kind": spec["kind"], "shape": list(res["shape"]),
                "n_train": int(len(res["train"])), "n_test": int(len(res["test"])),
                "params": params, "files": files, "sha256": sha,
                "spec_hash": sha256_json(spec), "provenance": provenance()}
    write_json(out_manifest, manifest)
    return manifest
