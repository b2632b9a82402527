# et-pipeline: the E.T. research loop as one DAG.
#   snakemake --cores 4 all                      the whole pipeline on config.yaml
#   snakemake --cores 4 all --config preset=smoke  a few minutes on 2 cores
#   snakemake --cores 4 --forcerun prune         rerun a stage and everything downstream
# Rules live in workflow/rules/*.smk; each calls one module of pipeline_steps/.

import os

# The repository's config.yaml, also when run from another folder (-s /path/Snakefile --directory DIR);
# --configfile FILE and --config KEY=VALUE are applied over it.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"


rule all:
    input:
        f"{R}/summary.json",
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/build_lib.smk"
include: "workflow/rules/export_npy.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"
