// Tile-sparse GEMM on tensor cores: Y = epilogue(X . W^T + b), W kept as 16x16 tiles only (CSR over
// tile rows, each tile in mma B-fragment order; see prepare.h).
//
// X-stationary and barrier-free per warp. A thread block owns BM rows of X and a slab of W's tile
// rows (tile rows slab, slab + S, slab + 2S, ... for S = gridDim.y slabs). It copies its BM rows of X
// into shared memory once; then every warp walks its own tile rows (round robin over the slab) with
// no block barrier: per kept tile one 16-byte load per lane of the pre-arranged W tile (issued
// kPrefetch tiles ahead), BM/16 ldmatrix.x4 of the X fragments under the tile's 16 columns and
// 2 x BM/16 mma.sync.m16n8k16; the epilogue (bias, bias+GELU(erf) or bias+residual) then writes the
// tile row's 16 output columns. Only kept tiles are loaded or multiplied.
// When BM rows of the whole K do not fit into shared memory, K is cut into chunks of chunk_tiles
// tile columns: every warp then owns its tile row for the whole block (the host makes the slab at
// most one tile row per warp) and a block barrier separates the chunks.
#include <algorithm>
#include <climits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "kernels.h"
#include "prepare.h"

namespace et::cuda {
namespace {

constexpr int kXPad = 8;                   // elements of padding per X row: conflict-free ldmatrix
constexpr int kTwoPerSmSmem = 100 * 1024;  // shared memory of a block when two share an SM (H100, A100)

// Shared memory of a block holding rows x cols elements of X (rows padded by kXPad).
template <typename T>
constexpr int x_smem_bytes(int rows, int cols) {
  return rows * (cols + kXPad) * static_cast<int>(sizeof(T));
}

template <typename T, int BM, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, WARPS == 8 ? 2 : 1)
    tile_sparse_gemm_kernel(const T* __restrict__ x, int m, int k, int chunk_tiles, const uint4* __restrict__ tiles,
                            const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ tile_col,
                            const T* __restrict__ bias, const T* __restrict__ residual, T* __restrict__ y, int n,
                            int epi) {
  constexpr int kMT = BM / 16;                  // m16 fragments per warp
  constexpr int kLdGroup = kMT < 4 ? kMT : 4;  // X fragments held in registers at once
  // W tiles in flight per warp: deeper for BM = 32, whose few MMAs per tile cover less L2 latency.
  constexpr int kPrefetch = BM <= 32 ? 8 : 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sx = reinterpret_cast<T*>(smem_raw);  // [BM][ld]: the block's X rows of the current K chunk
  const int ld = chunk_tiles * kTile + kXPad;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m0 = blockIdx.x * BM;
  const int slabs = gridDim.y, slab = blockIdx.y;
  const int tile_rows = n / kTile, tile_cols = k / kTile;
  const int slab_rows = (tile_rows - slab + slabs - 1) / slabs;
  const int n_chunks = (tile_cols + chunk_tiles - 1) / chunk_tiles;

  // Start copying X[m0 .. m0 + BM, chunk c] -> sx (rows past m zero-filled); wait_chunk completes it.
  auto issue_chunk = [&](int c) {
    const int ct0 = c * chunk_tiles;
    const int segs = min(chunk_tiles, tile_cols - ct0) * 2;  // 16-byte segments per row
    for (int i = threadIdx.x; i < BM * segs; i += WARPS * 32) {
      const int row = i / segs, seg = i - row * segs;
      const bool ok = m0 + row < m;
      const T* src = ok ? x + static_cast<size_t>(m0 + row) * k + ct0 * kTile + seg * 8 : x;
      cp_async16(sx + row * ld + seg * 8, src, ok);
    }
    cp_async_commit();
  };
  auto wait_chunk = [] {  // the issued chunk is in shared memory and visible to the whole block
    cp_async_wait<0>();
    __syncthreads();
  };

  if (n_chunks == 1) issue_chunk(0);  // all of K: filled once, completed after the first W tiles are requested
  // ldmatrix.x4 addresses: lanes 0-15 point at rows 0-15 of the k-columns 0-7, lanes 16-31 at 8-15.
  const T* lane_x = sx + (lane & 15) * ld + (lane >> 4) * 8;
  const int g = lane >> 2, t = lane & 3;  // accumulator fragment: rows g, g + 8; columns 2t, 2t + 1

  for (int base = 0; base < slab_rows; base += WARPS) {
    const int i = base + warp;
    const bool active = i < slab_rows;
    const int tr = slab + i * slabs;
    const int end = active ? row_ptr[tr + 1] : 0;
    int next = active ? row_ptr[tr] : 0;  // next kept tile to fetch

    // Ring of the next kPrefetch kept tiles of the tile row (column INT_MAX: none left).
    uint4 wq[kPrefetch];
    int cq[kPrefetch];
#pragma unroll
    for (int p = 0; p < kPrefetch; ++p) {
      wq[p] = make_uint4(0, 0, 0, 0);
      cq[p] = INT_MAX;
      if (next < end) {
        wq[p] = __ldg(tiles + static_cast<size_t>(next) * 32 + lane);
        cq[p] = __ldg(tile_col + next);
        ++next;
      }
    }

    if (n_chunks == 1 && base == 0) wait_chunk();

    float acc[kMT][2][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[mt][j][q] = 0.0f;

    for (int c = 0; c < n_chunks; ++c) {
      if (n_chunks > 1) {
        if (c > 0 || base > 0) __syncthreads();  // every warp is done with the previous chunk
        issue_chunk(c);
        wait_chunk();
      }
      const int ct0 = c * chunk_tiles;
      const int ct1 = min(ct0 + chunk_tiles, tile_cols);
      while (cq[0] < ct1) {  // the tile row's kept tiles in this chunk, in column order
        const T* xs = lane_x + (cq[0] - ct0) * kTile;
        const uint4 w = wq[0];
#pragma unroll
        for (int mt0 = 0; mt0 < kMT; mt0 += kLdGroup) {  // ldmatrix a group of fragments, then their MMAs
          uint32_t a[kLdGroup][4];
#pragma unroll
          for (int i = 0; i < kLdGroup; ++i) ldmatrix_x4(a[i], xs + (mt0 + i) * 16 * ld);
#pragma unroll
          for (int i = 0; i < kLdGroup; ++i) {
            mma16816<T>(acc[mt0 + i][0], a[i], w.x, w.y);
            mma16816<T>(acc[mt0 + i][1], a[i], w.z, w.w);
          }
        }
#pragma unroll
        for (int p = 0; p + 1 < kPrefetch; ++p) {
          wq[p] = wq[p + 1];
          cq[p] = cq[p + 1];
        }
        cq[kPrefetch - 1] = INT_MAX;
        if (next < end) {
          wq[kPrefetch - 1] = __ldg(tiles + static_cast<size_t>(next) * 32 + lane);
          cq[kPrefetch - 1] = __ldg(tile_col + next);
          ++next;
        }
      }
    }
    if (!active) continue;

#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = tr * kTile + j * 8 + 2 * t;
      const float2 b = Elem<T>::unpack2(*reinterpret_cast<const uint32_t*>(bias + col));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = m0 + mt * 16 + g + hh * 8;
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
}

// Allow `kernel` at least `smem` bytes of dynamic shared memory on the current device and return how many
// of its blocks of `threads` fit on an SM. The allowance only ever grows (it is one attribute per kernel,
// shared by every size launched with it). Cached: asked once per (device, kernel, size), in the engine's
// eager warm-up, so nothing but launches happens while a CUDA graph is being captured.
int prepare_kernel(const void* kernel, int threads, int smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int>, int> blocks_per_sm;
  static std::map<std::pair<int, const void*>, int> allowed_smem;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(device, kernel, smem);
  if (const auto it = blocks_per_sm.find(key); it != blocks_per_sm.end()) return it->second;
  int& allowed = allowed_smem[{device, kernel}];
  if (smem > allowed) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
          "cudaFuncSetAttribute(tile_sparse_gemm)");
    allowed = smem;
  }
  int n = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor(tile_sparse_gemm)");
  blocks_per_sm.emplace(key, std::max(n, 1));
  return std::max(n, 1);
}

// Launch one configuration: chunk_tiles tile columns of X per shared-memory fill (all of K when they
// fit), and the number of slabs that fills the GPU (single chunk) or gives each warp one tile row.
template <typename T, int BM, int WARPS>
void launch(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y, Epilogue epi,
            const SparseDevice& dev, int chunk_tiles, cudaStream_t stream) {
  auto kernel = tile_sparse_gemm_kernel<T, BM, WARPS>;
  const int smem = x_smem_bytes<T>(BM, chunk_tiles * kTile);
  const int per_sm = prepare_kernel(reinterpret_cast<const void*>(kernel), WARPS * 32, smem);
  const int tile_rows = w.n / kTile;
  const int m_blocks = (m + BM - 1) / BM;
  int slabs = 0;
  if (chunk_tiles * kTile >= w.k) {
    const long slots = static_cast<long>(per_sm) * dev.num_sms;
    slabs = static_cast<int>(std::clamp(slots / m_blocks, 1L, static_cast<long>(tile_rows)));
  } else {
    slabs = (tile_rows + WARPS - 1) / WARPS;
  }
  const dim3 grid(m_blocks, slabs);
  check(cudaGetLastError(), "an earlier CUDA call (pending before tile_sparse_gemm)");
  kernel<<<grid, WARPS * 32, smem, stream>>>(x, m, w.k, chunk_tiles, static_cast<const uint4*>(w.tiles), w.row_ptr,
                                             w.tile_col, bias, residual, y, w.n, static_cast<int>(epi));
  const std::string what = "tile_sparse_gemm (grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) +
                           ", " + std::to_string(WARPS * 32) + " threads, " + std::to_string(smem) +
                           " B shared, n " + std::to_string(w.n) + ", k " + std::to_string(w.k) + ")";
  check_launch(what.c_str());
}

// Pick the warps per block and the K chunk for BM rows: all of K with 8 warps when two blocks fit on
// an SM, all of K with 16 warps when only one does, else chunks of K with 8 warps and two blocks per SM.
template <typename T, int BM>
void launch_rows(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                 Epilogue epi, const SparseDevice& dev, cudaStream_t stream) {
  const int tile_cols = w.k / kTile;
  const int budget = std::min(kTwoPerSmSmem, dev.max_smem_per_block);
  if (x_smem_bytes<T>(BM, w.k) <= budget) {
    launch<T, BM, 8>(w, x, m, bias, residual, y, epi, dev, tile_cols, stream);
  } else if (x_smem_bytes<T>(BM, w.k) <= dev.max_smem_per_block) {
    launch<T, BM, 16>(w, x, m, bias, residual, y, epi, dev, tile_cols, stream);
  } else {
    const int chunk = (budget / (BM * static_cast<int>(sizeof(T))) - kXPad) / kTile;
    launch<T, BM, 8>(w, x, m, bias, residual, y, epi, dev, chunk, stream);
  }
}

// Rows of X per block when not forced: 32 for small batches (more blocks: a batch of 128 rows is
// bound by the latency of each warp's chain of W tiles); otherwise 64 when BM = 64 rows of all of K
// fit twice into an SM's shared memory (X read once per slab, two blocks per SM hide each other's X
// fill), else 32 when 32 rows of all of K fit into one block (K = 3072 on an H100: X read once, W
// read M/32 times from L2), else 64 with K in chunks.
template <typename T>
int auto_block_rows(int m, int k, const SparseDevice& dev) {
  if (m <= 256) return 32;
  if (x_smem_bytes<T>(64, k) <= std::min(kTwoPerSmSmem, dev.max_smem_per_block)) return 64;
  if (x_smem_bytes<T>(32, k) <= dev.max_smem_per_block) return 32;
  return 64;
}

}  // namespace

template <typename T>
void sparse_gemm(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                 Epilogue epi, const SparseDevice& dev, int block_rows, cudaStream_t stream) {
  if (m <= 0) return;
  if (block_rows == 0) block_rows = auto_block_rows<T>(m, w.k, dev);
  switch (block_rows) {
    case 32: launch_rows<T, 32>(w, x, m, bias, residual, y, epi, dev, stream); break;
    case 64: launch_rows<T, 64>(w, x, m, bias, residual, y, epi, dev, stream); break;
    case 128: launch_rows<T, 128>(w, x, m, bias, residual, y, epi, dev, stream); break;
    default:
      throw Error(ET_ERR_INVALID_ARGUMENT,
                  "tile-sparse GEMM: block rows must be 32, 64 or 128, not " + std::to_string(block_rows));
  }
}

template void sparse_gemm<__half>(const DeviceSparseWeight&, const __half*, int, const __half*, const __half*,
                                  __half*, Epilogue, const SparseDevice&, int, cudaStream_t);
template void sparse_gemm<__nv_bfloat16>(const DeviceSparseWeight&, const __nv_bfloat16*, int,
                                         const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, Epilogue,
                                         const SparseDevice&, int, cudaStream_t);

}  // namespace et::cuda
