"""PyTorch's engines compute the single-process step (issue 26), in float64 so that no machine's
thread count or load can move a result past the tolerance: for every method, 1, 2 and 4 gloo ranks
(DDP and FSDP2) and gradient accumulation (1 rank x 4 micro-batches vs 4 ranks x 1) end on the
same weights, EMA and target nets to 1e-6 after 20 steps, and an FSDP checkpoint resumes on
another world size and in one process.

The ranks are real processes (torch.multiprocessing, gloo over TCP) running `train_step` and
`engage` -- the code `train_run` runs; two process groups (2 and 4 ranks) serve every case."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import torch_threads

from benchmark import distributed as D
from benchmark.data.gmm import GMM, ExactDenoiserNet
from benchmark.distributed import Dist, plan_shard
from benchmark.nets import build_net
from benchmark.train_config import TrainConfig
from benchmark.train_step import ema_beta, engage, train_step, update_ema
from methods.base import build_method, method_class

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["edm", "cd", "ct", "ict", "mcm-cd", "mcm-ct", "ect", "pd", "imm"]
STEPS, BATCH, RESUME_AT = 20, 16, 10
TOL = 1e-6


def _setup(name: str):
    """A float64 tiny run of method `name`: (method, net, ema, teacher, cfg, data)."""
    gmm = GMM.make(dim=2, components=4, radius=0.7, std=0.1, seed=0)
    data = gmm.sample(256, torch.Generator().manual_seed(0)).double()
    teacher = ExactDenoiserNet(gmm).double() if method_class(name).teacher else None
    method = build_method(name, {}, total_steps=STEPS, data_shape=(2,))
    torch.manual_seed(0)
    net = build_net({"type": "mlp", "hidden": 16, "depth": 2}, (2,), method.num_cond).double().train()
    method.setup(net, teacher)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    cfg = TrainConfig(images=STEPS * BATCH, batch=BATCH, lr=0.01, ema_halflife_images=64, grad_clip=1.0)
    return method, net, ema, teacher, cfg, data


def run_steps(name: str, engine: str, dist: Dist, per_gpu: int | None, steps=(0, STEPS), state=None) -> dict:
    """Steps [a, b) of method `name` on `engine` with micro-batches of `per_gpu`, from `state`
    (a checkpoint-like dict) if given; returns the full state (rank 0's is complete)."""
    method, net, ema, teacher, cfg, data = _setup(name)
    if state is not None:  # what train_run's _resume does: load into the plain modules first
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        method.load_state_dict(state["method"])
    shard = plan_shard(cfg.batch, dist.world, dist.rank, per_gpu, int(getattr(method, "M", None) or 1))
    eng, opt = engage(engine, dist, net, ema, method, teacher, cfg, shard, state and state["opt"])
    for step in range(*steps):
        train_step(method, net, opt, data, cfg, step, seed=3, shard=shard, engine=eng)
        update_ema(ema, net, ema_beta(cfg, step))
        method.after_step(net, step)
    return {"net": eng.model_state(net), "ema": eng.model_state(ema), "opt": eng.optimizer_state(opt),
            "method": eng.gathered(method.state_dict()), "engine": eng.name, "accum": shard.accum}


# --- the ranks ---------------------------------------------------------------------------------

FOUR_RANKS = ["edm", "imm", "mcm-cd"]  # the default 4-rank group (4 processes on 2 cores are slow)


def _cases(world: int, names: list[str]) -> list[tuple[str, str, int | None, str | None]]:
    """(method, engine, batch_per_gpu, resume-from case) that a `world`-rank group runs."""
    if world == 2:
        return [(m, e, None, None) for m in names for e in ("ddp", "fsdp")] + [
            ("mcm-cd", "ddp", 4, None), ("cd", "fsdp", 4, None), ("ict", "fsdp", None, "half")]
    extra = [("ict", "fsdp", None, "half")] if names == FOUR_RANKS else []
    return [(m, "ddp", None, None) for m in names] + extra


def _rank_main(rank: int, world: int, port: int, out: str, names: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = D.init("cpu")
    for name, engine, per_gpu, resume in _cases(world, names):
        if resume:  # an FSDP checkpoint written by the 2-rank group at step RESUME_AT
            st = torch.load(Path(out) / f"{name}-fsdp-w2-{resume}.pt", weights_only=True)
            res = run_steps(name, engine, dist, per_gpu, (RESUME_AT, STEPS), st)
            tag = f"{name}-{engine}-w{world}-resumed"
        else:
            res = run_steps(name, engine, dist, per_gpu)
            tag = f"{name}-{engine}-w{world}-a{res['accum']}"
        if world == 2 and name == "ict" and engine == "fsdp" and not resume:
            half = run_steps(name, engine, dist, per_gpu, (0, RESUME_AT))
            if dist.is_main:
                torch.save(half, Path(out) / f"{name}-fsdp-w2-half.pt")
        if dist.is_main:
            torch.save(res, Path(out) / f"{tag}.pt")
    D.barrier(dist)
    D.shutdown(dist)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, out: Path, names: list[str]) -> None:
    """Run `_cases(world, names)` on `world` gloo ranks (fresh processes); results land in `out`."""
    mp.start_processes(_rank_main, args=(world, _free_port(), str(out), names), nprocs=world, join=True,
                       start_method="spawn")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Every case for 2 ranks (all methods), then 4 (FOUR_RANKS; they resume the 2-rank group's
    FSDP checkpoint too); the results, one file per case."""
    out = tmp_path_factory.mktemp("engines")
    spawn(2, out, METHODS)
    spawn(4, out, FOUR_RANKS)
    return out


def _name(tag: str) -> str:
    """The method of a result file's tag '{method}-{engine}-w{world}-...'."""
    return tag.split("-ddp-")[0].split("-fsdp-")[0]


def _assert_same(a: dict, b: dict, what: str, tol: float = TOL) -> None:
    for key in ("net", "ema", "method"):
        fa, fb = _flat(a[key]), _flat(b[key])
        assert fa.keys() == fb.keys(), (what, key)
        for k in fa:
            torch.testing.assert_close(fa[k], fb[k], atol=tol, rtol=0, msg=f"{what}: {key}/{k}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.fixture(scope="module")
def one_process() -> dict[str, dict]:
    """The single-process references: every method, one batch per step (plain module)."""
    with torch_threads(1):
        return {m: run_steps(m, "ddp", Dist(), None) for m in METHODS}


@pytest.mark.parametrize("name", METHODS)
def test_two_and_four_gloo_ranks_end_on_the_one_process_weights(ranks, one_process, name):
    """DDP and FSDP2 on 2 ranks and DDP on 4 (FOUR_RANKS; the others in the slow test below): net,
    EMA and the method's target net after 20 steps (Adam, warm EMA, clipping) equal the single
    process's to 1e-6 (float64)."""
    tags = [f"{name}-ddp-w2-a1", f"{name}-fsdp-w2-a1"] + ([f"{name}-ddp-w4-a1"] if name in FOUR_RANKS else [])
    for tag in tags:
        st = torch.load(ranks / f"{tag}.pt", weights_only=True)
        assert st["engine"] == tag.split("-w")[0].rsplit("-", 1)[1]
        _assert_same(st, one_process[name], tag)


def test_accumulation_one_rank_by_four_equals_four_ranks_by_one(ranks, one_process):
    """1 process x 4 micro-batches of 4 and 4 DDP ranks x 1 micro-batch give the same weights; so
    do 2 ranks x 2 micro-batches under DDP (no_sync) and FSDP (gradient sync off)."""
    for name in FOUR_RANKS:
        acc = run_steps(name, "ddp", Dist(), 4)
        assert acc["accum"] == 4 and acc["engine"] == "plain"
        _assert_same(acc, torch.load(ranks / f"{name}-ddp-w4-a1.pt", weights_only=True), f"{name} 1x4 vs 4x1")
        _assert_same(acc, one_process[name], f"{name} 1x4 vs 1x1")
    for tag in ("mcm-cd-ddp-w2-a2", "cd-fsdp-w2-a2"):
        _assert_same(torch.load(ranks / f"{tag}.pt", weights_only=True), one_process[_name(tag)], tag)


def test_an_fsdp_checkpoint_resumes_in_one_process_and_on_four_ranks(ranks, one_process):
    """The full state dicts FSDP gathers at step 10 on 2 ranks (weights, EMA, name-keyed Adam state,
    target net) continue in one process and under FSDP on 4 ranks to the 20-step weights."""
    half = torch.load(ranks / "ict-fsdp-w2-half.pt", weights_only=True)
    assert set(half["opt"]["state"]) == {n for n, _ in build_net(
        {"type": "mlp", "hidden": 16, "depth": 2}, (2,), 1).named_parameters()}  # full, by name
    plain = run_steps("ict", "ddp", Dist(), None, (RESUME_AT, STEPS), half)
    _assert_same(plain, one_process["ict"], "FSDP w2 -> 1 process")
    for tag in ("w2", "w4"):
        resumed = torch.load(ranks / f"ict-fsdp-{tag}-resumed.pt", weights_only=True)
        _assert_same(resumed, one_process["ict"], f"FSDP w2 -> FSDP {tag}")
    full = torch.load(ranks / "ict-fsdp-w2-a1.pt", weights_only=True)
    for k, v in full["opt"]["state"].items():  # the Adam moments too
        torch.testing.assert_close(plain["opt"]["state"][k]["exp_avg"], v["exp_avg"], atol=TOL, rtol=0)


def test_a_resumed_one_process_run_is_bit_identical_to_an_uninterrupted_one():
    """Resume through the engine's name-keyed optimiser state: exact, not just close (both runs on
    this thread count: the reduction order is part of what must not change)."""
    full = run_steps("ect", "ddp", Dist(), None)
    half = run_steps("ect", "ddp", Dist(), None, (0, RESUME_AT))
    rest = run_steps("ect", "ddp", Dist(), None, (RESUME_AT, STEPS), half)
    _assert_same(rest, full, "resume", tol=0.0)
    for k, v in full["opt"]["state"].items():
        assert all(torch.equal(rest["opt"]["state"][k][q], v[q]) for q in v), k


@pytest.mark.slow
def test_four_gloo_ranks_end_on_the_one_process_weights_for_every_method(tmp_path, one_process):
    """The remaining methods on 4 DDP ranks (the default run covers FOUR_RANKS)."""
    rest = [m for m in METHODS if m not in FOUR_RANKS]
    spawn(4, tmp_path, rest)
    for name in rest:
        _assert_same(torch.load(tmp_path / f"{name}-ddp-w4-a1.pt", weights_only=True), one_process[name], name)


def test_an_older_checkpoints_integer_keyed_adam_state_loads_by_name():
    """Checkpoints written before the engines hold torch's integer-keyed `opt.state_dict()`: it is
    renamed by parameter order and loads to the same Adam state (a resume of such a run goes on)."""
    method, net, ema, teacher, cfg, data = _setup("cd")
    shard = plan_shard(cfg.batch, 1, 0, None)
    _, opt = engage("ddp", Dist(), net, ema, method, teacher, cfg, shard)
    for step in range(2):
        train_step(method, net, opt, data, cfg, step, seed=3)
    legacy = opt.state_dict()
    assert list(legacy["state"]) == list(range(len(list(net.parameters()))))
    eng, again = engage("ddp", Dist(), net, ema, method, teacher, cfg, shard, legacy)
    got = again.state_dict()
    assert got["param_groups"] == legacy["param_groups"]
    for i, s in legacy["state"].items():
        assert all(torch.equal(got["state"][i][k], v) for k, v in s.items()), i
    assert set(eng.optimizer_state(again)["state"]) == {n for n, _ in net.named_parameters()}
