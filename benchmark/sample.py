"""Batched sampling of a trained run at one step budget into a sample shard plus its
accounting (NFE counted, FLOPs per image, seconds). The noise depends only on (seed, index),
so every step budget of a run starts from the same noise (common random numbers) and the
same seed always gives the same samples."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark.data import to_storage
from benchmark.errors import ConfigError
from benchmark.provenance import clean_temp, hardware, provenance, save_npz, sha256_file, write_json
from benchmark.train import PassCounter, compute_json_path, load_trained, step_seed


def noise_batch(seed: int, start: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise for samples [start, start+n): a pure function of (seed, start)."""
    g = torch.Generator().manual_seed(step_seed(seed, 10_000_000 + start))
    return torch.randn((n, *shape), generator=g)


def _forward_flops(net, shape: tuple[int, ...], num_cond: int, ckpt_path: Path) -> int:
    """FLOPs per forward, measured once per network at training time (DESIGN §6) and read from the
    run's compute.json; measured here only when that file is absent (the first FlopCounterMode use
    costs seconds of imports, which dominated small sampling jobs)."""
    from benchmark.compute import forward_flops
    from benchmark.provenance import read_json

    comp = compute_json_path(ckpt_path)
    if comp.is_file():
        # a corrupt file: one line, not a traceback; compute.json is rewritten with the checkpoint
        data = read_json(comp, "train", fix=f"delete {ckpt_path} and re-run (training rewrites both)")
        fwd = data.get("forward_flops_per_example") if isinstance(data, dict) else None
        if isinstance(fwd, (int, float)) and fwd > 0:
            return int(fwd)
    return forward_flops(net, shape, num_cond)


def sample_run(run, ckpt_path: Path, steps: int, out: Path, *, num_samples: int, batch: int,
               seed: int | None = None, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    out = Path(out)
    clean_temp(out.parent)
    if num_samples < 2:
        raise ConfigError(f"num_samples={num_samples} is too small", "use at least 2 samples")
    if batch < 1:
        raise ConfigError(f"sample batch {batch} is invalid", "use a batch of at least 1")
    seed = run.seed if seed is None else seed
    method, net, state = load_trained(run, ckpt_path, device)
    shape = tuple(state["data_shape"])
    method.check_steps(steps)
    image = len(shape) == 3
    counter = PassCounter(net)
    chunks: list[np.ndarray] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in tqdm(range(0, num_samples, batch), disable=not progress, desc=f"{run.name} k={steps}"):
            n = min(batch, num_samples - start)
            calls_before = counter.calls
            torch.manual_seed(step_seed(seed, 20_000_000 + start))  # fresh noise of multistep samplers
            x = method.sample(net, noise_batch(seed, start, n, shape).to(device), steps)
            calls = counter.calls - calls_before
            if calls != method.nfe(steps):
                raise RuntimeError(f"{run.name}: nfe({steps}) = {method.nfe(steps)} but the sampler made {calls} "
                                   "network calls per batch; the method's nfe() is wrong")
            if not torch.isfinite(x).all():
                raise ConfigError(f"{run.name}: non-finite samples at {steps} steps",
                                  "the model diverged; retrain with a lower learning rate")
            chunks.append(to_storage(x, image))
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    counter.remove()
    samples = np.concatenate(chunks)
    fwd = _forward_flops(net, shape, method.num_cond, Path(ckpt_path))
    info = {"run": run.name, "method": run.method, "steps": steps, "nfe": method.nfe(steps),
            "nfe_counted": (counter.nograd_examples + counter.grad_examples) / num_samples,
            "num_samples": num_samples, "seed": seed, "forward_flops_per_example": fwd,
            "sample_flops_per_image": fwd * (counter.nograd_examples + counter.grad_examples) / num_samples,
            "seconds": seconds, "images_per_second": num_samples / max(seconds, 1e-9), "hardware": hardware(),
            "ckpt_sha256": sha256_file(ckpt_path), "config_hash": run.config_hash,
            "dtype": str(samples.dtype), "shape": list(samples.shape),
            "provenance": provenance(seed=seed, config_hash=run.config_hash)}
    write_json(out.with_suffix(".json"), info, sidecar=True)
    save_npz(out, sidecar=True, samples=samples)  # last: the .npz is the rule's marker output
    return info
