// CUTLASS Hopper GEMMs for small batches (see hopper_gemm.h). CUTLASS computes in the column-major view
// y^T[n, m] = w[n, k] . x^T[k, m]: its M is the output features (W row-major, K-major, as A), its N the token
// rows (X row-major = X^T column-major, K-major, as B) and D = y^T column-major is y row-major, so the
// per-output-feature bias is CUTLASS's per-row bias. Tiles of 64 features x 64 rows x 64 K (one consumer
// warpgroup): a batch of 128 rows gets 24-96 tiles on BERT-base shapes. Split-K runs the K slices as CUTLASS's
// batch mode (L), each slice writing its own fp32 partial, summed by the kernel after it.
#include "hopper_gemm.h"

#ifndef CUTLASS_ENABLE_GDC_FOR_SM90
#error "hopper_gemm.cu launches its kernels early: build it with -DCUTLASS_ENABLE_GDC_FOR_SM90 so that they wait"
#endif

#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace et::cuda::hopper {
namespace {

using Half = cutlass::half_t;
using LayoutA = cutlass::layout::RowMajor;     // w [n, k]
using LayoutB = cutlass::layout::ColumnMajor;  // x^T [k, m]
using LayoutD = cutlass::layout::ColumnMajor;  // y^T [n, m]
using TileShape = cute::Shape<cute::_64, cute::_64, cute::_64>;
using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
constexpr int kStepK = 64;  // the tile's K: split-K slices are multiples of it

// One kernel: fp16 operands, fp32 accumulation, output ElementD through the epilogue `Fusion`
// (C, when read, has D's type and layout).
template <typename ElementD, typename Fusion>
struct Kernel {
  static constexpr int kAlign = 16 / sizeof(ElementD);
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementD, LayoutD, kAlign, ElementD, LayoutD,
      kAlign, cutlass::epilogue::TmaWarpSpecialized, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Half, LayoutA, 8, Half, LayoutB, 8, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecialized>::CollectiveOp;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>>;
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;

  // D[l] = epilogue(A[l] . B[l]) for l < batches: A = w + l * a_step, B = x + l * a_step (both with row length
  // k), D = d + l * m * n; problem n x m x ks. `set` fills the fusion's arguments. False: not servable.
  template <typename Set>
  static bool run(const __half* w, const __half* x, ElementD* d, int m, int n, int k, int ks, int batches,
                  Set set, const Stream& s, const char* what) {
    const int64_t step = batches > 1 ? ks : 0;
    const StrideA sa = cute::make_stride(static_cast<int64_t>(k), cute::Int<1>{}, step);
    const StrideB sb = cute::make_stride(static_cast<int64_t>(k), cute::Int<1>{}, step);
    const StrideD sd = cute::make_stride(cute::Int<1>{}, static_cast<int64_t>(n), static_cast<int64_t>(m) * n);
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {n, m, ks, batches},
                                  {reinterpret_cast<const Half*>(w), sa, reinterpret_cast<const Half*>(x), sb},
                                  {{}, d, sd, d, sd}};  // C = D: never read (beta = 0)
    set(args.epilogue.thread);
    if (Gemm::can_implement(args) != cutlass::Status::kSuccess || Gemm::get_workspace_size(args) != 0) return false;
    Gemm gemm;
    const cutlass::Status st = gemm.run(args, nullptr, s.handle, nullptr, s.early_launch);
    if (st != cutlass::Status::kSuccess)
      throw Error(ET_ERR_BACKEND, std::string("CUTLASS ") + what + ": " + cutlass::cutlassGetStatusString(st));
    check(cudaGetLastError(), what);
    return true;
  }
};

using BiasKernel = Kernel<Half, cutlass::epilogue::fusion::LinCombPerRowBias<Half, float, Half, Half, float>>;
using BiasGeluKernel =
    Kernel<Half, cutlass::epilogue::fusion::LinCombPerRowBiasEltAct<cutlass::epilogue::thread::GELU_taylor, Half,
                                                                     float, Half, Half, float>>;
using PartialKernel = Kernel<float, cutlass::epilogue::fusion::LinearCombination<float, float, float, float>>;

}  // namespace

bool gemm(const __half* w, const __half* x, const __half* bias, __half* y, int m, int n, int k, Epilogue epi,
          const Stream& s) {
  auto with_bias = [bias](auto& t) { t.bias_ptr = reinterpret_cast<const Half*>(bias); };
  Half* d = reinterpret_cast<Half*>(y);
  if (epi == Epilogue::kBias) return BiasKernel::run(w, x, d, m, n, k, k, 1, with_bias, s, "GEMM (bias)");
  if (epi == Epilogue::kBiasGeluTanh)
    return BiasGeluKernel::run(w, x, d, m, n, k, k, 1, with_bias, s, "GEMM (bias + GELU)");
  return false;
}

bool gemm_split_k(const __half* w, const __half* x, float* partial, int m, int n, int k, int splits,
                  const Stream& s) {
  if (splits < 1 || k % splits != 0 || (splits > 1 && (k / splits) % kStepK != 0)) return false;
  return PartialKernel::run(w, x, partial, m, n, k, k / splits, splits, [](auto&) {}, s, "split-K GEMM");
}

int split_count(int m, int n, int k, int max_ctas) {
  if (k % kStepK != 0) return 1;
  const int tiles = ((n + 63) / 64) * ((m + 63) / 64);
  const int steps = k / kStepK;
  int best = 1;
  for (int d = 1; d <= steps; ++d)
    if (steps % d == 0 && tiles * d <= max_ctas) best = d;
  return best;
}

}  // namespace et::cuda::hopper
