# The functions the rules share (the linter wants no `def` beside a rule): every file name is
# derived from the suite here, once, and so is each non-file argument of a job.
import os

from benchmark.config import run_dir as _run_dir
from benchmark.distributed import launcher
from benchmark.plan.resources import train_resources
from benchmark.provenance import sha256_json
from methods.base import method_class

TRAINABLE_EXTRACTORS = {"digitnet"}


def data_id(dataset):
    """Prepared data lives under a name + spec hash, so suites share identical datasets only."""
    return f"{dataset}-{sha256_json(S.datasets[dataset])[:8]}"


DATA_IDS = {data_id(d): d for d in S.datasets}


def data_dir(dataset):
    return f"{R}/data/{data_id(dataset)}"


def rdir(run_id):
    return str(_run_dir(R, SUITE, S.runs[run_id]))


def ckpt(run_id):
    return f"{rdir(run_id)}/ckpt/final.pt"


def teacher_input(run):
    """The train job's teacher file: the teacher run's final checkpoint, or the imported
    `teacher_ckpt:` (path relative to the working directory), or none."""
    if run.teacher:
        return [ckpt(run.teacher)]
    return [run.teacher_ckpt] if run.teacher_ckpt else []


def extractor_ckpt(dataset, ext):
    return f"{data_dir(dataset)}/extractor_{ext}.pt" if ext in TRAINABLE_EXTRACTORS else None


def ref_stats(dataset, ext):
    return f"{data_dir(dataset)}/ref_{ext}_train.npz"


def metric_files(run_name):
    r = S.runs[run_name]
    out = [f"{rdir(run_name)}/metrics/steps{k}.json" for k in r.steps]
    # the denoiser error against the exact one: for headline runs (not every cell of a scaling grid)
    if (S.datasets[r.dataset]["kind"] == "gmm" and hasattr(method_class(r.method), "denoiser")
            and r.extra.get("grid_top") is not False):
        out.append(f"{rdir(run_name)}/metrics/denoiser.json")
    return out


def editing_panels():
    return [f"{rdir(n)}/editing.png" for n, r in S.runs.items()
            if method_class(r.method).supports_editing and S.datasets[r.dataset]["kind"] != "gmm" and r.seed == S.seeds[0]
            and not S.datasets[r.dataset].get("vae")]  # editing acts on pixels; latent models not yet


def rid(wc):
    """Run id from a rule's wildcards."""
    return f"{wc.dataset}/{wc.run}"


def RUN(wc):
    return S.runs[rid(wc)]


def operational(value):
    """A rule parameter that says how a job runs, not what it computes (the interpreter, the
    suite file's path, the device, the results directory): passed through `params:` as the linter
    asks, but as a function of `output`, which Snakemake counts as derived from the files and
    leaves out of its params rerun trigger. So a moved .venv or `--config device=cuda` re-trains
    nothing, exactly as when the shell commands read these variables directly; what a run
    computes is in its config hash (the `config_hash` parameter)."""
    return lambda wildcards, output: value


def imported_ref(dsid, ext):
    """A published reference file the suite names for this dataset and extractor
    (`datasets.<name>.reference: {inception: FILE}`, relative to data_root), or None."""
    ref = S.datasets[DATA_IDS[dsid]].get("reference", {}).get(ext)
    if ref is None:
        return None
    return ref if Path(ref).is_absolute() else str(Path(DATA_ROOT) / ref)


def latent_manifest(dataset):
    return f"{data_dir(dataset)}/latent/manifest.json"


def extractor_args(wc):
    """--ref NAME=stats.npz and --extractor-ckpt NAME=weights.pt for the run's dataset."""
    ds = RUN(wc).dataset
    exts = S.extractors(ds)
    ckpts = {e: extractor_ckpt(ds, e) for e in exts if extractor_ckpt(ds, e)}
    return ([a for e in exts for a in ("--ref", f"{e}={ref_stats(ds, e)}")]
            + [a for e, c in ckpts.items() for a in ("--extractor-ckpt", f"{e}={c}")])
