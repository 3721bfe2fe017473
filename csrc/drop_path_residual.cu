// drop_path_residual: the subset keys and the one rows kernel behind its gather and residual add.
// The Python side (recipe_kernels/drop_path_residual.py) passes contiguous tensors as raw pointers.
//
// Each kernel's body is a __host__ __device__ function of (block, thread): the __global__ kernel calls
// it once per GPU thread, and the *_host entry points call it for every thread of the same grid on CPU
// memory, so the tests without a GPU run this very code against the reference.
#include <algorithm>

#include "common.cuh"

namespace recipe_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kElementsPerThread = 8;  // 16 bytes of a 2-byte type, two 16-byte vectors of fp32
constexpr int64_t kElementsPerBlock = int64_t{kThreads} * kElementsPerThread;
constexpr int64_t kMaxKeyBlocks = int64_t{1} << 30;  // more samples loop (grid stride)

// keys[n] = (word(n) - 2^31) * 2^32 + n for the four samples of Philox group `group`, word(n) being
// word n & 3 of philox4x32(seed, n >> 2): sorting the keys sorts the (word, index) pairs.
RK_HOST_DEVICE void subset_keys_thread(uint64_t seed, int64_t* __restrict__ keys, int64_t num_samples,
                                       int64_t first_group, int64_t stride) {
  for (int64_t group = first_group; group * 4 < num_samples; group += stride) {
    const PhiloxWords words = philox4x32(seed, static_cast<uint64_t>(group));
    for (int j = 0; j < 4 && group * 4 + j < num_samples; ++j) {
      const uint64_t sample = static_cast<uint64_t>(group * 4 + j);
      // The word with its top bit flipped, as the high half of a two's-complement int64: word - 2^31.
      keys[sample] = static_cast<int64_t>(static_cast<uint64_t>(words.word[j] ^ 0x80000000u) << 32 | sample);
    }
  }
}

// out[r] = a[r] + scale * b[index[r]], or a[r] where index[r] < 0; without a (kHasA false):
// scale * b[index[r]]. Rows of row_size contiguous elements; block `block` covers kElementsPerBlock
// elements of row block / blocks_per_row, eight per thread; fp32 math rounded once to TOut.
// Bytes: reads a's row and, where index >= 0, b's row once; writes out's row once.
template <bool kHasA, typename TA, typename TB, typename TOut>
RK_HOST_DEVICE void combine_rows_thread(const TA* __restrict__ a, const TB* __restrict__ b,
                                        const int64_t* __restrict__ index, TOut* __restrict__ out, int64_t row_size,
                                        int64_t blocks_per_row, float scale, bool vectorized, int64_t block,
                                        int64_t thread) {
  const int64_t row = block / blocks_per_row;
  const int64_t begin = (block % blocks_per_row) * kElementsPerBlock + thread * kElementsPerThread;
  if (begin >= row_size) return;
  const int count = row_size - begin < kElementsPerThread ? static_cast<int>(row_size - begin) : kElementsPerThread;
  const bool whole = vectorized && count == kElementsPerThread;
  const int64_t source = index[row];
  float own[kElementsPerThread] = {}, value[kElementsPerThread] = {};
  if (kHasA) load_vectors(a + row * row_size + begin, whole, count, own);
  if (source >= 0) {
    load_vectors(b + source * row_size + begin, whole, count, value);
#pragma unroll
    for (int j = 0; j < kElementsPerThread; ++j) {
      value[j] = mul_rn(value[j], scale);
      if (kHasA) value[j] = add_rn(own[j], value[j]);
    }
  } else if (kHasA) {
#pragma unroll
    for (int j = 0; j < kElementsPerThread; ++j) value[j] = own[j];  // the row of a, converted
  }
  store_vectors(out + row * row_size + begin, whole, count, value);
}

__global__ void subset_keys_kernel(const int64_t* seed, int64_t* keys, int64_t num_samples) {
  subset_keys_thread(static_cast<uint64_t>(*seed), keys, num_samples,
                     static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                     static_cast<int64_t>(gridDim.x) * blockDim.x);
}

// The rows kernel's four pointers, typed.
template <typename TA, typename TB, typename TOut>
struct RowsPointers {
  const TA* a;
  const TB* b;
  const int64_t* index;
  TOut* out;
};

template <bool kHasA, typename TA, typename TB, typename TOut>
__global__ void combine_rows_kernel(RowsPointers<TA, TB, TOut> p, int64_t row_size, int64_t blocks_per_row, float scale,
                                    bool vectorized) {
  combine_rows_thread<kHasA>(p.a, p.b, p.index, p.out, row_size, blocks_per_row, scale, vectorized, blockIdx.x,
                             threadIdx.x);
}

cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// 16-byte vectors need every row to start on a 16-byte boundary: aligned bases, rows of 8k elements.
bool rows_vectorized(uintptr_t a, uintptr_t b, uintptr_t out, int64_t row_size) {
  return row_size % kElementsPerThread == 0 && a % 16 == 0 && b % 16 == 0 && out % 16 == 0;
}

int64_t blocks_per_row_checked(int64_t rows, int64_t row_size) {
  const int64_t blocks_per_row = ceil_div(row_size, kElementsPerBlock);
  if (rows * blocks_per_row > INT32_MAX)
    throw std::invalid_argument("recipe_kernels._C.drop_path_residual_rows: more than 2^31 blocks");
  return blocks_per_row;
}

// For the rows kernel's launcher and its host emulation: checks the sizes, then calls
// fn(RowsPointers<TA, TB, TOut>, std::integral_constant<bool, has_a>, blocks_per_row, vectorized)
// with the C++ types of the dtype codes; without a, TA is float (unused).
template <typename Fn>
void with_rows_types(uintptr_t a, uintptr_t b, uintptr_t index, uintptr_t out, int64_t rows, int64_t row_size,
                     int a_dtype, int b_dtype, int out_dtype, Fn&& fn) {
  if (rows <= 0 || row_size <= 0) return;
  const int64_t blocks_per_row = blocks_per_row_checked(rows, row_size);
  const bool vectorized = rows_vectorized(a, b, out, row_size);
  auto call = [&](auto a_tag, auto b_tag, auto out_tag, auto has_a) {
    using TA = decltype(a_tag);
    using TB = decltype(b_tag);
    using TOut = decltype(out_tag);
    fn(RowsPointers<TA, TB, TOut>{reinterpret_cast<const TA*>(a), reinterpret_cast<const TB*>(b),
                                  reinterpret_cast<const int64_t*>(index), reinterpret_cast<TOut*>(out)},
       has_a, blocks_per_row, vectorized);
  };
  dispatch_float_dtype(b_dtype, [&](auto b_tag) {
    dispatch_float_dtype(out_dtype, [&](auto out_tag) {
      if (a != 0) {
        dispatch_float_dtype(a_dtype, [&](auto a_tag) { call(a_tag, b_tag, out_tag, std::true_type{}); });
      } else {
        call(float{}, b_tag, out_tag, std::false_type{});
      }
    });
  });
}

}  // namespace

// ----------------------------------------------------------------------------- GPU launchers

void drop_path_residual_keys(uintptr_t seed, uintptr_t keys, int64_t num_samples, uintptr_t stream) {
  if (num_samples <= 0) return;
  const int64_t blocks = std::min(ceil_div(ceil_div(num_samples, 4), kThreads), kMaxKeyBlocks);
  subset_keys_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(
      reinterpret_cast<const int64_t*>(seed), reinterpret_cast<int64_t*>(keys), num_samples);
  check_launch("drop_path_residual_keys");
}

void drop_path_residual_rows(uintptr_t a, uintptr_t b, uintptr_t index, uintptr_t out, int64_t rows,
                             int64_t row_size, float scale, int a_dtype, int b_dtype, int out_dtype,
                             uintptr_t stream) {
  with_rows_types(a, b, index, out, rows, row_size, a_dtype, b_dtype, out_dtype,
                  [&](auto pointers, auto has_a, int64_t blocks_per_row, bool vectorized) {
                    combine_rows_kernel<decltype(has_a)::value>
                        <<<static_cast<unsigned>(rows * blocks_per_row), kThreads, 0, as_stream(stream)>>>(
                            pointers, row_size, blocks_per_row, scale, vectorized);
                    check_launch("drop_path_residual_rows");
                  });
}

// ----------------------------------------------------------------------------- CPU emulation of the same code
// Pointers are to CPU memory; every block and thread of the launcher's grid runs in turn.

void drop_path_residual_keys_host(uintptr_t seed, uintptr_t keys, int64_t num_samples) {
  if (num_samples <= 0) return;
  const int64_t threads = std::min(ceil_div(ceil_div(num_samples, 4), kThreads), kMaxKeyBlocks) * kThreads;
  for (int64_t thread = 0; thread < threads; ++thread) {
    subset_keys_thread(static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(seed)),
                       reinterpret_cast<int64_t*>(keys), num_samples, thread, threads);
  }
}

void drop_path_residual_rows_host(uintptr_t a, uintptr_t b, uintptr_t index, uintptr_t out, int64_t rows,
                                  int64_t row_size, float scale, int a_dtype, int b_dtype, int out_dtype) {
  with_rows_types(a, b, index, out, rows, row_size, a_dtype, b_dtype, out_dtype,
                  [&](auto p, auto has_a, int64_t blocks_per_row, bool vectorized) {
                    for (int64_t block = 0; block < rows * blocks_per_row; ++block) {
                      for (int64_t thread = 0; thread < kThreads; ++thread) {
                        combine_rows_thread<decltype(has_a)::value>(p.a, p.b, p.index, p.out, row_size,
                                                                    blocks_per_row, scale, vectorized, block, thread);
                      }
                    }
                  });
}

}  // namespace recipe_kernels
