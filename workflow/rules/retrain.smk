# retrain: fine-tune with the tile masks fixed (pruned tiles stay exactly zero), optionally
# distilling from the dense fine-tuned model.
rule retrain:
    input:
        model=rules.prune.output.model,
        masks=rules.prune.output.masks,
        teacher=rules.finetune.output.model,
        finetune_metrics=rules.finetune.output.metrics,
        train=rules.prepare_data.output.train,
        dev=rules.prepare_data.output.dev,
        task=rules.prepare_data.output.task,
    output:
        model=directory(f"{R}/retrain/s{{sparsity}}/model"),
        masks=f"{R}/retrain/s{{sparsity}}/masks.json",
        metrics=f"{R}/retrain/s{{sparsity}}/metrics.json",
    params:
        cfg=stage_params("model", "retrain", "seed"),
    log:
        f"{LOGS}/retrain_s{{sparsity}}.log",
    benchmark:
        f"{BENCH}/retrain_s{{sparsity}}.tsv"
    threads: 2
    shell:
        "{PY}.retrain --run-dir {R} --params {params.cfg:q} --threads {threads} --seed {config[seed]}"
        " --sparsity {wildcards.sparsity} --model-dir {input.model} --masks {input.masks}"
        " --teacher-dir {input.teacher} --finetune-metrics {input.finetune_metrics} --data-dir {R}/data"
        " --out-dir {R}/retrain/s{wildcards.sparsity} 2>&1 | tee {log}"


REPORT_INPUTS["retrain"] = expand(rules.retrain.output.metrics, sparsity=SPARSITIES)
