from benchmark.prepare import raw_input as _raw_input

# The raw data each prepared dataset is read from, and its content fingerprint (a listing with
# sizes and mtimes), computed once per DAG build: a changed raw file or `data_root` changes the
# `raw` parameter, so Snakemake re-runs `prepare` and everything downstream of the manifest.
RAW = {dsid: _raw_input(ds, S.datasets[ds], DATA_ROOT) for dsid, ds in DATA_IDS.items()}


rule prepare:
    """Stream a dataset (generated, packaged or read from local files) into shards once; the log
    names the layout detected (tarball / batches folder / JPEG classes / npz batches / lmdb)."""
    input:
        raw=lambda wc: [RAW[wc.dsid]["path"]] if RAW[wc.dsid]["path"] else [],
    output:
        f"{R}/data/{{dsid}}/manifest.json",
    params:
        dataset=lambda wc: DATA_IDS[wc.dsid],
        raw=lambda wc: f"{RAW[wc.dsid]['layout']}:{RAW[wc.dsid]['fingerprint']}",
        data_root=lambda wc: DATA_ROOT,  # a rerun trigger: another data_root re-prepares
        py=operational(PY),
        suite=operational(SUITE_FILE),
    log:
        f"{R}/data/{{dsid}}/prepare.log",
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} prepare --suite {params.suite:q} --dataset {params.dataset:q}"
        " --data-root {params.data_root:q} --out {output:q}"


rule train_extractor:
    """Offline feature extractor (e.g. digitnet), trained once per dataset."""
    input:
        f"{R}/data/{{dsid}}/manifest.json",
    output:
        f"{R}/data/{{dsid}}/extractor_{{ext}}.pt",
    params:
        data=lambda wc, input: os.path.dirname(input[0]),
        py=operational(PY),
    log:
        f"{R}/data/{{dsid}}/extractor_{{ext}}.log",
    threads: THREADS
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} train-extractor --extractor {wildcards.ext:q}"
        " --data {params.data:q} --out {output:q}"


rule ref_stats:
    """Reference feature statistics per (dataset, extractor, split): computed once and reused, or
    imported from the published file the suite names (EDM / openai / torch-fidelity statistics)."""
    input:
        manifest=f"{R}/data/{{dsid}}/manifest.json",
        extractor=lambda wc: (
            [f"{R}/data/{wc.dsid}/extractor_{wc.ext}.pt"] if wc.ext in TRAINABLE_EXTRACTORS else []
        ),
        imported=lambda wc: [imported_ref(wc.dsid, wc.ext)] if imported_ref(wc.dsid, wc.ext) else [],
    output:
        f"{R}/data/{{dsid}}/ref_{{ext}}_{{split}}.npz",
    params:
        args=lambda wc, input: (
            (["--extractor-ckpt", input.extractor[0]] if input.extractor else [])
            + (["--import", input.imported[0]] if input.imported else [])
        ),
        data=lambda wc, input: os.path.dirname(input.manifest),
        py=operational(PY),
    log:
        f"{R}/data/{{dsid}}/ref_{{ext}}_{{split}}.log",
    threads: THREADS
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} ref-stats --data {params.data:q} --extractor {wildcards.ext:q}"
        " {params.args:q} --split {wildcards.split:q} --out {output:q}"
