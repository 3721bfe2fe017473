"""Per-sample crop, resize and flip on the device (torchvision's RandomResizedCrop per sample).

Top to bottom: Triton kernels; the image table; the implementations, one per backend; the ops
(_ops.Op); sampling on the device; validation; public functions. A call takes three hops:

    resized_crop()  ->  resized_crop_op (the table picks the backend)  ->  _resized_crop_triton  ->  _resized_crop_kernel
                                                                       ->  _resized_crop_torch (reference.resized_crop)

Per sample n, the output is torchvision.transforms.v2.functional.resized_crop(images[n], top,
left, height, width, (h, w), antialias) with bilinear interpolation (align_corners=False), then a
horizontal flip where flip[n], then optionally (v - mean[c]) / std[c] (the kernels: fma(v, 1 / std[c],
-mean[c] / std[c]), the reciprocal and the shift rounded once: within an ulp or two of the quotient, or of the
shift near v = mean[c]). The crop reads zeros
outside its image, as torchvision's crop pads. Antialiasing (when the crop is larger than the
output) is torchvision's (torch's _upsample_bilinear2d_aa): a triangle filter whose support
grows with the scale factor, applied separably, rows of taps first, with weights normalised
over the taps that fall inside the crop. Without antialiasing it is plain bilinear: the same
formula with a support of one pixel. Every backend interpolates in fp32 and rounds once to the
output dtype (uint8: half up, saturating); a uint8 image is never rounded to uint8 before it is
normalised.

The output size (h, w) is a runtime argument of the kernel: Triton specialises only on the width
being 1 or a multiple of 16 (as it does on the output's strides; a multiple of 16 lets every tile
store 16-byte vectors under its mask), so training at a new size (progressive resizing between
multiples of 16) does not compile anything new. Nothing here has a gradient
(augmentation of input data); an image that requires grad is refused.
"""
import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from recipe_kernels import _backend, _checks, reference
from recipe_kernels._codes import DTYPE_CODES, MixMode
from recipe_kernels._ops import Op, launch
from recipe_kernels._philox import draw_seed, philox4x32
from recipe_kernels._triton_common import cdiv, fma, round_to

# The dtypes an image may have, and an output.
IMAGE_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)
# Output pixels per Triton program: a [BLOCK_Y, BLOCK_X] tile of up to MAX_CHANNEL_GROUP channels of one sample, in
# NUM_WARPS warps: a thread holds 2 rows x 8 columns (the 16-byte store layout), so a column's weights serve 2 x 3
# elements of an RGB tile. The static model's best of 16-64 rows and 1-8 warps (1 warp spills).
BLOCK_Y = 32
BLOCK_X = 32
NUM_WARPS = 2
# Which dimension of a tile (and of a strip) holds its columns. Triton lays out a gather whose addresses have no
# known contiguity (the pixel reads) with dimension 0 fastest before 3.7 and the last one fastest since, and the
# stores run along the columns: with the columns on the gathers' fast dimension, the values are computed in the
# 16-byte store layout. On the other one, every value is converted through shared memory before its store
# (Triton 3.6: 94 SASS per element for batch_augment instead of 36, in the static model).
TILE_COLUMNS_FIRST = tl.constexpr(tuple(map(int, triton.__version__.split(".")[:2])) < (3, 7))
# Channels a program computes together (each its own accumulators, sharing weights and offsets): every channel of
# an RGB or grey image; more channels run in groups of this many (the last group's missing channels are skipped).
MAX_CHANNEL_GROUP = 4
# The grid's second and third axes are the tile rows and columns, at most 65535 each.
MAX_OUTPUT_SIDE = 65535 * min(BLOCK_Y, BLOCK_X)
# Taps per axis without antialias: a support of 1 holds at most two taps of nonzero weight (a third, which fp32
# rounding of the window's end can add, weighs 0), so the loops over taps unroll.
BILINEAR_TAPS = tl.constexpr(2)
# Column taps unrolled with their weights computed once per tile with antialias (the rest loop, recomputing theirs
# per row tap): antialiased windows have about 2 * scale + 1 taps (3 beat 2, 4 and 5 in the static model).
ANTIALIAS_COLUMN_SLOTS = tl.constexpr(3)
# A byte b read as the float bits of 0x4B000000 | b is 2^23 + b exactly.
BYTE_BIAS = tl.constexpr(8388608.0)
# The antialias resized_crop (_resized_crop_strip_kernel): a program is STRIP_X output columns (a thread 8 of them,
# the 16-byte store layout) in STRIP_WARPS warps, walking down a segment of output rows with the horizontal sums of
# the last WINDOW source rows in registers (a row window of up to WINDOW taps: downscales up to about 2.5). Enough
# segments per strip for about STRIP_PROGRAMS_PER_SM programs per SM, each of at most STRIP_X rows and, where there
# are rows enough, at least MIN_SEGMENT_ROWS (a segment first fills its window: WINDOW source rows' sums).
STRIP_X = 256
STRIP_WARPS = 1
WINDOW = 5
STRIP_PROGRAMS_PER_SM = 6
MIN_SEGMENT_ROWS = 4 * WINDOW
# Column taps per source row whose weights and offsets a strip program computes once (past ANTIALIAS_COLUMN_SLOTS,
# each summed where the strip's windows reach it); a strip with wider windows runs the single pass.
STRIP_COLUMN_SLOTS = 5
# Columns of the image table, one int64 row per sample: element address, height, width, and the
# strides (in elements) of channel, row and column.
TABLE_COLUMNS = tl.constexpr(6)
# batch_augment's mixing modes (composite_batch's codes).
_MIXUP = tl.constexpr(int(MixMode.MIXUP))
_CUTMIX = tl.constexpr(int(MixMode.CUTMIX))

# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _filter_window(out_index, box_length, out_length, ANTIALIAS: tl.constexpr):
    """The taps of output index `out_index` along one axis: torch's _compute_index_ranges_weights.

    box_length source pixels (the crop) map onto out_length output pixels: scale = box/out,
    centre = scale * (i + 0.5). The taps are crop pixels first .. first + count - 1, weight
    triangle((j - centre + 0.5) * inverse_scale); the support is max(scale, 1) with antialias,
    else 1 (plain bilinear). Returns (centre, first, count, inverse_scale, max_count), where
    max_count, the trip count of the loops over taps, is the tile's largest count with antialias
    and BILINEAR_TAPS without (a constant: the loops unroll). A tap past an index's own count
    weighs 0 and adds an exact 0: any bound >= every nonzero weight's tap gives the same bits.
    """
    # div_rn: Triton's `/` is an approximate divide on the GPU (div.full.f32) but exact in the interpreter.
    # tl.cast: Triton passes an output width of 1 as an int, not a tensor.
    scale = tl.math.div_rn(box_length.to(tl.float32), tl.cast(out_length, tl.float32))
    if ANTIALIAS:
        support = tl.maximum(scale, 1.0)
        inverse_scale = tl.where(scale >= 1.0, tl.math.div_rn(support * 0.0 + 1.0, scale), 1.0)
    else:  # constants, so that the multiplies by inverse_scale fold away (x * 1.0 is x)
        support = 1.0
        inverse_scale = 1.0
    centre = scale * (out_index.to(tl.float32) + 0.5)
    first = tl.maximum((centre - support + 0.5).to(tl.int32), 0)
    count = tl.minimum((centre + support + 0.5).to(tl.int32), box_length) - first
    if ANTIALIAS:
        max_count = tl.max(count)
    else:
        max_count = BILINEAR_TAPS
    return centre, first, count, inverse_scale, max_count


@triton.jit
def _tap_weight(tap, centre, first, count, inverse_scale):
    """The unnormalised triangle weight of tap `tap` (0 past the window's count)."""
    distance = tl.abs((first + tap).to(tl.float32) - centre + 0.5) * inverse_scale
    return tl.where(tap < count, tl.maximum(1.0 - distance, 0.0), 0.0)


@triton.jit
def _inverse_window_total(centre, first, count, inverse_scale, max_count):
    """1 / the sum of a window's weights, correctly rounded (1 for a sum of 0): each output index's normalised
    weights are its taps' weights times it (one divide per index, not per tap)."""
    total = tl.zeros(centre.shape, tl.float32)
    for tap in range(0, max_count):
        total += _tap_weight(tap, centre, first, count, inverse_scale)
    return tl.math.div_rn(tl.full(total.shape, 1.0, tl.float32), tl.where(total != 0.0, total, 1.0))


@triton.jit
def _column_tap(slot, start_col, first_col, centre_x, first_x, count_x, inverse_x, inverse_total_x, wanted_cols,
                image_width, col_step, CLAMPED_READS: tl.constexpr):
    """The pixel of column start_col + slot of the tile's columns: its normalised weight (the weight of its tap,
    column - first_col, in the window), whether it is read (in the output, the window and the image), and its
    offset in a row. With CLAMPED_READS, the offset of the column clamped into the image and the weight 0 where
    it is not read."""
    col = start_col + slot
    tap = col - first_col
    weight = _tap_weight(tap, centre_x, first_x, count_x, inverse_x) * inverse_total_x
    col_ok = wanted_cols & (tap >= 0) & (tap < count_x) & (col >= 0) & (col < image_width)
    if CLAMPED_READS:
        weight = tl.where(col_ok, weight, 0.0)
        col = tl.minimum(tl.maximum(col, 0), image_width - 1)
    return weight, col_ok, col.to(image_width.dtype) * col_step


@triton.jit
def _slot_pixel(pixels, slot: tl.constexpr, col_step, slot_ok, row_mask, CLAMPED_READS: tl.constexpr):
    """The pixel of column slot `slot` (at pixels + slot * col_step): read clamped (CLAMPED_READS) or under the
    row's and the slot's masks."""
    if CLAMPED_READS:
        return tl.load(pixels + slot * col_step)
    return tl.load(pixels + slot * col_step, mask=row_mask & slot_ok[slot], other=0)


@triton.jit
def _biased_byte(pixel):
    """A byte pixel as the float 2^23 + byte (exact: an OR, fewer instructions than a conversion)."""
    return (pixel.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def _pixel_float(pixel):
    """A loaded pixel as fp32. A byte goes through the float 2^23 + byte less 2^23 (exact)."""
    if pixel.dtype == tl.uint8:
        return _biased_byte(pixel) - BYTE_BIAS
    return pixel.to(tl.float32)


@triton.jit
def _next_pixel_float(pixel, ANTIALIAS: tl.constexpr):
    """A pixel past a row's first as fp32. Bilinear converts a byte in one instruction (I2F, on the conversion pipe:
    16 per clock per SM, room for the 2 per element bilinear takes at an H200's copy speed); antialias, with 2 per
    row tap, keeps _pixel_float's OR and add on the FP32 pipes."""
    if ANTIALIAS:
        return _pixel_float(pixel)
    return pixel.to(tl.float32)


@triton.jit
def _first_product(pixel, weight, biased_weight):
    """pixel * weight rounded once. A byte: fma(2^23 + byte, weight, -2^23 * weight), the same bits (the exact
    value is byte * weight; biased_weight = -2^23 * weight is exact) in one FMA instead of a subtract and a
    multiply."""
    if pixel.dtype == tl.uint8:
        return fma(_biased_byte(pixel), weight, biased_weight)
    return pixel.to(tl.float32) * weight


@triton.jit
def _sample_crop(table_ptr, box_ptr, sample, PIXEL_DTYPE: tl.constexpr, INDEX_DTYPE: tl.constexpr):
    """`sample`'s image (a pointer to its first element), height, width, channel/row/column strides (INDEX_DTYPE) and
    crop box (top, left, height, width)."""
    entry = table_ptr + sample * TABLE_COLUMNS
    image = tl.load(entry).to(tl.pointer_type(PIXEL_DTYPE))
    image_height = tl.load(entry + 1).to(INDEX_DTYPE)
    image_width = tl.load(entry + 2).to(INDEX_DTYPE)
    channel_stride = tl.load(entry + 3).to(INDEX_DTYPE)
    row_stride = tl.load(entry + 4).to(INDEX_DTYPE)
    col_stride = tl.load(entry + 5).to(INDEX_DTYPE)
    top = tl.load(box_ptr + sample * 4)
    left = tl.load(box_ptr + sample * 4 + 1)
    box_height = tl.load(box_ptr + sample * 4 + 2)
    box_width = tl.load(box_ptr + sample * 4 + 3)
    return image, image_height, image_width, channel_stride, row_stride, col_stride, top, left, box_height, box_width


@triton.jit
def _column_taps(out_cols, left, box_width, out_width, image_width, col_stride, ANTIALIAS: tl.constexpr,
                 COLUMN_SLOTS: tl.constexpr, UNIT_COL_STRIDE: tl.constexpr, CLAMPED_READS: tl.constexpr):
    """The column half of the filter for output columns `out_cols` (before any flip), shared by every row and channel:
    a tuple (columns, slot_weights, slot_ok, biased_weight, wide_col_offsets, taps_x). `columns` bundles what a
    column tap past the first COLUMN_SLOTS needs (_column_tap's arguments); the first COLUMN_SLOTS columns' normalised
    weights and read masks are the tuples slot_weights and slot_ok, their pixels at one offset (wide_col_offsets,
    INDEX_DTYPE) plus slot * col_step; biased_weight is -2^23 times slot 0's weight (_first_product); taps_x the trip
    count of a row's column taps (_filter_window's max_count). Byte images (CLAMPED_READS, at least COLUMN_SLOTS
    pixels wide) read the slots from first_col clamped into [0, W - COLUMN_SLOTS]."""
    centre_x, first_x, count_x, inverse_x, taps_x = _filter_window(out_cols, box_width, out_width, ANTIALIAS)
    inverse_total_x = _inverse_window_total(centre_x, first_x, count_x, inverse_x, taps_x)
    wanted_cols = out_cols < out_width
    first_col = left + first_x
    if CLAMPED_READS:
        start_col = tl.minimum(tl.maximum(first_col, 0), image_width - COLUMN_SLOTS)
    else:
        start_col = first_col
    # A unit column stride makes the next column's address this one's plus 1: an immediate offset of the load.
    col_step = 1 if UNIT_COL_STRIDE else col_stride
    # The first COLUMN_SLOTS columns' weights and masks, computed once and shared by every row tap and channel; their
    # pixels lie at one address plus slot * col_step.
    slot_weights = ()
    slot_ok = ()
    for first_slot in tl.static_range(COLUMN_SLOTS):
        weight, col_ok, offsets = _column_tap(first_slot, start_col, first_col, centre_x, first_x, count_x, inverse_x,
                                              inverse_total_x, wanted_cols, image_width, col_step, CLAMPED_READS)
        if first_slot == 0:
            biased_weight = weight * -BYTE_BIAS
        slot_weights = slot_weights + (weight,)
        slot_ok = slot_ok + (col_ok,)
        if first_slot == 0:
            col_offsets = offsets
    columns = (start_col, first_col, centre_x, first_x, count_x, inverse_x, inverse_total_x, wanted_cols, col_step)
    return columns, slot_weights, slot_ok, biased_weight, col_offsets, taps_x


@triton.jit
def _plane_offsets(first_channel, num_channels, channel_stride, CHANNEL_GROUP: tl.constexpr,
                   INDEX_DTYPE: tl.constexpr, CLAMPED_READS: tl.constexpr):
    """The offsets of the group's channel planes (a tuple; clamped to the last channel with CLAMPED_READS)."""
    plane_offsets = ()
    for k in tl.static_range(CHANNEL_GROUP):
        channel = first_channel + k
        if CLAMPED_READS:
            channel = tl.minimum(channel, num_channels - 1)
        plane_offsets = plane_offsets + (channel.to(INDEX_DTYPE) * channel_stride,)
    return plane_offsets


@triton.jit
def _row_sums(rows, row_ok, first_channel, num_channels, plane_offsets, columns, slot_weights, slot_ok, biased_weight,
              wide_col_offsets, taps_x, image_width, CHANNEL_GROUP: tl.constexpr, ANTIALIAS: tl.constexpr,
              ALWAYS_SLOTS: tl.constexpr, TAP_LOOP: tl.constexpr, CLAMPED_READS: tl.constexpr):
    """One source row's horizontal sums (the column taps' chain of FMAs, in tap order) for each channel of the group:
    a tuple of CHANNEL_GROUP tensors shaped like row_ok & the columns. `rows` is the row's address in the image;
    row_ok whether it is read (masked reads; CLAMPED_READS reads every pixel, the row clamped into the image). The
    first ALWAYS_SLOTS column slots are always summed, the next ones of slot_weights where taps_x reaches them; with
    TAP_LOOP, the taps past slot_weights' loop, their weights recomputed."""
    start_col, first_col, centre_x, first_x, count_x, inverse_x, inverse_total_x, wanted_cols, col_step = columns
    COLUMN_SLOTS: tl.constexpr = len(slot_weights)
    # The first COLUMN_SLOTS columns (row_value starts at the first product, not 0 + it: the two differ at most in the
    # sign of a zero, which value's first addition to +0 erases).
    row_values = ()
    for k in tl.static_range(CHANNEL_GROUP):
        pixels = (rows + plane_offsets[k]) + wide_col_offsets
        row_mask = row_ok & (first_channel + k < num_channels)
        row_value = _first_product(_slot_pixel(pixels, 0, col_step, slot_ok, row_mask, CLAMPED_READS),
                                   slot_weights[0], biased_weight)
        for first_slot in tl.static_range(1, ALWAYS_SLOTS):
            pixel = _slot_pixel(pixels, first_slot, col_step, slot_ok, row_mask, CLAMPED_READS)
            row_value = fma(_next_pixel_float(pixel, ANTIALIAS), slot_weights[first_slot], row_value)
        row_values = row_values + (row_value,)
    for slot in tl.static_range(ALWAYS_SLOTS, COLUMN_SLOTS):
        if slot < taps_x:
            summed = ()
            for k in tl.static_range(CHANNEL_GROUP):
                pixels = (rows + plane_offsets[k]) + wide_col_offsets
                pixel = _slot_pixel(pixels, slot, col_step, slot_ok, row_ok & (first_channel + k < num_channels),
                                    CLAMPED_READS)
                summed = summed + (fma(_pixel_float(pixel), slot_weights[slot], row_values[k]),)
            row_values = summed
    for slot in range(COLUMN_SLOTS, taps_x if TAP_LOOP else COLUMN_SLOTS):
        weight_x, col_ok, tap_offsets = _column_tap(slot, start_col, first_col, centre_x, first_x, count_x,
                                                    inverse_x, inverse_total_x, wanted_cols, image_width,
                                                    col_step, CLAMPED_READS)
        summed = ()
        for k in tl.static_range(CHANNEL_GROUP):
            pixels = rows + (plane_offsets[k] + tap_offsets)
            if CLAMPED_READS:
                pixel = tl.load(pixels)
            else:
                pixel = tl.load(pixels, mask=row_ok & (first_channel + k < num_channels) & col_ok, other=0)
            summed = summed + (fma(_pixel_float(pixel), weight_x, row_values[k]),)
        row_values = summed
    return row_values


@triton.jit
def _resized_tile(table_ptr, box_ptr, sample, first_channel, num_channels, out_rows, out_cols, out_height, out_width,
                  CHANNEL_GROUP: tl.constexpr, PIXEL_DTYPE: tl.constexpr, ANTIALIAS: tl.constexpr,
                  INDEX_DTYPE: tl.constexpr, UNIT_COL_STRIDE: tl.constexpr, CLAMPED_READS: tl.constexpr):
    """The resized crop of `sample` at channels first_channel .. + CHANNEL_GROUP - 1, output rows `out_rows`
    and columns `out_cols` (before any flip; as _tile lays them out): a tuple of CHANNEL_GROUP fp32 tiles,
    each the sum over row taps of row weight * (the sum over column taps of column weight * pixel), pixels
    outside the image reading 0. The weights, window and offsets are computed once for the group's channels;
    offsets inside an image are INDEX_DTYPE (int32 when every image's span fits). One pass: a row tap's horizontal
    sums are computed per output row.

    The first COLUMN_SLOTS columns of a row (BILINEAR_TAPS, or ANTIALIAS_COLUMN_SLOTS with antialias) are read from
    one address, their weights computed once per tile; columns past them (antialias) loop, recomputing theirs per
    row tap. Byte images (CLAMPED_READS) read every pixel clamped into the image, a pixel outside it weighing 0,
    those columns at start_col .. start_col + COLUMN_SLOTS - 1, start_col = first_col clamped into
    [0, W - COLUMN_SLOTS], each weighing as its own tap of the window (0 when it is not one). A shifted run only
    reorders zeros among nonnegative terms, so the sums keep the tap order's bits. Float images keep masked reads
    at first_col (an inf times 0 would not be 0)."""
    image, image_height, image_width, channel_stride, row_stride, col_stride, top, left, box_height, box_width = \
        _sample_crop(table_ptr, box_ptr, sample, PIXEL_DTYPE, INDEX_DTYPE)
    centre_y, first_y, count_y, inverse_y, taps_y = _filter_window(out_rows, box_height, out_height, ANTIALIAS)
    inverse_total_y = _inverse_window_total(centre_y, first_y, count_y, inverse_y, taps_y)
    if ANTIALIAS:
        COLUMN_SLOTS: tl.constexpr = ANTIALIAS_COLUMN_SLOTS
    else:
        COLUMN_SLOTS: tl.constexpr = BILINEAR_TAPS
    columns, slot_weights, slot_ok, biased_weight, col_offsets, taps_x = _column_taps(
        out_cols, left, box_width, out_width, image_width, col_stride, ANTIALIAS, COLUMN_SLOTS, UNIT_COL_STRIDE,
        CLAMPED_READS)
    # A row's address per channel plane, plus the column's offset widened once per column: a 64-bit add per pixel
    # address (a 32-bit offset would be sign-extended per address).
    wide_col_offsets = col_offsets.to(tl.int64)
    wanted_rows = out_rows < out_height
    first_row = top + first_y
    plane_offsets = _plane_offsets(first_channel, num_channels, channel_stride, CHANNEL_GROUP, INDEX_DTYPE,
                                   CLAMPED_READS)
    values = ()
    for k in tl.static_range(CHANNEL_GROUP):
        values = values + (tl.zeros((out_rows + out_cols).shape, dtype=tl.float32),)
    for tap_y in tl.range(0, taps_y, loop_unroll_factor=1 if ANTIALIAS else BILINEAR_TAPS):
        weight_y = _tap_weight(tap_y, centre_y, first_y, count_y, inverse_y) * inverse_total_y
        row = first_row + tap_y
        row_ok = wanted_rows & (tap_y < count_y) & (row >= 0) & (row < image_height)
        if CLAMPED_READS:
            weight_y = tl.where(row_ok, weight_y, 0.0)
            row = tl.minimum(tl.maximum(row, 0), image_height - 1)
        row_values = _row_sums(image + row.to(INDEX_DTYPE) * row_stride, row_ok, first_channel, num_channels,
                               plane_offsets, columns, slot_weights, slot_ok, biased_weight, wide_col_offsets, taps_x,
                               image_width, CHANNEL_GROUP, ANTIALIAS, COLUMN_SLOTS, ANTIALIAS, CLAMPED_READS)
        summed = ()
        for k in tl.static_range(CHANNEL_GROUP):
            summed = summed + (fma(row_values[k], weight_y, values[k]),)
        values = summed
    return values


@triton.jit
def _finish(value, channel, mean_ptr, std_ptr, HAS_NORM: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """fp32 value of channel `channel` normalised when HAS_NORM, then rounded to OUT_DTYPE (uint8: half up,
    saturating). The normalisation is fma(v, 1 / std, -mean * (1 / std)), the reciprocal and the shift rounded once
    per program: within an ulp or two of the quotient (v - mean) / std, or of the shift near v = mean."""
    if HAS_NORM:
        inverse_std, shift = _reciprocal_norm(channel, mean_ptr, std_ptr)
        value = fma(value, inverse_std, shift)
    return _rounded(value, OUT_DTYPE)


@triton.jit
def _rounded(value, OUT_DTYPE: tl.constexpr):
    """fp32 value rounded once to OUT_DTYPE (uint8: half up, saturating)."""
    if OUT_DTYPE == tl.uint8:
        rounded = tl.floor(value + 0.5)
        return tl.minimum(tl.where(rounded > 0.0, rounded, 0.0), 255.0).to(tl.uint8)
    return round_to(value, OUT_DTYPE)


@triton.jit
def _reciprocal_norms(first_channel, num_channels, mean_ptr, std_ptr, CHANNEL_GROUP: tl.constexpr):
    """Per channel of the group (clamped to the last), _finish's factors: (1 / std, -mean / std)
    tuples, each rounded once."""
    inverse_stds = ()
    shifts = ()
    for k in tl.static_range(CHANNEL_GROUP):
        inverse_std, shift = _reciprocal_norm(tl.minimum(first_channel + k, num_channels - 1), mean_ptr, std_ptr)
        inverse_stds = inverse_stds + (inverse_std,)
        shifts = shifts + (shift,)
    return inverse_stds, shifts


@triton.jit
def _reciprocal_norm(channel, mean_ptr, std_ptr):
    """(1 / std, -mean * (1 / std)) of `channel`, each rounded once: the factors of fma(v, 1 / std, -mean / std)."""
    inverse_std = tl.math.div_rn(tl.full([], 1.0, tl.float32), tl.load(std_ptr + channel))
    return inverse_std, -tl.load(mean_ptr + channel) * inverse_std


@triton.jit
def _program(channel_groups, CHANNEL_GROUP: tl.constexpr, INDEX_DTYPE: tl.constexpr):
    """The program's (sample, first channel, index on grid axis 1, index on axis 2), grid axis 0 being samples x
    channel groups."""
    group = tl.program_id(0).to(INDEX_DTYPE)
    first_channel = (group % channel_groups) * CHANNEL_GROUP
    return group // channel_groups, first_channel, tl.program_id(1).to(INDEX_DTYPE), tl.program_id(2).to(INDEX_DTYPE)


@triton.jit
def _tile(channel_groups, CHANNEL_GROUP: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
          INDEX_DTYPE: tl.constexpr):
    """The program's (sample, first channel, row block, column block), output rows [BY, 1] and output columns
    [1, BX] ([1, BY] and [BX, 1] with TILE_COLUMNS_FIRST). The grid is (samples x channel groups, row blocks,
    column blocks): no divisions but by the channel groups, a constant 1 for up to MAX_CHANNEL_GROUP channels."""
    sample, first_channel, row_block, col_block = _program(channel_groups, CHANNEL_GROUP, INDEX_DTYPE)
    out_rows = _along_rows(row_block * BLOCK_Y + tl.arange(0, BLOCK_Y))
    out_cols = _along_columns(col_block * BLOCK_X + tl.arange(0, BLOCK_X))
    return sample, first_channel, row_block, col_block, out_rows, out_cols


@triton.jit
def _along_columns(indices):
    """A vector laid along a tile's column dimension: [1, n], or [n, 1] with TILE_COLUMNS_FIRST."""
    if TILE_COLUMNS_FIRST:
        laid = indices[:, None]
    else:
        laid = indices[None, :]
    return laid


@triton.jit
def _along_rows(indices):
    """A vector laid along a tile's row dimension: [n, 1], or [1, n] with TILE_COLUMNS_FIRST."""
    if TILE_COLUMNS_FIRST:
        laid = indices[None, :]
    else:
        laid = indices[:, None]
    return laid


@triton.jit
def _store_tile(out_ptr, value, sample, row_block, col_block, channel, out_rows, out_cols, out_height,
                out_width, out_sample_stride, out_channel_stride, out_row_stride, out_col_stride):
    offsets = sample * out_sample_stride + channel * out_channel_stride + out_rows * out_row_stride + \
        out_cols * out_col_stride
    # A tile inside the output stores with no mask: 16-byte stores (as edge tiles do when the width, which Triton
    # specialises on, is a multiple of 16: the column mask is then constant over 16 columns).
    if ((row_block + 1) * out_rows.numel <= out_height) & ((col_block + 1) * out_cols.numel <= out_width):
        tl.store(out_ptr + offsets, value)
    else:
        tl.store(out_ptr + offsets, value, mask=(out_rows < out_height) & (out_cols < out_width))


@triton.jit
def _finish_and_store(out_ptr, values, sample, first_channel, num_channels, row_block, col_block, out_rows, out_cols,
                      out_height, out_width, out_sample_stride, out_channel_stride, out_row_stride, out_col_stride,
                      mean_ptr, std_ptr, HAS_NORM: tl.constexpr, CHANNEL_GROUP: tl.constexpr):
    """Each channel of the group that exists: _finish, then _store_tile."""
    for k in tl.static_range(CHANNEL_GROUP):
        channel = first_channel + k
        if channel < num_channels:
            value = _finish(values[k], channel, mean_ptr, std_ptr, HAS_NORM, out_ptr.dtype.element_ty)
            _store_tile(out_ptr, value, sample, row_block, col_block, channel, out_rows, out_cols, out_height,
                        out_width, out_sample_stride, out_channel_stride, out_row_stride, out_col_stride)


@triton.jit(do_not_specialize=["out_height"])
def _resized_crop_kernel(table_ptr, pixel_ref_ptr, box_ptr, flip_ptr, mean_ptr, std_ptr, out_ptr,
                         num_channels, out_height, out_width, channel_groups,
                         out_sample_stride, out_channel_stride, out_row_stride, out_col_stride,
                         ANTIALIAS: tl.constexpr, HAS_FLIP: tl.constexpr, HAS_NORM: tl.constexpr,
                         CHANNEL_GROUP: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
                         INDEX_DTYPE: tl.constexpr, UNIT_COL_STRIDE: tl.constexpr,
                         CLAMPED_READS: tl.constexpr):
    """out[n, c, y, x] = the resized crop of image n (flipped: at column w-1-x), normalised, rounded.

    Inputs: table (N, 6) int64 (element address, H, W, channel/row/column strides of each image,
    any layout); pixel_ref (any image: its dtype types the table's addresses); box (N, 4) int32
    (top, left, height, width); flip (N,) uint8 when HAS_FLIP; mean, std (C,) fp32 when HAS_NORM.
    out (N, C, h, w) with the given strides (contiguous or channels_last). A program is a
    BLOCK_Y x BLOCK_X tile of CHANNEL_GROUP channels of one sample (every channel, for up to
    MAX_CHANNEL_GROUP): the channels share the tile's filter weights and offsets, and no lane idles.

    One pass with bounded loops: per output element, taps_y x taps_x loads and multiply-adds, where
    taps is the tile's largest window per axis, about 2 * support + 1 (support = max(box/out, 1) with
    antialias), and 2 without antialias (the loops unroll). The weights (a tap's weight times 1 / its
    window's total: one divide per output row or column) are computed per tap for a row or a column of
    the tile and shared by its channels; the first column taps' (2, or 3 with antialias) once per tile
    (shared by every row tap). Per tap and element: a byte load (clamped into the image, no mask, for
    byte images; masked for float ones), its conversion and one FMA (a byte's first column tap: one FMA on
    the float 2^23 + byte, no conversion), and per row tap a 64-bit address for those first column taps (the
    next ones at immediate offsets); offsets are int32 where
    INDEX_DTYPE allows. A tile inside the output is stored in 16-byte stores (contiguous output).
    Bytes: the crop's source pixels come from DRAM about once (neighbouring taps and tiles hit in
    L1/L2: box_h * box_w / (h * w) source pixels per output pixel, each of the image's size), and the
    output is written once.
    """
    sample, first_channel, row_block, col_block, out_rows, out_cols = _tile(channel_groups, CHANNEL_GROUP, BLOCK_Y,
                                                                            BLOCK_X, INDEX_DTYPE)
    resize_cols = out_cols
    if HAS_FLIP:
        resize_cols = _flipped(flip_ptr, sample, out_cols, out_width)
    values = _resized_tile(table_ptr, box_ptr, sample, first_channel, num_channels, out_rows, resize_cols, out_height,
                           out_width, CHANNEL_GROUP, pixel_ref_ptr.dtype.element_ty, ANTIALIAS, INDEX_DTYPE,
                           UNIT_COL_STRIDE, CLAMPED_READS)
    _finish_and_store(out_ptr, values, sample, first_channel, num_channels, row_block, col_block, out_rows, out_cols,
                      out_height, out_width, out_sample_stride, out_channel_stride, out_row_stride, out_col_stride,
                      mean_ptr, std_ptr, HAS_NORM, CHANNEL_GROUP)


@triton.jit(do_not_specialize=["out_height", "segment_rows"])
def _resized_crop_strip_kernel(table_ptr, pixel_ref_ptr, box_ptr, flip_ptr, mean_ptr, std_ptr, out_ptr,
                               num_channels, out_height, out_width, channel_groups, segment_rows,
                               out_sample_stride, out_channel_stride, out_row_stride, out_col_stride,
                               HAS_FLIP: tl.constexpr, HAS_NORM: tl.constexpr,
                               CHANNEL_GROUP: tl.constexpr, STRIP_X: tl.constexpr, WINDOW: tl.constexpr,
                               STRIP_COLUMN_SLOTS: tl.constexpr,
                               INDEX_DTYPE: tl.constexpr, UNIT_COL_STRIDE: tl.constexpr,
                               CLAMPED_READS: tl.constexpr):
    """_resized_crop_kernel's output (the same bits) in two passes: each source row's horizontal sums once per program.

    A program is STRIP_X output columns of one sample and channel group, walking down a segment of segment_rows
    output rows (the grid: samples x channel groups, segments, strips). The column taps' weights and offsets are
    computed once per program. It keeps the horizontal sums (_row_sums) of the last WINDOW source rows in registers,
    rows first_row(i) .. first_row(i) + WINDOW - 1 for output row i: it advances one source row at a time (each
    row's sums computed once) and then sums output row i's row taps over the window's slots, in tap order, skipping
    the taps past its count (they add exact zeros in the single pass). Inputs, outputs and bytes as
    _resized_crop_kernel's; per output element, box_h / h source rows' column taps (and WINDOW's start in each
    segment) instead of taps_y of them. A segment with a row window of more than WINDOW taps (a downscale past about
    (WINDOW - 1) / 2) runs the single pass (_resized_tile) one output row at a time.
    """
    ANTIALIAS: tl.constexpr = True  # resized_crop takes this kernel only with antialias
    sample, first_channel, segment, strip = _program(channel_groups, CHANNEL_GROUP, INDEX_DTYPE)
    out_cols = _along_columns(strip * STRIP_X + tl.arange(0, STRIP_X))
    resize_cols = out_cols
    if HAS_FLIP:
        resize_cols = _flipped(flip_ptr, sample, out_cols, out_width)
    first_out_row = segment * segment_rows
    end_row = tl.minimum(first_out_row + segment_rows, out_height)
    image, image_height, image_width, channel_stride, row_stride, col_stride, top, left, box_height, box_width = \
        _sample_crop(table_ptr, box_ptr, sample, pixel_ref_ptr.dtype.element_ty, INDEX_DTYPE)
    # The segment's largest row window (segment_rows <= STRIP_X).
    segment_out_rows = _along_columns(first_out_row + tl.arange(0, STRIP_X))  # laid as the columns: one layout
    _, _, segment_counts, _, _ = _filter_window(segment_out_rows, box_height, out_height, ANTIALIAS)
    columns, slot_weights, slot_ok, biased_weight, col_offsets, taps_x = _column_taps(
        resize_cols, left, box_width, out_width, image_width, col_stride, ANTIALIAS, STRIP_COLUMN_SLOTS,
        UNIT_COL_STRIDE, CLAMPED_READS)
    wide_col_offsets = col_offsets.to(tl.int64)
    # The column slots holding a tap of some window inside the image (the slots start at first_col clamped into
    # [0, W - STRIP_COLUMN_SLOTS] for byte images, so near the right edge a window's taps lie past its first slots).
    start_col, first_col, _, _, count_x, _, _, wanted_cols, _ = columns
    slot_reach = tl.max(tl.where(wanted_cols, tl.minimum(first_col + count_x, image_width) - start_col, 0))
    if (tl.max(tl.where(segment_out_rows < end_row, segment_counts, 0)) <= WINDOW) & \
            (slot_reach <= STRIP_COLUMN_SLOTS):
        if HAS_NORM:
            inverse_stds, shifts = _reciprocal_norms(first_channel, num_channels, mean_ptr, std_ptr, CHANNEL_GROUP)
        plane_offsets = _plane_offsets(first_channel, num_channels, channel_stride, CHANNEL_GROUP, INDEX_DTYPE,
                                       CLAMPED_READS)
        zeros = ()
        for k in tl.static_range(CHANNEL_GROUP):
            zeros = zeros + (tl.zeros(out_cols.shape, dtype=tl.float32),)
        window = ()
        for slot in tl.static_range(WINDOW):
            window = window + (zeros,)
        newest = top - 1  # the source row in the window's last slot: none yet (first_row(i) >= top)
        for out_row in range(first_out_row, end_row):
            out_rows = out_row + tl.zeros([1, 1], dtype=INDEX_DTYPE)
            centre_y, first_y, count_y, inverse_y, taps_y = _filter_window(out_rows, box_height, out_height,
                                                                           ANTIALIAS)
            inverse_total_y = _inverse_window_total(centre_y, first_y, count_y, inverse_y, taps_y)
            last = top + tl.max(first_y) + WINDOW - 1
            newest = tl.maximum(newest, last - WINDOW)
            while newest < last:
                newest += 1
                row_ok = (newest >= 0) & (newest < image_height)
                row = newest
                if CLAMPED_READS:
                    row = tl.minimum(tl.maximum(row, 0), image_height - 1)
                row_values = _row_sums(image + row.to(INDEX_DTYPE) * row_stride, row_ok, first_channel,
                                       num_channels, plane_offsets, columns, slot_weights, slot_ok, biased_weight,
                                       wide_col_offsets, slot_reach, image_width, CHANNEL_GROUP, ANTIALIAS,
                                       ANTIALIAS_COLUMN_SLOTS, False, CLAMPED_READS)
                shifted = ()
                for slot in tl.static_range(1, WINDOW):
                    shifted = shifted + (window[slot],)
                window = shifted + (row_values,)
            values = zeros
            for slot in tl.static_range(WINDOW):
                if slot < taps_y:
                    weight_y = _tap_weight(slot, centre_y, first_y, count_y, inverse_y) * inverse_total_y
                    if CLAMPED_READS:
                        row = top + first_y + slot
                        weight_y = tl.where((row >= 0) & (row < image_height), weight_y, 0.0)
                    summed = ()
                    for k in tl.static_range(CHANNEL_GROUP):
                        summed = summed + (fma(window[slot][k], weight_y, values[k]),)
                    values = summed
            for k in tl.static_range(CHANNEL_GROUP):
                channel = first_channel + k
                if channel < num_channels:
                    value = values[k]
                    if HAS_NORM:
                        value = fma(value, inverse_stds[k], shifts[k])
                    _store_tile(out_ptr, _rounded(value, out_ptr.dtype.element_ty), sample, out_row, strip, channel,
                                out_rows, out_cols, out_height, out_width, out_sample_stride, out_channel_stride,
                                out_row_stride, out_col_stride)
    else:
        for out_row in range(first_out_row, end_row):
            out_rows = out_row + tl.zeros([1, 1], dtype=INDEX_DTYPE)
            values = _resized_tile(table_ptr, box_ptr, sample, first_channel, num_channels, out_rows, resize_cols,
                                   out_height, out_width, CHANNEL_GROUP, pixel_ref_ptr.dtype.element_ty, ANTIALIAS,
                                   INDEX_DTYPE, UNIT_COL_STRIDE, CLAMPED_READS)
            _finish_and_store(out_ptr, values, sample, first_channel, num_channels, out_row, strip, out_rows,
                              out_cols, out_height, out_width, out_sample_stride, out_channel_stride, out_row_stride,
                              out_col_stride, mean_ptr, std_ptr, HAS_NORM, CHANNEL_GROUP)


@triton.jit
def _flipped(flip_ptr, sample, out_cols, out_width):
    """The resize columns behind output columns `out_cols` of `sample`: mirrored where flip[sample]."""
    return tl.where(tl.load(flip_ptr + sample) != 0, out_width - 1 - out_cols, out_cols)


@triton.jit
def _takes_partner(mode, mix_box_ptr, sample, row_block, col_block, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """Whether some pixel of the tile takes the partner's crop: MixUp, or a CutMix box that touches the tile."""
    x0 = tl.load(mix_box_ptr + sample * 4)
    y0 = tl.load(mix_box_ptr + sample * 4 + 1)
    x1 = tl.load(mix_box_ptr + sample * 4 + 2)
    y1 = tl.load(mix_box_ptr + sample * 4 + 3)
    tile_y0 = row_block * BLOCK_Y
    tile_x0 = col_block * BLOCK_X
    touches = (y0 < tile_y0 + BLOCK_Y) & (y1 > tile_y0) & (x0 < tile_x0 + BLOCK_X) & (x1 > tile_x0)
    return (mode == _MIXUP) | ((mode == _CUTMIX) & touches)


@triton.jit
def _composite_and_store(out_ptr, values, others, sample, first_channel, num_channels, row_block, col_block, out_rows,
                         out_cols, out_height, out_width, out_sample_stride, out_channel_stride, out_row_stride,
                         out_col_stride, mode_ptr, mix_box_ptr, lam_ptr, erase_box_ptr, erase_ptr, fill_ptr, mean_ptr,
                         std_ptr, HAS_ERASE: tl.constexpr, HAS_NORM: tl.constexpr, CHANNEL_GROUP: tl.constexpr):
    """Sample `sample`'s output tile from its own crop `values` and its partner's `others` (tuples of CHANNEL_GROUP
    fp32 tiles; `others` is read only where the mode takes it): MixUp or CutMix and erasing as composite_batch
    computes them, then _finish's normalisation and the one rounding. The mode is the sample's: the program runs
    MixUp's blend or else the selects (benchmarks/static_model.py counts each by the modes a seed draws)."""
    mode = tl.load(mode_ptr + sample)
    if mode == _MIXUP:
        lam = tl.load(lam_ptr + sample)
        mixed_values = ()
        for k in tl.static_range(CHANNEL_GROUP):
            mixed_values = mixed_values + (lam * values[k] + (1.0 - lam) * others[k],)
        values = mixed_values
    else:  # CutMix, or the sample kept: selects either way (a pass-through would cost the join more moves)
        inside = (mode == _CUTMIX) & (out_rows >= tl.load(mix_box_ptr + sample * 4 + 1)) & \
            (out_rows < tl.load(mix_box_ptr + sample * 4 + 3)) & \
            (out_cols >= tl.load(mix_box_ptr + sample * 4)) & (out_cols < tl.load(mix_box_ptr + sample * 4 + 2))
        mixed_values = ()
        for k in tl.static_range(CHANNEL_GROUP):
            mixed_values = mixed_values + (tl.where(inside, others[k], values[k]),)
        values = mixed_values
    if HAS_ERASE:
        erased = tl.load(erase_ptr + sample) != 0
        inside_erase = (out_rows >= tl.load(erase_box_ptr + sample * 4 + 1)) & \
            (out_rows < tl.load(erase_box_ptr + sample * 4 + 3)) & \
            (out_cols >= tl.load(erase_box_ptr + sample * 4)) & (out_cols < tl.load(erase_box_ptr + sample * 4 + 2))
        erased_values = ()
        for k in tl.static_range(CHANNEL_GROUP):
            fill = tl.load(fill_ptr + tl.minimum(first_channel + k, num_channels - 1))
            erased_values = erased_values + (tl.where(erased & inside_erase, fill, values[k]),)
        values = erased_values
    _finish_and_store(out_ptr, values, sample, first_channel, num_channels, row_block, col_block, out_rows, out_cols,
                      out_height, out_width, out_sample_stride, out_channel_stride, out_row_stride, out_col_stride,
                      mean_ptr, std_ptr, HAS_NORM, CHANNEL_GROUP)


@triton.jit(do_not_specialize=["out_height"])
def _batch_augment_kernel(table_ptr, pixel_ref_ptr, crop_ptr, flip_ptr, mix_box_ptr, lam_ptr, partner_ptr, mode_ptr,
                          erase_box_ptr, erase_ptr, fill_ptr, mean_ptr, std_ptr, out_ptr,
                          num_samples, num_channels, out_height, out_width, channel_groups,
                          out_sample_stride, out_channel_stride, out_row_stride, out_col_stride,
                          ANTIALIAS: tl.constexpr, HAS_ERASE: tl.constexpr, HAS_NORM: tl.constexpr,
                          CHANNEL_GROUP: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
                          INDEX_DTYPE: tl.constexpr, UNIT_COL_STRIDE: tl.constexpr,
                          CLAMPED_READS: tl.constexpr):
    """Crop, resize and flip, then MixUp/CutMix with the partner's crop, erase, normalise and cast, in one pass.

    Per sample n with partner m: own = the resized crop of n (as _resized_crop_kernel: crop (N, 4)
    int32, flip (N,) uint8), other = m's. Then, as mixing's composite (MixMode codes in mode (N,)
    int32; mix_box (N, 4) int32 (x0, y0, x1, y1) in output pixels; lam (N,) fp32):
    MIXUP lam * own + (1 - lam) * other, CUTMIX other inside the box, else own; with HAS_ERASE,
    fill[c] inside erase_box where erase[n] (uint8): in fp32, the value composite_batch computes on
    resized_crop's fp32 output, bit for bit. Then normalised with mean/std (C,) fp32 when HAS_NORM, as
    resized_crop's kernel normalises (_finish), and rounded once to out's dtype.

    Two samples that are each other's partners (partner="flip", timm's pairing) are composited by the lower one's
    programs, which interpolate each crop once and write both outputs; the higher one's programs return at once.
    Bytes then: each crop's source pixels once (plus a tile's halo), each output once. A sample whose partner does
    not pair back (partner="roll") interpolates the partner's crop again in the tiles that take it (MixUp, or a
    tile a CutMix box touches).
    """
    sample, first_channel, row_block, col_block, out_rows, out_cols = _tile(channel_groups, CHANNEL_GROUP, BLOCK_Y,
                                                                            BLOCK_X, INDEX_DTYPE)
    partner = tl.minimum(tl.maximum(tl.load(partner_ptr + sample).to(INDEX_DTYPE), 0), num_samples - 1)
    partners_partner = tl.minimum(tl.maximum(tl.load(partner_ptr + partner).to(INDEX_DTYPE), 0), num_samples - 1)
    paired = (partners_partner == sample) & (partner != sample)
    if (partner > sample) | (not paired):  # else the partner's programs write this sample
        values = _resized_tile(table_ptr, crop_ptr, sample, first_channel, num_channels, out_rows,
                               _flipped(flip_ptr, sample, out_cols, out_width), out_height, out_width, CHANNEL_GROUP,
                               pixel_ref_ptr.dtype.element_ty, ANTIALIAS, INDEX_DTYPE, UNIT_COL_STRIDE, CLAMPED_READS)
        if paired | _takes_partner(tl.load(mode_ptr + sample), mix_box_ptr, sample, row_block, col_block, BLOCK_Y,
                                   BLOCK_X):
            others = _resized_tile(table_ptr, crop_ptr, partner, first_channel, num_channels, out_rows,
                                   _flipped(flip_ptr, partner, out_cols, out_width), out_height, out_width,
                                   CHANNEL_GROUP, pixel_ref_ptr.dtype.element_ty, ANTIALIAS, INDEX_DTYPE,
                                   UNIT_COL_STRIDE, CLAMPED_READS)
        else:
            others = values
        _composite_and_store(out_ptr, values, others, sample, first_channel, num_channels, row_block, col_block,
                             out_rows, out_cols, out_height, out_width, out_sample_stride, out_channel_stride,
                             out_row_stride, out_col_stride, mode_ptr, mix_box_ptr, lam_ptr, erase_box_ptr, erase_ptr,
                             fill_ptr, mean_ptr, std_ptr, HAS_ERASE, HAS_NORM, CHANNEL_GROUP)
        if paired:
            _composite_and_store(out_ptr, others, values, partner, first_channel, num_channels, row_block, col_block,
                                 out_rows, out_cols, out_height, out_width, out_sample_stride, out_channel_stride,
                                 out_row_stride, out_col_stride, mode_ptr, mix_box_ptr, lam_ptr, erase_box_ptr,
                                 erase_ptr, fill_ptr, mean_ptr, std_ptr, HAS_ERASE, HAS_NORM, CHANNEL_GROUP)


# ----------------------------------------------------------------------------- the image table


def _as_batch(images):
    """The op's `images` argument: [one (N, C, H, W) tensor] or N (C, H_i, W_i) tensors. Returns
    (is_batch, N, C)."""
    if len(images) == 1 and images[0].dim() == 4:
        return True, images[0].shape[0], images[0].shape[1]
    return False, len(images), images[0].shape[0]


def image_table(images):
    """The (N, 6) int64 device table of the images (element address, H, W, channel/row/column strides).

    A batch's table is computed on the device from its base address (no copy); a list's is built
    on the host and copied once per batch (pinned and asynchronous on a GPU).
    """
    is_batch, n, _ = _as_batch(images)
    first = images[0]
    if is_batch:
        _, _, height, width = first.shape
        sample_stride, channel_stride, row_stride, col_stride = first.stride()
        addresses = first.data_ptr() + torch.arange(n, dtype=torch.int64, device=first.device) * (
            sample_stride * first.element_size())
        geometry = torch.tensor([height, width, channel_stride, row_stride, col_stride], dtype=torch.int64)
        return torch.cat([addresses[:, None], geometry.to(first.device).expand(n, 5)], dim=1).contiguous()
    rows = [[image.data_ptr(), image.shape[1], image.shape[2], *image.stride()] for image in images]
    table = torch.tensor(rows, dtype=torch.int64)
    if first.device.type == "cuda":
        return table.pin_memory().to(first.device, non_blocking=True)
    return table.to(first.device)


# ----------------------------------------------------------------------------- implementations


def _new_output(images, height, width, out_dtype, channels_last):
    _, n, channels = _as_batch(images)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, channels, height, width), dtype=out_dtype, device=images[0].device,
                       memory_format=memory_format)


def _resized_crop_torch(images: List[torch.Tensor], boxes: torch.Tensor, flip: Optional[torch.Tensor],
                        mean: Optional[torch.Tensor], std: Optional[torch.Tensor], height: int, width: int,
                        antialias: bool, out_dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """The op's torch implementation: reference.resized_crop per sample. images: [one (N, C, H, W)
    batch] or N (C, H_i, W_i) images; boxes (N, 4) int32 (top, left, height, width); flip (N,) bool
    or None; mean, std (C,) fp32 or None."""
    is_batch, _, _ = _as_batch(images)
    samples = list(images[0].unbind(0)) if is_batch else images
    value = reference.resized_crop(samples, boxes, (height, width), flip=flip, antialias=antialias,
                                   mean=mean, std=std)
    out = _new_output(images, height, width, out_dtype, channels_last)
    out.copy_(reference.round_image(value, out_dtype))
    return out


def _launch_geometry(images, height, width):
    """(N, C, channel group, channel groups, row blocks, column blocks, image table) of a launch over (height, width)
    outputs; a program computes a tile of one channel group."""
    _, n, channels = _as_batch(images)
    group = min(channels, MAX_CHANNEL_GROUP)
    return n, channels, group, cdiv(channels, group), cdiv(height, BLOCK_Y), cdiv(width, BLOCK_X), image_table(images)


def _column_slots(antialias):
    """The column slots the single-pass kernels read from one address."""
    return (ANTIALIAS_COLUMN_SLOTS if antialias else BILINEAR_TAPS).value


def _layout_constexprs(images, out, slots):
    """The kernels' constexprs that follow the images and output: INDEX_DTYPE, int32 when every offset a program
    forms fits (inside any image, the pixels its strides span, and in `out`); UNIT_COL_STRIDE, whether every
    image's columns are adjacent; CLAMPED_READS, reads clamped into the image rather than masked (for finite
    pixels, bytes, and every image at least as wide as the `slots` column slots a row reads from one address)."""
    spans = [sum((size - 1) * abs(stride) for size, stride in zip(image.shape[-3:], image.stride()[-3:]))
             for image in images]  # per sample: the table holds each sample's own address
    return dict(INDEX_DTYPE=torch.int32 if max(spans + [out.numel()]) < 1 << 31 else torch.int64,
                UNIT_COL_STRIDE=all(image.stride(-1) == 1 for image in images),
                CLAMPED_READS=images[0].dtype == torch.uint8 and all(image.numel() > 0 and image.shape[-1] >= slots
                                                                   for image in images))


def _strip_segments(strips, height, device):
    """Segments of `height` output rows per strip for _resized_crop_strip_kernel, over `strips` strips in all."""
    wanted = cdiv(STRIP_PROGRAMS_PER_SM * _backend.sm_count(device), strips)
    return max(min(wanted, cdiv(height, MIN_SEGMENT_ROWS)), cdiv(height, STRIP_X))


def _resized_crop_triton(images, boxes, flip, mean, std, height, width, antialias, out_dtype, channels_last):
    out = _new_output(images, height, width, out_dtype, channels_last)
    if out.numel() == 0:
        return out
    n, channels, group, groups, row_blocks, col_blocks, table = _launch_geometry(images, height, width)
    if antialias:
        strips = cdiv(width, STRIP_X)
        segment_rows = cdiv(height, _strip_segments(n * groups * strips, height, out.device))
        launch(_resized_crop_strip_kernel, (n * groups, cdiv(height, segment_rows), strips),
               table, images[0], boxes, flip.view(torch.uint8) if flip is not None else boxes,
               mean if mean is not None else table, std if std is not None else table, out, channels, height, width,
               groups, segment_rows, *out.stride(),
               num_warps=STRIP_WARPS, HAS_FLIP=flip is not None, HAS_NORM=mean is not None,
               CHANNEL_GROUP=group, STRIP_X=STRIP_X, WINDOW=WINDOW, STRIP_COLUMN_SLOTS=STRIP_COLUMN_SLOTS,
               **_layout_constexprs(images, out, STRIP_COLUMN_SLOTS))
        return out
    launch(_resized_crop_kernel, (n * groups, row_blocks, col_blocks),
           table, images[0], boxes, flip.view(torch.uint8) if flip is not None else boxes,
           mean if mean is not None else table, std if std is not None else table, out, channels, height, width,
           groups, *out.stride(),
           num_warps=NUM_WARPS, ANTIALIAS=antialias, HAS_FLIP=flip is not None, HAS_NORM=mean is not None,
           CHANNEL_GROUP=group, BLOCK_Y=BLOCK_Y, BLOCK_X=BLOCK_X,
           **_layout_constexprs(images, out, _column_slots(antialias)))
    return out


def _pointer(tensor):
    return tensor.data_ptr() if tensor is not None else 0


def _resized_crop_cuda_arguments(table, images, boxes, flip, mean, std, out, antialias):
    """Every keyword argument of _C.resized_crop but the stream; the tests hand the same ones to
    _C.resized_crop_host, which runs the kernel's thread code on CPU tensors. `table` is image_table(images)
    (the caller keeps it alive)."""
    n, channels, height, width = out.shape
    return dict(table=table.data_ptr(), crop=boxes.data_ptr(),
                flip=flip.data_ptr() if flip is not None else 0, mean=_pointer(mean), std=_pointer(std),
                out=out.data_ptr(), n=n, c=channels, out_height=height, out_width=width,
                channels_last=not out.is_contiguous(), antialias=antialias,
                in_dtype=DTYPE_CODES[images[0].dtype], out_dtype=DTYPE_CODES[out.dtype])


def _resized_crop_cuda(images, boxes, flip, mean, std, height, width, antialias, out_dtype, channels_last):
    out = _new_output(images, height, width, out_dtype, channels_last)
    if out.numel() > 0:
        table = image_table(images)
        _backend.launch_cuda(_backend._C.resized_crop, out.device,
                             **_resized_crop_cuda_arguments(table, images, boxes, flip, mean, std, out, antialias))
    return out


# ----------------------------------------------------------------------------- ops


resized_crop_op = Op("resized_crop", torch=_resized_crop_torch, triton=_resized_crop_triton, cuda=_resized_crop_cuda)


@resized_crop_op.register_fake
def _(images, boxes, flip, mean, std, height, width, antialias, out_dtype, channels_last, backend):
    return _new_output(images, height, width, out_dtype, channels_last)


# --- batch_augment: resized_crop, then composite_batch's MixUp/CutMix, erasing and normalisation


def _batch_augment_torch(images: List[torch.Tensor], crop: torch.Tensor, flip: torch.Tensor, mix_box: torch.Tensor,
                         lam: torch.Tensor, partner: torch.Tensor, mode: torch.Tensor,
                         erase_box: Optional[torch.Tensor], erase: Optional[torch.Tensor], fill: torch.Tensor,
                         mean: Optional[torch.Tensor], std: Optional[torch.Tensor], height: int, width: int,
                         antialias: bool, out_dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """The composition the fused kernel computes: resized_crop to fp32, composite_batch (mix), then
    composite_batch (erase where erase[n], normalise, cast; the kernels normalise as resized_crop's kernel
    does, within an ulp or two of this quotient before the rounding). Crop/flip as resized_crop's; mix_box,
    lam, partner, mode as composite_batch's; erase_box (N, 4) int32 (x0, y0, x1, y1) and erase
    (N,) bool, or None; fill (C,) fp32."""
    from recipe_kernels.mixing import MixMode, composite_batch
    x = _resized_crop_torch(images, crop, flip, None, None, height, width, antialias, torch.float32, channels_last)
    mixed = composite_batch(x, mix_box, lam, partner, mode, backend="torch")
    n = mixed.shape[0]
    if erase is None:
        keep = torch.full((n,), int(MixMode.KEEP), dtype=torch.int32, device=x.device)
        erase_box, erase_mode = mix_box, keep
    else:
        erase_mode = torch.where(erase, int(MixMode.ERASE), int(MixMode.KEEP)).to(torch.int32)
    out = composite_batch(mixed, erase_box, torch.ones_like(lam), torch.arange(n, device=x.device), erase_mode,
                          fill=fill, mean=mean, std=std, out_dtype=out_dtype, backend="torch")
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _batch_augment_triton(images, crop, flip, mix_box, lam, partner, mode, erase_box, erase, fill, mean, std,
                          height, width, antialias, out_dtype, channels_last):
    out = _new_output(images, height, width, out_dtype, channels_last)
    if out.numel() == 0:
        return out
    n, channels, group, groups, row_blocks, col_blocks, table = _launch_geometry(images, height, width)
    launch(_batch_augment_kernel, (n * groups, row_blocks, col_blocks),
           table, images[0], crop, flip.view(torch.uint8), mix_box, lam, partner, mode,
           erase_box if erase is not None else mix_box, erase.view(torch.uint8) if erase is not None else flip.view(
               torch.uint8), fill, mean if mean is not None else fill, std if std is not None else fill, out,
           n, channels, height, width, groups, *out.stride(),
           num_warps=NUM_WARPS, ANTIALIAS=antialias, HAS_ERASE=erase is not None, HAS_NORM=mean is not None,
           CHANNEL_GROUP=group, BLOCK_Y=BLOCK_Y, BLOCK_X=BLOCK_X,
           **_layout_constexprs(images, out, _column_slots(antialias)))
    return out


def _batch_augment_cuda_arguments(table, images, crop, flip, mix_box, lam, partner, mode, erase_box, erase, fill,
                                  mean, std, out, antialias):
    """Every keyword argument of _C.batch_augment but the stream (as _resized_crop_cuda_arguments)."""
    return dict(**_resized_crop_cuda_arguments(table, images, crop, flip, mean, std, out, antialias),
                mix_box=mix_box.data_ptr(), lam=lam.data_ptr(), partner=partner.data_ptr(), mode=mode.data_ptr(),
                erase_box=_pointer(erase_box), erase=_pointer(erase), fill=fill.data_ptr())


def _batch_augment_cuda(images, crop, flip, mix_box, lam, partner, mode, erase_box, erase, fill, mean, std,
                        height, width, antialias, out_dtype, channels_last):
    out = _new_output(images, height, width, out_dtype, channels_last)
    if out.numel() > 0:
        table = image_table(images)
        _backend.launch_cuda(_backend._C.batch_augment, out.device,
                             **_batch_augment_cuda_arguments(table, images, crop, flip, mix_box, lam, partner, mode,
                                                             erase_box, erase, fill, mean, std, out, antialias))
    return out


batch_augment_op = Op("batch_augment", torch=_batch_augment_torch, triton=_batch_augment_triton,
                      cuda=_batch_augment_cuda)


@batch_augment_op.register_fake
def _(images, crop, flip, mix_box, lam, partner, mode, erase_box, erase, fill, mean, std, height, width, antialias,
      out_dtype, channels_last, backend):
    return _new_output(images, height, width, out_dtype, channels_last)


# ----------------------------------------------------------------------------- sampling on the device

# torchvision's RandomResizedCrop.get_params tries 10 candidates, then falls back to a centre crop.
CROP_ATTEMPTS = 10
# Philox calls per sample: call k < CROP_ATTEMPTS holds candidate k's words (area, log aspect, top,
# left); call CROP_ATTEMPTS holds the flip word (word 0).
FLIP_CALL = CROP_ATTEMPTS
CALLS_PER_SAMPLE = CROP_ATTEMPTS + 1
WORD_RANGE = 1 << 32


def image_sizes(images, device):
    """(N, 2) int64 (height, width) of every image, on `device`."""
    is_batch, n, _ = _as_batch(images)
    if is_batch:
        return torch.tensor(images[0].shape[2:], dtype=torch.int64).to(device).expand(n, 2)
    sizes = torch.tensor([image.shape[1:] for image in images], dtype=torch.int64)
    return (sizes.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else sizes.to(device))


def sample_crops(seed, sizes, scale, ratio, hflip):
    """Per sample: torchvision's RandomResizedCrop.get_params, and a flip, from Philox words of `seed`.

    sizes (N, 2) int64 (H, W) on the device. Candidate k of sample n takes the words of call
    n * CALLS_PER_SAMPLE + k: area fraction ~ U(scale) (word 0), log aspect ~ U(log ratio) (word 1),
    w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)) (half to even, float64); the
    first with 0 < w <= W and 0 < h <= H is placed at top = floor(word 2 * (H - h + 1) / 2^32),
    left likewise from word 3. With none, the centre crop of aspect W/H clamped to ratio.
    flip = word 0 of call CROP_ATTEMPTS < round(hflip * 2^32). All at once, no host sync.
    Returns boxes (N, 4) int64 (top, left, height, width) and flip (N,) bool.
    """
    n = sizes.shape[0]
    counters = torch.arange(n * CALLS_PER_SAMPLE, dtype=torch.int64, device=sizes.device)
    words = torch.stack(philox4x32(seed, counters), dim=-1).reshape(n, CALLS_PER_SAMPLE, 4)
    uniform = lambda word: word.to(torch.float64) * (1.0 / WORD_RANGE)  # noqa: E731  [0, 1), exact
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    candidates = words[:, :CROP_ATTEMPTS]
    area = (height * width).to(torch.float64) * (scale[0] + (scale[1] - scale[0]) * uniform(candidates[..., 0]))
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniform(candidates[..., 1]))
    crop_w = torch.round(torch.sqrt(area * aspect)).to(torch.int64)
    crop_h = torch.round(torch.sqrt(area / aspect)).to(torch.int64)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    top = (candidates[..., 2] * (height - crop_h + 1).clamp(min=1)) >> 32
    left = (candidates[..., 3] * (width - crop_w + 1).clamp(min=1)) >> 32
    first_fit = fits.to(torch.int8).argmax(dim=-1, keepdim=True)
    pick = lambda t: t.gather(-1, first_fit).squeeze(-1)  # noqa: E731
    # The fallback: the whole image, cut to the nearest allowed aspect.
    height, width = height.squeeze(1), width.squeeze(1)
    in_ratio = width.to(torch.float64) / height.to(torch.float64)
    fallback_w = torch.where(in_ratio < ratio[0], width,
                             torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]).to(torch.int64), width))
    fallback_h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]).to(torch.int64), height)
    found = fits.any(dim=-1)
    crop_h = torch.where(found, pick(crop_h), fallback_h)
    crop_w = torch.where(found, pick(crop_w), fallback_w)
    top = torch.where(found, pick(top), torch.div(height - crop_h, 2, rounding_mode="floor"))
    left = torch.where(found, pick(left), torch.div(width - crop_w, 2, rounding_mode="floor"))
    boxes = torch.stack([top, left, crop_h, crop_w], dim=-1)
    flip = words[:, FLIP_CALL, 0] < round(hflip * WORD_RANGE)
    return boxes, flip


# ----------------------------------------------------------------------------- validation


def _check_images(images):
    """images as the op's list ([batch] or the images), after checking dtype, channels and device agree."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be a 4-D (N, C, H, W) tensor or a list of (C, H, W) tensors, "
                             f"got shape {tuple(images.shape)}")
        batch = [images]
    elif isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is an empty list; give at least one (C, H, W) image")
        for index, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"images[{index}] must be a 3-D (C, H, W) tensor, got {shape}")
            for what, value, expected in (("dtype", image.dtype, images[0].dtype),
                                          ("channels", image.shape[0], images[0].shape[0]),
                                          ("device", image.device, images[0].device)):
                if value != expected:
                    raise ValueError(f"images must share one dtype, channel count and device: images[{index}] "
                                     f"has {what} {value} but images[0] has {expected}")
        batch = list(images)
    else:
        raise TypeError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
    if batch[0].dtype not in IMAGE_DTYPES:
        raise ValueError(f"images must be uint8, float32, float16 or bfloat16, got {batch[0].dtype}")
    if torch.is_grad_enabled() and any(image.requires_grad for image in batch):
        raise ValueError("images require grad, but resized_crop has no gradient (it augments input data); "
                         "pass them detached")
    return batch


def _check_size(size):
    """size (an int, or a pair of ints) as (h, w), each > 0. An int gives a square (RandomResizedCrop's rule)."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a pair of ints (h, w), got {size!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (height, width)):
        raise ValueError(f"size must be an int or a pair of ints (h, w), got {size!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    if max(height, width) > MAX_OUTPUT_SIDE:
        raise ValueError(f"size must be at most {MAX_OUTPUT_SIDE} per side, got {size!r}")
    return int(height), int(width)


def _check_boxes(boxes, n, device):
    if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (n, 4):
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an ({n}, 4) tensor of (top, left, height, width), got {shape}")
    if boxes.dtype not in (torch.int64, torch.int32, torch.int16):
        raise ValueError(f"boxes must be an integer tensor (int64, int32 or int16), got {boxes.dtype}")
    if boxes.device != device:
        raise ValueError(f"boxes is on {boxes.device} but the images are on {device}")
    if boxes.dtype == torch.int64:  # values beyond int32 clamp: far outside any image either way
        boxes = boxes.clamp(-2**31, 2**31 - 1)
    return boxes.to(torch.int32).contiguous()


def _check_flip(flip, n, device):
    if flip is None:
        return None
    if not isinstance(flip, torch.Tensor) or tuple(flip.shape) != (n,) or flip.dtype != torch.bool:
        what = f"{tuple(flip.shape)} {flip.dtype}" if isinstance(flip, torch.Tensor) else type(flip).__name__
        raise ValueError(f"flip must be None or an ({n},) bool tensor, got {what}")
    if flip.device != device:
        raise ValueError(f"flip is on {flip.device} but the images are on {device}")
    return flip.contiguous()


def _check_range(name, pair, upper=None):
    from recipe_kernels import mixing
    return mixing._check_range(name, pair, upper)


def _normalization(images, mean, std, out_dtype):
    """(mean, std, out_dtype) for the op: mean/std as (C,) fp32 tensors or None; out_dtype defaults to
    float32 when normalising, else the images' dtype."""
    from recipe_kernels import mixing
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    dtype = images[0].dtype
    if out_dtype is None:
        out_dtype = torch.float32 if mean is not None else dtype
    if out_dtype not in IMAGE_DTYPES:
        raise ValueError(f"out_dtype must be uint8, float32, float16 or bfloat16, got {out_dtype}")
    if out_dtype == torch.uint8 and (dtype != torch.uint8 or mean is not None):
        raise ValueError("out_dtype=torch.uint8 needs uint8 images and no normalisation")
    if mean is None:
        return None, None, out_dtype
    _, _, channels = _as_batch(images)
    if not isinstance(std, torch.Tensor):
        stds = [std] if isinstance(std, numbers.Real) else list(std)
        if any(float(s) == 0.0 for s in stds):
            raise ValueError(f"std must not contain zeros, got {std!r}")
    device = images[0].device
    mean = mixing._per_channel("mean", mean, channels, device, finite=True)
    std = mixing._per_channel("std", std, channels, device, finite=True)
    return mean, std, out_dtype


def _check_memory_format(memory_format):
    if memory_format not in (torch.contiguous_format, torch.channels_last):
        raise ValueError(f"memory_format must be torch.contiguous_format or torch.channels_last, got {memory_format}")
    return memory_format == torch.channels_last


# ----------------------------------------------------------------------------- public API

Images = Union[torch.Tensor, Sequence[torch.Tensor]]
PerChannel = Union[float, Sequence[float], torch.Tensor]


def resized_crop(images: Images, boxes: torch.Tensor, size: Union[int, Tuple[int, int]], *,
                 flip: Optional[torch.Tensor] = None, antialias: bool = True, mean: Optional[PerChannel] = None,
                 std: Optional[PerChannel] = None, out_dtype: Optional[torch.dtype] = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 backend: Optional[str] = None) -> torch.Tensor:
    """Crops box n of image n, resizes it to `size` and flips it where flip[n]: (N, C, h, w) in one launch.

    images: an (N, C, H, W) tensor, or a list of N (C, H_i, W_i) tensors of one dtype, channel
    count and device; uint8, float32, float16 or bfloat16, any strides. boxes: (N, 4) integers
    (top, left, height, width) in source pixels, torchvision's order; a box may leave its image
    (zeros are read there); a box of height or width 0 gives zeros. size: an int (a square) or
    (h, w). Per sample, the result is torchvision.transforms.v2.functional.resized_crop(image,
    top, left, height, width, [h, w], antialias=antialias) (bilinear), then horizontal_flip where
    flip[n]. With mean/std: (v - mean[c]) / std[c] (the kernels: fma(v, 1 / std[c], -mean[c] / std[c]), the
    reciprocal and the shift rounded once), written as out_dtype (float32 by default when
    normalising, else the images' dtype). The output is contiguous or channels_last
    (memory_format). No gradient. No host sync (a list input copies its small address table).
    """
    batch = _check_images(images)
    _, n, _ = _as_batch(batch)
    height, width = _check_size(size)
    device = batch[0].device
    boxes = _check_boxes(boxes, n, device)
    flip = _check_flip(flip, n, device)
    mean, std, out_dtype = _normalization(batch, mean, std, out_dtype)
    channels_last = _check_memory_format(memory_format)
    backend = _backend.resolve("augment", device, backend)
    return resized_crop_op(batch, boxes, flip, mean, std, height, width, bool(antialias), out_dtype, channels_last,
                           backend)


def random_resized_crop(images: Images, size: Union[int, Tuple[int, int]], *,
                        scale: Tuple[float, float] = (0.08, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                        hflip: float = 0.5, antialias: bool = True, mean: Optional[PerChannel] = None,
                        std: Optional[PerChannel] = None, out_dtype: Optional[torch.dtype] = None,
                        memory_format: torch.memory_format = torch.contiguous_format,
                        generator: Optional[torch.Generator] = None, return_params: bool = False,
                        backend: Optional[str] = None):
    """torchvision's RandomResizedCrop and RandomHorizontalFlip per sample, sampled on the device.

    Each sample gets its own box (RandomResizedCrop.get_params: area fraction ~ U(scale), log
    aspect ~ U(log ratio), up to 10 candidates, else the centre crop; see sample_crops) and a
    flip with probability hflip, all from one seed drawn on the device (torch.manual_seed
    reproduces; each CUDA-graph replay draws anew). Returns x, or (x, boxes, flip) with
    return_params: resized_crop(images, boxes, size, flip=flip, ...) reproduces x bit for bit.
    """
    batch = _check_images(images)
    height, width = _check_size(size)
    scale = _check_range("scale", scale, upper=1.0)
    ratio = _check_range("ratio", ratio)
    if isinstance(hflip, bool) or not isinstance(hflip, numbers.Real) or not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip!r}")
    mean, std, out_dtype = _normalization(batch, mean, std, out_dtype)
    channels_last = _check_memory_format(memory_format)
    device = batch[0].device
    backend = _backend.resolve("augment", device, backend)
    boxes, flip = sample_crops(draw_seed(device, generator), image_sizes(batch, device), scale, ratio, float(hflip))
    x = resized_crop_op(batch, boxes.to(torch.int32), flip, mean, std, height, width, bool(antialias), out_dtype,
                        channels_last, backend)
    return (x, boxes, flip) if return_params else x


# timm's eval transform keeps the centre crop_pct = 0.875 of the image (Resize(size / 0.875) + CenterCrop(size)).
EVAL_CROP_FRACTION = 0.875
# The erasing boxes of batch_augment: torchvision's RandomErasing defaults.
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


def centre_boxes(sizes, height, width, fraction=EVAL_CROP_FRACTION):
    """(N, 4) int64 (top, left, height, width): the centred box of the output's aspect h/w whose sides
    are `fraction` of the largest such box inside each image (sizes (N, 2) on the device)."""
    fit = torch.minimum(sizes[:, 0].double() / height, sizes[:, 1].double() / width) * fraction
    box_h = torch.round(fit * height).to(torch.int64).clamp(min=1)
    box_w = torch.round(fit * width).to(torch.int64).clamp(min=1)
    top = torch.div(sizes[:, 0] - box_h, 2, rounding_mode="floor")
    left = torch.div(sizes[:, 1] - box_w, 2, rounding_mode="floor")
    return torch.stack([top, left, box_h, box_w], dim=-1)


def batch_augment(images: Images, target: torch.Tensor, size: Union[int, Tuple[int, int]], *,
                  scale: Tuple[float, float] = (0.08, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                  hflip: float = 0.5, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                  switch_prob: float = 0.5, erase_p: float = 0.0, erase_value: PerChannel = 0.0,
                  mean: Optional[PerChannel] = None, std: Optional[PerChannel] = None,
                  out_dtype: Optional[torch.dtype] = None, antialias: bool = True, partner: str = "flip",
                  generator: Optional[torch.Generator] = None, return_params: bool = False,
                  backend: Optional[str] = None):
    """RandomResizedCrop + flip per sample, then timm's Mixup (CutMix or MixUp per sample), random
    erasing, normalisation and the cast, in one compositing launch: returns (x, MixedTarget).

    Sample n with partner m (flip: N-1-n; roll: n-1) takes its own crop (random_resized_crop's
    rule), then MixUp with m's crop or CutMix (m's crop inside n's box) as cutmix_or_mixup draws
    them (mixing._sample_mixing, lam corrected to the kept area), then, with probability erase_p,
    erase_value inside a RandomErasing box (scale (0.02, 0.33), ratio (0.3, 3.3)), then (v - mean) / std,
    written as out_dtype (float32 by default; a floating dtype). Before the normalisation, the value equals
    composite_batch(composite_batch(resized_crop(..., out_dtype=float32), mixing parameters),
    erasing parameters) with the same parameters, bit for bit (everything in fp32); the normalisation is
    resized_crop's (the kernels: fma(v, 1 / std[c], -mean[c] / std[c]); the torch backend divides), then one
    rounding. return_params=True also returns those parameters as a dict.
    """
    from recipe_kernels import mixing
    from recipe_kernels.targets import MixedTarget
    batch = _check_images(images)
    _, n, channels = _as_batch(batch)
    height, width = _check_size(size)
    scale = _check_range("scale", scale, upper=1.0)
    ratio = _check_range("ratio", ratio)
    device = batch[0].device
    mixing._check_target(torch.empty((n, channels, 1, 1), device=device), target)
    mixup_alpha = mixing._check_alpha(mixup_alpha, "mixup_alpha", allow_zero=True)
    cutmix_alpha = mixing._check_alpha(cutmix_alpha, "cutmix_alpha", allow_zero=True)
    if mixup_alpha == 0.0 and cutmix_alpha == 0.0:
        raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing to mix (use random_resized_crop)")
    prob, switch_prob = _checks.probability(prob, "prob"), _checks.probability(switch_prob, "switch_prob")
    switch_prob = 1.0 if mixup_alpha == 0.0 else (0.0 if cutmix_alpha == 0.0 else switch_prob)
    hflip, erase_p = _checks.probability(hflip, "hflip"), _checks.probability(erase_p, "erase_p")
    mixing._check_partner(partner)
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise ValueError(f"out_dtype must be a floating dtype (float32, float16 or bfloat16), got {out_dtype}")
    mean, std, out_dtype = _normalization(batch, mean, std, out_dtype or torch.float32)
    fill = mixing._per_channel("erase_value", erase_value, channels, device, allow_nan=False)
    backend = _backend.resolve("augment", device, backend)
    # One seed; the three samplers key Philox with seed, seed + 1 and seed + 2 (independent streams).
    seed = draw_seed(device, generator)
    crop, flip = sample_crops(seed, image_sizes(batch, device), scale, ratio, hflip)
    lam, mix_box, mode = mixing._sample_mixing(seed + 1, n, height, width, cutmix_alpha=cutmix_alpha,
                                               mixup_alpha=mixup_alpha, switch_prob=switch_prob, prob=prob,
                                               correct_lam=True, backend=backend)
    erase_box = erase = None
    if erase_p > 0.0:
        erase_box, erase_mode, _ = mixing._erasing_boxes(seed + 2, n, height, width, erase_p, ERASE_SCALE,
                                                         ERASE_RATIO, backend)
        erase = erase_mode == mixing.MixMode.ERASE
    partner_index = mixing._partner_index(n, partner, device)
    x = batch_augment_op(batch, crop.to(torch.int32), flip, mix_box, lam, partner_index, mode, erase_box, erase, fill,
                         mean, std, height, width, bool(antialias), out_dtype, False, backend)
    y_b = target.flip(0) if partner == "flip" else target.roll(1, 0)
    mixed_target = MixedTarget.of_checked(target, y_b, lam)
    if not return_params:
        return x, mixed_target
    params = dict(crop=crop, flip=flip, mix_box=mix_box, lam=lam, partner=partner_index, mode=mode,
                  erase_box=erase_box, erase=erase, fill=fill)
    return x, mixed_target, params
