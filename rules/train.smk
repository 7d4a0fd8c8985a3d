rule train:
    """Train one run; resumes from its newest good checkpoint. A teacher's final checkpoint is
    an explicit input, so distillation waits for it and its hash enters the run's provenance."""
    input:
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
        teacher=lambda wc: [ckpt(RUN(wc).teacher)] if RUN(wc).teacher else [],
        latent=lambda wc: [latent_manifest(RUN(wc).dataset)] if S.datasets[RUN(wc).dataset].get("vae") else [],
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/ckpt/final.pt",
    params:
        config_hash=lambda wc: RUN(wc).config_hash,
        data=lambda wc: data_dir(RUN(wc).dataset),
        teacher=lambda wc, input: ["--teacher", input.teacher[0]] if input.teacher else [],
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/train.log",
    benchmark:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/benchmark_train.tsv"
    threads: THREADS
    resources:
        gpus=1 if DEVICE == "cuda" else 0,
    shell:
        "{PY:q} -m benchmark --log {log:q} train --suite {SUITE_FILE:q} --run {wildcards.dataset:q}/{wildcards.run:q} --data {params.data:q}"
        " {params.teacher:q} --threads {threads} --device {DEVICE:q} --no-progress --out {output:q}"
