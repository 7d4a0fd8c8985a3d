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
        data=lambda wc: f"{R}/data/{wc.dsid}",
    log:
        f"{R}/data/{{dsid}}/encode.log",
    threads: THREADS
    resources:
        **S.resources("encode", DEVICE),
    shell:
        "{PY:q} -m benchmark --log {log:q} encode --suite {SUITE_FILE:q} --dataset {params.dataset:q}"
        " --data {params.data:q} --data-root {DATA_ROOT:q} --threads {threads} --device {DEVICE:q}"
        " --out {output:q}"
