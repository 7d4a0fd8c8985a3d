"""A run's training set in model space: converted whole when it fits `IN_MEMORY_BYTES`, else read
per batch from its memory-mapped shards (`StreamedData`), with its class labels and latent info."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmark.labels import ClassLabels

IN_MEMORY_BYTES = 1 << 30  # prepared splits up to 1 GiB are converted once; larger ones per batch


def _nbytes(split) -> int:
    return int(np.prod(split.shape)) * np.dtype(split.dtype).itemsize


class StreamedData:
    """A prepared split too large for memory, read per batch from its memory-mapped shards:
    `data[idx]` is the model-space batch (the same floats a whole-split conversion gives), so
    `train_step` and its (seed, step) -> batch contract work unchanged and resident memory stays
    bounded by the shards' page cache (issue #14)."""

    def __init__(self, split, device: str = "cpu"):
        self.split, self.device = split, device

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: Tensor) -> Tensor:
        from benchmark.data import to_model_space

        return to_model_space(self.split[np.asarray(idx)]).to(self.device)


def model_space_data(run, suite, data_dir, device: str = "cpu"):
    """A run's training set in model space: (data, ClassLabels or None, shape, latent info or None).

    For a dataset with `vae:` these are the latents the encode rule wrote to `{data_dir}/latent/`,
    and the latent info (VAE settings, image shape, encode/decode FLOPs per image) goes into the
    checkpoint so that sampling can decode."""
    from benchmark.data import load_labels, load_manifest, load_split, to_model_space
    from benchmark.errors import DatasetError

    vae = suite.datasets[run.dataset].get("vae") if suite is not None else None
    src = Path(data_dir) / "latent" if vae else Path(data_dir)
    if vae and not (src / "manifest.json").is_file():
        raise DatasetError(f"{run.name} trains on latents but {src / 'manifest.json'} is missing",
                           "run `python -m benchmark encode` (the Snakemake rule `encode`) first")
    man = load_manifest(src)
    split = load_split(src, "train")
    ids = load_labels(src, "train")
    if run.num_classes and ids is None:
        raise DatasetError(f"{run.name} is class-conditional but {src} has no training labels",
                           "use `conditioning: uncond` or a dataset with labels")
    labels = ClassLabels(torch.from_numpy(ids), run.num_classes, run.label_dropout) if run.num_classes else None
    keys = ("vae", "image_shape", "encode_flops_per_image", "decode_flops_per_image", "n_train")
    data = (to_model_space(np.asarray(split)).to(device) if _nbytes(split) <= IN_MEMORY_BYTES
            else StreamedData(split, device))
    return data, labels, tuple(man["shape"]), ({k: man[k] for k in keys} if vae else None)
