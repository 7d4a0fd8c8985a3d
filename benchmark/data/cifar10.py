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
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmark.data.source import Source, materialize
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
    """One pickled batch -> (uint8 NHWC [N,32,32,3], int64 labels); values outside 0..255 (or not
    integers) are refused, never wrapped."""
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:
        raise DatasetError(f"{where} is not a CIFAR-10 python batch ({e})",
                           f"re-download {TARBALL} from {URL}") from e
    if data.dtype != np.uint8:
        ok = data.dtype.kind in "iu" and (data.size == 0 or (data.min() >= 0 and data.max() <= 255))
        if not ok:
            raise DatasetError(f"{where} holds {data.dtype} pixel values, not uint8 0..255",
                               f"re-download {TARBALL} from {URL}")
        data = data.astype(np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"{where} has data of shape {data.shape} and {len(labels)} labels, "
                           "expected [N, 3072] and N labels", f"re-download {TARBALL} from {URL}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _tar_members(where: Path) -> dict[str, tarfile.TarInfo]:
    """Batch name -> member of the tarball (read in full once: a truncated archive fails here)."""
    names = TRAIN_BATCHES + [TEST_BATCH]
    try:
        with tarfile.open(where, "r:*") as tar:
            found = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{where} is not a readable tar.gz ({e})", f"re-download {TARBALL} from {URL}") from e
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{where} lacks the members {', '.join(missing)}", f"re-download {TARBALL} from {URL}")
    return {n: found[n] for n in names}


def _batches(layout: str, where: Path) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of each batch in the official order, one at a time (30 MB each)."""
    names = TRAIN_BATCHES + [TEST_BATCH]
    if layout == "batches folder":
        for n in names:
            yield n, (where / n).read_bytes()
        return
    members = _tar_members(where)
    try:
        with tarfile.open(where, "r:*") as tar:
            for n in names:
                f = tar.extractfile(members[n])
                yield n, f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{where} is not a readable tar.gz ({e})", f"re-download {TARBALL} from {URL}") from e


def source(params: dict) -> Source:
    """The official 50k/10k split, streamed one batch (10k images, 30 MB) at a time."""
    kind, where = _locate(Path(params.get("path", "data/cifar10")))
    layout = "tarball" if kind == "tar" else "batches folder"
    if layout == "batches folder":
        missing = [n for n in TRAIN_BATCHES + [TEST_BATCH] if not (where / n).is_file()]
        if missing:
            raise DatasetError(f"CIFAR-10 directory {where} lacks {', '.join(missing)}",
                               f"re-extract {TARBALL} (from {URL}) there")
    cap = max_images(params)

    def chunks() -> Iterator:
        left = {"train": cap, "test": cap}
        for name, raw in _batches(layout, where):
            split = "test" if name == TEST_BATCH else "train"
            imgs, labels = _decode(raw, f"{where}:{name}" if layout == "tarball" else str(where / name))
            if left[split] is not None:
                imgs, labels = imgs[:left[split]], labels[:left[split]]
                left[split] -= len(imgs)
            if len(imgs):
                yield split, imgs, labels

    return Source(layout, str(where), "image", [3, 32, 32], chunks)


def prepare(params: dict) -> dict:
    """All of CIFAR-10 in memory (tests); `prepare` proper streams `source`."""
    return materialize(source(params))


def check(params: dict) -> str:
    """`doctor`'s content check: layout, archive integrity, first and last batch decodable."""
    src = source(params)
    n = 0
    for name, raw in _batches(src.layout, Path(src.where)):
        if name in (TRAIN_BATCHES[0], TEST_BATCH):
            n += len(_decode(raw, f"{src.where}:{name}")[0])
    return f"{src.layout} at {src.where}, first and last batch readable"
