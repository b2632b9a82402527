// The CUTLASS Hopper GEMM type of libet's layout, shared by hopper_gemm.cu and the tile measurement tool
// (cuda_lib/gpu/cutlass_tiles.cu): CUTLASS computes y^T[n, m] = w[n, k] . x^T[k, m], its M the output features
// (W row-major, K-major, as A), its N the token rows (X row-major = X^T column-major, K-major, as B) and
// D = y^T column-major, which is y row-major. fp16 operands, fp32 accumulation, output ElementD through the
// epilogue `Fusion` (C, when read, has D's type and layout).
#pragma once

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace et::cuda::hopper {

template <typename TileShape, typename ClusterShape, typename MainSchedule, typename EpilogueSchedule,
          typename ElementD, typename Fusion>
struct GemmType {
  using Half = cutlass::half_t;
  using LayoutA = cutlass::layout::RowMajor;     // w [n, k]
  using LayoutB = cutlass::layout::ColumnMajor;  // x^T [k, m]
  using LayoutD = cutlass::layout::ColumnMajor;  // y^T [n, m]
  static constexpr int kAlign = 16 / sizeof(ElementD);
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementD, LayoutD, kAlign, ElementD, LayoutD,
      kAlign, EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Half, LayoutA, 8, Half, LayoutB, 8, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainSchedule>::CollectiveOp;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>>;
};

}  // namespace et::cuda::hopper
