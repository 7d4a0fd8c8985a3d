# Latent space: a dataset with `vae:` is encoded once into `{data}/latent/` by a local AutoencoderKL;
# its runs train on those latents (rules/train.smk) and decode their samples before evaluation.


rule encode:
    """Encode a prepared image dataset into VAE latents once (its encode/decode FLOPs recorded)."""
    input:
        f"{R}/data/{{dsid}}/manifest.json",
    output:
        f"{R}/data/{{dsid}}/latent/manifest.json",
    params:
        dataset=lambda wc: DATA_IDS[wc.dsid],
        data=lambda wc: f"{R}/data/{wc.dsid}",
        py=operational(PY),
        suite=operational(SUITE_FILE),
        data_root=operational(DATA_ROOT),  # `prepare` re-runs on another data_root, and this after it
        device=operational(DEVICE),
    log:
        f"{R}/data/{{dsid}}/encode.log",
    threads: THREADS
    resources:
        **S.resources("encode", DEVICE),
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} encode --suite {params.suite:q} --dataset {params.dataset:q}"
        " --data {params.data:q} --data-root {params.data_root:q} --threads {threads} --device {params.device:q}"
        " --out {output:q}"
