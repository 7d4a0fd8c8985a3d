rule train:
    """Train one run; resumes from its newest good checkpoint. A teacher's final checkpoint (or the
    imported `teacher_ckpt:` file) is an explicit input, so distillation waits for it, re-runs when it
    changes, and its hash enters the run's provenance.
    With `resources.train.gpus` > 1 the job is one `torchrun --standalone --nproc_per_node N`
    command (DDP, per-rank slices of the global batch, rank 0 writes); multi-node: see docs/clusters.md."""
    input:
        data=lambda wc: f"{data_dir(RUN(wc).dataset)}/manifest.json",
        teacher=lambda wc: teacher_input(RUN(wc)),
        latent=lambda wc: [latent_manifest(RUN(wc).dataset)] if S.datasets[RUN(wc).dataset].get("vae") else [],
    output:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/ckpt/final.pt",
    params:
        config_hash=lambda wc: RUN(wc).config_hash,
        data=lambda wc: data_dir(RUN(wc).dataset),
        teacher=lambda wc, input: ["--teacher", input.teacher[0]] if input.teacher else [],
        launch=launcher(PY, S.procs("train")),
        suite=operational(SUITE_FILE),
        device=operational(DEVICE),
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/train.log",
    benchmark:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/benchmark_train.tsv"
    threads: THREADS
    resources:
        **train_resources(S, DEVICE, R, RUN),  # + per-run runtime/mem_mb of `benchmark plan --write-resources`
    conda:
        "../environment.yml"
    shell:
        "{params.launch:q} --log {log:q} train --suite {params.suite:q} --run {wildcards.dataset:q}/{wildcards.run:q} --data {params.data:q}"
        " {params.teacher:q} --threads {threads} --device {params.device:q} --no-progress --out {output:q}"
