// Tile-sparse GEMM for large batches on Hopper: Y = epilogue(X . W^T + b) with W kept as 16x16 tiles only.
// Off by default: correct, and faster than the dense path only for weights pruned in [64, 16] tiles at ~90% sparsity
// and 4096 token rows (1.12x; slower at 80%, at 1024 rows and below, and with 16x16 or 32x16 tiles: cuda_lib/NOTES.md,
// sessions 8-9); ET_HOPPER_SPARSE_MAX_DENSITY turns it on.
//
// A block owns 128 rows of X and a slab of W's record rows (G = 1, 2 or 4 tile rows: one wgmma m64n(16G)k16 per
// record, over the union of the G rows' kept tiles); two consumer warpgroups (64 rows of X each) and a producer
// warpgroup (setmaxnreg hands its registers to the consumers):
//  - X: one producer thread loads the block's rows of one K chunk (768 columns) into shared memory with the bulk
//    tensor copy (TMA, 128-byte swizzle: wgmma's K-major layout) after the dependency wait; the slabs of a row block
//    run as a cluster and each block multicasts a share of the boxes to all of them, so X crosses the L2 once per row
//    block. K beyond one chunk: the consumers of every block of the cluster release a chunk before the next one.
//  - W: another producer warp streams the slab's records, in the consumers' order, into a ring of kSlots stages with
//    bulk asynchronous copies (a record row's records within a chunk are contiguous) completing on the stage's
//    "full" mbarrier; weights only, so it starts before the kernel waits for the one before it.
//  - the consumers walk the slab's record rows in groups of kTR, holding a 64 x 16G fp32 accumulator per record row.
//    A ring stage carries the next kPerRow records of each row of a quad; one wgmma per place (A: the record's 16
//    columns of X, B: the record; an empty place multiplies a record of zeros, so the MMAs are straight-line code);
//    a stage is released on its "empty" mbarrier once its MMAs are done. A removed tile costs nothing (a tile kept by
//    another row of its record row costs a zero block). After a quad's last stage its epilogue (bias, bias+GELU or
//    bias+residual; one kernel per kind) writes the quad's columns, as 16-byte vectors for G >= 2.
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "hopper_sparse_gemm.h"

namespace et::cuda::hopper_sparse {
namespace {

constexpr int kBM = 128;                       // rows of X per block (two warpgroups of 64)
constexpr int kConsumers = 256;                // two warpgroups
constexpr int kThreads = kConsumers + 128;     // + the producer warpgroup (one warp of it works)
constexpr int kProducerRegs = 40;              // registers per thread after setmaxnreg: the producer warpgroup
constexpr int kConsumerRegs = 232;             // and the consumers (128 x 40 + 256 x 232 <= 64K)
constexpr int kXBlockBytes = kBM * 128;        // X in blocks of 64 columns: 128 rows of 128 bytes, 128-byte swizzle
constexpr int kXBytes = kBM * kChunk * 2;
constexpr unsigned kFullMask = 0xffffffffu;

#ifdef ET_HOPPER_SPARSE_CLOCKS
// Diagnostics only (cuda_lib/gpu/wgmma_clocks.cu builds this file with it): clock64 stamps of block (0, 0), kStamps
// per ring stage (consumer thread 0: 0 before the full wait, 1 after it, 2 after the commit, 3 after wait 1;
// producer lane 0: 4 before the empty wait, 5 after it, 6 after its copies), the X fills and epilogues after them;
// and every block's start and end on the global timer (ns).
constexpr int kStamps = 8, kClockStages = 1024, kSpanBlocks = 4096;
__device__ long long g_clock[kClockStages * kStamps + 64];
__device__ unsigned long long g_span[2 * kSpanBlocks];
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#define ET_STAMP(cond, index) \
  if ((cond) && blockIdx.x == 0 && blockIdx.y == 0 && (index) < kClockStages * kStamps + 64) g_clock[index] = clock64()
#define ET_SPAN(cond, end)                                                     \
  if ((cond) && blockIdx.y * gridDim.x + blockIdx.x < kSpanBlocks)             \
  g_span[2 * (blockIdx.y * gridDim.x + blockIdx.x) + (end)] = global_ns()
#else
#define ET_STAMP(cond, index)
#define ET_SPAN(cond, end)
#endif

// The kernel's shape for records of G tile rows (a wgmma m64n(16G)k16 each).
template <int G>
struct Shape {
  static constexpr int kN = kTile * G;                    // output columns of a record row
  static constexpr int kRecord = record_bytes(G);
  static constexpr int kAcc = kN / 2;                     // accumulator registers of a record row (64 x kN fp32)
  static constexpr int kTR = 12 / G;                      // record rows of a group: 96 accumulator registers
  static constexpr int kQuad = G == 4 ? 3 : 4 / G;        // record rows whose records a stage interleaves (and
                                                          // whose epilogue runs at once)
  static constexpr int kPerRow = G == 4 ? 1 : 2;          // records of each of them per ring stage
  static constexpr int kSlotRecords = kQuad * kPerRow;
  static constexpr int kSlots = G == 4 ? 4 : 8;           // ring stages (a power of two): ~33 KB beside X
  static constexpr int kSlotBytes = kSlotRecords * kRecord;
  static constexpr int kMetaOffset = kXBytes + kSlots * kSlotBytes;  // per stage: 4-bit record counts | more << 16
  static constexpr int kBarOffset = kMetaOffset + kSlots * 4;        // kSlots "full" then kSlots "empty" mbarriers,
                                                                     // then X's "full" and "empty"
  static constexpr int kZeroOffset = kBarOffset + (2 * kSlots + 2) * 8;  // a zero record: a stage's empty places
  static constexpr int kSmemBytes = kZeroOffset + kRecord;
  static_assert(kTR % kQuad == 0, "a group is whole quads");
  static_assert((kSlots & (kSlots - 1)) == 0, "kSlots must be a power of two");
  static_assert(kBarOffset % 8 == 0, "mbarriers need 8-byte alignment");
  static_assert(kPerRow < 16 && kQuad <= 4, "a stage's counts are 4-bit fields of one int");
};

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// The spin loop lives inside the asm (a C++ loop around try_wait makes ptxas serialize the wgmmas after it).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT;\n}\n"
      :
      : "r"(bar), "r"(parity)
      : "memory");
}
// bytes from global src to shared dst (both 16-byte aligned), completing as transactions on mbarrier bar.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }
__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

// wgmma shared-memory matrix descriptor: start address, leading byte offset (no swizzle: between the two core
// matrices along K; unused with a swizzle), stride byte offset (between groups of 8 rows), swizzle mode
// (0: none, 1: 128-byte).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint64_t swizzle = 0) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (swizzle << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// d[64 x N] += A[64 x 16] . B[N x 16]^T, both K-major in shared memory (N = 16, 32 or 64; N / 2 accumulators a
// thread). The asm needs the type and the register list as literals: one statement per shape and type.
#define ET_ACC8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                   "+f"(d[i + 6]), "+f"(d[i + 7])
#define ET_WGMMA(SHAPE, TY, REGS, AB, ...)                                                                \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n wgmma.mma_async.sync.aligned." SHAPE ".f32." TY \
               "." TY " {" REGS "}, " AB ", p, 1, 1, 0, 0;\n}\n"                                           \
               : __VA_ARGS__                                                                              \
               : "l"(a), "l"(b))
#define ET_REGS8 "%0,%1,%2,%3,%4,%5,%6,%7"
#define ET_REGS16 ET_REGS8 ",%8,%9,%10,%11,%12,%13,%14,%15"
#define ET_REGS32 ET_REGS16 ",%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
template <typename T, int N>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[N / 2], uint64_t a, uint64_t b) {
  constexpr bool f16 = std::is_same_v<T, __half>;
  if constexpr (N == 16 && f16) ET_WGMMA("m64n16k16", "f16", ET_REGS8, "%8, %9", ET_ACC8(0));
  if constexpr (N == 16 && !f16) ET_WGMMA("m64n16k16", "bf16", ET_REGS8, "%8, %9", ET_ACC8(0));
  if constexpr (N == 32 && f16) ET_WGMMA("m64n32k16", "f16", ET_REGS16, "%16, %17", ET_ACC8(0), ET_ACC8(8));
  if constexpr (N == 32 && !f16) ET_WGMMA("m64n32k16", "bf16", ET_REGS16, "%16, %17", ET_ACC8(0), ET_ACC8(8));
  if constexpr (N == 64 && f16)
    ET_WGMMA("m64n64k16", "f16", ET_REGS32, "%32, %33", ET_ACC8(0), ET_ACC8(8), ET_ACC8(16), ET_ACC8(24));
  if constexpr (N == 64 && !f16)
    ET_WGMMA("m64n64k16", "bf16", ET_REGS32, "%32, %33", ET_ACC8(0), ET_ACC8(8), ET_ACC8(16), ET_ACC8(24));
}
#undef ET_REGS32
#undef ET_REGS16
#undef ET_REGS8
#undef ET_WGMMA
#undef ET_ACC8

// This block's rank in its cluster, and the cluster's size in blocks.
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_size() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
}
__device__ __forceinline__ void cluster_sync() {  // every non-exited thread of the cluster
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// Arrive on the mbarrier at shared-memory offset `bar` of every block of the cluster.
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t blocks) {
  for (uint32_t r = 0; r < blocks; ++r) {
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(bar), "r"(r));
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
  }
}

// X's chunk loads (one thread, the producer warpgroup's second warp): box j of chunk c (rows m0 .. m0 + 127, columns
// c * kChunk + 64j .. + 63, zeros past m and k) lands at j * kXBlockBytes in wgmma's K-major 128-byte-swizzle layout
// (the tensor map's swizzle: row r's 16-byte piece i at (i ^ (r % 8)) * 16), completing on `xfull`. In a cluster
// (the blocks of the same rows of X, other slabs of W) each block issues every cluster_size-th box to all of them
// (multicast), so X crosses the L2 once per cluster; before chunk c + 1 every block's consumers must be done with c
// (`xempty`, arrived on from every block).
__device__ __forceinline__ void load_x(const CUtensorMap& xmap, int m0, int k, int chunks, uint32_t sx,
                                       uint32_t xfull, uint32_t xempty) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // X comes from the kernel before
  const uint32_t rank = cluster_rank(), blocks = cluster_size();
  const uint16_t mask = static_cast<uint16_t>((1u << blocks) - 1);
  for (int c = 0; c < chunks; ++c) {
    if (c > 0) mbar_wait(xempty, (c - 1) & 1);
    const int boxes = (min(kChunk, k - c * kChunk) + 63) / 64;
    mbar_arrive_expect_tx(xfull, boxes * kXBlockBytes);
    for (int j = static_cast<int>(rank); j < boxes; j += static_cast<int>(blocks)) {
      const int col = c * kChunk + j * 64;
      if (blocks > 1)
        asm volatile(
            "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
            " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(sx + j * kXBlockBytes),
            "l"(reinterpret_cast<uint64_t>(&xmap)), "r"(col), "r"(m0), "r"(xfull), "h"(mask)
            : "memory");
      else
        asm volatile(
            "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
            ::"r"(sx + j * kXBlockBytes), "l"(reinterpret_cast<uint64_t>(&xmap)), "r"(col), "r"(m0), "r"(xfull)
            : "memory");
    }
  }
}

// 4 x 4 transpose of float2 elements across the four lanes of a quad (lane bit 0 and 1 = j): afterwards lane j's v[i]
// is what lane i held in v[j]. Two butterfly exchanges; the indices stay compile-time (selects, no local memory).
__device__ __forceinline__ void quad_transpose(float2 (&v)[4], int j) {
#pragma unroll
  for (int bit = 2; bit >= 1; bit >>= 1) {
    const bool hi = (j & bit) != 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k & bit) continue;  // the pair (k, k | bit): keep the one on this lane's side, swap the other
      const float2 send = hi ? v[k] : v[k | bit];
      float2 got;
      got.x = __shfl_xor_sync(kFullMask, send.x, bit);
      got.y = __shfl_xor_sync(kFullMask, send.y, bit);
      if (hi)
        v[k] = got;
      else
        v[k | bit] = got;
    }
  }
}

// One pair of adjacent output columns of epilogue E: accumulators + bias (+ GELU, or + residual), packed as T.
template <typename T, Epilogue E>
__device__ __forceinline__ uint32_t epilogue_pair(float v0, float v1, float2 bias, uint32_t residual) {
  v0 += bias.x;
  v1 += bias.y;
  if (!apply_gelu(v0, v1, static_cast<int>(E)) && E == Epilogue::kBiasResidual) {
    const float2 rr = Elem<T>::unpack2(residual);
    v0 += rr.x;
    v1 += rr.y;
  }
  return Elem<T>::pack2(v0, v1);
}

// Write the kN columns of record rows tr0 .. tr0 + rows - 1 (at most a quad) for this thread's two output rows.
// wgmma's m64nN f32 fragment gives a thread, per 8-column group h and row half q (output row row_base + 8q), two
// adjacent columns 8h + 2 * (lane % 4) + {0, 1}. For N >= 32 the four lanes of a quad first transpose their 4 x 4
// blocks of column pairs (quad_transpose), so that lane j holds all 8 columns of groups 4b + j: bias, residual and
// output then move as 16-byte vectors (each quad writes 64 contiguous bytes of a row), where 4-byte scattered stores
// made the epilogue the largest part of the kernel (NOTES.md, session 9 run 62). N = 16 (G = 1) keeps the 4-byte form.
// Columns from n on (a last record row of fewer than G tile rows) are not written. Every bias and residual load of
// the quad is issued before the first use, and none is left in flight at the next wgmma.fence, which waits for the
// warpgroup's pending register writes (NOTES.md, session 8).
template <typename T, int G, Epilogue E>
__device__ __forceinline__ void store_quad(float (&acc)[Shape<G>::kTR][Shape<G>::kAcc], int j0, int rows,
                                           const T* __restrict__ bias, const T* __restrict__ residual,
                                           T* __restrict__ y, int tr0, int row_base, int m, int n, int lane) {
  using S = Shape<G>;
  constexpr int kH = S::kN / 8;  // 8-column groups of a record row
  constexpr bool add_res = E == Epilogue::kBiasResidual;
  if constexpr (kH >= 4) {
    constexpr int kB = kH / 4;  // blocks of four groups: lane j ends up with group 4b + j of each
    const int j = lane & 3;
    uint4 b[S::kQuad][kB], res[S::kQuad][kB][2];
#pragma unroll
    for (int r = 0; r < S::kQuad; ++r)
#pragma unroll
      for (int hb = 0; hb < kB; ++hb) {
        const int col = (tr0 + r) * S::kN + (4 * hb + j) * 8;
        const bool ok = r < rows && col < n;
        b[r][hb] = ok ? __ldg(reinterpret_cast<const uint4*>(bias + col)) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int row = row_base + q * 8;
          res[r][hb][q] = add_res && ok && row < m
                              ? __ldg(reinterpret_cast<const uint4*>(residual + static_cast<size_t>(row) * n + col))
                              : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
    for (int r = 0; r < S::kQuad; ++r) {
      if (r >= rows) continue;
      float(&d)[S::kAcc] = acc[j0 + r];
#pragma unroll
      for (int hb = 0; hb < kB; ++hb) {
        const int col = (tr0 + r) * S::kN + (4 * hb + j) * 8;
        const uint32_t bw[4] = {b[r][hb].x, b[r][hb].y, b[r][hb].z, b[r][hb].w};
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          float2 v[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = make_float2(d[4 * (4 * hb + i) + 2 * q], d[4 * (4 * hb + i) + 2 * q + 1]);
          quad_transpose(v, j);  // v[i]: columns col + 2i, col + 2i + 1
          const int row = row_base + q * 8;
          if (row >= m || col >= n) continue;
          const uint32_t rw[4] = {res[r][hb][q].x, res[r][hb][q].y, res[r][hb][q].z, res[r][hb][q].w};
          uint32_t out[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) out[i] = epilogue_pair<T, E>(v[i].x, v[i].y, Elem<T>::unpack2(bw[i]), rw[i]);
          *reinterpret_cast<uint4*>(y + static_cast<size_t>(row) * n + col) =
              make_uint4(out[0], out[1], out[2], out[3]);
        }
      }
    }
  } else {
    uint32_t b[S::kQuad][kH], res[S::kQuad][kH][2];
#pragma unroll
    for (int r = 0; r < S::kQuad; ++r)
#pragma unroll
      for (int h = 0; h < kH; ++h) {
        const int col = (tr0 + r) * S::kN + h * 8 + 2 * (lane & 3);
        const bool ok = r < rows && col < n;
        b[r][h] = ok ? __ldg(reinterpret_cast<const unsigned int*>(bias + col)) : 0u;
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int row = row_base + q * 8;
          const T* rp = residual + static_cast<size_t>(row) * n + col;
          res[r][h][q] = add_res && ok && row < m ? __ldg(reinterpret_cast<const unsigned int*>(rp)) : 0u;
        }
      }
#pragma unroll
    for (int r = 0; r < S::kQuad; ++r) {
      if (r >= rows) continue;
      const float(&d)[S::kAcc] = acc[j0 + r];
#pragma unroll
      for (int h = 0; h < kH; ++h) {
        const int col = (tr0 + r) * S::kN + h * 8 + 2 * (lane & 3);
        if (col >= n) continue;
        const float2 bb = Elem<T>::unpack2(b[r][h]);
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int row = row_base + q * 8;
          if (row >= m) continue;
          *reinterpret_cast<uint32_t*>(y + static_cast<size_t>(row) * n + col) =
              epilogue_pair<T, E>(d[4 * h + 2 * q], d[4 * h + 2 * q + 1], bb, res[r][h][q]);
        }
      }
    }
  }
}

// Producer warp: the slab's stages in the consumers' order: group, chunk, quad of record rows, then the next
// kPerRow records of each of the quad's rows in the chunk (row r's at slot record r * kPerRow); a quad with no
// record in the chunk still gets one empty stage. One bulk copy per row and stage (a row's records within a chunk
// are contiguous).
template <int G>
__device__ __forceinline__ void produce(const Weight& w, int row0, int row_end, uint32_t ring, int* meta,
                                        uint32_t full, uint32_t empty, int lane) {
  using S = Shape<G>;
  const int chunks = w.chunks;
  const unsigned char* records = static_cast<const unsigned char*>(w.records);
  int stage = 0;
  for (int r0 = row0; r0 < row_end; r0 += S::kTR) {
    const int rows = min(S::kTR, row_end - r0);
    for (int c = 0; c < chunks; ++c) {
      // lane r < kTR: row r0 + r's records [lo, hi) in chunk c, advanced by kPerRow per stage
      int lo = 0, hi = 0;
      if (lane < rows) {
        lo = __ldg(w.cut + static_cast<size_t>(r0 + lane) * (chunks + 1) + c);
        hi = __ldg(w.cut + static_cast<size_t>(r0 + lane) * (chunks + 1) + c + 1);
      }
      for (int q = 0; q < rows; q += S::kQuad) {
        const bool mine = lane >= q && lane < q + S::kQuad;
        bool more = true;
        while (more) {
          const int n = mine ? min(hi - lo, S::kPerRow) : 0;  // this lane's row: records in this stage
          const int slot = stage & (S::kSlots - 1);
          ET_STAMP(lane == 0, stage * kStamps + 4);
          mbar_wait(empty + 8 * slot, ((stage / S::kSlots) & 1) ^ 1);
          ET_STAMP(lane == 0, stage * kStamps + 5);
          int packed = mine ? n << (4 * (lane - q)) : 0;
          int bytes = n * S::kRecord;
#pragma unroll
          for (int off = 1; off < S::kQuad; off <<= 1) {  // lanes q .. q + kQuad - 1 hold the quad: sum within it
            packed += __shfl_down_sync(kFullMask, packed, off);
            bytes += __shfl_down_sync(kFullMask, bytes, off);
          }
          packed = __shfl_sync(kFullMask, packed, q);
          bytes = __shfl_sync(kFullMask, bytes, q);
          more = __any_sync(kFullMask, mine && lo + n < hi);
          if (lane == q) {
            meta[slot] = packed | (more ? 1 << 16 : 0);
            mbar_arrive_expect_tx(full + 8 * slot, bytes);
          }
          __syncwarp();
          if (n > 0)  // after the expect_tx above: each row's copy from its own lane
            bulk_copy(ring + slot * S::kSlotBytes + (lane - q) * S::kPerRow * S::kRecord,
                      records + static_cast<size_t>(lo) * S::kRecord, n * S::kRecord, full + 8 * slot);
          ET_STAMP(lane == 0, stage * kStamps + 6);
          lo += n;
          ++stage;
        }
      }
    }
  }
}

// One instantiation per epilogue kind: the epilogue is straight-line code over every accumulator of a quad, fetched
// cold by every block; chosen at run time it held all four variants (~6.3 K instructions at G = 4, now 1.6-4.4 K;
// NOTES.md, session 9 runs 61-62, where the stores turned out to be the larger cost).
template <typename T, int G, Epilogue E>
__global__ void __launch_bounds__(kThreads, 1)
    tile_sparse_wgmma_kernel(const __grid_constant__ CUtensorMap xmap, int m, Weight w, int rows_per_block,
                             const T* __restrict__ bias, const T* __restrict__ residual, T* __restrict__ y) {
  using S = Shape<G>;
  extern __shared__ __align__(1024) unsigned char smem[];  // the swizzle pattern needs 1024-byte alignment
  const uint32_t sx = smem_addr(smem);
  const uint32_t ring = sx + kXBytes;
  int* meta = reinterpret_cast<int*>(smem + S::kMetaOffset);
  const uint32_t full = sx + S::kBarOffset, empty = full + 8 * S::kSlots;
  const uint32_t xfull = empty + 8 * S::kSlots, xempty = xfull + 8;
  const int tid = threadIdx.x, lane = tid & 31;
  const int row0 = blockIdx.y * rows_per_block;
  const int row_end = min(row0 + rows_per_block, w.rows);
  ET_SPAN(tid == 0, 0);
  const int m0 = blockIdx.x * kBM;
  const uint32_t blocks = cluster_size();
  if (tid == 0) {
    for (int s = 0; s < S::kSlots; ++s) {
      mbar_init(full + 8 * s, 1);
      mbar_init(empty + 8 * s, 2);  // one arrival per consumer warpgroup
    }
    mbar_init(xfull, 1);
    mbar_init(xempty, 2 * blocks);  // both consumer warpgroups of every block of the cluster
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  cluster_sync();  // the cluster's barriers are initialised before any block multicasts or arrives on them
  if (tid >= kConsumers) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    if (tid < kConsumers + 32) produce<G>(w, row0, row_end, ring, meta, full, empty, lane);
    else if (tid == kConsumers + 32) load_x(xmap, m0, w.k, w.chunks, sx, xfull, xempty);
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));

  pdl_enter();  // X and the residual come from earlier kernels
  const int wg = tid >> 7, warp = (tid >> 5) & 3;
  const int row_base = m0 + wg * 64 + warp * 16 + (lane >> 2);  // this thread's first output row
  const uint64_t desc_x = smem_desc(sx + wg * 64 * 128, 16, 1024, 1);  // this warpgroup's 64 rows, 128-byte swizzle
  const bool releaser = (tid & 127) == 0;
  int stage = 0, released = 0;
  auto release_done = [&] {  // every stage before `stage` has finished its MMAs: hand their slots to the producer
    for (; released < stage; ++released)
      if (releaser) mbar_arrive(empty + 8 * (released & (S::kSlots - 1)));
  };
  float acc[S::kTR][S::kAcc];
  const uint32_t zero = sx + S::kZeroOffset;
  for (int i = tid; i < S::kRecord / 4; i += kConsumers) reinterpret_cast<uint32_t*>(smem + S::kZeroOffset)[i] = 0u;
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic-proxy writes, read by wgmma
  consumers_sync();

  for (int r0 = row0; r0 < row_end; r0 += S::kTR) {
    const int rows = min(S::kTR, row_end - r0);
#pragma unroll
    for (int j = 0; j < S::kTR; ++j)
#pragma unroll
      for (int e = 0; e < S::kAcc; ++e) acc[j][e] = 0.0f;
    for (int c = 0; c < w.chunks; ++c) {
      const bool last_chunk = c + 1 == w.chunks;
      if (r0 == row0) {  // chunk c of X (K in one chunk: loaded once, kept for every group)
        ET_STAMP(tid == 0, kClockStages * kStamps + 2 * c);
        mbar_wait(xfull, c & 1);
        ET_STAMP(tid == 0, kClockStages * kStamps + 2 * c + 1);
      }
#pragma unroll
      for (int q = 0; q < S::kTR; q += S::kQuad) {
        if (q < rows) {
          bool more = true;
          while (more) {
            const int slot = stage & (S::kSlots - 1);
            ET_STAMP(tid == 0, stage * kStamps);
            mbar_wait(full + 8 * slot, (stage / S::kSlots) & 1);
            ET_STAMP(tid == 0, stage * kStamps + 1);
            const int info = __shfl_sync(kFullMask, meta[slot], 0);  // warp-uniform to the compiler
            more = (info >> 16) != 0;
            const uint32_t rec = ring + slot * S::kSlotBytes;
            // Every place of the stage gets an MMA, the empty ones (a row with fewer than kPerRow records left) on
            // the zero record: straight-line wgmmas that ptxas batches (a branch around each one made it fence each).
            uint64_t da[S::kSlotRecords], db[S::kSlotRecords];
#pragma unroll
            for (int t = 0; t < S::kPerRow; ++t)
#pragma unroll
              for (int r = 0; r < S::kQuad; ++r) {
                const bool real = t < ((info >> (4 * r)) & 0xf);
                const uint32_t record = real ? rec + (r * S::kPerRow + t) * S::kRecord : zero;
                const uint32_t col = real ? ld_shared_u32(record) - c * (kChunk / kTile) : 0u;  // in the chunk
                // column block col / 4, then 32 bytes per tile column inside it (in 16-byte units)
                da[t * S::kQuad + r] = desc_x + (col >> 2) * (kXBlockBytes >> 4) + (col & 3) * 2;
                db[t * S::kQuad + r] = smem_desc(record + 16, 128, 256);
              }
            wgmma_fence();
#pragma unroll
            for (int t = 0; t < S::kPerRow; ++t)
#pragma unroll
              for (int r = 0; r < S::kQuad; ++r)  // consecutive MMAs into the quad's accumulators
                wgmma_m64k16<T, S::kN>(acc[q + r], da[t * S::kQuad + r], db[t * S::kQuad + r]);
            wgmma_commit();
            ET_STAMP(tid == 0, stage * kStamps + 2);
            wgmma_wait<1>();  // every stage before this one is done: release them
            ET_STAMP(tid == 0, stage * kStamps + 3);
            release_done();
            ++stage;
          }
          if (last_chunk) {  // the quad's epilogue once its MMAs are done (reading accumulators of a wgmma still
                             // in flight, even another quad's, makes ptxas serialize every wgmma: C7514)
            wgmma_wait<0>();
            release_done();
            ET_STAMP(tid == 0, kClockStages * kStamps + 16 + 2 * q);
            store_quad<T, G, E>(acc, q, min(S::kQuad, rows - q), bias, residual, y, r0 + q, row_base, m, w.n, lane);
            ET_STAMP(tid == 0, kClockStages * kStamps + 17 + 2 * q);
          }
        }
      }
      wgmma_wait<0>();
      release_done();
      if (c + 1 < w.chunks && (tid & 127) == 0) mbar_arrive_cluster(xempty, blocks);  // done with chunk c
    }
  }
  ET_SPAN(tid == 0, 1);
  cluster_sync();  // no block leaves while another may still multicast into it or arrive on its barriers
}

// The tensor map of X [m, k] for load_x: boxes of 128 rows x 64 columns, 128-byte swizzle, zeros outside.
template <typename T>
CUtensorMap x_tensor_map(const T* x, int m, int k) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found),
          "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
    if (found != cudaDriverEntryPointSuccess || fn == nullptr)
      throw Error(ET_ERR_BACKEND, "the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * sizeof(T)};
  const cuuint32_t box[2] = {64, kBM}, unit[2] = {1, 1};
  const CUtensorMapDataType type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult r = encode(&map, type, 2, const_cast<T*>(x), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw Error(ET_ERR_BACKEND, "cuTensorMapEncodeTiled failed for the wgmma GEMM's X");
  return map;
}

// Blocks of `kernel` (one a multiprocessor) that can run at once in clusters of `size` along y: clusters live
// within one GPC, so the GPU's GPC sizes can leave fewer than its SMs (measured per device, once).
template <auto kernel>
int cluster_capacity(unsigned size, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<int, unsigned>, int> known;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(device, size);
  if (auto it = known.find(key); it != known.end()) return it->second;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim = {1, size, 1};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(1, size * 64, 1);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  check(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg), "cudaOccupancyMaxActiveClusters");
  return known[key] = clusters * static_cast<int>(size);
}

template <typename T, int G, Epilogue E>
void launch_kernel(const Weight& w, const T* x, int m, const T* bias, const T* residual, T* y, int sms,
                   const Stream& s) {
  using S = Shape<G>;
  constexpr auto kernel = tile_sparse_wgmma_kernel<T, G, E>;
  allow_dynamic_smem<kernel>(S::kSmemBytes, "cudaFuncSetAttribute(tile_sparse_wgmma)");
  const int groups = (w.rows + S::kTR - 1) / S::kTR;
  const int m_blocks = (m + kBM - 1) / kBM;
  // One wave: as many slabs as blocks fit beside the row blocks; with K in several chunks one group a block
  // (its accumulators cannot wait for a second group while X's chunks go by).
  const int slabs = w.chunks > 1 ? groups : std::clamp(sms / m_blocks, 1, groups);
  const int rows_per_block = (groups + slabs - 1) / slabs * S::kTR;
  const int used = (w.rows + rows_per_block - 1) / rows_per_block;
  // The slabs of one row block share X in clusters of 4 or 2 blocks, the largest that divides them and still lets
  // as many blocks run at once as without clusters (fewer would add a wave).
  const int blocks = std::min(m_blocks * used, sms);
  unsigned cluster = 1;
  for (unsigned size : {4u, 2u})
    if (used % size == 0 && cluster_capacity<kernel>(size, S::kSmemBytes) >= blocks) {
      cluster = size;
      break;
    }
  launch_clustered("tile_sparse_wgmma", kernel, dim3(m_blocks, used), dim3(kThreads), S::kSmemBytes, s, cluster,
                   x_tensor_map(x, m, w.k), m, w, rows_per_block, bias, residual, y);
}

template <typename T, int G>
void launch_group(const Weight& w, const T* x, int m, const T* bias, const T* residual, T* y, Epilogue epi, int sms,
                  const Stream& s) {
  switch (epi) {
    case Epilogue::kBias: return launch_kernel<T, G, Epilogue::kBias>(w, x, m, bias, residual, y, sms, s);
    case Epilogue::kBiasGelu: return launch_kernel<T, G, Epilogue::kBiasGelu>(w, x, m, bias, residual, y, sms, s);
    case Epilogue::kBiasResidual:
      return launch_kernel<T, G, Epilogue::kBiasResidual>(w, x, m, bias, residual, y, sms, s);
    case Epilogue::kBiasGeluTanh:
      return launch_kernel<T, G, Epilogue::kBiasGeluTanh>(w, x, m, bias, residual, y, sms, s);
  }
  throw Error(ET_ERR_BACKEND, "unknown GEMM epilogue");
}

}  // namespace

int shared_bytes() { return std::max({Shape<1>::kSmemBytes, Shape<2>::kSmemBytes, Shape<4>::kSmemBytes}); }

namespace {

// Record row g's record columns: the union of the kept tile columns of tile rows g * G .. g * G + G - 1, ascending.
std::vector<int32_t> union_columns(const PreparedLinear& p, int group, int g) {
  std::vector<int32_t> cols;
  const int tile_rows = p.n / kTile;
  for (int tr = g * group; tr < std::min((g + 1) * group, tile_rows); ++tr)
    cols.insert(cols.end(), p.tile_col.begin() + p.row_ptr[tr], p.tile_col.begin() + p.row_ptr[tr + 1]);
  std::sort(cols.begin(), cols.end());
  cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
  return cols;
}

int record_rows(const PreparedLinear& p, int group) { return (p.n / kTile + group - 1) / group; }

}  // namespace

int64_t record_count(const PreparedLinear& p, int group) {
  int64_t count = 0;
  for (int g = 0; g < record_rows(p, group); ++g) count += static_cast<int64_t>(union_columns(p, group, g).size());
  return count;
}

int choose_group(const PreparedLinear& p) {
  int best = 1;
  double best_cost = static_cast<double>(p.kept_tiles) * kRecordCost[0];  // G = 1: a record per kept tile
  for (int i = 1; i < 3; ++i) {
    const double cost = static_cast<double>(record_count(p, 1 << i)) * kRecordCost[i];
    if (cost < best_cost) best = 1 << i, best_cost = cost;
  }
  return best;
}

template <typename T>
Packed<T> pack(const PreparedLinear& p, int group) {
  Packed<T> out;
  out.group = group;
  out.rows = record_rows(p, group);
  const int elems = record_bytes(group) / 2, chunks = chunk_count(p.k), chunk_tiles = kChunk / kTile;
  out.cut.reserve(static_cast<size_t>(out.rows) * (chunks + 1));
  for (int g = 0; g < out.rows; ++g) {
    const std::vector<int32_t> cols = union_columns(p, group, g);
    const size_t first = out.records.size() / elems;
    out.records.resize(out.records.size() + cols.size() * elems, T(0.0f));
    for (size_t i = 0; i < cols.size(); ++i) {
      T* rec = out.records.data() + (first + i) * elems;
      std::memcpy(rec, &cols[i], sizeof cols[i]);
      T* b = rec + 8;  // B operand: kN rows (output columns) x 16, as 8 x 8 core matrices, K-neighbours adjacent
      for (int r = 0; r < kTile * group && g * kTile * group + r < p.n; ++r)
        for (int c = 0; c < kTile; ++c)
          b[((r / 8) * 2 + c / 8) * 64 + (r % 8) * 8 + c % 8] =
              T(p.dense[static_cast<size_t>(g * kTile * group + r) * p.k + static_cast<size_t>(cols[i]) * kTile + c]);
    }
    size_t i = 0;
    for (int c = 0; c < chunks; ++c) {
      while (i < cols.size() && cols[i] < c * chunk_tiles) ++i;
      out.cut.push_back(static_cast<int32_t>(first + i));
    }
    out.cut.push_back(static_cast<int32_t>(first + cols.size()));
  }
  return out;
}

template <typename T>
void gemm(const Weight& w, const T* x, int m, const T* bias, const T* residual, T* y, Epilogue epi, int sms,
          const Stream& s) {
  if (m <= 0) return;
  switch (w.group) {
    case 1: return launch_group<T, 1>(w, x, m, bias, residual, y, epi, sms, s);
    case 2: return launch_group<T, 2>(w, x, m, bias, residual, y, epi, sms, s);
    case 4: return launch_group<T, 4>(w, x, m, bias, residual, y, epi, sms, s);
    default: throw Error(ET_ERR_BACKEND, "wgmma record group must be 1, 2 or 4");
  }
}

template Packed<__half> pack<__half>(const PreparedLinear&, int);
template Packed<__nv_bfloat16> pack<__nv_bfloat16>(const PreparedLinear&, int);
template void gemm<__half>(const Weight&, const __half*, int, const __half*, const __half*, __half*, Epilogue, int,
                           const Stream&);
template void gemm<__nv_bfloat16>(const Weight&, const __nv_bfloat16*, int, const __nv_bfloat16*,
                                  const __nv_bfloat16*, __nv_bfloat16*, Epilogue, int, const Stream&);

}  // namespace et::cuda::hopper_sparse
