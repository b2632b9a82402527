// cuBLASLt GEMMs with the bias (and residual via beta = 1) epilogue; plans cached per shape.
#include "dense_gemm.h"

#include <string>

#include "kernels.h"

namespace et::cuda {
namespace {

void check_lt(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  const et_status code = st == CUBLAS_STATUS_ALLOC_FAILED ? ET_ERR_OUT_OF_MEMORY : ET_ERR_BACKEND;
  throw Error(code, std::string("cuBLASLt: ") + what + " failed with status " + std::to_string(static_cast<int>(st)));
}

template <typename T>
constexpr cudaDataType_t data_type() {
  return std::is_same_v<T, __half> ? CUDA_R_16F : CUDA_R_16BF;
}

}  // namespace

DenseGemm::DenseGemm(bool tanh_gelu) : tanh_gelu_(tanh_gelu) {
  check_lt(cublasLtCreate(&handle_), "cublasLtCreate");
  const cudaError_t err = cudaMalloc(&workspace_, workspace_bytes_);
  if (err != cudaSuccess) {
    cublasLtDestroy(handle_);
    check(err, "cudaMalloc(cuBLASLt workspace)");
  }
}

DenseGemm::~DenseGemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

DenseGemm::Plan& DenseGemm::plan(const Key& key, cudaDataType_t type) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, dtype, epilogue] = key;
  (void)dtype;
  Plan p;
  // Column-major view: y^T[n, m] = w[n, k] . x^T[k, m]; w row-major [n, k] is column-major [k, n].
  check_lt(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  const auto epi = static_cast<cublasLtEpilogue_t>(epilogue);
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
  const int32_t bias_type = type;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)),
           "set BIAS_DATA_TYPE");
  check_lt(cublasLtMatrixLayoutCreate(&p.a, type, k, n, k), "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&p.b, type, k, m, k), "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&p.c, type, n, m, n), "layout C");
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                       sizeof(workspace_bytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
    throw Error(ET_ERR_BACKEND, "cuBLASLt: no algorithm for a " + std::to_string(m) + "x" + std::to_string(n) + "x" +
                                    std::to_string(k) + " GEMM");
  }
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

template <typename T>
void DenseGemm::run(const T* w, const T* x, const T* bias, const T* residual, T* y, int m, int n, int k, Epilogue epi,
                    cudaStream_t stream) {
  const bool with_residual = epi == Epilogue::kBiasResidual;
  const bool fused_gelu = epi == Epilogue::kBiasGelu && tanh_gelu_;
  const cublasLtEpilogue_t lt_epi = fused_gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  Plan& p = plan(Key{m, n, k, static_cast<int>(data_type<T>()), static_cast<int>(lt_epi)}, data_type<T>());
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
           "set BIAS_POINTER");
  const float alpha = 1.0f, beta = with_residual ? 1.0f : 0.0f;
  const T* c = with_residual ? residual : y;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, c, p.c, y, p.c, &p.algo, workspace_,
                          workspace_bytes_, stream),
           "cublasLtMatmul");
  if (epi == Epilogue::kBiasGelu && !fused_gelu) gelu_inplace(y, static_cast<int64_t>(m) * n, stream);
}

template void DenseGemm::run<__half>(const __half*, const __half*, const __half*, const __half*, __half*, int, int,
                                     int, Epilogue, cudaStream_t);
template void DenseGemm::run<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                                            const __nv_bfloat16*, __nv_bfloat16*, int, int, int, Epilogue,
                                            cudaStream_t);

}  // namespace et::cuda
