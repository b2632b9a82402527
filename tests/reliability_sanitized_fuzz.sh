#!/usr/bin/env bash
# Fuzz libet's .npy reader and manifest parser against an AddressSanitizer + UndefinedBehaviorSanitizer
# build, so that memory errors and undefined behaviour that do not crash a normal build are caught.
# Not part of CI (the instrumented build takes minutes on 2 cores); run it after changing the loader:
#
#   tests/reliability_sanitized_fuzz.sh [EXAMPLES_PER_TARGET] [SEED]
#
# Builds cuda_lib/build-asan (CPU only), exports the tiny reliability model, runs both fuzz targets
# with the sanitizer runtimes preloaded into Python; any report aborts with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES="${1:-2000}"
SEED="${2:-$RANDOM}"
BUILD=cuda_lib/build-asan
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S cuda_lib -B "$BUILD" -DET_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="$FLAGS" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$BUILD" -j 2 >/dev/null

PYTHONPATH="$PWD:$PWD/tests" python -c \
  "import sys; from pathlib import Path; from reliability_model import write_tiny_export; write_tiny_export(Path(sys.argv[1]))" \
  "$WORK/model"

export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for target in npy manifest; do
  python tests/reliability_fuzz_driver.py --lib "$BUILD/libet.so" --model "$WORK/model" --target "$target" \
    --examples "$EXAMPLES" --seed "$SEED" --work "$WORK/$target"
done
