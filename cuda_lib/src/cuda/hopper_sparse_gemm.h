// Tile-sparse GEMM for large batches on Hopper (sm_90a): warpgroup MMAs (wgmma) read X and records of the kept W
// tiles from shared memory; X arrives by bulk tensor copies multicast over a cluster, the records by bulk copies on
// mbarriers. Built only for sm_90 (CMake defines ET_WITH_HOPPER_SPARSE); off by default (faster than the dense path
// only for [64, 16]-tile pruning at ~90% and large batches, cuda_lib/NOTES.md session 9): ET_HOPPER_SPARSE_MAX_DENSITY
// turns it on for batches of more than ET_HOPPER_SPARSE_MIN_ROWS token rows.
#pragma once

#include <cstdint>
#include <vector>

#include "common.cuh"
#include "prepare.h"

namespace et::cuda::hopper_sparse {

constexpr int kChunk = 768;  // columns of K held in shared memory at once (K is processed in chunks)

// A record is one wgmma B operand: G tile rows (G = 1, 2 or 4: 16G output columns) x one tile column, the union of
// the G rows' kept tiles (a tile a row does not keep is zeros). Weights pruned in [64, 16] tiles have no such zeros
// at G = 4; random 16 x 16 tiles pay the union.
constexpr int record_bytes(int group) { return 16 + 512 * group; }  // a 16-byte header, then the 16G x 16 operand
// Cost of one record of G = 1, 2 and 4 (index log2 G) in units of a G = 1 record, for choosing G: an estimate (a
// wgmma's time grows less than its width at these sizes) that chose the faster G in every case measured (NOTES.md,
// session 9 runs 58 and 62: G = 4 for [64, 16] masks, G = 1 for random 16x16 ones).
constexpr double kRecordCost[3] = {1.0, 1.25, 1.6};

// A tile-sparse weight in this kernel's layout. records: per record row (G tile rows), its records in ascending
// tile column, each a 16-byte header whose first int32 is the tile column, then the 16G x 16 operand as 8x8 core
// matrices (8 rows of 16 bytes; core matrix (i, j) of rows 8i.. and columns 8j.. at (2i + j) * 128 bytes).
// cut[g * (chunks + 1) + c]: the first record of record row g whose column lies in K chunk c or later.
struct Weight {
  int n = 0;
  int k = 0;
  int chunks = 0;
  int group = 1;  // tile rows of a record row
  int rows = 0;   // record rows: ceil(n / (16 group))
  const void* records = nullptr;
  const int32_t* cut = nullptr;
};

// The host side of a Weight: records (elements of type T, __half or __nv_bfloat16, header bits included) and cut.
template <typename T>
struct Packed {
  std::vector<T> records;
  std::vector<int32_t> cut;
  int group = 1;
  int rows = 0;
};

// K chunks of kChunk columns for a weight with k columns.
inline int chunk_count(int k) { return (k + kChunk - 1) / kChunk; }

// Records of a sparse prepared weight at record rows of `group` tile rows.
int64_t record_count(const PreparedLinear& p, int group);

// The group (1, 2 or 4) with the least estimated MMA time: record_count x kRecordCost.
int choose_group(const PreparedLinear& p);

// A sparse prepared weight in this kernel's layout at record rows of `group` (1, 2 or 4) tile rows.
template <typename T>
Packed<T> pack(const PreparedLinear& p, int group);

// Bytes of shared memory one block needs at most (the device must allow that much per block).
int shared_bytes();

// y[m, n] = epilogue(x[m, k] . W^T + bias (+ residual)), x / y / residual row-major. Throws et::Error when the
// launch fails.
template <typename T>
void gemm(const Weight& w, const T* x, int m, const T* bias, const T* residual, T* y, Epilogue epi, int sms,
          const Stream& s);

}  // namespace et::cuda::hopper_sparse
