// On-the-fly attention: softmax(Q K^T * scale + padding mask) V per (sequence, head), with the score
// matrix held in registers (never written to global memory).
//
// Two operators, chosen by the batch's longest sequence:
//  - short: one thread block per (sequence, head) loads the whole sequence's Q, K and V into shared
//    memory once; each warp keeps its 16 query rows' scores against every key in registers
//    (up to kShortKeys keys) and does one exact softmax;
//  - long: one block per (sequence, head, 64 queries) streams 64-key blocks of K and V through a
//    double-buffered cp.async pipeline with an online (running max / running sum) softmax.
// Only computed heads are launched; each head's Q/K and V widths are its kept dimensions (prepare.h).
#include <cmath>

#include "kernels.h"

namespace et::cuda {
namespace {

constexpr int kShortKeys = 128;  // longest sequence of the short operator (registers: 64 scores/thread)
constexpr int kLongQ = 64;       // queries per block of the long operator (4 warps)
constexpr int kLongK = 64;       // keys per streamed block

template <int D>
constexpr int padded_ld() { return D + 8; }  // shared-memory row length: conflict-free ldmatrix

struct HeadArgs {
  int q_off, k_off, v_off, dqk, dv, out_off;
};

__device__ __forceinline__ HeadArgs read_head(const int32_t* slots, int h) {
  const int32_t* s = slots + h * 6;
  return HeadArgs{s[0], s[1], s[2], s[3], s[4], s[5]};
}

// Copy rows [0, rows) of a head's columns [off, off + width) starting at packed row `first` into
// shared memory; rows >= valid are zero-filled. Each thread copies one fixed 16-byte column chunk
// (tid % (D / 8)) of every (nthreads / (D / 8))-th row: no index division in the loop. nthreads is a
// multiple of 32, hence of D / 8 (8 or 16 chunks).
template <typename T, int D>
__device__ __forceinline__ void load_rows(T* dst, const T* qkv, int qkv_ld, int first, int off, int width, int rows,
                                          int valid, int tid, int nthreads) {
  constexpr int kChunks = D / 8;
  const int ch = tid % kChunks;
  if (ch * 8 >= width) return;
  const int step = nthreads / kChunks;
  const T* src = qkv + static_cast<size_t>(first) * qkv_ld + off + ch * 8;
  for (int r = tid / kChunks; r < rows; r += step) {
    const bool ok = r < valid;
    cp_async16(dst + r * padded_ld<D>() + ch * 8, ok ? src + static_cast<size_t>(r) * qkv_ld : qkv, ok);
  }
}

// 2^x on the special-function unit (flush-to-zero: probabilities below 2^-126 become 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// One warp's 16 query rows: Q fragments, running max / sum and the output accumulator.
template <typename T, int D>
struct WarpAttention {
  uint32_t qf[D / 16][4];
  float o[D / 8][4];
  float mrow[2];
  float lrow[2];

  __device__ __forceinline__ void init(const T* sq, int row0, int dqk, int lane) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
      if (ks * 16 < dqk) ldmatrix_x4(qf[ks], sq + (row0 + (lane & 15)) * padded_ld<D>() + ks * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
      for (int q = 0; q < 4; ++q) o[i][q] = 0.0f;
    mrow[0] = mrow[1] = -INFINITY;
    lrow[0] = lrow[1] = 0.0f;
  }

  // Attend to KB keys in shared memory. kMasked: rows >= kvalid are padding (masked, zero-filled); a full
  // block (kvalid == KB) skips the per-score mask. A head with all D Q/K and V dimensions kept takes a
  // branch-free copy of the loops; a pruned head stops at its kept widths.
  template <int KB, bool kMasked>
  __device__ __forceinline__ void step(const T* sk, const T* sv, int kvalid, int dqk, int dv, float scale_log2,
                                       int lane) {
    if (dqk == D && dv == D)
      step_widths<KB, kMasked, true>(sk, sv, kvalid, D, D, scale_log2, lane);
    else
      step_widths<KB, kMasked, false>(sk, sv, kvalid, dqk, dv, scale_log2, lane);
  }

  // Scores stay unscaled until the exponent, where the scale and the running maximum meet in one
  // multiply-add (mrow holds the raw maximum).
  template <int KB, bool kMasked, bool kAllDims>
  __device__ __forceinline__ void step_widths(const T* sk, const T* sv, int kvalid, int dqk, int dv,
                                              float scale_log2, int lane) {
    constexpr int LD = padded_ld<D>();
    float s[KB / 8][4];
#pragma unroll
    for (int kp = 0; kp < KB / 16; ++kp) {
      if (kMasked && kp * 16 >= kvalid) break;
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        if (!kAllDims && ks * 16 >= dqk) break;
        uint32_t b[4];
        ldmatrix_x4(b, sk + (kp * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + ks * 16 + ((lane >> 3) & 1) * 8);
        if (ks == 0) {
          mma16816_zero<T>(s[2 * kp], qf[ks], b[0], b[1]);
          mma16816_zero<T>(s[2 * kp + 1], qf[ks], b[2], b[3]);
        } else {
          mma16816<T>(s[2 * kp], qf[ks], b[0], b[1]);
          mma16816<T>(s[2 * kp + 1], qf[ks], b[2], b[3]);
        }
      }
    }
    const int t = lane & 3;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < KB / 8; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (kMasked && j * 8 + 2 * t + (q & 1) >= kvalid) s[j][q] = -INFINITY;
        mx[q >> 1] = fmaxf(mx[q >> 1], s[j][q]);
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float alpha[2], neg_m[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mnew = fmaxf(mrow[r], mx[r]);  // finite: every block holds >= 1 valid key
      alpha[r] = fast_exp2((mrow[r] - mnew) * scale_log2);
      mrow[r] = mnew;
      neg_m[r] = -mnew * scale_log2;
      lrow[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < KB / 8; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float p = fast_exp2(fmaf(s[j][q], scale_log2, neg_m[q >> 1]));
        s[j][q] = p;
        lrow[q >> 1] += p;
      }
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }
#pragma unroll
    for (int kp = 0; kp < KB / 16; ++kp) {
      if (kMasked && kp * 16 >= kvalid) break;
      uint32_t a[4];
      a[0] = Elem<T>::pack2(s[2 * kp][0], s[2 * kp][1]);
      a[1] = Elem<T>::pack2(s[2 * kp][2], s[2 * kp][3]);
      a[2] = Elem<T>::pack2(s[2 * kp + 1][0], s[2 * kp + 1][1]);
      a[3] = Elem<T>::pack2(s[2 * kp + 1][2], s[2 * kp + 1][3]);
#pragma unroll
      for (int dt = 0; dt < D / 16; ++dt) {
        if (!kAllDims && dt * 16 >= dv) break;
        uint32_t b[4];
        ldmatrix_x4_trans(b, sv + (kp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dt * 16 + (lane >> 4) * 8);
        mma16816<T>(o[2 * dt], a, b[0], b[1]);
        mma16816<T>(o[2 * dt + 1], a, b[2], b[3]);
      }
    }
  }

  // Normalise and store rows row0 + {g, g+8} (those < valid) of the head's output columns.
  __device__ __forceinline__ void store(T* out, int out_ld, int first, int row0, int valid, int out_off, int dv,
                                        int lane) {
    float l[2] = {lrow[0], lrow[1]};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      l[r] = 1.0f / l[r];
    }
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int row = row0 + g + hh * 8;
      if (row >= valid) continue;
      T* dst = out + static_cast<size_t>(first + row) * out_ld + out_off + 2 * t;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        if (i * 8 >= dv) break;
        *reinterpret_cast<uint32_t*>(dst + i * 8) = Elem<T>::pack2(o[i][hh * 2] * l[hh], o[i][hh * 2 + 1] * l[hh]);
      }
    }
  }
};

template <typename T, int D>
__global__ void attention_short_kernel(const T* __restrict__ qkv, int qkv_ld, T* __restrict__ out, int out_ld,
                                       const int32_t* __restrict__ slots, const int32_t* __restrict__ seq_start,
                                       const int32_t* __restrict__ seq_len, int rows, float scale_log2) {
  constexpr int LD = padded_ld<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);
  T* sk = sq + rows * LD;
  T* sv = sk + rows * LD;
  // The head's slots (weights) and the batch's row ranges (copied in before the forward's first kernel) are
  // read before pdl_enter: only Q, K and V come from the kernel before.
  const HeadArgs h = read_head(slots, blockIdx.x);
  const int b = blockIdx.y;
  const int first = seq_start[b], len = seq_len[b];
  pdl_enter();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int need = (len + 15) / 16 * 16;
  load_rows<T, D>(sq, qkv, qkv_ld, first, h.q_off, h.dqk, need, len, tid, blockDim.x);
  load_rows<T, D>(sk, qkv, qkv_ld, first, h.k_off, h.dqk, need, len, tid, blockDim.x);
  load_rows<T, D>(sv, qkv, qkv_ld, first, h.v_off, h.dv, need, len, tid, blockDim.x);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  if (warp * 16 >= len) return;
  WarpAttention<T, D> w;
  w.init(sq, warp * 16, h.dqk, lane);
  w.template step<kShortKeys, true>(sk, sv, len, h.dqk, h.dv, scale_log2, lane);
  w.store(out, out_ld, first, warp * 16, len, h.out_off, h.dv, lane);
}

template <typename T, int D>
__global__ void __launch_bounds__(128) attention_long_kernel(const T* __restrict__ qkv, int qkv_ld, T* __restrict__ out,
                                                             int out_ld, const int32_t* __restrict__ slots,
                                                             const int32_t* __restrict__ seq_start,
                                                             const int32_t* __restrict__ seq_len, float scale_log2) {
  constexpr int LD = padded_ld<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);
  T* sk = sq + kLongQ * LD;       // [2][kLongK][LD]
  T* sv = sk + 2 * kLongK * LD;   // [2][kLongK][LD]
  const HeadArgs h = read_head(slots, blockIdx.y);  // read before pdl_enter, as in the short operator
  const int b = blockIdx.z;
  const int first = seq_start[b], len = seq_len[b];
  pdl_enter();
  const int q0 = blockIdx.x * kLongQ;
  if (q0 >= len) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  load_rows<T, D>(sq, qkv, qkv_ld, first + q0, h.q_off, h.dqk, kLongQ, len - q0, tid, 128);
  const int nkb = (len + kLongK - 1) / kLongK;
  auto load_kv = [&](int kb, int buf) {
    const int k0 = kb * kLongK;
    load_rows<T, D>(sk + buf * kLongK * LD, qkv, qkv_ld, first + k0, h.k_off, h.dqk, kLongK, len - k0, tid, 128);
    load_rows<T, D>(sv + buf * kLongK * LD, qkv, qkv_ld, first + k0, h.v_off, h.dv, kLongK, len - k0, tid, 128);
  };
  load_kv(0, 0);
  cp_async_commit();
  // A warp whose 16 query rows all lie past the sequence's end only helps load K and V and keeps the barriers.
  const bool computes = warp * 16 < len - q0;
  WarpAttention<T, D> w;
  for (int kb = 0; kb < nkb; ++kb) {
    if (kb + 1 < nkb) load_kv(kb + 1, (kb + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (computes) {
      if (kb == 0) w.init(sq, warp * 16, h.dqk, lane);
      const T* skb = sk + (kb & 1) * kLongK * LD;
      const T* svb = sv + (kb & 1) * kLongK * LD;
      const int kvalid = len - kb * kLongK;
      if (kvalid >= kLongK)
        w.template step<kLongK, false>(skb, svb, kLongK, h.dqk, h.dv, scale_log2, lane);
      else
        w.template step<kLongK, true>(skb, svb, kvalid, h.dqk, h.dv, scale_log2, lane);
    }
    __syncthreads();
  }
  if (computes) w.store(out, out_ld, first + q0, warp * 16, len - q0, h.out_off, h.dv, lane);
}

template <typename T, int D>
void launch_long(const T* qkv, int qkv_ld, T* out, int out_ld, const DeviceHeads& heads, const int32_t* seq_start,
                 const int32_t* seq_len, int batch, int max_len, float scale_log2, const Stream& stream) {
  const size_t smem = static_cast<size_t>(kLongQ + 4 * kLongK) * padded_ld<D>() * sizeof(T);
  constexpr auto kernel = attention_long_kernel<T, D>;
  allow_dynamic_smem<kernel>(smem, "cudaFuncSetAttribute(attention_long)");
  launch("attention_long", kernel, dim3((max_len + kLongQ - 1) / kLongQ, heads.count, batch), dim3(128), smem,
         stream, qkv, qkv_ld, out, out_ld, heads.slots, seq_start, seq_len, scale_log2);
}

template <typename T, int D>
void launch_short(const T* qkv, int qkv_ld, T* out, int out_ld, const DeviceHeads& heads, const int32_t* seq_start,
                  const int32_t* seq_len, int batch, int max_len, float scale_log2, const Stream& stream) {
  constexpr int LD = padded_ld<D>();
  const int rows = (max_len + 15) / 16 * 16;
  const size_t smem = static_cast<size_t>(3) * rows * LD * sizeof(T);
  constexpr auto kernel = attention_short_kernel<T, D>;
  // the most any batch needs (kShortKeys rows), so that one setting serves every later launch
  allow_dynamic_smem<kernel>(static_cast<size_t>(3) * kShortKeys * LD * sizeof(T),
                             "cudaFuncSetAttribute(attention_short)");
  launch("attention_short", kernel, dim3(heads.count, batch), dim3(rows / 16 * 32), smem, stream, qkv, qkv_ld, out,
         out_ld, heads.slots, seq_start, seq_len, rows, scale_log2);
}

}  // namespace

template <typename T>
void attention(const T* qkv, int qkv_ld, T* out, int out_ld, const DeviceHeads& heads, int max_dqk, int max_dv,
               const int32_t* seq_start, const int32_t* seq_len, int batch, int max_len, float scale,
               int short_max, const Stream& stream) {
  const float scale_log2 = scale * 1.4426950408889634f;
  if (std::max(max_dqk, max_dv) > 64)  // wide heads always stream (the whole-sequence operator is built for 64)
    launch_long<T, 128>(qkv, qkv_ld, out, out_ld, heads, seq_start, seq_len, batch, max_len, scale_log2, stream);
  else if (max_len <= std::min(short_max, kShortKeys))
    launch_short<T, 64>(qkv, qkv_ld, out, out_ld, heads, seq_start, seq_len, batch, max_len, scale_log2, stream);
  else
    launch_long<T, 64>(qkv, qkv_ld, out, out_ld, heads, seq_start, seq_len, batch, max_len, scale_log2, stream);
}

template void attention<__half>(const __half*, int, __half*, int, const DeviceHeads&, int, int, const int32_t*,
                                const int32_t*, int, int, float, int, const Stream&);
template void attention<__nv_bfloat16>(const __nv_bfloat16*, int, __nv_bfloat16*, int, const DeviceHeads&, int, int,
                                       const int32_t*, const int32_t*, int, int, float, int, const Stream&);

}  // namespace et::cuda
