// Label-smoothed cross-entropy over class indices, MixedTarget or class probabilities: the CUDA kernels.
// Same design and formulas as recipe_kernels/cross_entropy.py (its module docstring has the math):
// per row, one sweep for the online max / sum of exp and the sums smoothing and targets need, then a
// second sweep of the same row (from L1/L2) that writes the gradient for grad_output = 1, already
// divided by the `mean` denominator, all in the shifted domain (x - row max). Few long rows are split
// over several blocks: partial statistics, then a finishing kernel that merges them and writes loss
// and gradient. The Python side passes
// contiguous tensors as raw pointers; the per-element logic is __host__ __device__ so that
// cross_entropy_host can run it on the CPU in tests.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace recipe_kernels {

// max, sum exp(x - max), sum w (x - max), sum w, sum w q, sum w q (x - max), x[y_a], x[y_b]
constexpr int kPartialFields = 8;

// exp and log: the fast approximations on the device, the standard library's on the host.
#ifdef __CUDA_ARCH__
__device__ inline float exp_approx(float x) { return __expf(x); }
__device__ inline float log_approx(float x) { return __logf(x); }
#else
inline float exp_approx(float x) { return std::exp(x); }
inline float log_approx(float x) { return std::log(x); }
#endif

// Running statistics of (part of) a row, mergeable in any order. The weighted sums of x are kept
// relative to `max` (the shifted domain): they never round at the scale of the largest logit.
struct RowStats {
  float max;      // running maximum
  float sum_exp;  // sum of exp(x - max)
  float sum_wx;   // sum of w_c (x_c - max) (label smoothing)
  float sum_w;    // sum of w_c (label smoothing; the count of classes seen without weights)
  float sum_wq;   // sum of w_c q_c (probability targets)
  float sum_wqx;  // sum of w_c q_c (x_c - max) (probability targets)
};

__host__ __device__ inline RowStats empty_stats() { return RowStats{-INFINITY, 0.f, 0.f, 0.f, 0.f, 0.f}; }

// A sum of w (x - old_max) moved onto new_shift. Nothing seen (old_max = -inf, an empty sum) or only
// -inf (the sum is -inf already): unchanged.
__host__ __device__ inline float rebase(float sum_shifted, float old_max, float new_shift, float sum_weights) {
  return old_max == -INFINITY ? sum_shifted : sum_shifted + (old_max - new_shift) * sum_weights;
}

// Both sums of exp rescaled to the larger max and both shifted sums rebased onto it; a max of -inf
// (nothing finite yet) shifts by 0, not NaN.
__host__ __device__ inline RowStats merge_stats(const RowStats& a, const RowStats& b) {
  const float max = fmaxf(a.max, b.max);
  const float shift = max == -INFINITY ? 0.f : max;
  return RowStats{max, a.sum_exp * exp_approx(a.max - shift) + b.sum_exp * exp_approx(b.max - shift),
                  rebase(a.sum_wx, a.max, shift, a.sum_w) + rebase(b.sum_wx, b.max, shift, b.sum_w),
                  a.sum_w + b.sum_w, a.sum_wq + b.sum_wq,
                  rebase(a.sum_wqx, a.max, shift, a.sum_wq) + rebase(b.sum_wqx, b.max, shift, b.sum_wq)};
}

// Adds kGroup elements at once: one rescale of the running sum per group, one exp per element.
template <int kGroup>
__host__ __device__ inline void add_group(RowStats& stats, const float (&x)[kGroup], const bool (&present)[kGroup],
                                          const float (&w)[kGroup], const float (&q)[kGroup], bool smoothing,
                                          bool probabilities) {
  float group_max = -INFINITY;
  for (int j = 0; j < kGroup; ++j) group_max = present[j] ? fmaxf(group_max, x[j]) : group_max;
  const float max = fmaxf(stats.max, group_max);
  const float shift = max == -INFINITY ? 0.f : max;
  float sum_exp = stats.sum_exp * exp_approx(stats.max - shift);
  if (smoothing) stats.sum_wx = rebase(stats.sum_wx, stats.max, shift, stats.sum_w);
  if (probabilities) stats.sum_wqx = rebase(stats.sum_wqx, stats.max, shift, stats.sum_wq);
  for (int j = 0; j < kGroup; ++j) {
    if (!present[j]) continue;
    const float shifted = x[j] - shift;
    sum_exp += exp_approx(shifted);
    if (smoothing) {
      stats.sum_wx += w[j] * shifted;
      stats.sum_w += w[j];
    }
    if (probabilities) {
      stats.sum_wq += w[j] * q[j];
      stats.sum_wqx += w[j] * q[j] * shifted;
    }
  }
  stats.max = max;
  stats.sum_exp = sum_exp;
}

// What the target asks of one row: with s = x - max and L = log sum exp(s),
// loss = a_a (L - s[y_a]) + a_b (L - s[y_b]) + beta (W L - sum w s) + (1 - e)(sum w q L - sum w q s).
// y_a/y_b are -1 where no class matches; an index outside [0, C)
// (other than an ignored one) is never used as an address and makes a_a NaN.
struct RowCoefficients {
  float a_a, a_b, beta;
  int64_t y_a, y_b;
  bool active;
};

__host__ __device__ inline RowCoefficients row_coefficients(int kind, const int64_t* target, const int64_t* target_b,
                                                            const float* lam, const float* weight, int64_t row,
                                                            int64_t sample, int64_t num_classes, int64_t ignore_index,
                                                            float label_smoothing) {
  const float one_minus_eps = 1.f - label_smoothing;
  const float beta = label_smoothing / static_cast<float>(num_classes);
  if (kind == kProbabilityTarget) return RowCoefficients{0.f, 0.f, beta, -1, -1, true};
  const int64_t y_a = target[row];
  const bool in_range_a = y_a >= 0 && y_a < num_classes;
  const float w_a = weight == nullptr ? 1.f : (in_range_a ? weight[y_a] : 0.f);
  if (kind == kIndexTarget) {
    if (y_a == ignore_index) return RowCoefficients{0.f, 0.f, 0.f, -1, -1, false};
    return RowCoefficients{in_range_a ? one_minus_eps * w_a : NAN, 0.f, beta, y_a, -1, true};
  }
  const int64_t y_b = target_b[row];
  const bool in_range_b = y_b >= 0 && y_b < num_classes;
  const float w_b = weight == nullptr ? 1.f : (in_range_b ? weight[y_b] : 0.f);
  const float share = lam[sample];
  return RowCoefficients{in_range_a && in_range_b ? share * one_minus_eps * w_a : NAN,
                         (1.f - share) * one_minus_eps * w_b, beta, y_a, y_b, true};
}

// The row's loss and K, the factor of p_c in its gradient, from the shifted statistics and
// log_sum = L = log(stats.sum_exp). sum_w must already be C without weights. z_loss > 0 adds
// z_loss lse^2 to the loss and 2 z_loss lse to K (lse = max + L).
__host__ __device__ inline void row_loss_and_factor(const RowStats& stats, const RowCoefficients& k, float x_a,
                                                    float x_b, float label_smoothing, float z_loss, float log_sum,
                                                    float* loss, float* factor) {
  const float one_minus_eps = 1.f - label_smoothing;
  float value = k.a_a * (log_sum - (x_a - stats.max)) + k.a_b * (log_sum - (x_b - stats.max)) +
                k.beta * (stats.sum_w * log_sum - stats.sum_wx) +
                one_minus_eps * (stats.sum_wq * log_sum - stats.sum_wqx);
  float row_factor = k.a_a + k.a_b + k.beta * stats.sum_w + one_minus_eps * stats.sum_wq;
  if (z_loss > 0.f) {
    const float lse = stats.max + log_sum;
    value += z_loss * lse * lse;
    row_factor += 2.f * z_loss * lse;
  }
  *loss = k.active ? value : 0.f;
  *factor = row_factor;
}

// grad_c for grad_output = 1, times grad_scale, in fp32 (the target-class term included) before rounding.
__host__ __device__ inline float gradient_element(int64_t c, float x, float w, float q, float row_max,
                                                  float log_sum, float factor, const RowCoefficients& k,
                                                  float label_smoothing, float grad_scale) {
  if (!k.active) return 0.f;
  float grad = exp_approx((x - row_max) - log_sum) * factor - k.beta * w - (1.f - label_smoothing) * w * q;
  if (c == k.y_a) grad -= k.a_a;
  if (c == k.y_b) grad -= k.a_b;
  return grad * grad_scale;
}

// d loss / d q_c of a probability target, times grad_scale: -(1 - e) w_c log p_c.
__host__ __device__ inline float target_gradient_element(float x, float w, float row_max, float log_sum,
                                                         float label_smoothing, float grad_scale) {
  return -(1.f - label_smoothing) * w * ((x - row_max) - log_sum) * grad_scale;
}

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 4;  // elements per thread per step: independent loads in flight

struct CrossEntropyArgs {
  const void* x;
  const int64_t* target;
  const int64_t* target_b;
  const float* lam;
  const float* weight;
  float* denominator;  // index targets with mean: num_partials partial sums, then their total
  const float* grad_output;  // one value or one per row (grad_output_kind), or none
  float* loss;
  float* lse;  // each row's log-sum-exp, or none
  void* grad;
  float* partial;
  int64_t num_classes, inner_size, chunk_size, num_splits, num_partials, total_rows, ignore_index;
  float label_smoothing, z_loss;
  bool mean;  // the gradient is divided by the `mean` denominator
  int grad_output_kind;
  bool grad_of_target;  // grad receives d loss / d target (probabilities) instead of d loss / d logits
};

__device__ inline RowStats shuffle_stats(const RowStats& s, int lane_mask) {
  return RowStats{__shfl_xor_sync(0xffffffffu, s.max, lane_mask), __shfl_xor_sync(0xffffffffu, s.sum_exp, lane_mask),
                  __shfl_xor_sync(0xffffffffu, s.sum_wx, lane_mask), __shfl_xor_sync(0xffffffffu, s.sum_w, lane_mask),
                  __shfl_xor_sync(0xffffffffu, s.sum_wq, lane_mask),
                  __shfl_xor_sync(0xffffffffu, s.sum_wqx, lane_mask)};
}

// Every thread gets the merge of the whole block's statistics.
__device__ RowStats block_merge(RowStats stats) {
  __shared__ RowStats per_warp[kWarps];
  __shared__ RowStats total;
  for (int mask = 16; mask > 0; mask >>= 1) stats = merge_stats(stats, shuffle_stats(stats, mask));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) per_warp[warp] = stats;
  __syncthreads();
  if (warp == 0) {
    stats = lane < kWarps ? per_warp[lane] : empty_stats();
    for (int mask = 16; mask > 0; mask >>= 1) stats = merge_stats(stats, shuffle_stats(stats, mask));
    if (lane == 0) total = stats;
  }
  __syncthreads();
  return total;
}

// What multiplies grad_output besides the gradient (GRAD_OUTPUT of the Triton kernels).
enum GradOutputKind : int { kNoGradOutput = 0, kScalarGradOutput = 1, kPerRowGradOutput = 2 };

// The `mean` denominator: the summed partials of index targets (index_denominator_kernel), else the row count.
__host__ __device__ inline float mean_denominator(const CrossEntropyArgs& a, int kind) {
  if (kind != kIndexTarget) return static_cast<float>(a.total_rows);
  float total = 0.f;
  for (int64_t p = 0; p < a.num_partials; ++p) total += a.denominator[p];
  return total;
}

// The factor of one row's gradient: 1 / the mean denominator (mean) times grad_output.
__host__ __device__ inline float row_grad_scale(const CrossEntropyArgs& a, int kind, int64_t row) {
  float scale = a.mean ? 1.f / mean_denominator(a, kind) : 1.f;
  if (a.grad_output_kind == kScalarGradOutput) scale *= *a.grad_output;
  if (a.grad_output_kind == kPerRowGradOutput) scale *= a.grad_output[row];
  return scale;
}

constexpr int kDenominatorThreads = 256;

// partial[p] = the summed weight w[y] (1 without weights) of the counted rows (y not ignore_index, in
// [0, C)) among rows [p * rows_per_partial, (p + 1) * rows_per_partial); one block per partial.
// Bytes: 8 per row of target, plus the weights gathered (cached).
__global__ void __launch_bounds__(kDenominatorThreads) index_denominator_kernel(
    const int64_t* target, const float* weight, float* partial, int64_t rows, int64_t num_classes,
    int64_t ignore_index, int64_t rows_per_partial) {
  __shared__ float per_warp[kDenominatorThreads / 32];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_partial;
  const int64_t end = first + rows_per_partial < rows ? first + rows_per_partial : rows;
  float total = 0.f;
  for (int64_t r = first + threadIdx.x; r < end; r += kDenominatorThreads) {
    const int64_t y = target[r];
    if (y != ignore_index && y >= 0 && y < num_classes) total += weight == nullptr ? 1.f : weight[y];
  }
  for (int mask = 16; mask > 0; mask >>= 1) total += __shfl_xor_sync(0xffffffffu, total, mask);
  if (threadIdx.x % 32 == 0) per_warp[threadIdx.x / 32] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kDenominatorThreads / 32; ++w) total += per_warp[w];
    partial[blockIdx.x] = total;
  }
}

// Classes moved at once as one 16-byte vector: 4 fp32, 8 fp16 or bf16.
template <typename T>
constexpr int kVector = 16 / sizeof(T);

// Whether the classes from `p` on can move as 16-byte vectors: unit class stride, 16-byte aligned.
template <typename T>
__host__ __device__ inline bool vector_ready(const T* p, int64_t inner_size) {
  return inner_size == 1 && reinterpret_cast<uintptr_t>(p) % sizeof(Vec16<T>) == 0;
}

// The classes [start, vector_end) that a row sweep moves as 16-byte vectors (the rest one by one):
// all whole vectors when x (and q, and the gradient, when given) are vector_ready at start, else none.
template <typename T>
__host__ __device__ inline int64_t vector_end(const T* x, const T* q, const T* grad, int64_t row_offset,
                                              int64_t inner_size, int64_t start, int64_t end) {
  const bool ready = vector_ready(x + row_offset + start, inner_size) &&
                     (q == nullptr || vector_ready(q + row_offset + start, inner_size)) &&
                     (grad == nullptr || vector_ready(grad + row_offset + start, inner_size));
  return ready ? start + (end - start) / kVector<T> * kVector<T> : start;
}

// What thread `thread` of a block gathers in sweep 1 over classes [start, end) of one row: 16-byte
// vectors of consecutive classes (kVector<T> of them) kThreads vectors apart where the row allows
// (vector_end), then groups of kGroup classes kThreads apart. q (probabilities only) has the logits' layout.
template <typename T>
__host__ __device__ RowStats thread_statistics(const T* x, const float* weight, const T* q, int64_t row_offset,
                                               int64_t inner_size, int64_t start, int64_t end, int thread,
                                               bool smoothing, bool probabilities) {
  RowStats stats = empty_stats();
  constexpr int kVec = kVector<T>;
  const int64_t vectors_end = vector_end<T>(x, probabilities ? q : nullptr, nullptr, row_offset, inner_size, start, end);
  for (int64_t base = start + int64_t{thread} * kVec; base < vectors_end; base += int64_t{kThreads} * kVec) {
    float xs[kVec], ws[kVec], qs[kVec];
    bool present[kVec];
    const Vec16<T> xv = *reinterpret_cast<const Vec16<T>*>(x + row_offset + base);
    Vec16<T> qv{};
    if (probabilities) qv = *reinterpret_cast<const Vec16<T>*>(q + row_offset + base);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      present[j] = true;
      xs[j] = to_float(xv.v[j]);
      ws[j] = weight != nullptr ? weight[base + j] : 1.f;
      qs[j] = probabilities ? to_float(qv.v[j]) : 0.f;
    }
    add_group<kVec>(stats, xs, present, ws, qs, smoothing, probabilities);
  }
  for (int64_t base = vectors_end + thread; base < end; base += int64_t{kThreads} * kGroup) {
    float xs[kGroup], ws[kGroup], qs[kGroup];
    bool present[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int64_t c = base + int64_t{j} * kThreads;
      present[j] = c < end;
      const int64_t offset = row_offset + c * inner_size;
      xs[j] = present[j] ? to_float(x[offset]) : 0.f;
      ws[j] = (present[j] && weight != nullptr) ? weight[c] : 1.f;
      qs[j] = (probabilities && present[j]) ? to_float(q[offset]) : 0.f;
    }
    add_group<kGroup>(stats, xs, present, ws, qs, smoothing, probabilities);
  }
  return stats;
}

// Sweep 1 over classes [start, end) of one row, by the whole block.
template <typename T, int kKind>
__device__ RowStats chunk_statistics(const CrossEntropyArgs& a, int64_t row_offset, int64_t start, int64_t end) {
  const T* q = reinterpret_cast<const T*>(a.target);  // probability targets have the logits' dtype and layout
  return block_merge(thread_statistics<T>(static_cast<const T*>(a.x), a.weight, q, row_offset, a.inner_size, start,
                                          end, threadIdx.x, a.label_smoothing > 0.f, kKind == kProbabilityTarget));
}

// Sweep 2: the gradient of classes [start, end) of one row (with respect to the target when grad_of_target).
template <typename T, int kKind>
__device__ void write_chunk_gradient(const CrossEntropyArgs& a, int64_t row, int64_t row_offset, int64_t start,
                                     int64_t end, float row_max, float log_sum, float factor,
                                     const RowCoefficients& k) {
  const T* x = static_cast<const T*>(a.x);
  const T* q = reinterpret_cast<const T*>(a.target);
  T* grad = static_cast<T*>(a.grad);
  const float grad_scale = row_grad_scale(a, kKind, row);
  auto element = [&](int64_t c, float xc, float qc) {
    const float w = a.weight != nullptr ? a.weight[c] : 1.f;
    return from_float<T>(
        a.grad_of_target ? target_gradient_element(xc, w, row_max, log_sum, a.label_smoothing, grad_scale)
                         : gradient_element(c, xc, w, qc, row_max, log_sum, factor, k, a.label_smoothing, grad_scale));
  };
  // 16-byte vectors of consecutive classes where the row allows, then one class at a time.
  constexpr int kVec = kVector<T>;
  const int64_t vectors_end = vector_end<T>(x, kKind == kProbabilityTarget ? q : nullptr, grad, row_offset,
                                            a.inner_size, start, end);
  for (int64_t base = start + int64_t{threadIdx.x} * kVec; base < vectors_end; base += int64_t{kThreads} * kVec) {
    const Vec16<T> xv = *reinterpret_cast<const Vec16<T>*>(x + row_offset + base);
    Vec16<T> qv{};
    if (kKind == kProbabilityTarget) qv = *reinterpret_cast<const Vec16<T>*>(q + row_offset + base);
    Vec16<T> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      out.v[j] = element(base + j, to_float(xv.v[j]), kKind == kProbabilityTarget ? to_float(qv.v[j]) : 0.f);
    }
    store_vec16(grad + row_offset + base, out);  // after the reads: grad may be x
  }
  for (int64_t c = vectors_end + threadIdx.x; c < end; c += kThreads) {
    const int64_t offset = row_offset + c * a.inner_size;
    // Read before written: with inplace_backward grad and x share storage, element by element.
    grad[offset] = element(c, to_float(x[offset]), kKind == kProbabilityTarget ? to_float(q[offset]) : 0.f);
  }
}

// A block of the (rows, splits) grid: its row and split, the offset of the row's first logit, and the row's target
// coefficients.
struct BlockRow {
  int64_t row, split, row_offset;
  RowCoefficients k;
};
template <int kKind>
__device__ BlockRow block_row(const CrossEntropyArgs& a) {
  const int64_t row = blockIdx.x, split = blockIdx.y, sample = row / a.inner_size;
  return BlockRow{row, split, sample * a.num_classes * a.inner_size + row % a.inner_size,
                  row_coefficients(kKind, a.target, a.target_b, a.lam, a.weight, row, sample, a.num_classes,
                                   a.ignore_index, a.label_smoothing)};
}

// The end of the chunk of classes [start, end) that starts at `start`. Each kernel forms its chunk where it first
// needs it, so that the two bounds are not live across the code before.
__device__ inline int64_t chunk_end(const CrossEntropyArgs& a, int64_t start) {
  return start + a.chunk_size < a.num_classes ? start + a.chunk_size : a.num_classes;
}

// Cross-entropy of one row, or of one chunk of it when num_splits > 1; grid (rows, splits).
// Inputs: logits as (N, C, inner_size), targets (int64 (rows,) indices; two of them and lam (N,) for
// MixedTarget; or probabilities in the logits' dtype and layout), weight (fp32 (C,), optional),
// the mean denominator's partial sums (index targets with mean), grad_output (fp32: none, one, or one per row). Outputs: loss (fp32 (rows,)), grad (logits' layout, optional,
// may be x).
// Bytes: one DRAM read of the row for sweep 1; sweep 2 re-reads it (from L2 while a block's row fits:
// 512 threads work on one row at a time) and writes the gradient once; 8 B of target and 4 B of loss
// per row. Split rows write 32 B of partials per block instead and leave the rest to the finisher.
template <typename T, int kKind>
__global__ void __launch_bounds__(kThreads) cross_entropy_fwd_kernel(CrossEntropyArgs a) {
  const auto [row, split, row_offset, k] = block_row<kKind>(a);
  const T* x = static_cast<const T*>(a.x);
  if (kKind == kIndexTarget && a.mean && row == 0 && split == 0 && threadIdx.x == 0) {
    a.denominator[a.num_partials] = mean_denominator(a, kKind);  // the total, for the host's mean of the losses
  }
  // The target logits are read before any gradient overwrites them.
  const bool has_a = k.y_a >= 0 && k.y_a < a.num_classes, has_b = k.y_b >= 0 && k.y_b < a.num_classes;
  const float x_a = has_a ? to_float(x[row_offset + k.y_a * a.inner_size]) : 0.f;
  const float x_b = has_b ? to_float(x[row_offset + k.y_b * a.inner_size]) : 0.f;
  const int64_t start = split * a.chunk_size, end = chunk_end(a, start);
  RowStats stats = chunk_statistics<T, kKind>(a, row_offset, start, end);
  if (a.num_splits > 1) {
    if (threadIdx.x == 0) {
      float* fields = a.partial + (row * a.num_splits + split) * kPartialFields;
      fields[0] = stats.max, fields[1] = stats.sum_exp, fields[2] = stats.sum_wx, fields[3] = stats.sum_w;
      fields[4] = stats.sum_wq, fields[5] = stats.sum_wqx, fields[6] = x_a, fields[7] = x_b;
    }
    return;
  }
  if (a.weight == nullptr) stats.sum_w = static_cast<float>(a.num_classes);
  const float log_sum = log_approx(stats.sum_exp);
  float loss, factor;
  row_loss_and_factor(stats, k, x_a, x_b, a.label_smoothing, a.z_loss, log_sum, &loss, &factor);
  if (threadIdx.x == 0) a.loss[row] = loss;
  if (threadIdx.x == 0 && a.lse != nullptr) a.lse[row] = stats.max + log_sum;
  if (a.grad != nullptr) write_chunk_gradient<T, kKind>(a, row, row_offset, start, end, stats.max, log_sum, factor, k);
}

// Second kernel of split rows, grid (rows, splits): merges the row's partials, writes the loss (split 0)
// and the gradient of this block's chunk. Bytes: 32 B of partials per split, the chunk re-read (rows are
// split only when few, so mostly from L2) and the gradient written once.
template <typename T, int kKind>
__global__ void __launch_bounds__(kThreads) cross_entropy_split_finish_kernel(CrossEntropyArgs a) {
  const auto [row, split, row_offset, k] = block_row<kKind>(a);
  const float* partial = a.partial + row * a.num_splits * kPartialFields;
  RowStats stats = empty_stats();
  for (int64_t s = 0; s < a.num_splits; ++s) {  // a few dozen at most: every thread merges them itself
    const float* f = partial + s * kPartialFields;
    stats = merge_stats(stats, RowStats{f[0], f[1], f[2], f[3], f[4], f[5]});
  }
  if (a.weight == nullptr) stats.sum_w = static_cast<float>(a.num_classes);
  const float log_sum = log_approx(stats.sum_exp);
  float loss, factor;
  row_loss_and_factor(stats, k, partial[6], partial[7], a.label_smoothing, a.z_loss, log_sum, &loss, &factor);
  if (split == 0 && threadIdx.x == 0) a.loss[row] = loss;
  if (split == 0 && threadIdx.x == 0 && a.lse != nullptr) a.lse[row] = stats.max + log_sum;
  if (a.grad != nullptr) {
    const int64_t start = split * a.chunk_size;
    write_chunk_gradient<T, kKind>(a, row, row_offset, start, chunk_end(a, start), stats.max, log_sum, factor, k);
  }
}

// grad *= factor in place for thread `thread` of `threads`; factor is one fp32 or one per row
// ((N, C, inner_size) gradient: row n * inner_size + k for element (n, c, k)). Each thread moves
// kVector<T> consecutive elements per step, as one 16-byte vector when `vectorized` (grad 16-byte
// aligned) and the step is whole. A scalar factor of exactly 1 reads and writes nothing, and so does
// a step whose per-row factors all are 1. Bytes otherwise: one read and one write of the gradient.
template <typename T>
RK_HOST_DEVICE void scale_gradient_thread(T* __restrict__ grad, const float* __restrict__ factor, int64_t n,
                                          int64_t num_classes, int64_t inner_size, bool per_row, bool vectorized,
                                          int64_t thread, int64_t threads) {
  const float scalar = per_row ? 1.f : *factor;
  if (!per_row && scalar == 1.f) return;
  constexpr int kVec = kVector<T>;
  for (int64_t first = thread * kVec; first < n; first += threads * kVec) {
    float factors[kVec];
    // The first element's (n, c, k), then stepped element by element: two divisions per step, not per element.
    const int64_t sample = first / (num_classes * inner_size);
    int64_t c = first / inner_size % num_classes, k = first % inner_size;
    int64_t factor_index = sample * inner_size + k;
    bool scales = false;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      factors[j] = per_row ? (first + j < n ? factor[factor_index] : 1.f) : scalar;
      scales = scales || factors[j] != 1.f;
      if (++k == inner_size) {
        k = 0;
        factor_index -= inner_size - 1;
        if (++c == num_classes) {
          c = 0;
          factor_index += inner_size;
        }
      } else {
        ++factor_index;
      }
    }
    if (!scales) continue;
    const bool whole = vectorized && first + kVec <= n;
    float values[kVec];
    load_vectors(grad + first, whole, n - first, values);
#pragma unroll
    for (int j = 0; j < kVec; ++j) values[j] = mul_rn(values[j], factors[j]);  // times 1 stores the value back
    store_vectors(grad + first, whole, n - first, values);
  }
}

template <typename T>
__global__ void scale_gradient_kernel(T* grad, const float* factor, int64_t n, int64_t num_classes,
                                      int64_t inner_size, bool per_row, bool vectorized) {
  scale_gradient_thread(grad, factor, n, num_classes, inner_size, per_row, vectorized,
                        static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                        static_cast<int64_t>(gridDim.x) * blockDim.x);
}

constexpr int kScaleThreads = 256;

// Grid-stride over at most max_blocks blocks (4 per SM): with a factor of 1 each reads one float and exits.
int64_t scale_blocks(int64_t n, int64_t max_blocks) {
  if (max_blocks < 1) throw std::invalid_argument("recipe_kernels._C.cross_entropy_scale_grad: max_blocks < 1");
  return std::min<int64_t>(ceil_div(n, kScaleThreads * 4), max_blocks);
}

}  // namespace

void cross_entropy_fwd(uintptr_t x, uintptr_t target, uintptr_t target_b, uintptr_t lam, uintptr_t weight,
                       uintptr_t denominator, uintptr_t grad_output, uintptr_t loss, uintptr_t lse, uintptr_t grad,
                       uintptr_t partial, int64_t rows, int64_t num_classes, int64_t inner_size, int64_t splits,
                       int64_t num_partials, int64_t rows_per_partial, int64_t ignore_index, float label_smoothing,
                       float z_loss, bool mean,
                       int grad_output_kind, bool grad_of_target, int kind, int dtype, uintptr_t stream) {
  if (rows <= 0 || num_classes <= 0) return;
  if (rows > INT32_MAX) throw std::invalid_argument("recipe_kernels._C.cross_entropy_fwd: more than 2^31 rows");
  if (splits < 1 || splits > 65535) throw std::invalid_argument("recipe_kernels._C.cross_entropy_fwd: bad split count");
  if (grad_output_kind < kNoGradOutput || grad_output_kind > kPerRowGradOutput) {
    throw std::invalid_argument("recipe_kernels._C.cross_entropy_fwd: unknown grad_output_kind");
  }
  CrossEntropyArgs a{reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(target),
                     reinterpret_cast<const int64_t*>(target_b), reinterpret_cast<const float*>(lam),
                     reinterpret_cast<const float*>(weight), reinterpret_cast<float*>(denominator),
                     reinterpret_cast<const float*>(grad_output), reinterpret_cast<float*>(loss),
                     reinterpret_cast<float*>(lse), reinterpret_cast<void*>(grad), reinterpret_cast<float*>(partial),
                     num_classes, inner_size, ceil_div(num_classes, splits), splits, num_partials, rows, ignore_index,
                     label_smoothing, z_loss, mean,
                     grad_output_kind, grad_of_target};
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  if (kind == kIndexTarget && mean) {
    index_denominator_kernel<<<static_cast<unsigned>(num_partials), kDenominatorThreads, 0, cuda_stream>>>(
        a.target, a.weight, a.denominator, rows, num_classes, ignore_index, rows_per_partial);
  }
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    auto launch = [&](auto fwd, auto finish) {
      fwd<<<grid, kThreads, 0, cuda_stream>>>(a);
      if (splits > 1) finish<<<grid, kThreads, 0, cuda_stream>>>(a);
    };
    switch (kind) {
      case kIndexTarget:
        launch(cross_entropy_fwd_kernel<T, kIndexTarget>, cross_entropy_split_finish_kernel<T, kIndexTarget>);
        break;
      case kMixedTarget:
        launch(cross_entropy_fwd_kernel<T, kMixedTarget>, cross_entropy_split_finish_kernel<T, kMixedTarget>);
        break;
      case kProbabilityTarget:
        launch(cross_entropy_fwd_kernel<T, kProbabilityTarget>,
               cross_entropy_split_finish_kernel<T, kProbabilityTarget>);
        break;
      default: throw std::invalid_argument("recipe_kernels._C.cross_entropy_fwd: unknown target kind");
    }
    check_launch("cross_entropy_fwd");
  });
}

void cross_entropy_scale_grad(uintptr_t grad, uintptr_t factor, int64_t n, int64_t num_classes, int64_t inner_size,
                              bool per_row, int64_t max_blocks, int dtype, uintptr_t stream) {
  if (n <= 0) return;
  const int64_t blocks = scale_blocks(n, max_blocks);
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
    scale_gradient_kernel<T><<<static_cast<unsigned>(blocks), kScaleThreads, 0, cuda_stream>>>(
        reinterpret_cast<T*>(grad), reinterpret_cast<const float*>(factor), n, num_classes, inner_size, per_row,
        grad % 16 == 0);
    check_launch("cross_entropy_scale_grad");
  });
}

// cross_entropy_scale_grad's CUDA code run on the CPU over every thread of its grid (CPU pointers).
void cross_entropy_scale_grad_host(uintptr_t grad, uintptr_t factor, int64_t n, int64_t num_classes,
                                   int64_t inner_size, bool per_row, int64_t max_blocks, int dtype) {
  if (n <= 0) return;
  const int64_t threads = scale_blocks(n, max_blocks) * kScaleThreads;
  dispatch_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    for (int64_t thread = 0; thread < threads; ++thread) {
      scale_gradient_thread(reinterpret_cast<T*>(grad), reinterpret_cast<const float*>(factor), n, num_classes,
                            inner_size, per_row, grad % 16 == 0, thread, threads);
    }
  });
}

namespace {

// block_merge on the CPU: the same butterfly of merges within each warp, then across the warps' results.
RowStats block_merge_host(RowStats (&stats)[kThreads]) {
  auto butterfly = [](RowStats* lanes) {
    for (int mask = 16; mask > 0; mask >>= 1) {
      RowStats merged[32];
      for (int lane = 0; lane < 32; ++lane) merged[lane] = merge_stats(lanes[lane], lanes[lane ^ mask]);
      std::copy(merged, merged + 32, lanes);
    }
  };
  RowStats per_warp[32];
  for (int warp = 0; warp < 32; ++warp) {
    if (warp < kWarps) butterfly(stats + warp * 32);
    per_warp[warp] = warp < kWarps ? stats[warp * 32] : empty_stats();
  }
  butterfly(per_warp);
  return per_warp[0];
}

}  // namespace

// The kernels' arithmetic on the CPU for fp32 (rows, C) logits: losses and gradients for grad_scale 1,
// with respect to the logits or (of_target, probabilities) to the target.
// Each row is cut into chunks of `chunk` classes as split rows are (a chunk >= C: one block per row);
// within a chunk every thread of a block gathers its classes and block_merge's order combines them;
// the chunks then merge in order, as the finishing kernel does. For tests without a GPU.
void cross_entropy_host(const float* x, const int64_t* target, const int64_t* target_b, const float* lam,
                        const float* weight, const float* q, int64_t rows, int64_t num_classes, int64_t ignore_index,
                        float label_smoothing, float z_loss, int kind, int64_t chunk, bool of_target, float* loss,
                        float* grad) {
  const bool smoothing = label_smoothing > 0.f;
  RowStats per_thread[kThreads];
  for (int64_t row = 0; row < rows; ++row) {
    const float* xr = x + row * num_classes;
    const float* qr = q == nullptr ? nullptr : q + row * num_classes;
    const RowCoefficients k = row_coefficients(kind, target, target_b, lam, weight, row, row, num_classes,
                                               ignore_index, label_smoothing);
    RowStats stats = empty_stats();
    for (int64_t start = 0; start < num_classes; start += chunk) {
      const int64_t end = std::min(start + chunk, num_classes);
      for (int thread = 0; thread < kThreads; ++thread) {
        per_thread[thread] = thread_statistics<float>(xr, weight, qr, 0, 1, start, end, thread, smoothing,
                                                      kind == kProbabilityTarget);
      }
      stats = merge_stats(stats, block_merge_host(per_thread));
    }
    if (weight == nullptr) stats.sum_w = static_cast<float>(num_classes);
    const float log_sum = log_approx(stats.sum_exp);
    const float x_a = k.y_a >= 0 && k.y_a < num_classes ? xr[k.y_a] : 0.f;
    const float x_b = k.y_b >= 0 && k.y_b < num_classes ? xr[k.y_b] : 0.f;
    float factor;
    row_loss_and_factor(stats, k, x_a, x_b, label_smoothing, z_loss, log_sum, &loss[row], &factor);
    for (int64_t c = 0; c < num_classes; ++c) {
      const float w = weight != nullptr ? weight[c] : 1.f;
      grad[row * num_classes + c] =
          of_target ? target_gradient_element(xr[c], w, stats.max, log_sum, label_smoothing, 1.f)
                    : gradient_element(c, xr[c], w, qr != nullptr ? qr[c] : 0.f, stats.max, log_sum, factor, k,
                                       label_smoothing, 1.f);
    }
  }
}

}  // namespace recipe_kernels
