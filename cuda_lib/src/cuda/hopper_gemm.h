// Dense fp16 GEMMs of small batches through CUTLASS's Hopper kernels (TMA + wgmma, warp-specialized), which,
// unlike cuBLASLt's, can be launched early (programmatic dependent launch: they wait in griddepcontrol.wait and
// let the next kernel launch once their main loop is done). Built only for sm_90a when CUTLASS's headers are
// found (CMake defines ET_WITH_HOPPER_GEMM); the engine uses them for batches of at most
// ET_HOPPER_GEMM_MAX_ROWS token rows (cuda_lib/NOTES.md, session 6).
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"

namespace et::cuda::hopper {

// y[m, n] = epilogue(x[m, k] . w[n, k]^T + bias) with epi kBias or kBiasGeluTanh (w, x, y row-major), on tiles
// chosen for a GPU of `sms` multiprocessors. Returns false, launching nothing, when no kernel here serves the call
// (another epilogue, or operands that break TMA's 16-byte alignment); throws et::Error when a launch fails.
bool gemm(const __half* w, const __half* x, const __half* bias, __half* y, int m, int n, int k, Epilogue epi,
          int sms, const Stream& s);

// Split-K partial products: partial[s][m][n] = x[m, K_s] . w[n, K_s]^T in fp32 for the `splits` equal slices
// K_s of k (k / splits a multiple of 64 unless splits is 1). Returns false, launching nothing, when no kernel
// serves the call; throws et::Error when a launch fails.
bool gemm_split_k(const __half* w, const __half* x, float* partial, int m, int n, int k, int splits,
                  const Stream& s);

// Split count for gemm_split_k: the largest divisor of k's 64-column steps for which the output tiles times the
// slices stay within max_ctas (1 when k is not a multiple of 64).
int split_count(int m, int n, int k, int max_ctas);

}  // namespace et::cuda::hopper
