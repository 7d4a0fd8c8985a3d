"""Library metrics: torch-fidelity and clean-fid wrapped faithfully, reference stats cached,
precision/recall named and meaningful, missing Inception weights fail before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_extractors import write_prepared

from benchmark.data import load_split
from benchmark.errors import AssetError
from benchmark.metrics import fid, refstats
from benchmark.metrics.evaluate import evaluate_samples
from benchmark.metrics.extractors import train_digitnet


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Prepared digits plus a quickly trained DigitNet (one training for the whole module)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fidelity")
    data = write_prepared(root / "digits", "digits", {})
    ckpt = data / "extractor_digitnet.pt"
    info = train_digitnet(data, ckpt, seed=0, epochs=8)
    return data, ckpt, info


def test_digitnet_reaches_95pct_heldout_accuracy_and_writes_hashed_weights(digits):
    from benchmark.metrics.extractors import load_offline_net
    from benchmark.provenance import sha256_file

    _, ckpt, info = digits
    assert info["test_accuracy"] >= 0.95 and info["n_test"] == 359
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["sha256"] == sha256_file(ckpt) and meta["test_accuracy"] == info["test_accuracy"]
    net = load_offline_net("digitnet", ckpt)  # loads with weights_only=True
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def _unbiased_poly_mmd2(x, y):
    """Independent KID: unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_kid_equals_independent_unbiased_polynomial_mmd():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((150, 16)).astype(np.float32)
    fake = (rng.standard_normal((150, 16)) * 1.3 + 0.2).astype(np.float32)
    # one subset of the full size = a permutation of each set, to which MMD is invariant
    got = fid.kid(real=torch.from_numpy(real), fake=torch.from_numpy(fake), seed=0, subsets=1,
                  subset_size=150)
    assert got["kid"] == pytest.approx(_unbiased_poly_mmd2(fake, real), rel=1e-4)


def test_precision_recall_collapsed_generator_has_no_recall_and_real_vs_real_has_both(digits):
    data, ckpt, _ = digits
    train, test = load_split(data, "train"), load_split(data, "test")
    real = fid.tf_features(train, "digitnet", ckpt)["feat"]
    other_real = fid.tf_features(test, "digitnet", ckpt)["feat"]
    collapsed = fid.tf_features(np.repeat(test[:1], len(test), 0), "digitnet", ckpt)["feat"]
    pr = fid.precision_recall(real=real, fake=collapsed)
    assert pr["recall"] < 0.01 and pr["precision"] > 0.9  # a real-looking image, repeated
    rr = fid.precision_recall(real=real, fake=other_real)
    assert rr["precision"] > 0.8 and rr["recall"] > 0.8
    with pytest.raises(TypeError):
        fid.precision_recall(real, collapsed)  # positional inputs would be ambiguous


def test_torch_fidelity_and_cleanfid_agree_on_fd_with_the_same_registered_extractor(digits):
    data, ckpt, _ = digits
    train, test = load_split(data, "train"), load_split(data, "test")
    tf_ref = fid.fd_stats(fid.tf_features(train, "digitnet", ckpt)["feat"])
    cf_ref = fid.cleanfid_stats(fid.cleanfid_features(train, "digitnet", ckpt))
    ref = {"mu": tf_ref["mu"], "sigma": tf_ref["sigma"], "cleanfid_mu": cf_ref["mu"],
           "cleanfid_sigma": cf_ref["sigma"]}
    noise = np.random.default_rng(0).integers(-40, 41, test.shape)
    noisy = np.clip(test.astype(int) + noise, 0, 255).astype(np.uint8)
    for fake in (test, noisy):
        a = fid.compute_fidelity(fake, ref, "digitnet", weights_path=ckpt, kid_on=False, prc=False)["fd"]
        b = fid.compute_cleanfid(fake, ref, "digitnet", weights_path=ckpt)
        assert b["mode"] == "native"
        assert a == pytest.approx(b["fd"], rel=1e-4)
    assert a > 0.5  # the noisy set is measurably worse, so agreement is not 0 == 0


def test_our_torch_fidelity_path_equals_calculate_metrics_end_to_end(digits):
    """Cached reference features + torch-fidelity metric functions == one calculate_metrics call."""
    import torch_fidelity

    data, ckpt, _ = digits
    train, test = load_split(data, "train"), load_split(data, "test")
    feats = fid.tf_features(train, "digitnet", ckpt)["feat"]
    ref = {**fid.fd_stats(feats), "features": feats.numpy()}
    ours = fid.compute_fidelity(test, ref, "digitnet", weights_path=ckpt, seed=5, kid_subsets=10,
                                kid_subset_size=300)
    theirs = torch_fidelity.calculate_metrics(
        input1=fid.U8Dataset(test), input2=fid.U8Dataset(train), feature_extractor="digitnet", fid=True,
        kid=True, prc=True, kid_subsets=10, kid_subset_size=300, rng_seed=5, cuda=False, verbose=False,
        cache=False, save_cpu_ram=True, feature_extractor_weights_path=str(ckpt))
    assert ours["fd"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_FID], rel=1e-9)
    assert ours["kid"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-6)
    assert ours["precision"] == theirs[torch_fidelity.KEY_METRIC_PRECISION]
    assert ours["recall"] == theirs[torch_fidelity.KEY_METRIC_RECALL]


def test_reference_stats_are_computed_once_and_reused_by_later_evaluations(digits, tmp_path):
    data, ckpt, _ = digits
    test = load_split(data, "test")
    np.savez(tmp_path / "s.npz", samples=test[:200])
    ref = tmp_path / "ref_digitnet_train.npz"
    kw = dict(extractors=["digitnet"], refs={"digitnet": ref}, seed=1, extractor_ckpts={"digitnet": ckpt})
    rows1 = evaluate_samples(tmp_path / "s.npz", data, tmp_path / "m1.json", **kw)
    mtime = ref.stat().st_mtime_ns
    rows2 = evaluate_samples(tmp_path / "s.npz", data, tmp_path / "m2.json", **kw)
    assert refstats.COMPUTE_COUNT[str(ref.resolve())] == 1 and ref.stat().st_mtime_ns == mtime
    assert rows1 == rows2
    meta = json.loads(ref.with_suffix(".json").read_text())
    assert meta["data_sha256"] and meta["extractor_sha256"] and meta["n"] == len(load_split(data, "train"))
    fd = {r["library"]: r for r in rows1 if r["metric"] == "fd_digitnet"}
    assert set(fd) == {"torch-fidelity", "clean-fid"}
    assert fd["torch-fidelity"]["value"] == pytest.approx(fd["clean-fid"]["value"], rel=1e-4)
    names = {r["metric"] for r in rows1}
    assert {"kid_digitnet", "precision_digitnet", "recall_digitnet"} <= names and "fid" not in names
    for r in rows1:
        assert r["ref_sha256"] == refstats.load_ref_stats(ref)["sha256"]
        assert (r["extractor"], r["num_samples"], r["seed"]) == ("digitnet", 200, 1) and r["mode"]


def test_stale_reference_stats_are_refused(digits, tmp_path):
    from benchmark.errors import InputError

    data, ckpt, _ = digits
    ref = tmp_path / "ref.npz"
    refstats.compute_ref_stats(data, "digitnet", ref, extractor_ckpt=ckpt)
    other = tmp_path / "other.pt"
    net = torch.load(ckpt, weights_only=True)
    net["head.2.bias"] = net["head.2.bias"] + 1
    torch.save(net, other)
    with pytest.raises(InputError, match="stale"):
        refstats.ensure_ref_stats(data, "digitnet", ref, extractor_ckpt=other)


def test_missing_inception_weights_stop_with_one_line_before_any_work(digits, tmp_path, monkeypatch):
    data, _, _ = digits
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    np.savez(tmp_path / "s.npz", samples=load_split(data, "test")[:10])
    before = sum(refstats.COMPUTE_COUNT.values())
    with pytest.raises(AssetError) as e:
        evaluate_samples(tmp_path / "s.npz", data, tmp_path / "m.json", extractors=["inception"],
                         refs={"inception": tmp_path / "ref_inception_train.npz"}, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and fid.TF_INCEPTION_FILE in msg
    assert str(tmp_path / "empty_torch_home" / "hub" / "checkpoints") in msg
    assert sum(refstats.COMPUTE_COUNT.values()) == before
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "ref_inception_train.npz").exists()
    status = fid.inception_weights_status()
    assert not status["torch-fidelity"]["present"]
    from benchmark.metrics import doctor

    report = doctor()
    assert "inception (torch-fidelity): missing" in report and "quick: can run" in report
    assert "cifar10: cannot run" in report


def test_inception_weights_with_wrong_hash_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ck = tmp_path / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / fid.TF_INCEPTION_FILE).write_bytes(b"not the weights")
    st = fid.inception_weights_status()["torch-fidelity"]
    assert st["present"] and not st["sha256_ok"]
    with pytest.raises(AssetError, match="corrupt"):
        fid.require_inception(("torch-fidelity",))


def test_only_standard_inception_numbers_are_called_fid():
    from benchmark.metrics.evaluate import metric_name

    assert metric_name("fd", "inception") == "fid" and metric_name("kid", "inception") == "kid"
    assert metric_name("fd", "digitnet") == "fd_digitnet"
    assert metric_name("recall", "digitnet") == "recall_digitnet"


def test_crosscheck_first_adds_clean_fid_rows_to_the_first_shard_only(digits, tmp_path):
    from benchmark.cli import main

    data, ckpt, _ = digits
    test = load_split(data, "test")
    for i in (0, 1):
        np.savez(tmp_path / f"s{i}.npz", samples=test[100 * i: 100 * i + 100])
    ref = tmp_path / "ref_digitnet_train.npz"
    rc = main(["evaluate", "--samples", str(tmp_path / "s0.npz"), str(tmp_path / "s1.npz"), "--data", str(data),
               "--ref", f"digitnet={ref}", "--extractor-ckpt", f"digitnet={ckpt}", "--crosscheck", "first",
               "--out", str(tmp_path / "m0.json"), str(tmp_path / "m1.json")])
    assert rc == 0
    libs = [{r["library"] for r in json.loads((tmp_path / f"m{i}.json").read_text())["rows"]} for i in (0, 1)]
    assert libs == [{"torch-fidelity", "clean-fid"}, {"torch-fidelity"}]
