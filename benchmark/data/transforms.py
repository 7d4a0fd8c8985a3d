"""Shared image preprocessing for the real-format loaders (ImageNet folders, LSUN lmdb).

One crop/resize is used everywhere so that reference statistics and training data go through
exactly the pipeline the published few-step models were trained and evaluated with: the
ADM / guided-diffusion `center_crop_arr` (openai/guided-diffusion, image_datasets.py).
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image


def center_crop_resize(img: Image.Image, res: int) -> np.ndarray:
    """ADM-style (guided-diffusion `center_crop_arr`) center crop to `res` x `res`, uint8 HWC RGB.

    1. while the short side is >= 2*res, halve both sides with a BOX filter (exact area averaging,
       which avoids the aliasing a single large bicubic downscale would introduce);
    2. bicubic resize so that the short side equals `res` (long side rounded);
    3. crop the central `res` x `res` window (offsets floor-divided, as in ADM).
    """
    img = img.convert("RGB")
    while min(img.size) >= 2 * res:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.Resampling.BOX)
    scale = res / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    y0 = (arr.shape[0] - res) // 2
    x0 = (arr.shape[1] - res) // 2
    return np.ascontiguousarray(arr[y0:y0 + res, x0:x0 + res])


def decode_crop(data: bytes, res: int) -> np.ndarray:
    """Encoded image bytes (JPEG/PNG/WebP, whatever PIL reads) -> `center_crop_resize` output."""
    with Image.open(io.BytesIO(data)) as img:
        return center_crop_resize(img, res)


def resolution(params: dict, default: int) -> int:
    """The target resolution: `params['resolution']`, else the trailing number of the dataset kind
    or name (`imagenet64` -> 64; the kind first, since a suite may give an entry its own name),
    else `default`."""
    if params.get("resolution") is not None:
        return int(params["resolution"])
    for key in ("dataset_kind", "kind", "name"):
        m = re.search(r"(\d+)$", str(params.get(key) or ""))
        if m:
            return int(m.group(1))
    return default


def max_images(params: dict) -> int | None:
    """The optional `max_images` cap (None or <= 0 means no cap)."""
    n = params.get("max_images")
    return int(n) if n is not None and int(n) > 0 else None


def capped(items: list, params: dict) -> list:
    """At most `max_images` of `items`: a seeded random subset kept in the original order (the same
    subset whatever the layout the items were listed from)."""
    cap = max_images(params)
    if cap is None or cap >= len(items):
        return items
    rng = np.random.default_rng(int(params.get("seed", 0)))
    return [items[i] for i in np.sort(rng.choice(len(items), cap, replace=False))]


def holdout(n: int, params: dict, default_fraction: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_idx, test_idx) for formats without an official test split.

    The test split is small (`test_fraction`, default 2 %, or an explicit `n_test`) because it
    only serves held-out checks; at least min(2, n // 2) images are held out, since the prepare
    step refuses splits of fewer than 2 items.
    """
    rng = np.random.default_rng(int(params.get("seed", 0)))
    perm = rng.permutation(n)
    if params.get("n_test") is not None:
        n_test = int(params["n_test"])
    else:
        n_test = int(round(n * float(params.get("test_fraction", default_fraction))))
        n_test = max(n_test, min(2, n // 2))
    n_test = min(max(n_test, 0), max(n - 1, 0))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
