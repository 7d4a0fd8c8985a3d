"""A tiny synthetic suite in the real file formats (results.csv + run directories with sample
npz files and metrics json), for the report tests: 2 methods x 2 datasets (one vector, one
image) x 3 training budgets x 2 seeds x 3 step budgets. Quality follows a known power law in
compute so the scaling fits have something to find."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SUITE = "tiny"
METHODS = {"cd": 4e14, "ect": 0.0}  # method -> teacher FLOPs (cd distils an EDM teacher)
BUDGETS = {"b1": 1e5, "b2": 4e5, "b3": 1.6e6}  # variant -> train images
SEEDS = (0, 1)
STEPS = (1, 2, 4)
FLOPS_PER_IMAGE = 3e9
DATASETS = {
    # dataset -> (kind, resolution, paper_key, {metric: (extractor, library, floor)})
    "gmm": (
        "vector",
        2,
        "",
        {"fd_exact": ("exact", "exact", 0.02), "mode_coverage": ("exact", "exact", None)},
    ),
    "digits": ("image", 8, "cifar10", {"fd_digitnet": ("digitnet", "torch-fidelity", 1.5),
                                        "kid_std_digitnet": ("digitnet", "torch-fidelity", 1e-4)}),
}


def _value(rng: np.random.Generator, metric_floor: float | None, total_flops: float, steps: int) -> float:
    if metric_floor is None:  # higher-is-better coverage in (0, 1]
        return float(np.clip(1 - 0.3 * (total_flops / 1e15) ** -0.3 / steps + rng.normal(0, 0.01), 0, 1))
    law = 50 * metric_floor * (total_flops / 1e14) ** -0.5 / np.sqrt(steps) + metric_floor
    return float(law * np.exp(rng.normal(0, 0.03)))


def make_suite(root: Path) -> dict[str, Path]:
    """Write results/{suite}/results.csv and its run dirs under root (shaped like
    benchmark.aggregate's output, incl. a per-run denoiser row without steps); return the paths."""
    rng = np.random.default_rng(0)
    results_root = root / "results"
    rows = []
    for ds, (kind, res, paper_key, metrics) in DATASETS.items():
        for method, teacher in METHODS.items():
            for variant, images in BUDGETS.items():
                for seed in SEEDS:
                    run = f"{method}-{variant}-s{seed}"
                    run_dir = Path(SUITE) / ds / run
                    d = results_root / run_dir
                    (d / "samples").mkdir(parents=True, exist_ok=True)
                    (d / "metrics").mkdir(exist_ok=True)
                    train_flops = images * FLOPS_PER_IMAGE
                    base = dict(suite=SUITE, dataset=ds, resolution=res, method=method, variant=variant,
                                seed=seed, train_images=images, train_flops=train_flops, teacher_flops=teacher,
                                total_flops=train_flops + teacher, device_hours=images / 1e7,
                                hardware="cpu:test", paper_value=np.nan, config_hash=f"cfg{variant}",
                                git_commit="0123abc", recipe="quick", flags="", run=run, run_dir=str(run_dir),
                                paper_key=paper_key, ref_sha256="ab" * 32)
                    for k in STEPS:
                        if kind == "vector":
                            x = rng.normal(size=(300, 2)).astype(np.float32)
                            x += rng.choice([-3, 3], size=(300, 1)).astype(np.float32)
                        else:
                            x = rng.integers(0, 256, size=(16, res, res, 1), dtype=np.uint8)
                        np.savez(d / "samples" / f"steps{k}.npz", samples=x)
                        mrows = []
                        for metric, (extractor, library, floor) in metrics.items():
                            mode = "exact" if kind == "vector" else "legacy_tensorflow"
                            m = dict(metric=metric, value=_value(rng, floor, train_flops + teacher, k),
                                     extractor=extractor, library=library, mode=mode, num_samples=len(x))
                            mrows.append({**m, "ref_sha256": "ab" * 32, "seed": seed})
                            rows.append({**base, **m, "steps": k, "nfe": k, "sample_flops_per_image": k * 1e8})
                        prov = {"versions": {"torch": "2.x-test", "numpy": "1.x"}}
                        (d / "metrics" / f"steps{k}.json").write_text(json.dumps({"rows": mrows, "provenance": prov}))
                    if kind == "vector":  # error to the exact denoiser: a per-run row with no step budget
                        rows.append({**base, "steps": None, "nfe": None, "sample_flops_per_image": None,
                                     "metric": "denoiser_mse@0.5", "value": _value(rng, 0.01, train_flops, 1),
                                     "extractor": "exact", "library": "exact", "mode": "", "num_samples": 4096})
    csv = results_root / SUITE / "results.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return {"results_csv": csv, "results_root": results_root}
