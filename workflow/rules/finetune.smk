# finetune: HF transformers sequence classification on the prepared task.
rule finetune:
    input:
        train=rules.prepare_data.output.train,
        dev=rules.prepare_data.output.dev,
        task=rules.prepare_data.output.task,
    output:
        model=directory(f"{R}/finetune/model"),
        metrics=f"{R}/finetune/metrics.json",
    params:
        cfg=stage_params("model", "finetune", "seed"),
    log:
        f"{LOGS}/finetune.log",
    benchmark:
        f"{BENCH}/finetune.tsv"
    threads: 2
    shell:
        "{PY}.finetune --run-dir {R} --params {params.cfg:q} --threads {threads} --seed {config[seed]}"
        " --data-dir {R}/data --out-dir {R}/finetune 2>&1 | tee {log}"


REPORT_INPUTS["finetune"] = rules.finetune.output.metrics
