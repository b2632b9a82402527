// Tile-sparse GEMM for large batches on Hopper (sm_90a): warpgroup MMAs (wgmma) read X and the kept W tiles
// from shared memory, a producer warp streams the kept tiles in with bulk asynchronous copies (cp.async.bulk
// on mbarriers). Built only for sm_90 (CMake defines ET_WITH_HOPPER_SPARSE); off by default (measured slower than
// the dense path, cuda_lib/NOTES.md session 8): ET_HOPPER_SPARSE_MAX_DENSITY turns it on for batches of more than
// ET_HOPPER_SPARSE_MIN_ROWS token rows.
#pragma once

#include <cstdint>
#include <vector>

#include "common.cuh"
#include "prepare.h"

namespace et::cuda::hopper_sparse {

constexpr int kChunk = 768;        // columns of K held in shared memory at once (K is processed in chunks)
constexpr int kRecordBytes = 528;  // one kept tile on the device: 16-byte header (its tile column), 512 data bytes

// A tile-sparse weight in this kernel's layout. records: the kept tiles in CSR order (prepare.h), each a
// 16-byte header whose first int32 is the tile column, then the 16x16 tile as four 8x8 core matrices (rows
// 0-7 / columns 0-7, rows 0-7 / columns 8-15, rows 8-15 / 0-7, rows 8-15 / 8-15; each 8 rows of 16 bytes).
// cut[r * (chunks + 1) + c]: the first record of tile row r whose column lies in K chunk c or later.
struct Weight {
  int n = 0;
  int k = 0;
  int chunks = 0;
  const void* records = nullptr;
  const int32_t* cut = nullptr;
};

// K chunks of kChunk columns for a weight with k columns.
inline int chunk_count(int k) { return (k + kChunk - 1) / kChunk; }

// The records of a sparse prepared weight, elements of type T (__half or __nv_bfloat16), header bits included.
template <typename T>
std::vector<T> pack_records(const PreparedLinear& p);

// The per-chunk record bounds `cut` of a sparse prepared weight.
std::vector<int32_t> chunk_cuts(const PreparedLinear& p);

// Bytes of shared memory one block needs (the device must allow that much per block).
int shared_bytes();

// y[m, n] = epilogue(x[m, k] . W^T + bias (+ residual)), x / y / residual row-major. Throws et::Error when the
// launch fails.
template <typename T>
void gemm(const Weight& w, const T* x, int m, const T* bias, const T* residual, T* y, Epilogue epi, int sms,
          const Stream& s);

}  // namespace et::cuda::hopper_sparse
