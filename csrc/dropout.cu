// Dropout, dropout + bias + residual, and drop path (stochastic depth): the CUDA kernels.
// The Python side (recipe_kernels/dropout.py) passes contiguous tensors as raw pointers.
//
// Each kernel's body is a __host__ __device__ function of (block, thread, grid): the __global__
// kernel calls it once per GPU thread, and the *_host entry points call it for every thread of a
// small grid on CPU memory, so the tests without a GPU run this very code against the reference.
#include "common.cuh"

namespace recipe_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kBiasBackwardColumns = kThreads * 4;  // must equal BIAS_BACKWARD_COLUMNS in dropout.py
constexpr int64_t kDropPathElementsPerBlock = kThreads * 8;
constexpr int64_t kMaxBlocks = int64_t{1} << 30;  // larger inputs loop (grid stride)

// out = residual + (x + bias) * keep / (1 - p) over n contiguous elements, for one thread.
// Inputs: x (n), residual (n, optional), bias (bias_numel elements repeating along x, optional).
// Bytes: reads x and residual and writes out once each. The thread takes groups of four
// consecutive elements, first_group, first_group + stride, ...: one Philox call (7 rounds) each.
template <typename T, bool kHasResidual, bool kHasBias>
RK_HOST_DEVICE void dropout_thread(const T* __restrict__ x, const T* __restrict__ residual,
                                   const T* __restrict__ bias, uint64_t seed, T* __restrict__ out, int64_t n,
                                   int64_t bias_numel, uint32_t drop_threshold, float scale, bool vectorized,
                                   int64_t first_group, int64_t stride) {
  const int64_t groups = ceil_div(n, 4);
  // The bias column of each group's first element, advanced without a 64-bit modulo per group.
  int64_t group_column = kHasBias ? (first_group * 4) % bias_numel : 0;
  const int64_t column_step = kHasBias ? (stride * 4) % bias_numel : 0;
  for (int64_t group = first_group; group < groups; group += stride) {
    const PhiloxWords words = philox4x32(seed, static_cast<uint64_t>(group));
    const int64_t first = group * 4;
    const bool whole_vector = vectorized && first + 4 <= n;
    // 1. Load four elements (one vector when aligned and whole).
    Vec4<T> x_in{}, residual_in{};
    if (whole_vector) {
      x_in = *reinterpret_cast<const Vec4<T>*>(x + first);
      if (kHasResidual) residual_in = *reinterpret_cast<const Vec4<T>*>(residual + first);
    } else {
      for (int j = 0; j < 4 && first + j < n; ++j) {
        x_in.v[j] = x[first + j];
        if (kHasResidual) residual_in.v[j] = residual[first + j];
      }
    }
    // 2. (x + bias) * keep-or-zero scale + residual, in fp32, rounded once.
    int64_t column = group_column;
    Vec4<T> result;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float value = to_float(x_in.v[j]);
      if (kHasBias) {
        value = add_rn(value, to_float(bias[column]));
        column = column + 1 == bias_numel ? 0 : column + 1;
      }
      float sum = mul_rn(value, keep_element(words.word[j], drop_threshold) ? scale : 0.0f);
      if (kHasResidual) sum = add_rn(sum, to_float(residual_in.v[j]));
      result.v[j] = from_float<T>(sum);
    }
    // 3. Store.
    if (whole_vector) {
      *reinterpret_cast<Vec4<T>*>(out + first) = result;
    } else {
      for (int j = 0; j < 4 && first + j < n; ++j) out[first + j] = result.v[j];
    }
    if (kHasBias) {
      group_column += column_step;
      if (group_column >= bias_numel) group_column -= bias_numel;
    }
  }
}

// out = residual + x * keep[row] / (1 - p) for rows of row_size contiguous elements, for one thread
// of block `block` (blocks_per_row blocks per row). keep[row] is the keep decision of element `row`.
// A dropped row never reads x.
template <typename T, bool kHasResidual>
RK_HOST_DEVICE void drop_path_thread(const T* __restrict__ x, const T* __restrict__ residual, uint64_t seed,
                                     T* __restrict__ out, int64_t row_size, int64_t blocks_per_row,
                                     uint32_t drop_threshold, float scale, int64_t block, int64_t thread) {
  const int64_t row = block / blocks_per_row;
  const bool keep = keep_index(seed, static_cast<uint64_t>(row), drop_threshold);
  const int64_t begin = (block % blocks_per_row) * kDropPathElementsPerBlock;
  const int64_t end = begin + kDropPathElementsPerBlock < row_size ? begin + kDropPathElementsPerBlock : row_size;
  for (int64_t column = begin + thread; column < end; column += kThreads) {
    const int64_t i = row * row_size + column;
    float sum = keep ? mul_rn(to_float(x[i]), scale) : 0.0f;
    if (kHasResidual) sum = add_rn(sum, to_float(residual[i]));
    out[i] = from_float<T>(sum);
  }
}

// Backward of dropout_add with a bias, in one pass, for one thread: grad_x = grad * keep / (1 - p)
// and its column sums. grad is (rows, columns) with columns % 4 == 0, so a Philox group never
// straddles two rows. Block (column_block, row_block) covers kBiasBackwardColumns columns of rows
// [row_block * rows_per_block, ...) and writes fp32 column sums to partial[row_block][columns].
// Bytes: reads grad, writes grad_x once; partial is a few % of grad.
template <typename T>
RK_HOST_DEVICE void dropout_bias_backward_thread(const T* __restrict__ grad, uint64_t seed, T* __restrict__ grad_x,
                                                 float* __restrict__ partial, int64_t rows, int64_t columns,
                                                 int64_t rows_per_block, uint32_t drop_threshold, float scale,
                                                 bool vectorized, int64_t column_block, int64_t row_block,
                                                 int64_t thread) {
  const int64_t column = (column_block * kThreads + thread) * 4;
  if (column >= columns) return;  // columns % 4 == 0: a thread's four columns are all in range
  const int64_t row_begin = row_block * rows_per_block;
  const int64_t row_end = row_begin + rows_per_block < rows ? row_begin + rows_per_block : rows;
  float column_sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t first = row * columns + column;
    const PhiloxWords words = philox4x32(seed, static_cast<uint64_t>(first >> 2));
    Vec4<T> grad_in;
    if (vectorized) {
      grad_in = *reinterpret_cast<const Vec4<T>*>(grad + first);
    } else {
      for (int j = 0; j < 4; ++j) grad_in.v[j] = grad[first + j];
    }
    Vec4<T> result;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float value = mul_rn(to_float(grad_in.v[j]), keep_element(words.word[j], drop_threshold) ? scale : 0.0f);
      column_sums[j] = add_rn(column_sums[j], value);
      result.v[j] = from_float<T>(value);
    }
    if (vectorized) {
      *reinterpret_cast<Vec4<T>*>(grad_x + first) = result;
    } else {
      for (int j = 0; j < 4; ++j) grad_x[first + j] = result.v[j];
    }
  }
  for (int j = 0; j < 4; ++j) partial[row_block * columns + column + j] = column_sums[j];
}

template <typename T, bool kHasResidual, bool kHasBias>
__global__ void dropout_kernel(const T* x, const T* residual, const T* bias, const int64_t* seed, T* out, int64_t n,
                               int64_t bias_numel, uint32_t drop_threshold, float scale, bool vectorized) {
  dropout_thread<T, kHasResidual, kHasBias>(x, residual, bias, static_cast<uint64_t>(*seed), out, n, bias_numel,
                                            drop_threshold, scale, vectorized,
                                            static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                            static_cast<int64_t>(gridDim.x) * blockDim.x);
}

template <typename T, bool kHasResidual>
__global__ void drop_path_kernel(const T* x, const T* residual, const int64_t* seed, T* out, int64_t row_size,
                                 int64_t blocks_per_row, uint32_t drop_threshold, float scale) {
  drop_path_thread<T, kHasResidual>(x, residual, static_cast<uint64_t>(*seed), out, row_size, blocks_per_row,
                                    drop_threshold, scale, blockIdx.x, threadIdx.x);
}

template <typename T>
__global__ void dropout_bias_backward_kernel(const T* grad, const int64_t* seed, T* grad_x, float* partial,
                                             int64_t rows, int64_t columns, int64_t rows_per_block,
                                             uint32_t drop_threshold, float scale, bool vectorized) {
  dropout_bias_backward_thread<T>(grad, static_cast<uint64_t>(*seed), grad_x, partial, rows, columns, rows_per_block,
                                  drop_threshold, scale, vectorized, blockIdx.x, blockIdx.y, threadIdx.x);
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

void check_bias_backward_blocking(int64_t columns, int64_t rows, int64_t rows_per_block, int64_t row_blocks) {
  if (columns % 4 != 0) throw std::invalid_argument("recipe_kernels._C.dropout_bias_backward: columns % 4 != 0");
  if (row_blocks > 65535 || rows_per_block <= 0 || row_blocks * rows_per_block < rows)
    throw std::invalid_argument("recipe_kernels._C.dropout_bias_backward: bad row blocking");
}

}  // namespace

// ----------------------------------------------------------------------------- GPU launchers

void dropout(uintptr_t x, uintptr_t residual, uintptr_t bias, uintptr_t seed, uintptr_t out, int64_t n,
             int64_t bias_numel, uint32_t drop_threshold, float scale, int dtype, uintptr_t stream) {
  if (n <= 0) return;
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool vectorized = aligned_for_vec4(x, sizeof(T)) && aligned_for_vec4(out, sizeof(T)) &&
                            (residual == 0 || aligned_for_vec4(residual, sizeof(T)));
    const int64_t blocks = std::min(ceil_div(ceil_div(n, 4), kThreads), kMaxBlocks);
    dispatch_residual_bias(residual != 0, bias != 0, [&](auto has_residual, auto has_bias) {
      dropout_kernel<T, decltype(has_residual)::value, decltype(has_bias)::value>
          <<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(
              reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(residual), reinterpret_cast<const T*>(bias),
              reinterpret_cast<const int64_t*>(seed), reinterpret_cast<T*>(out), n, bias_numel, drop_threshold, scale,
              vectorized);
    });
    check_launch("dropout");
  });
}

void drop_path(uintptr_t x, uintptr_t residual, uintptr_t seed, uintptr_t out, int64_t rows, int64_t row_size,
               uint32_t drop_threshold, float scale, int dtype, uintptr_t stream) {
  if (rows <= 0 || row_size <= 0) return;
  const int64_t blocks_per_row = ceil_div(row_size, kDropPathElementsPerBlock);
  if (rows * blocks_per_row > INT32_MAX) throw std::invalid_argument("recipe_kernels._C.drop_path: more than 2^31 blocks");
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    dispatch_residual_bias(residual != 0, false, [&](auto has_residual, auto) {
      drop_path_kernel<T, decltype(has_residual)::value>
          <<<static_cast<unsigned>(rows * blocks_per_row), kThreads, 0, as_stream(stream)>>>(
              reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(residual),
              reinterpret_cast<const int64_t*>(seed), reinterpret_cast<T*>(out), row_size, blocks_per_row,
              drop_threshold, scale);
    });
    check_launch("drop_path");
  });
}

void dropout_bias_backward(uintptr_t grad, uintptr_t seed, uintptr_t grad_x, uintptr_t partial, int64_t rows,
                           int64_t columns, int64_t rows_per_block, int64_t row_blocks, uint32_t drop_threshold,
                           float scale, int dtype, uintptr_t stream) {
  if (rows <= 0 || columns <= 0) return;
  check_bias_backward_blocking(columns, rows, rows_per_block, row_blocks);
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool vectorized = aligned_for_vec4(grad, sizeof(T)) && aligned_for_vec4(grad_x, sizeof(T));
    const dim3 grid(static_cast<unsigned>(ceil_div(columns, kBiasBackwardColumns)), static_cast<unsigned>(row_blocks));
    dropout_bias_backward_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
        reinterpret_cast<const T*>(grad), reinterpret_cast<const int64_t*>(seed), reinterpret_cast<T*>(grad_x),
        reinterpret_cast<float*>(partial), rows, columns, rows_per_block, drop_threshold, scale, vectorized);
    check_launch("dropout_bias_backward");
  });
}

// ----------------------------------------------------------------------------- CPU emulation of the same code
// Pointers are to CPU memory; `blocks` sets the emulated grid (small grids exercise the grid-stride loops).

void dropout_host(uintptr_t x, uintptr_t residual, uintptr_t bias, uintptr_t seed, uintptr_t out, int64_t n,
                  int64_t bias_numel, uint32_t drop_threshold, float scale, int dtype, int64_t blocks) {
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool vectorized = aligned_for_vec4(x, sizeof(T)) && aligned_for_vec4(out, sizeof(T)) &&
                            (residual == 0 || aligned_for_vec4(residual, sizeof(T)));
    dispatch_residual_bias(residual != 0, bias != 0, [&](auto has_residual, auto has_bias) {
      for (int64_t thread = 0; thread < blocks * kThreads; ++thread) {
        dropout_thread<T, decltype(has_residual)::value, decltype(has_bias)::value>(
            reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(residual), reinterpret_cast<const T*>(bias),
            static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed)), reinterpret_cast<T*>(out), n,
            bias_numel, drop_threshold, scale, vectorized, thread, blocks * kThreads);
      }
    });
  });
}

void drop_path_host(uintptr_t x, uintptr_t residual, uintptr_t seed, uintptr_t out, int64_t rows, int64_t row_size,
                    uint32_t drop_threshold, float scale, int dtype) {
  if (rows <= 0 || row_size <= 0) return;
  const int64_t blocks_per_row = ceil_div(row_size, kDropPathElementsPerBlock);
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    dispatch_residual_bias(residual != 0, false, [&](auto has_residual, auto) {
      for (int64_t block = 0; block < rows * blocks_per_row; ++block) {
        for (int64_t thread = 0; thread < kThreads; ++thread) {
          drop_path_thread<T, decltype(has_residual)::value>(
              reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(residual),
              static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed)), reinterpret_cast<T*>(out), row_size,
              blocks_per_row, drop_threshold, scale, block, thread);
        }
      }
    });
  });
}

void dropout_bias_backward_host(uintptr_t grad, uintptr_t seed, uintptr_t grad_x, uintptr_t partial, int64_t rows,
                                int64_t columns, int64_t rows_per_block, int64_t row_blocks, uint32_t drop_threshold,
                                float scale, int dtype) {
  if (rows <= 0 || columns <= 0) return;
  check_bias_backward_blocking(columns, rows, rows_per_block, row_blocks);
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool vectorized = aligned_for_vec4(grad, sizeof(T)) && aligned_for_vec4(grad_x, sizeof(T));
    for (int64_t column_block = 0; column_block < ceil_div(columns, kBiasBackwardColumns); ++column_block) {
      for (int64_t row_block = 0; row_block < row_blocks; ++row_block) {
        for (int64_t thread = 0; thread < kThreads; ++thread) {
          dropout_bias_backward_thread<T>(
              reinterpret_cast<const T*>(grad), static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed)),
              reinterpret_cast<T*>(grad_x), reinterpret_cast<float*>(partial), rows, columns, rows_per_block,
              drop_threshold, scale, vectorized, column_block, row_block, thread);
        }
      }
    }
  });
}

}  // namespace recipe_kernels
