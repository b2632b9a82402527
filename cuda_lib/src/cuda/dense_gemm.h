// Dense GEMMs through cuBLASLt with fused epilogues, for weights too dense for the tile-sparse kernel.
// (cuBLASLt's header stays inside dense_gemm.cu.)
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "common.cuh"

namespace et::cuda {

class DenseGemm {
 public:
  // tanh_gelu: fuse cuBLASLt's GELU epilogue (tanh approximation, |error| <= 4.8e-4, below fp16
  // rounding of the activation) instead of the exact erf GELU pass.
  // tune_candidates > 1: the first run of each shape (outside stream capture) times up to this many
  // of cuBLASLt's heuristic algorithms on the real operands and keeps the fastest; 1 takes the
  // heuristic's first choice.
  DenseGemm(bool tanh_gelu, int tune_candidates);
  ~DenseGemm();
  DenseGemm(const DenseGemm&) = delete;
  DenseGemm& operator=(const DenseGemm&) = delete;

  // y[m, n] = epilogue(x[m, k] . w[n, k]^T + bias (+ residual)), all row-major.
  // kBiasGelu runs cuBLASLt's bias epilogue then the exact (erf) GELU in one extra pass, since
  // cuBLASLt's GELU epilogue is the tanh approximation (unless tanh_gelu).
  template <typename T>
  void run(const T* w, const T* x, const T* bias, const T* residual, T* y, int m, int n, int k, Epilogue epi,
           cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace et::cuda
