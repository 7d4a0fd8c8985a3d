# One sample job per run covering all its step budgets: the noise is shared across budgets and the
# interpreter starts once (on CPU, process start-up dominates these small jobs). The rules are
# generated per run so that every shard is a declared output.
for _id, _r in S.runs.items():

    rule:
        name:
            f"sample_{rule_tag(_id)}"
        message:
            f"sample {_id} at steps {list(_r.steps)}"
        input:
            ckpt(_id),
        output:
            npz=[f"{rdir(_id)}/samples/steps{k}.npz" for k in _r.steps],
            info=[f"{rdir(_id)}/samples/steps{k}.json" for k in _r.steps],
        params:
            run=_id,
            steps=[str(k) for k in _r.steps],
            config_hash=_r.config_hash,
            num_samples=S.num_samples,  # not in the run's hash: a changed num_samples re-samples via this param
        log:
            f"{rdir(_id)}/samples/sample.log",
        threads: THREADS
        resources:
            gpus=1 if DEVICE == "cuda" else 0,
        shell:
            "{PY:q} -m benchmark --log {log:q} sample --suite {SUITE_FILE:q} --run {params.run:q} --ckpt {input:q}"
            " --steps {params.steps:q} --threads {threads} --device {DEVICE:q} --no-progress --out {output.npz:q}"
