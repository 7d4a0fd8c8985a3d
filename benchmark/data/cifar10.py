"""CIFAR-10 from the official python-pickle release (https://www.cs.toronto.edu/~kriz/cifar.html).

Accepted at `params['path']`: the `cifar-10-python.tar.gz` tarball (members are read straight
from the archive, nothing is extracted to disk), the extracted `cifar-10-batches-py/` directory,
or a directory holding either. Nothing is ever downloaded. The official 50k/10k train/test split
is kept; `max_images` caps each split (first N, the batches are already shuffled).

The batches are pickles, so they are read with a restricted unpickler that only rebuilds plain
containers and numpy arrays: a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from benchmark.data.transforms import max_images
from benchmark.errors import DatasetError

TARBALL = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _not_found(path: Path) -> DatasetError:
    return DatasetError(
        f"CIFAR-10 not found at {path}",
        f"put {TARBALL} (from {URL}) there, or its extracted {BATCH_DIR}/ directory "
        f"({', '.join(TRAIN_BATCHES)}, {TEST_BATCH}); nothing is downloaded")


def _locate(path: Path) -> tuple[str, Path]:
    """('tar', tarball) or ('dir', batches dir) for the accepted layouts."""
    if path.is_file():
        return "tar", path
    if path.is_dir():
        if (path / TEST_BATCH).is_file():
            return "dir", path
        if (path / BATCH_DIR / TEST_BATCH).is_file():
            return "dir", path / BATCH_DIR
        if (path / TARBALL).is_file():
            return "tar", path / TARBALL
    raise _not_found(path)


def _decode(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 NHWC [N,32,32,3], int64 labels)."""
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:
        raise DatasetError(f"{where} is not a CIFAR-10 python batch ({e})",
                           f"re-download {TARBALL} from {URL}") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"{where} has data of shape {data.shape} and {len(labels)} labels, "
                           "expected [N, 3072] and N labels", f"re-download {TARBALL} from {URL}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _read_batches(kind: str, where: Path) -> dict[str, bytes]:
    names = TRAIN_BATCHES + [TEST_BATCH]
    if kind == "dir":
        missing = [n for n in names if not (where / n).is_file()]
        if missing:
            raise DatasetError(f"CIFAR-10 directory {where} lacks {', '.join(missing)}",
                               f"re-extract {TARBALL} (from {URL}) there")
        return {n: (where / n).read_bytes() for n in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(where, "r:*") as tar:
            for m in tar.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in names:
                    f = tar.extractfile(m)
                    if f is not None:
                        out[base] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{where} is not a readable tar.gz ({e})",
                           f"re-download {TARBALL} from {URL}") from e
    missing = [n for n in names if n not in out]
    if missing:
        raise DatasetError(f"{where} lacks the members {', '.join(missing)}",
                           f"re-download {TARBALL} from {URL}")
    return out


def prepare(params: dict) -> dict:
    path = Path(params.get("path", "data/cifar10"))
    kind, where = _locate(path)
    raw = _read_batches(kind, where)
    def member(n: str) -> str:
        return f"{where}:{n}" if kind == "tar" else str(where / n)

    parts = [_decode(raw[n], member(n)) for n in TRAIN_BATCHES]
    train = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test, test_labels = _decode(raw[TEST_BATCH], member(TEST_BATCH))
    cap = max_images(params)
    if cap is not None:
        train, train_labels = train[:cap], train_labels[:cap]
        test, test_labels = test[:cap], test_labels[:cap]
    return {"train": train, "test": test, "train_labels": train_labels, "test_labels": test_labels,
            "shape": [3, 32, 32], "kind": "image"}
