# export_npy: the retrained model as .npy files + weights.txt manifest (tile layouts, pruned heads).
rule export_npy:
    input:
        model=rules.retrain.output.model,
        masks=rules.retrain.output.masks,
    output:
        manifest=f"{R}/export_npy/s{{sparsity}}/weights.txt",
        metrics=f"{R}/export_npy/s{{sparsity}}/metrics.json",
    params:
        cfg=stage_params("export"),
    log:
        f"{LOGS}/export_npy_s{{sparsity}}.log",
    benchmark:
        f"{BENCH}/export_npy_s{{sparsity}}.tsv"
    threads: 1
    shell:
        "{PY}.export_npy --run-dir {R} --params {params.cfg:q} --threads {threads}"
        " --sparsity {wildcards.sparsity} --model-dir {input.model} --masks {input.masks}"
        " --out-dir {R}/export_npy/s{wildcards.sparsity} 2>&1 | tee {log}"


REPORT_INPUTS["export_npy"] = expand(rules.export_npy.output.metrics, sparsity=SPARSITIES)
