"""Error of a trained denoiser against the exact Gaussian-mixture denoiser: the one metric on
toy data that isolates training quality from the sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.data.gmm import from_params
from benchmark.diffusion import with_labels
from benchmark.provenance import provenance, write_json
from benchmark.runs import load_trained_for

SIGMAS = (0.02, 0.1, 0.5, 2.0, 10.0)


def evaluate_denoiser(run, ckpt: Path, data_dir: Path, out: Path, n: int = 4000) -> list[dict]:
    from benchmark.metrics.exact import denoiser_mse

    man, m, net = load_trained_for(run, ckpt, data_dir, task="evaluate-denoiser", data="gmm", need="denoiser",
                                   why="only diffusion baselines (edm) have one")
    gmm = from_params(man["params"])
    gen = torch.Generator().manual_seed(run.seed + 7)
    if run.num_classes:  # class-conditional: against the exact class-conditional denoiser
        mse = denoiser_mse(lambda x, s, y: m.denoiser(with_labels(net, y))(x, s), gmm, SIGMAS, n, gen, True)
    else:
        mse = denoiser_mse(m.denoiser(net), gmm, SIGMAS, n, gen)
    rows = [{"metric": f"denoiser_mse_sigma{s:g}", "value": float(v), "extractor": "exact", "num_samples": n,
             "seed": run.seed} for s, v in mse.items()]
    write_json(out, {"rows": rows, "provenance": provenance(seed=run.seed, config_hash=run.config_hash)})
    return rows
