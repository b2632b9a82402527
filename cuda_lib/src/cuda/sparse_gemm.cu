// Tile-sparse GEMM on tensor cores: Y = epilogue(X . W^T + b), W kept as 16x16 tiles only (CSR over
// tile rows, each tile in mma B-fragment order; see prepare.h).
//
// X-stationary and barrier-free per warp. A thread block owns BM rows of X and a slab of W's tile
// rows (tile rows slab, slab + S, slab + 2S, ... for S = gridDim.y slabs). It copies its BM rows of X
// into shared memory once; every warp then walks its own tile rows (round robin over the slab). Per
// kept tile: one 16-byte load per lane of the pre-arranged W tile, BM/16 ldmatrix.x4 of the X fragments
// under the tile's 16 columns and 2 x BM/16 mma.sync.m16n8k16; the epilogue (bias, bias+GELU (erf or tanh form) or
// bias+residual) then writes the tile row's 16 output columns. Only kept tiles are loaded or multiplied.
//
// Two kernels:
//  - stream (BM rows of all of K fit into one block's shared memory): each warp reads the CSR bounds of
//    up to 32 of its tile rows at once (one lane per row) and runs ONE continuous prefetch ring of W
//    tiles across all its rows, so the next row's tiles are in flight while a row's last MMAs and its
//    epilogue run; a row's bias and residual are requested just before its first MMA. No global load
//    of the index data sits between two tile rows. X is held as swizzled tile columns, so each
//    ldmatrix address is one base plus a constant (the inner loop is ~45 instructions per tile at
//    BM = 64, 8 of them mma).
//  - chunked (they do not fit): K is cut into chunks of chunk_tiles tile columns; every warp owns one
//    tile row for the whole block (the host makes the slab at most one tile row per warp) and a block
//    barrier separates the chunks.
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

constexpr int kXPad = 8;                   // elements of padding per X row of a chunked block: conflict-free ldmatrix
constexpr int kTwoPerSmSmem = 100 * 1024;  // shared memory of a block when two share an SM (H100, A100)
constexpr int kRowWindow = 32;             // tile rows whose CSR bounds a warp holds at once (one per lane)
// Warps of a stream block (one block per SM shares one X copy): 16, or 8 for BM = 128, whose 64
// accumulators per thread need more than the 128 registers a 512-thread block allows (spills on sm_80).
template <int BM>
constexpr int stream_warps() {
  return BM >= 128 ? 8 : 16;
}
constexpr int kChunkedWarps = 8;           // warps of a chunked block (two per SM)
constexpr unsigned kFullMask = 0xffffffffu;

// Shared memory of a chunked block holding rows x cols elements of X (rows padded by kXPad).
template <typename T>
constexpr int x_smem_bytes(int rows, int cols) {
  return rows * (cols + kXPad) * static_cast<int>(sizeof(T));
}

// Shared memory of a stream block: rows x k elements of X as tile columns (no padding, see the kernel).
template <typename T>
constexpr int stream_smem_bytes(int rows, int k) {
  return rows * k * static_cast<int>(sizeof(T));
}

// W tiles in flight per warp: deeper for fewer rows, whose fewer MMAs per tile cover less L2 latency
// (BM = 128: its 64 accumulators leave registers for 4).
template <int BM>
constexpr int prefetch_depth() {
  return BM <= 32 ? 8 : BM <= 64 ? 6 : 4;
}

template <int kMT>
__device__ __forceinline__ void zero_acc(float (&acc)[kMT][2][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][j][q] = 0.0f;
}

// acc += X[BM rows, one kept tile's 16 columns] . tile^T. addr: this lane's ldmatrix address of the
// first m16 fragment (lanes 0-15: rows 0-15 at columns 0-7, lanes 16-31: at columns 8-15), frag_bytes:
// the distance between two m16 fragments; w: this lane's B fragments of the tile.
template <typename T, int kMT>
__device__ __forceinline__ void mma_tile(float (&acc)[kMT][2][4], uint32_t addr, int frag_bytes, const uint4& w) {
  constexpr int kLdGroup = kMT < 4 ? kMT : 4;  // X fragments held in registers at once
#pragma unroll
  for (int mt0 = 0; mt0 < kMT; mt0 += kLdGroup) {
    uint32_t a[kLdGroup][4];
#pragma unroll
    for (int i = 0; i < kLdGroup; ++i) ldmatrix_x4(a[i], addr + (mt0 + i) * frag_bytes);
#pragma unroll
    for (int i = 0; i < kLdGroup; ++i) {
      mma16816<T>(acc[mt0 + i][0], a[i], w.x, w.y);
      mma16816<T>(acc[mt0 + i][1], a[i], w.z, w.w);
    }
  }
}

// A lane's epilogue operands of one tile row: the bias at its two column pairs and, when kEarly, the
// residual at its accumulator positions (zero for rows past m or other epilogues). Loaded before the
// row's MMAs so that their latency hides under them; without kEarly (BM = 128: its 64 accumulators
// leave no registers for them) the residual is read in store_row.
template <typename T, int kMT, bool kEarly>
struct RowOperands {
  uint32_t bias[2];
  uint32_t res[kEarly ? kMT : 1][2][2];

  __device__ __forceinline__ void load(const T* __restrict__ b, const T* __restrict__ residual, int tr, int m0,
                                       int m, int n, int epi, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const bool add_res = epi == static_cast<int>(Epilogue::kBiasResidual);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = tr * kTile + j * 8 + 2 * t;
      bias[j] = __ldg(reinterpret_cast<const unsigned int*>(b + col));
      if constexpr (kEarly) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = m0 + mt * 16 + g + hh * 8;
            res[mt][j][hh] =
                add_res && row < m
                    ? __ldg(reinterpret_cast<const unsigned int*>(residual + static_cast<size_t>(row) * n + col))
                    : 0u;
          }
      }
    }
  }
};

// Write tile row tr's 16 output columns of the block's rows m0 .. m0 + BM (rows past m skipped):
// y = acc + bias, then GELU (erf or tanh form) or + residual as epi says.
template <typename T, int kMT, bool kEarly>
__device__ __forceinline__ void store_row(const float (&acc)[kMT][2][4], const RowOperands<T, kMT, kEarly>& ops,
                                          const T* __restrict__ residual, T* __restrict__ y, int tr, int m0, int m,
                                          int n, int epi, int lane) {
  const int g = lane >> 2, t = lane & 3;  // accumulator fragment: rows g, g + 8; columns 2t, 2t + 1
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int col = tr * kTile + j * 8 + 2 * t;
    const float2 b = Elem<T>::unpack2(ops.bias[j]);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = m0 + mt * 16 + g + hh * 8;
        if (row >= m) continue;
        float v0 = acc[mt][j][hh * 2] + b.x, v1 = acc[mt][j][hh * 2 + 1] + b.y;
        const size_t off = static_cast<size_t>(row) * n + col;
        if (!apply_gelu(v0, v1, epi) && epi == static_cast<int>(Epilogue::kBiasResidual)) {
          uint32_t rv;
          if constexpr (kEarly)
            rv = ops.res[mt][j][hh];
          else
            rv = *reinterpret_cast<const uint32_t*>(residual + off);
          const float2 r = Elem<T>::unpack2(rv);
          v0 += r.x;
          v1 += r.y;
        }
        *reinterpret_cast<uint32_t*>(y + off) = Elem<T>::pack2(v0, v1);
      }
  }
}

// Stream kernel: BM rows of all of K in shared memory, filled once.
template <typename T, int BM, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 1)
    tile_sparse_stream_kernel(const T* __restrict__ x, int m, int k, const uint4* __restrict__ tiles,
                              const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ tile_col,
                              const T* __restrict__ bias, const T* __restrict__ residual, T* __restrict__ y, int n,
                              int epi) {
  constexpr int kMT = BM / 16;  // m16 fragments per warp
  constexpr int kPrefetch = prefetch_depth<BM>();
  constexpr bool kEarly = kMT <= 4;
  constexpr int kRowBytes = kTile * static_cast<int>(sizeof(T));  // one row of a tile column: 32 bytes
  constexpr int kColBytes = BM * kRowBytes;                        // one tile column of the block's rows
  // X as tile columns: [k / 16][BM rows][16 elements]. Row r's two 16-byte halves are swapped when bit 2
  // of r is set, so the 8 rows that one 8x8 ldmatrix matrix reads fall into distinct banks.
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* sx = smem_raw;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m0 = blockIdx.x * BM;
  const int slabs = gridDim.y, slab = blockIdx.y;
  const int slab_rows = (n / kTile - slab + slabs - 1) / slabs;
  // This warp's tile rows: row_of(j) for j < rows (the slab's rows warp, warp + WARPS, ...).
  const int rows = warp < slab_rows ? (slab_rows - warp + WARPS - 1) / WARPS : 0;
  auto row_of = [&](int j) { return slab + (warp + j * WARPS) * slabs; };

  // Window of rows base .. base + win - 1: lane l holds row base + l's kept tiles [lo, hi).
  int win = 0, lo = 0, hi = 0;
  auto load_bounds = [&](int base) {
    win = min(rows - base, kRowWindow);
    lo = hi = 0;
    if (lane < win) {
      const int tr = row_of(base + lane);
      lo = __ldg(row_ptr + tr);
      hi = __ldg(row_ptr + tr + 1);
    }
  };

  // The window's kept tiles as one stream, row after row. Producer: next tile pn of window row pj (which
  // ends at pe). Ring (circular): the stream's next kPrefetch tiles and their columns; slot `head` is
  // consumed next, and a consumed slot is refilled at once with the tile kPrefetch further on.
  int pj = 0, pn = 0, pe = 0, head = 0;
  uint4 wq[kPrefetch];
  int cq[kPrefetch];
  auto skip_done_rows = [&] {  // move the producer past rows with no tiles left (warp-uniform)
    while (pn == pe && pj + 1 < win) {
      ++pj;
      pn = __shfl_sync(kFullMask, lo, pj);
      pe = __shfl_sync(kFullMask, hi, pj);
    }
  };
  auto request = [&](int slot) {  // the stream's next tile into slot (nothing once the window is done)
    if (pn < pe) {
      wq[slot] = __ldg(tiles + static_cast<size_t>(pn) * 32 + lane);
      cq[slot] = __ldg(tile_col + pn);
      ++pn;
      skip_done_rows();
    }
  };
  auto start_ring = [&] {
    head = 0;
    pj = 0;
    pn = __shfl_sync(kFullMask, lo, 0);
    pe = __shfl_sync(kFullMask, hi, 0);
    skip_done_rows();
#pragma unroll
    for (int p = 0; p < kPrefetch; ++p) {
      wq[p] = make_uint4(0, 0, 0, 0);
      cq[p] = 0;
      request(p);
    }
  };

  // The CSR bounds and the first W tiles (weights: no earlier kernel writes them) are requested before
  // waiting for the kernel that produced X (pdl_enter), so they load while it drains; then X (cp.async,
  // rows past m zero-filled; consecutive threads copy consecutive 16-byte halves of a tile column:
  // conflict-free stores).
  load_bounds(0);
  start_ring();
  pdl_enter();
  const int halves = 2 * BM * (k / kTile);
  for (int i = threadIdx.x; i < halves; i += WARPS * 32) {
    const int h = i & 1, row = (i >> 1) % BM, c = (i >> 1) / BM;
    const bool ok = m0 + row < m;
    const T* src = ok ? x + static_cast<size_t>(m0 + row) * k + c * kTile + h * 8 : x;
    cp_async16(sx + c * kColBytes + row * kRowBytes + ((h ^ ((row >> 2) & 1)) << 4), src, ok);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();  // the only barrier: X is in shared memory

  const uint32_t lane_sx = smem_addr(sx) + (lane & 15) * kRowBytes + (((lane >> 4) ^ ((lane >> 2) & 1)) << 4);
  for (int base = 0; base < rows; base += kRowWindow) {
    if (base > 0) {  // a warp with more than 32 tile rows: the next window (its ring ran empty)
      load_bounds(base);
      start_ring();
    }
    for (int jr = 0; jr < win; ++jr) {
      const int tr = row_of(base + jr);
      RowOperands<T, kMT, kEarly> ops;
      ops.load(bias, residual, tr, m0, m, n, epi, lane);
      float acc[kMT][2][4];
      zero_acc(acc);
      // Consume the row's kept tiles from the ring head; each consumed slot is refilled with the
      // stream's next tile, which may belong to a later row (an empty row consumes nothing). The slots
      // are visited in an unrolled pass so that every register index is static.
      int left = __shfl_sync(kFullMask, hi, jr) - __shfl_sync(kFullMask, lo, jr);
      while (left > 0) {
#pragma unroll
        for (int s = 0; s < kPrefetch; ++s) {
          if (s == head && left > 0) {
            mma_tile<T, kMT>(acc, lane_sx + cq[s] * kColBytes, 16 * kRowBytes, wq[s]);
            request(s);
            --left;
            head = s + 1 == kPrefetch ? 0 : s + 1;
          }
        }
      }
      store_row(acc, ops, residual, y, tr, m0, m, n, epi, lane);
    }
  }
}

// Chunked kernel: K in chunks of chunk_tiles tile columns, one tile row per warp, a barrier per chunk.
// BM 128 (64 accumulators a lane) gets the whole register file of one block rather than spill under the
// two-blocks-per-SM cap of 128 registers.
template <typename T, int BM, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, BM == 128 ? 1 : 2)
    tile_sparse_chunked_kernel(const T* __restrict__ x, int m, int k, int chunk_tiles,
                               const uint4* __restrict__ tiles, const int32_t* __restrict__ row_ptr,
                               const int32_t* __restrict__ tile_col, const T* __restrict__ bias,
                               const T* __restrict__ residual, T* __restrict__ y, int n, int epi) {
  constexpr int kMT = BM / 16;  // m16 fragments per warp
  constexpr int kPrefetch = prefetch_depth<BM>();
  pdl_enter();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sx = reinterpret_cast<T*>(smem_raw);  // [BM][ld]: the block's X rows of the current K chunk
  const int ld = chunk_tiles * kTile + kXPad;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m0 = blockIdx.x * BM;
  const int slabs = gridDim.y, slab = blockIdx.y;
  const int tile_cols = k / kTile;
  const int slab_rows = (n / kTile - slab + slabs - 1) / slabs;  // at most WARPS (host)
  const int n_chunks = (tile_cols + chunk_tiles - 1) / chunk_tiles;
  const bool active = warp < slab_rows;
  const int tr = slab + warp * slabs;
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
  RowOperands<T, kMT, false> ops;
  if (active) ops.load(bias, residual, tr, m0, m, n, epi, lane);

  float acc[kMT][2][4];
  zero_acc(acc);
  const T* lane_x = sx + (lane & 15) * ld + (lane >> 4) * 8;
  for (int c = 0; c < n_chunks; ++c) {
    const int ct0 = c * chunk_tiles;
    const int ct1 = min(ct0 + chunk_tiles, tile_cols);
    if (c > 0) __syncthreads();  // every warp is done with the previous chunk
    const int segs = (ct1 - ct0) * 2;  // 16-byte segments per row
    for (int i = threadIdx.x; i < BM * segs; i += WARPS * 32) {
      const int row = i / segs, seg = i - row * segs;
      const bool ok = m0 + row < m;
      const T* src = ok ? x + static_cast<size_t>(m0 + row) * k + ct0 * kTile + seg * 8 : x;
      cp_async16(sx + row * ld + seg * 8, src, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();  // the chunk is in shared memory and visible to the whole block
    while (cq[0] < ct1) {  // the tile row's kept tiles in this chunk, in column order
      mma_tile<T, kMT>(acc, smem_addr(lane_x + (cq[0] - ct0) * kTile), kTile * ld * static_cast<int>(sizeof(T)),
                       wq[0]);
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
  if (active) store_row(acc, ops, residual, y, tr, m0, m, n, epi, lane);
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

// Launch `kernel` (blocks of `warps` warps, smem bytes of shared memory) on grid and check the launch.
template <typename Kernel, typename... Args>
void launch_checked(Kernel kernel, dim3 grid, int warps, int smem, const DeviceSparseWeight& w, const Stream& s,
                    Args... args) {
  check(cudaGetLastError(), "an earlier CUDA call (pending before tile_sparse_gemm)");
  try {
    launch("tile_sparse_gemm", kernel, grid, dim3(warps * 32), smem, s, args...);
  } catch (const Error& e) {  // the launch's shape, formatted only when it failed (this runs for every layer)
    throw Error(e.status(), std::string(e.what()) + " (grid " + std::to_string(grid.x) + "x" +
                                std::to_string(grid.y) + ", " + std::to_string(warps * 32) + " threads, " +
                                std::to_string(smem) + " B shared, n " + std::to_string(w.n) + ", k " +
                                std::to_string(w.k) + ")");
  }
}

// All of K in one block: as many slabs as one wave of blocks holds (resident blocks per SM x SMs over
// the row blocks), but no more than give every warp a tile row (small batches: fewer X copies).
template <typename T, int BM>
void launch_stream(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                   Epilogue epi, const SparseDevice& dev, const Stream& stream) {
  constexpr int kStreamWarps = stream_warps<BM>();
  auto kernel = tile_sparse_stream_kernel<T, BM, kStreamWarps>;
  const int smem = stream_smem_bytes<T>(BM, w.k);
  const int per_sm = prepare_kernel(reinterpret_cast<const void*>(kernel), kStreamWarps * 32, smem);
  const int tile_rows = w.n / kTile;
  const int m_blocks = (m + BM - 1) / BM;
  const long slots = static_cast<long>(per_sm) * dev.num_sms;
  const long most = (tile_rows + kStreamWarps - 1) / kStreamWarps;
  const int slabs = static_cast<int>(std::clamp(slots / m_blocks, 1L, most));
  launch_checked(kernel, dim3(m_blocks, slabs), kStreamWarps, smem, w, stream, x, m, w.k,
                 static_cast<const uint4*>(w.tiles), w.row_ptr, w.tile_col, bias, residual, y, w.n,
                 static_cast<int>(epi));
}

// K in chunks that let two blocks share an SM; one tile row per warp.
template <typename T, int BM>
void launch_chunked(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                    Epilogue epi, const SparseDevice& dev, const Stream& stream) {
  auto kernel = tile_sparse_chunked_kernel<T, BM, kChunkedWarps>;
  const int budget = std::min(kTwoPerSmSmem, dev.max_smem_per_block);
  const int chunk_tiles = (budget / (BM * static_cast<int>(sizeof(T))) - kXPad) / kTile;
  const int smem = x_smem_bytes<T>(BM, chunk_tiles * kTile);
  prepare_kernel(reinterpret_cast<const void*>(kernel), kChunkedWarps * 32, smem);
  const int tile_rows = w.n / kTile;
  const dim3 grid((m + BM - 1) / BM, (tile_rows + kChunkedWarps - 1) / kChunkedWarps);
  launch_checked(kernel, grid, kChunkedWarps, smem, w, stream, x, m, w.k, chunk_tiles,
                 static_cast<const uint4*>(w.tiles), w.row_ptr, w.tile_col, bias, residual, y, w.n,
                 static_cast<int>(epi));
}

// The stream kernel when BM rows of all of K fit into one block's shared memory, else the chunked one.
template <typename T, int BM>
void launch_rows(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                 Epilogue epi, const SparseDevice& dev, const Stream& stream) {
  if (stream_smem_bytes<T>(BM, w.k) <= dev.max_smem_per_block)
    launch_stream<T, BM>(w, x, m, bias, residual, y, epi, dev, stream);
  else
    launch_chunked<T, BM>(w, x, m, bias, residual, y, epi, dev, stream);
}

// Rows of X per block when not forced: 32 for small batches (more row blocks for few rows); otherwise
// 64 when 64 rows of all of K fit into a block (W read M/64 times from L2, X once per slab), else 32
// when 32 rows do (K = 3072 on an H100), else 64 with K in chunks.
template <typename T>
int auto_block_rows(int m, int k, const SparseDevice& dev) {
  if (m <= 256) return 32;
  if (stream_smem_bytes<T>(64, k) <= dev.max_smem_per_block) return 64;
  if (stream_smem_bytes<T>(32, k) <= dev.max_smem_per_block) return 32;
  return 64;
}

}  // namespace

template <typename T>
void sparse_gemm(const DeviceSparseWeight& w, const T* x, int m, const T* bias, const T* residual, T* y,
                 Epilogue epi, const SparseDevice& dev, int block_rows, const Stream& stream) {
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
                                  __half*, Epilogue, const SparseDevice&, int, const Stream&);
template void sparse_gemm<__nv_bfloat16>(const DeviceSparseWeight&, const __nv_bfloat16*, int,
                                         const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, Epilogue,
                                         const SparseDevice&, int, const Stream&);

}  // namespace et::cuda
