// Per-sample crop, resize and flip (torchvision's resized_crop per sample), alone or fused with MixUp/CutMix,
// erasing, normalisation and the cast (batch_augment). The Python side (recipe_kernels/augment.py) samples the
// boxes, flips and mixing parameters with torch ops on the device and builds the image table; this file only
// composites.
//
// The arithmetic is the Triton kernels' (_resized_tile, _finish and _batch_augment_kernel in augment.py) step
// for step, each fp32 operation rounded once (mul_rn/add_rn/div_rn, never contracted into an FMA; the multiply-adds
// the Triton kernels write as fma are fmaf here, one rounding on the device and in the host's C library alike), so
// the two backends agree bit for bit.
//
// As in mixing.cu, the kernel's body is a __host__ __device__ function of (block, thread): the __global__ kernel
// calls it once per GPU thread, and the *_host entry points call it for every thread of the same grid on CPU
// memory, so the tests without a GPU run this very code against the other backends.
#include <cmath>
#include <vector>

#include "common.cuh"

namespace recipe_kernels {
namespace {  // everything but the entry points declared in bindings.cpp is local to this file

constexpr int kThreads = 256;
constexpr int kStoreBytes = 16;
// The block stages its kThreads pixels' channels in shared memory: at most 48 KiB (the default limit) in fp32.
constexpr int64_t kMaxChannels = 48;
constexpr int64_t kMaxStagingBytes = kThreads * kMaxChannels * static_cast<int64_t>(sizeof(float));
// The image table's columns (augment.TABLE_COLUMNS): element address, height, width, channel/row/column strides.
constexpr int kTableColumns = 6;

template <typename T>
RK_HOST_DEVICE float pixel_value(const T* p) { return to_float(*p); }
template <>
RK_HOST_DEVICE float pixel_value<uint8_t>(const uint8_t* p) { return static_cast<float>(*p); }

// The per-sample filter of one axis (Triton's _filter_window without the output index): box_length crop pixels
// onto out_length output pixels, scale = box / out; support max(scale, 1) with antialias, else 1 (bilinear).
struct AxisFilter {
  float scale, support, inverse_scale;
  int box_length;
};

RK_HOST_DEVICE AxisFilter axis_filter(int box_length, int out_length, bool antialias) {
  AxisFilter f;
  f.box_length = box_length;
  f.scale = div_rn(static_cast<float>(box_length), static_cast<float>(out_length));
  f.support = antialias ? fmaxf(f.scale, 1.0f) : 1.0f;
  f.inverse_scale = antialias && f.scale >= 1.0f ? div_rn(1.0f, f.scale) : 1.0f;
  return f;
}

// The taps of one output index: crop pixels first .. first + count - 1 around centre = scale * (i + 0.5), and 1 /
// the sum of their triangle weights, correctly rounded (1 when the sum is 0): a tap's normalised weight is its weight
// times it. The loops run over the count alone: the Triton kernel's extra taps (up to the tile's largest count)
// weigh 0 and add exact zeros.
struct Window {
  float centre, inverse_total;
  int first, count;
};

RK_HOST_DEVICE float tap_weight(const AxisFilter& f, const Window& w, int tap) {
  const float distance = mul_rn(fabsf(add_rn(sub_rn(static_cast<float>(w.first + tap), w.centre), 0.5f)),
                                f.inverse_scale);
  return fmaxf(sub_rn(1.0f, distance), 0.0f);
}

RK_HOST_DEVICE Window window(const AxisFilter& f, int64_t index) {
  Window w;
  w.centre = mul_rn(f.scale, add_rn(static_cast<float>(index), 0.5f));
  const int first = static_cast<int>(add_rn(sub_rn(w.centre, f.support), 0.5f));
  w.first = first > 0 ? first : 0;
  const int end = static_cast<int>(add_rn(add_rn(w.centre, f.support), 0.5f));
  w.count = (end < f.box_length ? end : f.box_length) - w.first;
  float total = 0.0f;
  for (int tap = 0; tap < w.count; ++tap) total = add_rn(total, tap_weight(f, w, tap));
  w.inverse_total = div_rn(1.0f, total != 0.0f ? total : 1.0f);
  return w;
}

// One image: where its pixels are, and the crop box in it.
struct Source {
  int64_t address, height, width, channel_stride, row_stride, col_stride;
  int top, left;
  AxisFilter rows, cols;
};

template <typename TIn>
RK_HOST_DEVICE Source source(const int64_t* table, const int32_t* boxes, int64_t sample, int out_height,
                             int out_width, bool antialias) {
  const int64_t* entry = table + sample * kTableColumns;
  const int32_t* box = boxes + sample * 4;
  return Source{entry[0], entry[1], entry[2], entry[3], entry[4], entry[5], box[0], box[1],
                axis_filter(box[2], out_height, antialias), axis_filter(box[3], out_width, antialias)};
}

// The resized crop of `src` at output row `row` and resize column `col` (flip already applied), channels
// channel0 .. channel0 + kGroup - 1 (those < channels): value[g] in fp32, the Triton kernel's sums in its order
// (over row taps of weight * (the sum over column taps of weight * pixel)), each term added by one fmaf, pixels
// outside the image reading 0.
template <typename TIn, int kGroup>
RK_HOST_DEVICE void resized_pixel(const Source& src, int64_t row, int64_t col, int64_t channel0, int64_t channels,
                                  float (&value)[kGroup]) {
  const TIn* image = reinterpret_cast<const TIn*>(static_cast<uintptr_t>(src.address));
  const Window wy = window(src.rows, row);
  const Window wx = window(src.cols, col);
#pragma unroll
  for (int c = 0; c < kGroup; ++c) value[c] = 0.0f;
  for (int tap_y = 0; tap_y < wy.count; ++tap_y) {
    const float weight_y = mul_rn(tap_weight(src.rows, wy, tap_y), wy.inverse_total);
    const int64_t y = static_cast<int64_t>(src.top) + wy.first + tap_y;
    const bool row_ok = y >= 0 && y < src.height;
    float row_value[kGroup];
#pragma unroll
    for (int c = 0; c < kGroup; ++c) row_value[c] = 0.0f;
    for (int tap_x = 0; tap_x < wx.count; ++tap_x) {
      const float weight_x = mul_rn(tap_weight(src.cols, wx, tap_x), wx.inverse_total);
      const int64_t x = static_cast<int64_t>(src.left) + wx.first + tap_x;
      const bool ok = row_ok && x >= 0 && x < src.width;
      const TIn* pixel = image + y * src.row_stride + x * src.col_stride;
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        const int64_t channel = channel0 + c;
        const float v = ok && channel < channels ? pixel_value(pixel + channel * src.channel_stride) : 0.0f;
        row_value[c] = fmaf(v, weight_x, row_value[c]);
      }
    }
#pragma unroll
    for (int c = 0; c < kGroup; ++c) value[c] = fmaf(row_value[c], weight_y, value[c]);
  }
}

// A channel's normalisation, fma(v, 1 / std, -mean * (1 / std)): the reciprocal and the shift, each rounded once,
// computed once per block (Triton's _reciprocal_norm, once per program).
struct NormFactors {
  float inverse_std, shift;
};

RK_HOST_DEVICE NormFactors norm_factors(const float* mean, const float* std_dev, int64_t channel) {
  const float inverse_std = div_rn(1.0f, std_dev[channel]);
  return NormFactors{inverse_std, mul_rn(-mean[channel], inverse_std)};
}

// Triton's _finish: when normalising (norm not null), fma(v, 1 / std, -mean * (1 / std)); then the one rounding to
// TOut (uint8: half up, saturating, NaN to 0).
template <typename TOut>
RK_HOST_DEVICE TOut finish(float value, const NormFactors* norm, int64_t channel) {
  if (norm != nullptr) value = fmaf(value, norm[channel].inverse_std, norm[channel].shift);
  if constexpr (std::is_same_v<TOut, uint8_t>) {
    const float rounded = floorf(add_rn(value, 0.5f));
    return static_cast<uint8_t>(fminf(rounded > 0.0f ? rounded : 0.0f, 255.0f));
  } else {
    return from_float<TOut>(value);
  }
}

// The mixing parameters of batch_augment (mode == nullptr: resized_crop alone). As composite_batch's: mode (N,)
// int32 MixMode, mix_box (N, 4) int32 (x0, y0, x1, y1) in output pixels, lam (N,) fp32, partner (N,) int32
// (clamped to [0, N)); erase_box (N, 4) int32 (x0, y0, x1, y1), erase (N,) uint8 and fill (C,) fp32, or null.
struct Mixing {
  const int32_t* mode;
  const int32_t* mix_box;
  const float* lam;
  const int32_t* partner;
  const int32_t* erase_box;
  const uint8_t* erase;
  const float* fill;
};

// The output is dense: (N, C, h, w) contiguous or channels_last. A block covers kThreads consecutive pixels of one
// sample's output (row-major), every channel.
struct Geometry {
  int64_t num_samples, channels, out_height, out_width;
  int64_t pixels;             // h * w
  int64_t blocks_per_sample;  // ceil(pixels / kThreads)
  bool channels_last, antialias;
  bool vector_stores;         // out's base address and sample size allow 16-byte stores
  bool pair_partners;         // a block of one of two mutual partners writes both (see paired_block)
};

RK_HOST_DEVICE bool inside(const int32_t* box, int64_t row, int64_t col) {
  return row >= box[1] && row < box[3] && col >= box[0] && col < box[2];
}

RK_HOST_DEVICE int64_t partner_of(const Mixing& mixing, int64_t sample, int64_t num_samples) {
  const int64_t partner = mixing.partner[sample];
  return partner < 0 ? 0 : (partner >= num_samples ? num_samples - 1 : partner);
}

// Two samples that are each other's partners (partner="flip") are composited by the lower one's blocks, which
// interpolate each crop once and write both outputs. Returns the block of the partner's output that this block
// also writes, kUnpaired, or kWrittenByPartner (the block does nothing).
constexpr int64_t kUnpaired = -1, kWrittenByPartner = -2;
RK_HOST_DEVICE int64_t paired_block(const Mixing& mixing, const Geometry& g, int64_t block) {
  if (!g.pair_partners) return kUnpaired;
  const int64_t sample = block / g.blocks_per_sample;
  const int64_t partner = partner_of(mixing, sample, g.num_samples);
  if (partner == sample || partner_of(mixing, partner, g.num_samples) != sample) return kUnpaired;
  return partner < sample ? kWrittenByPartner : partner * g.blocks_per_sample + block % g.blocks_per_sample;
}

// MixUp or CutMix of one channel's own value with the partner's, for a pixel that takes the partner's crop.
RK_HOST_DEVICE float mixed(float value, float other, int mode, float lam) {
  return mode == kMixUp ? mixup_rn(lam, value, other) : other;
}

// What composite_batch does to one pixel of `sample`: whether it takes the partner's crop, and whether it is erased.
struct PixelMix {
  int mode;
  bool takes_partner, erased;
};

RK_HOST_DEVICE PixelMix pixel_mix(const Mixing& mixing, int64_t sample, int64_t row, int64_t col) {
  PixelMix m{mixing.mode != nullptr ? mixing.mode[sample] : static_cast<int>(kKeep), false, false};
  const bool in_mix_box = mixing.mode != nullptr && inside(mixing.mix_box + sample * 4, row, col);
  m.takes_partner = m.mode == kMixUp || (m.mode == kCutMix && in_mix_box);
  m.erased = mixing.erase != nullptr && mixing.erase[sample] != 0 && inside(mixing.erase_box + sample * 4, row, col);
  return m;
}

// Where channel c of the block's thread `thread` waits in the staging buffer: laid out as the output's run.
RK_HOST_DEVICE int64_t staged_index(const Geometry& g, int64_t thread, int64_t channel) {
  return g.channels_last ? thread * g.channels + channel : channel * kThreads + thread;
}

// One output pixel's channels channel0 .. + kGroup - 1 (those that exist) from its own crop's values and its
// partner's (read where the pixel takes them): MixUp/CutMix, erasing, normalisation, the one rounding, into staged.
template <typename TOut, int kGroup>
RK_HOST_DEVICE void stage_pixel(const float (&value)[kGroup], const float (&other_value)[kGroup], const Mixing& mixing,
                                const PixelMix& mix, int64_t sample, const NormFactors* norm,
                                TOut* staged, const Geometry& g, int64_t thread, int64_t channel0) {
#pragma unroll
  for (int c = 0; c < kGroup; ++c) {
    const int64_t channel = channel0 + c;
    if (channel < g.channels) {
      const float mixed_value = mix.takes_partner ? mixed(value[c], other_value[c], mix.mode, mixing.lam[sample])
                                                  : value[c];
      staged[staged_index(g, thread, channel)] = finish<TOut>(mix.erased ? mixing.fill[channel] : mixed_value, norm,
                                                              channel);
    }
  }
}

// Step 1 of a block, one thread's share: the thread's output pixel, every channel, into `staged` (the block's
// shared memory). out[n, c, y, x] = the resized crop of image n (at column w-1-x where flip[n]); with mixing, then
// MixUp/CutMix with the partner's crop and erasing, as Triton's _batch_augment_kernel; normalised, rounded once.
// With partner_staged (the block writes its paired partner's output too, paired_block) the partner's pixel goes
// there, from the same two crops.
// Inputs: table (N, 6) int64 (the images' element addresses, sizes and strides, any layout), crop (N, 4) int32
// (top, left, height, width), flip (N,) uint8 or null, norm (C,) the channels' normalisation (norm_factors) or null.
// Per output element: count_y x count_x loads and multiply-adds (count about 2 * support + 1 per axis, support =
// max(box / out, 1) with antialias, else 1: 2 x 2 for bilinear); the weights (a tap's weight times 1 / its window's
// total) are shared by the kGroup channels. The partner's crop is interpolated only for pixels that take it
// (MixUp, or inside the CutMix box), or that its paired output needs. kMixing: batch_augment (else resized_crop
// alone, whose code then holds none of this).
template <typename TIn, typename TOut, int kGroup, bool kMixing>
RK_HOST_DEVICE void compute_thread(const int64_t* __restrict__ table, const int32_t* __restrict__ crop,
                                   const uint8_t* __restrict__ flip, const Mixing& mixing,
                                   const NormFactors* __restrict__ norm,
                                   TOut* __restrict__ staged, TOut* __restrict__ partner_staged, const Geometry& g,
                                   int64_t block, int64_t thread) {
  const int64_t sample = block / g.blocks_per_sample;
  const int64_t pixel = (block % g.blocks_per_sample) * kThreads + thread;
  if (pixel >= g.pixels) return;
  const int64_t row = pixel / g.out_width, col = pixel % g.out_width;
  const int out_h = static_cast<int>(g.out_height), out_w = static_cast<int>(g.out_width);
  // 1. The sample's crop, and whether this pixel takes the partner's (MixUp, or inside the CutMix box).
  const Source own = source<TIn>(table, crop, sample, out_h, out_w, g.antialias);
  const int64_t own_col = flip != nullptr && flip[sample] != 0 ? g.out_width - 1 - col : col;
  const bool paired = kMixing && partner_staged != nullptr;
  const PixelMix own_mix = kMixing ? pixel_mix(mixing, sample, row, col) : PixelMix{kKeep, false, false};
  const bool needs_partner = own_mix.takes_partner || paired;
  const int64_t partner = needs_partner ? partner_of(mixing, sample, g.num_samples) : sample;
  const PixelMix partner_mix = paired ? pixel_mix(mixing, partner, row, col) : PixelMix{};
  for (int64_t channel0 = 0; channel0 < g.channels; channel0 += kGroup) {
    float value[kGroup], other_value[kGroup];
    resized_pixel<TIn, kGroup>(own, row, own_col, channel0, g.channels, value);
    // 2. MixUp / CutMix with the partner's crop.
    if (needs_partner) {
      const Source other = source<TIn>(table, crop, partner, out_h, out_w, g.antialias);
      const int64_t other_col = flip != nullptr && flip[partner] != 0 ? g.out_width - 1 - col : col;
      resized_pixel<TIn, kGroup>(other, row, other_col, channel0, g.channels, other_value);
    }
    // 3. Erasing, normalisation, the one rounding.
    stage_pixel<TOut, kGroup>(value, other_value, mixing, own_mix, sample, norm, staged, g, thread, channel0);
    if (paired) {
      stage_pixel<TOut, kGroup>(other_value, value, mixing, partner_mix, partner, norm, partner_staged, g,
                                thread, channel0);
    }
  }
}

// Step 2 of a block, one thread's share: the block's staged pixels to out, one run per channel (contiguous) or one
// run of all (channels_last), in 16-byte stores where vector_stores (the runs start at multiples of kThreads pixels).
template <typename TOut>
RK_HOST_DEVICE void store_thread(const TOut* __restrict__ staged, TOut* __restrict__ out, const Geometry& g,
                                 int64_t block, int64_t thread) {
  constexpr int64_t kPerChunk = kStoreBytes / static_cast<int64_t>(sizeof(TOut));
  const int64_t sample = block / g.blocks_per_sample;
  const int64_t pixel0 = (block % g.blocks_per_sample) * kThreads;
  const int64_t count = g.pixels - pixel0 < kThreads ? g.pixels - pixel0 : kThreads;
  const int64_t runs = g.channels_last ? 1 : g.channels;
  const int64_t run_length = g.channels_last ? count * g.channels : count;
  for (int64_t run = 0; run < runs; ++run) {
    TOut* destination = out + (sample * g.channels + run) * g.pixels + pixel0 * (g.channels_last ? g.channels : 1);
    const TOut* from = staged + run * kThreads;
    const int64_t chunks = g.vector_stores ? run_length / kPerChunk : 0;
    for (int64_t k = thread; k < chunks; k += kThreads) {
      reinterpret_cast<uint4*>(destination)[k] = reinterpret_cast<const uint4*>(from)[k];
    }
    for (int64_t i = chunks * kPerChunk + thread; i < run_length; i += kThreads) destination[i] = from[i];
  }
}

extern __shared__ uint4 augment_staging[];  // kThreads * C output elements (twice that when pairing), 16-byte aligned

template <typename TIn, typename TOut, int kGroup, bool kMixing>
__global__ void __launch_bounds__(kThreads) augment_kernel(const int64_t* __restrict__ table,
                                                          const int32_t* __restrict__ crop,
                                                          const uint8_t* __restrict__ flip, Mixing mixing,
                                                          const float* __restrict__ mean,
                                                          const float* __restrict__ std_dev, TOut* __restrict__ out,
                                                          Geometry g) {
  const int64_t partner_block = kMixing ? paired_block(mixing, g, blockIdx.x) : kUnpaired;
  if (partner_block == kWrittenByPartner) return;  // the whole block: no barrier is left waiting
  TOut* staged = reinterpret_cast<TOut*>(augment_staging);
  TOut* partner_staged = partner_block == kUnpaired ? nullptr : staged + kThreads * g.channels;
  __shared__ NormFactors norm[kMaxChannels];
  if (mean != nullptr) {
    for (int64_t channel = threadIdx.x; channel < g.channels; channel += kThreads) {
      norm[channel] = norm_factors(mean, std_dev, channel);
    }
    __syncthreads();
  }
  compute_thread<TIn, TOut, kGroup, kMixing>(table, crop, flip, mixing, mean != nullptr ? norm : nullptr, staged,
                                             partner_staged, g, blockIdx.x, threadIdx.x);
  __syncthreads();
  store_thread<TOut>(staged, out, g, blockIdx.x, threadIdx.x);
  if (partner_staged != nullptr) store_thread<TOut>(partner_staged, out, g, partner_block, threadIdx.x);
}

// Calls fn(TIn{}, TOut{}) for the pairs the public functions produce: a floating output from any image, uint8
// only from uint8.
template <typename Fn>
void dispatch_dtypes(int in_dtype, int out_dtype, Fn&& fn) {
  dispatch_byte_or_float_dtype(in_dtype, [&](auto in_tag) {
    if (out_dtype == kUInt8) {
      if constexpr (std::is_same_v<decltype(in_tag), uint8_t>) {
        fn(in_tag, uint8_t{});
      } else {
        throw std::invalid_argument("recipe_kernels._C: a uint8 output needs uint8 images");
      }
    } else {
      dispatch_float_dtype(out_dtype, [&](auto out_tag) { fn(in_tag, out_tag); });
    }
  });
}

// Calls fn(std::integral_constant<int, G>) with G the channels computed together: 1 (grey), 3 (RGB), else 4 at a
// time (the last group masked).
template <typename Fn>
void dispatch_channel_group(int64_t channels, Fn&& fn) {
  if (channels == 1) {
    fn(std::integral_constant<int, 1>{});
  } else if (channels == 3) {
    fn(std::integral_constant<int, 3>{});
  } else {
    fn(std::integral_constant<int, 4>{});
  }
}

// dispatch_channel_group, and fn's second argument std::bool_constant<mixing>: batch_augment's kernels (floating
// outputs only) apart from resized_crop's.
template <typename TOut, typename Fn>
void dispatch_channel_group_and_mixing(int64_t channels, bool mixing, Fn&& fn) {
  dispatch_channel_group(channels, [&](auto group) {
    if constexpr (std::is_same_v<TOut, uint8_t>) {
      if (mixing) throw std::invalid_argument("recipe_kernels._C.batch_augment: the output must be floating");
      fn(group, std::false_type{});
    } else if (mixing) {
      fn(group, std::true_type{});
    } else {
      fn(group, std::false_type{});
    }
  });
}

Geometry make_geometry(uintptr_t out, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last,
                       bool antialias, size_t element_size, const char* name) {
  if (c > kMaxChannels) {
    throw std::invalid_argument(std::string("recipe_kernels._C.") + name + ": at most " +
                                std::to_string(kMaxChannels) + " channels, got " + std::to_string(c));
  }
  const int64_t per_chunk = kStoreBytes / static_cast<int64_t>(element_size);
  Geometry g{n, c, h, w, h * w, ceil_div(h * w, kThreads), channels_last, antialias, false, false};
  // Runs start at multiples of kThreads pixels into a channel plane (contiguous) or a sample (channels_last).
  g.vector_stores = out % kStoreBytes == 0 && (h * w) % per_chunk == 0;
  if (g.num_samples * g.blocks_per_sample > INT32_MAX) {
    throw std::invalid_argument(std::string("recipe_kernels._C.") + name + ": more than 2^31 blocks");
  }
  return g;
}

void run_augment(uintptr_t table, uintptr_t crop, uintptr_t flip, const Mixing& mixing, uintptr_t mean,
                 uintptr_t std_dev, uintptr_t out, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last,
                 bool antialias, int in_dtype, int out_dtype, bool host, uintptr_t stream, const char* name) {
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return;
  dispatch_dtypes(in_dtype, out_dtype, [&](auto in_tag, auto out_tag) {
    using TIn = decltype(in_tag);
    using TOut = decltype(out_tag);
    Geometry g = make_geometry(out, n, c, h, w, channels_last, antialias, sizeof(TOut), name);
    const int64_t blocks = g.num_samples * g.blocks_per_sample;
    const int64_t output_staging_bytes = kThreads * c * static_cast<int64_t>(sizeof(TOut));
    // Pairs composite together where two outputs' staging fits the default limit (every image of up to 24 channels).
    g.pair_partners = mixing.mode != nullptr && 2 * output_staging_bytes <= kMaxStagingBytes;
    const size_t staging_bytes = static_cast<size_t>(output_staging_bytes) * (g.pair_partners ? 2 : 1);
    const auto* table_ptr = reinterpret_cast<const int64_t*>(table);
    const auto* crop_ptr = reinterpret_cast<const int32_t*>(crop);
    const auto* flip_ptr = reinterpret_cast<const uint8_t*>(flip);
    const auto* mean_ptr = reinterpret_cast<const float*>(mean);
    const auto* std_ptr = reinterpret_cast<const float*>(std_dev);
    auto* out_ptr = reinterpret_cast<TOut*>(out);
    dispatch_channel_group_and_mixing<TOut>(c, mixing.mode != nullptr, [&](auto group, auto with_mixing) {
      constexpr int kGroup = decltype(group)::value;
      constexpr bool kMixing = decltype(with_mixing)::value;
      if (host) {  // each block's two steps in turn, every thread of a step before the next (the barrier)
        std::vector<NormFactors> norm;
        for (int64_t channel = 0; mean_ptr != nullptr && channel < c; ++channel) {
          norm.push_back(norm_factors(mean_ptr, std_ptr, channel));
        }
        std::vector<uint4> staging(ceil_div(static_cast<int64_t>(staging_bytes), sizeof(uint4)));
        TOut* staged = reinterpret_cast<TOut*>(staging.data());
        for (int64_t block = 0; block < blocks; ++block) {
          const int64_t partner_block = paired_block(mixing, g, block);
          if (partner_block == kWrittenByPartner) continue;
          TOut* partner_staged = partner_block == kUnpaired ? nullptr : staged + kThreads * c;
          for (int64_t thread = 0; thread < kThreads; ++thread) {
            compute_thread<TIn, TOut, kGroup, kMixing>(table_ptr, crop_ptr, flip_ptr, mixing,
                                                       norm.empty() ? nullptr : norm.data(), staged, partner_staged, g,
                                                       block, thread);
          }
          for (int64_t thread = 0; thread < kThreads; ++thread) {
            store_thread<TOut>(staged, out_ptr, g, block, thread);
            if (partner_staged != nullptr) store_thread<TOut>(partner_staged, out_ptr, g, partner_block, thread);
          }
        }
      } else {
        augment_kernel<TIn, TOut, kGroup, kMixing><<<static_cast<unsigned>(blocks), kThreads, staging_bytes,
                                                     reinterpret_cast<cudaStream_t>(stream)>>>(
            table_ptr, crop_ptr, flip_ptr, mixing, mean_ptr, std_ptr, out_ptr, g);
        check_launch(name);
      }
    });
  });
}

Mixing make_mixing(uintptr_t mix_box, uintptr_t lam, uintptr_t partner, uintptr_t mode, uintptr_t erase_box,
                   uintptr_t erase, uintptr_t fill) {
  return Mixing{reinterpret_cast<const int32_t*>(mode), reinterpret_cast<const int32_t*>(mix_box),
                reinterpret_cast<const float*>(lam), reinterpret_cast<const int32_t*>(partner),
                reinterpret_cast<const int32_t*>(erase_box), reinterpret_cast<const uint8_t*>(erase),
                reinterpret_cast<const float*>(fill)};
}

}  // namespace

void resized_crop(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mean, uintptr_t std_dev, uintptr_t out,
                  int64_t n, int64_t c, int64_t out_height, int64_t out_width, bool channels_last, bool antialias,
                  int in_dtype, int out_dtype, uintptr_t stream) {
  run_augment(table, crop, flip, Mixing{}, mean, std_dev, out, n, c, out_height, out_width, channels_last, antialias,
              in_dtype, out_dtype, false, stream, "resized_crop");
}

void batch_augment(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mix_box, uintptr_t lam,
                   uintptr_t partner, uintptr_t mode, uintptr_t erase_box, uintptr_t erase, uintptr_t fill,
                   uintptr_t mean, uintptr_t std_dev, uintptr_t out, int64_t n, int64_t c, int64_t out_height,
                   int64_t out_width, bool channels_last, bool antialias, int in_dtype, int out_dtype,
                   uintptr_t stream) {
  run_augment(table, crop, flip, make_mixing(mix_box, lam, partner, mode, erase_box, erase, fill), mean, std_dev, out,
              n, c, out_height, out_width, channels_last, antialias, in_dtype, out_dtype, false, stream,
              "batch_augment");
}

// ----------------------------------------------------------------------------- CPU emulation of the same code
// Pointers (the table's addresses included) are to CPU memory. The kernel has no grid-stride loop, so each entry
// point runs every thread of every block of the launcher's grid, one step at a time.

void resized_crop_host(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mean, uintptr_t std_dev,
                       uintptr_t out, int64_t n, int64_t c, int64_t out_height, int64_t out_width, bool channels_last,
                       bool antialias, int in_dtype, int out_dtype) {
  run_augment(table, crop, flip, Mixing{}, mean, std_dev, out, n, c, out_height, out_width, channels_last, antialias,
              in_dtype, out_dtype, true, 0, "resized_crop_host");
}

void batch_augment_host(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mix_box, uintptr_t lam,
                        uintptr_t partner, uintptr_t mode, uintptr_t erase_box, uintptr_t erase, uintptr_t fill,
                        uintptr_t mean, uintptr_t std_dev, uintptr_t out, int64_t n, int64_t c, int64_t out_height,
                        int64_t out_width, bool channels_last, bool antialias, int in_dtype, int out_dtype) {
  run_augment(table, crop, flip, make_mixing(mix_box, lam, partner, mode, erase_box, erase, fill), mean, std_dev, out,
              n, c, out_height, out_width, channels_last, antialias, in_dtype, out_dtype, true, 0,
              "batch_augment_host");
}

}  // namespace recipe_kernels
