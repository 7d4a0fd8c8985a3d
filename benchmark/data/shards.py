"""Prepared data on disk: fixed-size `.npy` shards, read through memory maps with bounded memory.

ImageNet at 256 px is ~250 GB as uint8, so no step may hold a split in memory. `prepare` streams
a source into `ShardWriter`s (one buffer of at most one shard in memory), each shard a plain
`.npy` (any numpy reads it) with its sha256 in the manifest. `ShardedArray` is the reader: it
has `len()`, `shape`, `dtype` and gathers any index list or tensor into one uint8 batch. Each
gather maps the shards it touches and unmaps them again, so the resident set stays the size of a
batch, not of the pages read so far (a long-lived mmap would count every touched page).

Training keeps its deterministic (seed, step) -> batch contract: the indices of step k are drawn
from a generator seeded by (seed, k) and gathered here. For DDP, `batch_for_rank` gives each rank
its contiguous slice of the global batch, and `step_loader` wraps the same contract in a
`torch.utils.data.DataLoader` with workers that prefetch whole batches.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import DatasetError

SHARD_BYTES = 128 << 20  # target shard size; one shard is the most `prepare` buffers
VERIFY_BYTES = 512 << 20  # splits up to this size are fully re-hashed whenever they are opened


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The `.npy` (format 1.0) header numpy itself writes for a C-ordered array of `shape`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


class ShardWriter:
    """Streams items of one split into `{split}-{i:05d}.npy` shards of `shard_items` items.

    Only the current shard's buffer is held; each full shard is written atomically and hashed
    as it is written. `single` (small vector sets) names the one shard `{split}.npy`.
    `close()` returns the manifest entries [{file, n, sha256}]."""

    def __init__(self, directory: Path, split: str, item_shape: Sequence[int], dtype=np.uint8,
                 shard_items: int | None = None, shard_bytes: int = SHARD_BYTES, single: bool = False):
        self.dir, self.split = Path(directory), split
        self.item_shape, self.dtype = tuple(int(s) for s in item_shape), np.dtype(dtype)
        item_bytes = max(1, int(np.prod(self.item_shape)) * self.dtype.itemsize)
        self.shard_items = int(shard_items or max(1, shard_bytes // item_bytes))
        self.buf = np.empty((self.shard_items, *self.item_shape), self.dtype)
        self.fill, self.entries, self.single = 0, [], single

    def add(self, items: np.ndarray) -> None:
        items = np.asarray(items)
        if items.shape[1:] != self.item_shape or items.dtype != self.dtype:
            raise DatasetError(f"split '{self.split}' got items {items.dtype} {items.shape[1:]}, expected "
                               f"{self.dtype} {self.item_shape}", "all images of a dataset must share one size")
        i = 0
        while i < len(items):
            take = min(len(items) - i, self.shard_items - self.fill)
            self.buf[self.fill:self.fill + take] = items[i:i + take]
            self.fill, i = self.fill + take, i + take
            if self.fill == self.shard_items:
                self._flush()

    def _flush(self) -> None:
        from benchmark.provenance import atomic_path

        if self.fill == 0:
            return
        if self.single and self.entries:
            raise DatasetError(f"split '{self.split}' got more than {self.shard_items} items for its single file",
                               "pass a split's vectors in one chunk")
        name = f"{self.split}.npy" if self.single else f"{self.split}-{len(self.entries):05d}.npy"
        h = hashlib.sha256()
        with atomic_path(self.dir / name) as tmp, open(tmp, "wb") as f:
            for part in (_header((self.fill, *self.item_shape), self.dtype),
                         memoryview(np.ascontiguousarray(self.buf[:self.fill])).cast("B")):
                f.write(part)
                h.update(part)
        self.entries.append({"file": name, "n": self.fill, "sha256": h.hexdigest()})
        self.fill = 0

    def close(self) -> list[dict]:
        self._flush()
        self.buf = np.empty((0, *self.item_shape), self.dtype)
        return self.entries


class ShardedArray:
    """A read-only [N, ...] array over `.npy` shards: `len`, `shape`, `dtype`, and indexing by
    an int, a slice, or an index array/tensor (returns a numpy array, in the order asked)."""

    def __init__(self, paths: Sequence[Path], counts: Sequence[int], item_shape: Sequence[int], dtype):
        self.paths = [Path(p) for p in paths]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.item_shape, self.dtype = tuple(item_shape), np.dtype(dtype)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.item_shape)) * self.dtype.itemsize

    def _map(self, s: int) -> np.ndarray:
        try:
            return np.load(self.paths[s], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"shard {self.paths[s]} is unreadable ({e.__class__.__name__})",
                               f"delete {self.paths[s].parent} and re-run the prepare rule") from e

    def take(self, idx) -> np.ndarray:
        """Gather the items `idx` (ints; negatives count from the end) into one new array."""
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).reshape(-1)
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} items")
        out = np.empty((len(idx), *self.item_shape), self.dtype)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard):
            m = shard == s
            local = idx[m] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # sorted reads are sequential on disk
            mm = self._map(int(s))
            out[np.flatnonzero(m)[order]] = mm[local[order]]
            del mm  # unmap now: the resident set stays one batch
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([int(key)])[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self.take(np.arange(len(self)))
        return a if dtype is None else a.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        """numpy's `astype` on the whole split (small sets; callers written for in-memory arrays)."""
        return self.__array__(dtype)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive chunks of at most `size` items: for streaming passes (reference stats)."""
        for i in range(0, len(self), size):
            yield self.take(np.arange(i, min(i + size, len(self))))


def batch_for_rank(global_indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (DDP): the concatenation over ranks
    0..world-1 is the global batch, so the (seed, step) contract holds for any world size."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    if len(global_indices) % world:
        raise DatasetError(f"global batch {len(global_indices)} is not divisible by {world} ranks",
                           "choose a batch that is a multiple of the number of GPUs")
    return global_indices.tensor_split(world)[rank]


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: `ds[indices] -> (uint8 batch, labels)`.
    Fetching a batch at once lets `ShardedArray.take` read each shard once per batch."""

    def __init__(self, images: ShardedArray, labels: np.ndarray | None = None):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.from_numpy(self.images.take(indices))
        y = None if self.labels is None else torch.from_numpy(np.asarray(self.labels)[np.asarray(indices)])
        return x, y


class StepSampler(torch.utils.data.Sampler):
    """Yields, for steps start..stop-1, this rank's slice of `indices_fn(step)` (the training
    loop's own seeded draw), so a loader reproduces exactly the batches of the in-process loop."""

    def __init__(self, indices_fn: Callable[[int], torch.Tensor], start: int, stop: int,
                 rank: int = 0, world: int = 1):
        self.fn, self.start, self.stop, self.rank, self.world = indices_fn, start, stop, rank, world

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield batch_for_rank(self.fn(step), self.rank, self.world).tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _collate(b):
    return b


def step_loader(images: ShardedArray, indices_fn: Callable[[int], torch.Tensor], start: int, stop: int, *,
                labels: np.ndarray | None = None, rank: int = 0, world: int = 1, workers: int = 0,
                prefetch: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader over `BatchDataset` driven by `StepSampler`: workers prefetch whole batches,
    each rank gets its slice; yields (uint8 NHWC batch, int64 labels or None) per step."""
    kw = {"prefetch_factor": prefetch, "persistent_workers": False} if workers > 0 else {}
    return torch.utils.data.DataLoader(BatchDataset(images, labels), batch_size=None,
                                       sampler=StepSampler(indices_fn, start, stop, rank, world),
                                       num_workers=workers, collate_fn=_collate, **kw)


def verify_shards(directory: Path, entries: list[dict], full: bool) -> None:
    """Check each shard exists with the size its header implies; with `full`, its sha256 too."""
    from benchmark.provenance import sha256_file

    for e in entries:
        p = Path(directory) / e["file"]
        fix = f"delete {Path(directory)} and re-run the prepare rule"
        if not p.is_file():
            raise DatasetError(f"shard {p} is missing", fix)
        if full and sha256_file(p) != e["sha256"]:
            raise DatasetError(f"{p} does not match its manifest sha256", fix)
        if not full:
            try:
                mm = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DatasetError(f"shard {p} is unreadable ({err.__class__.__name__})", fix) from err
            if len(mm) != e["n"]:
                raise DatasetError(f"shard {p} holds {len(mm)} items, its manifest says {e['n']}", fix)
            del mm


def split_nbytes(directory: Path, entries: list[dict]) -> int:
    return sum(os.path.getsize(Path(directory) / e["file"]) for e in entries
               if (Path(directory) / e["file"]).exists())
