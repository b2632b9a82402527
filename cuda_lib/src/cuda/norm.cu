// Row-wise kernels of the encoder: embedding lookup + LayerNorm, LayerNorm (after the GEMMs whose
// epilogue already added bias and residual: residual + LayerNorm cost one pass), exact GELU,
// pooler + classifier, fp32 row gather.
// One warp per row, 16-byte accesses, statistics in fp32 from registers (two-pass variance).
#include <type_traits>

#include "kernels.h"

namespace et::cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per block of the row kernels

union Vec8 {
  uint4 u;
  uint32_t w[4];
};

// Load the row as fp32 (each lane holds chunks lane, lane+32, ... of 8 elements) via `fetch(chunk, out8)`.
template <int CH, typename Fetch>
__device__ __forceinline__ void layernorm_row(float (&v)[CH * 8], int hidden, Fetch fetch, float eps, int lane,
                                              float& mean, float& rstd) {
  const int chunks = hidden / 8;
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int chunk = lane + c * 32;
    if (chunk < chunks) {
      fetch(chunk, &v[c * 8]);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += v[c * 8 + e];
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  mean = sum / hidden;
  float sq = 0.0f;
#pragma unroll
  for (int c = 0; c < CH; ++c)
    if (lane + c * 32 < chunks)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float d = v[c * 8 + e] - mean;
        sq += d * d;
      }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
  rstd = rsqrtf(sq / hidden + eps);
}

template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out) {
  Vec8 x;
  x.u = *reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = Elem<T>::unpack2(x.w[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

template <int CH, typename T>
__device__ __forceinline__ void store_normalized(const float (&v)[CH * 8], int hidden, float mean, float rstd,
                                                 const T* gamma, const T* beta, T* dst, int lane) {
  const int chunks = hidden / 8;
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int chunk = lane + c * 32;
    if (chunk >= chunks) continue;
    float g[8], b[8];
    load8(gamma + chunk * 8, g);
    load8(beta + chunk * 8, b);
    Vec8 out;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      out.w[i] = Elem<T>::pack2((v[c * 8 + 2 * i] - mean) * rstd * g[2 * i] + b[2 * i],
                                (v[c * 8 + 2 * i + 1] - mean) * rstd * g[2 * i + 1] + b[2 * i + 1]);
    *reinterpret_cast<uint4*>(dst + chunk * 8) = out.u;
  }
}

// Copy gamma and beta (and bias, when given; hidden each) into the block's shared memory, asynchronously: they
// are weights, so the kernels request them before pdl_enter() and they load while the kernel before drains.
// Returns where they are: [gamma | beta | bias].
template <typename T>
__device__ __forceinline__ const T* stage_affine(const T* gamma, const T* beta, int hidden, const T* bias = nullptr) {
  extern __shared__ __align__(16) unsigned char row_smem[];
  T* s = reinterpret_cast<T*>(row_smem);
  for (int i = threadIdx.x; i < hidden / 8; i += blockDim.x) {
    cp_async16(s + i * 8, gamma + i * 8, true);
    cp_async16(s + hidden + i * 8, beta + i * 8, true);
    if (bias) cp_async16(s + 2 * hidden + i * 8, bias + i * 8, true);
  }
  cp_async_commit();
  return s;
}

template <typename T, int CH>
__global__ void embed_layernorm_kernel(const int32_t* __restrict__ tok, const int32_t* __restrict__ seg,
                                       const int32_t* __restrict__ pos, int rows, int hidden, const T* __restrict__ word,
                                       const T* __restrict__ posemb, const T* __restrict__ type,
                                       const T* __restrict__ gamma, const T* __restrict__ beta, float eps,
                                       T* __restrict__ x) {
  const T* affine = stage_affine(gamma, beta, hidden);
  pdl_enter();
  cp_async_wait<0>();
  __syncthreads();
  const int row = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* w = word + static_cast<size_t>(tok[row]) * hidden;
  const T* p = posemb + static_cast<size_t>(pos[row]) * hidden;
  const T* s = type + static_cast<size_t>(seg[row]) * hidden;
  float v[CH * 8];
  float mean, rstd;
  layernorm_row<CH>(
      v, hidden,
      [&](int chunk, float* out) {
        float a[8], b[8], c[8];
        load8(w + chunk * 8, a);
        load8(p + chunk * 8, b);
        load8(s + chunk * 8, c);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = a[e] + b[e] + c[e];
      },
      eps, lane, mean, rstd);
  store_normalized<CH>(v, hidden, mean, rstd, affine, affine + hidden, x + static_cast<size_t>(row) * hidden, lane);
}

template <typename T, int CH>
__global__ void layernorm_kernel(const T* __restrict__ x, int rows, int hidden, const T* __restrict__ gamma,
                                 const T* __restrict__ beta, float eps, T* __restrict__ y) {
  const T* affine = stage_affine(gamma, beta, hidden);
  pdl_enter();
  cp_async_wait<0>();
  __syncthreads();
  const int row = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* src = x + static_cast<size_t>(row) * hidden;
  float v[CH * 8];
  float mean, rstd;
  layernorm_row<CH>(
      v, hidden, [&](int chunk, float* out) { load8(src + chunk * 8, out); }, eps, lane, mean, rstd);
  store_normalized<CH>(v, hidden, mean, rstd, affine, affine + hidden, y + static_cast<size_t>(row) * hidden, lane);
}

// LayerNorm of the sum of a split-K GEMM's fp32 partial products, its bias and the residual: the GEMM's
// epilogue and the LayerNorm after it in one pass over the rows. The loads are unconditional (chunk and split
// indices clamped, the surplus weighted by zero) so that a lane's residual and kGroup splits of partials are all
// requested before the first add: one L2 round trip per kGroup splits, where predicated loads let the compiler
// serialize them (run 39: one round trip per split and chunk).
template <typename T, int CH>
__global__ void __launch_bounds__(kRowsPerBlock * 32, 1)
    splitk_layernorm_kernel(const float* __restrict__ partial, int splits, int rows, int hidden,
                            const T* __restrict__ bias, const T* __restrict__ residual, const T* __restrict__ gamma,
                            const T* __restrict__ beta, float eps, T* __restrict__ y) {
  constexpr int kGroup = CH <= 4 ? 4 : CH <= 8 ? 2 : 1;  // splits summed per round trip (registers: 8·CH·kGroup)
  const T* affine = stage_affine(gamma, beta, hidden, bias);
  pdl_enter();
  const int row = min(static_cast<int>(blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5)), rows - 1);
  const bool live = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5) < rows;
  const int lane = threadIdx.x & 31;
  const int chunks = hidden / 8;
  const size_t plane = static_cast<size_t>(rows) * hidden;
  const float* p = partial + static_cast<size_t>(row) * hidden;
  const T* res = residual + static_cast<size_t>(row) * hidden;
  int at[CH];  // this lane's chunks, clamped into the row (a clamped chunk is loaded but never used)
#pragma unroll
  for (int c = 0; c < CH; ++c) at[c] = min(lane + c * 32, chunks - 1) * 8;
  float v[CH * 8];
#pragma unroll
  for (int c = 0; c < CH; ++c) load8(res + at[c], &v[c * 8]);
  for (int s0 = 0; s0 < splits; s0 += kGroup) {
    float4 q[kGroup][CH][2];
#pragma unroll
    for (int g = 0; g < kGroup; ++g)
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        const float4* src = reinterpret_cast<const float4*>(p + min(s0 + g, splits - 1) * plane + at[c]);
        q[g][c][0] = src[0];
        q[g][c][1] = src[1];
      }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float w = s0 + g < splits ? 1.0f : 0.0f;
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        float* o = &v[c * 8];
        o[0] += w * q[g][c][0].x;
        o[1] += w * q[g][c][0].y;
        o[2] += w * q[g][c][0].z;
        o[3] += w * q[g][c][0].w;
        o[4] += w * q[g][c][1].x;
        o[5] += w * q[g][c][1].y;
        o[6] += w * q[g][c][1].z;
        o[7] += w * q[g][c][1].w;
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // gamma, beta and bias are in shared memory
  if (!live) return;
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    float b[8];
    load8(affine + 2 * hidden + at[c], b);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[c * 8 + e] += b[e];
  }
  float mean, rstd;
  layernorm_row<CH>(v, hidden, [](int, float*) {}, eps, lane, mean, rstd);  // v already holds the row
  store_normalized<CH>(v, hidden, mean, rstd, affine, affine + hidden, y + static_cast<size_t>(row) * hidden, lane);
}

template <typename T>
__global__ void gelu_kernel(T* __restrict__ x, int64_t n8) {
  pdl_enter();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Vec8 v;
    v.u = reinterpret_cast<uint4*>(x)[i];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = Elem<T>::unpack2(v.w[k]);
      v.w[k] = Elem<T>::pack2(gelu_erf(f.x), gelu_erf(f.y));
    }
    reinterpret_cast<uint4*>(x)[i] = v.u;
  }
}

constexpr int kPoolOutsPerWarp = 4;
constexpr int kPoolWarps = 8;

// pooled[b, j] = tanh(wp[j] . x[cls_row[b]] + bp[j]): a block per (32 outputs, sequence), each warp
// four outputs with their weight loads in flight together (the kernel is latency-bound otherwise).
template <typename T>
__global__ void pooler_kernel(const T* __restrict__ x, const int32_t* __restrict__ cls_row, int hidden,
                              const T* __restrict__ wp, const T* __restrict__ bp, float* __restrict__ pooled) {
  pdl_enter();
  extern __shared__ float h[];
  const int b = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* src = x + static_cast<size_t>(cls_row[b]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) h[i] = Elem<T>::to_float(src[i]);
  __syncthreads();
  const int j0 = (blockIdx.x * kPoolWarps + warp) * kPoolOutsPerWarp;
  float acc[kPoolOutsPerWarp] = {};
  for (int c = lane; c < hidden / 8; c += 32) {
    float w[kPoolOutsPerWarp][8];
#pragma unroll
    for (int o = 0; o < kPoolOutsPerWarp; ++o)
      if (j0 + o < hidden) load8(wp + static_cast<size_t>(j0 + o) * hidden + c * 8, w[o]);
#pragma unroll
    for (int o = 0; o < kPoolOutsPerWarp; ++o)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[o] += (j0 + o < hidden ? w[o][e] : 0.0f) * h[c * 8 + e];
  }
#pragma unroll
  for (int o = 0; o < kPoolOutsPerWarp; ++o) {
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc[o] += __shfl_xor_sync(0xffffffffu, acc[o], s);
    if (lane == 0 && j0 + o < hidden)
      pooled[static_cast<size_t>(b) * hidden + j0 + o] = tanhf(acc[o] + Elem<T>::to_float(bp[j0 + o]));
  }
}

// logits[b, l] = wc[l] . pooled[b] + bc[l]: a block per sequence, a warp per label.
template <typename T>
__global__ void classifier_kernel(const float* __restrict__ pooled, int hidden, const T* __restrict__ wc,
                                  const T* __restrict__ bc, int labels, float* __restrict__ logits) {
  pdl_enter();
  const int b = blockIdx.x, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const float* p = pooled + static_cast<size_t>(b) * hidden;
  for (int l = threadIdx.x >> 5; l < labels; l += warps) {
    float acc = 0.0f;
    for (int c = lane; c < hidden / 8; c += 32) {
      float w[8];
      load8(wc + static_cast<size_t>(l) * hidden + c * 8, w);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += w[e] * p[c * 8 + e];
    }
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) logits[static_cast<size_t>(b) * labels + l] = acc + Elem<T>::to_float(bc[l]);
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ x, const int32_t* __restrict__ rows, int n, int hidden,
                                   float* __restrict__ out) {
  pdl_enter();
  const int i = blockIdx.x;
  if (i >= n) return;
  const T* src = x + static_cast<size_t>(rows[i]) * hidden;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x)
    out[static_cast<size_t>(i) * hidden + c] = Elem<T>::to_float(src[c]);
}

// Chunks of 8 per lane needed for a row of `hidden` elements, rounded up to an instantiated size.
int row_chunks(int hidden) {
  const int ch = (hidden / 8 + 31) / 32;
  for (int c : {1, 2, 4, 8, 16})
    if (ch <= c) return c;
  throw Error(ET_ERR_UNSUPPORTED, "CUDA backend: hidden size " + std::to_string(hidden) + " > 4096");
}

// The instance of a row kernel for a row of `ch` chunks per lane: pick(std::integral_constant<int, CH>) returns
// the kernel instantiated for CH, for CH one of row_chunks()'s sizes.
template <typename Pick>
auto for_chunks(int ch, Pick pick) {
  switch (ch) {
    case 1: return pick(std::integral_constant<int, 1>{});
    case 2: return pick(std::integral_constant<int, 2>{});
    case 4: return pick(std::integral_constant<int, 4>{});
    case 8: return pick(std::integral_constant<int, 8>{});
    default: return pick(std::integral_constant<int, 16>{});
  }
}

dim3 row_grid(int rows) { return dim3((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

// Shared memory of a LayerNorm block as stage_affine() fills it: gamma and beta, and the bias when `with_bias`.
template <typename T>
size_t affine_smem(int hidden, bool with_bias = false) {
  return (with_bias ? 3 : 2) * static_cast<size_t>(hidden) * sizeof(T);
}

int grid_for(int64_t n, int block) { return static_cast<int>(std::min<int64_t>((n + block - 1) / block, 65535)); }

}  // namespace

template <typename T>
void embed_layernorm(const int32_t* tok, const int32_t* seg, const int32_t* pos, int rows, int hidden, const T* word,
                     const T* posemb, const T* type, const T* gamma, const T* beta, float eps, T* x,
                     const Stream& s) {
  const auto kernel =
      for_chunks(row_chunks(hidden), [](auto ch) { return embed_layernorm_kernel<T, decltype(ch)::value>; });
  launch("embed_layernorm", kernel, row_grid(rows), dim3(kRowsPerBlock * 32), affine_smem<T>(hidden), s, tok, seg, pos,
         rows, hidden, word, posemb, type, gamma, beta, eps, x);
}

template <typename T>
void layernorm(const T* x, int rows, int hidden, const T* gamma, const T* beta, float eps, T* y, const Stream& s) {
  const auto kernel = for_chunks(row_chunks(hidden), [](auto ch) { return layernorm_kernel<T, decltype(ch)::value>; });
  launch("layernorm", kernel, row_grid(rows), dim3(kRowsPerBlock * 32), affine_smem<T>(hidden), s, x, rows, hidden,
         gamma, beta, eps, y);
}

template <typename T>
void splitk_layernorm(const float* partial, int splits, int rows, int hidden, const T* bias, const T* residual,
                      const T* gamma, const T* beta, float eps, T* y, const Stream& s) {
  const auto kernel =
      for_chunks(row_chunks(hidden), [](auto ch) { return splitk_layernorm_kernel<T, decltype(ch)::value>; });
  launch("splitk_layernorm", kernel, row_grid(rows), dim3(kRowsPerBlock * 32), affine_smem<T>(hidden, true), s,
         partial, splits, rows, hidden, bias, residual, gamma, beta, eps, y);
}

template <typename T>
void gelu_inplace(T* x, int64_t n, const Stream& s) {
  launch("gelu", gelu_kernel<T>, dim3(grid_for(n / 8, 256)), dim3(256), 0, s, x, n / 8);
}

template <typename T>
void pooler_classifier(const T* x, const int32_t* cls_row, int batch, int hidden, const T* wp, const T* bp,
                       const T* wc, const T* bc, int labels, float* pooled, float* logits, const Stream& s) {
  const int per_block = kPoolWarps * kPoolOutsPerWarp;
  launch("pooler", pooler_kernel<T>, dim3((hidden + per_block - 1) / per_block, batch), dim3(kPoolWarps * 32),
         hidden * sizeof(float), s, x, cls_row, hidden, wp, bp, pooled);
  launch("classifier", classifier_kernel<T>, dim3(batch), dim3(128), 0, s, pooled, hidden, wc, bc, labels, logits);
}

template <typename T>
void gather_rows_f32(const T* x, const int32_t* rows, int n, int hidden, float* out, const Stream& s) {
  if (n == 0) return;
  launch("gather_rows", gather_rows_kernel<T>, dim3(n), dim3(256), 0, s, x, rows, n, hidden, out);
}

#define ET_INSTANTIATE(T)                                                                                         \
  template void embed_layernorm<T>(const int32_t*, const int32_t*, const int32_t*, int, int, const T*, const T*, \
                                   const T*, const T*, const T*, float, T*, const Stream&);                       \
  template void layernorm<T>(const T*, int, int, const T*, const T*, float, T*, const Stream&);                   \
  template void splitk_layernorm<T>(const float*, int, int, int, const T*, const T*, const T*, const T*, float,    \
                                    T*, const Stream&);                                                           \
  template void gelu_inplace<T>(T*, int64_t, const Stream&);                                                      \
  template void pooler_classifier<T>(const T*, const int32_t*, int, int, const T*, const T*, const T*, const T*, \
                                     int, float*, float*, const Stream&);                                         \
  template void gather_rows_f32<T>(const T*, const int32_t*, int, int, float*, const Stream&);
ET_INSTANTIATE(__half)
ET_INSTANTIATE(__nv_bfloat16)
#undef ET_INSTANTIATE

}  // namespace et::cuda
