// Dropout, dropout + bias + residual, and drop path (stochastic depth): the CUDA kernels.
// The Python side (recipe_kernels/dropout.py) passes contiguous tensors as raw pointers.
#include "common.cuh"
#include "philox.cuh"

namespace recipe_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kBiasBackwardColumns = kThreads * 4;  // must equal BIAS_BACKWARD_COLUMNS in dropout.py
constexpr int64_t kMaxBlocks = int64_t{1} << 30;  // larger inputs loop (grid stride)

// out = residual + (x + bias) * keep / (1 - p) over n contiguous elements.
// Inputs: x (n), residual (n, optional), bias (bias_numel elements repeating along x, optional),
// seed (one int64 on the device). Bytes: reads x and residual and writes out once each.
// Each thread takes groups of four consecutive elements: one Philox call (7 rounds) per group.
// __fmul_rn/__fadd_rn keep nvcc from contracting into FMAs, so results match the other backends bit for bit.
template <typename T, bool kHasResidual, bool kHasBias>
__global__ void dropout_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                               const T* __restrict__ bias, const int64_t* __restrict__ seed_ptr,
                               T* __restrict__ out, int64_t n, int64_t bias_numel,
                               uint32_t drop_threshold, float scale, bool vectorized) {
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t groups = ceil_div(n, 4);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups;
       group += stride) {
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
    // 2. (x + bias) * keep-or-zero scale + residual, in fp32.
    int64_t column = kHasBias ? first % bias_numel : 0;
    Vec4<T> result;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float value = to_float(x_in.v[j]);
      if (kHasBias) {
        value = __fadd_rn(value, to_float(bias[column]));
        column = column + 1 == bias_numel ? 0 : column + 1;
      }
      float multiplier = keep_element(words.word[j], drop_threshold) ? scale : 0.0f;
      float sum = __fmul_rn(value, multiplier);
      if (kHasResidual) sum = __fadd_rn(sum, to_float(residual_in.v[j]));
      result.v[j] = from_float<T>(sum);
    }
    // 3. Store.
    if (whole_vector) {
      *reinterpret_cast<Vec4<T>*>(out + first) = result;
    } else {
      for (int j = 0; j < 4 && first + j < n; ++j) out[first + j] = result.v[j];
    }
  }
}

// out = residual + x * keep[row] / (1 - p) for rows of row_size contiguous elements.
// Inputs: x and residual (optional) as (rows, row_size), seed (one int64 on the device).
// keep[row] is the keep decision of element `row`. A dropped row never reads x.
template <typename T, bool kHasResidual>
__global__ void drop_path_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                 const int64_t* __restrict__ seed_ptr, T* __restrict__ out,
                                 int64_t row_size, int64_t blocks_per_row, int64_t elements_per_block,
                                 uint32_t drop_threshold, float scale) {
  const int64_t row = blockIdx.x / blocks_per_row;
  const bool keep = keep_index(static_cast<uint64_t>(*seed_ptr), static_cast<uint64_t>(row), drop_threshold);
  const int64_t begin = (blockIdx.x % blocks_per_row) * elements_per_block;
  const int64_t end = begin + elements_per_block < row_size ? begin + elements_per_block : row_size;
  const int64_t row_start = row * row_size;
  for (int64_t column = begin + threadIdx.x; column < end; column += blockDim.x) {
    const int64_t i = row_start + column;
    float sum = keep ? __fmul_rn(to_float(x[i]), scale) : 0.0f;
    if (kHasResidual) sum = __fadd_rn(sum, to_float(residual[i]));
    out[i] = from_float<T>(sum);
  }
}

// Backward of dropout_add with a bias, in one pass: grad_x = grad * keep / (1 - p) and its column sums.
// Inputs: grad as (rows, columns) with columns % 4 == 0 (a Philox group never straddles two rows),
// seed. Block (i, j) covers kBiasBackwardColumns columns of rows [i * rows_per_block, ...) and writes
// fp32 column sums to partial[j][columns] (j = blockIdx.y). Bytes: reads grad, writes grad_x once.
template <typename T>
__global__ void dropout_bias_backward_kernel(const T* __restrict__ grad, const int64_t* __restrict__ seed_ptr,
                                             T* __restrict__ grad_x, float* __restrict__ partial, int64_t rows,
                                             int64_t columns, int64_t rows_per_block, uint32_t drop_threshold,
                                             float scale, bool vectorized) {
  const int64_t column = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (column >= columns) return;  // columns % 4 == 0: a thread's four columns are all in range
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_block;
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
      const float value = __fmul_rn(to_float(grad_in.v[j]), keep_element(words.word[j], drop_threshold) ? scale : 0.0f);
      column_sums[j] += value;
      result.v[j] = from_float<T>(value);
    }
    if (vectorized) {
      *reinterpret_cast<Vec4<T>*>(grad_x + first) = result;
    } else {
      for (int j = 0; j < 4; ++j) grad_x[first + j] = result.v[j];
    }
  }
  for (int j = 0; j < 4; ++j) partial[blockIdx.y * columns + column + j] = column_sums[j];
}

}  // namespace

void dropout(uintptr_t x, uintptr_t residual, uintptr_t bias, uintptr_t seed, uintptr_t out, int64_t n,
             int64_t bias_numel, uint32_t drop_threshold, float scale, int dtype, uintptr_t stream) {
  if (n <= 0) return;
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool vectorized = aligned_for_vec4(x, sizeof(T)) && aligned_for_vec4(out, sizeof(T)) &&
                            (residual == 0 || aligned_for_vec4(residual, sizeof(T)));
    const int64_t blocks = std::min(ceil_div(ceil_div(n, 4), kThreads), kMaxBlocks);
    auto launch = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
          reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(residual), reinterpret_cast<const T*>(bias),
          reinterpret_cast<const int64_t*>(seed), reinterpret_cast<T*>(out), n, bias_numel, drop_threshold, scale,
          vectorized);
    };
    if (residual && bias) launch(dropout_kernel<T, true, true>);
    else if (residual) launch(dropout_kernel<T, true, false>);
    else if (bias) launch(dropout_kernel<T, false, true>);
    else launch(dropout_kernel<T, false, false>);
    check_launch("dropout");
  });
}

void drop_path(uintptr_t x, uintptr_t residual, uintptr_t seed, uintptr_t out, int64_t rows, int64_t row_size,
               uint32_t drop_threshold, float scale, int dtype, uintptr_t stream) {
  if (rows <= 0 || row_size <= 0) return;
  constexpr int64_t kElementsPerBlock = kThreads * 8;
  const int64_t blocks_per_row = ceil_div(row_size, kElementsPerBlock);
  if (rows * blocks_per_row > INT32_MAX) throw std::invalid_argument("recipe_kernels._C.drop_path: more than 2^31 blocks");
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    auto launch = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(rows * blocks_per_row), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
          reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(residual), reinterpret_cast<const int64_t*>(seed),
          reinterpret_cast<T*>(out), row_size, blocks_per_row, kElementsPerBlock, drop_threshold, scale);
    };
    if (residual) launch(drop_path_kernel<T, true>);
    else launch(drop_path_kernel<T, false>);
    check_launch("drop_path");
  });
}

void dropout_bias_backward(uintptr_t grad, uintptr_t seed, uintptr_t grad_x, uintptr_t partial, int64_t rows,
                           int64_t columns, int64_t rows_per_block, int64_t row_blocks, uint32_t drop_threshold,
                           float scale, int dtype, uintptr_t stream) {
  if (rows <= 0 || columns <= 0) return;
  if (columns % 4 != 0) throw std::invalid_argument("recipe_kernels._C.dropout_bias_backward: columns % 4 != 0");
  if (row_blocks > 65535 || row_blocks * rows_per_block < rows)
    throw std::invalid_argument("recipe_kernels._C.dropout_bias_backward: bad row blocking");
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool vectorized = aligned_for_vec4(grad, sizeof(T)) && aligned_for_vec4(grad_x, sizeof(T));
    const dim3 grid(static_cast<unsigned>(ceil_div(columns, kBiasBackwardColumns)), static_cast<unsigned>(row_blocks));
    dropout_bias_backward_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<const T*>(grad), reinterpret_cast<const int64_t*>(seed), reinterpret_cast<T*>(grad_x),
        reinterpret_cast<float*>(partial), rows, columns, rows_per_block, drop_threshold, scale, vectorized);
    check_launch("dropout_bias_backward");
  });
}

}  // namespace recipe_kernels
