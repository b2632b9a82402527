// Tile-sparse GEMM on tensor cores: Y = epilogue(X . W^T + b), W kept as 16x16 tiles only.
//
// A thread block owns BM rows of X and one group of R tile rows of W (R*16 output columns); it walks
// the union of the group's kept tile columns, kStageCols at a time, through a cp.async pipeline
// (X slices and the kept tiles into shared memory). Warps form a WM x WN grid: each owns BM/WM rows
// and two tile rows, and issues mma.sync only for the tiles its tile rows keep, so the work of a
// removed tile is skipped. Bias, bias+GELU(erf) or bias+residual are applied before the store.
#include "kernels.h"
#include "prepare.h"

namespace et::cuda {
namespace {

constexpr int kStages = 3;
constexpr int kXPad = 8;                              // elements of padding per X row (bank conflicts)
constexpr int kXRow = kStageCols * kTile + kXPad;     // X row length in shared memory

template <int BM, int WM, int WN>
struct SparseCfg {
  static constexpr int kWarps = WM * WN;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kR = WN * 2;                   // tile rows per block
  static constexpr int kMT = BM / WM / 16;            // m16 fragments per warp
  static constexpr int kXStage = BM * kXRow;          // elements
  static constexpr int kWStage = kR * kStageCols * 256;
  static constexpr int kSmemBytes = kStages * (kXStage + kWStage) * 2;  // + the group's index lists
  static int smem_bytes(int k) { return kSmemBytes + ((k / kTile + kStageCols) / kStageCols) * kStageCols * (kR + 1) * 4; }
};

template <typename T, int BM, int WM, int WN>
__global__ void __launch_bounds__(SparseCfg<BM, WM, WN>::kThreads, 1)
    tile_sparse_gemm_kernel(const T* __restrict__ x, int m, int k, const uint4* __restrict__ tiles,
                            const int32_t* __restrict__ gptr, const int32_t* __restrict__ gcol,
                            const int32_t* __restrict__ gtile, const T* __restrict__ bias,
                            const T* __restrict__ residual, T* __restrict__ y, int n, int epi) {
  using Cfg = SparseCfg<BM, WM, WN>;
  constexpr int R = Cfg::kR;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sx = reinterpret_cast<T*>(smem_raw);
  uint4* sw = reinterpret_cast<uint4*>(sx + kStages * Cfg::kXStage);
  int32_t* scol = reinterpret_cast<int32_t*>(sw + kStages * (Cfg::kWStage / 8));  // the group's entries
  int32_t* stile = scol + ((k / kTile + kStageCols) / kStageCols) * kStageCols;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int group = blockIdx.y;
  const int m0 = blockIdx.x * BM;
  const int e_begin = gptr[group];
  const int n_entries = gptr[group + 1] - e_begin;
  const int n_stages = n_entries / kStageCols;
  // The index lists go to shared memory once, so no global load sits on the pipeline's critical path.
  for (int i = tid; i < n_entries; i += Cfg::kThreads) scol[i] = gcol[e_begin + i];
  for (int i = tid; i < n_entries * R; i += Cfg::kThreads) stile[i] = gtile[static_cast<size_t>(e_begin) * R + i];
  __syncthreads();

  auto load_stage = [&](int s, int buf) {
    const int e0 = s * kStageCols;
    T* dx = sx + buf * Cfg::kXStage;
    for (int c = tid; c < BM * kStageCols * 2; c += Cfg::kThreads) {
      const int row = c / (kStageCols * 2), rest = c % (kStageCols * 2);
      const int sc = rest / 2, half = rest % 2;
      const int col = scol[e0 + sc];
      const bool ok = col >= 0 && m0 + row < m;
      const T* src = ok ? x + static_cast<size_t>(m0 + row) * k + col * kTile + half * 8 : x;
      cp_async16(dx + row * kXRow + sc * kTile + half * 8, src, ok);
    }
    uint4* dw = sw + buf * (Cfg::kWStage / 8);
    for (int c = tid; c < kStageCols * R * 32; c += Cfg::kThreads) {
      const int slot = c / 32, l = c % 32;  // slot = sc * R + r
      const int t = stile[e0 * R + slot];
      if (t >= 0) cp_async16(dw + slot * 32 + l, tiles + static_cast<size_t>(t) * 32 + l, true);
    }
  };

  float acc[Cfg::kMT][4][4];
#pragma unroll
  for (int i = 0; i < Cfg::kMT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_stages) load_stage(s, s);
    cp_async_commit();
  }
  for (int s = 0; s < n_stages; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (s + kStages - 1 < n_stages) load_stage(s + kStages - 1, (s + kStages - 1) % kStages);
    cp_async_commit();
    const int buf = s % kStages;
    const T* bx = sx + buf * Cfg::kXStage;
    const uint4* bw = sw + buf * (Cfg::kWStage / 8);
    const int e0 = s * kStageCols;
#pragma unroll
    for (int sc = 0; sc < kStageCols; ++sc) {
      const int t0 = stile[(e0 + sc) * R + wn * 2];
      const int t1 = stile[(e0 + sc) * R + wn * 2 + 1];
      if (t0 < 0 && t1 < 0) continue;
      const uint4 b0 = bw[(sc * R + wn * 2) * 32 + lane];
      const uint4 b1 = bw[(sc * R + wn * 2 + 1) * 32 + lane];
#pragma unroll
      for (int mt = 0; mt < Cfg::kMT; ++mt) {
        uint32_t a[4];
        const int row = wm * (BM / WM) + mt * 16 + (lane & 15);
        ldmatrix_x4(a, bx + row * kXRow + sc * kTile + (lane >> 4) * 8);
        if (t0 >= 0) {
          mma16816<T>(acc[mt][0], a, b0.x, b0.y);
          mma16816<T>(acc[mt][1], a, b0.z, b0.w);
        }
        if (t1 >= 0) {
          mma16816<T>(acc[mt][2], a, b1.x, b1.y);
          mma16816<T>(acc[mt][3], a, b1.z, b1.w);
        }
      }
    }
  }
  cp_async_wait<0>();

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int col = (group * R + wn * 2 + j / 2) * kTile + (j % 2) * 8 + 2 * t;
    if (col >= n) continue;
    const float2 b = Elem<T>::unpack2(*reinterpret_cast<const uint32_t*>(bias + col));
#pragma unroll
    for (int mt = 0; mt < Cfg::kMT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = m0 + wm * (BM / WM) + mt * 16 + g + hh * 8;
        if (row >= m) continue;
        float v0 = acc[mt][j][hh * 2] + b.x, v1 = acc[mt][j][hh * 2 + 1] + b.y;
        const size_t off = static_cast<size_t>(row) * n + col;
        if (epi == static_cast<int>(Epilogue::kBiasGelu)) {
          v0 = gelu_erf(v0);
          v1 = gelu_erf(v1);
        } else if (epi == static_cast<int>(Epilogue::kBiasResidual)) {
          const float2 r = Elem<T>::unpack2(*reinterpret_cast<const uint32_t*>(residual + off));
          v0 += r.x;
          v1 += r.y;
        }
        *reinterpret_cast<uint32_t*>(y + off) = Elem<T>::pack2(v0, v1);
      }
  }
}

template <typename T, int BM, int WM, int WN>
void launch(const DeviceSparseWeight& w, const DeviceTileGroups& g, const T* x, int m, const T* bias,
            const T* residual, T* y, Epilogue epi, cudaStream_t stream) {
  using Cfg = SparseCfg<BM, WM, WN>;
  auto kernel = tile_sparse_gemm_kernel<T, BM, WM, WN>;
  static int attr_bytes = 0;  // the largest dynamic shared memory size allowed so far
  const int smem = Cfg::smem_bytes(w.k);
  if (smem > attr_bytes) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
          "cudaFuncSetAttribute(tile_sparse_gemm)");
    attr_bytes = smem;
  }
  const dim3 grid((m + BM - 1) / BM, g.groups);
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(x, m, w.k, static_cast<const uint4*>(w.tiles), g.ptr,
                                                           g.col, g.tile, bias, residual, y, w.n,
                                                           static_cast<int>(epi));
  check_launch("tile_sparse_gemm");
}

}  // namespace

// Block shapes (rows of X x tile rows of W). Larger blocks re-read X less often but leave fewer,
// fatter blocks whose pipeline stalls are harder to hide; the kernel is latency-bound when sparse
// (NOTES.md), so the default takes 64 x 8 when that still gives every SM two blocks, else 64 x 4.
template <typename T>
void sparse_gemm(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                 Epilogue epi, int num_sms, SparseShape shape, cudaStream_t stream) {
  if (shape == SparseShape::kAuto)
    shape = static_cast<long>((m + 63) / 64) * w.g8.groups >= 2L * num_sms ? SparseShape::k64x8 : SparseShape::k64x4;
  switch (shape) {
    case SparseShape::k128x16: launch<T, 128, 2, 8>(w, w.g16, x, m, bias, residual, y, epi, stream); break;
    case SparseShape::k128x8: launch<T, 128, 2, 4>(w, w.g8, x, m, bias, residual, y, epi, stream); break;
    case SparseShape::k64x8: launch<T, 64, 2, 4>(w, w.g8, x, m, bias, residual, y, epi, stream); break;
    default: launch<T, 64, 2, 2>(w, w.g4, x, m, bias, residual, y, epi, stream); break;
  }
}

template void sparse_gemm<__half>(const DeviceSparseWeight&, const __half*, int, const __half*, const __half*,
                                  __half*, Epilogue, int, SparseShape, cudaStream_t);
template void sparse_gemm<__nv_bfloat16>(const DeviceSparseWeight&, const __nv_bfloat16*, int,
                                         const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, Epilogue,
                                         int, SparseShape, cudaStream_t);

}  // namespace et::cuda
