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

// fp64 values rounded to fp32 (an fp64 result on its way to a 32- or 16-bit tensor, or fp32 math).
RK_HOST_DEVICE float to_float(double v) {
#ifdef __CUDA_ARCH__
  return static_cast<float>(v);
#else
  // GCC 12's -O3 SLP vectorizer dropped the rounding of (double)(float)v for two lanes of a
  // vector of doubles; a volatile keeps the emulation honest.
  const volatile float rounded = static_cast<float>(v);
  return rounded;
#endif
}

// An element's value in the math type Math (float or double): exact, except a float64 element in
// fp32 math, which rounds.
template <typename Math, typename T>
RK_HOST_DEVICE Math to_math(T v) {
  if constexpr (std::is_same_v<T, double> && std::is_same_v<Math, double>) {
    return v;
  } else {
    return static_cast<Math>(to_float(v));
  }
}

// A Math value rounded to T; fp64 math reaches the 16-bit types through fp32, as torch's casts do.
template <typename T, typename Math>
RK_HOST_DEVICE T from_math(Math v) {
  if constexpr (std::is_same_v<T, double>) {
    return static_cast<double>(v);
  } else {
    return from_float<T>(to_float(v));
  }
}

// a * b, a + b and a - b rounded once in float or double, and a / b in float, never contracted into an FMA
// (bit-equal to the other backends): the rounding intrinsics on the device, the plain operators on the host (built
// with -std=c++17, under which GCC does not contract them).
#ifdef __CUDA_ARCH__
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ inline float div_rn(float a, float b) { return __fdiv_rn(a, b); }
#else
template <typename T>
T mul_rn(T a, T b) { return a * b; }
template <typename T>
T add_rn(T a, T b) { return a + b; }
inline float div_rn(float a, float b) { return a / b; }
#endif
template <typename T>
RK_HOST_DEVICE T sub_rn(T a, T b) { return add_rn(a, -b); }  // negation is exact

// MixUp's blend lam * own + (1 - lam) * other, each step rounded once in this order: every backend's
// (composite_batch's and batch_augment's kernels, and the torch reference).
RK_HOST_DEVICE float mixup_rn(float lam, float own, float other) {
  return add_rn(mul_rn(lam, own), mul_rn(sub_rn(1.0f, lam), other));
}

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

// kCount consecutive elements of T at `source` as Math: 16-byte vector loads when `vectorized` (all
// kCount there, `source` 16-byte aligned), else the first `count` one by one and zeros past them.
template <int kCount, typename Math, typename T>
RK_HOST_DEVICE void load_vectors(const T* __restrict__ source, bool vectorized, int64_t count,
                                 Math (&values)[kCount]) {
  constexpr int kPerVector = 16 / sizeof(T);
  static_assert(kCount % kPerVector == 0, "whole 16-byte vectors");
  if (vectorized) {
#pragma unroll
    for (int first = 0; first < kCount; first += kPerVector) {
      const Vec16<T> vector = *reinterpret_cast<const Vec16<T>*>(source + first);
#pragma unroll
      for (int j = 0; j < kPerVector; ++j) values[first + j] = to_math<Math>(vector.v[j]);
    }
  } else {  // unrolled with a guard, not a loop to count: a runtime index would put values in local memory
#pragma unroll
    for (int j = 0; j < kCount; ++j) values[j] = j < count ? to_math<Math>(source[j]) : Math{0};
  }
}

// Stores values rounded once to T at `target`: 16-byte vector stores when `vectorized` (as
// load_vectors), else the first `count` one by one.
template <int kCount, typename Math, typename T>
RK_HOST_DEVICE void store_vectors(T* __restrict__ target, bool vectorized, int64_t count,
                                  const Math (&values)[kCount]) {
  constexpr int kPerVector = 16 / sizeof(T);
  static_assert(kCount % kPerVector == 0, "whole 16-byte vectors");
  if (vectorized) {
#pragma unroll
    for (int first = 0; first < kCount; first += kPerVector) {
      Vec16<T> vector;
#pragma unroll
      for (int j = 0; j < kPerVector; ++j) vector.v[j] = from_math<T>(values[first + j]);
      store_vec16(target + first, vector);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kCount; ++j) {
      if (j < count) target[j] = from_math<T>(values[j]);
    }
  }
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

// Calls fn(T{}) with T the C++ type of `dtype`: a float code as dispatch_float_dtype, or uint8 (images).
template <typename Fn>
void dispatch_byte_or_float_dtype(int dtype, Fn&& fn) {
  if (dtype == kUInt8) {
    fn(uint8_t{});
  } else {
    dispatch_float_dtype(dtype, fn);
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
