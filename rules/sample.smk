# One sampling job per run covering all its step budgets: the noise is shared across budgets and
# the interpreter starts once (on CPU, process start-up dominates these small jobs). `sample` is
# one wildcard rule, so profiles address it by name (set-resources: sample: ...). It writes every
# budget into `samples/staged/`; `publish_sample`, a local shell job, hard-links each shard
# (and its sidecars) to its declared name, so every shard is still a rule output of its own.
# link staged/steps{k}.* (shard, info, sidecars) into place atomically, then touch: the published
# file must be newer than the staging directory's Snakemake timestamp (a shell job: a `run:` job
# re-parses the workflow in a new interpreter, ~5 s each, for 356 publish jobs in the quick suite)
PUBLISH = (
    "exec 2> {log:q}; "
    'for f in {input:q}/steps{wildcards.k}.*; do t={params.dest:q}/.tmp-publish-"${{f##*/}}";'
    ' ln -f "$f" "$t" 2>/dev/null || cp -p "$f" "$t"; mv -f "$t" {params.dest:q}/"${{f##*/}}"; done;'
    " touch {output:q}"
)


localrules:
    publish_sample,


rule sample:
    """Sample one run at every step budget of the suite (same noise for every budget)."""
    input:
        lambda wc: ckpt(rid(wc)),
    output:
        directory(f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/staged"),
    params:
        steps=lambda wc: [str(k) for k in RUN(wc).steps],
        outs=lambda wc, output: [f"{output[0]}/steps{k}.npz" for k in RUN(wc).steps],
        launch=launcher(PY, S.procs("sample")),  # > 1: torchrun ranks split the samples, rank 0 merges
        config_hash=lambda wc: RUN(wc).config_hash,
        num_samples=S.num_samples,  # not in the run's hash: a changed num_samples re-samples via this param
        guidance=lambda wc: RUN(wc).guidance,  # likewise the sampler's guidance scale
        suite=operational(SUITE_FILE),
        device=operational(DEVICE),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/sample.log",
    threads: THREADS
    resources:
        **S.resources("sample", DEVICE),
    conda:
        "../environment.yml"
    shell:
        "{params.launch:q} --log {log:q} sample --suite {params.suite:q} --run {wildcards.dataset:q}/{wildcards.run:q}"
        " --ckpt {input:q} --steps {params.steps:q} --threads {threads} --device {params.device:q} --no-progress"
        " --out {params.outs:q}"


rule publish_sample:
    """One budget's shard + accounting under its own name (a hard link into samples/staged)."""
    input:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/staged",
    output:
        npz=f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/steps{{k}}.npz",
        info=f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/steps{{k}}.json",
    params:
        dest=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/publish-steps{{k}}.log",
    conda:
        "../environment.yml"
    shell:
        PUBLISH
