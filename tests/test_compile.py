"""torch.compile as a suite option (issue 26): it applies on CPU too (inductor's C++ kernels), the
compiled training step equals the eager one to 1e-5, a compiled run records it and counts the same
network passes (FLOPs), and where inductor cannot run the run stops with one line before writing.

The nets here are the tiny suite's (MLP 16 x 2 on 2-D data, batch 32), so that the compiled graphs
are the same in every test and inductor's cache compiles them once per machine."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import PY, TINY_GMM_SUITE, TINY_RUN, assert_one_line_error, cli_in_process, write_suite

from benchmark.nets import build_net
from benchmark.precision import Precision, apply, compile_unavailable
from benchmark.train_config import TrainConfig
from benchmark.train_step import make_optimizer, train_step
from methods.edm import EDM

pytestmark = pytest.mark.usefixtures("one_thread")
COMPILE_SUITE = TINY_GMM_SUITE | {"precision": {"compile": True}}


@pytest.fixture(autouse=True)
def _needs_compile():
    why = compile_unavailable("cpu")
    if why:
        pytest.skip(f"torch.compile cannot run on this machine: {why}")


def test_the_compiled_train_step_equals_the_eager_step_to_1e_5():
    torch.manual_seed(0)
    eager = build_net({"type": "mlp", "hidden": 16, "depth": 2}, (2,), 1).train()
    compiled = copy.deepcopy(eager)
    applied = apply(Precision(compile=True), compiled, "cpu")
    assert applied.applied["compile"] and list(compiled.state_dict()) == list(eager.state_dict())
    data = torch.randn(256, 2)
    cfg = TrainConfig(images=32 * 5, batch=32, lr=2e-3)
    opts = [make_optimizer(cfg, n.parameters()) for n in (eager, compiled)]
    method = EDM(total_steps=5, data_shape=(2,))
    for step in range(5):
        le = train_step(method, eager, opts[0], data, cfg, step, seed=1)
        lc = train_step(method, compiled, opts[1], data, cfg, step, seed=1, amp=applied)
        assert lc == pytest.approx(le, rel=1e-5, abs=1e-7)
    for (k, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=k)


def test_a_compiled_run_records_compile_and_counts_the_same_passes(tmp_path, gmm_data, trained):
    from benchmark.config import load_suite
    from benchmark.train import train_run

    suite = load_suite(write_suite(tmp_path / "compiled.yaml", COMPILE_SUITE))
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    comp = train_run(suite.run(TINY_RUN), suite, gmm_data, out, progress=False)
    eager = json.loads((trained.parent.parent / "compute.json").read_text())
    assert comp["precision"]["applied"]["compile"] is True and "compile" not in comp["precision"]["notes"]
    for key in ("passes", "train_flops", "forward_flops_per_example", "fwd_bwd_flops_per_example"):
        assert comp[key] == eager[key], key  # the hooks see every compiled call; FLOPs from the eager net
    st, ref = (torch.load(p, weights_only=True) for p in (out, trained))
    assert list(st["net"]) == list(ref["net"])  # an uncompiled net's checkpoint: sampling loads it as ever
    for k, v in ref["ema"].items():
        torch.testing.assert_close(st["ema"][k], v, atol=1e-4, rtol=0, msg=k)  # 40 Adam steps, float32


def test_compile_where_inductor_cannot_run_is_one_line_before_anything_is_written(tmp_path, capsys, gmm_data):
    import torch._inductor.config as inductor

    suite = write_suite(tmp_path / "compiled.yaml", COMPILE_SUITE)
    out = tmp_path / "run/gmm/edm-tiny-s0/ckpt/final.pt"
    with inductor.patch({"cpp.cxx": ("/nonexistent/c++",)}):  # what a machine without g++ looks like
        rc, err = cli_in_process(capsys, "train", "--suite", suite, "--run", TINY_RUN, "--data", gmm_data,
                                 "--out", out, "--no-progress")
    line = assert_one_line_error(rc, err)
    assert "torch.compile cannot run here: no C++ compiler found (tried ['/nonexistent/c++'])" in line, line
    assert "set precision.compile: false" in line and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_a_compiled_run_on_two_gloo_ranks_matches_the_eager_one_process_run(tmp_path, gmm_data, trained, engine):
    """DDP wraps the module whose forward is compiled (Dynamo's DDPOptimizer splits the graph at the
    buckets), FSDP2 shards it; the 2-rank compiled run ends near the eager 1-process run (float32)."""
    import subprocess

    from conftest import cli_env

    from benchmark.distributed import launcher

    suite = write_suite(tmp_path / "compiled.yaml", COMPILE_SUITE | {"distributed": {"engine": engine}})
    out = tmp_path / "gmm/edm-tiny-s0/ckpt/final.pt"
    r = subprocess.run(launcher(PY, 2) + ["train", "--suite", str(suite), "--run", TINY_RUN, "--data", str(gmm_data),
                                          "--threads", "1", "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, env=cli_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    comp = json.loads((out.parent.parent / "compute.json").read_text())
    assert comp["precision"]["applied"]["compile"] and comp["engine"]["applied"] == engine
    st, ref = (torch.load(p, weights_only=True) for p in (out, trained))
    for k, v in ref["ema"].items():
        torch.testing.assert_close(st["ema"][k], v, atol=1e-4, rtol=0, msg=k)
