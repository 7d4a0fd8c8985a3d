"""Latent space (issue 15): a tiny randomly initialised AutoencoderKL saved to disk stands in for
SD's VAE; images are encoded once, a method trains on the latents, and samples are decoded back to
images, with the VAE's FLOPs charged. Nothing is downloaded."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, write_suite

from benchmark.errors import ConfigError, DatasetError

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

VAE = {"scale": 0.5, "shift": 0.1, "latent_channels": 4, "factor": 2}


def tiny_vae(path, in_channels: int = 1):
    """Two encoder levels (one downsampling: factor 2), 4 latent channels, random weights."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=in_channels, out_channels=in_channels, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  layers_per_block=1, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(path)
    return vae.eval()


def test_encode_and_decode_round_trip_shapes_and_scaling(tmp_path):
    from benchmark.latent import decode, encode, latent_shape, load_vae, vae_flops

    ref = tiny_vae(tmp_path / "vae")
    vae = load_vae(tmp_path / "vae")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    z = encode(vae, x, VAE["scale"], VAE["shift"])
    assert z.shape == (3, *latent_shape((1, 8, 8), VAE)) == (3, 4, 4, 4)
    with torch.no_grad():
        mean = ref.encode(x).latent_dist.mean
        torch.testing.assert_close(z, (mean - 0.1) * 0.5)  # z = (E(x).mean - shift) * scale
        torch.testing.assert_close(decode(vae, z, 0.5, 0.1), ref.decode(mean).sample)  # scale/shift undone
    fl = vae_flops(vae, (1, 8, 8), VAE)
    assert fl["encode_flops_per_image"] > 0 and fl["decode_flops_per_image"] > 0


def test_missing_vae_or_diffusers_is_a_one_line_error(tmp_path, monkeypatch):
    from benchmark.latent import load_vae

    with pytest.raises(DatasetError, match="no AutoencoderKL at .*nowhere") as e:
        load_vae(tmp_path / "nowhere")
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match="diffusers"):
        load_vae(tmp_path / "nowhere")


def test_vae_resolution_must_divide_and_gmm_cannot_have_a_vae():
    from benchmark.validation import dataset_shape

    assert dataset_shape({"kind": "digits", "vae": {"path": "v", **VAE}}) == (4, 4, 4)
    assert dataset_shape({"kind": "imagenet256", "vae": {"path": "v"}}) == (4, 32, 32)  # SD VAE defaults
    with pytest.raises(ConfigError, match="factor 3"):
        dataset_shape({"kind": "digits", "vae": {"path": "v", "factor": 3}})
    with pytest.raises(ConfigError, match="gmm"):
        dataset_shape({"kind": "gmm", "vae": {"path": "v"}})


def latent_suite(vae_path) -> dict:
    return {"name": "latenttest", "seeds": [0], "num_samples": 24, "sample_batch": 12,
            "datasets": {"digits": {"kind": "digits", "vae": {"path": str(vae_path), **VAE}}},
            "experiments": [{"method": "edm", "dataset": "digits", "variant": "tiny", "conditioning": "class",
                             "net": {"type": "unet", "model_channels": 8, "channel_mult": [1, 2]},
                             "train": {"images": 64, "batch": 16, "lr": 1e-3}, "steps": [2]}]}


def test_a_latent_run_encodes_once_trains_on_latents_and_decodes_its_samples(tmp_path):
    from benchmark.config import expand_suite, run_dir
    from benchmark.latent import encode_dataset, vae_spec
    from benchmark.prepare import prepare_dataset
    from benchmark.sample import sample_run
    from benchmark.train import train_run

    tiny_vae(tmp_path / "vae")
    raw = latent_suite(tmp_path / "vae")
    s = expand_suite(raw)
    data = tmp_path / "data"
    prepare_dataset("digits", raw["datasets"]["digits"], data / "manifest.json")
    man = encode_dataset(data, vae_spec(raw["datasets"]["digits"]["vae"]), data / "latent" / "manifest.json")
    assert man["shape"] == [4, 4, 4] and man["n_train"] == 1438 and "train_labels" in man["files"]
    # streamed into float32 shards: small shards give the same latents, and the std accumulated on
    # the way is the whole array's
    from benchmark.data import load_split

    small = encode_dataset(data, vae_spec(raw["datasets"]["digits"]["vae"]), data / "latent2" / "manifest.json",
                           batch=100, shard_bytes=256 * 4 * 4 * 4 * 4)
    z, z2 = np.asarray(load_split(data / "latent", "train")), np.asarray(load_split(data / "latent2", "train"))
    assert len(small["shards"]["train"]) == 6 and z.dtype == np.float32 and np.array_equal(z, z2)
    assert small["latent_std"] == pytest.approx(float(z.astype(np.float64).std()), rel=1e-9)
    run = s.runs["digits/edm-tiny-s0"]
    ckpt = run_dir(tmp_path, s.name, run) / "ckpt" / "final.pt"
    comp = train_run(run, s, data, ckpt, progress=False)
    assert comp["vae_encode_flops"] == man["encode_flops_per_image"] * 1438
    assert comp["train_flops"] > comp["vae_encode_flops"] > 0
    out = ckpt.parent.parent / "samples" / "steps2.npz"
    info = sample_run(run, ckpt, 2, out, num_samples=24, batch=12, progress=False)
    with np.load(out) as z:
        assert z["samples"].shape == (24, 8, 8, 1) and z["samples"].dtype == np.uint8  # decoded images
        assert np.bincount(z["labels"]).tolist() == [3] * 4 + [2] * 6
    fwd = info["forward_flops_per_example"]
    assert info["vae_decode_flops_per_image"] == man["decode_flops_per_image"] > 0
    assert info["sample_flops_per_image"] == 3 * fwd + man["decode_flops_per_image"]  # Heun: 2N - 1 = 3


def test_training_on_latents_before_encoding_says_to_encode(tmp_path):
    from benchmark.config import expand_suite
    from benchmark.prepare import prepare_dataset
    from benchmark.train import train_run

    raw = latent_suite(tmp_path / "vae")
    s = expand_suite(raw)
    prepare_dataset("digits", raw["datasets"]["digits"], tmp_path / "data" / "manifest.json")
    with pytest.raises(DatasetError, match="encode"):
        train_run(s.runs["digits/edm-tiny-s0"], s, tmp_path / "data", tmp_path / "r" / "ckpt" / "final.pt",
                  progress=False)


def test_encode_cli_names_the_missing_vae_path(tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.prepare import prepare_dataset

    raw = latent_suite(tmp_path / "absent_vae")
    suite = write_suite(tmp_path / "latenttest.yaml", raw)
    prepare_dataset("digits", raw["datasets"]["digits"], tmp_path / "d" / "manifest.json")
    rc = main(["encode", "--suite", str(suite), "--dataset", "digits", "--data", str(tmp_path / "d"),
               "--out", str(tmp_path / "d" / "latent" / "manifest.json")])
    assert "absent_vae" in assert_one_line_error(rc, capsys.readouterr().err)
    assert not (tmp_path / "d" / "latent" / "manifest.json").exists()


def test_validation_builds_a_latent_runs_network_on_the_latent_shape(monkeypatch):
    """check_net sees what the net will see in training: ImageNet-256 through SD-VAE is 4x32x32 (the
    latent shape was once downsampled a second time, so validation built IMM's DiT on 4x4x4)."""
    from benchmark import config

    seen = []
    real = config.check_net
    monkeypatch.setattr(config, "check_net", lambda key, net, shape, *a, **k: (seen.append(shape), real(
        key, net, shape, *a, **k))[1])
    config.load_suite("imagenet256")
    assert seen and set(seen) == {(4, 32, 32)}, seen
