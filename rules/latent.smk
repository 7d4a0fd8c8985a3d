# Latent space: a dataset with `vae:` is encoded once into `{data}/latent/` by a local AutoencoderKL;
# its runs train on those latents (rules/train.smk) and decode their samples before evaluation.


def latent_manifest(dataset):
    return f"{data_dir(dataset)}/latent/manifest.json"


rule encode:
    """Encode a prepared image dataset into VAE latents once (its encode/decode FLOPs recorded)."""
    input:
        f"{R}/data/{{dsid}}/manifest.json",
    output:
        f"{R}/data/{{dsid}}/latent/manifest.json",
    params:
        dataset=lambda wc: DATA_IDS[wc.dsid],
    log:
        f"{R}/data/{{dsid}}/encode.log",
    threads: THREADS
    resources:
        gpus=1 if DEVICE == "cuda" else 0,
    shell:
        "{PY} -m benchmark --log {log} encode --suite {SUITE_FILE} --dataset {params.dataset}"
        " --data {R}/data/{wildcards.dsid} --data-root {DATA_ROOT} --threads {threads} --device {DEVICE}"
        " --out {output}"
