"""Data-parallel training (issue 16): splitting a step's global batch over ranks or gradient-
accumulation micro-batches computes the single-process step, for every method; two gloo CPU
processes under torchrun end with the single process's weights; DDP resume is exact."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PY, TINY_GMM_SUITE, TINY_RUN, cli_env, signal_when_logging, write_suite

from benchmark import checkpoint
from benchmark.data.gmm import GMM, ExactDenoiserNet
from benchmark.distributed import Dist, Shard, ShardedDraws, launcher, my_batches, plan_shard
from benchmark.errors import ConfigError, TrainingError
from benchmark.nets import build_net
from benchmark.train import TrainConfig, make_optimizer, train_step
from methods.base import build_method, method_class

pytestmark = pytest.mark.usefixtures("one_thread")

TORCHRUN = Path(PY).with_name("torchrun")
METHODS = ["edm", "cd", "ct", "ict", "mcm-cd", "mcm-ct", "ect", "pd", "imm"]


def _two_nets_and_methods(name: str, gmm: GMM):
    teacher = ExactDenoiserNet(gmm) if method_class(name).teacher else None
    out = []
    torch.manual_seed(0)
    net0 = build_net({"type": "mlp", "hidden": 16, "depth": 2}, (2,), method_class(name).num_cond)
    for _ in range(2):
        m = build_method(name, {}, total_steps=20, data_shape=(2,))
        net = copy.deepcopy(net0).train()
        m.setup(net, teacher)
        out.append((m, net))
    return out


@pytest.mark.parametrize("name", METHODS)
def test_split_batch_step_equals_the_single_process_step(name):
    """2 micro-batches (what 2 ranks compute) give the 1-batch loss and gradient (data, noise, loss
    scaling), up to float32 summation order. Learning rate 0 keeps both nets on the same weights,
    so several steps (curricula, fresh draws) are compared without Adam amplifying round-off."""
    gmm = GMM.make(dim=2, components=4, radius=0.7, std=0.1, seed=0)
    data = gmm.sample(256, torch.Generator().manual_seed(0)).float()
    (m1, n1), (m2, n2) = _two_nets_and_methods(name, gmm)
    cfg = TrainConfig(images=320, batch=16, lr=0.0)
    o1, o2 = make_optimizer(cfg, n1.parameters()), make_optimizer(cfg, n2.parameters())
    group = int(getattr(m2, "group_size", None) or getattr(m2, "M", None) or 1)
    shard = plan_shard(16, 1, 0, 8, group)
    assert shard.accum == 2
    for step in (0, 7, 19):
        l1 = train_step(m1, n1, o1, data, cfg, step, seed=3)
        l2 = train_step(m2, n2, o2, data, cfg, step, seed=3, shard=shard)
        assert l2 == pytest.approx(l1, rel=1e-5)
        g1 = torch.cat([p.grad.flatten() for p in n1.parameters()])
        g2 = torch.cat([p.grad.flatten() for p in n2.parameters()])
        assert (g1 - g2).norm() <= 1e-5 * g1.norm()
    for a, b in zip(n1.parameters(), n2.parameters()):
        assert torch.equal(a, b)


def test_sharded_draws_give_each_part_the_rows_of_the_global_draw():
    full = torch.Generator().manual_seed(5)
    ref_n = torch.randn(8, 3, generator=full)
    ref_i = torch.randint(0, 10, (8,), generator=full)
    ref_m = torch.multinomial(torch.ones(4), 8, replacement=True, generator=full)
    for part in range(4):
        g = torch.Generator().manual_seed(5)
        with ShardedDraws(g, parts=4, index=part):
            n = torch.randn((2, 3), generator=g)
            i = torch.randint(0, 10, (2,), generator=g)
            m = torch.multinomial(torch.ones(4), 2, replacement=True, generator=g)
            other = torch.randn(2)  # no generator: untouched
        assert torch.equal(n, ref_n[2 * part:2 * part + 2]) and torch.equal(i, ref_i[2 * part:2 * part + 2])
        assert torch.equal(m, ref_m[2 * part:2 * part + 2]) and other.shape == (2,)


def test_unsplittable_draw_from_the_step_generator_raises():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TrainingError, match="cannot be split"), ShardedDraws(g, parts=2, index=0):
        torch.normal(torch.zeros(3), torch.ones(3), generator=g)


def test_plan_shard_keeps_the_global_batch_and_rejects_splits_that_do_not_divide():
    s = plan_shard(512, world=4, rank=3, batch_per_gpu=64)
    assert (s.accum, s.micro, s.parts) == (2, 64, 8) and s.bounds(1) == (7, 448, 512)
    assert plan_shard(96, world=2, rank=0, batch_per_gpu=40).micro == 24  # 48 per rank -> 2 x 24
    assert plan_shard(96, world=2, rank=0, batch_per_gpu=None) == Shard(96, 2, 0, 1)
    with pytest.raises(ConfigError, match="does not split"):
        plan_shard(100, world=3, rank=0, batch_per_gpu=None)
    with pytest.raises(ConfigError, match="group size"):
        plan_shard(16, world=2, rank=0, batch_per_gpu=None, group=16)


def test_launcher_is_torchrun_standalone_only_for_several_processes():
    assert launcher("/x/bin/python", 1) == ["/x/bin/python", "-m", "benchmark"]
    cmd = launcher(PY, 4)
    assert cmd[-6:] == ["--standalone", "--nproc_per_node", "4", "-m", "benchmark", "--"]
    assert cmd[0].endswith("torchrun") or "torch.distributed.run" in cmd


# --- the acceptance tests: real torchrun with gloo on CPU ------------------------------------

DDP_SUITE = copy.deepcopy(TINY_GMM_SUITE) | {"name": "ddptest"}
DDP_SUITE["experiments"][0]["train"] = {"images": 640, "batch": 32, "lr": 0.002, "ema_halflife_images": 200,
                                        "ckpt_every_images": 160, "log_every_steps": 1}


def _train(suite: Path, data: Path, out: Path, nproc: int, **env: str) -> subprocess.CompletedProcess:
    args = ["train", "--suite", str(suite), "--run", TINY_RUN, "--data", str(data),
            "--threads", "1", "--no-progress", "--out", str(out)]
    cmd = launcher(PY, nproc) + args  # what the train rule runs
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(**env), timeout=300)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, gmm_data):
    """One single-process run and one uninterrupted 2-rank torchrun run of the same suite."""
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {PY}")
    root = tmp_path_factory.mktemp("ddp")
    suite = write_suite(root / "ddptest.yaml", DDP_SUITE)
    outs = {}
    for n in (1, 2):
        out = root / f"w{n}/gmm/edm-tiny-s0/ckpt/final.pt"
        r = _train(suite, gmm_data, out, n)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = out
    return suite, outs


def test_two_gloo_ranks_under_torchrun_match_one_process_with_the_same_global_batch(ddp_runs):
    _, outs = ddp_runs
    one, two = checkpoint.load(outs[1]), checkpoint.load(outs[2])
    for key in ("net", "ema"):
        for k, v in one[key].items():
            torch.testing.assert_close(two[key][k], v, atol=1e-6, rtol=0, msg=f"{key}/{k}")
    c1, c2 = (json.loads((o.parent.parent / "compute.json").read_text()) for o in (outs[1], outs[2]))
    assert (c2["world_size"], c2["effective_batch"], c2["batch_per_rank"]) == (2, 32, 16)
    # FLOPs count the examples of all ranks: the same work as the single process
    assert c2["examples_grad"] == c1["examples_grad"] and c2["train_flops"] == c1["train_flops"]
    assert c2["device_seconds"] == pytest.approx(2 * c2["wall_seconds"], rel=1e-6)
    assert c2["precision"]["applied"] == {"bf16": False, "channels_last": False, "compile": False, "tf32": False}
    log = (outs[2].parent.parent / "train.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == list(range(1, 21))  # rank 0 alone writes the log


def test_ddp_resume_after_a_crash_ends_identical_to_an_uninterrupted_ddp_run(ddp_runs, gmm_data, tmp_path):
    suite, outs = ddp_runs
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    r = _train(suite, gmm_data, out, 2, FEWSTEP_INJECT_NAN_STEP="13")  # checkpoints at 5 and 10
    assert r.returncode != 0 and not out.exists()
    assert [p.name for p in checkpoint.intermediate(out.parent)] == ["step00000005.pt", "step00000010.pt"]
    r = _train(suite, gmm_data, out, 2)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = checkpoint.load(out), checkpoint.load(outs[2])
    for key in ("net", "ema"):
        for k, v in b[key].items():
            assert torch.equal(a[key][k], v), f"{key}/{k}"
    assert a["counts"] == b["counts"] and a["step"] == b["step"]


def test_gradient_accumulation_to_a_small_batch_per_gpu_is_recorded(ddp_runs, gmm_data, tmp_path):
    """batch_per_gpu 8 with 1 process: 4 accumulated micro-batches, same weights as the plain run."""
    _, outs = ddp_runs
    suite = write_suite(tmp_path / "acc.yaml", DDP_SUITE | {"distributed": {"batch_per_gpu": 8}})
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    r = _train(suite, gmm_data, out, 1)
    assert r.returncode == 0, r.stderr[-3000:]
    comp = json.loads((out.parent.parent / "compute.json").read_text())
    assert (comp["grad_accum_steps"], comp["micro_batch"], comp["effective_batch"]) == (4, 8, 32)
    ref = checkpoint.load(outs[1])
    for k, v in ref["net"].items():
        torch.testing.assert_close(checkpoint.load(out)["net"][k], v, atol=1e-6, rtol=0)


def test_sampling_batches_split_over_ranks_cover_the_unsplit_batches_in_order():
    for world in (1, 2, 3, 5, 8):
        got = [s for r in range(world) for s in my_batches(100, 16, Dist(rank=r, world=world))]
        assert got == list(range(0, 100, 16))


def test_sampling_split_over_two_torchrun_ranks_is_bit_identical_to_one_process(ddp_runs, tmp_path):
    """7 batches (the last one partial) over 2 ranks: rank 0 merges; same array, same accounting."""
    suite, outs = ddp_runs
    res = {}
    for n in (1, 2):
        out = tmp_path / f"w{n}" / "steps3.npz"
        r = subprocess.run(launcher(PY, n) + ["sample", "--suite", str(suite), "--run", TINY_RUN, "--ckpt",
                                              str(outs[1]), "--steps", "3", "--num", "100", "--batch", "16",
                                              "--threads", "1", "--no-progress", "--out", str(out)],
                           capture_output=True, text=True, env=cli_env(), timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        res[n] = (np.load(out)["samples"], json.loads(out.with_suffix(".json").read_text()))
    assert res[1][0].shape == (100, 2) and np.array_equal(res[1][0], res[2][0])
    for key in ("num_samples", "nfe", "nfe_counted", "sample_flops_per_image"):
        assert res[1][1][key] == res[2][1][key], key


def test_results_csv_names_the_precision_options_that_were_applied():
    from benchmark.aggregate import precision_text

    assert precision_text(None) == "fp32"
    assert precision_text({"applied": {"bf16": False, "channels_last": False}}) == "fp32"
    assert precision_text({"applied": {"bf16": True, "channels_last": True, "compile": False}}) == "bf16+channels_last"


def test_evaluation_split_over_two_torchrun_ranks_equals_one_process(tmp_path):
    """300 digit images (5 feature batches of 64, the last partial) over 2 gloo ranks: each rank
    extracts its block through torch-fidelity and clean-fid, rank 0 merges and writes; every metric
    row (FD both libraries, KID, precision/recall) is the one-process value."""
    from test_extractors import write_prepared

    from benchmark.data import load_split
    from benchmark.metrics.extractors import train_digitnet
    from benchmark.provenance import save_npz

    data = write_prepared(tmp_path / "digits", "digits", {})
    ckpt = tmp_path / "digitnet.pt"
    train_digitnet(data, ckpt, seed=0, epochs=1, min_accuracy=0.0)  # features only need to be fixed
    x = np.asarray(load_split(data, "train")[:300])
    x[::3] = 255 - x[::3]  # not the data distribution: FD, KID and PR all away from their ideal
    samples = tmp_path / "steps3.npz"
    save_npz(samples, sidecar=True, samples=x)
    rows = {}
    for n in (1, 2):
        out = tmp_path / f"w{n}" / "steps3.json"
        r = subprocess.run(launcher(PY, n) + ["evaluate", "--samples", str(samples), "--data", str(data),
                                              "--ref", f"digitnet={tmp_path / 'ref.npz'}",
                                              "--extractor-ckpt", f"digitnet={ckpt}", "--threads", "1",
                                              "--out", str(out)],
                           capture_output=True, text=True, env=cli_env(), timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("rank 1 of 2" in r.stderr + r.stdout) == (n == 2)
        rows[n] = {(row["metric"], row["library"]): row["value"] for row in json.loads(out.read_text())["rows"]}
    assert len(rows[1]) >= 5 and ("fd_digitnet", "clean-fid") in rows[1]
    assert rows[2] == rows[1]


def test_a_stop_signal_to_torchrun_stops_both_ranks_after_the_same_step_and_the_rerun_resumes(tmp_path, gmm_data):
    """SIGTERM to the torchrun launcher (what a scheduler signals): it passes the signal to its two
    gloo ranks, they agree on the step, rank 0 writes stepN.pt, and a plain re-run under torchrun
    resumes at N and ends on the uninterrupted 2-rank run's weights."""
    import signal

    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {PY}")
    long = copy.deepcopy(DDP_SUITE)
    long["experiments"][0]["train"] |= {"images": 16000, "ckpt_every_images": 0}  # 500 steps
    suite = write_suite(tmp_path / "long.yaml", long)
    ref = tmp_path / "ref/gmm/edm-tiny-s0/ckpt/final.pt"
    r = _train(suite, gmm_data, ref, 2)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "stop/gmm/edm-tiny-s0/ckpt/final.pt"
    args = ["train", "--suite", str(suite), "--run", TINY_RUN, "--data", str(gmm_data), "--threads", "1",
            "--no-progress", "--out", str(out)]
    p = subprocess.Popen(launcher(PY, 2) + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=cli_env())
    rc, err = signal_when_logging(p, out.parent.parent / "train.jsonl", signal.SIGTERM, timeout=120)
    assert rc != 0 and "stopped by signal" in err and "after step" in err, err[-3000:]
    steps = {checkpoint.load(c)["step"] for c in out.parent.glob("step*.pt")}
    assert len(steps) == 1 and 0 < min(steps) < 500, steps
    r = _train(suite, gmm_data, out, 2)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = checkpoint.load(out), checkpoint.load(ref)
    for k, v in b["net"].items():
        assert torch.equal(a["net"][k], v), k
