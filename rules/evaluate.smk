# One evaluation job per run covering all its step budgets (generated per run, like sampling).
for _id, _r in S.runs.items():
    _exts = S.extractors(_r.dataset)
    _ckpts = {e: extractor_ckpt(_r.dataset, e) for e in _exts if extractor_ckpt(_r.dataset, e)}

    rule:
        name:
            f"evaluate_{rule_tag(_id)}"
        message:
            f"evaluate {_id} at steps {list(_r.steps)}"
        input:
            samples=[f"{rdir(_id)}/samples/steps{k}.npz" for k in _r.steps],
            refs=[ref_stats(_r.dataset, e) for e in _exts],
            extractors=list(_ckpts.values()),
            data=f"{data_dir(_r.dataset)}/manifest.json",
        output:
            [f"{rdir(_id)}/metrics/steps{k}.json" for k in _r.steps],
        params:
            args=[a for e in _exts for a in ("--ref", f"{e}={ref_stats(_r.dataset, e)}")]
            + [a for e, c in _ckpts.items() for a in ("--extractor-ckpt", f"{e}={c}")],
            data=data_dir(_r.dataset),
            seed=_r.seed,
            crosscheck=S.raw.get("crosscheck", "all"),
        log:
            f"{rdir(_id)}/metrics/evaluate.log",
        threads: THREADS
        shell:
            "{PY:q} -m benchmark --log {log:q} evaluate --samples {input.samples:q} --data {params.data:q} {params.args:q}"
            " --seed {params.seed} --crosscheck {params.crosscheck:q} --threads {threads} --out {output:q}"


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
        "{PY:q} -m benchmark --log {log:q} evaluate-denoiser --suite {SUITE_FILE:q} --run {wildcards.dataset:q}/{wildcards.run:q}"
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
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/editing.log",
    threads: THREADS
    shell:
        "{PY:q} -m benchmark --log {log:q} edit --suite {SUITE_FILE:q} --run {wildcards.dataset:q}/{wildcards.run:q} --ckpt {input.ckpt:q}"
        " --data {params.data:q} --threads {threads} --no-progress --out {output:q}"
