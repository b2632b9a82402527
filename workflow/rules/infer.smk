# infer: the dev split through libet (cffi) and et_infer, checked against the PyTorch model.
rule infer:
    input:
        lib=rules.build_lib.output.lib,
        exe=rules.build_lib.output.exe,
        manifest=rules.export_npy.output.manifest,
        model=rules.retrain.output.model,
        dev=rules.prepare_data.output.dev,
        task=rules.prepare_data.output.task,
    output:
        logits=f"{R}/infer/s{{sparsity}}/logits.npy",
        metrics=f"{R}/infer/s{{sparsity}}/metrics.json",
    params:
        cfg=stage_params("model", "infer"),
    log:
        f"{LOGS}/infer_s{{sparsity}}.log",
    benchmark:
        f"{BENCH}/infer_s{{sparsity}}.tsv"
    threads: 2
    shell:
        "{PY}.infer --run-dir {R} --params {params.cfg:q} --threads {threads} --sparsity {wildcards.sparsity}"
        " --lib {input.lib} --exe {input.exe} --manifest {input.manifest} --model-dir {input.model}"
        " --data-dir {R}/data --out-dir {R}/infer/s{wildcards.sparsity} 2>&1 | tee {log}"


REPORT_INPUTS["infer"] = expand(rules.infer.output.metrics, sparsity=SPARSITIES)
