# bench: our engine against HF eager / SDPA / torch.compile, side by side in one process.
rule bench:
    input:
        lib=rules.build_lib.output.lib,
        manifests=expand(rules.export_npy.output.manifest, sparsity=SPARSITIES),
        retrain=expand(rules.retrain.output.metrics, sparsity=SPARSITIES),
        dev=rules.prepare_data.output.dev,
    output:
        csv=f"{R}/bench/bench.csv",
        json=f"{R}/bench/bench.json",
        metrics=f"{R}/bench/metrics.json",
    params:
        cfg=stage_params("model", "bench", "preset"),
    log:
        f"{LOGS}/bench.log",
    benchmark:
        f"{BENCH}/bench.tsv"
    threads: 2
    shell:
        "{PY}.bench --run-dir {R} --params {params.cfg:q} --threads {threads} --lib {input.lib}"
        " --manifests {input.manifests} --data-dir {R}/data --out-dir {R}/bench 2>&1 | tee {log}"


if config["bench"]["enabled"]:
    REPORT_INPUTS["bench"] = rules.bench.output.metrics
