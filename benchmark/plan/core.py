"""A suite's plan: per run its FLOPs (flops.py), peak memory per device (memory.py), device-hours at a
stated MFU, whether it fits the device, the paper's budget beside it (budgets.py), and the DAG's wall
time on COUNT devices (schedule.py).

Device-hours = FLOPs / (dense peak of the run's precision x MFU) / 3600: MFU (model FLOP utilisation,
achieved / peak FLOP/s) is the one assumption, printed with where it came from (`make perf`'s
measured record for the device, else 40 % "assumed"). A job on g devices takes device-hours / g wall
hours (perfect data-parallel scaling: communication is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.compute import (
    forward_flops,
    forwards_per_step,
    fwd_bwd_flops,
    method_networks,
    role_forward_flops,
    sample_flops_per_image,
    training_flops,
)
from benchmark.errors import ConfigError
from benchmark.hardware import DEVICES, FIT_FRACTION, Device, default_mfu, parse_hardware, read_measured
from benchmark.plan import budgets as B
from benchmark.plan import flops as F
from benchmark.plan import memory as M
from benchmark.plan.schedule import Job, Schedule, schedule
from benchmark.train_config import TrainConfig

PRECISIONS = ("bf16", "tf32", "fp32")


@dataclass(frozen=True)
class Settings:
    """The hardware and assumptions a plan is made for."""

    device: Device
    count: int
    precision: str  # the one whose peak applies (bf16 / tf32 / fp32)
    mfu: float
    mfu_source: str
    engine: str  # ddp | fsdp
    mfu_override: float | None = None
    notes: tuple[str, ...] = ()
    train_gpus: int | None = None  # what-if: as if the suite set resources.train.gpus
    batch_per_gpu: int | None = None  # what-if: as if the suite set distributed.batch_per_gpu

    def gpus(self, suite: Any) -> int:
        return self.train_gpus or suite.procs("train")

    def micro_limit(self, suite: Any) -> int | None:
        return self.batch_per_gpu or suite.distributed.get("batch_per_gpu")

    @property
    def flops_per_hour(self) -> float:
        return self.device.peak(self.precision) * self.mfu * 3600


def effective_precision(dev: Device, requested: str) -> tuple[str, str | None]:
    """What runs on `dev`: the requested precision if the device has a peak for it, else fp32 (as
    benchmark/precision.py falls back: CPU options are no-ops, V100 lacks bf16), else bf16 (a TPU)."""
    peaks = {"bf16": dev.bf16, "tf32": dev.tf32, "fp32": dev.fp32}
    if peaks[requested] is not None:
        return requested, None
    fallback = "fp32" if dev.fp32 is not None else "bf16"
    return fallback, f"{requested} is not available on {dev.key}: planned at its {fallback} peak"


def suite_precision(suite: Any) -> str:
    """The precision a suite's `precision:` block asks for: bf16 autocast, else TF32, else fp32."""
    p = suite.precision
    return "bf16" if p.get("bf16") else "tf32" if p.get("tf32") else "fp32"


def make_settings(suite: Any, hardware: str, *, mfu: float | None = None, precision: str | None = None,
                  engine: str | None = None, measured: dict | None = None, train_gpus: int | None = None,
                  batch_per_gpu: int | None = None) -> Settings:
    """Settings for `--hardware NAME[:COUNT] [--mfu X] [--precision P] [--engine E] [--train-gpus N]
    [--batch-per-gpu N]`."""
    dev, count = parse_hardware(hardware)
    for flag, v in (("--train-gpus", train_gpus), ("--batch-per-gpu", batch_per_gpu)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} {v} is not an integer >= 1", f"give {flag} a positive integer")
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu:g} is not a fraction in (0, 1]", "write e.g. --mfu 0.4 for 40 %")
    want = precision or suite_precision(suite)
    if want not in PRECISIONS:
        raise ConfigError(f"unknown precision '{want}'", f"use one of: {', '.join(PRECISIONS)}")
    prec, note = effective_precision(dev, want)
    eng = engine or str(suite.distributed.get("engine", "ddp"))
    if eng not in ("ddp", "fsdp"):
        raise ConfigError(f"unknown distributed engine '{eng}'", "use ddp or fsdp")
    value, source = (mfu, "given with --mfu") if mfu is not None else default_mfu(
        dev.key, prec, read_measured() if measured is None else measured)
    what_if = [f"what-if: planned as if the suite set {k} = {v}" for k, v in
               (("resources.train.gpus", train_gpus), ("distributed.batch_per_gpu", batch_per_gpu)) if v]
    return Settings(dev, count, prec, value, source, eng, mfu, tuple(n for n in (note, *what_if) if n), train_gpus,
                    batch_per_gpu)


def device_rates(settings: Settings, measured: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """(dense peak FLOP/s, MFU) of every table device at each precision it has, under the plan's MFU rule
    (--mfu for all, else each device's measured or assumed one): the paper comparison's conversion."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for key, dev in DEVICES.items():
        out[key] = {}
        for prec in PRECISIONS:
            if effective_precision(dev, prec)[1] is None:
                out[key][prec] = (dev.peak(prec), settings.mfu_override or default_mfu(key, prec, measured)[0])
    out[settings.device.key][settings.precision] = (settings.device.peak(settings.precision), settings.mfu)
    return out


@dataclass
class RunPlan:
    run: Any
    flops: F.RunFlops
    memory: M.Memory
    gpus: int  # devices of its train job (resources.train.gpus)
    micro_batch: int
    accum: int
    train_device_hours: float
    sample_device_hours: float  # sampling of every step budget
    eval_device_hours: float  # feature extraction of every step budget's samples
    fits: bool
    comparison: B.Comparison | None = None


@dataclass
class SuitePlan:
    suite: Any
    settings: Settings
    runs: dict[str, RunPlan]
    schedule: Schedule
    notes: list[str] = field(default_factory=list)

    @property
    def too_big(self) -> list[RunPlan]:
        return [p for p in self.runs.values() if not p.fits]


def _net_flops(net, shape: tuple[int, ...], num_cond: int, key: tuple, cache: dict) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs per example of a net, measured once per architecture."""
    if key not in cache:
        cache[key] = (forward_flops(net, shape, num_cond), fwd_bwd_flops(net, shape, num_cond))
    return cache[key]


def run_flops(suite: Any, run: Any, upstream: dict[str, F.RunFlops], cache: dict) -> tuple[F.RunFlops, tuple]:
    """The run's RunFlops and its meta (method, net, teacher, shape) for the memory probe."""
    from benchmark.provenance import sha256_json

    built = F.build_meta_method(suite, run)
    method, net, teacher, shape = built
    method.setup(net, teacher)  # target nets exist from here (as in train_run)
    counts = F.training_counts(suite, run)
    nets = method_networks(net, teacher, method)
    arch = ("net", sha256_json(run.net), shape, method.num_cond, run.num_classes)
    fwd, fwdbwd = _net_flops(net, shape, method.num_cond, arch, cache)
    role_fwd = role_forward_flops(nets, net, fwd, shape, method.num_cond)
    own = training_flops(counts, fwd, fwdbwd, role_fwd)
    vae, note = cache.setdefault(("vae", run.dataset), F.vae_flops(suite, run.dataset))
    if vae and not run.teacher:  # the one-off encoding is charged to the root of a teacher chain
        own += vae["encode_flops_per_image"] * (M.dataset_train_size(suite.datasets[run.dataset]) or 0)
    teacher_flops = upstream[run.teacher].total_flops if run.teacher else None if run.teacher_ckpt else 0.0
    forwards = forwards_per_step(run.guidance, run.num_classes > 0)
    decode = (vae or {}).get("decode_flops_per_image", 0)
    sample = {k: sample_flops_per_image(fwd, method.nfe(k), forwards) + decode for k in run.steps}
    cfg = TrainConfig(**run.train)
    return F.RunFlops(run.id, cfg.total_steps * cfg.batch, counts, fwd, fwdbwd, role_fwd, float(own), teacher_flops,
                      {k: method.nfe(k) for k in run.steps}, sample, _eval_flops(suite, run, cache), M.params_of(net),
                      [note] if note else []), built


def _eval_flops(suite: Any, run: Any, cache: dict) -> dict[int, float]:
    """Extraction FLOPs per sample of each budget (0 for vector data: exact metrics)."""
    from benchmark.validation import dataset_shape

    spec = suite.datasets[run.dataset]
    if spec["kind"] == "gmm":
        return dict.fromkeys(run.steps, 0.0)
    image = dataset_shape({k: v for k, v in spec.items() if k != "vae"})
    per = sum(cache.setdefault(("ext", e, image), F.extractor_flops(e, image)) for e in suite.extractors(run.dataset))
    return {k: float(per * n) for k, n in F.eval_passes(suite, run).items()}


def run_memory(suite: Any, run: Any, built: tuple, settings: Settings) -> tuple[M.Memory, int, int, int]:
    """(memory per device, train-job devices, micro-batch, accumulation steps) of a run's train job."""
    from benchmark.distributed import plan_shard
    from methods.base import batch_group

    method, net, teacher, shape = built
    gpus = settings.gpus(suite)
    cfg = TrainConfig(**run.train)
    try:
        shard = plan_shard(cfg.batch, gpus, 0, settings.micro_limit(suite), batch_group(method))
    except ConfigError as e:
        raise ConfigError(f"{run.id}: {e.what}", e.fix) from None
    nets = method_networks(net, teacher, method)
    act = M.saved_activation_bytes(lambda: F.meta_loss(method, net, run, shard.micro, shape, 0), list(nets.values()))
    data = M.resident_data_bytes(suite.datasets[run.dataset], shape)
    mem = M.training_memory(nets, act, world=gpus, engine=settings.engine, bf16=settings.precision == "bf16",
                            data=data)
    return mem, gpus, shard.micro, shard.accum


def plan_run(suite: Any, run: Any, settings: Settings, upstream: dict[str, F.RunFlops], cache: dict,
             budgets: list[B.PaperBudget], rates: dict[str, dict[str, tuple[float, float]]]) -> RunPlan:
    """One run's plan. Seeds of one experiment cost the same: the first seed's is reused."""
    from dataclasses import replace

    from benchmark.aggregate import paper_dataset_key

    same = cache.get(("run", run.dataset, run.key))
    if same is None:
        fl, built = run_flops(suite, run, upstream, cache)
        same = cache[("run", run.dataset, run.key)] = (fl, *run_memory(suite, run, built, settings))
    fl0, mem, gpus, micro, accum = same
    teacher = upstream[run.teacher].total_flops if run.teacher else fl0.teacher_flops
    fl = replace(fl0, run_id=run.id, teacher_flops=teacher)
    rate, n = settings.flops_per_hour, suite.num_samples
    plan = RunPlan(run, fl, mem, gpus, micro, accum, fl.train_flops / rate, n * sum(fl.sample_flops_per_image.values())
                   / rate, n * sum(fl.eval_flops_per_image.values()) / rate,
                   mem.total <= FIT_FRACTION * settings.device.memory_bytes)
    budget = B.pick_budget(budgets, run.method, paper_dataset_key(suite.datasets[run.dataset]) or "", run.recipe,
                           fl.train_images)
    if budget is not None:
        plan.comparison = B.compare(budget, fl.train_flops, fl.total_flops, rates, settings.device.key,
                                    settings.precision, run.recipe, fl.train_images)
    return plan


def suite_jobs(suite: Any, runs: dict[str, RunPlan]) -> dict[str, Job]:
    """Train, sample and evaluate job of every run, with their dependencies and wall hours."""
    jobs: dict[str, Job] = {}
    gs, ge = suite.procs("sample"), suite.procs("evaluate")
    for rid, p in runs.items():
        jobs[f"train {rid}"] = Job(f"train {rid}", p.train_device_hours / p.gpus, p.gpus,
                                   (f"train {p.run.teacher}",) if p.run.teacher else ())
        jobs[f"sample {rid}"] = Job(f"sample {rid}", p.sample_device_hours / gs, gs, (f"train {rid}",))
        jobs[f"evaluate {rid}"] = Job(f"evaluate {rid}", p.eval_device_hours / ge, ge, (f"sample {rid}",))
    return jobs


def plan_suite(suite: Any, settings: Settings, *, paper_csv=B.PAPER_CSV, measured: dict | None = None) -> SuitePlan:
    """Plan every run of a validated suite, teachers before students."""
    from benchmark.expand import topo_order

    measured = read_measured() if measured is None else measured
    budgets, rates = B.load_budgets(paper_csv), device_rates(settings, measured)
    cache: dict = {}
    runs: dict[str, RunPlan] = {}
    upstream: dict[str, F.RunFlops] = {}
    for rid in topo_order(suite.runs):
        runs[rid] = plan_run(suite, suite.runs[rid], settings, upstream, cache, budgets, rates)
        upstream[rid] = runs[rid].flops
    ordered = {rid: runs[rid] for rid in suite.runs}  # suite order for printing
    notes = sorted({n for p in runs.values() for n in p.flops.notes} | set(settings.notes))
    return SuitePlan(suite, settings, ordered, schedule(suite_jobs(suite, runs), settings.count), notes)


def suggest_batch_per_gpu(plan: SuitePlan) -> int | None:
    """The largest power of two for `distributed.batch_per_gpu` with which every run of the plan fits
    (activations scale with the micro-batch, the other terms do not); None if some run cannot fit even
    at one example per device."""
    limit = None
    for p in plan.runs.values():
        per_example = p.memory.terms["activations"] / max(p.micro_batch, 1)
        room = FIT_FRACTION * plan.settings.device.memory_bytes - (p.memory.total - p.memory.terms["activations"])
        fit = int(room // per_example) if per_example > 0 else p.micro_batch
        limit = fit if limit is None else min(limit, fit)
    if limit is None or limit < 1:
        return None
    return 1 << (limit.bit_length() - 1)
