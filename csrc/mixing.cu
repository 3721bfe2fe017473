// CutMix, MixUp and random erasing: per-sample batch compositing, and in-place CutMix by box swap.
// The Python side (recipe_kernels/mixing.py) samples the per-sample parameters with torch ops on the
// device and passes raw pointers; boxes are therefore not computed here.
//
// As in dropout.cu, each kernel's body is a __host__ __device__ function of (block, thread): the
// __global__ kernel calls it once per GPU thread, and the *_host entry points call it for every thread
// of the same grid on CPU memory, so the tests without a GPU run this very code against the reference.
#include <cmath>

#include "common.cuh"
#include "philox.cuh"

namespace recipe_kernels {
namespace {  // everything but the entry points declared in bindings.cpp is local to this file

// The composited value of one element before rounding: own = x[n], other = x[partner], fill = the
// erase value; `inside` says whether the element lies in the sample's box.
RK_HOST_DEVICE float composite_value(int mode, bool inside, float own, float other, float lam, float fill) {
  if (mode == kMixUp) return mixup_rn(lam, own, other);
  if (inside && mode == kCutMix) return other;
  if (inside && mode == kErase) return fill;
  return own;
}

// What a uint8 stores for a fp32 value: rounded half up, saturated to [0, 255].
RK_HOST_DEVICE float round_half_up_uint8(float value) {
  return fminf(fmaxf(floorf(value + 0.5f), 0.0f), 255.0f);
}

// cosf(angle) for 0 <= angle < 105615 (the Box-Muller angle lies in [0, 2 pi)): the steps of the CUDA
// math library's cosf (Triton's too) without its Payne-Hanek reduction of huge arguments, whose scratch
// array costs local memory: angle less q pi/2 in three FMAs (Cody-Waite), then the polynomial of sin or
// cos by q's parity, negated in the upper quadrants. On the GPU it equals cosf bit for bit; the host
// runs the same steps (fmaf and rintf are exact there too). Within 1.5 ulp of cos over every angle
// the noise takes; glibc's cosf differs from it by an ulp for about a fifth of them.
RK_HOST_DEVICE float cos_small_angle(float angle) {
  const float quadrant = rintf(mul_rn(angle, 0x1.45f306p-1f));  // angle * 2/pi, to nearest even
  float r = fmaf(quadrant, -0x1.921fb4p+0f, angle);            // angle - quadrant * pi/2 ...
  r = fmaf(quadrant, -0x1.4442d0p-24f, r);
  r = fmaf(quadrant, -0x1.84698ap-48f, r);                     // ... in [-pi/4, pi/4]
  const int shifted = static_cast<int>(quadrant) + 1;          // cos(a) = sin(a + pi/2)
  const bool sine = (shifted & 1) == 0;
  const float r2 = mul_rn(r, r);
  float poly = sine ? -0x1.9a82a6p-13f : fmaf(0x1.9758p-16f, r2, -0x1.6c0fdap-10f);
  poly = fmaf(poly, r2, sine ? 0x1.110bc8p-7f : 0x1.555576p-5f);
  poly = fmaf(poly, r2, sine ? -0x1.55555p-3f : -0x1.fffffep-2f);
  const float base = sine ? r : 1.0f;
  float result = fmaf(poly, fmaf(r2, base, 0.0f), base);  // r + r^3 poly, or 1 + r^2 poly
  if (shifted & 2) result = fmaf(result, -1.0f, 0.0f);    // as cosf negates: -0 becomes +0
  return result;
}

// Standard normal noise of the element with logical NCHW index `index`: Box-Muller on words 0 and 1
// of Philox(seed, index). Same steps as recipe_kernels.reference.erase_noise; logf and cosf are the
// only steps that may differ from other math libraries (by an ulp or two).
RK_HOST_DEVICE float erase_noise(uint64_t seed, uint64_t index) {
  const PhiloxWords words = philox4x32(seed, index);
  const float two_pow_minus_24 = 5.9604644775390625e-08f;
  const float u1 = static_cast<float>((words.word[0] >> 8) + 1) * two_pow_minus_24;  // (0, 1]
  const float u2 = static_cast<float>(words.word[1] >> 8) * two_pow_minus_24;        // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cos_small_angle(u2 * 6.2831855f);
}

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 8;

RK_HOST_DEVICE float load_float(const uint8_t* p) { return static_cast<float>(*p); }
template <typename T>
RK_HOST_DEVICE float load_float(const T* p) { return to_float(*p); }

template <typename T>
RK_HOST_DEVICE T store_value(float v) { return from_float<T>(v); }
template <>
RK_HOST_DEVICE uint8_t store_value<uint8_t>(float v) { return static_cast<uint8_t>(v); }

// The fp32 value rounded to what x's dtype T stores (the value an unfused op would write).
template <typename T>
RK_HOST_DEVICE float round_to_input(float v) { return to_float(from_float<T>(v)); }
template <>
RK_HOST_DEVICE float round_to_input<float>(float v) { return v; }
template <>
RK_HOST_DEVICE float round_to_input<uint8_t>(float v) { return round_half_up_uint8(v); }

// (value - mean) / std correctly rounded, as torch computes it; the host's IEEE a - b and a / b are the same.
RK_HOST_DEVICE float normalize_rn(float value, float mean, float std_dev) {
  return div_rn(sub_rn(value, mean), std_dev);
}

struct Geometry {
  int64_t num_samples, channels, height, width;
  int64_t rows_per_block;  // kRowsPerBlock, or more for the vector path so that a block's threads have work
  int64_t vector_elements;  // elements per 16-byte vector of x (the vector path), or 1 (one at a time)
  int64_t sample_stride;  // C*H*W
  int64_t plane_stride;   // H*W (contiguous) or 0 (channels_last: one plane holds all channels)
  int64_t row_stride;     // W (contiguous) or W*C (channels_last)
  int64_t pixel_stride;   // 1 (contiguous) or C (channels_last)
  int64_t channels_per_pixel;  // 1 (contiguous: the plane is the channel) or C
  int64_t planes;         // C or 1
  int64_t row_blocks;     // ceil(H / rows_per_block)
  bool channels_last;
};

// vector_elements: elements of x per 16-byte vector when every row starts 16-byte aligned in x and
// in out (composite_batch's vector path), else 1.
Geometry make_geometry(int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last, int64_t vector_elements = 1) {
  Geometry g{n, c, h, w, kRowsPerBlock, vector_elements, c * h * w, 0, 0, 0, 0, 0, 0, channels_last};
  g.plane_stride = channels_last ? 0 : h * w;
  g.row_stride = channels_last ? w * c : w;
  g.pixel_stride = channels_last ? c : 1;
  g.channels_per_pixel = channels_last ? c : 1;
  g.planes = channels_last ? 1 : c;
  if (vector_elements > 1) {  // enough rows per block for every thread to hold a vector
    const int64_t vectors_per_row = g.row_stride / vector_elements;
    const int64_t rows = ceil_div(kThreads, vectors_per_row);
    g.rows_per_block = rows > kRowsPerBlock ? rows : kRowsPerBlock;
  }
  g.row_blocks = ceil_div(h, g.rows_per_block);
  return g;
}

constexpr int64_t kVectorBytes = 16;

// The elements a thread moves at once on the vector path: 16 bytes of the narrower of x and out, so
// that both move in whole 16-byte vectors.
constexpr int64_t vector_elements(size_t in_size, size_t out_size) {
  return kVectorBytes / static_cast<int64_t>(in_size < out_size ? in_size : out_size);
}

// vector_elements when the vector path applies: the row length is a multiple of it and x and out
// start 16-byte aligned; else 1.
int64_t vector_elements_for(uintptr_t x, uintptr_t out, int64_t c, int64_t w, bool channels_last, size_t in_size,
                            size_t out_size) {
  const int64_t elements = vector_elements(in_size, out_size);
  const int64_t row_len = channels_last ? w * c : w;
  const bool aligned = x % kVectorBytes == 0 && out % kVectorBytes == 0;
  return (row_len % elements == 0 && aligned) ? elements : 1;
}

// Block coordinates, the same visit order as the Triton kernel: (slot, plane, row block), row blocks fastest.
// With visit_flip_pairs, slots 0, 1, 2, 3, ... are samples 0, N-1, 1, N-2, ... so that a sample and its
// flip partner are read by neighbouring blocks (the partner's read hits L2).
RK_HOST_DEVICE void block_coordinates(const Geometry& g, bool visit_flip_pairs, int64_t block, int64_t& sample,
                                      int64_t& plane, int64_t& row_block) {
  row_block = block % g.row_blocks;
  plane = (block / g.row_blocks) % g.planes;
  const int64_t slot = block / (g.row_blocks * g.planes);
  sample = visit_flip_pairs ? ((slot % 2 == 0) ? slot / 2 : g.num_samples - 1 - slot / 2) : slot;
}

// N consecutive elements, whole 16-byte vectors of them, moved as such.
template <typename T, int N>
struct alignas(16) Vector {
  static_assert(sizeof(T) * N % 16 == 0, "whole 16-byte vectors");
  T v[N];
};

// Loads a Vector as 16-byte pieces.
template <typename V>
RK_HOST_DEVICE V load_vector(const V* source) {
  V value;
#pragma unroll
  for (size_t piece = 0; piece < sizeof(V) / 16; ++piece) {
    const Vec16<uint32_t> bits = reinterpret_cast<const Vec16<uint32_t>*>(source)[piece];
    memcpy(reinterpret_cast<char*>(&value) + 16 * piece, &bits, sizeof bits);
  }
  return value;
}

// Stores a Vector as 16-byte pieces: a struct copy of 16-bit elements would be split into 4-byte stores.
template <typename V>
RK_HOST_DEVICE void store_vector(V* destination, const V& value) {
#pragma unroll
  for (size_t piece = 0; piece < sizeof(V) / 16; ++piece) {
    Vec16<uint32_t> bits;
    memcpy(&bits, reinterpret_cast<const char*>(&value) + 16 * piece, sizeof bits);
    store_vec16(reinterpret_cast<uint32_t*>(destination) + 4 * piece, bits);
  }
}

// One element of composite_thread: composite, round to x's dtype, normalize (correctly rounded, as torch).
template <typename TIn, typename TOut>
RK_HOST_DEVICE TOut composite_element(int mode, bool inside, float own, float other, float lam, const float* fill,
                                      const float* mean, const float* std_dev, const int64_t* seed_ptr,
                                      uint64_t seed, int64_t logical, int64_t channel) {
  float fill_value = 0.0f;
  if (mode == kErase && inside) {
    fill_value = seed_ptr != nullptr ? erase_noise(seed, static_cast<uint64_t>(logical)) : fill[channel];
  }
  float value = round_to_input<TIn>(composite_value(mode, inside, own, other, lam, fill_value));
  if (mean != nullptr) value = normalize_rn(value, mean[channel], std_dev[channel]);
  return store_value<TOut>(value);
}

// out[n] = KEEP / MIXUP / CUTMIX / ERASE of x[n] with x[partner[n]], then optionally (v - mean[c]) / std[c].
// Rows whose length is a multiple of a 16-byte vector of x, with x and out aligned, move as 16-byte vectors
// of x (and the same count of out's elements); other shapes one element at a time.
// Inputs: x (N, C, H, W) contiguous or channels_last; box (N, 4) int32 (x0, y0, x1, y1), lam (N,) fp32,
// partner (N,) int32, mode (N,) int32, fill (C,) fp32, mean and std (C,) fp32 or null, seed (one int64) or
// null (then ERASE writes fill). out has x's layout. A block covers kRowsPerBlock rows of one (sample, plane);
// a thread walks pixels of a row and, for channels_last, the C channels of each pixel.
// Bytes: each output element's source is read once (MixUp: both sources), out is written once.
// This is one thread's share: thread `thread` (of kThreads) of block `block`.
template <typename TIn, typename TOut>
RK_HOST_DEVICE void composite_thread(const TIn* __restrict__ x, TOut* __restrict__ out,
                                     const int32_t* __restrict__ box, const float* __restrict__ lam_ptr,
                                     const int32_t* __restrict__ partner_ptr, const int32_t* __restrict__ mode_ptr,
                                     const float* __restrict__ fill, const float* __restrict__ mean,
                                     const float* __restrict__ std_dev, const int64_t* __restrict__ seed_ptr,
                                     const Geometry& g, bool visit_flip_pairs, int64_t block, int64_t thread) {
  // 1. The block's sample and its parameters.
  int64_t sample, plane, row_block;
  block_coordinates(g, visit_flip_pairs, block, sample, plane, row_block);
  const int mode = mode_ptr[sample];
  int64_t partner = partner_ptr[sample];
  partner = partner < 0 ? 0 : (partner >= g.num_samples ? g.num_samples - 1 : partner);
  const float lam = lam_ptr[sample];
  const int64_t x0 = box[sample * 4], y0 = box[sample * 4 + 1], x1 = box[sample * 4 + 2], y1 = box[sample * 4 + 3];
  const uint64_t seed = seed_ptr != nullptr ? static_cast<uint64_t>(*seed_ptr) : 0;
  const int64_t partner_shift = (partner - sample) * g.sample_stride;
  const bool cuts = mode == kCutMix || mode == kErase;

  const int64_t row_end = (row_block + 1) * g.rows_per_block < g.height ? (row_block + 1) * g.rows_per_block
                                                                         : g.height;
  if (g.vector_elements > 1) {
    // 2. The vector path: the block's rows as one list of vectors (16 bytes of the narrower of x and out),
    // vector t, t + kThreads, ... to thread t; each vector loads only the sources its elements take
    // (CutMix: one, except a vector straddling the box's edge).
    constexpr int kN = static_cast<int>(vector_elements(sizeof(TIn), sizeof(TOut)));
    const int64_t vectors_per_row = g.row_stride / kN;
    const int64_t row_begin = row_block * g.rows_per_block;
    for (int64_t index = thread; index < (row_end - row_begin) * vectors_per_row; index += kThreads) {
      const int64_t row = row_begin + index / vectors_per_row;
      const int64_t first = (index % vectors_per_row) * kN;
      const bool row_in_box = row >= y0 && row < y1;
      const int64_t first_pixel = first / g.pixel_stride, last_pixel = (first + kN - 1) / g.pixel_stride;
      const bool all_inside = row_in_box && first_pixel >= x0 && last_pixel < x1;
      const bool any_inside = row_in_box && last_pixel >= x0 && first_pixel < x1;
      const int64_t offset = sample * g.sample_stride + plane * g.plane_stride + row * g.row_stride + first;
      Vector<TIn, kN> own, other;
      if (!(cuts && all_inside)) own = load_vector(reinterpret_cast<const Vector<TIn, kN>*>(x + offset));
      if (mode == kMixUp || (mode == kCutMix && any_inside)) {
        other = load_vector(reinterpret_cast<const Vector<TIn, kN>*>(x + offset + partner_shift));
      }
      Vector<TOut, kN> result;
      int64_t pixel = first_pixel, channel = g.channels_last ? first % g.channels : plane;
#pragma unroll  // a runtime index would put own, other and result in local memory
      for (int k = 0; k < kN; ++k) {  // 3. Per element, as in the path below.
        const bool inside = row_in_box && pixel >= x0 && pixel < x1;
        const int64_t logical = ((sample * g.channels + channel) * g.height + row) * g.width + pixel;
        result.v[k] = composite_element<TIn, TOut>(mode, inside, load_float(&own.v[k]), load_float(&other.v[k]), lam,
                                                   fill, mean, std_dev, seed_ptr, seed, logical, channel);
        if (!g.channels_last) {
          ++pixel;
        } else if (++channel == g.channels) {
          channel = 0;
          ++pixel;
        }
      }
      store_vector(reinterpret_cast<Vector<TOut, kN>*>(out + offset), result);
    }
    return;
  }
  // 2. One element at a time (rows not 16-byte aligned): thread t takes pixels t, t + kThreads, ... of each row.
  for (int64_t row = row_block * g.rows_per_block; row < row_end; ++row) {
    const bool row_in_box = row >= y0 && row < y1;
    const int64_t row_base = sample * g.sample_stride + plane * g.plane_stride + row * g.row_stride;
    for (int64_t pixel = thread; pixel < g.width; pixel += kThreads) {  // the launch's blockDim.x
      const bool inside = row_in_box && pixel >= x0 && pixel < x1;
      // Load only the source each element takes: CutMix reads one input per element.
      const bool takes_partner = mode == kMixUp || (mode == kCutMix && inside);
      const bool takes_own = !(cuts && inside);
      for (int64_t k = 0; k < g.channels_per_pixel; ++k) {
        const int64_t offset = row_base + pixel * g.pixel_stride + k;
        const int64_t channel = g.channels_last ? k : plane;
        const float own = takes_own ? load_float(x + offset) : 0.0f;
        const float other = takes_partner ? load_float(x + offset + partner_shift) : 0.0f;
        // 3. Composite in fp32, round to x's dtype, normalize (correctly rounded, as torch), store.
        const int64_t logical = ((sample * g.channels + channel) * g.height + row) * g.width + pixel;
        out[offset] = composite_element<TIn, TOut>(mode, inside, own, other, lam, fill, mean, std_dev, seed_ptr,
                                                   seed, logical, channel);
      }
    }
  }
}

// In place: sample i and sample N-1-i exchange the pixels inside box[i], for i < N / 2.
// Inputs: x (N, C, H, W) contiguous or channels_last, box (N, 4) int32 (the batch's box). Bytes: reads and
// writes the box of every sample once; blocks whose rows miss the box return at once.
// This is one thread's share: thread `thread` (of kThreads) of block `block`.
template <typename T>
RK_HOST_DEVICE void cutmix_swap_thread(T* __restrict__ x, const int32_t* __restrict__ box, const Geometry& g,
                                       int64_t block, int64_t thread) {
  int64_t first, plane, row_block;
  block_coordinates(g, false, block, first, plane, row_block);
  constexpr int64_t kSwapVector = kVectorBytes / sizeof(T);  // elements per 16-byte vector
  const int64_t second = g.num_samples - 1 - first;
  const int64_t x0 = box[first * 4], y0 = box[first * 4 + 1], x1 = box[first * 4 + 2], y1 = box[first * 4 + 3];
  const int64_t row_begin = row_block * g.rows_per_block;
  const int64_t row_end = row_begin + g.rows_per_block < g.height ? row_begin + g.rows_per_block : g.height;
  // The box's span of a row, clipped to the image: a box partly outside selects only what is inside.
  const int64_t begin = (x0 > 0 ? x0 : 0) * g.channels_per_pixel;
  const int64_t end = (x1 < g.width ? x1 : g.width) * g.channels_per_pixel;
  if (begin >= end) return;
  for (int64_t row = row_begin > y0 ? row_begin : y0; row < row_end && row < y1; ++row) {
    const int64_t local = plane * g.plane_stride + row * g.row_stride;
    T* const a = x + first * g.sample_stride + local;
    T* const b = x + second * g.sample_stride + local;
    // 16-byte vectors from the span's first 16-byte boundary in a, when b's elements share a's alignment;
    // the elements before and after them one at a time.
    int64_t vectors_begin = end;
    if ((reinterpret_cast<uintptr_t>(a) - reinterpret_cast<uintptr_t>(b)) % kVectorBytes == 0) {
      const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(a + begin) % kVectorBytes) / sizeof(T);
      vectors_begin = misaligned == 0 ? begin : begin + (kSwapVector - misaligned);
      if (vectors_begin > end) vectors_begin = end;
    }
    const int64_t vectors_end = vectors_begin + (end - vectors_begin) / kSwapVector * kSwapVector;
    for (int64_t j = vectors_begin + thread * kSwapVector; j < vectors_end; j += kThreads * kSwapVector) {
      const Vec16<T> saved = *reinterpret_cast<const Vec16<T>*>(a + j);
      store_vec16(a + j, *reinterpret_cast<const Vec16<T>*>(b + j));
      store_vec16(b + j, saved);
    }
    auto swap_one_by_one = [&](int64_t from, int64_t to) {
      for (int64_t j = from + thread; j < to; j += kThreads) {  // the launch's blockDim.x
        const T saved = a[j];
        a[j] = b[j];
        b[j] = saved;
      }
    };
    swap_one_by_one(begin, vectors_begin);
    swap_one_by_one(vectors_end, end);
  }
}

// __restrict__ here as well as on the thread functions: without it the loads of x lose ld.global.nc.
template <typename TIn, typename TOut>
__global__ void composite_kernel(const TIn* __restrict__ x, TOut* __restrict__ out, const int32_t* __restrict__ box,
                                 const float* __restrict__ lam, const int32_t* __restrict__ partner,
                                 const int32_t* __restrict__ mode, const float* __restrict__ fill,
                                 const float* __restrict__ mean, const float* __restrict__ std_dev,
                                 const int64_t* __restrict__ seed, Geometry g, bool visit_flip_pairs) {
  composite_thread<TIn, TOut>(x, out, box, lam, partner, mode, fill, mean, std_dev, seed, g, visit_flip_pairs,
                              blockIdx.x, threadIdx.x);
}

template <typename T>
__global__ void cutmix_swap_kernel(T* __restrict__ x, const int32_t* __restrict__ box, Geometry g) {
  cutmix_swap_thread<T>(x, box, g, blockIdx.x, threadIdx.x);
}

int64_t checked_blocks(const Geometry& g, int64_t samples, const char* name) {
  const int64_t blocks = samples * g.planes * g.row_blocks;
  if (blocks > INT32_MAX) {
    throw std::invalid_argument(std::string("recipe_kernels._C.") + name + ": more than 2^31 blocks");
  }
  return blocks;
}

// composite_batch's pointers, typed.
template <typename TIn, typename TOut>
struct CompositePointers {
  const TIn* x;
  TOut* out;
  const int32_t *box, *partner, *mode;
  const float *lam, *fill, *mean, *std_dev;
  const int64_t* seed;
};

// For composite_batch and its host emulation: calls fn(CompositePointers<TIn, TOut>, geometry, blocks)
// with the C++ types of the dtype codes and the launch's geometry (the vector path where x and out allow it).
template <typename Fn>
void with_composite_launch(uintptr_t x, uintptr_t out, uintptr_t box, uintptr_t lam, uintptr_t partner,
                           uintptr_t mode, uintptr_t fill, uintptr_t mean, uintptr_t std_dev, uintptr_t seed,
                           int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last, int in_dtype,
                           int out_dtype, const char* name, Fn&& fn) {
  dispatch_byte_or_float_dtype(in_dtype, [&](auto in_tag) {
    dispatch_byte_or_float_dtype(out_dtype, [&](auto out_tag) {
      using TIn = decltype(in_tag);
      using TOut = decltype(out_tag);
      const Geometry g = make_geometry(n, c, h, w, channels_last,
                                       vector_elements_for(x, out, c, w, channels_last, sizeof(TIn), sizeof(TOut)));
      const CompositePointers<TIn, TOut> p{
          reinterpret_cast<const TIn*>(x), reinterpret_cast<TOut*>(out), reinterpret_cast<const int32_t*>(box),
          reinterpret_cast<const int32_t*>(partner), reinterpret_cast<const int32_t*>(mode),
          reinterpret_cast<const float*>(lam), reinterpret_cast<const float*>(fill),
          reinterpret_cast<const float*>(mean), reinterpret_cast<const float*>(std_dev),
          reinterpret_cast<const int64_t*>(seed)};
      fn(p, g, checked_blocks(g, n, name));
    });
  });
}

}  // namespace

void composite_batch(uintptr_t x, uintptr_t out, uintptr_t box, uintptr_t lam, uintptr_t partner, uintptr_t mode,
                     uintptr_t fill, uintptr_t mean, uintptr_t std_dev, uintptr_t seed, int64_t n, int64_t c,
                     int64_t h, int64_t w, bool channels_last, bool visit_flip_pairs, int in_dtype, int out_dtype,
                     uintptr_t stream) {
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return;
  with_composite_launch(x, out, box, lam, partner, mode, fill, mean, std_dev, seed, n, c, h, w, channels_last,
                        in_dtype, out_dtype, "composite_batch", [&](auto p, const Geometry& g, int64_t blocks) {
    composite_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        p.x, p.out, p.box, p.lam, p.partner, p.mode, p.fill, p.mean, p.std_dev, p.seed, g, visit_flip_pairs);
    check_launch("composite_batch");
  });
}

void cutmix_swap(uintptr_t x, uintptr_t box, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last,
                 int dtype, uintptr_t stream) {
  if (n < 2 || c <= 0 || h <= 0 || w <= 0) return;
  const Geometry g = make_geometry(n, c, h, w, channels_last);
  const int64_t blocks = checked_blocks(g, n / 2, "cutmix_swap");
  dispatch_byte_or_float_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    cutmix_swap_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<T*>(x), reinterpret_cast<const int32_t*>(box), g);
    check_launch("cutmix_swap");
  });
}

// ----------------------------------------------------------------------------- CPU emulation of the same code
// Pointers are to CPU memory (CPU tensors' data_ptr()). The kernels have no grid-stride loop, so each
// entry point runs every thread of every block of the launcher's grid, one after another.

void composite_batch_host(uintptr_t x, uintptr_t out, uintptr_t box, uintptr_t lam, uintptr_t partner, uintptr_t mode,
                          uintptr_t fill, uintptr_t mean, uintptr_t std_dev, uintptr_t seed, int64_t n, int64_t c,
                          int64_t h, int64_t w, bool channels_last, bool visit_flip_pairs, int in_dtype,
                          int out_dtype) {
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return;
  with_composite_launch(x, out, box, lam, partner, mode, fill, mean, std_dev, seed, n, c, h, w, channels_last,
                        in_dtype, out_dtype, "composite_batch_host", [&](auto p, const Geometry& g, int64_t blocks) {
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t thread = 0; thread < kThreads; ++thread) {
        composite_thread(p.x, p.out, p.box, p.lam, p.partner, p.mode, p.fill, p.mean, p.std_dev, p.seed, g,
                         visit_flip_pairs, block, thread);
      }
    }
  });
}

void cutmix_swap_host(uintptr_t x, uintptr_t box, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last,
                      int dtype) {
  if (n < 2 || c <= 0 || h <= 0 || w <= 0) return;
  const Geometry g = make_geometry(n, c, h, w, channels_last);
  const int64_t blocks = checked_blocks(g, n / 2, "cutmix_swap_host");
  dispatch_byte_or_float_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t thread = 0; thread < kThreads; ++thread) {
        cutmix_swap_thread<T>(reinterpret_cast<T*>(x), reinterpret_cast<const int32_t*>(box), g, block, thread);
      }
    }
  });
}

// The kernels' per-element arithmetic alone on CPU buffers (raw pointers of CPU tensors).
void composite_values_host(uintptr_t own, uintptr_t other, uintptr_t inside, uintptr_t out, int64_t count, int mode,
                           float lam, float fill, bool round_uint8) {
  const float* own_values = reinterpret_cast<const float*>(own);
  const float* other_values = reinterpret_cast<const float*>(other);
  const bool* inside_flags = reinterpret_cast<const bool*>(inside);
  float* result = reinterpret_cast<float*>(out);
  for (int64_t i = 0; i < count; ++i) {
    const float value = composite_value(mode, inside_flags[i], own_values[i], other_values[i], lam, fill);
    result[i] = round_uint8 ? round_half_up_uint8(value) : value;
  }
}

void erase_noise_host(int64_t seed, uintptr_t index, uintptr_t out, int64_t count) {
  const int64_t* indices = reinterpret_cast<const int64_t*>(index);
  float* result = reinterpret_cast<float*>(out);
  for (int64_t i = 0; i < count; ++i) {
    result[i] = erase_noise(static_cast<uint64_t>(seed), static_cast<uint64_t>(indices[i]));
  }
}

}  // namespace recipe_kernels
