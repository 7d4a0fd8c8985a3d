"""Projected FLOPs of a run before it trains, from the counters its training and sampling will use.

Training: the method's own loss runs once per curriculum phase (`Method.pass_phases`) on a meta batch
of the recipe's global batch, under the `TrainingPasses` counter training uses, with stand-in
networks (`StandIn`: the counter counts examples per call, whatever the net computes); the examples
per role times the phase lengths are the run's counts. `training_flops` of those counts with the
per-example costs of `forward_flops` / `fwd_bwd_flops` on the run's real networks built on the meta
device (FlopCounterMode depends on shapes only) is what compute.json will record. Every method's
passes per step depend on the batch size only (ECT's target pass included), so the counts are exact.

Sampling: `sample_flops_per_image` of the forward cost, the method's NFE of each step budget and the
guided forwards per call, plus the VAE decode of latent suites. Evaluation: one pass of every
extractor per sample and library (torch-fidelity, plus clean-fid where the suite cross-checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.compute import TrainingPasses


@dataclass
class RunFlops:
    """What one run will cost in FLOPs (the compute.json / sample json fields it predicts)."""

    run_id: str
    train_images: int
    counts: dict[str, int]
    forward_flops: int
    fwd_bwd_flops: int
    role_forward_flops: dict[str, int]
    train_flops: float  # own, incl. the VAE encoding charged to the root of a chain
    teacher_flops: float | None  # everything upstream (None: an imported teacher, unmeasured)
    nfe: dict[int, int]  # per step budget: the method's sequential network calls
    sample_flops_per_image: dict[int, float]  # per step budget
    eval_flops_per_image: dict[int, float]  # per step budget: extractor passes per sample
    num_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total_flops(self) -> float:
        return self.train_flops + (self.teacher_flops or 0.0)


def model_shape(suite: Any, run: Any) -> tuple[int, ...]:
    """The shape the run's network sees: the dataset's, or its VAE latent shape (what training reads)."""
    from benchmark.validation import dataset_shape

    return tuple(dataset_shape(suite.datasets[run.dataset]))


def build_meta_method(suite: Any, run: Any):
    """(method, online net on meta, teacher net on meta or None, shape) as train_run builds them."""
    from benchmark.nets import build_net
    from benchmark.train_config import TrainConfig
    from methods.base import build_method

    shape = model_shape(suite, run)
    method = build_method(run.method, run.params, total_steps=TrainConfig(**run.train).total_steps, data_shape=shape)
    with torch.device("meta"):
        net = build_net(run.net, shape, method.num_cond, run.num_classes)
        teacher = _meta_teacher(suite, run, shape)
    return method, net, teacher, shape


def _meta_teacher(suite: Any, run: Any, shape: tuple[int, ...]) -> nn.Module | None:
    """The teacher network as `benchmark.runs.load_net_from_ckpt` rebuilds it from the teacher's
    checkpoint: the teacher run's net (its method's time inputs, its classes), or the imported file's."""
    from benchmark.nets import build_net
    from methods.base import method_class

    if run.teacher:
        t = suite.runs[run.teacher]
        net = build_net(t.net, shape, method_class(t.method).num_cond, t.num_classes)
    elif run.teacher_ckpt:
        from benchmark.import_ckpt import _peek_imported  # header only (memory-mapped), checked at validation

        head = _peek_imported(Path(run.teacher_ckpt), run.teacher_sha256)
        net = build_net(head["net_cfg"], tuple(head["data_shape"]), 1, int(head.get("num_classes") or 0))
    else:
        return None
    return net.eval().requires_grad_(False)


def meta_loss(method: Any, net: nn.Module, run: Any, batch: int, shape: tuple[int, ...], step: int) -> torch.Tensor:
    """One training step's per-example loss on a meta batch (labels too for class-conditional runs),
    through the same call `train_step` makes."""
    from benchmark.noise import StepNoise
    from benchmark.train_step import method_loss

    x0 = torch.empty(batch, *shape, device="meta")
    y = torch.zeros(batch, run.num_classes, device="meta") if run.num_classes else None
    return method_loss(method, net, x0, step, StepNoise.on_meta(batch), y)


def phases(method: Any, total_steps: int) -> list[tuple[int, int]]:
    """(first step, length) of each curriculum phase within the run's steps."""
    starts = sorted({s for s in method.pass_phases() if 0 <= s < total_steps} | {0})
    ends = starts[1:] + [total_steps]
    return [(s, e - s) for s, e in zip(starts, ends)]


class StandIn(nn.Module):
    """A stand-in raw network for counting passes: the nets' call signature `net(x, c, labels=None)`,
    an x-shaped output and one parameter (so grad mode and a target copy behave as for a real net).
    The counter sees examples per call, which do not depend on what the network computes."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return x * self.w


def training_counts(suite: Any, run: Any) -> dict[str, int]:
    """Examples per role over the whole run, i.e. `TrainingPasses.counts()` of the finished run: the
    method's loss at the global batch, once per curriculum phase, on meta stand-in networks."""
    from benchmark.train_config import TrainConfig
    from methods.base import build_method

    cfg, shape = TrainConfig(**run.train), model_shape(suite, run)
    method = build_method(run.method, run.params, total_steps=cfg.total_steps, data_shape=shape)
    with torch.device("meta"):
        net = StandIn()
        teacher = StandIn().eval().requires_grad_(False) if method.teacher is not None else None
    method.setup(net, teacher)
    passes = TrainingPasses(net, teacher, method)
    total: dict[str, int] = {}
    try:
        for start, length in phases(method, cfg.total_steps):
            before = passes.counts()
            meta_loss(method, net, run, cfg.batch, shape, start)
            for role, n in passes.counts().items():
                total[role] = total.get(role, 0) + (n - before.get(role, 0)) * length
    finally:
        passes.remove()
    return total


def vae_flops(suite: Any, dataset: str) -> tuple[dict[str, int] | None, str | None]:
    """(encode/decode FLOPs per image, note) of a latent dataset's VAE, measured on the meta device from
    its folder's config.json (diffusers `AutoencoderKL.from_config`, no weights read); (None, reason)
    when the folder is absent, ({}, None) for a pixel-space dataset."""
    spec = suite.datasets[dataset]
    if not spec.get("vae"):
        return {}, None
    from benchmark.latent import vae_flops as measure
    from benchmark.latent import vae_spec
    from benchmark.validation import dataset_shape

    cfg = vae_spec(spec["vae"])
    folder = Path(cfg["path"])
    if not (folder / "config.json").is_file():
        return None, f"VAE FLOPs not counted: {folder}/config.json is absent (the encode/decode cost is unknown)"
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder)))
    image_shape = dataset_shape({k: v for k, v in spec.items() if k != "vae"})
    return measure(vae, image_shape, cfg), None


def inception_flops() -> int:
    """FLOPs per image of torch-fidelity's InceptionV3 feature extractor (the FID network), built on
    the meta device without its weights (its constructor's weight loading is skipped) and run on one
    image, which it resizes to 299 x 299 itself; clean-fid runs the same 2015-12-05 graph."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    from benchmark.compute import count_flops

    cls = tf_inception.FeatureExtractorInceptionV3
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(cls, "load_state_dict", lambda self, *a, **k: None), torch.device("meta"):
        net = cls("inception-v3-compat", ["2048", "logits_unbiased"])
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device="meta")
    return count_flops(lambda: net(x)) // 2


def extractor_flops(name: str, image_shape: tuple[int, ...]) -> int:
    """FLOPs per image of one feature-extraction pass of a metric extractor (benchmark/metrics)."""
    from benchmark.compute import count_flops
    from benchmark.metrics.extractors import get_spec

    spec = get_spec(name)
    if spec.inception_arch:
        return inception_flops()
    with torch.device("meta"):
        net = spec.net()
    x = torch.zeros(2, *(spec.image_shape or image_shape), dtype=torch.uint8, device="meta")
    return count_flops(lambda: net(x)) // 2


def eval_passes(suite: Any, run: Any) -> dict[int, int]:
    """Extraction passes per sample of each step budget: torch-fidelity's, plus clean-fid's where the
    suite cross-checks (`crosscheck: all`, or `first`: the run's first budget, as rules/evaluate.smk
    passes them)."""
    from benchmark.metrics.evaluate import crosschecked

    mode = suite.raw.get("crosscheck", "all")
    return {k: 1 + crosschecked(mode, i) for i, k in enumerate(run.steps)}

