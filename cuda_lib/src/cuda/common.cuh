// Shared helpers of the CUDA backend: error checks that throw et::Error, element-type traits and
// the tensor-core / async-copy primitives (mma.sync m16n8k16, ldmatrix, cp.async) the kernels use.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "backend.h"

namespace et::cuda {

// Throw et::Error for a failed CUDA runtime call; allocation failures become ET_ERR_OUT_OF_MEMORY.
inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the context stays usable
  const et_status st = err == cudaErrorMemoryAllocation ? ET_ERR_OUT_OF_MEMORY : ET_ERR_BACKEND;
  throw Error(st, std::string("CUDA: ") + what + ": " + cudaGetErrorString(err));
}

// fp16 / bf16 element types behind one interface.
template <typename T>
struct Elem;
template <>
struct Elem<__half> {
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ uint32_t pack2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t v) {
    return __half22float2(*reinterpret_cast<__half2*>(&v));
  }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ uint32_t pack2(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v));
  }
};

// D(16x8 f32) = A(16x16, row) * B(16x8, col) + C on tensor cores.
template <typename T>
__device__ __forceinline__ void mma16816_c(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                           float c0, float c1, float c2, float c3) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
  }
}

// D += A * B.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma16816_c<T>(d, a, b0, b1, d[0], d[1], d[2], d[3]);
}

// D = A * B: the first product of a sum (no accumulator to clear).
template <typename T>
__device__ __forceinline__ void mma16816_zero(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma16816_c<T>(d, a, b0, b1, 0.0f, 0.0f, 0.0f, 0.0f);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ldmatrix.x4 at a shared-window address (a kernel that computes its addresses once keeps them so).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ldmatrix_x4(r, smem_addr(p)); }

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// 16-byte global->shared copy; when !valid the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
// The tanh form of GELU (the one cuBLASLt's GELU epilogue computes), 0.5·x·(1 + tanh(u)) written as
// x·sigmoid(2u): one fast exponential, few registers.
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return __fdividef(x, 1.0f + __expf(-2.0f * u));
}

// Epilogue applied to a GEMM's fp32 accumulator before the fp16/bf16 store.
enum class Epilogue : int { kBias = 0, kBiasGelu = 1, kBiasResidual = 2, kBiasGeluTanh = 3 };

// The GELU of the kBiasGelu (erf form) or kBiasGeluTanh epilogue on a pair of biased values; false, leaving them,
// for the other epilogues.
__device__ __forceinline__ bool apply_gelu(float& v0, float& v1, int epi) {
  if (epi == static_cast<int>(Epilogue::kBiasGelu)) {
    v0 = gelu_erf(v0);
    v1 = gelu_erf(v1);
    return true;
  }
  if (epi == static_cast<int>(Epilogue::kBiasGeluTanh)) {
    v0 = gelu_tanh(v0);
    v1 = gelu_tanh(v1);
    return true;
  }
  return false;
}

// A stream and whether the kernels launched on it may use programmatic dependent launch (sm_90+):
// such a kernel is scheduled while the kernel before it drains, and waits in pdl_enter() until that
// kernel has finished and its writes are visible.
struct Stream {
  cudaStream_t handle = nullptr;
  bool early_launch = false;
};

// Called by every kernel launched through launch() before it reads anything an earlier kernel of the forward
// wrote (only weights and the batch's staged indices may be read before it): wait for the kernels before it on
// the stream (a no-op unless it was launched early), then let the next early-launched kernel be scheduled.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Let `kernel` use up to `bytes` of dynamic shared memory on the current device: set once per device, on the first
// launch there (the attribute belongs to the device's context).
template <auto kernel>
void allow_dynamic_smem(size_t bytes, const char* what) {
  static std::mutex mu;
  static std::set<int> devices;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mu);
  if (devices.count(device)) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), what);
  devices.insert(device);
}

// Launch `kernel` on s (early when s allows it) in clusters of `cluster_y` blocks along y (1: no clusters) and check
// the launch.
template <typename... Params, typename... Args>
void launch_clustered(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      const Stream& s, unsigned cluster_y, Args&&... args) {
  cudaLaunchAttribute attrs[2]{};
  unsigned n = 0;
  if (s.early_launch) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_y > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n++].val.clusterDim = {1, cluster_y, 1};
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s.handle;
  cfg.attrs = n ? attrs : nullptr;
  cfg.numAttrs = n;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), name);
}

// Launch `kernel` on s (early when s allows it) and check the launch.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, const Stream& s,
            Args&&... args) {
  launch_clustered(name, kernel, grid, block, smem, s, 1u, std::forward<Args>(args)...);
}

}  // namespace et::cuda
