"""LSUN at 256x256 (`lsun256`) from the official `{category}_train_lmdb/` databases
(https://github.com/fyu/lsun): keys -> encoded WebP/JPEG/PNG bytes, decoded with PIL and sent
through the ADM center crop + resize (`transforms.center_crop_resize`) used by the published
LSUN few-step models.

`params['path']` is the lmdb directory itself or a folder holding `{category}_train_lmdb/`
(`category`, default `bedroom`; if not given and exactly one `*_train_lmdb/` is there, that one).
`max_images` takes the first N entries in key order (the keys are content hashes, so that is an
arbitrary, fixed subset); without it the whole set is decoded into memory (bedroom: ~590 GB).
LSUN has no labels; a small seeded test split is held out. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmark.data.transforms import decode_crop, holdout, max_images, resolution
from benchmark.errors import DatasetError


def _fix(category: str) -> str:
    return (f"put the LSUN {category}_train_lmdb/ directory (data.mdb, from https://github.com/fyu/lsun) "
            "there; nothing is downloaded")


def _fix_broken(db: Path, category: str) -> str:
    return (f"replace {db} with an intact copy of the LSUN {category}_train_lmdb/ "
            "(from https://github.com/fyu/lsun)")


def _locate(path: Path, params: dict) -> tuple[Path, str]:
    category = params.get("category")
    if not path.is_dir():
        cat = category or "bedroom"
        raise DatasetError(f"LSUN not found: {path} is not a directory", _fix(cat))
    if (path / "data.mdb").is_file():
        return path, category or path.name.removesuffix("_train_lmdb")
    if category is None:
        found = sorted(path.glob("*_train_lmdb"))
        if len(found) == 1:
            return found[0], found[0].name.removesuffix("_train_lmdb")
        category = "bedroom"
    sub = path / f"{category}_train_lmdb"
    if not (sub / "data.mdb").is_file():
        raise DatasetError(f"LSUN {category} not found: no {sub.name}/data.mdb in {path}", _fix(category))
    return sub, category


def _read_entries(db: Path, cap: int | None, category: str) -> list[tuple[bytes, bytes]]:
    import lmdb

    try:
        env = lmdb.open(str(db), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    except lmdb.Error as e:
        raise DatasetError(f"cannot open the LSUN lmdb {db} ({e})", _fix_broken(db, category)) from e
    try:
        out: list[tuple[bytes, bytes]] = []
        with env.begin(write=False) as txn:
            for key, val in txn.cursor():
                out.append((bytes(key), bytes(val)))
                if cap is not None and len(out) >= cap:
                    break
    except lmdb.Error as e:
        raise DatasetError(f"the LSUN lmdb {db} is corrupt ({e})", _fix_broken(db, category)) from e
    finally:
        env.close()
    if not out:
        raise DatasetError(f"the LSUN lmdb {db} has no entries", _fix_broken(db, category))
    return out


def prepare(params: dict) -> dict:
    res = resolution(params, 256)
    db, category = _locate(Path(params.get("path", "data/lsun256")), params)
    entries = _read_entries(db, max_images(params), category)

    def load(entry: tuple[bytes, bytes]) -> np.ndarray:
        try:
            return decode_crop(entry[1], res)
        except (OSError, ValueError) as e:
            raise DatasetError(f"LSUN entry {entry[0]!r} in {db} is not a decodable image ({e})",
                               _fix_broken(db, category)) from e

    workers = int(params.get("workers", min(8, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        imgs = np.stack(list(pool.map(load, entries)))
    tr, te = holdout(len(imgs), params)
    return {"train": imgs[tr], "test": imgs[te], "shape": [3, res, res], "kind": "image"}
