#!/usr/bin/env bash
# The whole Snakemake DAG on a GPU machine (called by `cuda_lib/gpu/run_all.sh pipeline`, which has put the
# carried packages on PYTHONPATH). Usage, from the repository root:  cuda_lib/gpu/pipeline_gpu.sh [LIMIT_S]
#   run 1  minilm-gpu       config.yaml defaults (sweep 0.5/0.8, reweighted), the carried fp16 MiniLM
#   run 2  minilm-gpu-admm  the same with prune.algorithm=admm and no bench, if >= ADMM_MIN_S seconds are left
# Each run is packed to $OUT/<run>.tgz (summary.json, report.md, plots, bench CSV/JSON, metrics, stage logs,
# Snakemake benchmarks); the MLflow store to $OUT/mlflow.db.gz; key summary fields are printed.
# PIPELINE_SNAKEMAKE_ARGS is appended to both Snakemake commands (a local rehearsal: "--cores 2 --config preset=smoke").
set -u -o pipefail
LIMIT=${1:-560}
OUT=${OUT:-/tmp/et-gpu-out}
MODEL=${ET_GPU_MODEL:-$(pwd)/.devmodel/minilm-fp16}
ADMM_MIN_S=${ADMM_MIN_S:-180}
T0=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ ! -f "$MODEL/config.json" ]; then
  echo "pipeline_gpu: no model at $MODEL (make it with cuda_lib/gpu/make_fp16_model.py and carry .devmodel)"; exit 1
fi
python3 -c "import snakemake, mlflow, cffi, jsonschema; print('snakemake', snakemake.__version__, 'mlflow', mlflow.__version__)" \
  || { echo "pipeline_gpu: snakemake/mlflow not importable (carry .gpusite, see cuda_lib/gpu/pack_site.sh)"; exit 1; }

command -v make >/dev/null || export CMAKE_GENERATOR=Ninja  # build_lib's CMake: the image has ninja, maybe no make

left() { echo $(( LIMIT - ($(date +%s) - T0) )); }

run_dag() {  # run_dag RUN LIMIT_S EXTRA_YAML
  local run=$1 limit=$2 extra=$3 cfg=/tmp/et-gpu-$1.yaml t=$(date +%s)
  printf 'run_name: %s\nmodel:\n  name_or_path: %s\n%s' "$run" "$MODEL" "$extra" > "$cfg"
  echo "=== $run (limit ${limit}s): $(tr '\n' ' ' < "$cfg")"
  timeout -k 30 "$limit" python3 -m snakemake --workflow-profile workflow/profiles/gpu all --configfile "$cfg" \
    ${PIPELINE_SNAKEMAKE_ARGS:-}
  local rc=$?
  echo "=== $run: rc=$rc in $(( $(date +%s) - t )) s"
  tar -czf "$OUT/$run.tgz" $(ls -d results/"$run"/{summary.json,report.md,*.png} results/"$run"/bench/*.{csv,json,png} \
    results/"$run"/*/metrics.json results/"$run"/*/s*/metrics.json results/"$run"/build_lib/build.log \
    logs/"$run" benchmarks/"$run" "$cfg" 2>/dev/null)
  python3 cuda_lib/gpu/pipeline_summary.py "results/$run" || true
  return $rc
}

run_dag minilm-gpu "$(( $(left) - 20 ))" ""
rc1=$?
if [ "$(left)" -ge "$ADMM_MIN_S" ]; then
  run_dag minilm-gpu-admm "$(( $(left) - 20 ))" $'prune:\n  algorithm: admm\nbench:\n  enabled: false\n'
  rc2=$?
else
  rc2=skipped; echo "=== minilm-gpu-admm skipped: $(left) s left (< $ADMM_MIN_S)"
fi
[ -f mlflow.db ] && gzip -c mlflow.db > "$OUT/mlflow.db.gz"
echo "pipeline_gpu: minilm-gpu rc=$rc1, minilm-gpu-admm rc=$rc2, $(( $(date +%s) - T0 )) s"
[ "$rc1" = 0 ]
