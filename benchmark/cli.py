"""`python -m benchmark <subcommand>`: one subcommand per Snakemake rule, explicit file
arguments, one-line errors (`error: <what> — <fix>`, exit 2) for every expected failure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from benchmark.errors import BenchmarkError
from benchmark.input_tables import PAPER_NEED, read_table, results_need
from benchmark.plan import PLAN_ARGS
from benchmark.runner import cmd_run

log = logging.getLogger("fewstep")


def _suite(args):
    from benchmark.config import load_suite

    return load_suite(args.suite)


def _log_format() -> str:
    """The log line format; under torchrun (WORLD_SIZE > 1) each line names its rank, because
    every rank of a job appends to the one `--log` file the rule declares and untagged lines
    from N processes could not be told apart."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    tag = f"[rank {rank}/{world}] " if world.isdigit() and int(world) > 1 else ""
    return f"%(asctime)s %(levelname)s {tag}%(message)s"


def _setup_logging(logfile: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile))  # mode "a": ranks append whole lines
    logging.basicConfig(level=logging.INFO, format=_log_format(), handlers=handlers)


def _env_int(name: str) -> int | None:
    """An integer environment variable, or None if unset; a one-line error if malformed."""
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        from benchmark.errors import ConfigError

        raise ConfigError(f"environment variable {name}={v!r} is not an integer",
                          f"unset {name} or set an integer") from None


def _threads(args) -> None:
    import torch

    _check_device(args)  # every command that takes --threads runs torch on a device

    n = getattr(args, "threads", None) or _env_int("FEWSTEP_THREADS")
    if n is not None and n < 1:
        from benchmark.errors import ConfigError

        raise ConfigError(f"thread count {n} is invalid", "use --threads N (or FEWSTEP_THREADS) with N >= 1")
    if n:
        torch.set_num_threads(int(n))


def _check_device(args) -> None:
    """`--device` names a device this machine has: a one-line error, not a traceback from `.to()`."""
    import torch

    dev = getattr(args, "device", None) or "cpu"
    try:
        d = torch.device(dev)
    except (RuntimeError, ValueError):
        from benchmark.errors import ConfigError

        raise ConfigError(f"unknown device '{dev}'", "use --device cpu or cuda (cuda:N)") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        from benchmark.errors import ConfigError

        raise ConfigError(f"device '{dev}' is not available on this machine ({torch.cuda.device_count()} GPUs)",
                          "use --device cpu (snakemake: --config device=cpu) or run where the GPU is")


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """`--flag NAME=PATH` (repeatable) -> {NAME: PATH}; a one-line error if a value lacks `=`."""
    from benchmark.errors import ConfigError

    out = {}
    for kv in values or []:
        name, sep, path = kv.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {kv!r} is not of the form NAME=PATH", f"write e.g. {flag} digitnet=ref.npz")
        out[name] = path
    return out


def cmd_validate(args) -> int:
    s = _suite(args)
    print(f"suite '{s.name}': {len(s.runs)} runs, {sum(len(r.steps) for r in s.runs.values())} sample sets — ok")
    for name, r in s.runs.items():
        print(f"  {name:40s} steps={list(r.steps)} teacher={r.teacher or r.teacher_ckpt or '-'} hash={r.config_hash}")
    return 0


def cmd_prepare(args) -> int:
    from benchmark.prepare import prepare_dataset

    s = _suite(args)
    if args.dataset not in s.datasets:
        from benchmark.errors import ConfigError

        raise ConfigError(f"suite '{s.name}' has no dataset '{args.dataset}'", f"use one of: {', '.join(s.datasets)}")
    m = prepare_dataset(args.dataset, s.datasets[args.dataset], Path(args.out), data_root=args.data_root)
    log.info("prepared %s: %d train / %d test, shape %s", args.dataset, m["n_train"], m["n_test"], m["shape"])
    return 0


def cmd_encode(args) -> int:
    from benchmark.errors import ConfigError
    from benchmark.latent import encode_dataset, vae_spec

    _threads(args)
    s = _suite(args)
    if args.dataset not in s.datasets:
        raise ConfigError(f"suite '{s.name}' has no dataset '{args.dataset}'", f"use one of: {', '.join(s.datasets)}")
    spec = vae_spec(s.datasets[args.dataset].get("vae"), args.data_root)
    if spec is None:
        raise ConfigError(f"dataset '{args.dataset}' of suite '{s.name}' has no `vae:`",
                          "add `vae: {path: DIR}` to it, or train in pixel space")
    m = encode_dataset(Path(args.data), spec, Path(args.out), batch=args.batch, device=args.device, progress=True)
    log.info("encoded %s: %d latents of shape %s (std %.3f)", args.dataset, m["n_train"], m["shape"], m["latent_std"])
    return 0


def cmd_train_extractor(args) -> int:
    from benchmark.errors import ConfigError
    from benchmark.metrics.extractors import train_digitnet

    trainers = {"digitnet": train_digitnet}
    if args.extractor not in trainers:
        raise ConfigError(f"extractor '{args.extractor}' is not trainable here", f"use one of: {', '.join(trainers)}")
    info = trainers[args.extractor](Path(args.data), Path(args.out), seed=args.seed)
    log.info("extractor %s: %s", args.extractor, json.dumps({k: v for k, v in info.items() if k != "provenance"}))
    return 0


def cmd_ref_stats(args) -> int:
    from benchmark.metrics.evaluate import check_extractor_file
    from benchmark.metrics.refstats import compute_ref_stats, import_ref_stats

    if args.import_file:
        import_ref_stats(Path(args.data), args.extractor, Path(args.import_file), Path(args.out), split=args.split)
        return 0
    if args.extractor_ckpt:
        check_extractor_file(args.extractor, args.extractor_ckpt)
    compute_ref_stats(Path(args.data), args.extractor, Path(args.out), split=args.split,
                      extractor_ckpt=Path(args.extractor_ckpt) if args.extractor_ckpt else None)
    return 0


def cmd_train(args) -> int:
    from benchmark.train import train_run

    _threads(args)
    s = _suite(args)
    run = s.run(args.run)
    nan = _env_int("FEWSTEP_INJECT_NAN_STEP")
    if args.teacher and not run.teacher_ckpt:  # a trained teacher's compute.json feeds the total: corrupt -> one line
        from benchmark.provenance import read_json
        from benchmark.runs import compute_json_path

        if compute_json_path(args.teacher).is_file():
            read_json(compute_json_path(args.teacher), "train",
                      fix=f"delete {args.teacher} and re-run (training the teacher rewrites both)")
    comp = train_run(run, s, Path(args.data), Path(args.out), Path(args.teacher) if args.teacher else None,
                     progress=not args.no_progress, device=args.device, nan_at_step=nan)
    if comp:  # rank 0 (or the only process) returns the accounting; other DDP ranks return {}
        log.info("trained %s: %.3g FLOPs (total incl. teacher %.3g), %.1f s", run.name, comp["train_flops"],
                 comp["total_flops"], comp["device_seconds"])
    return 0


def cmd_sample(args) -> int:
    from benchmark.sample import sample_run

    _threads(args)
    s = _suite(args)
    run = s.run(args.run)
    outs = _pair(args.steps, args.out, "--steps", "--out")
    for k, _ in outs:  # every budget is checked before any sampling
        from benchmark.validation import MAX_STEPS

        if not 1 <= k <= MAX_STEPS:
            from benchmark.errors import ConfigError

            raise ConfigError(f"step budget {k} is invalid", f"use --steps with integers from 1 to {MAX_STEPS}")
    for k, out in outs:
        info = sample_run(run, Path(args.ckpt), k, Path(out),
                          num_samples=s.num_samples if args.num is None else args.num,
                          batch=s.sample_batch if args.batch is None else args.batch,
                          progress=not args.no_progress, device=args.device)
        if info:  # other torchrun ranks return {} (rank 0 writes the merged shard)
            log.info("sampled %s at %d steps (NFE %d): %.0f img/s", run.name, k, info["nfe"],
                     info["images_per_second"])
    return 0


def _pair(a: list, b: list, name_a: str, name_b: str) -> list[tuple]:
    """Zip two repeated arguments, which must have the same length (one output per input)."""
    if len(a) != len(b):
        from benchmark.errors import ConfigError

        raise ConfigError(f"{len(a)} {name_a} values but {len(b)} {name_b} values", f"give one {name_b} per {name_a}")
    return list(zip(a, b))


def cmd_evaluate(args) -> int:
    import torch

    from benchmark import distributed as D
    from benchmark.metrics.evaluate import crosschecked, evaluate_samples

    _threads(args)
    dist = D.init("cuda" if torch.cuda.is_available() else "cpu")  # torchrun ranks split feature extraction
    if dist.active:
        log.info("rank %d of %d: extracting features of its block of every shard", dist.rank, dist.world)
    refs = _pairs(args.ref, "--ref")
    ckpts = _pairs(args.extractor_ckpt, "--extractor-ckpt")
    for i, (samples, out) in enumerate(_pair(args.samples, args.out, "--samples", "--out")):
        evaluate_samples(Path(samples), Path(args.data), Path(out), extractors=list(refs),
                         refs={k: Path(v) for k, v in refs.items()},
                         extractor_ckpts={k: Path(v) for k, v in ckpts.items()}, seed=args.seed,
                         crosscheck=crosschecked(args.crosscheck, i), dist=dist)
    return 0


def cmd_evaluate_denoiser(args) -> int:
    """Error of a trained EDM denoiser vs the exact GMM denoiser (toy data only)."""
    from benchmark.denoiser_eval import evaluate_denoiser

    _threads(args)
    s = _suite(args)
    evaluate_denoiser(s.run(args.run), Path(args.ckpt), Path(args.data), Path(args.out))
    return 0


def _verify_sidecars(s, results_root: Path) -> None:
    """Every sample-info and metrics JSON aggregate is about to read must match its sha256 sidecar
    (a torn or hand-edited file fails here in one line instead of entering results.csv)."""
    from benchmark.config import run_dir
    from benchmark.provenance import verify_sidecar

    for r in s.runs.values():
        d = run_dir(results_root, s.name, r)
        for k in r.steps:
            for rule, p in (("sample", d / "samples" / f"steps{k}.json"),
                            ("evaluate", d / "metrics" / f"steps{k}.json")):
                if p.is_file():
                    verify_sidecar(p, rule)


def cmd_aggregate(args) -> int:
    from benchmark.aggregate import aggregate

    s = _suite(args)
    _verify_sidecars(s, Path(args.results_root))
    paper = Path(__file__).resolve().parents[1] / "config" / "paper_results.csv"
    if paper.exists():  # aggregate joins paper values from it: malformed -> one line, not a pandas traceback
        read_table(paper, PAPER_NEED, "paper results", "fix it to the columns and number formats of the "
                   "repository's config/paper_results.csv (git checkout config/paper_results.csv)")
    df = aggregate(s, Path(args.results_root), Path(args.out))
    log.info("aggregated %d rows into %s", len(df), args.out)
    return 0


def cmd_fit(args) -> int:
    from benchmark.scaling import fit_suite

    read_table(args.results, results_need(), "results table",
               f"delete {args.results} and re-run the `aggregate` rule")
    fit_suite(Path(args.results), Path(args.out))
    return 0


def cmd_report(args) -> int:
    from benchmark.report import build_report
    from benchmark.scaling import SCALING_COLUMNS

    read_table(args.results, results_need(), "results table", f"delete {args.results} and re-run the `aggregate` rule")
    if Path(args.scaling).exists():  # a header-only scaling table is valid: nothing had >= 3 compute values
        read_table(args.scaling, (list(SCALING_COLUMNS), []), "scaling table",
                   f"delete {args.scaling} and re-run the `fit` rule", allow_no_rows=True)
    read_table(args.paper, PAPER_NEED, "paper results", "fix it to the columns and number formats of the "
               "repository's config/paper_results.csv (git checkout config/paper_results.csv)")
    out = build_report(Path(args.results), Path(args.scaling), Path(args.paper), Path(args.out).parent,
                       suite=args.suite_name, results_root=Path(args.results_root),
                       editing_panels=[Path(p) for p in args.editing or []])
    print(f"report: {Path(out).resolve()}")
    return 0


def cmd_edit(args) -> int:
    from benchmark.editing import edit_panel

    _threads(args)
    s = _suite(args)
    edit_panel(s.run(args.run), Path(args.ckpt), Path(args.data), Path(args.out), seed=args.seed)
    return 0


def cmd_doctor(args) -> int:
    from benchmark.doctor import doctor

    print(doctor())
    return 0


def _out_of_memory(e: BaseException) -> bool:
    """torch's CPU allocator and CUDA raise RuntimeError subclasses for an allocation that failed."""
    msg = str(e)
    return (type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in msg
            or "CUDA out of memory" in msg or "out of memory" in msg.lower()[:200])


def os_error_line(e: OSError) -> str:
    """One line `<what> — <fix>` for an OSError that reached the CLI: names the path and the cause.
    (Atomic writes remove their temp file on the way out, so nothing half-written is left.)"""
    import errno

    path = e.filename if e.filename is not None else "a file"
    what = f"{e.strerror or e.__class__.__name__}: {path}" + (f" -> {e.filename2}" if e.filename2 else "")
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        fix = "free disk space (or point results/ elsewhere) and re-run; nothing half-written was kept"
    elif isinstance(e, PermissionError) or e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make that path writable/readable (or choose another results directory) and re-run"
    elif isinstance(e, (FileExistsError, NotADirectoryError)):
        fix = "a file stands where a directory is needed: move it or choose another output path"
    elif isinstance(e, FileNotFoundError):
        fix = "check the path (run the rule that writes it first)"
    else:
        fix = "check the path, free space and permissions, then re-run"
    return " ".join(f"{what} — {fix}".split())


# --- paper networks: architecture table and checkpoint import (issue #15) --------------------

def cmd_nets(args) -> int:
    """Each run's architecture and parameter count (built on the meta device: instant, no memory)."""
    import torch

    from benchmark.compute import forward_flops
    from benchmark.nets import build_net
    from benchmark.validation import dataset_shape
    from methods.base import method_class

    s = _suite(args)
    cols = f"{'run (all seeds)':40s} {'net':9s} {'input':12s} {'classes':>7s} {'params':>13s}"
    print(cols + (f" {'GFLOPs/fwd':>11s}" if args.flops else ""))
    shown = {f"{r.dataset}/{r.key}": r for r in s.runs.values()}  # seeds share the architecture
    for rid, run in shown.items():
        shape, num_cond = dataset_shape(s.raw["datasets"][run.dataset]), method_class(run.method).num_cond
        classes = int(getattr(run, "num_classes", 0) or 0)
        with torch.device("meta"):
            net = build_net(run.net, shape, num_cond, classes)
        n = sum(p.numel() for p in net.parameters())
        kind = run.net.get("type") or ("mlp" if len(shape) == 1 else "unet")
        line = (f"{rid:40s} {kind:9s} {'x'.join(map(str, shape)):12s} "
                f"{getattr(net, 'label_dim', 0) or getattr(net, 'num_classes', 0):7d} {n:13,d}")
        print(line + (f" {forward_flops(net, shape, num_cond) / 1e9:11.4g}" if args.flops else ""))
    return 0


def cmd_plan(args) -> int:
    from benchmark.plan.command import run_plan

    return run_plan(args)


def cmd_import_checkpoint(args) -> int:
    from benchmark.import_ckpt import import_checkpoint

    info = import_checkpoint(Path(args.src), args.kind, Path(args.out), resolution=args.resolution,
                             attention=args.attention)
    print(f"imported {args.src} ({info['kind']}, {info['params']:,} parameters) -> {args.out}")
    print(f"  net: {json.dumps(info['net_cfg'])}  data_shape: {info['data_shape']}")
    return 0


def _arg(*flags: str, **kw: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One `add_argument(*flags, **kw)` call of the SUBCOMMANDS table."""
    return flags, kw


def _run_args(multi_out: bool = False) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The arguments every per-run step shares (train, sample, evaluate-denoiser, edit)."""
    return [
        _arg("--run", required=True, help="run id: DATASET/METHOD-VARIANT-sSEED"),
        _arg("--out", required=True, nargs="+" if multi_out else None,
             help="output file(s); for sample one per --steps value"),
        _arg("--threads", type=int),
        _arg("--device", default="cpu"),
        _arg("--no-progress", action="store_true"),
    ]


_SUITE = _arg("--suite", required=True, help="suite name (config/suites/NAME.yaml) or YAML path")
_CKPT_DATA_SEED = [_arg("--ckpt", required=True), _arg("--data", required=True), _arg("--seed", type=int, default=0)]

# name, function, help, arguments (in --help order; _SUITE first where the step reads a suite)
SUBCOMMANDS: list[tuple[str, Any, str, list]] = [
    ("validate", cmd_validate, "validate a suite and list its runs", [_SUITE]),
    ("prepare", cmd_prepare, "materialise a dataset", [
        _SUITE, _arg("--dataset", required=True),
        _arg("--data-root", default=None, help="base for relative dataset paths"),
        _arg("--out", required=True, help=".../manifest.json")]),
    ("encode", cmd_encode, "encode a prepared image dataset into VAE latents (datasets with vae:)", [
        _SUITE, _arg("--dataset", required=True),
        _arg("--data", required=True, help="the prepared dataset's directory"),
        _arg("--data-root", default=None, help="base for a relative vae.path"), _arg("--batch", type=int, default=64),
        _arg("--threads", type=int), _arg("--device", default="cpu"),
        _arg("--out", required=True, help=".../latent/manifest.json")]),
    ("train-extractor", cmd_train_extractor, "train an offline feature extractor (digitnet)", [
        _arg("--extractor", required=True), _arg("--data", required=True), _arg("--out", required=True),
        _arg("--seed", type=int, default=0)]),
    ("ref-stats", cmd_ref_stats, "reference feature statistics of a dataset split", [
        _arg("--data", required=True), _arg("--extractor", required=True), _arg("--extractor-ckpt"),
        _arg("--split", default="train"),
        _arg("--import", dest="import_file", help="published mu/sigma (EDM/openai .npz, torch-fidelity .pt)"),
        _arg("--out", required=True)]),
    ("train", cmd_train, "train one run (resumes automatically)", [
        _SUITE, *_run_args(), _arg("--data", required=True), _arg("--teacher")]),
    ("sample", cmd_sample, "sample one run at one or more step budgets (same noise)", [
        _SUITE, *_run_args(multi_out=True), _arg("--ckpt", required=True),
        _arg("--steps", required=True, type=int, nargs="+", help="step budget(s)"), _arg("--num", type=int),
        _arg("--batch", type=int)]),
    ("evaluate-denoiser", cmd_evaluate_denoiser, "denoiser error vs the exact one (gmm)", [
        _SUITE, *_run_args(), *_CKPT_DATA_SEED]),
    ("edit", cmd_edit, "zero-shot editing panel of a consistency model", [_SUITE, *_run_args(), *_CKPT_DATA_SEED]),
    ("evaluate", cmd_evaluate, "metrics of one or more sample shards", [
        _arg("--samples", required=True, nargs="+", help="sample shard(s)"), _arg("--data", required=True),
        _arg("--ref", action="append", help="EXTRACTOR=ref_stats.npz (repeatable)"),
        _arg("--extractor-ckpt", action="append", help="EXTRACTOR=weights.pt (repeatable)"),
        _arg("--seed", type=int, default=0),
        _arg("--out", required=True, nargs="+", help="metrics JSON(s), one per --samples"),
        _arg("--crosscheck", choices=["all", "first", "none"], default="all",
             help="clean-fid's FD beside torch-fidelity's for every shard, the first only, or none"),
        _arg("--threads", type=int)]),
    ("aggregate", cmd_aggregate, "collect all metrics into results.csv", [
        _SUITE, _arg("--results-root", default="results"), _arg("--out", required=True)]),
    ("fit", cmd_fit, "fit scaling laws", [_arg("--results", required=True), _arg("--out", required=True)]),
    ("report", cmd_report, "write the HTML report", [
        _arg("--suite-name", required=True), _arg("--results", required=True), _arg("--scaling", required=True),
        _arg("--paper", default=str(Path(__file__).resolve().parents[1] / "config" / "paper_results.csv")),
        _arg("--results-root", default="results"), _arg("--editing", action="append"),
        _arg("--out", required=True)]),
    ("run", cmd_run, "run a suite through Snakemake; safe to re-run after a kill (stale lock removed)", [
        _SUITE, _arg("--cores", type=int, default=2),
        _arg("--directory", default=".", help="working directory (results/, reports/, .snakemake/)"),
        _arg("--config", action="append", help="extra Snakemake config KEY=VALUE (repeatable)"),
        _arg("snakemake_args", nargs=argparse.REMAINDER, help="after `--`: passed on to snakemake")]),
    ("doctor", cmd_doctor, "list which assets are present and which suites can run", []),
    ("nets", cmd_nets, "print each run's network and parameter count", [
        _SUITE, _arg("--flops", action="store_true", help="also FLOPs per forward (FlopCounterMode on meta)")]),
    ("plan", cmd_plan, "project a suite's FLOPs, device-hours, memory and wall time before running it", PLAN_ARGS),
    ("import-checkpoint", cmd_import_checkpoint, "convert a released EDM/ECT/CM network", [
        _arg("src", help="EDM/ECT .pkl or exported state dict (--kind edm); openai CM .pt (--kind cm)"),
        _arg("--kind", required=True, choices=["edm", "cm"]),
        _arg("--out", required=True, help="our checkpoint (.pt, with a .sha256 sidecar)"),
        _arg("--resolution", type=int, help="image resolution (required for --kind cm)"),
        _arg("--attention", choices=["flash", "legacy"], default="flash",
             help="qkv layout of a CM checkpoint (released ones: flash)")]),
]


# One example per subcommand, shown at the end of its --help: the entry commands as a user types
# them, the workflow steps as the Snakemake rules call them on the smoke suite (`snakemake -n -p
# --config suite=smoke` prints the real ones; the data directories carry the dataset spec's hash).
_D, _R = "results/data/digits-20d071bd", "results/smoke/gmm/edm-tiny-s0"
EXAMPLES: dict[str, str] = {
    "run": "python -m benchmark run --suite quick --cores 2",
    "validate": "python -m benchmark validate --suite quick",
    "doctor": "python -m benchmark doctor",
    "plan": "python -m benchmark plan --suite cifar10",
    "nets": "python -m benchmark nets --suite cifar10 --flops",
    "import-checkpoint": "python -m benchmark import-checkpoint edm-cifar10-32x32-uncond-vp.pkl --kind edm "
                         "--out ckpt/edm-cifar10.pt",
    "prepare": f"python -m benchmark prepare --suite smoke --dataset digits --out {_D}/manifest.json",
    "encode": "python -m benchmark encode --suite imagenet256 --dataset imagenet256 --data "
              "results/data/imagenet256-HASH --device cuda --out results/data/imagenet256-HASH/latent/manifest.json",
    "train-extractor": f"python -m benchmark train-extractor --extractor digitnet --data {_D} "
                       f"--out {_D}/extractor_digitnet.pt",
    "ref-stats": f"python -m benchmark ref-stats --data {_D} --extractor digitnet --extractor-ckpt "
                 f"{_D}/extractor_digitnet.pt --out {_D}/ref_digitnet_train.npz",
    "train": f"python -m benchmark train --suite smoke --run gmm/edm-tiny-s0 --data results/data/gmm-41c2cf38 "
             f"--out {_R}/ckpt/final.pt",
    "sample": f"python -m benchmark sample --suite smoke --run gmm/edm-tiny-s0 --ckpt {_R}/ckpt/final.pt "
              f"--steps 1 4 --out {_R}/samples/steps1.npz {_R}/samples/steps4.npz",
    "evaluate": f"python -m benchmark evaluate --samples {_R}/samples/steps1.npz --data results/data/gmm-41c2cf38 "
                f"--out {_R}/metrics/steps1.json",
    "evaluate-denoiser": f"python -m benchmark evaluate-denoiser --suite smoke --run gmm/edm-tiny-s0 --ckpt "
                         f"{_R}/ckpt/final.pt --data results/data/gmm-41c2cf38 --out {_R}/metrics/denoiser.json",
    "edit": "python -m benchmark edit --suite quick --run digits/cd-unet-s0 --ckpt "
            "results/quick/digits/cd-unet-s0/ckpt/final.pt --data results/data/digits-20d071bd "
            "--out results/quick/digits/cd-unet-s0/editing.png",
    "aggregate": "python -m benchmark aggregate --suite smoke --out results/smoke/results.csv",
    "fit": "python -m benchmark fit --results results/smoke/results.csv --out results/smoke/scaling.csv",
    "report": "python -m benchmark report --suite-name smoke --results results/smoke/results.csv "
              "--scaling results/smoke/scaling.csv --out reports/smoke/index.html",
}
# `python -m benchmark --help` lists the subcommands in these groups, the ones a user types first;
# a name not (yet) registered is skipped, one registered but not grouped lands under "other".
GROUPS: list[tuple[str, list[str]]] = [
    ("run a suite", ["run", "validate", "doctor", "plan", "nets"]),
    ("paper networks", ["import-checkpoint"]),
    ("workflow steps (one per Snakemake rule; the rules call these)",
     ["prepare", "encode", "train-extractor", "ref-stats", "train", "sample", "evaluate", "evaluate-denoiser",
      "edit", "aggregate", "fit", "report"]),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line in the CLI's format (`error: <what> — <fix>`, exit 2)."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())} — see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def grouped_commands(helps: dict[str, str]) -> str:
    """The subcommand listing of the top-level --help: GROUPS in order, then any other command."""
    grouped = [n for _, names in GROUPS for n in names]
    groups = [*GROUPS, ("other", [n for n in helps if n not in grouped])]
    width = max(map(len, helps)) + 2
    lines = []
    for title, names in groups:
        names = [n for n in names if n in helps]
        if names:
            lines += [f"{title}:", *(f"  {n:{width}s}{helps[n]}" for n in names), ""]
    return "\n".join([*lines, "example:", f"  {EXAMPLES['run']}"])


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subparser per row of SUBCOMMANDS, each calling its function with the args; each
    --help ends with its example, the top-level one lists the subcommands grouped."""
    raw = argparse.RawDescriptionHelpFormatter
    helps = {name: help_ for name, _, help_, _ in SUBCOMMANDS}
    p = _Parser(prog="python -m benchmark", description=__doc__, formatter_class=raw,
                epilog=grouped_commands(helps))
    p.add_argument("--log", help="also log to this file")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", help="one of the commands below")
    for name, fn, help_, args in SUBCOMMANDS:
        example = f"example:\n  {EXAMPLES[name]}" if name in EXAMPLES else None
        sp = sub.add_parser(name, description=help_, epilog=example, formatter_class=raw)
        sp.set_defaults(fn=fn)
        for flags, kw in args:
            sp.add_argument(*flags, **kw)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args.log)  # inside: an unwritable --log path is an OSError like any other
        return int(args.fn(args) or 0)
    except BenchmarkError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment, not the code: read-only dir, disk full, unreadable file
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch reports an allocation failure as a RuntimeError
        if not isinstance(e, MemoryError) and not _out_of_memory(e):
            raise  # a genuine bug: keep its traceback
        print(f"error: out of memory in `{args.cmd}` — lower the batch (train.batch, sample_batch), num_samples or "
              "the network/dataset size, or run on a machine with more memory", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print("error: interrupted — re-run the same command; it resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
