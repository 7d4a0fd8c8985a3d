"""Offline feature extractors: DigitNet reads uint8 and 0..255 floats alike, is reachable by name
through torch-fidelity, and is never fed resized images. (Its training to >= 95 % held-out
accuracy is checked in test_metrics_fidelity.py, which trains it once for all its tests.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.errors import AssetError, InputError
from benchmark.metrics.extractors import (
    DigitNet,
    as_extractor_input,
    load_offline_net,
    register_with_torch_fidelity,
)


def write_prepared(out_dir: Path, kind: str, params: dict) -> Path:
    """A prepared dataset directory in the docs/internals.md format (arrays + manifest.json)."""
    from benchmark.data import prepare_fn
    from benchmark.provenance import sha256_file

    out_dir.mkdir(parents=True, exist_ok=True)
    prep = prepare_fn(kind)(params)
    files, sha = {}, {}
    for k, v in prep.items():
        if isinstance(v, np.ndarray):
            np.save(out_dir / f"{k}.npy", v)
            files[k], sha[k] = f"{k}.npy", sha256_file(out_dir / f"{k}.npy")
    man = {"name": kind, "kind": prep["kind"], "shape": prep["shape"], "n_train": len(prep["train"]),
           "n_test": len(prep["test"]), "params": params, "files": files, "sha256": sha, "provenance": {}}
    (out_dir / "manifest.json").write_text(json.dumps(man))
    return out_dir


def test_digitnet_reads_uint8_and_0_255_floats_identically():
    torch.manual_seed(0)
    net = DigitNet().eval()
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    f_u8, l_u8 = net(x)
    f_fl, l_fl = net(x.float())
    assert f_u8.shape == (5, DigitNet.feature_dim)
    torch.testing.assert_close(f_u8, f_fl)
    torch.testing.assert_close(l_u8, l_fl)


def test_digitnet_is_a_registered_torch_fidelity_extractor(tmp_path):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    register_with_torch_fidelity()
    register_with_torch_fidelity()  # idempotent
    assert "digitnet" in FEATURE_EXTRACTORS_REGISTRY
    torch.manual_seed(0)
    ref = DigitNet().eval()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    fe = create_feature_extractor("digitnet", ["feat", "logits"], cuda=False, verbose=False,
                                  feature_extractor_weights_path=str(tmp_path / "w.pt"))
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    feats = fe.convert_features_tuple_to_dict(fe(x))
    torch.testing.assert_close(feats["feat"], ref(x)[0])
    with pytest.raises(ValueError, match="takes"):
        fe(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))  # never silently resized


def test_wrong_resolution_or_dtype_is_refused_before_extraction():
    with pytest.raises(InputError, match="digitnet"):
        as_extractor_input(np.zeros((3, 16, 16, 1), np.uint8), "digitnet")
    with pytest.raises(InputError, match="uint8"):
        as_extractor_input(np.zeros((3, 8, 8, 1), np.float32), "digitnet")
    assert as_extractor_input(np.zeros((3, 8, 8, 1), np.uint8), "inception").shape == (3, 8, 8, 3)


def test_missing_extractor_weights_is_an_asset_error(tmp_path):
    with pytest.raises(AssetError, match="train it first"):
        load_offline_net("digitnet", tmp_path / "absent.pt")


def test_an_extractor_that_cannot_read_the_dataset_fails_at_validate_time(tmp_path):
    """digitnet on 32x32 RGB is refused by `load_suite` (hence `validate` and the Snakefile),
    in one line, before any training; inception takes any image size."""
    import yaml

    from benchmark.config import load_suite
    from benchmark.errors import ConfigError
    from benchmark.metrics.extractors import check_fits

    exp = {"method": "edm", "dataset": "c", "variant": "v", "net": {"type": "unet"},
           "train": {"images": 10, "batch": 2, "lr": 0.001}, "steps": [1]}
    suite = {"name": "bad", "datasets": {"c": {"kind": "cifar10", "path": "cifar10", "extractors": ["digitnet"]}},
             "experiments": [exp]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError) as e:
        load_suite(tmp_path / "s.yaml")
    assert "\n" not in str(e.value) and "digitnet" in str(e.value) and "[3, 32, 32]" in str(e.value)
    check_fits("inception", (3, 32, 32))
    check_fits("inception", (1, 8, 8))  # grey is repeated to RGB
    check_fits("digitnet", (1, 8, 8))
    with pytest.raises(ConfigError, match="vectors"):
        check_fits("digitnet", (2,))


def test_editing_panel_uses_a_test_split_smaller_than_the_panel(tmp_path, monkeypatch):
    """A real dataset's held-out split may hold fewer than 8 images: the panel shows what is there."""
    import benchmark.runs
    from benchmark.editing import edit_panel
    from benchmark.prepare import prepare_dataset

    spec = {"kind": "digits", "test_fraction": 0.002}  # 4 test images
    prepare_dataset("digits", spec, tmp_path / "d" / "manifest.json", progress=False)

    class Ident:
        def consistency_fn(self, net):
            return lambda x, sigma: x.clamp(-1, 1) * 0.5

    monkeypatch.setattr(benchmark.runs, "load_trained", lambda run, ckpt: (Ident(), None, None))
    run = type("R", (), {"name": "digits/ect-x-s0", "method": "ect"})()
    err = edit_panel(run, tmp_path / "unused.pt", tmp_path / "d", tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 0 and np.isfinite(list(err.values())).all()
