"""ImageNet at 64/128/256 (`imagenet64`, `imagenet128`, `imagenet256`), from either layout:

(a) ILSVRC2012 `train/` with one folder per class of JPEGs; class index = sorted folder order
    (the usual synset order n01440764 -> 0, ...). Every image goes through the ADM /
    guided-diffusion `center_crop_arr` (`transforms.center_crop_resize`), the preprocessing the
    published ImageNet few-step models were trained with.
(a') the ILSVRC2012 training tarball `ILSVRC2012_img_train.tar` itself, read without extracting it
    (`imagenet_tar`): same images, same order and labels as (a).
(b) downsampled-ImageNet `.npz` batches (`train_data_batch_1.npz` ...; keys `data` [N, 3*res*res]
    CHW-flattened uint8 and 1-based `labels`), converted to NHWC and 0-based labels.

Where they are looked for (`candidates`), in order: `path/` and `path/train/` (npz batches or class
folders in either), then, when `path` is the generic `.../imagenet`, the downsampled naming
`.../imagenet{res}/` and `.../imagenet{res}/train/`; `path` may also be one npz file. ImageNet has
no labelled test split in these layouts, so a small seeded split is held out (`transforms.holdout`).
`max_images` (optional, not used by the paper suites) caps the images read: a seeded subset of the
files for (a), the first N of the (already shuffled) batches for (b).

Nothing is held whole: images are decoded and yielded in chunks (`source.decode_stream`), npz
batches are read row-block by row-block from the zip member (`_npz_rows`). Nothing is downloaded.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data import imagenet_tar
from benchmark.data.source import Source, decode_stream, materialize, route
from benchmark.data.transforms import capped, center_crop_resize, holdout, max_images, resolution
from benchmark.errors import DatasetError

IMAGE_EXTS = {".jpeg", ".jpg", ".png"}
FIX = ("put the ILSVRC2012 train/ class folders of JPEGs (from https://image-net.org) or the "
       "downsampled-ImageNet train_data_batch_*.npz files there; nothing is downloaded")
TRAIN_TAR = "ILSVRC2012_img_train.tar"
NPZ_FIX = "re-download it (Imagenet64_train npz from https://image-net.org)"


def _natural(p: Path) -> list:
    """Sort key so that batch_2 comes before batch_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def candidates(path: Path, res: int) -> list[Path]:
    """The folders searched, in order (see the module docstring)."""
    out = [path, path / "train"]
    if path.name == "imagenet":
        alt = path.parent / f"imagenet{res}"
        out += [alt, alt / "train"]
    return out


def locate(path: Path, res: int) -> tuple[str, object]:
    """('npz batches', [files]), ('JPEG classes', train_root) or ('JPEG tar', tarball): the first
    candidate that holds one (in that order of layouts); a one-line error otherwise."""
    if path.is_file():
        if path.suffix in (".npz", ".tar"):
            return ("npz batches", [path]) if path.suffix == ".npz" else ("JPEG tar", path)
        raise DatasetError(f"{path} is a file but not an .npz batch or a .tar of JPEGs", FIX)
    searched = candidates(path, res)
    dirs = [c for c in searched if c.is_dir()]
    for d in dirs:
        npz = sorted(d.glob("*.npz"), key=_natural)
        if npz:
            return "npz batches", [f for f in npz if "train" in f.name] or npz
    for d in sorted(dirs, key=lambda c: c.name != "train"):  # X/train/ before X/ itself
        if _class_dirs(d):
            return "JPEG classes", d
    for d in dirs:
        if (d / TRAIN_TAR).is_file():
            return "JPEG tar", d / TRAIN_TAR
    if not any(c.exists() for c in searched):
        also = f" (nor {', '.join(str(c) for c in searched[2:])})" if len(searched) > 2 else ""
        raise DatasetError(f"ImageNet not found: {path} does not exist{also}", FIX)
    raise DatasetError(f"no class folders or .npz batches in {', '.join(str(c) for c in searched if c.exists())}",
                       FIX)


def _list_images(root: Path, params: dict) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(_class_dirs(root)):
        files += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise DatasetError(f"no images (*.JPEG/*.jpg/*.png) in the class folders of {root}", FIX)
    return capped(files, params)


def load_image(path: Path, res: int) -> np.ndarray:
    """One JPEG -> ADM center crop; a one-line error naming a corrupt file."""
    try:
        with Image.open(path) as img:
            return center_crop_resize(img, res)
    except (OSError, ValueError) as e:  # PIL raises UnidentifiedImageError (an OSError)
        raise DatasetError(f"cannot decode {path} ({e})", "remove or replace the corrupt file") from e


def _folder_source(root: Path, res: int, params: dict) -> Source:
    files = _list_images(root, params)
    tr, te = holdout(len(files), params)
    is_test = np.zeros(len(files), bool)
    is_test[te] = True

    def chunks() -> Iterator:
        start = 0
        for part, imgs in decode_stream(files, lambda it: load_image(it[0], res), params.get("workers")):
            labels = np.array([lab for _, lab in part], dtype=np.int64)
            yield from route(imgs, labels, is_test[start:start + len(part)])
            start += len(part)

    return Source("JPEG classes", str(root), "image", [3, res, res], chunks, total=len(files),
                  extra={"first": files[0][0], "last": files[-1][0]})


def _npz_header(zf: zipfile.ZipFile, f: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the `data` array of an npz batch, read from its header only."""
    with zf.open("data.npy") as fp:
        version = np.lib.format.read_magic(fp)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0)(fp)
    if fortran:
        raise DatasetError(f"{f} stores 'data' in Fortran order", NPZ_FIX)
    return shape, dtype


def _npz_rows(f: Path, n: int, row: int, block: int = 4096) -> Iterator[np.ndarray]:
    """The first `n` rows of `data` in blocks of `block`, streamed from the zip member (stored or
    deflated alike), so a 1.5 GB batch is never loaded whole."""
    with zipfile.ZipFile(f) as zf, zf.open("data.npy") as fp:
        version = np.lib.format.read_magic(fp)
        (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(fp)
        for i in range(0, n, block):
            k = min(block, n - i)
            buf = fp.read(k * row)
            if len(buf) != k * row:
                raise DatasetError(f"{f} is truncated (row {i + len(buf) // row} of {n})", NPZ_FIX)
            yield np.frombuffer(buf, np.uint8).reshape(k, row)


def npz_index(files: list[Path], res: int) -> list[tuple[Path, np.ndarray]]:
    """(file, 0-based labels) per batch, every header checked before any image is read."""
    out = []
    for f in files:
        try:
            with zipfile.ZipFile(f) as zf:
                shape, dtype = _npz_header(zf, f)
            with np.load(f, allow_pickle=False) as z:
                lab = np.asarray(z["labels"]).astype(np.int64).ravel()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f"{f} is not a downsampled-ImageNet batch with 'data' and 'labels' ({e})",
                               NPZ_FIX) from e
        if len(shape) != 2 or shape[1] != 3 * res * res or shape[0] != len(lab) or dtype != np.uint8:
            side = int(round((shape[-1] / 3) ** 0.5)) if len(shape) == 2 else "?"
            raise DatasetError(
                f"{f} holds {dtype} data of shape {shape} ({side}x{side} images?), expected uint8 "
                f"[N, {3 * res * res}] for {res}x{res}",
                f"use the {res}x{res} downsampled-ImageNet batches or set resolution to match")
        if len(lab) and lab.min() < 1:
            raise DatasetError(f"{f} has labels < 1, but downsampled-ImageNet labels are 1-based",
                               "re-download the official npz batches")
        out.append((f, lab - 1))
    return out


def _npz_source(files: list[Path], res: int, params: dict) -> Source:
    index = npz_index(files, res)
    cap = max_images(params)
    takes, left = [], cap
    for f, lab in index:
        k = len(lab) if left is None else min(len(lab), left)
        takes.append((f, lab[:k]))
        left = None if left is None else left - k
        if left == 0:
            break
    n = sum(len(lab) for _, lab in takes)
    _, te = holdout(n, params)
    is_test = np.zeros(n, bool)
    is_test[te] = True

    def chunks() -> Iterator:
        start = 0
        for f, lab in takes:
            i = 0
            for rows in _npz_rows(f, len(lab), 3 * res * res):
                imgs = rows.reshape(-1, 3, res, res).transpose(0, 2, 3, 1)
                yield from route(imgs, lab[i:i + len(rows)], is_test[start:start + len(rows)])
                i, start = i + len(rows), start + len(rows)

    return Source("npz batches", str(files[0].parent), "image", [3, res, res], chunks, total=n,
                  extra={"files": [str(f) for f, _ in takes]})


def source(params: dict) -> Source:
    res = resolution(params, 64)
    path = Path(params.get("path", f"data/{params.get('name', 'imagenet64')}"))
    layout, where = locate(path, res)
    if layout == "npz batches":
        return _npz_source(where, res, params)  # type: ignore[arg-type]
    if layout == "JPEG tar":
        return imagenet_tar.source(where, res, params)  # type: ignore[arg-type]
    return _folder_source(where, res, params)  # type: ignore[arg-type]


def prepare(params: dict) -> dict:
    """All images in memory (tests and small folders); `prepare` proper streams `source`."""
    return materialize(source(params))


def check(params: dict) -> str:
    """`doctor`'s content check: the layout the loader detects, non-empty, first and last item
    readable (npz: every header and the last row block). Returns a one-line summary."""
    src = source(params)
    res = src.shape[1]
    if src.layout == "JPEG classes":
        for p in (src.extra["first"], src.extra["last"]):
            load_image(p, res)
    elif src.layout == "JPEG tar":
        imagenet_tar.check(src)
    else:
        files = src.extra["files"]
        for f in dict.fromkeys([files[0], files[-1]]):  # headers were all read by `source`
            for _ in _npz_rows(Path(f), len(npz_index([Path(f)], res)[0][1]), 3 * res * res):
                pass
    return f"{src.layout} at {src.where}, {src.total} images"
