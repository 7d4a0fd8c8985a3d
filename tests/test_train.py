"""The training loop (issue 3 spine + issue 8 reliability): it learns, it resumes bit-exactly,
it survives a corrupt checkpoint, it stops cleanly on NaN, and the same seed samples the same."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, cli_env, run_cli, torch_threads

from benchmark import checkpoint
from benchmark.data import load_split, to_model_space
from benchmark.data.gmm import GMM
from benchmark.diffusion import edm_denoise
from benchmark.errors import TrainingError
from benchmark.metrics.exact import denoiser_mse
from benchmark.nets import build_net
from benchmark.sample import sample_run
from benchmark.train import train_run
from benchmark.train_step import fit
from methods.edm import EDM

pytestmark = pytest.mark.usefixtures("one_thread")


def _states_equal(a: dict, b: dict) -> None:
    for key in ("net", "ema", "opt"):
        fa, fb = _flatten(a[key]), _flatten(b[key])
        assert fa.keys() == fb.keys(), key
        for k in fa:
            if isinstance(fa[k], torch.Tensor):
                assert torch.equal(fa[k], fb[k]), f"{key}/{k} differs"
            else:
                assert fa[k] == fb[k], f"{key}/{k} differs"
    assert a["step"] == b["step"] and a["counts"] == b["counts"]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
            for i, x in enumerate(v):
                out.update(_flatten(x, f"{prefix}{k}/{i}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_training_edm_on_gmm_lowers_the_error_to_the_exact_denoiser():
    gmm = GMM.make(dim=2, components=4, radius=0.7, std=0.1, seed=0)
    data = gmm.sample(4000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    net = build_net({"type": "mlp", "hidden": 64, "depth": 2}, (2,), 1)
    method = EDM(total_steps=200, data_shape=(2,))
    sigmas = (0.05, 0.2, 0.5)

    def err(n):
        n.eval()
        return denoiser_mse(lambda x, s: edm_denoise(n, x, s), gmm, sigmas, 2048, torch.Generator().manual_seed(5))

    before = err(net)
    net.train()
    _, ema = fit(method, net, data, steps=200, batch=64, lr=2e-3, seed=0, ema_halflife_images=1600)  # 12800 images
    after = err(ema)
    for s in sigmas:
        assert after[s] < 0.5 * before[s], (s, before[s], after[s])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_suite, gmm_data):
    """An uninterrupted CPU run of the tiny suite (40 steps, checkpoints every 10)."""
    out = tmp_path_factory.mktemp("ref") / "gmm/edm-tiny-s0/ckpt/final.pt"
    with torch_threads(1):  # same thread count as the tests' runs: bitwise equality needs it
        train_run(tiny_suite.run(TINY_RUN), tiny_suite, gmm_data, out, progress=False)
    return out


def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_suite, gmm_data,
                                                                      reference_run):
    run = tiny_suite.run(TINY_RUN)
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    with pytest.raises(TrainingError):  # crash at step 25: checkpoints 10 and 20 are on disk
        train_run(run, tiny_suite, gmm_data, out, progress=False, nan_at_step=25)
    assert not out.exists()
    assert [p.name for p in checkpoint.intermediate(out.parent)] == ["step00000010.pt", "step00000020.pt"]
    train_run(run, tiny_suite, gmm_data, out, progress=False)
    _states_equal(checkpoint.load(out), checkpoint.load(reference_run))
    # the log is the uninterrupted one: each step once, same losses (seconds differ)
    assert _log(out) == _log(reference_run)


def _log(final_pt):
    import json

    lines = (final_pt.parent.parent / "train.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_corrupt_newest_checkpoint_resumes_from_the_previous_good_one(tmp_path, tiny_suite, gmm_data,
                                                                     reference_run, monkeypatch):
    run = tiny_suite.run(TINY_RUN)
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    with pytest.raises(TrainingError):
        train_run(run, tiny_suite, gmm_data, out, progress=False, nan_at_step=35)
    newest = out.parent / "step00000030.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated by a crash
    loaded = []
    real_load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda p, **kw: loaded.append(p.name) or real_load(p, **kw))
    train_run(run, tiny_suite, gmm_data, out, progress=False)
    assert loaded[0] == "step00000020.pt"
    monkeypatch.undo()
    _states_equal(checkpoint.load(out), checkpoint.load(reference_run))
    assert checkpoint.verify(newest)  # rewritten on the way through step 30


def test_nan_stops_with_one_line_naming_step_and_last_good_checkpoint(tmp_path, tiny_suite_file, gmm_data):
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    r = run_cli("train", "--suite", tiny_suite_file, "--run", TINY_RUN, "--data", gmm_data, "--out", out,
                "--threads", "1", "--no-progress", env=cli_env(FEWSTEP_INJECT_NAN_STEP="25"))
    line = assert_one_line_error(r.returncode, r.stderr)
    assert "step 25" in line and "step00000020.pt" in line, line
    good = out.parent / "step00000020.pt"
    assert checkpoint.verify(good)
    assert checkpoint.load(good)["step"] == 20
    assert not out.exists()


def test_same_seed_gives_identical_sample_shards(tmp_path, tiny_suite, reference_run):
    run = tiny_suite.run(TINY_RUN)
    a, b, c = tmp_path / "a/steps3.npz", tmp_path / "b/steps3.npz", tmp_path / "c/steps3.npz"
    sample_run(run, reference_run, 3, a, num_samples=48, batch=32, progress=False)
    sample_run(run, reference_run, 3, b, num_samples=48, batch=32, progress=False)
    sample_run(run, reference_run, 3, c, num_samples=48, batch=32, seed=1, progress=False)
    sa, sb, sc = (np.load(p)["samples"] for p in (a, b, c))
    assert sa.shape == (48, 2) and sa.dtype == np.float32
    assert np.array_equal(sa, sb)
    assert not np.allclose(sa, sc)  # a different seed gives different samples


def test_training_data_is_read_through_the_manifest(gmm_data):
    x = to_model_space(load_split(gmm_data, "train"))
    assert x.shape == (512, 2) and x.dtype == torch.float32
    bad = gmm_data.parent / "gmm_tampered"
    shutil.copytree(gmm_data, bad)
    arr = np.load(bad / "train.npy")
    arr[0, 0] += 1
    np.save(bad / "train.npy", arr)
    from benchmark.errors import DatasetError

    with pytest.raises(DatasetError):
        load_split(bad, "train")


def test_a_split_over_the_memory_threshold_is_streamed_per_batch_with_the_same_result(tmp_path, monkeypatch,
                                                                                     one_thread):
    """Large prepared splits are read per batch from the memory-mapped shards (bounded memory);
    the batches, and so a whole training run, equal the in-memory path bit for bit."""
    from benchmark import checkpoint, train, train_data
    from benchmark.config import expand_suite
    from benchmark.prepare import prepare_dataset

    suite = expand_suite({"name": "st", "datasets": {"digits": {"kind": "digits"}}, "experiments": [
        {"method": "edm", "dataset": "digits", "variant": "u", "steps": [1],
         "net": {"type": "unet", "model_channels": 8, "channel_mult": [1, 2]},
         "train": {"images": 96, "batch": 32, "lr": 0.002, "ema_halflife_images": 64}}]})
    run = suite.runs["digits/edm-u-s0"]
    data_dir = tmp_path / "digits"
    prepare_dataset("digits", suite.datasets["digits"], data_dir / "manifest.json")
    mem, _, _, _ = train_data.model_space_data(run, suite, data_dir)
    monkeypatch.setattr(train_data, "IN_MEMORY_BYTES", 0)
    streamed, _, _, _ = train_data.model_space_data(run, suite, data_dir)
    assert isinstance(streamed, train_data.StreamedData) and len(streamed) == len(mem)
    idx = torch.tensor([5, 0, len(mem) - 1, 5])
    assert torch.equal(streamed[idx], mem[idx])
    out_s = tmp_path / "s" / "ckpt" / "final.pt"
    train.train_run(run, suite, data_dir, out_s, progress=False)
    monkeypatch.setattr(train_data, "IN_MEMORY_BYTES", 1 << 30)
    out_m = tmp_path / "m" / "ckpt" / "final.pt"
    train.train_run(run, suite, data_dir, out_m, progress=False)
    a, b = checkpoint.load(out_s), checkpoint.load(out_m)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
