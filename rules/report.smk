rule aggregate:
    """All metric JSONs -> one tidy results.csv (one row per value)."""
    input:
        metrics=[f for n in S.runs for f in metric_files(n)],
        samples=[f"{rdir(n)}/samples/steps{k}.json" for n, r in S.runs.items() for k in r.steps],
    output:
        report(f"{R}/{SUITE}/results.csv", caption="../report/results.rst", category="Results"),
    params:
        py=operational(PY),
        suite=operational(SUITE_FILE),
        results_root=operational(R),
    log:
        f"{R}/{SUITE}/aggregate.log",
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} aggregate --suite {params.suite:q}"
        " --results-root {params.results_root:q} --out {output:q}"


rule fit:
    """Scaling laws quality(C) = a C^-b + c per method and step budget."""
    input:
        f"{R}/{SUITE}/results.csv",
    output:
        scaling=report(f"{R}/{SUITE}/scaling.csv", caption="../report/scaling.rst", category="Scaling laws"),
        compare=f"{R}/{SUITE}/scaling_compare.csv",  # written beside scaling.csv (scaling.compare_path)
    params:
        py=operational(PY),
    log:
        f"{R}/{SUITE}/fit.log",
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} fit --results {input:q} --out {output.scaling:q}"


rule report:
    """Static HTML report: leaderboard vs papers, curves, fits, sample grids, provenance."""
    input:
        results=f"{R}/{SUITE}/results.csv",
        scaling=f"{R}/{SUITE}/scaling.csv",
        editing=editing_panels(),
    output:
        html=report(f"{REP}/{SUITE}/index.html", caption="../report/index.rst", category="Report"),
        leaderboard=report(f"{REP}/{SUITE}/leaderboard.csv", caption="../report/leaderboard.rst",
                           category="Results"),
        plots=report(directory(f"{REP}/{SUITE}/plots"), patterns=["{name}.png"], caption="../report/plots.rst",
                     category="Figures"),
    params:
        editing=lambda wc, input: [a for p in input.editing for a in ("--editing", p)],
        py=operational(PY),
        suite_name=operational(SUITE),
        results_root=operational(R),
    log:
        f"{R}/{SUITE}/report.log",
    conda:
        "../environment.yml"
    shell:
        "{params.py:q} -m benchmark --log {log:q} report --suite-name {params.suite_name:q} --results {input.results:q}"
        " --scaling {input.scaling:q} --results-root {params.results_root:q} {params.editing:q} --out {output.html:q}"
