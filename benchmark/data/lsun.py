"""LSUN at 256x256 (`lsun256`) from the official `{category}_train_lmdb/` databases
(https://github.com/fyu/lsun): keys -> encoded WebP/JPEG/PNG bytes, decoded with PIL and sent
through the ADM center crop + resize (`transforms.center_crop_resize`) used by the published
LSUN few-step models.

`params['path']` is the lmdb directory itself or a folder holding `{category}_train_lmdb/`
(`category`, default `bedroom`; if not given and exactly one `*_train_lmdb/` is there, that one).
`max_images` takes the first N entries in key order (the keys are content hashes, so that is an
arbitrary, fixed subset); entries are decoded and written in chunks, never held whole.
LSUN has no labels; a small seeded test split is held out. Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmark.data.source import Source, decode_stream, materialize, route
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


def _open(db: Path, category: str):
    import lmdb

    try:
        return lmdb.open(str(db), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    except lmdb.Error as e:
        raise DatasetError(f"cannot open the LSUN lmdb {db} ({e})", _fix_broken(db, category)) from e


def _count(db: Path, category: str, cap: int | None) -> int:
    env = _open(db, category)
    try:
        n = int(env.stat()["entries"])
    finally:
        env.close()
    if n == 0:
        raise DatasetError(f"the LSUN lmdb {db} has no entries", _fix_broken(db, category))
    return n if cap is None else min(n, cap)


def _entries(db: Path, category: str, n: int) -> Iterator[tuple[bytes, bytes]]:
    """The first `n` (key, value) pairs in key order, one at a time."""
    import lmdb

    env = _open(db, category)
    try:
        with env.begin(write=False) as txn:
            for i, (key, val) in enumerate(txn.cursor()):
                if i >= n:
                    break
                yield bytes(key), bytes(val)
    except lmdb.Error as e:
        raise DatasetError(f"the LSUN lmdb {db} is corrupt ({e})", _fix_broken(db, category)) from e
    finally:
        env.close()


def _decoder(db: Path, category: str, res: int):
    def load(entry: tuple[bytes, bytes]) -> np.ndarray:
        try:
            return decode_crop(entry[1], res)
        except (OSError, ValueError) as e:
            raise DatasetError(f"LSUN entry {entry[0]!r} in {db} is not a decodable image ({e})",
                               _fix_broken(db, category)) from e
    return load


def source(params: dict) -> Source:
    res = resolution(params, 256)
    db, category = _locate(Path(params.get("path", "data/lsun256")), params)
    n = _count(db, category, max_images(params))
    _, te = holdout(n, params)
    is_test = np.zeros(n, bool)
    is_test[te] = True

    def chunks() -> Iterator:
        start = 0
        for part, imgs in decode_stream(_entries(db, category, n), _decoder(db, category, res),
                                        params.get("workers")):
            yield from route(imgs, None, is_test[start:start + len(part)])
            start += len(part)

    return Source("lmdb", str(db), "image", [3, res, res], chunks, total=n, extra={"category": category})


def prepare(params: dict) -> dict:
    """All images in memory (tests); `prepare` proper streams `source`."""
    return materialize(source(params))


def check(params: dict) -> str:
    """`doctor`'s content check: opens, non-empty, first and last entry decodable."""
    src = source(params)
    db, category, n = Path(src.where), src.extra["category"], src.total or 0
    load = _decoder(db, category, 16)
    first = next(_entries(db, category, 1))
    load(first)
    env = _open(db, category)
    try:
        with env.begin(write=False) as txn:
            cur = txn.cursor()
            if cur.last():
                load((bytes(cur.key()), bytes(cur.value())))
    finally:
        env.close()
    return f"lmdb at {db}, {n} images"
