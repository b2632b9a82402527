// Dense GEMM for few token rows (M <= 128) on Hopper: Y = epilogue(X . W^T + b (+ residual)).
//
// At M = 128 cuBLASLt's kernels are latency-bound (session 3, ncu run 21: 6.6-9.9 us a launch at 5-12% of the
// SMs) and cannot wait in griddepcontrol.wait, so the kernel after them cannot be launched early. This kernel
// is built for that regime:
//  - a thread block owns 64 output columns and one slice of K; the blocks sharing a column tile form one
//    thread-block cluster (K split over its blocks), so that a small GEMM still fills the GPU;
//  - before griddepcontrol.wait a block copies its W slice (weights: no kernel of the forward writes them)
//    into shared memory, so under programmatic dependent launch the weights stream in while the kernel
//    before drains; only X, that kernel's output, is read after the wait: its whole slice at once (one
//    commit group per 64 columns, each computed as soon as it lands);
//  - 8 warps of 32 rows x 32 columns, mma.sync.m16n8k16 with fp32 accumulation;
//  - the cluster's partial sums are added through distributed shared memory (each block sums its share of
//    the rows over all blocks of the cluster), then bias / GELU / residual and the fp16/bf16 store.
#include <cooperative_groups.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "kernels.h"

namespace et::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kBN = 64;              // output columns of a block
constexpr int kMaxRows = 128;        // rows of X the kernel takes (4 row groups of 32)
constexpr int kWarps = 8;            // 4 row groups x 2 column groups of 32
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 64;           // K elements of X per commit group
constexpr int kPad = 8;              // elements of padding per shared-memory row
constexpr int kPartialLd = kBN + 8;  // floats per row of a block's partial sums
constexpr int kMaxCluster = 8;       // the portable cluster size
constexpr int kMaxSlice = 512;       // K elements per block at most (BERT-large's FFN2: 4096 = 8 x 512)

static_assert(kMaxSlice / kChunk <= 8, "cp_async_wait_pending takes at most 7 groups in flight");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // device helpers of the sm_90 kernel body
// Wait until at most `pending` of this thread's newest cp.async groups are still in flight (0..7).
__device__ __forceinline__ void cp_async_wait_pending(int pending) {
  switch (pending) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    case 6: cp_async_wait<6>(); break;
    default: cp_async_wait<7>(); break;
  }
}

template <typename T>
__device__ __forceinline__ float2 epilogue2(float v0, float v1, int epi, const T* residual_pair) {
  if (epi == static_cast<int>(Epilogue::kBiasGelu)) return make_float2(gelu_erf(v0), gelu_erf(v1));
  if (epi == static_cast<int>(Epilogue::kBiasGeluTanh)) return make_float2(gelu_tanh(v0), gelu_tanh(v1));
  if (epi == static_cast<int>(Epilogue::kBiasResidual)) {
    const float2 r = Elem<T>::unpack2(*reinterpret_cast<const uint32_t*>(residual_pair));
    return make_float2(v0 + r.x, v1 + r.y);
  }
  return make_float2(v0, v1);
}
#endif

template <typename T>
__global__ void __launch_bounds__(kThreads) small_m_gemm_kernel(const T* __restrict__ x, int m, int k,
                                                                const T* __restrict__ w, int n,
                                                                const T* __restrict__ bias,
                                                                const T* __restrict__ residual, T* __restrict__ y,
                                                                int kslice, int epi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  const int parts = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int n0 = static_cast<int>(blockIdx.x) / parts * kBN;
  const int k0 = rank * kslice;
  const int klen = min(kslice, k - k0);  // > 0 and a multiple of 16 (the host's plan)
  const int rows = (m + 15) & ~15;
  const int ld = kslice + kPad;          // both W and X rows: an odd multiple of 16 bytes, conflict-free ldmatrix
  const int tid = threadIdx.x;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sw = reinterpret_cast<T*>(smem_raw);  // [kBN][ld]
  T* sx = sw + kBN * ld;                   // [rows][ld]

  // The W slice: requested before the wait (columns past n zero-filled).
  const int pieces = klen / 8;
  for (int i = tid; i < kBN * pieces; i += kThreads) {
    const int c = i / pieces, p = i - c * pieces;
    const bool ok = n0 + c < n;
    cp_async16(sw + c * ld + p * 8, w + static_cast<size_t>(ok ? n0 + c : 0) * k + k0 + p * 8, ok);
  }
  cp_async_commit();
  pdl_enter();

  // All of the X slice at once, one commit group per chunk of kChunk columns: chunk c is computed as soon as
  // it has landed while the later ones are still in flight (one L2 round trip for all of X).
  const int chunks = (klen + kChunk - 1) / kChunk;
  for (int c = 0; c < chunks; ++c) {
    const int cp = min(kChunk, klen - c * kChunk) / 8;
    for (int i = tid; i < rows * cp; i += kThreads) {
      const int r = i / cp, p = i - r * cp;
      const bool ok = r < m;
      const int col = c * kChunk + p * 8;
      cp_async16(sx + r * ld + col, x + static_cast<size_t>(ok ? r : 0) * k + k0 + col, ok);
    }
    cp_async_commit();
  }

  const int warp = tid >> 5, lane = tid & 31;
  const int wr = (warp & 3) * 32, wc = (warp >> 2) * 32;  // the warp's rows and columns in the block tile
  const int a_row = lane & 15, a_col = (lane >> 4) * 8;   // ldmatrix.x4 lane addresses: A fragments of X
  const int b_row = (lane & 7) + ((lane >> 4) << 3), b_col = ((lane >> 3) & 1) * 8;  // B fragments of W
  float acc[2][4][4] = {};
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait_pending(chunks - 1 - c);
    __syncthreads();  // chunk c (and W) landed for every thread
    const int end = min(klen, (c + 1) * kChunk);
    for (int kk = c * kChunk; kk < end; kk += 16) {
      uint32_t b[2][4];
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) ldmatrix_x4(b[nj], sw + (wc + nj * 16 + b_row) * ld + kk + b_col);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        if (wr + mi * 16 >= rows) continue;  // warp-uniform: rows past M's 16-row tiles
        uint32_t a[4];
        ldmatrix_x4(a, sx + (wr + mi * 16 + a_row) * ld + kk + a_col);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma16816<T>(acc[mi][nt], a, b[nt >> 1][(nt & 1) * 2], b[nt >> 1][(nt & 1) * 2 + 1]);
      }
    }
  }
  __syncthreads();  // every warp is done with X: its space now holds this block's partial sums

  float* part = reinterpret_cast<float*>(sx);  // [rows][kPartialLd]
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    const int r = wr + mi * 16 + g;
    if (wr + mi * 16 >= rows) continue;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int col = wc + nt * 8 + 2 * t;
      *reinterpret_cast<float2*>(part + r * kPartialLd + col) = make_float2(acc[mi][nt][0], acc[mi][nt][1]);
      *reinterpret_cast<float2*>(part + (r + 8) * kPartialLd + col) = make_float2(acc[mi][nt][2], acc[mi][nt][3]);
    }
  }
  cluster.sync();  // every block's partial sums are visible to the cluster

  // This block's share of the rows: the sum over the cluster, then the epilogue, two columns a thread and two
  // rows (r, r + kWarps) per step, every load of a step (2 x parts partial pairs, residual) issued before any use.
  const int share = (m + parts - 1) / parts;
  const int r_end = min(m, (rank + 1) * share);
  const int pair = tid & 31, col = n0 + 2 * pair;
  if (col < n) {
    float2 bv = make_float2(0.f, 0.f);
    if (bias != nullptr) bv = Elem<T>::unpack2(*reinterpret_cast<const uint32_t*>(bias + col));
    for (int r = rank * share + warp; r < r_end; r += 2 * kWarps) {
      const bool second = r + kWarps < r_end;
      float2 sum[2][kMaxCluster];
#pragma unroll
      for (int q = 0; q < kMaxCluster; ++q)
        if (q < parts) {
          const float* remote = cluster.map_shared_rank(part, q) + 2 * pair;
          sum[0][q] = *reinterpret_cast<const float2*>(remote + r * kPartialLd);
          sum[1][q] = second ? *reinterpret_cast<const float2*>(remote + (r + kWarps) * kPartialLd) : sum[0][q];
        }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (h == 1 && !second) break;
        float v0 = bv.x, v1 = bv.y;
#pragma unroll
        for (int q = 0; q < kMaxCluster; ++q)
          if (q < parts) v0 += sum[h][q].x, v1 += sum[h][q].y;
        const size_t at = static_cast<size_t>(r + h * kWarps) * n + col;
        const float2 v = epilogue2<T>(v0, v1, epi, residual + at);
        *reinterpret_cast<uint32_t*>(y + at) = Elem<T>::pack2(v.x, v.y);
      }
    }
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
#else
  __trap();  // sm_90 and newer only: the host never launches it on older GPUs (small_m_gemm returns false)
#endif
}

// How one GEMM is cut: blocks per cluster (K slices), K elements per slice, shared memory per block.
struct Plan {
  int parts = 0;
  int kslice = 0;
  int smem = 0;
};

// W slice, then the X slice or (after the MMAs, in the same place) the fp32 partial sums, whichever is larger.
template <typename T>
int smem_bytes(int rows, int kslice) {
  const int x = rows * (kslice + kPad) * static_cast<int>(sizeof(T));
  return kBN * (kslice + kPad) * static_cast<int>(sizeof(T)) + std::max(x, rows * kPartialLd * 4);
}

// About one block per SM: column tiles x K slices, K slices at most kMaxCluster and at most kMaxSlice long.
template <typename T>
bool make_plan(int m, int n, int k, const GemmDevice& dev, Plan& p) {
  if (m <= 0 || m > kMaxRows || k % 16 != 0 || n % 2 != 0 || dev.cluster_launch == 0) return false;
  const int tiles = (n + kBN - 1) / kBN;
  int parts = std::clamp((dev.num_sms + tiles / 2) / tiles, 1, kMaxCluster);
  parts = std::max(parts, (k + kMaxSlice - 1) / kMaxSlice);
  if (parts > kMaxCluster) return false;
  p.kslice = ((k + parts - 1) / parts + 15) / 16 * 16;
  p.parts = (k + p.kslice - 1) / p.kslice;  // every slice non-empty
  p.smem = smem_bytes<T>((m + 15) / 16 * 16, p.kslice);
  return p.smem <= dev.max_smem_per_block;
}

// Raise the kernel's dynamic shared-memory allowance (only ever up, per device) and check that a cluster
// of `parts` such blocks can be resident at all; cached per (device, kernel, smem, parts).
bool cluster_fits(const void* kernel, int smem, int parts) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, int> allowed_smem;
  static std::map<std::tuple<int, const void*, int, int>, bool> fits;
  std::lock_guard<std::mutex> lock(mu);
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const auto key = std::make_tuple(device, kernel, smem, parts);
  if (const auto it = fits.find(key); it != fits.end()) return it->second;
  int& allowed = allowed_smem[{device, kernel}];
  if (smem > allowed) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
          "cudaFuncSetAttribute(small_m_gemm)");
    allowed = smem;
  }
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = parts;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(parts);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  check(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg), "cudaOccupancyMaxActiveClusters(small_m_gemm)");
  fits.emplace(key, clusters > 0);
  return clusters > 0;
}

}  // namespace

template <typename T>
bool small_m_gemm(const T* w, const T* x, int m, int n, int k, const T* bias, const T* residual, T* y, Epilogue epi,
                  const GemmDevice& dev, const Stream& s) {
  Plan p;
  if (!make_plan<T>(m, n, k, dev, p)) return false;
  auto kernel = small_m_gemm_kernel<T>;
  if (!cluster_fits(reinterpret_cast<const void*>(kernel), p.smem, p.parts)) return false;
  const dim3 grid((n + kBN - 1) / kBN * p.parts);
  launch_clustered("small_m_gemm", kernel, grid, dim3(kThreads), p.smem, p.parts, s, x, m, k, w, n, bias, residual,
                   y, p.kslice, static_cast<int>(epi));
  return true;
}

template bool small_m_gemm<__half>(const __half*, const __half*, int, int, int, const __half*, const __half*, __half*,
                                   Epilogue, const GemmDevice&, const Stream&);
template bool small_m_gemm<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, int, int, int,
                                          const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, Epilogue,
                                          const GemmDevice&, const Stream&);

}  // namespace et::cuda
