# report: summary.json (every stage's metrics + MLflow ids) and report.md; the target of `all`.
rule report:
    input:
        unpack(lambda wildcards: REPORT_INPUTS),
    output:
        summary=f"{R}/summary.json",
        report=f"{R}/report.md",
    params:
        inputs=json.dumps(REPORT_INPUTS, sort_keys=True, default=str),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    threads: 1
    shell:
        "{PY}.report --run-dir {R} --inputs {params.inputs:q} --out-dir {R} 2>&1 | tee {log}"
