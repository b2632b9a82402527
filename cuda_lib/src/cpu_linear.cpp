#include "cpu_linear.h"

#include "cpu_math.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>

namespace et::cpu {
namespace {

// 16 floats; GCC/Clang lower it to one AVX-512 register, two AVX registers, or four SSE registers.
typedef float v16 __attribute__((vector_size(64)));
static_assert(sizeof(v16) == kPanel * sizeof(float), "one vector per panel row");

#if defined(__AVX512F__)
constexpr int kRowBlock = 12;  // rows of x per micro-kernel call (accumulators held in registers)
#else
constexpr int kRowBlock = 6;
#endif
constexpr int kChunkRows = 8 * kRowBlock;  // rows of x per parallel work item
constexpr int64_t kMinParallelMacs = int64_t(1) << 18;  // below this a fork/join costs more than it saves

// The weight as a dense row-major matrix plus which elements are stored.
void materialise(const Linear& lin, std::vector<float>& w, std::vector<bool>& stored) {
  const size_t n = size_t(lin.out) * lin.in;
  if (!lin.tiled()) {
    w = lin.weight;
    stored.assign(n, true);
    return;
  }
  w.assign(n, 0.0f);
  stored.assign(n, false);
  const int grid_c = lin.in / lin.tile_c;
  const size_t tile_size = size_t(lin.tile_r) * lin.tile_c;
  for (size_t t = 0; t < lin.kept.size(); ++t) {
    const int r0 = lin.kept[t] / grid_c * lin.tile_r, c0 = lin.kept[t] % grid_c * lin.tile_c;
    for (int r = 0; r < lin.tile_r; ++r)
      for (int c = 0; c < lin.tile_c; ++c) {
        const size_t at = size_t(r0 + r) * lin.in + c0 + c;
        w[at] = lin.weight[t * tile_size + size_t(r) * lin.tile_c + c];
        stored[at] = true;
      }
  }
}

// One micro-kernel call: R rows of x against one panel, accumulators in registers.
template <int R>
void panel_kernel(const PackedLinear& p, const PackedLinear::Panel& panel, const float* x, int64_t ldx, float* y,
                  int64_t ldy, Epilogue epilogue) {
  // Fixed-size copies (inlined); a panel narrower than kPanel only occurs at the end of a layer.
  const bool full = panel.rows == kPanel;
  v16 acc[R];
  v16 bias = {};
  if (full) {
    std::memcpy(&bias, p.bias.data() + panel.row0, sizeof(v16));
  } else {
    float b[kPanel] = {};
    for (int c = 0; c < panel.rows; ++c) b[c] = p.bias[size_t(panel.row0 + c)];
    std::memcpy(&bias, b, sizeof(b));
  }
  for (int r = 0; r < R; ++r) acc[r] = bias;
  for (int s = panel.seg_begin; s < panel.seg_end; ++s) {
    const PackedLinear::Segment& seg = p.segments[size_t(s)];
    const float* w = p.data.data() + seg.offset;
    const float* xs = x + seg.k0;
    for (int k = 0; k < seg.len; ++k) {
      v16 wk;
      std::memcpy(&wk, w + size_t(k) * kPanel, sizeof(v16));
      for (int r = 0; r < R; ++r) acc[r] += wk * xs[r * ldx + k];
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[kPanel];  // a plain array: the epilogue loops below vectorise
    std::memcpy(out, &acc[r], sizeof(out));
    if (epilogue == Epilogue::kBiasGelu) {
      for (int c = 0; c < kPanel; ++c) out[c] = gelu(out[c]);
    } else if (epilogue == Epilogue::kBiasTanh) {
      for (int c = 0; c < kPanel; ++c) out[c] = std::tanh(out[c]);
    }
    float* dst = y + r * ldy + panel.row0;
    if (full) {
      std::memcpy(dst, out, sizeof(out));
    } else {
      for (int c = 0; c < panel.rows; ++c) dst[c] = out[c];
    }
  }
}

using KernelFn = void (*)(const PackedLinear&, const PackedLinear::Panel&, const float*, int64_t, float*, int64_t,
                          Epilogue);

template <int... Rs>
constexpr auto make_kernel_table(std::integer_sequence<int, Rs...>) {
  return std::array<KernelFn, sizeof...(Rs)>{&panel_kernel<Rs + 1>...};
}
// kKernels[r - 1] handles r rows.
constexpr auto kKernels = make_kernel_table(std::make_integer_sequence<int, kRowBlock>{});

}  // namespace

int64_t PackedLinear::macs_per_row() const {
  int64_t macs = 0;
  for (const Panel& panel : panels)
    for (int s = panel.seg_begin; s < panel.seg_end; ++s) macs += int64_t(segments[size_t(s)].len) * panel.rows;
  return macs;
}

PackedLinear pack_linear(const Linear& lin, const std::vector<bool>& keep_rows, const std::vector<bool>& keep_cols) {
  PackedLinear p;
  p.out = lin.out;
  p.in = lin.in;
  p.bias = lin.bias;
  std::vector<float> w;
  std::vector<bool> stored;
  materialise(lin, w, stored);
  auto row_kept = [&](int r) { return keep_rows.empty() || keep_rows[size_t(r)]; };
  auto col_kept = [&](int c) { return keep_cols.empty() || keep_cols[size_t(c)]; };
  std::vector<bool> col_used(size_t(lin.in));
  for (int row0 = 0; row0 < lin.out; row0 += kPanel) {
    const int rows = std::min(kPanel, lin.out - row0);
    bool any_row = false;
    for (int r = row0; r < row0 + rows; ++r) any_row |= row_kept(r);
    if (!any_row) continue;
    for (int c = 0; c < lin.in; ++c) {
      bool used = false;
      if (col_kept(c))
        for (int r = row0; r < row0 + rows && !used; ++r) used = row_kept(r) && stored[size_t(r) * lin.in + c];
      col_used[size_t(c)] = used;
    }
    PackedLinear::Panel panel;
    panel.row0 = row0;
    panel.rows = rows;
    panel.seg_begin = int(p.segments.size());
    for (int c = 0; c < lin.in;) {
      if (!col_used[size_t(c)]) {
        ++c;
        continue;
      }
      PackedLinear::Segment seg;
      seg.k0 = c;
      seg.offset = int64_t(p.data.size());
      while (c < lin.in && col_used[size_t(c)]) ++c;
      seg.len = c - seg.k0;
      p.data.resize(p.data.size() + size_t(seg.len) * kPanel, 0.0f);
      float* dst = p.data.data() + seg.offset;
      for (int k = 0; k < seg.len; ++k)
        for (int r = 0; r < rows; ++r)
          if (row_kept(row0 + r)) dst[size_t(k) * kPanel + r] = w[size_t(row0 + r) * lin.in + seg.k0 + k];
      p.segments.push_back(seg);
    }
    panel.seg_end = int(p.segments.size());
    p.panels.push_back(panel);
  }
  return p;
}

PackedLinear concat_outputs(const std::vector<PackedLinear>& parts) {
  PackedLinear all;
  all.in = parts.empty() ? 0 : parts[0].in;
  for (const PackedLinear& p : parts) {
    const int seg0 = int(all.segments.size());
    const int64_t data0 = int64_t(all.data.size());
    for (PackedLinear::Panel panel : p.panels) {
      panel.row0 += all.out;
      panel.seg_begin += seg0;
      panel.seg_end += seg0;
      all.panels.push_back(panel);
    }
    for (PackedLinear::Segment seg : p.segments) {
      seg.offset += data0;
      all.segments.push_back(seg);
    }
    all.data.insert(all.data.end(), p.data.begin(), p.data.end());
    all.bias.insert(all.bias.end(), p.bias.begin(), p.bias.end());
    all.out += p.out;
  }
  return all;
}

void linear_forward(const PackedLinear& p, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy,
                    Epilogue epilogue, int threads) {
  const int64_t n_chunks = (n + kChunkRows - 1) / kChunkRows;
  const int64_t n_panels = int64_t(p.panels.size());
  const int64_t items = n_chunks * n_panels;
  const bool parallel = items > 1 && threads > 1 && n * p.macs_per_row() >= kMinParallelMacs;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t chunk = item / n_panels;
    const PackedLinear::Panel& panel = p.panels[size_t(item % n_panels)];
    const int64_t end = std::min(n, (chunk + 1) * kChunkRows);
    for (int64_t i = chunk * kChunkRows; i < end; i += kRowBlock) {
      const int rows = int(std::min<int64_t>(kRowBlock, end - i));
      kKernels[size_t(rows - 1)](p, panel, x + i * ldx, ldx, y + i * ldy, ldy, epilogue);
    }
  }
}

}  // namespace et::cpu
