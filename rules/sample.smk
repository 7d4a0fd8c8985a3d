rule sample:
    """Sample a trained run at one step budget (uint8 shard + NFE/FLOPs/seconds)."""
    input:
        lambda wc: ckpt(rid(wc)),
    output:
        npz=f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/steps{{k}}.npz",
        info=f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/steps{{k}}.json",
    params:
        config_hash=lambda wc: RUN(wc).config_hash,
    log:
        f"{R}/{SUITE}/{{dataset}}/{{run}}/samples/steps{{k}}.log",
    threads: THREADS
    resources:
        gpus=1 if DEVICE == "cuda" else 0,
    shell:
        "{PY} -m benchmark --log {log} sample --suite {SUITE_FILE} --run {wildcards.dataset}/{wildcards.run} --ckpt {input}"
        " --steps {wildcards.k} --threads {threads} --device {DEVICE} --no-progress --out {output.npz}"
