// Dense GEMMs through cuBLASLt with fused epilogues, for weights too dense for the tile-sparse kernel.
// (cuBLASLt's header stays inside dense_gemm.cu.)
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "common.cuh"

namespace et::cuda {

class DenseGemm {
 public:
  // tune_candidates > 1: the first run of each shape (outside stream capture) times up to this many
  // of cuBLASLt's heuristic algorithms on the real operands and keeps the fastest; 1 takes the
  // heuristic's first choice. cold_tuning: each timed launch follows an L2 flush (as the forward's
  // GEMMs find their weights); otherwise back-to-back launches on cache-warm operands.
  DenseGemm(int tune_candidates, bool cold_tuning);
  ~DenseGemm();
  DenseGemm(const DenseGemm&) = delete;
  DenseGemm& operator=(const DenseGemm&) = delete;

  // y[m, n] = epilogue(x[m, k] . w[n, k]^T + bias (+ residual)), all row-major.
  // kBiasGeluTanh is cuBLASLt's fused GELU epilogue (the tanh form); kBiasGelu (exact erf) runs the
  // bias epilogue and then one extra GELU pass, since cuBLASLt has no erf GELU epilogue.
  template <typename T>
  void run(const T* w, const T* x, const T* bias, const T* residual, T* y, int m, int n, int k, Epilogue epi,
           const Stream& s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace et::cuda
