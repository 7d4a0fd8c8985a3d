"""Feature extractors for the fidelity metrics, and how each library reaches them.

The standard one is Inception-v3 (2015-12-05), whose weights torch-fidelity and clean-fid load
themselves (see `fid.py`). Data without usable Inception weights (8x8 digits) gets an offline
extractor: a small classifier trained once on the train split. Offline extractors are
registered with torch-fidelity (`register_feature_extractor`) and handed to clean-fid as a
`custom_feat_extractor`, so both libraries run their own metric code on the same network
(DESIGN §5). Add another offline extractor by writing its nn.Module (forward(uint8 or 0..255
float NCHW) -> (features, logits)) and one `ExtractorSpec` entry in `EXTRACTORS`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.errors import AssetError, InputError


class DigitNet(nn.Module):
    """A small CNN classifier for 8x8x1 digits; its 64-d penultimate layer is the feature.

    Input: uint8 NCHW, or float NCHW on the same 0..255 scale (clean-fid hands floats); the net
    normalises itself so no caller can feed it a differently scaled image. The feature is taken
    before the ReLU so it is not half zeros (its covariance is full rank, which FD needs) and
    after a non-affine BatchNorm, so in eval mode each dimension is standardised on the training
    data: FD is in units of the data's own spread and KID's cubic kernel (x.y/d + 1)^3 stays O(1)."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
        )
        self.feature = nn.Sequential(nn.Linear(64 * 4 * 4, self.feature_dim),
                                     nn.BatchNorm1d(self.feature_dim, affine=False))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(self.feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"DigitNet expects [B, 1, 8, 8] images, got {tuple(x.shape)}")
        x = x.float() / 127.5 - 1  # 0..255 -> [-1, 1]
        f = self.feature(self.body(x))
        return f, self.head(f)


@dataclass(frozen=True)
class ExtractorSpec:
    """What the metric code needs to know about one extractor."""

    name: str  # our name; metric names are fd_<name>, kid_<name>, ... (plain fid/kid for inception)
    tf_name: str  # name in torch-fidelity's registry
    channels: int  # input channels the network takes (grey images are repeated to 3 for RGB nets)
    layer_fd: str  # torch-fidelity feature used for FD, KID and precision/recall
    layer_is: str | None  # logits for the Inception Score (None: no IS)
    standard_inception: bool = False  # only then may a number be called "fid"
    inception_arch: bool = False  # runs each library's own Inception-v3 from the standard file names
    net: type[nn.Module] | None = None  # offline extractors: the module class
    image_shape: tuple[int, int, int] | None = None  # offline: the only [C, H, W] accepted (no resizing)


EXTRACTORS: dict[str, ExtractorSpec] = {
    "inception": ExtractorSpec("inception", "inception-v3-compat", 3, "2048", "logits_unbiased",
                               standard_inception=True, inception_arch=True),
    # The Inception path with whatever weights sit under the standard file names, hash unchecked
    # (recorded): exercises both libraries' Inception code end to end (tests, machines without the
    # real weights). Its numbers are `fid_randominit`, `kid_randominit`, ...: never `fid`.
    "inception_randominit": ExtractorSpec("inception_randominit", "inception-v3-compat", 3, "2048",
                                          "logits_unbiased", inception_arch=True),
    "digitnet": ExtractorSpec("digitnet", "digitnet", 1, "feat", "logits", net=DigitNet,
                              image_shape=(1, 8, 8)),
}


def get_spec(name: str) -> ExtractorSpec:
    if name not in EXTRACTORS:
        raise InputError(f"unknown feature extractor '{name}'",
                         f"use one of: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name]


def metric_name(base: str, extractor: str) -> str:
    """fid/kid/is/precision/recall for the standard Inception only; `fid_randominit`, ... for the
    Inception path on unverified weights; `<base>_<extractor>` otherwise (fd_digitnet, ...)."""
    spec = get_spec(extractor)
    if spec.standard_inception:
        return {"fd": "fid"}.get(base, base)
    if spec.inception_arch:
        return f"{ {'fd': 'fid'}.get(base, base)}_randominit"
    return f"{base}_{extractor}"


def check_fits(name: str, data_shape: tuple[int, ...], dataset: str = "the dataset") -> None:
    """Refuse, at `validate` time, an extractor that cannot take the dataset's images (digitnet
    on 32x32 RGB): one line, before any training. Inception takes any image size (it resizes)."""
    from benchmark.errors import ConfigError

    spec = get_spec(name)
    if len(data_shape) != 3:
        raise ConfigError(f"extractor '{name}' needs images, but {dataset} holds vectors of shape {list(data_shape)}",
                          "remove `extractors:` from vector datasets (they get exact metrics)")
    if spec.image_shape is not None and tuple(data_shape) != spec.image_shape:
        raise ConfigError(f"extractor '{name}' takes {list(spec.image_shape)} images, {dataset} has "
                          f"{list(data_shape)}", f"use `extractors: [inception]` for {dataset}")
    if data_shape[0] not in (1, spec.channels):
        raise ConfigError(f"extractor '{name}' takes {spec.channels}-channel images, {dataset} has "
                          f"{data_shape[0]}", "use an extractor for this image format")


def load_offline_net(name: str, weights_path: str | Path | None) -> nn.Module:
    """The offline extractor `name` with its trained weights, in eval mode, gradients off."""
    spec = get_spec(name)
    if spec.net is None:
        raise InputError(f"'{name}' is not an offline extractor", "offline extractors: "
                         + ", ".join(n for n, s in EXTRACTORS.items() if s.net is not None))
    if weights_path is None or not Path(weights_path).exists():
        raise AssetError(f"weights of feature extractor '{name}' not found: {weights_path}",
                         f"train it first (rule `extractor`, benchmark.metrics.extractors.train_{name})")
    net = spec.net()
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------- torch-fidelity side

@functools.cache
def torch_fidelity_class():
    """A torch-fidelity FeatureExtractor subclass serving every offline extractor by name
    (torch-fidelity instantiates `cls(name, features_list, **kwargs)`; the weights come in its
    standard `feature_extractor_weights_path` kwarg). Built on first use so importing this
    module does not import torch-fidelity."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class OfflineFeatureExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.net = load_offline_net(name, feature_extractor_weights_path)
            self.spec = get_spec(name)

        @staticmethod
        def get_provided_features_list():
            return "feat", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError

        def forward(self, x):
            if tuple(x.shape[1:]) != self.spec.image_shape:  # never resized: refuse, don't guess
                raise ValueError(f"{self.name} takes {self.spec.image_shape} images, "
                                 f"got {tuple(x.shape[1:])}")
            feat, logits = self.net(x)
            out = {"feat": feat.float(), "logits": logits.float()}
            return tuple(out[k] for k in self.features_list)

    return OfflineFeatureExtractor


def register_with_torch_fidelity() -> None:
    """Register every offline extractor with torch-fidelity (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    for spec in EXTRACTORS.values():
        if spec.net is not None and spec.tf_name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(spec.tf_name, torch_fidelity_class())


# ---------------------------------------------------------------- clean-fid side

def cleanfid_feature_fn(name: str, weights_path: str | Path | None,
                        device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A clean-fid `custom_feat_extractor` for offline extractor `name`: clean-fid calls it on
    float NCHW batches in 0..255 and expects the FD feature back."""
    net = load_offline_net(name, weights_path).to(device)

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x.to(device))[0].float()

    return fn


# ---------------------------------------------------------------- training digitnet

def train_digitnet(data_dir: str | Path, out_path: str | Path, seed: int = 0, epochs: int = 15,
                   batch: int = 64, lr: float = 2e-3, min_accuracy: float = 0.95) -> dict:
    """Train DigitNet on the digits `train` split, check it on `test`, write weights + json.

    The held-out accuracy is the evidence that the features mean something; below
    `min_accuracy` nothing is written and an AssetError is raised. Deterministic for a seed on
    CPU. Writes `out_path` (state_dict, atomically) and `out_path.with_suffix('.json')`
    (accuracy, sha256, seconds)."""
    from benchmark.data import load_labels, load_split
    from benchmark.provenance import atomic_path, provenance, sha256_file, write_json

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(load_split(data_dir, "train"))).permute(0, 3, 1, 2).contiguous()
    xt = torch.from_numpy(np.asarray(load_split(data_dir, "test"))).permute(0, 3, 1, 2).contiguous()
    y, yt = (load_labels(data_dir, s) for s in ("train", "test"))
    if y is None or yt is None:
        raise AssetError(f"digitnet needs class labels, but {data_dir} has none", "use the digits dataset")
    y, yt = torch.from_numpy(y).long(), torch.from_numpy(yt).long()
    net = DigitNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * ((len(x) + batch - 1) // batch))
    t0 = time.perf_counter()
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.cross_entropy(net(x[idx])[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xt)[1].argmax(1) == yt).double().mean())
    seconds = time.perf_counter() - t0
    if acc < min_accuracy:
        raise AssetError(f"digitnet reached only {acc:.3f} held-out accuracy (< {min_accuracy})",
                         "train longer (epochs=) or check the digits split")
    with atomic_path(out_path) as tmp:
        torch.save(net.state_dict(), tmp)
    info = {"extractor": "digitnet", "test_accuracy": acc, "n_train": len(x), "n_test": len(xt),
            "epochs": epochs, "seed": seed, "seconds": seconds, "sha256": sha256_file(out_path),
            "provenance": provenance(data_dir=str(data_dir))}
    write_json(Path(out_path).with_suffix(".json"), info)
    return info


def extractor_sha256(name: str, weights_path: str | Path | None) -> str:
    """sha256 of an offline extractor's weights ('' for library-managed nets like inception)."""
    from benchmark.provenance import sha256_file

    if get_spec(name).net is None or weights_path is None:
        return ""
    return sha256_file(weights_path)


def as_extractor_input(images_u8_nhwc: np.ndarray, name: str) -> np.ndarray:
    """Stored uint8 NHWC images -> what extractor `name` takes: same pixels, channels matched
    (grey repeated to RGB for Inception); offline extractors must get their native size."""
    spec = get_spec(name)
    a = np.asarray(images_u8_nhwc)
    if a.dtype != np.uint8 or a.ndim != 4:
        raise InputError(f"expected uint8 NHWC images, got {a.dtype} {a.shape}",
                         "pass the `samples` array of a sample shard")
    if a.shape[3] == 1 and spec.channels == 3:
        a = np.repeat(a, 3, axis=3)
    if spec.image_shape is not None and (a.shape[3], a.shape[1], a.shape[2]) != spec.image_shape:
        raise InputError(f"extractor '{name}' takes {spec.image_shape} images, got HWC {a.shape[1:]}",
                         f"use an extractor trained for this resolution, not '{name}'")
    if a.shape[3] != spec.channels:
        raise InputError(f"extractor '{name}' takes {spec.channels} channels, got {a.shape[3]}", "")
    return a


def read_extractor_info(weights_path: str | Path) -> dict:
    p = Path(weights_path).with_suffix(".json")
    return json.loads(p.read_text()) if p.exists() else {}
