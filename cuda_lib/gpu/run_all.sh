#!/usr/bin/env bash
# One GPU-machine session of the CUDA backend: build libet with the CUDA backend there, then run the
# requested steps, each under its own time limit, logging under $OUT (default /tmp/et-gpu-out):
#   check     correctness vs float64 PyTorch and the CPU backend   (cuda_lib/gpu/check.py)
#   sanitize  compute-sanitizer memcheck + racecheck on a small ragged case (et_infer)
#   perf      the issue's performance targets and switch points      (cuda_lib/gpu/perf.py)
#   ncu       per-kernel profile of one dense and one 80%-sparse forward (ncu --clock-control none; NCU_CASES
#             picks model/batch pairs, e.g. "t80 32": 80% in [64, 16] tiles through the wgmma kernel)
#   clocks    per-stage clock64 timeline of one block of the wgmma tile-sparse GEMM (cuda_lib/gpu/wgmma_clocks.cu)
#   order     batch-1 forward time by engine load order (cuda_lib/gpu/load_order.py)
#   bench     python -m pipeline_steps.bench --standalone (writes BENCHMARKS.md; outputs tarred)
#   benchsmoke  the same on a tiny grid
#   prune     scripts/gpu_prune_check.py, when present
#   pipeline  the whole Snakemake DAG on the carried fp16 MiniLM, default sweep (run minilm-gpu), then an
#             ADMM run (minilm-gpu-admm) if time is left; results tarred (cuda_lib/gpu/pipeline_gpu.sh)
# Packages the image lacks: .gpusite/site-cp312.tar.xz (cuda_lib/gpu/pack_site.sh) or wheels in .whl/.
# Usage, from the repository root:  cuda_lib/gpu/run_all.sh check sanitize perf
# (CHECK_ARGS / PERF_ARGS pass arguments to check.py / perf.py, e.g. CHECK_ARGS="--only wgmma";
# CHECK_LIMIT / PERF_LIMIT / BENCH_LIMIT: the steps' time limits in seconds)
set -u -o pipefail
OUT=${OUT:-/tmp/et-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ROOT=$(pwd)
SUMMARY=()

if [ -f .gpusite/site-cp312.tar.xz ]; then  # packages the GPU image lacks, packed by cuda_lib/gpu/pack_site.sh
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .gpusite/site-cp312.tar.xz || { echo "site unpack failed"; exit 1; }
  export PYTHONPATH=/tmp/site
elif compgen -G ".whl/*.whl" >/dev/null; then  # packages the GPU image lacks (cffi, jsonschema, ...)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"

{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  nvcc --version | tail -2; cmake --version | head -1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1

# cuBLASLt: the toolkit's, else the one of PyTorch's nvidia wheels.
CUBLAS_ARG=""
if ! compgen -G "/usr/local/cuda/lib64/libcublasLt.so*" >/dev/null || [ ! -f /usr/local/cuda/include/cublasLt.h ]; then
  root=$(python3 -c "
import glob, os, site
hits = [h for d in site.getsitepackages() for h in glob.glob(os.path.join(d, 'nvidia', '**', 'cublasLt.h'), recursive=True)]
print(os.path.dirname(os.path.dirname(hits[0])) if hits else '')")
  [ -n "$root" ] && CUBLAS_ARG="-DET_CUBLAS_ROOT=$root"
  echo "cuBLASLt from: ${root:-not found}; toolkit has: $(ls /usr/local/cuda/lib64 | grep -E 'cublas|cudart' | tr '\n' ' ')"
  ls "$root" "$root"/lib 2>/dev/null | head -20
fi
BUILD=/tmp/et-build
t0=$(date +%s)
if [ "$*" = pipeline ]; then
  :  # the pipeline's build_lib stage builds libet itself
elif ! { cmake -S cuda_lib -B "$BUILD" -G Ninja -DET_CUDA=ON -DCMAKE_BUILD_TYPE=Release $CUBLAS_ARG \
       && cmake --build "$BUILD" -j 16; } > /tmp/et-build.log 2>&1; then
  cp /tmp/et-build.log "$OUT/build.log"; tail -40 /tmp/et-build.log; echo "BUILD FAILED"; exit 1
else
  echo "build: $(( $(date +%s) - t0 )) s"
fi
LIB=$BUILD/libet.so
EXE=$BUILD/et_infer
# every pruned layer stored tiled and run through the tile-sparse kernel at any batch (the engine's knobs)
ALL_TILE_SPARSE="ET_SPARSE_MAX_DENSITY=1.0 ET_SPARSE_MAX_ROWS=1000000000"
# every pruned layer through the wgmma tile-sparse kernel (sm_90) at any batch, its records' group chosen per weight
ALL_WGMMA_SPARSE="ET_SPARSE_MAX_DENSITY=0 ET_HOPPER_SPARSE_MAX_DENSITY=1.0 ET_HOPPER_SPARSE_MIN_ROWS=0"

step() {  # step NAME LIMIT_S COMMAND... (a shell function of this script runs in a child bash)
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  if declare -F "$1" >/dev/null; then
    export -f "$1"; export EXE OUT ROOT ALL_TILE_SPARSE ALL_WGMMA_SPARSE
    set -- bash -c "$*"
  fi
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  SUMMARY+=("$name: rc=$rc $(( $(date +%s) - t ))s")
  echo "== $name rc=$rc"; tail -25 "$OUT/$name.log"
}

sanitize() {
  set -o pipefail  # runs in a child bash (step): a failing compute-sanitizer must fail the step
  local dir=/tmp/et-san
  python3 - "$dir" <<'EOF' || return 1
import sys
from pathlib import Path
import numpy as np
from pipeline_steps import random_bert
out = Path(sys.argv[1])
model = random_bert.make_model("minilm", vocab=500, seed=3)
random_bert.export(model, random_bert.random_pruning(model, 0.5, head_frac=0.25, dim_frac=0.25, seed=4), out)
lengths = np.array([3, 40, 17, 150], dtype=np.int32)
np.save(out / "lengths.npy", lengths)
np.save(out / "tokens.npy", np.random.default_rng(0).integers(0, 500, lengths.sum()).astype(np.int32))
np.save(out / "lengths_short.npy", lengths[:3])  # longest 40: the whole-sequence (short) attention operator
np.save(out / "tokens_short.npy", np.load(out / "tokens.npy")[:lengths[:3].sum()])
EOF
  local args=("$dir/weights.txt" "$dir" --backend cuda --iters 1 --warmup 0)
  local rc=0
  # memcheck: default thresholds (the 50% tiles run through cuBLASLt), packed and padded, then every pruned
  # layer tile-sparse with the automatic block rows (32 packed, 210 rows), 64 rows (all of K, 16 warps), 128
  # rows (K = 1536 in chunks) and on the short batch below. racecheck: the four tile-sparse runs, which launch
  # every kernel of ours and no cuBLASLt kernel. cuBLASLt's Hopper kernels (nvjet) order shared memory with mbarriers and TMA, which racecheck
  # does not model: instrumented it reported hazards inside them, excluded (--kernel-name-exclude) one of them
  # failed with a hardware exception under the tool (NOTES.md, session 3 runs 16 and 19). The batch's longest
  # sequence (150) takes the streaming attention operator; --short runs its first three sequences (longest 40),
  # which take the whole-sequence one. The default packed run (210 rows) takes the CUTLASS GEMMs and the split-K
  # LayerNorm; $all_cutlass forces them on the padded batch (600 rows) too, and racechecks it with CUTLASS's own
  # kernels excluded (TMA and mbarriers, like cuBLASLt's): the split-K LayerNorm and the rest are checked.
  # $ALL_WGMMA_SPARSE: every pruned layer through the opt-in wgmma tile-sparse kernel (mbarriers, bulk copies and
  # TMA: memcheck only, racecheck does not model them), packed and padded, and with its records of 4 and 2 tile rows
  # (n64 / n32 MMAs over the union of the rows' tiles; a compacted QKV weight's last record row can be partial).
  local sparse=("$ALL_TILE_SPARSE" "$ALL_TILE_SPARSE ET_SPARSE_BM=64 --padded" "$ALL_TILE_SPARSE ET_SPARSE_BM=128 --padded"
                "$ALL_TILE_SPARSE --short")
  local all_cutlass="ET_HOPPER_GEMM_MAX_ROWS=1000000000 --padded"
  for tool in memcheck racecheck; do
    local runs=("${sparse[@]}" "$all_cutlass --exclude-cutlass")
    [ "$tool" = memcheck ] && runs=("" "--padded" "$all_cutlass" "${sparse[@]}" "$ALL_WGMMA_SPARSE"
                                     "$ALL_WGMMA_SPARSE --padded" "$ALL_WGMMA_SPARSE ET_HOPPER_SPARSE_GROUP=4"
                                     "$ALL_WGMMA_SPARSE ET_HOPPER_SPARSE_GROUP=2 --padded")
    for run in "${runs[@]}"; do
      local envs=() pad="" batch="" exclude=()
      for word in $run; do
        case $word in
          --padded) pad=--padded ;;
          --short) batch=_short ;;
          --exclude-cutlass) exclude=(--kernel-name-exclude kns=device_kernel) ;;
          *) envs+=("$word") ;;
        esac
      done
      echo "--- compute-sanitizer --tool $tool et_infer $run"
      env "${envs[@]}" compute-sanitizer --tool "$tool" "${exclude[@]}" --error-exitcode 9 "$EXE" "${args[@]}" \
          --tokens "$dir/tokens$batch.npy" --lengths "$dir/lengths$batch.npy" $pad 2>&1 \
        | grep -iE 'error|hazard|latency|fail|warn' | tail -8 || rc=1
    done
  done
  return $rc
}

profile() {
  set -o pipefail
  local dir=/tmp/et-ncu
  python3 - "$dir" <<'EOF' || return 1
import sys
from pathlib import Path
from pipeline_steps import random_bert
out = Path(sys.argv[1])
model = random_bert.make_model("bert-base", vocab=30522, seed=11)
random_bert.export(model, random_bert.random_pruning(model, 1.0), out / "dense", dtype="float16")
sparse = random_bert.make_model("bert-base", vocab=30522, seed=11)
random_bert.export(sparse, random_bert.random_pruning(sparse, 0.2, seed=200), out / "s80", dtype="float16")
wide = random_bert.make_model("bert-base", vocab=30522, seed=11)  # 80% in [64, 16] tiles: the wgmma kernel's G = 4
random_bert.export(wide, random_bert.random_pruning(wide, 0.2, tile=(64, 16), seed=200), out / "t80", dtype="float16")
import numpy as np  # perf.py's ragged batch: 32 lengths U[16, 128]
lengths = np.random.default_rng(5).integers(16, 129, 32).astype(np.int32)
np.save(out / "ragged_lengths.npy", lengths)
np.save(out / "ragged_tokens.npy", np.random.default_rng(6).integers(0, 30522, lengths.sum()).astype(np.int32))
EOF
  local metrics=gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
  # per-kernel times of one graph-replayed forward, caches not flushed (the summary keeps the last of the three
  # forwards); the 80% model's layers all through the tile-sparse kernel. ncu runs each kernel alone, with its
  # whole launch ramp and drain, so the sum exceeds the graph's forward (NOTES.md, run 21): read shares, not gaps.
  local cases run
  # model batch [padded], ...; batch "ragged": perf.py's ragged batch (32 lengths U[16, 128]), packed or padded
  IFS=, read -ra cases <<< "${NCU_CASES:-dense 32,dense 1,s80 32}"
  for run in "${cases[@]}"; do
    set -- $run
    local knobs=() batch=(--batch "$2" --seq 128)
    [ "$1" = s80 ] && knobs=($ALL_TILE_SPARSE)
    [ "$1" = t80 ] && knobs=($ALL_WGMMA_SPARSE)
    [ "$2" = ragged ] && batch=(--tokens "$dir/ragged_tokens.npy" --lengths "$dir/ragged_lengths.npy" ${3:+--padded})
    local csv="$OUT/ncu_$1_b$2${3:+_$3}.csv"
    env "${knobs[@]}" ncu --clock-control none --cache-control none --csv --page raw --metrics "$metrics" "$EXE" \
        "$dir/$1/weights.txt" "$dir/$1" --backend cuda "${batch[@]}" --iters 2 --warmup 1 > "$csv" 2>&1 || return 1
    python3 cuda_lib/gpu/ncu_summary.py "$csv"
  done
  # one launch's stall samples per SASS instruction: NCU_SOURCE="kernel-regex model batch launches-to-skip"
  # (e.g. "tile_sparse_wgmma s80 32 21": session 8 run 53), written to $OUT/ncu_source.csv
  if [ -n "${NCU_SOURCE:-}" ]; then
    local src=($NCU_SOURCE)
    [ "${src[1]}" = s80 ] && export $ALL_TILE_SPARSE
    [ "${src[1]}" = t80 ] && export $ALL_WGMMA_SPARSE
    ncu --clock-control none -k "regex:${src[0]}" --launch-skip "${src[3]}" --launch-count 1 --section SourceCounters \
        --section WarpStateStats --page source --print-source sass --csv "$EXE" "$dir/${src[1]}/weights.txt" \
        "$dir/${src[1]}" --backend cuda --batch "${src[2]}" --seq 128 --iters 1 --warmup 0 > "$OUT/ncu_source.csv" \
        || return 1
  fi
  # one kernel in detail: NCU_DETAIL="kernel-regex model batch" (default: the tile-sparse GEMM, 80% model, b32;
  # "none": no detail)
  [ "${NCU_DETAIL:-}" = none ] && return 0
  set -- ${NCU_DETAIL:-tile_sparse s80 32}
  [ "$2" = s80 ] && export $ALL_TILE_SPARSE
  [ "$2" = t80 ] && export $ALL_WGMMA_SPARSE
  echo "--- $1 details (two launches, model $2, batch $3 x 128)"
  ncu --clock-control none -k "regex:$1" --launch-skip 20 --launch-count 2 --section SpeedOfLight \
      --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      --section SchedulerStats "$EXE" "$dir/$2/weights.txt" "$dir/$2" --backend cuda --batch "$3" --seq 128 \
      --iters 1 --warmup 0 2>&1 | grep -v "^==PROF==" | tail -150
}

clocks() {  # the wgmma kernel's per-stage timeline (cuda_lib/gpu/wgmma_clocks.cu); CLOCKS_CASES: "G N K M density
  # tile-rows" list, default BERT-base's O at b32 and b1 and FFN2 at b32, 80% in [64, 16] tiles, G = 4 and 1
  set -o pipefail
  nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -DET_HOPPER_SPARSE_CLOCKS \
      -Icuda_lib/include -Icuda_lib/src cuda_lib/gpu/wgmma_clocks.cu cuda_lib/src/cuda/prepare.cu \
      -o /tmp/wgmma_clocks || return 1
  local run default="4 768 768 4096 0.2 64,1 768 768 4096 0.2 64,4 768 768 128 0.2 64,4 768 3072 4096 0.2 64"
  IFS=, read -ra runs <<< "${CLOCKS_CASES:-$default}"
  for run in "${runs[@]}"; do
    /tmp/wgmma_clocks $run | tee -a "$OUT/clocks.txt" | head -60 || return 1
  done
}

for s in "$@"; do
  case $s in
    check) step check "${CHECK_LIMIT:-420}" python3 cuda_lib/gpu/check.py --lib "$LIB" --work /tmp/et-check \
             ${CHECK_ARGS:-} ;;
    sanitize) step sanitize "${SANITIZE_LIMIT:-420}" sanitize ;;
    order) step order "${ORDER_LIMIT:-240}" python3 cuda_lib/gpu/load_order.py --lib "$LIB" --work /tmp/et-order \
             --json "$OUT/load_order.json" ;;
    perf) step perf "${PERF_LIMIT:-480}" python3 cuda_lib/gpu/perf.py --lib "$LIB" --work /tmp/et-perf --json "$OUT/perf.json" \
            ${PERF_ARGS:-} ;;
    ncu) step ncu "${NCU_LIMIT:-540}" profile ;;
    clocks) step clocks "${CLOCKS_LIMIT:-120}" clocks ;;
    bench)
      mkdir -p /tmp/et-bench-md
      step bench "${BENCH_LIMIT:-580}" python3 -m pipeline_steps.bench --standalone --lib "$LIB" --out-dir /tmp/et-bench \
        --benchmarks-md /tmp/et-bench-md/BENCHMARKS.md ${BENCH_ARGS:-}
      cp -r /tmp/et-bench/. /tmp/et-bench-md/ 2>/dev/null
      tar -C /tmp/et-bench-md -czf "$OUT/bench.tgz" . ;;
    benchsmoke)  # the bench stage's GPU path on a tiny grid
      step benchsmoke 240 python3 -m pipeline_steps.bench --standalone --lib "$LIB" --out-dir /tmp/et-bench-smoke \
        --shapes bert-base --batches 1,8 --seqs 64 --sparsities 0.8 --compile-shapes bert-base:1:64 --iters 5 \
        --warmup 2 ;;
    prune)
      if [ -f scripts/gpu_prune_check.py ]; then step prune 300 python3 scripts/gpu_prune_check.py
      else SUMMARY+=("prune: scripts/gpu_prune_check.py not in the repository"); fi ;;
    pipeline)  # its own time limits inside (PIPELINE_LIMIT: seconds for both runs, default 550)
      bash cuda_lib/gpu/pipeline_gpu.sh "${PIPELINE_LIMIT:-550}" 2>&1 | tee "$OUT/pipeline.log"
      SUMMARY+=("pipeline: rc=${PIPESTATUS[0]}") ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
echo; echo "=== summary"; printf '%s\n' "${SUMMARY[@]}"
