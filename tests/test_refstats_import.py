"""`ref-stats --import`: published reference statistics (EDM's cifar10-32x32.npz, openai's ImageNet
reference batches, torch-fidelity's cached stats) become the reference a FID is measured against,
named in every metric row by the published file's sha256."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.errors import InputError
from benchmark.metrics.refstats import ensure_ref_stats, import_ref_stats, load_ref_stats
from benchmark.provenance import sha256_file


@pytest.fixture
def digits(tmp_path):
    from benchmark.prepare import prepare_dataset

    prepare_dataset("digits", {"kind": "digits"}, tmp_path / "digits" / "manifest.json", progress=False)
    return tmp_path / "digits"


def _stats(dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), a @ a.T / dim + np.eye(dim)


def test_edm_openai_and_torch_fidelity_files_import_with_source_and_sha256(digits, tmp_path):
    mu, sigma = _stats(64)
    edm = tmp_path / "cifar10-32x32.npz"
    np.savez(edm, mu=mu, sigma=sigma)
    openai = tmp_path / "VIRTUAL_imagenet64_labeled.npz"
    np.savez(openai, arr_0=np.zeros((3, 8, 8, 3), np.uint8), mu=mu, sigma=sigma, mu_s=mu[:8], sigma_s=sigma[:8, :8])
    tfc = tmp_path / "cifar10-train-inception-v3-compat-stat-fid-2048.pt"
    torch.save({"mu": mu.astype(np.float32), "sigma": sigma}, tfc)  # what torch-fidelity's cache holds
    for src, fmt in ((edm, "npz-mu-sigma"), (openai, "openai-reference-batch"), (tfc, "torch-fidelity-cache")):
        out = tmp_path / f"ref_{src.stem}.npz"
        meta = import_ref_stats(digits, "digitnet", src, out)
        assert meta["imported"] == {"file": str(src.resolve()), "format": fmt, "sha256": sha256_file(src)}
        ref = load_ref_stats(out)
        assert ref["sha256"] == sha256_file(src)  # the evaluator tuple names the published file
        np.testing.assert_allclose(ref["mu"], mu, rtol=1e-6)
        np.testing.assert_allclose(ref["sigma"], sigma)
        assert json.loads(out.with_suffix(".json").read_text())["imported"]["format"] == fmt
        # not derived from our data or extractor weights, so not "stale" for them
        assert ensure_ref_stats(digits, "digitnet", out, extractor_ckpt=None)["sha256"] == sha256_file(src)


def test_torch_fidelity_cache_written_under_numpy_1_imports(digits, tmp_path):
    """Caches pickled by numpy 1.x name `numpy.core.multiarray._reconstruct`; still read, no code run."""
    import zipfile

    mu, sigma = _stats(8)
    torch.save({"mu": mu.astype(np.float32), "sigma": sigma}, tmp_path / "new.pt")
    old = tmp_path / "old-stat-fid-2048.pt"
    with zipfile.ZipFile(tmp_path / "new.pt") as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)
    meta = import_ref_stats(digits, "digitnet", old, tmp_path / "ref.npz")
    assert meta["imported"]["format"] == "torch-fidelity-cache"
    np.testing.assert_allclose(load_ref_stats(tmp_path / "ref.npz")["sigma"], sigma)


def test_bad_reference_files_are_one_line_errors(digits, tmp_path):
    mu, sigma = _stats(64)
    cases = {"no_sigma.npz": lambda p: np.savez(p, mu=mu), "garbage.npz": lambda p: p.write_bytes(b"nope"),
             "shape.npz": lambda p: np.savez(p, mu=mu, sigma=sigma[:10]),
             "garbage.pt": lambda p: p.write_bytes(b"\x80\x02nope")}
    for name, make in cases.items():
        make(tmp_path / name)
        with pytest.raises(InputError) as e:
            import_ref_stats(digits, "digitnet", tmp_path / name, tmp_path / "out.npz")
        assert "\n" not in str(e.value) and name in str(e.value)
    np.savez(tmp_path / "d64.npz", mu=mu, sigma=sigma)  # 64-d stats cannot be an Inception (2048-d) reference
    with pytest.raises(InputError, match=r"expected finite \[2048\]"):
        import_ref_stats(digits, "inception", tmp_path / "d64.npz", tmp_path / "out.npz")
    with pytest.raises(InputError, match="not found"):
        import_ref_stats(digits, "digitnet", tmp_path / "missing.npz", tmp_path / "out.npz")


def test_cli_import_and_evaluation_against_the_imported_reference(digits, tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.data import load_split
    from benchmark.metrics import fid
    from benchmark.metrics.evaluate import evaluate_samples
    from benchmark.metrics.extractors import DigitNet

    torch.manual_seed(0)
    ckpt = tmp_path / "digitnet.pt"
    torch.save(DigitNet().eval().state_dict(), ckpt)
    train = np.asarray(load_split(digits, "train"))
    st = fid.fd_stats(fid.tf_features(train, "digitnet", ckpt)["feat"])  # stand-in for a published file
    src = tmp_path / "published.npz"
    np.savez(src, mu=st["mu"], sigma=st["sigma"])
    out = tmp_path / "ref_digitnet_train.npz"
    assert main(["ref-stats", "--data", str(digits), "--extractor", "digitnet", "--import", str(src),
                 "--out", str(out)]) == 0
    assert main(["ref-stats", "--data", str(digits), "--extractor", "digitnet", "--import",
                 str(tmp_path / "nope.npz"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    samples = tmp_path / "s.npz"
    np.savez(samples, samples=np.asarray(load_split(digits, "test"))[:64])
    rows = evaluate_samples(samples, digits, tmp_path / "m.json", extractors=["digitnet"],
                            refs={"digitnet": out}, extractor_ckpts={"digitnet": ckpt}, seed=0)
    assert {r["metric"] for r in rows} == {"fd_digitnet"}  # published mu/sigma: FD only, no KID/PR
    assert {r["library"] for r in rows} == {"torch-fidelity", "clean-fid"}
    assert all(r["ref_sha256"] == sha256_file(src) for r in rows)
