"""Latent space (Rombach et al. 2022, LDM; DiT and IMM's ImageNet-256 models): methods train and
sample in the latent space of a frozen `AutoencoderKL`; samples are decoded before evaluation.

A suite dataset opts in with `vae: {path, scale, shift, latent_channels, factor}`. `path` is a local
directory that `diffusers.AutoencoderKL.from_pretrained` reads (config.json + weights); nothing is
downloaded. The `encode` rule encodes the prepared images once into `{data}/latent/` (float32
latents in shards, labels copied), and records the VAE's encode/decode FLOPs per image there; training
charges the encoding, sampling the decoding (`benchmark.compute`).

Latents are the posterior means z = (E(x).mean - shift) * scale (LDM §4.3.2: scale to unit variance;
SD's VAE: scale = 0.18215, shift = 0), so the encoding is deterministic; decode(z) = D(z / scale + shift).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.errors import ConfigError, DatasetError

VAE_DEFAULTS: dict[str, Any] = {"scale": 0.18215, "shift": 0.0, "latent_channels": 4, "factor": 8}


def vae_spec(spec: dict[str, Any] | None, data_root: Path | None = None) -> dict[str, Any] | None:
    """A dataset's `vae:` block with defaults filled in and a relative path resolved against data_root."""
    if not spec:
        return None
    out = VAE_DEFAULTS | dict(spec)
    if data_root is not None and not Path(out["path"]).is_absolute():
        out["path"] = str(Path(data_root) / out["path"])
    return out


def latent_shape(image_shape: tuple[int, ...], vae: dict[str, Any]) -> tuple[int, int, int]:
    """[C, H, W] of the latents of [3, H*f, W*f] images (one-line error if f does not divide H, W)."""
    f = int(vae["factor"])
    if len(image_shape) != 3 or image_shape[1] % f or image_shape[2] % f:
        raise ConfigError(f"a VAE with downsampling factor {f} cannot encode data of shape {list(image_shape)}",
                          "use image data whose resolution is a multiple of vae.factor")
    return (int(vae["latent_channels"]), image_shape[1] // f, image_shape[2] // f)


def load_vae(path: str | Path, device: str = "cpu") -> nn.Module:
    """diffusers' AutoencoderKL from a local directory, frozen and in eval mode."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ConfigError("latent suites need the `diffusers` package, which is not installed",
                          "pip install 'fewstep-bench[latent]' (or pip install diffusers)") from None
    p = Path(path)
    if not (p / "config.json").is_file():
        raise DatasetError(f"no AutoencoderKL at {p} (config.json missing)",
                           "save one there with AutoencoderKL.save_pretrained (e.g. stabilityai/sd-vae-ft-mse)")
    try:
        vae = AutoencoderKL.from_pretrained(p, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot load the AutoencoderKL at {p} ({str(e).splitlines()[0][:80]})",
                           "re-save it with AutoencoderKL.save_pretrained") from None
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae: nn.Module, x: Tensor, scale: float, shift: float) -> Tensor:
    """Images in [-1, 1] NCHW -> latents z = (E(x).mean - shift) * scale (LDM §4.3.2)."""
    return (vae.encode(x).latent_dist.mean - shift) * scale


@torch.no_grad()
def decode(vae: nn.Module, z: Tensor, scale: float, shift: float) -> Tensor:
    """Latents -> images in model space (about [-1, 1]): D(z / scale + shift)."""
    return vae.decode(z / scale + shift).sample


def vae_flops(vae: nn.Module, image_shape: tuple[int, ...], vae_cfg: dict[str, Any]) -> dict[str, int]:
    """FLOPs per image of one encode and one decode (benchmark.compute's convention)."""
    from benchmark.compute import count_flops

    p = next(vae.parameters())
    x = torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype)
    z = torch.zeros(1, *latent_shape(image_shape, vae_cfg), device=p.device, dtype=p.dtype)
    s, b = float(vae_cfg["scale"]), float(vae_cfg["shift"])
    return {"encode_flops_per_image": count_flops(lambda: encode(vae, x, s, b)),
            "decode_flops_per_image": count_flops(lambda: decode(vae, z, s, b))}


def encode_dataset(data_dir: Path, vae_cfg: dict[str, Any], out_manifest: Path, *, batch: int = 64,
                   device: str = "cpu", shard_bytes: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Encode a prepared image dataset's train split into `out_manifest`'s directory (once).

    Streams: images are read per batch from their memory-mapped shards and latents written to
    float32 shards as they come (ImageNet-256's 1.28 M latents are 21 GB), so memory stays at one
    shard; the latents' std is accumulated in float64 on the way."""
    from tqdm import tqdm

    from benchmark.data import load_manifest, load_split, to_model_space
    from benchmark.data.shards import SHARD_BYTES, ShardWriter
    from benchmark.provenance import atomic_path, provenance, sha256_file, write_json

    man = load_manifest(data_dir)
    if man["kind"] != "image":
        raise ConfigError(f"dataset '{man['name']}' is {man['kind']} data; a VAE encodes images",
                          "remove `vae:` from this dataset")
    image_shape = tuple(man["shape"])  # [C, H, W]
    vae = load_vae(vae_cfg["path"], device)
    images = load_split(data_dir, "train")
    d = Path(out_manifest).parent
    d.mkdir(parents=True, exist_ok=True)
    writer, total, total_sq = None, 0.0, 0.0
    for i in tqdm(range(0, len(images), batch), desc="encode", unit="batch", disable=not progress):
        z = encode(vae, to_model_space(images[i:i + batch]).to(device), float(vae_cfg["scale"]),
                   float(vae_cfg["shift"])).float().cpu().numpy()
        if writer is None:
            writer = ShardWriter(d, "train", z.shape[1:], np.float32, shard_bytes=shard_bytes or SHARD_BYTES)
        writer.add(z)
        total, total_sq = total + z.astype(np.float64).sum(), total_sq + np.square(z, dtype=np.float64).sum()
    if writer is None:
        raise DatasetError(f"dataset '{man['name']}' has no training images to encode", "prepare it again")
    entries = writer.close()
    n = sum(e["n"] for e in entries)
    files, sha = {}, {}
    if "train_labels" in man["files"]:
        with atomic_path(d / "train_labels.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(load_split(data_dir, "train_labels")), allow_pickle=False)
        files["train_labels"], sha["train_labels"] = "train_labels.npy", sha256_file(d / "train_labels.npy")
    count = n * int(np.prod(writer.item_shape))
    out = {"name": man["name"], "kind": "latent", "dataset_kind": man.get("dataset_kind"),
           "shape": list(writer.item_shape), "image_shape": list(image_shape),
           "n_train": n, "n_test": 0, "shards": {"train": entries}, "files": files, "sha256": sha,
           "vae": {k: vae_cfg[k] for k in ("path", "scale", "shift", "latent_channels", "factor")},
           "vae_config_sha256": sha256_file(Path(vae_cfg["path"]) / "config.json"),
           "images_sha256": _split_digest(man, "train"), **vae_flops(vae, image_shape, vae_cfg),
           "latent_std": float(np.sqrt(max(0.0, total_sq / count - (total / count) ** 2))),
           "provenance": provenance()}
    write_json(out_manifest, out)
    return out


def _split_digest(man: dict[str, Any], split: str) -> str:
    """One sha256 naming a prepared split: its file's, or (sharded) the hash of its shards' hashes."""
    import hashlib

    if split in man.get("sha256", {}):
        return man["sha256"][split]
    return hashlib.sha256("".join(e["sha256"] for e in man["shards"][split]).encode()).hexdigest()
