"""ImageNet from the ILSVRC2012 training tarball itself, without extracting it.

`ILSVRC2012_img_train.tar` (uncompressed) holds one tar per class (`n01440764.tar`, ...), each
holding that class's JPEGs; a tar of `<wnid>/<file>.JPEG` members is read too. Only headers are
read to build the index (tarfile seeks over the data), so listing 1.28 M members costs seconds;
images are then read class by class, in the same order as the extracted class folders (sorted
wnids -> labels 0.., sorted file names within a class), so both layouts prepare identical data.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmark.data.source import Source, decode_stream, route
from benchmark.data.transforms import capped, decode_crop, holdout
from benchmark.errors import DatasetError

IMAGE_EXTS = (".jpeg", ".jpg", ".png")
FIX = "re-download ILSVRC2012_img_train.tar (from https://image-net.org) or extract it into class folders"


def _images(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    return [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_EXTS)]


def index(path: Path) -> list[tuple[str, str | None, int]]:
    """(outer member, inner member or None, label) of every image, in class-folder order."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            nested = sorted((m for m in members if m.name.endswith(".tar")), key=lambda m: m.name)
            if nested:
                out = []
                for label, m in enumerate(nested):
                    with tarfile.open(fileobj=tar.extractfile(m), mode="r:") as inner:
                        out += [(m.name, i.name, label) for i in sorted(_images(inner), key=lambda i: i.name)]
                return out
            flat = sorted((m.name for m in _images(tar) if "/" in m.name), key=lambda n: (n.rsplit("/", 2)[-2], n))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{path} is not a readable ImageNet tar ({e})", FIX) from e
    classes = {c: i for i, c in enumerate(sorted({n.rsplit("/", 2)[-2] for n in flat}))}
    return [(n, None, classes[n.rsplit("/", 2)[-2]]) for n in flat]


def _read(path: Path, items: list[tuple[str, str | None, int]]) -> Iterator[tuple[str, bytes, int]]:
    """(name, encoded bytes, label) of `items`, read sequentially through the archive (members
    looked up in dicts: tarfile's own lookup by name is a linear scan)."""
    with tarfile.open(path, "r:") as tar:
        outer = {m.name: m for m in tar.getmembers()}
        inner_name, inner, members = None, None, {}
        for name, sub, label in items:
            if sub is None:
                yield name, tar.extractfile(outer[name]).read(), label
                continue
            if name != inner_name:
                if inner is not None:
                    inner.close()
                inner = tarfile.open(fileobj=tar.extractfile(outer[name]), mode="r:")
                inner_name, members = name, {m.name: m for m in inner.getmembers()}
            yield f"{name}:{sub}", inner.extractfile(members[sub]).read(), label
        if inner is not None:
            inner.close()


def source(path: Path, res: int, params: dict) -> Source:
    items = index(path)
    if not items:
        raise DatasetError(f"no images (*.JPEG) in {path}", FIX)
    items = capped(items, params)
    _, te = holdout(len(items), params)
    is_test = np.zeros(len(items), bool)
    is_test[te] = True

    def load(item: tuple[str, bytes, int]) -> np.ndarray:
        try:
            return decode_crop(item[1], res)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot decode {path}:{item[0]} ({e})", FIX) from e

    def chunks() -> Iterator:
        start = 0
        for part, imgs in decode_stream(_read(path, items), load, params.get("workers")):
            yield from route(imgs, np.array([lab for *_, lab in part], dtype=np.int64),
                             is_test[start:start + len(part)])
            start += len(part)

    return Source("JPEG tar", str(path), "image", [3, res, res], chunks, total=len(items),
                  extra={"first_last": [items[0], items[-1]], "load": load})


def check(src: Source) -> None:
    """First and last image of the archive decodable."""
    for item in _read(Path(src.where), src.extra["first_last"]):
        src.extra["load"](item)
