// Dropout, dropout + bias + residual, and drop path (stochastic depth): the CUDA kernels.
// The Python side (recipe_kernels/dropout.py) passes contiguous tensors as raw pointers.
//
// Each kernel's body is a __host__ __device__ function of (block, thread, grid): the __global__
// kernel calls it once per GPU thread, and the *_host entry points call it for every thread of a
// small grid on CPU memory, so the tests without a GPU run this very code against the reference.
#include <initializer_list>
#include <string>
#include <type_traits>

#include "common.cuh"

namespace recipe_kernels {
namespace {

constexpr int kThreads = 256;
// A thread's step: eight consecutive elements, two Philox calls, moved as 16-byte vectors (one of a
// 16-bit type, two of fp32, four of fp64).
constexpr int kStep = 8;
constexpr int kBiasBackwardThreads = 128;
constexpr int64_t kBiasBackwardColumns = kBiasBackwardThreads * kStep;  // must equal BIAS_BACKWARD_COLUMNS in dropout.py
constexpr int64_t kDropPathElementsPerBlock = kThreads * kStep;
constexpr int64_t kMaxBlocks = int64_t{1} << 30;  // larger inputs loop (grid stride)

// A tensor's data and dtype code: each input is read, and the output written, in its own dtype
// (mixed-dtype residual streams), while the arithmetic runs in one Math type (float, or double
// for float64 ops).
struct TypedData {
  uintptr_t address;
  int dtype;
};

// Calls fn(T{}) with T the element type of `dtype`. Usable on the device: the host checked the code.
template <typename Fn>
RK_HOST_DEVICE void visit_element_type(int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat16: fn(__half{}); break;
    case kBFloat16: fn(__nv_bfloat16{}); break;
    case kFloat64: fn(double{}); break;
    default: fn(float{}); break;
  }
}

// Element i as Math.
template <typename Math>
RK_HOST_DEVICE Math load_element(TypedData data, int64_t i) {
  Math value{};
  visit_element_type(data.dtype, [&](auto tag) {
    using T = decltype(tag);
    value = to_math<Math>(reinterpret_cast<const T*>(data.address)[i]);
  });
  return value;
}

// Elements first .. first + 7 (those below n; zeros past it) as Math: 16-byte vector loads when
// `whole_step` (all eight there, the data 16-byte aligned).
template <typename Math>
RK_HOST_DEVICE void load_step(TypedData data, int64_t first, int64_t n, bool whole_step, Math (&values)[kStep]) {
  visit_element_type(data.dtype, [&](auto tag) {
    using T = decltype(tag);
    load_vectors(reinterpret_cast<const T*>(data.address) + first, whole_step, n - first, values);
  });
}

// Stores values (those below n) rounded once to data's dtype: 16-byte vector stores when `whole_step`.
template <typename Math>
RK_HOST_DEVICE void store_step(TypedData data, int64_t first, int64_t n, bool whole_step, const Math (&values)[kStep]) {
  visit_element_type(data.dtype, [&](auto tag) {
    using T = decltype(tag);
    store_vectors(reinterpret_cast<T*>(data.address) + first, whole_step, n - first, values);
  });
}

// The keep-or-zero multipliers of elements first .. first + 7 (first % 4 == 0): Philox calls
// first / 4 and first / 4 + 1.
template <typename Math>
RK_HOST_DEVICE void step_multipliers(uint64_t seed, int64_t first, uint32_t drop_threshold, Math scale,
                                     Math (&multiplier)[kStep]) {
  const PhiloxWords calls[2] = {philox4x32(seed, static_cast<uint64_t>(first >> 2)),
                                philox4x32(seed, static_cast<uint64_t>(first >> 2) + 1)};
#pragma unroll
  for (int j = 0; j < kStep; ++j) {
    multiplier[j] = keep_element(calls[j / 4].word[j % 4], drop_threshold) ? scale : Math{0};
  }
}

// out = residual + (x + bias) * keep / (1 - p) over n contiguous elements, for one thread.
// Inputs: x (n), residual (n, optional), bias (bias_numel elements repeating along x, optional).
// Bytes: reads x and residual and writes out once each. The thread takes steps of eight
// consecutive elements, first_step, first_step + stride, ...: two Philox calls (7 rounds) each.
template <typename Math, bool kHasResidual, bool kHasBias>
RK_HOST_DEVICE void dropout_thread(TypedData x, TypedData residual, TypedData bias, uint64_t seed, TypedData out,
                                   int64_t n, int64_t bias_numel, uint32_t drop_threshold, Math scale,
                                   bool vectorized, int64_t first_step, int64_t stride) {
  const int64_t steps = ceil_div(n, kStep);
  // The bias column of each step's first element, advanced without a 64-bit modulo per step.
  int64_t step_column = kHasBias ? (first_step * kStep) % bias_numel : 0;
  const int64_t column_advance = kHasBias ? (stride * kStep) % bias_numel : 0;
  for (int64_t step = first_step; step < steps; step += stride) {
    const int64_t first = step * kStep;
    const bool whole_step = vectorized && first + kStep <= n;
    // 1. Load eight elements (16-byte vectors when aligned and whole), and their multipliers.
    Math value[kStep], residual_in[kStep], multiplier[kStep];
    load_step(x, first, n, whole_step, value);
    if (kHasResidual) load_step(residual, first, n, whole_step, residual_in);
    step_multipliers(seed, first, drop_threshold, scale, multiplier);
    // 2. (x + bias) * keep-or-zero scale + residual, in Math, rounded once.
    int64_t column = step_column;
#pragma unroll
    for (int j = 0; j < kStep; ++j) {
      if (kHasBias) {
        value[j] = add_rn(value[j], load_element<Math>(bias, column));
        column = column + 1 == bias_numel ? 0 : column + 1;
      }
      value[j] = mul_rn(value[j], multiplier[j]);
      if (kHasResidual) value[j] = add_rn(value[j], residual_in[j]);
    }
    // 3. Store.
    store_step(out, first, n, whole_step, value);
    if (kHasBias) {
      step_column += column_advance;
      if (step_column >= bias_numel) step_column -= bias_numel;
    }
  }
}

// out = residual + x * keep[row] / (1 - p) for rows of row_size contiguous elements, for one thread
// of block `block` (blocks_per_row blocks per row): eight consecutive elements, 16-byte vectors when
// `vectorized` (every row 16-byte aligned). keep[row] is the keep decision of element `row`. A
// dropped row never reads x.
template <typename Math, bool kHasResidual>
RK_HOST_DEVICE void drop_path_thread(TypedData x, TypedData residual, uint64_t seed, TypedData out, int64_t row_size,
                                     int64_t blocks_per_row, uint32_t drop_threshold, Math scale, bool vectorized,
                                     int64_t block, int64_t thread) {
  const int64_t row = block / blocks_per_row;
  const int64_t column = (block % blocks_per_row) * kDropPathElementsPerBlock + thread * kStep;
  if (column >= row_size) return;
  const bool keep = keep_index(seed, static_cast<uint64_t>(row), drop_threshold);
  const int64_t first = row * row_size + column, end = (row + 1) * row_size;
  const bool whole_step = vectorized && column + kStep <= row_size;
  Math value[kStep], residual_in[kStep];
  if (keep) {
    load_step(x, first, end, whole_step, value);
  } else {
#pragma unroll
    for (int j = 0; j < kStep; ++j) value[j] = Math{0};
  }
  if (kHasResidual) load_step(residual, first, end, whole_step, residual_in);
#pragma unroll
  for (int j = 0; j < kStep; ++j) {
    if (keep) value[j] = mul_rn(value[j], scale);
    if (kHasResidual) value[j] = add_rn(value[j], residual_in[j]);
  }
  store_step(out, first, end, whole_step, value);
}

// Backward of dropout_add with a bias, in one pass, for one thread: grad_x = grad * keep / (1 - p)
// and its column sums. grad is (rows, columns) with columns % 4 == 0, so a Philox group never
// straddles two rows. Block (column_block, row_block) covers kBiasBackwardColumns columns, eight a
// thread, of rows [row_block * rows_per_block, ...) and writes Math column sums to
// partial[row_block][columns]. Bytes: reads grad, writes grad_x once; partial is a few % of grad.
template <typename Math>
RK_HOST_DEVICE void dropout_bias_backward_thread(TypedData grad, uint64_t seed, TypedData grad_x,
                                                 Math* __restrict__ partial, int64_t rows, int64_t columns,
                                                 int64_t rows_per_block, uint32_t drop_threshold, Math scale,
                                                 bool vectorized, int64_t column_block, int64_t row_block,
                                                 int64_t thread) {
  const int64_t column = (column_block * kBiasBackwardThreads + thread) * kStep;
  if (column >= columns) return;
  const int64_t row_begin = row_block * rows_per_block;
  const int64_t row_end = row_begin + rows_per_block < rows ? row_begin + rows_per_block : rows;
  // columns % 4 == 0: the thread has four or eight columns in range, the same in every row.
  const bool whole_step = vectorized && column + kStep <= columns;
  Math column_sums[kStep] = {};
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t first = row * columns + column, end = (row + 1) * columns;
    Math value[kStep], multiplier[kStep];
    load_step(grad, first, end, whole_step, value);
    step_multipliers(seed, first, drop_threshold, scale, multiplier);
#pragma unroll
    for (int j = 0; j < kStep; ++j) {
      value[j] = mul_rn(value[j], multiplier[j]);
      column_sums[j] = add_rn(column_sums[j], value[j]);
    }
    store_step(grad_x, first, end, whole_step, value);
  }
#pragma unroll
  for (int j = 0; j < kStep; ++j) {
    if (column + j < columns) partial[row_block * columns + column + j] = column_sums[j];
  }
}

template <typename Math, bool kHasResidual, bool kHasBias>
__global__ void dropout_kernel(TypedData x, TypedData residual, TypedData bias, const int64_t* seed, TypedData out,
                               int64_t n, int64_t bias_numel, uint32_t drop_threshold, Math scale, bool vectorized) {
  dropout_thread<Math, kHasResidual, kHasBias>(x, residual, bias, static_cast<uint64_t>(*seed), out, n, bias_numel,
                                               drop_threshold, scale, vectorized,
                                               static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                               static_cast<int64_t>(gridDim.x) * blockDim.x);
}

template <typename Math, bool kHasResidual>
__global__ void drop_path_kernel(TypedData x, TypedData residual, const int64_t* seed, TypedData out,
                                 int64_t row_size, int64_t blocks_per_row, uint32_t drop_threshold, Math scale,
                                 bool vectorized) {
  drop_path_thread<Math, kHasResidual>(x, residual, static_cast<uint64_t>(*seed), out, row_size, blocks_per_row,
                                       drop_threshold, scale, vectorized, blockIdx.x, threadIdx.x);
}

template <typename Math>
__global__ void dropout_bias_backward_kernel(TypedData grad, const int64_t* seed, TypedData grad_x, Math* partial,
                                             int64_t rows, int64_t columns, int64_t rows_per_block,
                                             uint32_t drop_threshold, Math scale, bool vectorized) {
  dropout_bias_backward_thread<Math>(grad, static_cast<uint64_t>(*seed), grad_x, partial, rows, columns,
                                     rows_per_block, drop_threshold, scale, vectorized, blockIdx.x, blockIdx.y,
                                     threadIdx.x);
}

cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Calls fn(std::integral_constant<bool, has_residual>, std::integral_constant<bool, has_bias>).
template <typename Fn>
void dispatch_residual_bias(bool has_residual, bool has_bias, Fn&& fn) {
  if (has_residual && has_bias) fn(std::true_type{}, std::true_type{});
  else if (has_residual) fn(std::true_type{}, std::false_type{});
  else if (has_bias) fn(std::false_type{}, std::true_type{});
  else fn(std::false_type{}, std::false_type{});
}

// Calls fn(Math{}): double when fp64_math (float64 operands), else float.
template <typename Fn>
void dispatch_math(bool fp64_math, Fn&& fn) {
  if (fp64_math) fn(double{});
  else fn(float{});
}

// Bytes per element of dtype code `dtype`; an unknown code raises (the kernels' visitor trusts the code).
size_t element_size(int dtype) {
  switch (dtype) {
    case kFloat32: return sizeof(float);
    case kFloat16: return sizeof(__half);
    case kBFloat16: return sizeof(__nv_bfloat16);
    case kFloat64: return sizeof(double);
    default: throw std::invalid_argument("recipe_kernels._C: unknown dtype code " + std::to_string(dtype));
  }
}

// `address` with its checked dtype code; a null address (an absent residual or bias) is never read.
TypedData typed(uintptr_t address, int dtype) {
  if (address != 0) element_size(dtype);
  return TypedData{address, dtype};
}

// Whether every present tensor's data is 16-byte aligned, and so is every row of `row_size` elements.
bool all_aligned_for_vectors(std::initializer_list<TypedData> tensors, int64_t row_size = 0) {
  for (const TypedData& t : tensors) {
    if (t.address != 0 && (t.address % 16 != 0 || (row_size * element_size(t.dtype)) % 16 != 0)) return false;
  }
  return true;
}

void check_bias_backward_blocking(int64_t columns, int64_t rows, int64_t rows_per_block, int64_t row_blocks) {
  if (columns % 4 != 0) throw std::invalid_argument("recipe_kernels._C.dropout_bias_backward: columns % 4 != 0");
  if (row_blocks > 65535 || rows_per_block <= 0 || row_blocks * rows_per_block < rows)
    throw std::invalid_argument("recipe_kernels._C.dropout_bias_backward: bad row blocking");
}

}  // namespace

// ----------------------------------------------------------------------------- GPU launchers
// Each tensor comes with its dtype code; scale is 1/(1-p) as the op's math uses it (fp32-rounded
// unless fp64_math).

void dropout(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t bias, int bias_dtype,
             uintptr_t seed, uintptr_t out, int out_dtype, int64_t n, int64_t bias_numel, uint32_t drop_threshold,
             double scale, bool fp64_math, uintptr_t stream) {
  if (n <= 0) return;
  const TypedData x_data = typed(x, x_dtype), residual_data = typed(residual, residual_dtype);
  const TypedData bias_data = typed(bias, bias_dtype), out_data = typed(out, out_dtype);
  const bool vectorized = all_aligned_for_vectors({x_data, residual_data, out_data});
  const int64_t blocks = std::min(ceil_div(ceil_div(n, kStep), kThreads), kMaxBlocks);
  dispatch_math(fp64_math, [&](auto math_tag) {
    using Math = decltype(math_tag);
    dispatch_residual_bias(residual != 0, bias != 0, [&](auto has_residual, auto has_bias) {
      dropout_kernel<Math, decltype(has_residual)::value, decltype(has_bias)::value>
          <<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(
              x_data, residual_data, bias_data, reinterpret_cast<const int64_t*>(seed), out_data, n, bias_numel,
              drop_threshold, static_cast<Math>(scale), vectorized);
    });
  });
  check_launch("dropout");
}

void drop_path(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t seed, uintptr_t out,
               int out_dtype, int64_t rows, int64_t row_size, uint32_t drop_threshold, double scale, bool fp64_math,
               uintptr_t stream) {
  if (rows <= 0 || row_size <= 0) return;
  const int64_t blocks_per_row = ceil_div(row_size, kDropPathElementsPerBlock);
  if (rows * blocks_per_row > INT32_MAX) throw std::invalid_argument("recipe_kernels._C.drop_path: more than 2^31 blocks");
  const TypedData x_data = typed(x, x_dtype), residual_data = typed(residual, residual_dtype);
  const TypedData out_data = typed(out, out_dtype);
  const bool vectorized = all_aligned_for_vectors({x_data, residual_data, out_data}, row_size);
  dispatch_math(fp64_math, [&](auto math_tag) {
    using Math = decltype(math_tag);
    dispatch_residual_bias(residual != 0, false, [&](auto has_residual, auto) {
      drop_path_kernel<Math, decltype(has_residual)::value>
          <<<static_cast<unsigned>(rows * blocks_per_row), kThreads, 0, as_stream(stream)>>>(
              x_data, residual_data, reinterpret_cast<const int64_t*>(seed), out_data, row_size, blocks_per_row,
              drop_threshold, static_cast<Math>(scale), vectorized);
    });
  });
  check_launch("drop_path");
}

void dropout_bias_backward(uintptr_t grad, int grad_dtype, uintptr_t seed, uintptr_t grad_x, int grad_x_dtype,
                           uintptr_t partial, int64_t rows, int64_t columns, int64_t rows_per_block,
                           int64_t row_blocks, uint32_t drop_threshold, double scale, bool fp64_math,
                           uintptr_t stream) {
  if (rows <= 0 || columns <= 0) return;
  check_bias_backward_blocking(columns, rows, rows_per_block, row_blocks);
  const TypedData grad_data = typed(grad, grad_dtype), grad_x_data = typed(grad_x, grad_x_dtype);
  const bool vectorized = all_aligned_for_vectors({grad_data, grad_x_data}, columns);
  const dim3 grid(static_cast<unsigned>(ceil_div(columns, kBiasBackwardColumns)), static_cast<unsigned>(row_blocks));
  dispatch_math(fp64_math, [&](auto math_tag) {
    using Math = decltype(math_tag);
    dropout_bias_backward_kernel<Math><<<grid, kBiasBackwardThreads, 0, as_stream(stream)>>>(
        grad_data, reinterpret_cast<const int64_t*>(seed), grad_x_data, reinterpret_cast<Math*>(partial), rows,
        columns, rows_per_block, drop_threshold, static_cast<Math>(scale), vectorized);
  });
  check_launch("dropout_bias_backward");
}

// ----------------------------------------------------------------------------- CPU emulation of the same code
// Pointers are to CPU memory; `blocks` sets the emulated grid (small grids exercise the grid-stride loops).

void dropout_host(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t bias, int bias_dtype,
                  uintptr_t seed, uintptr_t out, int out_dtype, int64_t n, int64_t bias_numel,
                  uint32_t drop_threshold, double scale, bool fp64_math, int64_t blocks) {
  const TypedData x_data = typed(x, x_dtype), residual_data = typed(residual, residual_dtype);
  const TypedData bias_data = typed(bias, bias_dtype), out_data = typed(out, out_dtype);
  const bool vectorized = all_aligned_for_vectors({x_data, residual_data, out_data});
  const uint64_t seed_value = static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed));
  dispatch_math(fp64_math, [&](auto math_tag) {
    using Math = decltype(math_tag);
    dispatch_residual_bias(residual != 0, bias != 0, [&](auto has_residual, auto has_bias) {
      for (int64_t thread = 0; thread < blocks * kThreads; ++thread) {
        dropout_thread<Math, decltype(has_residual)::value, decltype(has_bias)::value>(
            x_data, residual_data, bias_data, seed_value, out_data, n, bias_numel, drop_threshold,
            static_cast<Math>(scale), vectorized, thread, blocks * kThreads);
      }
    });
  });
}

void drop_path_host(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t seed, uintptr_t out,
                    int out_dtype, int64_t rows, int64_t row_size, uint32_t drop_threshold, double scale,
                    bool fp64_math) {
  if (rows <= 0 || row_size <= 0) return;
  const int64_t blocks_per_row = ceil_div(row_size, kDropPathElementsPerBlock);
  const TypedData x_data = typed(x, x_dtype), residual_data = typed(residual, residual_dtype);
  const TypedData out_data = typed(out, out_dtype);
  const bool vectorized = all_aligned_for_vectors({x_data, residual_data, out_data}, row_size);
  const uint64_t seed_value = static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed));
  dispatch_math(fp64_math, [&](auto math_tag) {
    using Math = decltype(math_tag);
    dispatch_residual_bias(residual != 0, false, [&](auto has_residual, auto) {
      for (int64_t block = 0; block < rows * blocks_per_row; ++block) {
        for (int64_t thread = 0; thread < kThreads; ++thread) {
          drop_path_thread<Math, decltype(has_residual)::value>(x_data, residual_data, seed_value, out_data, row_size,
                                                                 blocks_per_row, drop_threshold,
                                                                 static_cast<Math>(scale), vectorized, block, thread);
        }
      }
    });
  });
}

void dropout_bias_backward_host(uintptr_t grad, int grad_dtype, uintptr_t seed, uintptr_t grad_x, int grad_x_dtype,
                                uintptr_t partial, int64_t rows, int64_t columns, int64_t rows_per_block,
                                int64_t row_blocks, uint32_t drop_threshold, double scale, bool fp64_math) {
  if (rows <= 0 || columns <= 0) return;
  check_bias_backward_blocking(columns, rows, rows_per_block, row_blocks);
  const TypedData grad_data = typed(grad, grad_dtype), grad_x_data = typed(grad_x, grad_x_dtype);
  const bool vectorized = all_aligned_for_vectors({grad_data, grad_x_data}, columns);
  const uint64_t seed_value = static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed));
  dispatch_math(fp64_math, [&](auto math_tag) {
    using Math = decltype(math_tag);
    for (int64_t column_block = 0; column_block < ceil_div(columns, kBiasBackwardColumns); ++column_block) {
      for (int64_t row_block = 0; row_block < row_blocks; ++row_block) {
        for (int64_t thread = 0; thread < kBiasBackwardThreads; ++thread) {
          dropout_bias_backward_thread<Math>(grad_data, seed_value, grad_x_data, reinterpret_cast<Math*>(partial),
                                             rows, columns, rows_per_block, drop_threshold, static_cast<Math>(scale),
                                             vectorized, column_block, row_block, thread);
        }
      }
    }
  });
}

}  // namespace recipe_kernels
