# One evaluation job per run covering all its step budgets (like sampling): the wildcard rule
# `evaluate` writes into `metrics/staged/`, `publish_metrics` links each budget's JSON into place.
localrules:
    publish_metrics,


rule evaluate:
    """Metrics of every sample shard of one run (FD/KID/PR or the exact toy metrics)."""
    input:
        samples=lambda wc: [f"{rdir(rid(wc))}/samples/steps{k}.npz" for k in RUN(wc).steps],
        refs=lambda wc: [ref_stats(RUN(wc).dataset, e) for e in S.extractors(RUN(wc).dataset)],
        extractors=lambda wc: [c for e in S.extractors(RUN(wc).dataset) if (c := extractor_ckpt(RUN(wc).dataset, e))],
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
    output:
        directory(f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/staged"),
    params:
        args=extractor_args,
        data=lambda wc: data_dir(RUN(wc).dataset),
        seed=lambda wc: RUN(wc).seed,
        crosscheck=S.raw.get("crosscheck", "all"),
        outs=lambda wc, output: [f"{output[0]}/steps{k}.json" for k in RUN(wc).steps],
        launch=launcher(PY, S.procs("evaluate")),  # > 1: torchrun ranks split feature extraction, rank 0 writes
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/evaluate.log",
    threads: THREADS
    resources:
        **S.resources("evaluate", DEVICE),
    conda:
        "../environment.yml"
    shell:
        "{params.launch:q} --log {log:q} evaluate --samples {input.samples:q} --data {params.data:q} {params.args:q}"
        " --seed {params.seed} --crosscheck {params.crosscheck:q} --threads {threads} --out {params.outs:q}"


rule publish_metrics:
    """One budget's metrics JSON under its own name (a hard link into metrics/staged)."""
    input:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/staged",
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/steps{{k}}.json",
    params:
        dest=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/publish-steps{{k}}.log",
    conda:
        "../environment.yml"
    shell:
        PUBLISH


rule evaluate_denoiser:
    """Toy data only: error of the trained denoiser against the exact GMM denoiser."""
    input:
        ckpt=lambda wc: ckpt(rid(wc)),
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/denoiser.json",
    params:
        data=lambda wc: data_dir(RUN(wc).dataset),
        py=operational(PY),
        suite=operational(SUITE_FILE),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/metrics/denoiser.log",
    threads: THREADS
    resources:
        **S.resources("evaluate", DEVICE),
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} evaluate-denoiser --suite {params.suite:q} --run {wildcards.dataset:q}/{wildcards.run:q}"
        " --ckpt {input.ckpt:q} --data {params.data:q} --threads {threads} --no-progress --out {output:q}"


rule edit:
    """Zero-shot editing panel (inpainting, 2x super-resolution) of a consistency model."""
    input:
        ckpt=lambda wc: ckpt(rid(wc)),
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
    output:
        report(f"{R}/{SUITE}/{{dataset}}/{{run}}/editing.png", caption="../report/editing.rst", category="Editing",
               subcategory="{dataset}"),
    params:
        data=lambda wc: data_dir(RUN(wc).dataset),
        py=operational(PY),
        suite=operational(SUITE_FILE),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/editing.log",
    threads: THREADS
    resources:
        **S.resources("sample", DEVICE),
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} edit --suite {params.suite:q} --run {wildcards.dataset:q}/{wildcards.run:q} --ckpt {input.ckpt:q}"
        " --data {params.data:q} --threads {threads} --no-progress --out {output:q}"
