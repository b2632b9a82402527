// Load-time preparation of a model for the CUDA engine (host only, float32):
//  - attention compaction: pruned heads are dropped, and per head only the Q/K dimensions that can
//    change a score and the V dimensions that can change the output are kept (padded to 16 for the
//    tensor cores); Wq/Wk/Wv become one fused [Nqkv, hidden] weight and Wo loses the matching columns;
//  - every GEMM weight is re-cut into 16x16 tiles; a layer whose kept-tile density is below the
//    threshold is also stored as kept tiles only (CSR over tile rows, each tile in mma-fragment
//    order), the layout of the tile-sparse GEMM.
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

namespace et::cuda {

constexpr int kTile = 16;       // internal tile edge (one m16n8k16 k-step, two n8 fragments)

// One GEMM weight W [n, k] (y = x W^T + b).
struct PreparedLinear {
  int n = 0;
  int k = 0;
  std::vector<float> bias;     // [n]
  int64_t kept_tiles = 0;      // 16x16 tiles holding any nonzero weight
  int64_t total_tiles = 0;
  bool sparse = false;
  std::vector<float> dense;    // [n * k] row-major (sparse weights too: cuBLASLt serves large batches)
  // When sparse: CSR over the n/16 tile rows. Tile row r keeps the tiles row_ptr[r]..row_ptr[r+1]-1
  // (in ascending tile column tile_col[i]); tile i is tiles[i], in mma B-fragment order.
  std::vector<int32_t> row_ptr;   // [n / 16 + 1]
  std::vector<int32_t> tile_col;  // [kept_tiles]
  std::vector<float> tiles;       // [kept_tiles][32 lanes][8]

  double density() const { return total_tiles ? double(kept_tiles) / double(total_tiles) : 1.0; }
};

// Where one computed head lives in the fused QKV activation and in the attention output.
struct HeadSlot {
  int32_t q_off;   // column of the head's first Q dim in the QKV row
  int32_t k_off;
  int32_t v_off;
  int32_t dqk;     // kept Q/K dims (multiple of 16)
  int32_t dv;      // kept V dims (multiple of 16)
  int32_t out_off; // column in the attention output row
};

struct PreparedLayer {
  PreparedLinear qkv, o, ffn1, ffn2;
  std::vector<HeadSlot> heads;  // computed heads only
  std::vector<float> ln1_gamma, ln1_beta, ln2_gamma, ln2_beta;
};

struct PreparedModel {
  std::vector<PreparedLayer> layers;
  float attn_scale = 1.0f;      // 1 / sqrt(hidden / heads), of the unpruned head size
  int max_dqk = 0;              // over all layers and heads
  int max_dv = 0;
  int max_qkv_width = 0;
  int max_att_width = 0;
};

// Dense float [out, in] weight of a loader Linear (tiles unpacked, removed tiles zero).
std::vector<float> dense_weight(const Linear& lin);

// Prepare one GEMM weight from a dense [n, k] matrix; sparse when kept-tile density < max_sparse_density.
PreparedLinear prepare_linear(std::vector<float> w, std::vector<float> bias, int n, int k,
                              double max_sparse_density);

// Prepare the whole encoder (throws et::Error ET_ERR_UNSUPPORTED for shapes the engine cannot run).
PreparedModel prepare_model(const Model& model, double max_sparse_density);

}  // namespace et::cuda
