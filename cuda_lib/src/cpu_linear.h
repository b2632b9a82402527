// Linear layers of the CPU backend: y[n, out] = x[n, in] W^T + b, dense or tile-sparse.
//
// A weight is repacked once at load into panels of kPanel output features. Each panel stores only
// the input columns it needs, as segments (a run of input columns) of k-major data [len][kPanel];
// tiles removed by pruning and the rows/columns of pruned heads are simply absent, so their
// multiply-adds are never executed (a dense weight is one segment per panel).
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

namespace et::cpu {

constexpr int kPanel = 16;

struct PackedLinear {
  struct Segment {
    int k0 = 0;          // first input column
    int len = 0;         // number of input columns
    int64_t offset = 0;  // into data, in floats
  };
  struct Panel {
    int row0 = 0;       // first output feature
    int rows = 0;       // output features in this panel (<= kPanel)
    int seg_begin = 0;  // segments[seg_begin, seg_end)
    int seg_end = 0;
  };
  int out = 0;
  int in = 0;
  std::vector<Panel> panels;
  std::vector<Segment> segments;
  std::vector<float> data;
  std::vector<float> bias;  // [out]

  // Multiply-adds per input row actually executed.
  int64_t macs_per_row() const;
};

// Pack `lin`; rows with keep_rows[r] == false are not computed (their outputs are left unwritten),
// columns with keep_cols[c] == false are not read. Empty vectors keep everything.
PackedLinear pack_linear(const Linear& lin, const std::vector<bool>& keep_rows = {},
                         const std::vector<bool>& keep_cols = {});

// One layer computing several layers' outputs side by side: y = [y_0 | y_1 | ...] (same input).
PackedLinear concat_outputs(const std::vector<PackedLinear>& parts);

enum class Epilogue { kBias, kBiasGelu, kBiasTanh };

// y[i, r] = epilogue(sum_k x[i, k] W[r, k] + b[r]) for i < n, for every computed row r.
// Runs on `threads` OpenMP threads when the work is large enough to pay for the fork/join.
void linear_forward(const PackedLinear& p, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy,
                    Epilogue epilogue, int threads);

}  // namespace et::cpu
