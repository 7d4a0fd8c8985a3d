"""scikit-learn's `load_digits`: 1797 real 8x8 grayscale scans (0..16 levels), shipped with the
package, so the default image suite runs offline. A seeded split holds out 20 % for testing."""

from __future__ import annotations

import numpy as np

from benchmark.errors import DatasetError


def prepare(params: dict) -> dict:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - sklearn is a hard dependency
        raise DatasetError("scikit-learn is not installed", "pip install scikit-learn") from e
    d = load_digits()
    imgs = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # NHWC uint8
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(int(params.get("seed", 0)))
    perm = rng.permutation(len(imgs))
    n_test = int(round(len(imgs) * float(params.get("test_fraction", 0.2))))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return {"train": imgs[train_idx], "test": imgs[test_idx], "train_labels": labels[train_idx],
            "test_labels": labels[test_idx], "shape": [1, 8, 8], "kind": "image"}
