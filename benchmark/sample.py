"""Batched sampling of a trained run at one step budget into a sample shard plus its
accounting (NFE counted, FLOPs per image, seconds). The noise depends only on (seed, index),
so every step budget of a run starts from the same noise (common random numbers) and the
same seed always gives the same samples.

Class-conditional runs sample class-balanced labels (N/K per class, as the papers evaluate FID/IS),
shuffled by the seed and the same for every step budget, with the run's classifier-free guidance
scale; the shard keeps them (`labels`), and a guided step's two forwards are counted and charged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark.compute import PassCounter
from benchmark.data import to_storage
from benchmark.errors import ConfigError
from benchmark.labels import one_hot
from benchmark.provenance import clean_temp, hardware, provenance, save_npz, sha256_file, write_json
from benchmark.runs import compute_json_path, load_trained, step_seed


def noise_batch(seed: int, start: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise for samples [start, start+n): a pure function of (seed, start)."""
    g = torch.Generator().manual_seed(step_seed(seed, 10_000_000 + start))
    return torch.randn((n, *shape), generator=g)


def balanced_labels(seed: int, n: int, num_classes: int) -> torch.Tensor:
    """n class labels, each class n/K times (the first n mod K classes once more), in a seeded order."""
    g = torch.Generator().manual_seed(step_seed(seed, 30_000_000))
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]


def _conditioning(run, state: dict[str, Any], seed: int, num_samples: int):
    """(num_classes, class-balanced labels or None, forwards per network call) of a run's checkpoint."""
    from benchmark.compute import forwards_per_step

    num_classes = int(state.get("num_classes", 0))
    if (run.conditioning == "class") != (num_classes > 0):
        raise ConfigError(f"{run.name}: conditioning '{run.conditioning}' but the checkpoint has "
                          f"{num_classes} classes", "retrain the run (its checkpoint predates the setting)")
    labels = balanced_labels(seed, num_samples, num_classes) if num_classes else None
    return num_classes, labels, forwards_per_step(run.guidance, labels is not None)


def _decoder(state: dict[str, Any], device: str):
    """(latents -> images, decode FLOPs per image) for a latent-space checkpoint; (None, 0) otherwise."""
    lat = state.get("latent")
    if not lat:
        return None, 0
    from benchmark.latent import decode, load_vae

    vae = load_vae(lat["vae"]["path"], device)
    scale, shift = float(lat["vae"]["scale"]), float(lat["vae"]["shift"])
    return (lambda z: decode(vae, z, scale, shift)), int(lat["decode_flops_per_image"])


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


def _check_sample_sizes(num_samples: int, batch: int) -> None:
    """One-line errors for sizes no sampler can use (before a checkpoint is loaded)."""
    if num_samples < 2:
        raise ConfigError(f"num_samples={num_samples} is too small", "use at least 2 samples")
    if batch < 1:
        raise ConfigError(f"sample batch {batch} is invalid", "use a batch of at least 1")


def _counted_sample(run, method, net, counter: PassCounter, noise: torch.Tensor, steps: int, y: torch.Tensor | None,
                    forwards: int) -> torch.Tensor:
    """One batch of samples, checked: the network calls the counter saw must equal the method's
    nfe(steps) x forwards per step (the FLOPs of sample.json rely on it), and samples must be finite."""
    n = len(noise)
    calls_before = counter.calls
    examples_before = counter.nograd_examples + counter.grad_examples
    x = method.sample(net, noise, steps, labels=y, guidance=run.guidance)
    calls = counter.calls - calls_before
    examples = counter.nograd_examples + counter.grad_examples - examples_before
    if calls != method.nfe(steps) or examples != n * calls * forwards:
        raise RuntimeError(f"{run.name}: nfe({steps}) = {method.nfe(steps)} x {forwards} forward(s) but "
                           f"the sampler made {calls} calls of {examples} examples for {n} samples")
    if not torch.isfinite(x).all():
        raise ConfigError(f"{run.name}: non-finite samples at {steps} steps",
                          "the model diverged; retrain with a lower learning rate")
    return x


def sample_run(run, ckpt_path: Path, steps: int, out: Path, *, num_samples: int, batch: int,
               seed: int | None = None, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Sample `num_samples` of a trained run at `steps` into `out` (.npz, then its .json record of
    NFE, FLOPs and seconds); under torchrun the batches are split over ranks and rank 0 writes."""
    from benchmark import distributed as D

    dist = D.init(device)  # under torchrun: each rank samples a contiguous block of batches, rank 0 writes
    device = dist.device
    out = Path(out)
    if dist.is_main:
        clean_temp(out.parent)
    _check_sample_sizes(num_samples, batch)
    seed = run.seed if seed is None else seed
    method, net, state = load_trained(run, ckpt_path, device)
    shape = tuple(state["data_shape"])
    method.check_steps(steps)
    decode, decode_flops = _decoder(state, device)
    image = len(shape) == 3
    num_classes, labels, forwards = _conditioning(run, state, seed, num_samples)
    counter = PassCounter(net)
    chunks: list[np.ndarray] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in tqdm(D.my_batches(num_samples, batch, dist), disable=not progress, desc=f"{run.name} k={steps}"):
            n = min(batch, num_samples - start)
            torch.manual_seed(step_seed(seed, 20_000_000 + start))  # fresh noise of multistep samplers
            y = None if labels is None else one_hot(labels[start:start + n], num_classes).to(device)
            x = _counted_sample(run, method, net, counter, noise_batch(seed, start, n, shape).to(device), steps, y,
                                forwards)
            chunks.append(to_storage(x if decode is None else decode(x), image))
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    chunks, (counter.grad_examples, counter.nograd_examples) = D.gather_in_order(
        dist, chunks, [counter.grad_examples, counter.nograd_examples])
    seconds = time.perf_counter() - t0
    counter.remove()
    if not dist.is_main:
        return {}
    samples = np.concatenate(chunks)
    fwd = _forward_flops(net, shape, method.num_cond, Path(ckpt_path))
    from benchmark.compute import sample_flops_per_image

    nfe = method.nfe(steps)
    info = {"run": run.name, "method": run.method, "steps": steps, "nfe": nfe,
            "nfe_counted": (counter.nograd_examples + counter.grad_examples) / num_samples,
            "conditioning": run.conditioning, "num_classes": num_classes, "guidance": run.guidance,
            "forwards_per_step": forwards, "nfe_guided": nfe * forwards,
            "num_samples": num_samples, "seed": seed, "forward_flops_per_example": fwd,
            "sample_flops_per_image": sample_flops_per_image(fwd, nfe, forwards) + decode_flops,
            "vae_decode_flops_per_image": decode_flops,
            "seconds": seconds, "images_per_second": num_samples / max(seconds, 1e-9), "hardware": hardware(),
            "ckpt_sha256": sha256_file(ckpt_path), "config_hash": run.config_hash,
            "dtype": str(samples.dtype), "shape": list(samples.shape),
            "provenance": provenance(seed=seed, config_hash=run.config_hash)}
    write_json(out.with_suffix(".json"), info, sidecar=True)
    extra = {} if labels is None else {"labels": labels.numpy()}
    save_npz(out, sidecar=True, samples=samples, **extra)  # last: the .npz is the rule's marker output
    return info
