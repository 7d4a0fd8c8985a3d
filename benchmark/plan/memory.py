"""Projected peak memory per device of a training job: what train_run holds, term by term.

- weights: the online net in fp32 (bf16 autocast keeps fp32 master weights, benchmark/precision.py);
- gradients: one fp32 tensor per trainable parameter;
- optimizer: Adam / RAdam keep exp_avg and exp_avg_sq, 2 x fp32 per parameter (torch.optim);
- EMA: train_run's deepcopy of the net, fp32;
- method nets: every other network a step evaluates (CM's target EMA, the frozen teacher), fp32;
- DDP (world > 1) adds nothing: with `gradient_as_bucket_view` (benchmark/engine.py) the gradients
  are views into its all-reduce buckets, so the buckets are the gradient term;
- activations: the bytes autograd saves for backward in one step of the method's own loss at the
  per-device micro-batch, measured with `torch.autograd.graph.saved_tensors_hooks` on meta tensors
  (unique storages, the parameters excluded); halved under bf16 autocast (saved inputs of matmuls and
  convolutions are bf16 there);
- data: a prepared split up to 1 GiB is held converted to float32 on the training device
  (`train_data.IN_MEMORY_BYTES`), larger ones are streamed per batch.

FSDP (`distributed.engine: fsdp`) shards weights, gradients, optimizer state and EMA over the ranks and
adds one gathered copy of the largest block (`engine.blocks`: the units benchmark/engine.py wraps and
all-gathers one at a time); teacher and target nets are counted unsharded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

FP32 = 4
KNOWN_TRAIN_SIZES = {  # training images of the real datasets (their loaders read every one)
    "cifar10": 50_000,  # CIFAR-10 train split (Krizhevsky 2009)
    "imagenet64": 1_281_167, "imagenet128": 1_281_167, "imagenet256": 1_281_167,  # ILSVRC2012 train
    "lsun256": 3_033_042,  # LSUN bedroom train (Yu et al. 2015); other categories differ
}


@dataclass
class Memory:
    """Bytes per device, by term (the plan prints the total and the terms)."""

    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.terms.values()))


def params_of(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def saved_activation_bytes(fn, modules: list[nn.Module]) -> int:
    """Bytes of the tensors autograd saves while `fn()` runs: each storage once (keyed by its C
    pointer, which also tells meta storages apart), those of the `modules`' parameters and buffers
    (the weight terms) excluded."""
    own = {t.untyped_storage()._cdata for m in modules for t in (*m.parameters(), *m.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st._cdata not in own:
            seen.setdefault(st._cdata, st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


def largest_block(net: nn.Module) -> int:
    """Parameters of the largest block FSDP gathers at once (`engine.blocks`, the units `engine.shard`
    wraps); the whole net if it has none (then only the root is wrapped)."""
    from benchmark.engine import blocks

    return max((params_of(b) for b in blocks(net)), default=params_of(net))


def dataset_train_size(spec: dict[str, Any]) -> int | None:
    """Training items of a dataset spec, from the config alone (None where it depends on files)."""
    kind = spec["kind"]
    if kind == "gmm":
        return int(spec.get("n_train", 20000))  # benchmark/data/gmm.py's default
    if kind == "digits":
        return 1797 - round(1797 * float(spec.get("test_fraction", 0.2)))  # sklearn's 1797 scans, seeded split
    n = KNOWN_TRAIN_SIZES.get(kind) if kind != "lsun256" or spec.get("category", "bedroom") == "bedroom" else None
    if n is not None and spec.get("max_images"):
        n = min(n, int(spec["max_images"]))
    return n


def resident_data_bytes(spec: dict[str, Any], shape: tuple[int, ...]) -> float:
    """Device bytes of the training set when train_run holds it whole (float32), else 0 (streamed)."""
    from benchmark.train_data import IN_MEMORY_BYTES

    n = dataset_train_size(spec)
    if n is None:
        return 0.0
    item = 1
    for s in shape:
        item *= s
    stored = n * item * (4 if spec.get("vae") or spec["kind"] == "gmm" else 1)  # latents/vectors float32, images uint8
    return float(n * item * FP32) if stored <= IN_MEMORY_BYTES else 0.0


def training_memory(nets: dict[str, nn.Module], activations: float, *, world: int, engine: str,
                    bf16: bool, data: float, optimizer_slots: int = 2) -> Memory:
    """Peak bytes per device of a training job (module docstring): `nets` are the roles of
    `compute.method_networks` (online first), `activations` the saved bytes at the micro-batch in fp32."""
    net = nets["online"]
    p = params_of(net)
    shard = world if engine == "fsdp" else 1
    terms = {
        "weights": FP32 * p / shard,
        "gradients": FP32 * p / shard,
        "optimizer": optimizer_slots * FP32 * p / shard,
        "ema": FP32 * p / shard,
        "method nets": float(sum(FP32 * params_of(m) for role, m in nets.items() if role != "online")),
        "activations": activations * (0.5 if bf16 else 1.0),
        "data": data,
    }
    if engine == "fsdp" and world > 1:
        terms["gathered block"] = FP32 * largest_block(net)
    return Memory(terms)
