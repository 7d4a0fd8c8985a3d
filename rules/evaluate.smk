def _eval_inputs(wc):
    ds = RUN(wc).dataset
    exts = S.extractors(ds)
    d = {"samples": f"{rdir(rid(wc))}/samples/steps{wc.k}.npz",
         "refs": [ref_stats(ds, e) for e in exts],
         "extractors": [c for c in (extractor_ckpt(ds, e) for e in exts) if c]}
    return d


def _eval_args(wc, input):
    ds = RUN(wc).dataset
    exts = S.extractors(ds)
    args = [f"--ref {e}={r}" for e, r in zip(exts, input.refs)]
    args += [f"--extractor-ckpt {e}={extractor_ckpt(ds, e)}" for e in exts if extractor_ckpt(ds, e)]
    return " ".join(args)


rule evaluate:
    """Quality metrics of one sample shard, each row with its evaluator tuple."""
    input:
        unpack(_eval_inputs),
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/steps{{k}}.json",
    params:
        args=_eval_args,
        data=lambda wc: data_dir(RUN(wc).dataset),
        seed=lambda wc: RUN(wc).seed,
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/steps{{k}}.log",
    threads: THREADS
    shell:
        "{PY} -m benchmark --log {log} evaluate --samples {input.samples} --data {params.data} {params.args}"
        " --seed {params.seed} --threads {threads} --out {output}"


rule evaluate_denoiser:
    """Toy data only: error of the trained denoiser against the exact GMM denoiser."""
    input:
        ckpt=lambda wc: ckpt(rid(wc)),
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/denoiser.json",
    params:
        data=lambda wc: data_dir(RUN(wc).dataset),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/denoiser.log",
    threads: THREADS
    shell:
        "{PY} -m benchmark --log {log} evaluate-denoiser --suite {SUITE_FILE} --run {wildcards.dataset}/{wildcards.run}"
        " --ckpt {input.ckpt} --data {params.data} --threads {threads} --no-progress --out {output}"


rule edit:
    """Zero-shot editing panel (inpainting, 2x super-resolution) of a consistency model."""
    input:
        ckpt=lambda wc: ckpt(rid(wc)),
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/editing.png",
    params:
        data=lambda wc: data_dir(RUN(wc).dataset),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/editing.log",
    threads: THREADS
    shell:
        "{PY} -m benchmark --log {log} edit --suite {SUITE_FILE} --run {wildcards.dataset}/{wildcards.run} --ckpt {input.ckpt}"
        " --data {params.data} --threads {threads} --no-progress --out {output}"
