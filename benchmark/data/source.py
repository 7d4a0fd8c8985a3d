"""A raw dataset as a stream: what `prepare` writes into shards without holding the dataset.

Each real-format loader (cifar10, imagenet, lsun) turns its params into a `Source`: the layout it
detected (logged, and what `doctor` reports), the item shape, and `chunks()`, an iterator of
(split, items, labels) pieces of bounded size. Small generated sets (gmm, digits) return their
arrays, which `from_arrays` wraps as a one-chunk Source, so every dataset goes through one writer
and one reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

CHUNK = 256  # items decoded per step of a stream: bounds the memory of a decode pass

Chunk = tuple[str, np.ndarray, "np.ndarray | None"]


@dataclass
class Source:
    layout: str  # what was detected: 'tarball', 'batches folder', 'JPEG classes', 'npz batches', 'lmdb', ...
    where: str  # the file or folder it was found at
    kind: str  # 'image' (uint8 NHWC items) or 'vector' (float32 [D] items)
    shape: list[int]  # CHW for images, [D] for vectors
    chunks: Callable[[], Iterator[Chunk]]
    total: int | None = None  # items the stream will yield (progress bar), if known
    extra: dict[str, Any] = field(default_factory=dict)


def from_arrays(res: dict, layout: str = "generated", where: str = "-") -> Source:
    """A prepared-arrays dict ({train, test, train_labels?, test_labels?, shape, kind}) as a Source."""
    def chunks() -> Iterator[Chunk]:
        for split in ("train", "test"):
            yield split, np.asarray(res[split]), res.get(f"{split}_labels")

    return Source(layout, where, res["kind"], list(res["shape"]), chunks,
                  total=len(res["train"]) + len(res["test"]))


def materialize(src: Source) -> dict:
    """All of a Source in memory (tests, small sets): the dict the old loaders returned."""
    parts: dict[str, list] = {}
    labels: dict[str, list] = {}
    for split, items, labs in src.chunks():
        parts.setdefault(split, []).append(items)
        if labs is not None:
            labels.setdefault(split, []).append(np.asarray(labs, dtype=np.int64))
    out: dict[str, Any] = {"shape": src.shape, "kind": src.kind, "layout": src.layout}
    item = [*src.shape[1:], src.shape[0]] if src.kind == "image" else list(src.shape)
    for split in ("train", "test"):
        p = parts.get(split)
        out[split] = np.concatenate(p) if p else np.empty((0, *item), np.uint8 if src.kind == "image" else np.float32)
    for split, p in labels.items():
        out[f"{split}_labels"] = np.concatenate(p)
    return out


def route(items: np.ndarray, labels: np.ndarray | None, is_test: np.ndarray) -> Iterator[Chunk]:
    """Split one chunk by its rows' hold-out flags into ('train', ...) and ('test', ...) pieces."""
    for split, m in (("train", ~is_test), ("test", is_test)):
        if m.any():
            yield split, items[m], None if labels is None else labels[m]


def batched(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


def decode_stream(items: Iterable, load: Callable[[Any], np.ndarray], workers: int | None,
                  chunk: int = CHUNK) -> Iterator[tuple[list, np.ndarray]]:
    """(inputs, stacked decoded images) per chunk of `chunk` inputs, decoded by a thread pool
    (PIL decodes and resizes without the GIL); only one chunk is in flight at a time."""
    workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        for part in batched(items, chunk):
            yield part, np.stack(list(pool.map(load, part)))
