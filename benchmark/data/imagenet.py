"""ImageNet at 64/128/256 (`imagenet64`, `imagenet128`, `imagenet256`), from either layout:

(a) ILSVRC2012 `train/` with one folder per class of JPEGs; class index = sorted folder order
    (the usual synset order n01440764 -> 0, ...). Every image goes through the ADM /
    guided-diffusion `center_crop_arr` (`transforms.center_crop_resize`), the preprocessing the
    published ImageNet few-step models were trained with.
(b) downsampled-ImageNet `.npz` batches (`train_data_batch_1.npz` ...; keys `data` [N, 3*res*res]
    CHW-flattened uint8 and 1-based `labels`), converted to NHWC and 0-based labels.

`params['path']` is the `train/` folder, a folder holding `train/`, a folder of npz batches or one
npz file. ImageNet has no labelled test split in these layouts, so a small seeded split is held
out (`transforms.holdout`). `max_images` caps the images read: a seeded subset of the files for
(a), the first N of the (already shuffled) batches for (b). Nothing is ever downloaded.

Without `max_images` the whole set is held in memory (uint8: ~15 GB at 64, ~250 GB at 256).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.transforms import center_crop_resize, holdout, max_images, resolution
from benchmark.errors import DatasetError

IMAGE_EXTS = {".jpeg", ".jpg", ".png"}
FIX = ("put the ILSVRC2012 train/ class folders of JPEGs (from https://image-net.org) or the "
       "downsampled-ImageNet train_data_batch_*.npz files there; nothing is downloaded")


def _natural(p: Path) -> list:
    """Sort key so that batch_2 comes before batch_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _load_folders(root: Path, res: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(a): class folders -> (uint8 NHWC, int64 labels)."""
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(_class_dirs(root)):
        files += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise DatasetError(f"no images (*.JPEG/*.jpg/*.png) in the class folders of {root}", FIX)
    cap = max_images(params)
    if cap is not None and cap < len(files):
        rng = np.random.default_rng(int(params.get("seed", 0)))
        files = [files[i] for i in np.sort(rng.choice(len(files), cap, replace=False))]

    def load(item: tuple[Path, int]) -> np.ndarray:
        try:
            with Image.open(item[0]) as img:
                return center_crop_resize(img, res)
        except (OSError, ValueError) as e:  # PIL raises UnidentifiedImageError (an OSError)
            raise DatasetError(f"cannot decode {item[0]} ({e})",
                               "remove or replace the corrupt file") from e

    workers = int(params.get("workers", min(8, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max(workers, 1)) as pool:  # PIL decodes/resizes without the GIL
        imgs = list(pool.map(load, files))
    return np.stack(imgs), np.array([lab for _, lab in files], dtype=np.int64)


def _load_npz(files: list[Path], res: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(b): downsampled-ImageNet batches -> (uint8 NHWC, int64 0-based labels)."""
    cap = max_images(params)
    datas, labels, n = [], [], 0
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                data, lab = np.asarray(z["data"]), np.asarray(z["labels"]).astype(np.int64).ravel()
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{f} is not a downsampled-ImageNet batch with 'data' and 'labels' ({e})",
                               "re-download it (Imagenet64_train npz from https://image-net.org)") from e
        if data.ndim != 2 or data.shape[1] != 3 * res * res or len(lab) != len(data):
            side = int(round((data.shape[-1] / 3) ** 0.5)) if data.ndim == 2 else "?"
            raise DatasetError(
                f"{f} holds data of shape {data.shape} ({side}x{side} images?), expected "
                f"[N, {3 * res * res}] for {res}x{res}",
                f"use the {res}x{res} downsampled-ImageNet batches or set resolution to match")
        if len(lab) and lab.min() < 1:
            raise DatasetError(f"{f} has labels < 1, but downsampled-ImageNet labels are 1-based",
                               "re-download the official npz batches")
        take = len(data) if cap is None else min(len(data), cap - n)
        datas.append(data[:take].reshape(-1, 3, res, res).transpose(0, 2, 3, 1))
        labels.append(lab[:take] - 1)
        n += take
        if cap is not None and n >= cap:
            break
    return np.ascontiguousarray(np.concatenate(datas), dtype=np.uint8), np.concatenate(labels)


def _locate(path: Path) -> tuple[str, object]:
    """('npz', [files]) or ('folders', train_root) for the accepted layouts."""
    if not path.exists():
        raise DatasetError(f"ImageNet not found: {path} does not exist", FIX)
    if path.is_file():
        if path.suffix == ".npz":
            return "npz", [path]
        raise DatasetError(f"{path} is a file but not an .npz batch", FIX)
    npz = sorted(path.glob("*.npz"), key=_natural)
    if npz:
        train = [f for f in npz if "train" in f.name]
        return "npz", train or npz
    root = path / "train" if (path / "train").is_dir() else path
    if not _class_dirs(root):
        raise DatasetError(f"no class folders or .npz batches in {root}", FIX)
    return "folders", root


def prepare(params: dict) -> dict:
    res = resolution(params, 64)
    path = Path(params.get("path", f"data/{params.get('name', 'imagenet64')}"))
    kind, where = _locate(path)
    if kind == "npz":
        imgs, labels = _load_npz(where, res, params)  # type: ignore[arg-type]
    else:
        imgs, labels = _load_folders(where, res, params)  # type: ignore[arg-type]
    tr, te = holdout(len(imgs), params)
    return {"train": imgs[tr], "test": imgs[te], "train_labels": labels[tr], "test_labels": labels[te],
            "shape": [3, res, res], "kind": "image"}
