#include "cpu_attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "cpu_math.h"

namespace et::cpu {
namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kQueryBlock = 8;  // queries per block: independent accumulator chains in the kernels

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, const v16& v) { std::memcpy(p, &v, sizeof(v)); }

// Softmax of one row of np scores in place (np a multiple of kLanes, at least one finite entry).
void softmax_row(float* s, int np) {
  v16 vmax = load(s);
  for (int j = kLanes; j < np; j += kLanes) {
    const v16 x = load(s + j);
    vmax = x > vmax ? x : vmax;
  }
  float mx = vmax[0];
  for (int l = 1; l < kLanes; ++l) mx = std::max(mx, vmax[l]);
  for (int j = 0; j < np; ++j) s[j] = fast_exp(s[j] - mx);
  v16 vsum = {};
  for (int j = 0; j < np; j += kLanes) vsum += load(s + j);
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += vsum[l];
  const float inv = 1.0f / sum;
  for (int j = 0; j < np; ++j) s[j] *= inv;
}

// R queries (rows q[0..R) of the padded [np][dp] copy) against all keys, then probabilities · V.
template <int R>
void query_block(const float* q, const float* kt, const float* v, const float* mask, int np, int dp, float scale,
                 float* scores, float* ctx, int64_t ldc, int d) {
  for (int j0 = 0; j0 < np; j0 += kLanes) {
    v16 acc[R] = {};
    for (int e = 0; e < dp; ++e) {
      const v16 kv = load(kt + int64_t(e) * np + j0);
      for (int r = 0; r < R; ++r) acc[r] += q[int64_t(r) * dp + e] * kv;
    }
    const v16 m = load(mask + j0);
    for (int r = 0; r < R; ++r) store(scores + int64_t(r) * np + j0, acc[r] * scale + m);
  }
  for (int r = 0; r < R; ++r) softmax_row(scores + int64_t(r) * np, np);
  for (int c = 0; c < dp; c += kLanes) {
    v16 acc[R] = {};
    for (int j = 0; j < np; ++j) {
      const v16 vv = load(v + int64_t(j) * dp + c);
      for (int r = 0; r < R; ++r) acc[r] += scores[int64_t(r) * np + j] * vv;
    }
    for (int r = 0; r < R; ++r) {
      float out[kLanes];
      std::memcpy(out, &acc[r], sizeof(out));
      float* dst = ctx + int64_t(r) * ldc + c;
      for (int e = 0, m = std::min(kLanes, d - c); e < m; ++e) dst[e] = out[e];
    }
  }
}

using BlockFn = void (*)(const float*, const float*, const float*, const float*, int, int, float, float*, float*,
                         int64_t, int);

template <int... Rs>
constexpr auto make_block_table(std::integer_sequence<int, Rs...>) {
  return std::array<BlockFn, sizeof...(Rs)>{&query_block<Rs + 1>...};
}
constexpr auto kBlocks = make_block_table(std::make_integer_sequence<int, kQueryBlock>{});

}  // namespace

void attention_head(const float* q, const float* k, const float* v, int64_t ld, int n, int valid, int d,
                    float* ctx, int64_t ldc, AttentionScratch& s) {
  const int np = round_up(n, kLanes), dp = round_up(d, kLanes);
  s.q.assign(size_t(np) * dp, 0.0f);
  s.kt.assign(size_t(dp) * np, 0.0f);
  s.v.assign(size_t(np) * dp, 0.0f);
  s.scores.resize(size_t(kQueryBlock) * np);
  s.mask.resize(size_t(np));
  for (int j = 0; j < n; ++j) {
    const float* qj = q + j * ld;
    const float* kj = k + j * ld;
    const float* vj = v + j * ld;
    float* qd = s.q.data() + int64_t(j) * dp;
    float* vd = s.v.data() + int64_t(j) * dp;
    for (int e = 0; e < d; ++e) {  // plain loops: d is small, a memmove call per row costs more
      qd[e] = qj[e];
      vd[e] = vj[e];
      s.kt[size_t(e) * np + j] = kj[e];
    }
  }
  for (int j = 0; j < np; ++j) s.mask[size_t(j)] = j < valid ? 0.0f : std::numeric_limits<float>::lowest();
  const float scale = 1.0f / std::sqrt(float(d));
  for (int i0 = 0; i0 < n; i0 += kQueryBlock) {
    const int rows = std::min(kQueryBlock, n - i0);
    kBlocks[size_t(rows - 1)](s.q.data() + int64_t(i0) * dp, s.kt.data(), s.v.data(), s.mask.data(), np, dp, scale,
                              s.scores.data(), ctx + i0 * ldc, ldc, d);
  }
}

}  // namespace et::cpu
