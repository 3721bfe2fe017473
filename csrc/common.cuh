// Shared by the .cu files: fp32 conversions, launch error checks (and codes.h, the dispatch codes).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "codes.h"
#include "philox.cuh"  // RK_HOST_DEVICE

namespace recipe_kernels {

// Conversions and IEEE-rounded fp32 arithmetic, on the device and on the host alike: kernels written
// with them can also run in _C's *_host entry points, which the CPU tests compare with the reference.
RK_HOST_DEVICE float to_float(float v) { return v; }
RK_HOST_DEVICE float to_float(__half v) { return __half2float(v); }
RK_HOST_DEVICE float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
RK_HOST_DEVICE T from_float(float v);
template <>
RK_HOST_DEVICE float from_float<float>(float v) { return v; }
template <>
RK_HOST_DEVICE __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
RK_HOST_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// a * b and a + b rounded once in T (float or double), never contracted into an FMA (bit-equal to
// the other backends).
template <typename T>
RK_HOST_DEVICE T mul_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, double>) return __dmul_rn(a, b);
  else return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
template <typename T>
RK_HOST_DEVICE T add_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, double>) return __dadd_rn(a, b);
  else return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// Four consecutive elements moved as one aligned vector (16 bytes for fp32, 8 for 16-bit types).
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Sixteen bytes of T, moved as one vector.
template <typename T>
struct alignas(16) Vec16 {
  T v[16 / sizeof(T)];
};

// Stores `vector` at `target` (16-byte aligned) as one 16-byte store. Spelled out in PTX: nvcc's
// optimizer otherwise may split a vector assignment into element stores.
template <typename T>
RK_HOST_DEVICE void store_vec16(T* target, const Vec16<T>& vector) {
#ifdef __CUDA_ARCH__
  uint32_t words[4];
  memcpy(words, &vector, sizeof words);
  asm("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(target), "r"(words[0]), "r"(words[1]), "r"(words[2]),
      "r"(words[3]) : "memory");
#else
  memcpy(target, &vector, sizeof vector);
#endif
}

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
