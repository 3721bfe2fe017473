// Shared by the .cu files: dtype codes, fp32 conversions, launch error checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace recipe_kernels {

// Must equal recipe_kernels._backend.CUDA_DTYPE_CODES.
enum DtypeCode : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Four consecutive elements moved as one aligned vector (16 bytes for fp32, 8 for 16-bit types).
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

inline bool aligned_for_vec4(uintptr_t pointer, size_t element_size) {
  return pointer % (4 * element_size) == 0;
}

// Calls fn(T{}) with T the C++ type of `dtype`.
template <typename Fn>
void dispatch_float_dtype(int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: fn(float{}); break;
    case kFloat16: fn(__half{}); break;
    case kBFloat16: fn(__nv_bfloat16{}); break;
    default: throw std::invalid_argument("recipe_kernels._C: unknown dtype code " + std::to_string(dtype));
  }
}

// Raises the launch's error (no GPU, no driver, bad configuration) as a Python RuntimeError.
inline void check_launch(const char* kernel) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("recipe_kernels._C.") + kernel + ": CUDA launch failed: " +
                             cudaGetErrorString(error));
  }
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace recipe_kernels
