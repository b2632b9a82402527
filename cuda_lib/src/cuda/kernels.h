// Host-side launchers of the CUDA backend's kernels (all asynchronous on the given stream; each
// checks its launch and throws et::Error on failure).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace et::cuda {

// A tile-sparse weight on the device (see prepare.h for the layout).
struct DeviceSparseWeight {
  int n = 0;
  int k = 0;
  const void* tiles = nullptr;        // [kept][32 lanes][8 elements], in CSR order
  const int32_t* row_ptr = nullptr;   // [n / 16 + 1]
  const int32_t* tile_col = nullptr;  // [kept]
};

// What the tile-sparse GEMM needs to know about the GPU to size its grid.
struct SparseDevice {
  int num_sms = 0;
  int max_smem_per_block = 0;  // opt-in maximum of dynamic shared memory per block, bytes
};

// Y[M, n] = epilogue(X[M, k] . W^T + bias (+ residual)); X, Y, residual row-major with ld k / n / n.
// block_rows: rows of X per thread block (32, 64 or 128), or 0 to choose by M.
template <typename T>
void sparse_gemm(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                 Epilogue epi, const SparseDevice& dev, int block_rows, const Stream& s);

// Per computed head of a layer (device copy of prepare.h's HeadSlot).
struct DeviceHeads {
  int count = 0;
  const int32_t* slots = nullptr;  // [count][6]: q_off k_off v_off dqk dv out_off
};

// Fused attention over a ragged batch. qkv: [rows, qkv_ld]; out: [rows, out_ld].
// seq_start/seq_len: [batch] first row and length of each sequence (packed or padded layout), in any order (the
// grid takes them in the order given; the engine gives them longest first).
// short_max: sequences of max_len <= short_max use the whole-sequence operator, longer ones the
// streaming (online-softmax) operator.
template <typename T>
void attention(const T* qkv, int qkv_ld, T* out, int out_ld, const DeviceHeads& heads, int max_dqk, int max_dv,
               const int32_t* seq_start, const int32_t* seq_len, int batch, int max_len, float scale,
               int short_max, const Stream& s);

// x[rows, h] = LayerNorm(word[tok] + pos[pos_id] + type[seg]).
template <typename T>
void embed_layernorm(const int32_t* tok, const int32_t* seg, const int32_t* pos, int rows, int hidden,
                     const T* word, const T* posemb, const T* type, const T* gamma, const T* beta, float eps, T* x,
                     const Stream& s);

// y[rows, h] = LayerNorm(x[rows, h]).
template <typename T>
void layernorm(const T* x, int rows, int hidden, const T* gamma, const T* beta, float eps, T* y,
               const Stream& s);

// y[rows, h] = LayerNorm(sum over s < splits of partial[s][rows, h] + bias + residual): the epilogue of a split-K
// GEMM (fp32 partial products) fused with the LayerNorm after it.
template <typename T>
void splitk_layernorm(const float* partial, int splits, int rows, int hidden, const T* bias, const T* residual,
                      const T* gamma, const T* beta, float eps, T* y, const Stream& s);

// x = GELU(x) elementwise (exact erf form), n a multiple of 8.
template <typename T>
void gelu_inplace(T* x, int64_t n, const Stream& s);

// logits[b, labels] = classifier(tanh(pooler(x[cls_row[b]]))), fp32 output; pooled: [batch, hidden] scratch.
template <typename T>
void pooler_classifier(const T* x, const int32_t* cls_row, int batch, int hidden, const T* wp, const T* bp,
                       const T* wc, const T* bc, int labels, float* pooled, float* logits, const Stream& s);

// out[i, :] = float(x[rows[i], :]) for i < n.
template <typename T>
void gather_rows_f32(const T* x, const int32_t* rows, int n, int hidden, float* out, const Stream& s);

}  // namespace et::cuda
