# prune: re-weighted group-lasso or ADMM training toward tensor-tile sparsity, attention-aware
# head pruning, then hard pruning to the target; one branch per sparsity of prune.sweep.
rule prune:
    input:
        model=rules.finetune.output.model,
        train=rules.prepare_data.output.train,
        dev=rules.prepare_data.output.dev,
        task=rules.prepare_data.output.task,
    output:
        model=directory(f"{R}/prune/s{{sparsity}}/model"),
        masks=f"{R}/prune/s{{sparsity}}/masks.json",
        metrics=f"{R}/prune/s{{sparsity}}/metrics.json",
    params:
        cfg=stage_params("model", "prune", "seed"),
    log:
        f"{LOGS}/prune_s{{sparsity}}.log",
    benchmark:
        f"{BENCH}/prune_s{{sparsity}}.tsv"
    threads: 2
    shell:
        "{PY}.prune --run-dir {R} --params {params.cfg:q} --threads {threads} --seed {config[seed]}"
        " --sparsity {wildcards.sparsity} --model-dir {input.model} --data-dir {R}/data"
        " --out-dir {R}/prune/s{wildcards.sparsity} 2>&1 | tee {log}"


REPORT_INPUTS["prune"] = expand(rules.prune.output.metrics, sparsity=SPARSITIES)
