"""Loading and seeding a run: the per-step seed every random draw is derived from, and the
finished run's network, method and compute.json that training (teachers), sampling, editing and
denoiser evaluation all start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from benchmark.train_config import TrainConfig


def step_seed(seed: int, step: int) -> int:
    """A per-step seed (splitmix-style mix) so that draws depend only on (seed, step)."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 63)
    z ^= z >> 31
    return z % (1 << 63)


def load_net_from_ckpt(ckpt: dict[str, Any], which: str = "ema") -> nn.Module:
    """Rebuild the network a checkpoint was trained with and load its (EMA) weights."""
    from benchmark.nets import build_net

    net = build_net(ckpt["net_cfg"], tuple(ckpt["data_shape"]), int(ckpt["num_cond"]),
                    int(ckpt.get("num_classes", 0)))
    net.load_state_dict(ckpt[which])
    return net.eval().requires_grad_(False)


def compute_json_path(ckpt_path) -> Path:
    """A run's compute.json (FLOPs, device-hours, teacher chain) beside its ckpt/ directory."""
    return Path(ckpt_path).parent.parent / "compute.json"


def load_trained(run, ckpt_path, device: str = "cpu"):
    """A finished run's method (built from its config) and its EMA network in eval mode, plus the
    checkpoint dict: what sampling, editing and denoiser evaluation all start from."""
    from benchmark import checkpoint
    from methods.base import build_method

    state = checkpoint.load(ckpt_path)
    checkpoint.check_owner(state, run, ckpt_path)  # never sample another run's/config's model
    net = load_net_from_ckpt(state, "ema").to(device)
    method = build_method(run.method, run.params, total_steps=TrainConfig(**run.train).total_steps,
                          data_shape=tuple(state["data_shape"]))
    return method, net, state


def load_trained_for(run, ckpt_path, data_dir, *, task: str, data: str, need: str, why: str):
    """`load_trained` for a step (`task`) that needs `data` data (a manifest kind such as 'image' or a
    dataset kind such as 'gmm') and a method with the attribute `need`; `why` is the fix when the
    method lacks it. Both checks are one-line `ConfigError`s. Returns (manifest, method, net)."""
    from benchmark.data import load_manifest
    from benchmark.errors import ConfigError

    man = load_manifest(data_dir)
    if data not in (man["kind"], man.get("dataset_kind")):
        article = "an" if data[0] in "aeiou" else "a"
        raise ConfigError(f"{task} needs {data} data, '{man['name']}' is {man.get('dataset_kind')} ({man['kind']})",
                          f"use {article} {data} dataset")
    method, net, _ = load_trained(run, ckpt_path)
    if not hasattr(method, need):
        raise ConfigError(f"method '{run.method}' has no {need}", why)
    return man, method, net
