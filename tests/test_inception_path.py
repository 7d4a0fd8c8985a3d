"""The Inception path end to end, offline: Inception-v3 weight files in the exact formats each
library loads (random values, the real keys and shapes) go into a temp torch hub cache, then
`ref-stats` -> `evaluate` runs through torch-fidelity and clean-fid on 32x32 RGB images.

- torch-fidelity loads `weights-inception-2015-12-05-6726825d.pth`, a state_dict of its own
  `FeatureExtractorInceptionV3` (strict `load_state_dict`, so every key and shape must match);
- clean-fid loads `inception-2015-12-05.pt` with `torch.jit.load` and calls `.layers.forward(x)`
  on (x - 128) / 128 at 299x299 (`cleanfid.inception_torchscript.InceptionV3W`), so the test
  writes a TorchScript module with that interface, carrying the same random weights.

With the same weights the two libraries differ only in how they resize 32 -> 299 (TF1 bilinear
inside the network vs PIL bicubic outside), which bounds how far their FDs may differ.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.errors import AssetError
from benchmark.metrics import fid

TF_BLOCKS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"]


def _random_tf_inception(seed: int = 0) -> nn.Module:
    """torch-fidelity's own Inception-v3 module with He-initialised random weights (its loader
    is bypassed only while building it: nothing is read or downloaded)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as m

    with mock.patch.object(m, "load_state_dict_from_url", lambda *a, **k: {}), \
         mock.patch.object(m.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        net = m.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):  # variance-preserving, so 2048-d features are O(1)
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2 / mod.weight[0].numel()) ** 0.5)
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=g) * 0.01)
    return net.eval()


class _CleanFidInception(nn.Module):
    """The interface clean-fid uses of the NVIDIA TorchScript file: `.layers(x)` -> [B, 2048, 1, 1]
    on normalised 299x299 input, and `forward(x, return_features=True)` on 0..255 images, which
    resizes as that file does: bilinear sampling at TF1's pixel mapping (output pixel i reads input
    coordinate i * in / 299), an affine grid shifted by 1/in - 1/299 with border padding."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.to(torch.float32)
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
        theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
        grid = nn.functional.affine_grid(theta.unsqueeze(0).repeat([b, 1, 1]), [b, c, 299, 299], align_corners=False)
        x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self.layers((x - 128) / 128).flatten(1)


def write_random_inception(checkpoints: Path, seed: int = 0) -> None:
    """Both libraries' weight files, with the same random weights, under the standard names."""
    net = _random_tf_inception(seed)
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), checkpoints / fid.TF_INCEPTION_FILE)
    trunk = nn.Sequential(*(getattr(net, b) for b in TF_BLOCKS)).eval()
    layers = torch.jit.trace(trunk, torch.zeros(2, 3, 299, 299), check_trace=False)
    torch.jit.save(torch.jit.script(_CleanFidInception(layers)), str(checkpoints / fid.CLEANFID_INCEPTION_FILE))


@pytest.fixture(scope="module")
def inception_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    write_random_inception(home / "hub" / "checkpoints")
    return home


@pytest.fixture
def offline(monkeypatch, inception_home):
    """TORCH_HOME at the temp cache; any download attempt fails the test."""
    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(inception_home))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return inception_home


def _smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """n smooth 32x32 RGB images (4x4 random colour grids upsampled): natural-image-like
    spectra, so the two libraries' 32 -> 299 resize filters change little (noise would not be)."""
    from PIL import Image

    grid = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(g).resize((32, 32), Image.Resampling.BICUBIC)) for g in grid])


def _cifar_like(tmp_path: Path) -> Path:
    """A prepared 32x32 RGB dataset (CIFAR-10 python batches through the real prepare code):
    5 train images, 2 test images."""
    import pickle

    from benchmark.data import cifar10
    from benchmark.prepare import prepare_dataset

    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in cifar10.TRAIN_BATCHES + [cifar10.TEST_BATCH]:
        n = 2 if name == cifar10.TEST_BATCH else 1
        data = _smooth_images(rng, n).transpose(0, 3, 1, 2).reshape(n, 3072)
        (d / name).write_bytes(pickle.dumps({b"data": data, b"labels": [0] * n}, protocol=2))
    prepare_dataset("cifar10", {"kind": "cifar10", "path": str(d)}, tmp_path / "data" / "manifest.json",
                    progress=False)
    return tmp_path / "data"


def test_ref_stats_and_evaluate_run_through_both_libraries_as_fid_randominit(offline, tmp_path):
    from benchmark.metrics.evaluate import evaluate_samples
    from benchmark.metrics.refstats import compute_ref_stats, load_ref_stats

    data = _cifar_like(tmp_path)
    ref = tmp_path / "ref_inception_randominit_train.npz"
    compute_ref_stats(data, "inception_randominit", ref)
    st = load_ref_stats(ref)
    assert st["mu"].shape == (2048,) and st["sigma"].shape == (2048, 2048) and st["cleanfid_mu"].shape == (2048,)
    assert st["provenance"]["modes"] == {"torch-fidelity": "legacy_tensorflow", "clean-fid": "legacy_tensorflow"}
    hashes = st["provenance"]["extractor_sha256"]
    assert set(hashes) == {"torch-fidelity", "clean-fid"} and all(len(h) == 64 for h in hashes.values())
    # the same TF1 protocol in both libraries (torch-fidelity's resize vs the TorchScript file's grid
    # sampling at TF1's pixel mapping): the same features up to float rounding
    # (measured: max |mu difference| 1.2e-7 on |mu| up to 1.06)
    np.testing.assert_allclose(st["cleanfid_mu"], st["mu"], rtol=0, atol=1e-5)
    samples = tmp_path / "steps1.npz"  # a clearly different image set: FD well above the resize effect
    np.savez(samples, samples=_smooth_images(np.random.default_rng(1), 4) // 2)  # darker: another distribution
    rows = evaluate_samples(samples, data, tmp_path / "m.json", extractors=["inception_randominit"],
                            refs={"inception_randominit": ref}, seed=0)
    names = {r["metric"] for r in rows}
    assert "fid_randominit" in names and not names & {"fid", "kid", "is", "precision", "recall"}
    fd = {r["library"]: r["value"] for r in rows if r["metric"] == "fid_randominit"}
    assert set(fd) == {"torch-fidelity", "clean-fid"} and all(v > 0 for v in fd.values())
    # measured: 12.903006 vs 12.903007, 6.7e-8 apart (clean-fid's "clean" mode, PIL bicubic outside the
    # net, gave 12.935: 0.25 % away, a different protocol the cross-check at 1e-3 would flag)
    assert abs(fd["torch-fidelity"] - fd["clean-fid"]) / fd["torch-fidelity"] < 1e-5, fd
    assert {r["mode"] for r in rows if r["metric"] == "fid_randominit"} == {"legacy_tensorflow"}
    assert all(r["ref_sha256"] == st["sha256"] for r in rows)


def test_random_weights_under_the_standard_names_are_not_the_standard_inception(offline, tmp_path):
    """The weight-hash check: torch-fidelity's file is named by its sha256 prefix (6726825d), so
    random weights there are refused for `inception` (the name `fid`) and only usable as
    `inception_randominit`."""
    st = fid.inception_weights_status()
    assert st["torch-fidelity"]["present"] and not st["torch-fidelity"]["sha256_ok"]
    assert st["torch-fidelity"]["expected_sha256_prefix"] == "6726825d"
    with pytest.raises(AssetError, match="6726825d") as e:
        fid.require_inception()
    assert "\n" not in str(e.value)
    assert set(fid.require_inception(verify=False)) == {"torch-fidelity", "clean-fid"}
    from benchmark.doctor import doctor

    assert "sha256 MISMATCH" in doctor()


def test_reference_stats_made_under_another_resize_protocol_are_refused_as_stale(offline, tmp_path):
    """Stats computed before clean-fid moved to the papers' TF1 protocol say `"clean-fid": "clean"`:
    one line naming the difference (modes) and the files to delete, never a silent mix."""
    import json

    from benchmark.errors import InputError
    from benchmark.metrics.refstats import compute_ref_stats, ensure_ref_stats

    data = _cifar_like(tmp_path)
    ref = tmp_path / "ref_inception_randominit_train.npz"
    compute_ref_stats(data, "inception_randominit", ref)
    meta = json.loads(ref.with_suffix(".json").read_text())
    meta["modes"]["clean-fid"] = "clean"
    ref.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"stale \(differ in: modes\)"):
        ensure_ref_stats(data, "inception_randominit", ref)
