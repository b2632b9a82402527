# prepare_data: GLUE-format train/dev/test TSVs (synthetic by default, or hub / local GLUE).
rule prepare_data:
    output:
        train=f"{R}/data/train.tsv",
        dev=f"{R}/data/dev.tsv",
        test=f"{R}/data/test.tsv",
        task=f"{R}/data/task.json",
        metrics=f"{R}/data/metrics.json",
    params:
        cfg=stage_params("data", "seed"),
    log:
        f"{LOGS}/prepare_data.log",
    benchmark:
        f"{BENCH}/prepare_data.tsv"
    threads: 1
    shell:
        "{PY}.prepare_data --run-dir {R} --params {params.cfg:q} --threads {threads}"
        " --seed {config[seed]} --out-dir {R}/data 2>&1 | tee {log}"


REPORT_INPUTS["data"] = f"{R}/data/metrics.json"
