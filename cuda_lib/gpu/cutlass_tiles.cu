// CUTLASS Hopper GEMM configurations side by side (a measurement tool, not part of libet): one configuration
// per compilation, chosen by -DET_TILE_CFG=<index into the table below>, exported as
// et_tile_gemm_<index>. libet's GEMM type (src/cuda/hopper_gemm_type.cuh: y[m, n] = x[m, k] . w[n, k]^T + bias in
// CUTLASS's column-major view, its M = output features, its N = token rows), fp16 in and out, fp32
// accumulation, launched with programmatic dependent launch. cutlass_tiles.py builds and times them.
#include <cuda_runtime.h>

#include "hopper_gemm_type.cuh"

#ifndef ET_TILE_CFG
#error "build with -DET_TILE_CFG=<configuration index> (cutlass_tiles.py)"
#endif

namespace {

using namespace cute;
using Half = cutlass::half_t;
namespace gemm = cutlass::gemm;
namespace epi = cutlass::epilogue;

// Tile (features x rows x K), cluster, main-loop schedule and the epilogue schedule that goes with it.
template <int TM, int TN, int CM, int CN, typename Main, typename Epi>
struct Cfg {
  using Tile = Shape<Int<TM>, Int<TN>, _64>;
  using Cluster = Shape<Int<CM>, Int<CN>, _1>;
  using MainSchedule = Main;
  using EpiSchedule = Epi;
};

using WS = gemm::KernelTmaWarpSpecialized;
using Coop = gemm::KernelTmaWarpSpecializedCooperative;
using Ping = gemm::KernelTmaWarpSpecializedPingpong;
using EpiWS = epi::TmaWarpSpecialized;
using EpiCoop = epi::TmaWarpSpecializedCooperative;

// The table: keep cutlass_tiles.py's NAMES in the same order.
using Table = cute::tuple<Cfg<64, 64, 1, 1, WS, EpiWS>,          // 0: libet's small-batch configuration
                          Cfg<128, 128, 1, 1, Coop, EpiCoop>,    // 1
                          Cfg<128, 128, 2, 1, Coop, EpiCoop>,    // 2
                          Cfg<128, 256, 1, 1, Coop, EpiCoop>,    // 3
                          Cfg<128, 256, 2, 1, Coop, EpiCoop>,    // 4
                          Cfg<64, 128, 1, 1, Ping, EpiWS>,       // 5
                          Cfg<64, 256, 1, 1, Ping, EpiWS>,       // 6
                          Cfg<128, 128, 1, 1, Ping, EpiWS>,      // 7
                          Cfg<128, 64, 1, 1, Coop, EpiCoop>,     // 8: libet's wide configuration
                          Cfg<64, 128, 1, 2, Ping, EpiWS>>;      // 9
using C = cute::tuple_element_t<ET_TILE_CFG, Table>;

using Fusion = epi::fusion::LinCombPerRowBias<Half, float, Half, Half, float>;
using Gemm = typename et::cuda::hopper::GemmType<typename C::Tile, typename C::Cluster, typename C::MainSchedule,
                                                 typename C::EpiSchedule, Half, Fusion>::Gemm;

}  // namespace

#define ET_CAT2(a, b) a##b
#define ET_CAT(a, b) ET_CAT2(a, b)

// 0 on success; 1: CUTLASS cannot run this problem (alignment, workspace); 2: the launch failed.
extern "C" int ET_CAT(et_tile_gemm_, ET_TILE_CFG)(const void* w, const void* x, const void* bias, void* y, int m,
                                                  int n, int k, int sm_count, int pdl, cudaStream_t stream) {
  typename Gemm::Arguments args{
      gemm::GemmUniversalMode::kGemm,
      {n, m, k, 1},
      {static_cast<const Half*>(w), make_stride(int64_t(k), Int<1>{}, int64_t(0)), static_cast<const Half*>(x),
       make_stride(int64_t(k), Int<1>{}, int64_t(0))},
      {{}, static_cast<Half*>(y), make_stride(Int<1>{}, int64_t(n), int64_t(0)), static_cast<Half*>(y),
       make_stride(Int<1>{}, int64_t(n), int64_t(0))}};
  args.epilogue.thread.bias_ptr = static_cast<const Half*>(bias);
  args.hw_info.sm_count = sm_count;
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess || Gemm::get_workspace_size(args) != 0) return 1;
  Gemm g;
  if (g.run(args, nullptr, stream, nullptr, pdl != 0) != cutlass::Status::kSuccess) return 2;
  return cudaGetLastError() == cudaSuccess ? 0 : 2;
}
