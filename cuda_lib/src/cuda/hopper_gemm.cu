// CUTLASS Hopper GEMMs for small batches (see hopper_gemm.h), in the column-major view of hopper_gemm_type.cuh
// (CUTLASS's M is the output features), so the per-output-feature bias is CUTLASS's per-row bias. Two tile
// shapes (cuda_lib/NOTES.md, run 45): 64 features x 64 rows x 64 K (one consumer warpgroup) while its tiles fit in
// one wave of CTAs, else 128 features x 64 rows (two cooperative consumer warpgroups), which halves the tiles.
// Split-K runs the K slices as CUTLASS's batch mode (L), each slice writing its own fp32 partial, summed by the
// kernel after it; it always takes the 64 x 64 tiles.
#include "hopper_gemm.h"

#ifndef CUTLASS_ENABLE_GDC_FOR_SM90
#error "hopper_gemm.cu launches its kernels early: build it with -DCUTLASS_ENABLE_GDC_FOR_SM90 so that they wait"
#endif

#include <string>

#include "cutlass/epilogue/thread/activation.h"
#include "hopper_gemm_type.cuh"

namespace et::cuda::hopper {
namespace {

using Half = cutlass::half_t;
using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
constexpr int kStepK = 64;  // the tiles' K: split-K slices are multiples of it

// A tile shape (features x rows x K) with its main-loop and epilogue schedules.
template <int TM, typename MainSchedule_, typename EpilogueSchedule_>
struct Tiles {
  using Shape = cute::Shape<cute::Int<TM>, cute::_64, cute::_64>;
  using MainSchedule = MainSchedule_;
  using EpilogueSchedule = EpilogueSchedule_;
};
using SmallTiles = Tiles<64, cutlass::gemm::KernelTmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecialized>;
using WideTiles = Tiles<128, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                        cutlass::epilogue::TmaWarpSpecializedCooperative>;

// Output tiles of SmallTiles for y[m, n].
int small_tiles(int m, int n) { return ((n + 63) / 64) * ((m + 63) / 64); }

// One kernel: output ElementD through the epilogue `Fusion`, tiles T.
template <typename T, typename ElementD, typename Fusion>
struct Kernel {
  using Gemm = typename GemmType<typename T::Shape, ClusterShape, typename T::MainSchedule,
                                 typename T::EpilogueSchedule, ElementD, Fusion>::Gemm;
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;

  // D[l] = epilogue(A[l] . B[l]) for l < batches: A = w + l * a_step, B = x + l * a_step (both with row length
  // k), D = d + l * m * n; problem n x m x ks; a persistent kernel (the wide tiles) gets sms CTAs at most (the
  // 64 x 64 kernels launch one CTA a tile and ignore it). `set` fills the fusion's arguments. False: not servable.
  template <typename Set>
  static bool run(const __half* w, const __half* x, ElementD* d, int m, int n, int k, int ks, int batches, int sms,
                  Set set, const Stream& s, const char* what) {
    const int64_t step = batches > 1 ? ks : 0;
    const StrideA sa = cute::make_stride(static_cast<int64_t>(k), cute::Int<1>{}, step);
    const StrideB sb = cute::make_stride(static_cast<int64_t>(k), cute::Int<1>{}, step);
    const StrideD sd = cute::make_stride(cute::Int<1>{}, static_cast<int64_t>(n), static_cast<int64_t>(m) * n);
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {n, m, ks, batches},
                                  {reinterpret_cast<const Half*>(w), sa, reinterpret_cast<const Half*>(x), sb},
                                  {{}, d, sd, d, sd}};  // C = D: never read (beta = 0)
    args.hw_info.sm_count = sms;
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

using BiasFusion = cutlass::epilogue::fusion::LinCombPerRowBias<Half, float, Half, Half, float>;
using BiasGeluFusion = cutlass::epilogue::fusion::LinCombPerRowBiasEltAct<cutlass::epilogue::thread::GELU_taylor,
                                                                           Half, float, Half, Half, float>;
using PartialKernel =
    Kernel<SmallTiles, float, cutlass::epilogue::fusion::LinearCombination<float, float, float, float>>;

// y = epilogue(x . w^T + bias) with the fusion F on tiles T.
template <typename T, typename F>
bool gemm_on(const __half* w, const __half* x, const __half* bias, __half* y, int m, int n, int k, int sms,
             const Stream& s, const char* what) {
  return Kernel<T, Half, F>::run(
      w, x, reinterpret_cast<Half*>(y), m, n, k, k, 1, sms,
      [bias](auto& t) { t.bias_ptr = reinterpret_cast<const Half*>(bias); }, s, what);
}

// y = epilogue(x . w^T + bias) with the fusion F, on the small tiles while they fit in one wave.
template <typename F>
bool gemm_with(const __half* w, const __half* x, const __half* bias, __half* y, int m, int n, int k, int sms,
               const Stream& s, const char* what) {
  if (small_tiles(m, n) <= sms) return gemm_on<SmallTiles, F>(w, x, bias, y, m, n, k, sms, s, what);
  return gemm_on<WideTiles, F>(w, x, bias, y, m, n, k, sms, s, what);
}

}  // namespace

bool gemm(const __half* w, const __half* x, const __half* bias, __half* y, int m, int n, int k, Epilogue epi,
          int sms, const Stream& s) {
  if (epi == Epilogue::kBias) return gemm_with<BiasFusion>(w, x, bias, y, m, n, k, sms, s, "GEMM (bias)");
  if (epi == Epilogue::kBiasGeluTanh)
    return gemm_with<BiasGeluFusion>(w, x, bias, y, m, n, k, sms, s, "GEMM (bias + GELU)");
  return false;
}

bool gemm_split_k(const __half* w, const __half* x, float* partial, int m, int n, int k, int splits,
                  const Stream& s) {
  if (splits < 1 || k % splits != 0 || (splits > 1 && (k / splits) % kStepK != 0)) return false;
  return PartialKernel::run(w, x, partial, m, n, k, k / splits, splits, 0, [](auto&) {}, s, "split-K GEMM");
}

int split_count(int m, int n, int k, int max_ctas) {
  if (k % kStepK != 0) return 1;
  const int tiles = small_tiles(m, n);
  const int steps = k / kStepK;
  int best = 1;
  for (int d = 1; d <= steps; ++d)
    if (steps % d == 0 && tiles * d <= max_ctas) best = d;
  return best;
}

}  // namespace et::cuda::hopper
