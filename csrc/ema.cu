// Multi-tensor EMA of model weights: e <- lerp(e, p, 1 - d) for every tensor pair in one launch,
// with the decays from a tensor (ema_update) or from ModelEMA's schedule (ema_scheduled_update,
// which also advances its counter). The Python side (recipe_kernels/ema.py) builds the chunk
// table: one row of four int64 per chunk of at most `chunk` elements,
//   [e address, p address, element count, codes = e code | p code << 4 | decay slot << 8 | aligned << 12],
// with the dtype codes of codes.h (kFloat32 ... kFloat64, and kRawBytes for rows copied byte for
// byte). The math is fp64 for pairs with an fp64 side, else fp32; the decays are fp64.
//
// As in dropout.cu, each kernel's body is a __host__ __device__ function of (block, thread, grid):
// the __global__ kernel calls it once per GPU thread, and the *_host entry points call it for
// every thread of the same grid on CPU memory (a table built for CPU tensors holds CPU addresses),
// so the tests without a GPU run this very code against the torch backend.
#include <cmath>
#include <type_traits>

#include "common.cuh"

namespace recipe_kernels {

// The math type of a pair: double when either side is fp64, else float (as the other backends).
template <typename E, typename P>
using EmaMath = std::conditional_t<std::is_same_v<E, double> || std::is_same_v<P, double>, double, float>;

constexpr int kParamCodeShift = 4;
constexpr int kDecaySlotShift = 8;
// The code fields' width. Bit 12 (both addresses 16-byte aligned) is the Triton kernel's; this one
// checks alignment itself.
constexpr int64_t kCodeMask = (1 << kParamCodeShift) - 1;

struct EmaChunk {
  int64_t ema_address;
  int64_t param_address;
  int64_t count;
  int64_t codes;
};

// torch.lerp(e, p, w) with w = 1 - d, written as base + coeff*(p - e), in the math type M:
//   |w| < 0.5: e + w*(p - e); else p + (w - 1)*(p - e), which is p - (p - e)*(1 - w) exactly.
// p == e adds or subtracts an exact zero, so e stays e. Only the final add of a product could be
// contracted into an FMA; mul_rn and add_rn keep the two roundings (bit-equal to the other backends).
template <typename M>
struct EmaLerp {
  bool from_ema;  // the base is e (else p)
  M coeff;        // w, or w - 1
};

template <typename M>
__host__ __device__ inline EmaLerp<M> ema_lerp(M d) {
  const M weight = M(1) - d;
  const bool from_ema = weight < M(0.5) && weight > M(-0.5);  // |w| < 0.5, false for NaN
  return EmaLerp<M>{from_ema, from_ema ? weight : weight - M(1)};
}

// The EMA of one element; d == 0 gives p exactly. d == 1 never gets here: the kernel skips such
// chunks, leaving e untouched.
template <typename M>
__host__ __device__ inline M ema_blend(M e, M p, M d, EmaLerp<M> lerp) {
  const M blended = add_rn(lerp.from_ema ? e : p, mul_rn(lerp.coeff, p - e));
  return d == M(0) ? p : blended;
}

// ModelEMA's schedule for update t (1-based), in fp64 with the warmup term rounded to fp32, as
// recipe_kernels.reference.ema_decays.
struct EmaSchedule {
  double decay;
  bool warmup;
  double warmup_gamma;
  double warmup_power;
  double min_decay;
  int64_t update_after_step;
  int64_t update_every;
};

struct EmaDecays {
  double average;  // parameters and averaged buffers
  double copy;     // copied buffers: 0 copies, 1 skips
};

__host__ __device__ inline EmaDecays ema_decays(int64_t t, const EmaSchedule& s) {
  double average = s.decay;
  if (s.warmup) {
    const double steps_after = static_cast<double>(t - s.update_after_step);
    // Rounded to fp32: exp and log differ in the last fp64 bit across backends; this makes them agree.
    const double warm = to_float(1.0 - exp(-s.warmup_power * log(1.0 + steps_after / s.warmup_gamma)));
    average = fmin(average, fmax(s.min_decay, warm));
  }
  if (t <= s.update_after_step) average = 0.0;
  const bool skipped = t % s.update_every != 0;
  if (skipped) average = 1.0;
  return EmaDecays{average, skipped ? 1.0 : 0.0};
}

namespace {

// `pointer`, of global memory: the GPU code reads and writes it with global, not generic, accesses.
// Table addresses need this said at each access: the compiler loses it across a loop's pointer arithmetic.
template <typename T>
RK_HOST_DEVICE T* assume_global(T* pointer) {
#ifdef __CUDA_ARCH__
  __builtin_assume(__isGlobal(pointer));
#endif
  return pointer;
}

constexpr int kStep = 8;  // elements a thread moves per step: whole 16-byte vectors of every dtype

// One chunk of one pair, for thread `thread` of a block of `threads`: count elements of E at ema
// and of P at param, in their math type with d = decay rounded to it; a d of exactly 1 there
// skips the chunk, reading nothing. Each thread moves eight consecutive elements per step, as
// 16-byte vectors when both addresses are 16-byte aligned, else (and in the chunk's tail) one by one.
template <typename E, typename P>
RK_HOST_DEVICE void blend_chunk(E* __restrict__ ema, const P* __restrict__ param, int64_t count, double decay,
                                int64_t thread, int64_t threads) {
  using M = EmaMath<E, P>;
  const M d = from_math<M>(decay);  // fp32 math rounds the decay to fp32 once
  if (d == M(1)) return;
  const EmaLerp<M> lerp = ema_lerp(d);
  const bool aligned = reinterpret_cast<uintptr_t>(ema) % 16 == 0 && reinterpret_cast<uintptr_t>(param) % 16 == 0;
  for (int64_t first = thread * kStep; first < count; first += threads * kStep) {
    const bool whole = aligned && first + kStep <= count;
    E* const ema_step = assume_global(ema + first);
    M e[kStep], p[kStep];
    load_vectors(assume_global(param + first), whole, count - first, p);
    load_vectors(ema_step, whole, count - first, e);
#pragma unroll
    for (int j = 0; j < kStep; ++j) e[j] = ema_blend(e[j], p[j], d, lerp);
    store_vectors(ema_step, whole, count - first, e);
  }
}

template <typename E>
RK_HOST_DEVICE void blend_chunk_for_param(int param_code, E* ema, int64_t param_address, int64_t count, double d,
                                          int64_t thread, int64_t threads) {
  switch (param_code) {
    case kFloat32: blend_chunk(ema, reinterpret_cast<const float*>(param_address), count, d, thread, threads); break;
    case kFloat16: blend_chunk(ema, reinterpret_cast<const __half*>(param_address), count, d, thread, threads); break;
    case kBFloat16:
      blend_chunk(ema, reinterpret_cast<const __nv_bfloat16*>(param_address), count, d, thread, threads);
      break;
    default: blend_chunk(ema, reinterpret_cast<const double*>(param_address), count, d, thread, threads); break;
  }
}

// e <- lerp(e, p, 1 - d) over the chunk of one table row, for thread `thread` of a block of `threads`.
// Bytes: reads p and e and writes e once each, plus the 32 table bytes. A decay of exactly 1 (in the
// pair's math type) skips the chunk, reading nothing.
RK_HOST_DEVICE void ema_update_row(const EmaChunk& row, double d, int64_t thread, int64_t threads) {
  const int ema_code = static_cast<int>(row.codes & kCodeMask);
  const int param_code = static_cast<int>((row.codes >> kParamCodeShift) & kCodeMask);
  switch (ema_code) {
    case kFloat32:
      blend_chunk_for_param(param_code, reinterpret_cast<float*>(row.ema_address), row.param_address, row.count, d,
                            thread, threads);
      break;
    case kFloat16:
      blend_chunk_for_param(param_code, reinterpret_cast<__half*>(row.ema_address), row.param_address, row.count, d,
                            thread, threads);
      break;
    case kBFloat16:
      blend_chunk_for_param(param_code, reinterpret_cast<__nv_bfloat16*>(row.ema_address), row.param_address,
                            row.count, d, thread, threads);
      break;
    case kFloat64:
      blend_chunk_for_param(param_code, reinterpret_cast<double*>(row.ema_address), row.param_address, row.count, d,
                            thread, threads);
      break;
    case kRawBytes: {  // an integer buffer, copied unless skipped
      if (d == 1.0) break;
      auto* ema = reinterpret_cast<unsigned char*>(row.ema_address);
      const auto* param = reinterpret_cast<const unsigned char*>(row.param_address);
      for (int64_t i = thread; i < row.count; i += threads) *assume_global(ema + i) = *assume_global(param + i);
      break;
    }
    default: break;  // no other codes are written by recipe_kernels/ema.py
  }
}

RK_HOST_DEVICE int decay_slot(const EmaChunk& row) {
  return static_cast<int>((row.codes >> kDecaySlotShift) & kCodeMask);
}

// ema_update: the decay of each row is decays[its slot] (fp64). 8 more bytes per block.
RK_HOST_DEVICE void ema_update_thread(const EmaChunk* __restrict__ table, const double* __restrict__ decays,
                                      int64_t block, int64_t thread, int64_t threads) {
  const EmaChunk row = table[block];
  ema_update_row(row, decays[decay_slot(row)], thread, threads);
}

// ema_scheduled_update: the row's decay is the schedule's average decay (slot kAverageSlot: parameters
// and averaged buffers) or its copy decay (copied buffers).
constexpr int kAverageSlot = 0;

RK_HOST_DEVICE void ema_scheduled_update_thread(const EmaChunk* __restrict__ table, const EmaDecays& decays,
                                                int64_t block, int64_t thread, int64_t threads) {
  const EmaChunk row = table[block];
  ema_update_row(row, decay_slot(row) == kAverageSlot ? decays.average : decays.copy, thread, threads);
}

// A block's count in programs_done: atomic on the GPU; the emulation runs one block at a time.
RK_HOST_DEVICE unsigned int count_finished_block(unsigned int* programs_done) {
#ifdef __CUDA_ARCH__
  __threadfence();  // this block's reads of num_updates come before the last block's write
  return atomicAdd(programs_done, 1u);
#else
  return (*programs_done)++;
#endif
}

// Thread 0 of each block, once the block is done: the last block to finish stores t and the decays
// it used, and resets the count for the next launch. 28 bytes.
RK_HOST_DEVICE void finish_scheduled_block(int64_t* num_updates, unsigned int* programs_done, double* decays,
                                           int64_t t, const EmaDecays& used, int64_t num_blocks) {
  if (count_finished_block(programs_done) == num_blocks - 1) {
    *num_updates = t;
    *programs_done = 0;
    decays[0] = used.average;
    decays[1] = used.copy;
  }
}

__global__ void ema_update_kernel(const EmaChunk* __restrict__ table, const double* __restrict__ decays) {
  ema_update_thread(table, decays, blockIdx.x, threadIdx.x, blockDim.x);
}

// Every block computes the schedule of t = num_updates + 1 (a few fp64 operations); the last one
// to finish advances num_updates.
__global__ void ema_scheduled_update_kernel(const EmaChunk* __restrict__ table, int64_t* num_updates,
                                            unsigned int* programs_done, double* decays, EmaSchedule schedule) {
  const int64_t t = *num_updates + 1;
  const EmaDecays used = ema_decays(t, schedule);
  ema_scheduled_update_thread(table, used, blockIdx.x, threadIdx.x, blockDim.x);
  __syncthreads();  // every thread of the block has read num_updates
  if (threadIdx.x == 0) finish_scheduled_block(num_updates, programs_done, decays, t, used, gridDim.x);
}

// What the GPU launch and its emulation both refuse.
void check_update_grid(int64_t num_chunks, int64_t chunk, int threads) {
  if (num_chunks > INT32_MAX) throw std::invalid_argument("recipe_kernels._C.ema_update: more than 2^31 chunks");
  if (chunk <= 0 || threads <= 0) throw std::invalid_argument("recipe_kernels._C.ema_update: bad chunk or threads");
}

}  // namespace

// ----------------------------------------------------------------------------- GPU launchers

void ema_update(uintptr_t table, int64_t num_chunks, uintptr_t decays, int64_t chunk, int threads, uintptr_t stream) {
  if (num_chunks <= 0) return;
  check_update_grid(num_chunks, chunk, threads);
  ema_update_kernel<<<static_cast<unsigned>(num_chunks), threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const EmaChunk*>(table), reinterpret_cast<const double*>(decays));
  check_launch("ema_update");
}

void ema_scheduled_update(uintptr_t table, int64_t num_chunks, uintptr_t num_updates, uintptr_t programs_done,
                          uintptr_t decays, double decay, bool warmup, double warmup_gamma, double warmup_power,
                          double min_decay, int64_t update_after_step, int64_t update_every, int64_t chunk, int threads,
                          uintptr_t stream) {
  if (num_chunks <= 0) return;
  check_update_grid(num_chunks, chunk, threads);
  const EmaSchedule schedule{decay, warmup, warmup_gamma, warmup_power, min_decay, update_after_step, update_every};
  ema_scheduled_update_kernel<<<static_cast<unsigned>(num_chunks), threads, 0,
                                reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const EmaChunk*>(table), reinterpret_cast<int64_t*>(num_updates),
      reinterpret_cast<unsigned int*>(programs_done), reinterpret_cast<double*>(decays), schedule);
  check_launch("ema_scheduled_update");
}

// ----------------------------------------------------------------------------- CPU emulation of the same code
// Pointers are to CPU memory (the table's addresses too); every thread of the GPU grid runs in turn.

void ema_update_host(uintptr_t table, int64_t num_chunks, uintptr_t decays, int64_t chunk, int threads) {
  if (num_chunks <= 0) return;
  check_update_grid(num_chunks, chunk, threads);
  for (int64_t block = 0; block < num_chunks; ++block) {
    for (int64_t thread = 0; thread < threads; ++thread) {
      ema_update_thread(reinterpret_cast<const EmaChunk*>(table), reinterpret_cast<const double*>(decays), block,
                        thread, threads);
    }
  }
}

void ema_scheduled_update_host(uintptr_t table, int64_t num_chunks, uintptr_t num_updates, uintptr_t programs_done,
                               uintptr_t decays, double decay, bool warmup, double warmup_gamma, double warmup_power,
                               double min_decay, int64_t update_after_step, int64_t update_every, int64_t chunk,
                               int threads) {
  if (num_chunks <= 0) return;
  check_update_grid(num_chunks, chunk, threads);
  const EmaSchedule schedule{decay, warmup, warmup_gamma, warmup_power, min_decay, update_after_step, update_every};
  auto* counter = reinterpret_cast<int64_t*>(num_updates);
  for (int64_t block = 0; block < num_chunks; ++block) {
    const int64_t t = *counter + 1;
    const EmaDecays used = ema_decays(t, schedule);
    for (int64_t thread = 0; thread < threads; ++thread) {
      ema_scheduled_update_thread(reinterpret_cast<const EmaChunk*>(table), used, block, thread, threads);
    }
    finish_scheduled_block(counter, reinterpret_cast<unsigned int*>(programs_done), reinterpret_cast<double*>(decays),
                           t, used, num_chunks);
  }
}

void ema_blend_host(const float* ema, const float* param, float* out, int64_t n, float decay) {
  const EmaLerp<float> lerp = ema_lerp(decay);
  for (int64_t i = 0; i < n; ++i) out[i] = decay == 1.0f ? ema[i] : ema_blend(ema[i], param[i], decay, lerp);
}

void ema_decays_host(int64_t t, double decay, bool warmup, double warmup_gamma, double warmup_power,
                     double min_decay, int64_t update_after_step, int64_t update_every, double* out) {
  const EmaDecays result =
      ema_decays(t, EmaSchedule{decay, warmup, warmup_gamma, warmup_power, min_decay, update_after_step, update_every});
  out[0] = result.average;
  out[1] = result.copy;
}

}  // namespace recipe_kernels
