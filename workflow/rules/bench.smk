# bench: our engine against HF eager / SDPA / torch.compile, side by side in one process.
# On a GPU: the pipeline's dense fine-tuned and retrained models on batches of real dev-set lengths
# (config bench.*, within bench.budget_s). On a CPU-only machine it runs the small CPU grid and says
# that GPU numbers need a GPU; the GPU numbers in BENCHMARKS.md come from `python -m pipeline_steps.bench --standalone --benchmarks-md ...`
# run on a GPU machine (cuda_lib/gpu/run_all.sh bench).
rule bench:
    input:
        lib=rules.build_lib.output.lib,
        manifests=expand(rules.export_npy.output.manifest, sparsity=SPARSITIES),
        retrain=expand(rules.retrain.output.metrics, sparsity=SPARSITIES),
        retrain_models=expand(rules.retrain.output.model, sparsity=SPARSITIES),
        finetune=rules.finetune.output.metrics,
        finetune_model=rules.finetune.output.model,
        dev=rules.prepare_data.output.dev,
        # not read: after every infer branch, so that no other GPU job runs while the bench is timing
        after_infer=expand(rules.infer.output.metrics, sparsity=SPARSITIES),
    output:
        csv=f"{R}/bench/bench.csv",
        json=f"{R}/bench/bench.json",
        metrics=f"{R}/bench/metrics.json",
    params:
        cfg=stage_params("model", "bench", "preset"),
        batches=",".join(map(str, config["bench"]["batches"])),
        compile_batches=",".join(map(str, config["bench"]["compile_batches"])),
        shapes=",".join(config["bench"]["random_shapes"]),
    log:
        f"{LOGS}/bench.log",
    benchmark:
        f"{BENCH}/bench.tsv"
    threads: 2
    shell:
        "{PY}.bench --run-dir {R} --params {params.cfg:q} --threads {threads} --lib {input.lib}"
        " --manifests {input.manifests} --data-dir {R}/data --finetune-metrics {input.finetune}"
        " --retrain-metrics {input.retrain} --finetune-model {input.finetune_model}"
        " --budget-s {config[bench][budget_s]} --pipeline-batches={params.batches}"
        " --pipeline-compile-batches={params.compile_batches} --shapes={params.shapes}"
        " --out-dir {R}/bench 2>&1 | tee {log}"


if config["bench"]["enabled"]:
    REPORT_INPUTS["bench"] = rules.bench.output.metrics
