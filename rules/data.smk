rule prepare:
    """Materialise a dataset (generated, packaged or read from local files) once."""
    output:
        f"{R}/data/{{dsid}}/manifest.json",
    params:
        dataset=lambda wc: DATA_IDS[wc.dsid],
    log:
        f"{R}/data/{{dsid}}/prepare.log",
    shell:
        "{PY} -m benchmark --log {log} prepare --suite {SUITE_FILE} --dataset {params.dataset}"
        " --data-root {DATA_ROOT} --out {output}"


rule train_extractor:
    """Offline feature extractor (e.g. digitnet), trained once per dataset."""
    input:
        f"{R}/data/{{dsid}}/manifest.json",
    output:
        f"{R}/data/{{dsid}}/extractor_{{ext}}.pt",
    log:
        f"{R}/data/{{dsid}}/extractor_{{ext}}.log",
    threads: THREADS
    shell:
        "{PY} -m benchmark --log {log} train-extractor --extractor {wildcards.ext}"
        " --data {R}/data/{wildcards.dsid} --out {output}"


rule ref_stats:
    """Reference feature statistics per (dataset, extractor, split): computed once, reused."""
    input:
        manifest=f"{R}/data/{{dsid}}/manifest.json",
        extractor=lambda wc: (
            [f"{R}/data/{wc.dsid}/extractor_{wc.ext}.pt"] if wc.ext in TRAINABLE_EXTRACTORS else []
        ),
    output:
        f"{R}/data/{{dsid}}/ref_{{ext}}_{{split}}.npz",
    params:
        ckpt=lambda wc, input: f"--extractor-ckpt {input.extractor[0]}" if input.extractor else "",
    log:
        f"{R}/data/{{dsid}}/ref_{{ext}}_{{split}}.log",
    threads: THREADS
    shell:
        "{PY} -m benchmark --log {log} ref-stats --data {R}/data/{wildcards.dsid} --extractor {wildcards.ext}"
        " {params.ckpt} --split {wildcards.split} --out {output}"
