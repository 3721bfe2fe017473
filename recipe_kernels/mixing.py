"""CutMix, MixUp and random erasing: per-sample batch compositing in one pass.

Top to bottom: Triton kernels, launchers (Triton and CUDA), torch.library registration,
sampling on the device, public functions.

Every public function works in two steps:
1. Sampling, with torch ops on x's device (no host sync, nothing baked into a graph, any
   symbolic size under torch.compile): one seed drawn from torch's generator, and every
   random number (Beta draws from Marsaglia-Tsang gammas, modes, box centres, erasing
   candidates) from Philox words of that seed. The result is one set of explicit per-sample
   parameters: box (N, 4) int32 as (x0, y0, x1, y1), half-open; lam (N,) float32; partner
   (N,) int32; mode (N,) int32 (MixMode). Boxes are computed with torch ops on the device,
   not in a kernel, so every backend composites exactly the same parameters.
2. Compositing, one kernel launch (composite_batch): for sample n with partner m,
       KEEP    out = x[n]
       MIXUP   out = lam * x[n] + (1 - lam) * x[m]        (fp32, no FMA; uint8 rounds half up)
       CUTMIX  out = x[m] inside the box, x[n] outside
       ERASE   out = fill inside the box, x[n] outside    (fill per channel, or normal noise)
   then, optionally, (out - mean[c]) / std[c] written as out_dtype in the same pass.

Bytes moved (s_in, s_out element sizes, E = N*C*H*W): CutMix, erasing and keep read
each output element's single source once, E*s_in, and write E*s_out; MixUp reads two
sources, but partner pairs are visited next to each other so the second read mostly
hits L2. In-place CutMix (per-batch box, flip partner) reads and writes only the box
of every sample: 2 * N * C * box_area * s.
"""
import functools
import math
import numbers
import struct
from typing import Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from recipe_kernels import _backend, _checks, _ops, reference
from recipe_kernels._codes import DTYPE_CODES, MixMode
from recipe_kernels._ops import Op, launch
from recipe_kernels._philox import PHILOX_ROUNDS, draw_seed, philox4x32
from recipe_kernels._triton_common import INTERPRETING, cdiv, fma, round_to
from recipe_kernels.targets import MixedTarget


# The dtypes csrc/mixing.cu takes, with their codes.
MIXING_DTYPE_CODES = {**_backend.CUDA_DTYPE_CODES, torch.uint8: DTYPE_CODES[torch.uint8]}
# What x and out_dtype may be: the CUDA codes plus float64 (fp64 math; torch and Triton backends).
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.float64)
TWO_PI_F32 = tl.constexpr(6.2831855)  # 2*pi rounded to fp32: the same constant in every backend

# About 2048 elements per Triton program: a [ROWS, BLOCK_J] tile of image rows.
TILE_ELEMENTS = 2048
MAX_BLOCK_J = 256  # bounds the masked-off tail of a row's last block when no power of 2 >= 16 divides it
# Tiles whose sides divide the image's rows and row length mask off no lanes (W = 224 = 7 x 32,
# channels_last 3 x 224 = 21 x 32): then a tile may be as small as this.
MIN_EXACT_TILE_ELEMENTS = 512
VECTOR_BYTES = 16  # each thread loads 16-byte vectors
# Vectors per thread and per tile: the per-tile work (coordinates, parameters, row tests) is shared by more elements.
VECTORS_PER_THREAD = 2
MAX_ROW_STEPS = 8
# Planes (NCHW) and column blocks per program, at most: the sample's work (its parameters, the uint8 path's
# product terms, the grid coordinates) is shared by that many more tiles.
MAX_PLANE_STEPS = 4
MAX_COLUMN_STEPS = 8
MIN_PROGRAMS_PER_SM = 4  # grouping stops where the grid would fall below this many programs per SM
# CUDA's limits on gridDim.y and gridDim.z: a launch takes the plane groups and the samples this many at a time
MAX_GRID_PLANE_GROUPS = 65535
MAX_GRID_SAMPLES = 65535
NUM_WARPS = 4
MAX_WARPS = 8
# Load masks that depend on the box are decided per CHUNK consecutive elements of a row, so
# that they stay constant over a 16-byte vector and the loads stay vectorized; a chunk
# that straddles the box edge loads both sources and selects per element.
CHUNK = 16
# MixMode codes as the kernels see them (module-level constexprs: no literal mode numbers in kernels).
_MIXUP = tl.constexpr(int(MixMode.MIXUP))
_CUTMIX = tl.constexpr(int(MixMode.CUTMIX))
_ERASE = tl.constexpr(int(MixMode.ERASE))
UINT8_LEVELS = tl.constexpr(256)
UINT8_MAX = tl.constexpr(255.0)
BYTE_MASK = tl.constexpr(0xFF)
# The uint8 table path multiplies a byte b by a weight w with one FFMA: b in the low mantissa bits of 2^23 is
# the fp32 2^23 + b, and fma(w, 2^23 + b, -w * 2^23) rounds w * b once, as w * b does, while w * 2^23 is
# finite: |w| < HUGE_WEIGHT. A MixUp lam past it (infinite too) takes scale and shift that give the same levels
# (_byte_product_terms).
MAGIC = tl.constexpr(8388608.0)  # 2^23
MAGIC_BITS = tl.constexpr(0x4B000000)  # its bits
HUGE_WEIGHT = tl.constexpr(2.0 ** 100)
FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
EMULATION_SCALE = tl.constexpr(2.0 ** 104)
EMULATION_TOP = tl.constexpr(2.0 ** 127)

# Sampling constants, one definition for the kernels (module-level constexprs) and the torch
# implementation (which reads .value). Float64 bit layout and the series of the exact elementary
# functions (see "Exact elementary functions" in the sampling section).
WORD_RANGE = tl.constexpr(1 << 32)
INV_WORD_RANGE = tl.constexpr(1.0 / (1 << 32))
EXPONENT_BIAS = tl.constexpr(1023)
MANTISSA_MASK = tl.constexpr((1 << 52) - 1)
ONE_BITS = tl.constexpr(1023 << 52)  # the bits of 1.0
SQRT_TWO = tl.constexpr(math.sqrt(2.0))
# ln 2 in two parts: e * LN2_HIGH is exact for |e| < 2^20 (its low 21 bits are zero).
LN2_HIGH = tl.constexpr(6.93147180369123816490e-01)
LN2_LOW = tl.constexpr(1.90821492927058770002e-10)
INV_LN2 = tl.constexpr(1.0 / math.log(2.0))
TWO_PI = tl.constexpr(2.0 * math.pi)
ONE_THIRD = tl.constexpr(1.0 / 3.0)
# Terms of each series: the first left out is below 2^-56 relative on its reduced range.
LOG_SERIES_TERMS = tl.constexpr(11)  # 2 atanh(s), |s| <= 0.1716: s^25 / 25 < 1e-20
EXP_SERIES_TERMS = tl.constexpr(14)  # e^r, |r| <= 0.3466: r^15 / 15! < 2e-20
COS_SERIES_TERMS = tl.constexpr(12)  # cos t, t <= pi/2: t^26 / 26! < 3e-21
# |log G1 - log G0| is clamped here before exp: 1 / (1 + e^120) and e^-120 are below half fp32's
# smallest subnormal, so lam in fp32 is the same as unclamped.
EXP_LIMIT = tl.constexpr(120.0)
_KEEP = tl.constexpr(int(MixMode.KEEP))


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _tile_coordinates(pid, planes, row_blocks, col_blocks):
    """(sample, plane, row block, column block) of a program; column blocks vary fastest."""
    col_block = pid % col_blocks
    rest = pid // col_blocks
    row_block = rest % row_blocks
    rest = rest // row_blocks
    return rest // planes, rest % planes, row_block, col_block


@triton.jit
def _sample_of_slot(slot, num_samples, VISIT_FLIP_PAIRS: tl.constexpr):
    """The sample that grid slot `slot` composites. With VISIT_FLIP_PAIRS the samples are visited 0, N-1, 1,
    N-2, ... so that a sample and its flip partner are read by neighbouring programs and the partner's read
    hits L2."""
    if VISIT_FLIP_PAIRS:
        half = slot // 2
        return tl.where(slot % 2 == 0, half, num_samples - 1 - half)
    return slot


@triton.jit
def _round_to_input(value, IN_DTYPE: tl.constexpr):
    """value (fp32, or fp64 for fp64 x) rounded to what x's dtype stores, in value's dtype:
    uint8 rounds half up and saturates (NaN gives 0)."""
    if IN_DTYPE == tl.uint8:
        rounded = tl.floor(value + 0.5)
        # where, not maximum: NaN > 0 is false, so NaN becomes 0 as with CUDA's fmaxf (the
        # interpreter's maximum propagates NaN, and a NaN cast to uint8 is undefined)
        return tl.minimum(tl.where(rounded > 0.0, rounded, 0.0), 255.0)
    elif IN_DTYPE == value.dtype:
        return value
    else:
        return _cast_output(value, IN_DTYPE).to(value.dtype)


@triton.jit
def _cast_output(value, OUT_DTYPE: tl.constexpr):
    """value rounded to OUT_DTYPE as torch rounds it: fp64 goes through fp32 on its way to fp16/bf16
    (torch's Half and BFloat16 take a float), to nearest even at each step."""
    if value.dtype == tl.float64 and OUT_DTYPE != tl.float64:
        value = value.to(tl.float32)
    return round_to(value, OUT_DTYPE)


@triton.jit
def _erase_noise(seed, logical_index, PHILOX_ROUNDS: tl.constexpr):
    """Standard normal noise per element: Box-Muller on words 0 and 1 of Philox(seed, index)."""
    w0, w1, _, _ = tl.randint4x(seed, logical_index, PHILOX_ROUNDS)
    u1 = ((w0 >> 8).to(tl.int32) + 1).to(tl.float32) * 5.9604644775390625e-08  # (0, 1], 2^-24 steps
    u2 = (w1 >> 8).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08        # [0, 1)
    return tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(u2 * TWO_PI_F32)


@triton.jit
def _column_bounds(x0, x1, width, CHANNELS_LAST: tl.constexpr, PIXEL_STRIDE: tl.constexpr):
    """The box's columns [x0, x1) as row elements [first, last): element j of a row (channels_last: of pixel
    j // C) lies in them iff first <= j < last, with no division per element. channels_last clamps x0 and x1 to
    [0, W] first: the same test for pixels in [0, W), and no int32 overflow."""
    if CHANNELS_LAST:
        first = tl.minimum(tl.maximum(x0, 0), width) * PIXEL_STRIDE
        last = tl.minimum(tl.maximum(x1, 0), width) * PIXEL_STRIDE
        return first, last
    return x0, x1


@triton.jit
def _chunk_columns(chunk_first, column_first, column_last, CHUNK: tl.constexpr):
    """Of the CHUNK elements of a row from chunk_first on: (all lie in the box's columns, some do), with the
    box's columns as row elements (_column_bounds).

    Both are constant over each chunk, unlike the per-element test; and them with the row's test to get
    the element's chunk test.
    """
    chunk_last = chunk_first + (CHUNK - 1)
    return ((chunk_first >= column_first) & (chunk_last < column_last),
            (chunk_last >= column_first) & (chunk_first < column_last))


@triton.jit
def _normalize_and_store(value, out_ptr, offsets, in_bounds, mean_ptr, std_ptr, channel, HAS_NORM: tl.constexpr):
    """Step 5: optionally (value - mean[c]) / std[c] in mean's dtype (correctly rounded division, as torch), then
    rounded to out's dtype and stored."""
    if HAS_NORM:
        mean = tl.load(mean_ptr + channel)
        std = tl.load(std_ptr + channel)
        centred = value.to(mean.dtype) - mean
        if mean.dtype == tl.float64:
            value = centred / std  # fp64 division is IEEE (correctly rounded) in Triton
        else:
            value = tl.math.div_rn(centred, std)  # fp32 `/` is approximate on the GPU
    tl.store(out_ptr + offsets, _cast_output(value, out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _tile_rows(row_group, step, columns, row_len, height, y0, y1, ROWS: tl.constexpr, ROW_STEPS: tl.constexpr,
               EXACT_TILES: tl.constexpr):
    """Of tile `step` of a program's row group, with its columns (a [1, width] tensor of a row's elements or
    words, row_len of them): (its rows as a [ROWS, 1] tensor, which of its lanes lie in the image, which rows
    lie in the box's rows)."""
    rows = (row_group.to(tl.int32) * ROW_STEPS + step) * ROWS + tl.arange(0, ROWS)[:, None]
    if EXACT_TILES:
        in_bounds = tl.full((ROWS, columns.shape[1]), 1, tl.int1)
    else:
        in_bounds = (rows < height) & (columns < row_len)
    return rows, in_bounds, (rows >= y0) & (rows < y1)


@triton.jit
def _level_index(level):
    """The floor of `level` (the MixUp sum plus 0.5, fp32) saturated to [0, 255], NaN giving 0, as an integer:
    _round_to_input's uint8 rounding of the sum. On the GPU one saturating conversion (cvt.rzi.sat truncates
    toward zero and clamps to the u8 range, NaN to 0: the same integer); the interpreter clamps first."""
    if INTERPRETING:
        # where, not maximum: NaN > 0 is false, so NaN becomes 0
        return tl.minimum(tl.where(level > 0.0, level, 0.0), UINT8_MAX + 0.5).to(tl.int32)
    return tl.inline_asm_elementwise("cvt.rzi.sat.u8.f32 $0, $1;", "=r,r", [level], dtype=tl.uint32, is_pure=True,
                                     pack=1)


@triton.jit
def _byte_in_box(word, k: tl.constexpr, column_first, column_last):
    """Of byte k of each 4-byte word of a uint8 row (its column is 4 * word + k): 0xFF in its place in the word
    where it lies in the box's columns (_column_bounds), else 0."""
    j = word * 4 + k
    return tl.where((j >= column_first) & (j < column_last), BYTE_MASK << (8 * k), 0)


@triton.jit
def _byte_channel(word, k: tl.constexpr, plane, fill_ptr, table_ptr, CHANNELS_LAST: tl.constexpr,
                  PIXEL_STRIDE: tl.constexpr):
    """Of byte k of each 4-byte word of a uint8 row: (its channel's fill level in its place in the word, its
    channel's row of the normalization table)."""
    channel = (word * 4 + k) % PIXEL_STRIDE if CHANNELS_LAST else plane
    fill = _round_to_input(tl.load(fill_ptr + channel), tl.uint8).to(tl.uint32) << (8 * k)
    return fill, table_ptr + channel * UINT8_LEVELS


@triton.jit
def _byte_product_terms(lam, is_mixup):
    """(own_scale, own_shift, other_scale, other_shift) of the uint8 table path: fma(scale, 2^23 + b, shift) for
    each byte b of the two sources gives products whose sum, rounded half up, is the reference's level of
    own_weight * own + other_weight * other ((lam, 1 - lam) for MixUp, else (1, 0)).

    While |lam| < HUGE_WEIGHT (or lam is NaN) they are the weights' own products, exactly: scale w, shift
    -w * 2^23. Past it (inf too), 1 - lam rounds to -lam and the level is 255 where sign(lam) * (own - other)
    > 0 and |lam| * min(own, other) does not overflow, else 0 (an overflowed product is infinite, and so is the
    sum, or NaN). With t = the first byte whose product with |lam| overflows, scale sign * 2^104 and shift
    sign * (2^127 - 2^104 * t) give sign * (2^128 + 2^104 * (b - t)): infinite from b = t on, exact below
    (multiples of 2^104), so the sum has the reference's sign, or is NaN where both overflow."""
    own_weight = tl.where(is_mixup, lam, 1.0)
    other_weight = tl.where(is_mixup, 1.0 - lam, 0.0)
    # |lam|, kept from 0 where it is not huge (only the huge case uses what follows)
    magnitude = tl.maximum(tl.abs(lam), HUGE_WEIGHT)
    # t counts the bytes from `first` on whose product stays finite: `first` is within 3 below t (the
    # estimate is within 1 of the quotient where it matters, t <= 256), and RN(|lam| * b) is monotone in b.
    # (a tensor numerator: the interpreter cannot divide a float constant by a tensor)
    quotient = tl.full(magnitude.shape, FLOAT32_MAX, tl.float32) / magnitude
    first = tl.minimum(tl.maximum(tl.floor(quotient) - 1.0, 0.0), 256.0)
    overflow_byte = (first + (magnitude * first <= FLOAT32_MAX).to(tl.float32)
                     + (magnitude * (first + 1.0) <= FLOAT32_MAX).to(tl.float32)
                     + (magnitude * (first + 2.0) <= FLOAT32_MAX).to(tl.float32))
    overflow_byte = tl.minimum(overflow_byte, 256.0)
    sign = tl.where(lam > 0.0, 1.0, -1.0)
    huge = is_mixup & (tl.abs(lam) >= HUGE_WEIGHT)  # false for NaN, which the exact terms carry to level 0
    huge_scale = sign * EMULATION_SCALE
    huge_shift = sign * (EMULATION_TOP - EMULATION_SCALE * overflow_byte)
    return (tl.where(huge, huge_scale, own_weight), tl.where(huge, huge_shift, -(own_weight * MAGIC)),
            tl.where(huge, -huge_scale, other_weight), tl.where(huge, -huge_shift, -(other_weight * MAGIC)))


@triton.jit
def _byte_plus_magic(word, k: tl.constexpr):
    """2^23 + byte k of each word, as fp32 (exact: the byte fills the low mantissa bits of 2^23). On the GPU one
    byte permute (prmt) of 2^23's bits (bytes 0-3) and the word (bytes 4-7): result bytes (4 + k, 0, 1, 3). 2^23
    comes first so that it sits in a register and the selector is the instruction's immediate."""
    if INTERPRETING:
        bits = ((word >> (8 * k)) & BYTE_MASK) | MAGIC_BITS
    else:
        bits = tl.inline_asm_elementwise(f"prmt.b32 $0, $1, $2, {0x3104 + k};", "=r,r,r",
                                         [tl.full(word.shape, MAGIC_BITS, tl.uint32), word], dtype=tl.uint32,
                                         is_pure=True, pack=1)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _normalized_byte(taken, other, k: tl.constexpr, own_scale, own_shift, other_scale, other_shift, table_row):
    """The table's output for byte k of the words `taken` and `other`: the level own_weight * taken +
    other_weight * other in fp32 (the uint8 compositing dtype), rounded half up (_round_to_input), its
    products formed as _byte_product_terms says."""
    own_product = fma(own_scale, _byte_plus_magic(taken, k), own_shift)
    other_product = fma(other_scale, _byte_plus_magic(other, k), other_shift)
    level = (own_product + other_product) + 0.5
    # every lane's level indexes the table, masked-off ones too (their loads gave levels)
    return tl.load(table_row + _level_index(level))


@triton.jit
def _store_vector_halves(out_ptr, value, plane_base, rows, column_block, row_len, height,
                         ROWS: tl.constexpr, BLOCK_J: tl.constexpr, EXACT_TILES: tl.constexpr):
    """Stores a [ROWS, BLOCK_J] tile of 2-byte values computed from a uint8 tile, whose threads hold 16
    consecutive elements (one 16-byte load): as its two halves of 8 (one 16-byte store each), so that the values
    stay in the threads that computed them (one [ROWS, BLOCK_J] store would hold 8 per thread and exchange them
    first: shuffles)."""
    halves = tl.permute(tl.reshape(value, (ROWS, BLOCK_J // 16, 2, 8)), (0, 1, 3, 2))
    first, second = tl.split(halves)
    j = column_block * BLOCK_J + (tl.arange(0, BLOCK_J // 16) * 16)[None, :, None] + tl.arange(0, 8)[None, None, :]
    rows = rows[:, :, None]
    offsets = plane_base + (rows * row_len + j).to(tl.int64)
    if EXACT_TILES:
        tl.store(out_ptr + offsets, first)
        tl.store(out_ptr + offsets + 8, second)
    else:
        tl.store(out_ptr + offsets, first, mask=(rows < height) & (j < row_len))
        tl.store(out_ptr + offsets + 8, second, mask=(rows < height) & (j + 8 < row_len))


@triton.jit
def _table_channels(pattern_block, plane, fill_ptr, table_ptr, CHANNELS_LAST: tl.constexpr,
                    PIXEL_STRIDE: tl.constexpr, BLOCK_J: tl.constexpr):
    """The uint8 table path's work per channel, for column blocks whose bytes have the channels of column block
    `pattern_block` (channels_last: every block COLUMN_STRIDE apart; NCHW: the plane's channel): its fill as a
    word of uint8 levels, and the table row of each byte of the word."""
    WORDS: tl.constexpr = BLOCK_J // 4
    word = pattern_block * WORDS + tl.arange(0, WORDS)[None, :]
    fill0, table_row0 = _byte_channel(word, 0, plane, fill_ptr, table_ptr, CHANNELS_LAST, PIXEL_STRIDE)
    fill1, table_row1 = _byte_channel(word, 1, plane, fill_ptr, table_ptr, CHANNELS_LAST, PIXEL_STRIDE)
    fill2, table_row2 = _byte_channel(word, 2, plane, fill_ptr, table_ptr, CHANNELS_LAST, PIXEL_STRIDE)
    fill3, table_row3 = _byte_channel(word, 3, plane, fill_ptr, table_ptr, CHANNELS_LAST, PIXEL_STRIDE)
    return fill0 | fill1 | fill2 | fill3, table_row0, table_row1, table_row2, table_row3


@triton.jit
def _composite_table_tiles(x_ptr, out_ptr, row_group, column_block, plane_base, partner_shift, height, row_len,
                           column_first, column_last, y0, y1, is_mixup, is_cutmix, is_erase, own_scale, own_shift,
                           other_scale, other_shift, fill_word, table_row0, table_row1, table_row2, table_row3,
                           CHANNELS_LAST: tl.constexpr, PIXEL_STRIDE: tl.constexpr, ROWS: tl.constexpr,
                           BLOCK_J: tl.constexpr, ROW_STEPS: tl.constexpr, EXACT_TILES: tl.constexpr,
                           CHUNK: tl.constexpr):
    """Steps 2-5 of _composite_kernel for a uint8 x normalized through the table (HAS_TABLE), one path for every
    mode. x is read as 4-byte words (the row length is a multiple of CHUNK): the level is own_weight * taken +
    other_weight * other rounded half up, where the weights are (lam, 1 - lam) for MixUp, else (1, 0), and
    `taken` is x[n], or inside a CutMix or erased box `other` (the partner's pixel, or an erased sample's fill:
    what its `other` load gives). Exact for these integers, so every mode gives the reference's level. The
    bytes that `taken` takes from `other` are chosen four at a time, by a mask of the box's bytes of each word.
    fill_word and the table rows: _table_channels for this column block."""
    words_ptr = x_ptr.to(tl.pointer_type(tl.uint32), bitcast=True)
    WORDS: tl.constexpr = BLOCK_J // 4
    cuts = is_cutmix | is_erase

    # 2. The tiles' words, and what depends on them alone.
    word = column_block.to(tl.int32) * WORDS + tl.arange(0, WORDS)[None, :]
    box_bytes = (_byte_in_box(word, 0, column_first, column_last) | _byte_in_box(word, 1, column_first, column_last)
                 | _byte_in_box(word, 2, column_first, column_last) | _byte_in_box(word, 3, column_first, column_last))
    chunk_columns_inside, chunk_columns_touch = _chunk_columns((word // (CHUNK // 4)) * CHUNK, column_first,
                                                               column_last, CHUNK)
    row_words = row_len // 4
    plane_base_words = plane_base // 4
    partner_shift_words = partner_shift // 4
    for step in tl.static_range(ROW_STEPS):
        # 3. The rows of this tile.
        rows, in_bounds, row_in_box = _tile_rows(row_group, step, word, row_words, height, y0, y1, ROWS, ROW_STEPS,
                                                 EXACT_TILES)
        offsets = plane_base_words + (rows * row_words + word).to(tl.int64)
        # 4. One source per CHUNK-byte piece (both where a piece straddles the box, or for MixUp).
        own = tl.load(words_ptr + offsets, mask=in_bounds & ~(cuts & row_in_box & chunk_columns_inside), other=0)
        other = tl.load(words_ptr + offsets + partner_shift_words,
                        mask=in_bounds & (is_mixup | (is_cutmix & row_in_box & chunk_columns_touch)),
                        other=fill_word)
        taken_bytes = tl.where(cuts & row_in_box, box_bytes, 0)
        taken = own ^ ((own ^ other) & taken_bytes)  # other's bytes where taken_bytes has them, own's elsewhere
        # 5. The normalized output of each byte's level, back in column order, stored.
        normalized0 = _normalized_byte(taken, other, 0, own_scale, own_shift, other_scale, other_shift,
                                       table_row0)
        normalized1 = _normalized_byte(taken, other, 1, own_scale, own_shift, other_scale, other_shift,
                                       table_row1)
        normalized2 = _normalized_byte(taken, other, 2, own_scale, own_shift, other_scale, other_shift,
                                       table_row2)
        normalized3 = _normalized_byte(taken, other, 3, own_scale, own_shift, other_scale, other_shift,
                                       table_row3)
        normalized = tl.reshape(tl.join(tl.join(normalized0, normalized2), tl.join(normalized1, normalized3)),
                                (ROWS, BLOCK_J))
        _store_vector_halves(out_ptr, normalized, plane_base, rows, column_block.to(tl.int32), row_len, height,
                             ROWS, BLOCK_J, EXACT_TILES)


@triton.jit
def _composite_tiles(x_ptr, out_ptr, fill_ptr, mean_ptr, std_ptr, seed_ptr, sample, plane, row_group, column_block,
                     plane_base, partner_shift, channels, height, width, row_len, lam, column_first, column_last,
                     y0, y1, is_mixup, is_cutmix, is_erase, CHANNELS_LAST: tl.constexpr, PIXEL_STRIDE: tl.constexpr,
                     HAS_NORM: tl.constexpr, RANDOM_FILL: tl.constexpr, ROWS: tl.constexpr, BLOCK_J: tl.constexpr,
                     ROW_STEPS: tl.constexpr, EXACT_TILES: tl.constexpr, CHUNK: tl.constexpr,
                     PHILOX_ROUNDS: tl.constexpr):
    """Steps 2-5 of _composite_kernel for ROW_STEPS tiles of one plane and column block, any dtypes."""
    math_dtype = lam.dtype  # fp32, or fp64 for fp64 x
    in_dtype = x_ptr.dtype.element_ty
    # 2. The tiles' columns, and what depends on them alone: j along the row; pixel and channel from j.
    # Coordinates within a plane are int32 (32-bit compares), offsets int64.
    j = column_block.to(tl.int32) * BLOCK_J + tl.arange(0, BLOCK_J)[None, :]
    if CHANNELS_LAST:
        pixel = j // PIXEL_STRIDE  # PIXEL_STRIDE == C: a division by a constant
        channel = j % PIXEL_STRIDE  # always in [0, C): per-channel loads need no mask
    else:
        pixel = j
        channel = plane  # one channel per program: per-channel values are scalar loads
    column_in_box = (j >= column_first) & (j < column_last)
    chunk_columns_inside, chunk_columns_touch = _chunk_columns((j // CHUNK) * CHUNK, column_first, column_last, CHUNK)
    cuts = is_cutmix | is_erase
    for step in tl.static_range(ROW_STEPS):
        # 3. The rows of this tile.
        rows, in_bounds, row_in_box = _tile_rows(row_group, step, j, row_len, height, y0, y1, ROWS, ROW_STEPS,
                                                 EXACT_TILES)
        inside = row_in_box & column_in_box
        offsets = plane_base + (rows * row_len + j).to(tl.int64)
        # 4. One source per CHUNK-element piece (both where a piece straddles the box, or for MixUp), and one
        # path for every mode: MixUp's weighted sum is formed for every sample and taken for MixUp samples.
        chunk_inside = row_in_box & chunk_columns_inside
        chunk_touches = row_in_box & chunk_columns_touch
        own = tl.load(x_ptr + offsets, mask=in_bounds & ~(cuts & chunk_inside), other=0)
        other = tl.load(x_ptr + offsets + partner_shift, mask=in_bounds & (is_mixup | (is_cutmix & chunk_touches)),
                        other=0)
        # lam * own + (1 - lam) * other in the math dtype, rounded to x's dtype (exactly representable there)
        mixed = _round_to_input(lam * own.to(math_dtype) + (1.0 - lam) * other.to(math_dtype), in_dtype)
        if RANDOM_FILL:
            logical_index = ((sample * channels + channel) * height + rows) * width + pixel
            fill = _erase_noise(tl.load(seed_ptr), logical_index, PHILOX_ROUNDS)
        else:
            fill = tl.load(fill_ptr + channel)
        fill = _round_to_input(fill.to(math_dtype), in_dtype)  # what x's dtype would store
        value = tl.where(is_cutmix & inside, other, own)
        value = tl.where(is_erase & inside, fill.to(in_dtype), value)
        value = tl.where(is_mixup, mixed.to(in_dtype), value)
        _normalize_and_store(value.to(math_dtype), out_ptr, offsets, in_bounds, mean_ptr, std_ptr, channel, HAS_NORM)


@triton.jit
def _composite_kernel(x_ptr, out_ptr, box_ptr, lam_ptr, partner_ptr, mode_ptr, fill_ptr, mean_ptr, std_ptr,
                      table_ptr, seed_ptr, num_samples, channels, height, width, first_plane_group, first_slot,
                      CHANNELS_LAST: tl.constexpr, PIXEL_STRIDE: tl.constexpr, HAS_NORM: tl.constexpr,
                      HAS_TABLE: tl.constexpr, RANDOM_FILL: tl.constexpr, VISIT_FLIP_PAIRS: tl.constexpr,
                      ROWS: tl.constexpr, BLOCK_J: tl.constexpr, ROW_STEPS: tl.constexpr,
                      COLUMN_STEPS: tl.constexpr, COLUMN_STRIDE: tl.constexpr, PLANE_STEPS: tl.constexpr,
                      EXACT_TILES: tl.constexpr, CHUNK: tl.constexpr, PHILOX_ROUNDS: tl.constexpr):
    """out[n] = KEEP / MIXUP / CUTMIX / ERASE of x[n] with x[partner[n]], then optionally normalized.

    Inputs: x (N, C, H, W) contiguous or channels_last; box (N, 4) int32 (x0, y0, x1, y1);
    lam (N,) and fill (C,) in the compositing dtype (fp32, or fp64 for fp64 x); partner (N,)
    int32; mode (N,) int32; mean, std (C,) in the normalization dtype (fp32, or fp64 when x or
    out is fp64) when HAS_NORM; seed (one int64) when RANDOM_FILL. out has x's layout, any dtype.
    With HAS_TABLE (uint8 x, normalized, rows of a multiple of CHUNK bytes, x 4-byte aligned), table
    (C, 256) in out's dtype holds the normalized output of every channel and level
    (_normalization_table): the composited level is looked up, so the division runs once per value,
    not per element (_composite_table_tiles).
    The grid is (row groups x column groups, plane groups from first_plane_group, sample slots from
    first_slot). A program
    takes PLANE_STEPS planes x COLUMN_STEPS column blocks (COLUMN_STRIDE apart) x ROW_STEPS
    [ROWS, BLOCK_J] tiles one below the other, which share the sample's work and, down a column,
    the work that depends on columns alone: a row is W elements of one channel (contiguous) or W*C
    interleaved elements (channels_last).
    EXACT_TILES: the tiles divide the image, so no lane is masked off. Every mode runs one path (no
    branch on the mode): MixUp's arithmetic is formed for every sample and taken for MixUp's (with the
    table, one weighted sum serves every mode, exactly).
    Bytes: each output element's source is read once (MixUp: both sources), out written once;
    CutMix also reads both sources of the CHUNK-element pieces that straddle a box edge.
    """
    # 1. Which tiles, and the sample's parameters (a few scalar loads per program). Geometry as _geometry.
    sample_stride = tl.cast(channels, tl.int64) * height * width  # tl.cast: Triton passes a size of 1 as an int
    if CHANNELS_LAST:
        row_len = width * channels
        plane_stride = 0
    else:
        row_len = width
        plane_stride = tl.cast(height, tl.int64) * width
    # The grid: (row group x column group, plane group, sample slot); column groups vary fastest.
    column_groups = tl.cdiv(row_len, BLOCK_J * COLUMN_STEPS)
    tile = tl.program_id(0)
    row_group = tile // column_groups
    column_group = tile % column_groups
    plane_group = first_plane_group + tl.program_id(1)
    sample = _sample_of_slot(first_slot + tl.program_id(2).to(tl.int64), num_samples, VISIT_FLIP_PAIRS)
    mode = tl.load(mode_ptr + sample)
    partner = tl.minimum(tl.maximum(tl.load(partner_ptr + sample).to(tl.int64), 0), num_samples - 1)
    lam = tl.load(lam_ptr + sample)
    x0 = tl.load(box_ptr + sample * 4)
    y0 = tl.load(box_ptr + sample * 4 + 1)
    x1 = tl.load(box_ptr + sample * 4 + 2)
    y1 = tl.load(box_ptr + sample * 4 + 3)
    is_mixup = mode == _MIXUP
    is_cutmix = mode == _CUTMIX
    is_erase = mode == _ERASE
    partner_shift = (partner - sample) * sample_stride
    column_first, column_last = _column_bounds(x0, x1, width, CHANNELS_LAST, PIXEL_STRIDE)
    if HAS_TABLE:
        own_scale, own_shift, other_scale, other_shift = _byte_product_terms(lam, is_mixup)
    # 2-5. PLANE_STEPS planes x COLUMN_STEPS column blocks x ROW_STEPS tiles: the sample's work above is shared.
    # A program's column blocks are COLUMN_STRIDE apart (channels_last: so that their bytes have the same channels).
    pattern_block = column_group % COLUMN_STRIDE
    first_block = pattern_block + (column_group // COLUMN_STRIDE) * (COLUMN_STEPS * COLUMN_STRIDE)
    for plane_step in range(PLANE_STEPS):
        plane = plane_group * PLANE_STEPS + plane_step
        plane_base = sample * sample_stride + plane * plane_stride
        if HAS_TABLE:
            fill_word, table_row0, table_row1, table_row2, table_row3 = _table_channels(
                pattern_block, plane, fill_ptr, table_ptr, CHANNELS_LAST, PIXEL_STRIDE, BLOCK_J)
        for column_step in range(COLUMN_STEPS):
            column_block = first_block + column_step * COLUMN_STRIDE
            if HAS_TABLE:
                _composite_table_tiles(x_ptr, out_ptr, row_group, column_block, plane_base, partner_shift, height,
                                       row_len, column_first, column_last, y0, y1, is_mixup, is_cutmix, is_erase,
                                       own_scale, own_shift,
                                       other_scale, other_shift, fill_word, table_row0, table_row1, table_row2,
                                       table_row3, CHANNELS_LAST, PIXEL_STRIDE, ROWS, BLOCK_J, ROW_STEPS,
                                       EXACT_TILES, CHUNK)
            else:
                _composite_tiles(x_ptr, out_ptr, fill_ptr, mean_ptr, std_ptr, seed_ptr, sample, plane, row_group,
                                 column_block, plane_base, partner_shift, channels, height, width, row_len, lam,
                                 column_first, column_last, y0, y1, is_mixup, is_cutmix, is_erase, CHANNELS_LAST,
                                 PIXEL_STRIDE, HAS_NORM, RANDOM_FILL, ROWS, BLOCK_J, ROW_STEPS, EXACT_TILES, CHUNK,
                                 PHILOX_ROUNDS)


@triton.jit
def _cutmix_swap_kernel(x_ptr, box_ptr, num_samples, height, sample_stride, plane_stride, row_stride, row_len,
                        planes, row_blocks, col_blocks,
                        CHANNELS_LAST: tl.constexpr, PIXEL_STRIDE: tl.constexpr,
                        ROWS: tl.constexpr, BLOCK_J: tl.constexpr, CHUNK: tl.constexpr):
    """In place: swaps the box of sample i with the box of sample N-1-i, for i < N // 2.

    Inputs: x (N, C, H, W) contiguous or channels_last, box (N, 4) int32 (the batch's box,
    read from sample i). Bytes: reads and writes the box of every sample once,
    2 * N * C * area * s, plus the CHUNK-element pieces straddling its left and right edges
    (written back unchanged outside the box: no other program touches them); tiles outside
    the box mask off all their loads and stores.
    """
    pid = tl.program_id(0).to(tl.int64)
    first, plane, row_block, col_block = _tile_coordinates(pid, planes, row_blocks, col_blocks)
    second = num_samples - 1 - first
    x0 = tl.load(box_ptr + first * 4)
    y0 = tl.load(box_ptr + first * 4 + 1)
    x1 = tl.load(box_ptr + first * 4 + 2)
    y1 = tl.load(box_ptr + first * 4 + 3)
    rows = row_block * ROWS + tl.arange(0, ROWS)[:, None]
    j = col_block * BLOCK_J + tl.arange(0, BLOCK_J)[None, :]
    column_first, column_last = _column_bounds(x0, x1, row_len // PIXEL_STRIDE, CHANNELS_LAST, PIXEL_STRIDE)
    inside = (rows >= y0) & (rows < y1) & (j >= column_first) & (j < column_last)
    _, chunk_columns_touch = _chunk_columns((j // CHUNK) * CHUNK, column_first, column_last, CHUNK)
    chunk_touches = (rows >= y0) & (rows < y1) & chunk_columns_touch
    touched = (rows < height) & (j < row_len) & chunk_touches
    local = plane * plane_stride + rows * row_stride + j
    a = tl.load(x_ptr + first * sample_stride + local, mask=touched)
    b = tl.load(x_ptr + second * sample_stride + local, mask=touched)
    tl.store(x_ptr + first * sample_stride + local, tl.where(inside, b, a), mask=touched)
    tl.store(x_ptr + second * sample_stride + local, tl.where(inside, a, b), mask=touched)


# ----------------------------------------------------------------------------- sampling kernels
# One program samples SAMPLING_BLOCK draws; the torch functions of the sampling section compute the
# same numbers with the same operations in the same order (see "Exact elementary functions" there).


@triton.jit
def _float64_from_bits(bits):
    """A float64 passed as its int64 bit pattern (a float kernel argument would arrive as fp32)."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _uniform64(word):
    """word / 2^32 as float64 on [0, 1) (exact)."""
    return word.to(tl.int64).to(tl.float64) * INV_WORD_RANGE


@triton.jit
def _uniform64_positive(word):
    """(word + 1) / 2^32 as float64 on (0, 1] (exact)."""
    return (word.to(tl.int64) + 1).to(tl.float64) * INV_WORD_RANGE


@triton.jit
def _log64(x):
    """log(x) for finite normal float64 x > 0: _log_exact's operations."""
    bits = x.to(tl.int64, bitcast=True)
    exponent = (bits >> 52) - EXPONENT_BIAS
    mantissa = ((bits & MANTISSA_MASK) | ONE_BITS).to(tl.float64, bitcast=True)
    large = mantissa > SQRT_TWO
    mantissa = tl.where(large, mantissa * 0.5, mantissa)
    e = (exponent + large.to(tl.int64)).to(tl.float64)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    series = tl.zeros_like(s)
    for k in tl.static_range(LOG_SERIES_TERMS, 0, -1):
        series = series * s2 + 2.0 / (2 * k + 1)
    return e * LN2_HIGH + (e * LN2_LOW + (2.0 * s + s * (s2 * series)))


@triton.jit
def _exp64(x):
    """exp(x) for float64 |x| <= EXP_LIMIT: _exp_exact's operations."""
    k = tl.floor(x * INV_LN2 + 0.5)
    r = (x - k * LN2_HIGH) - k * LN2_LOW
    series = tl.full(x.shape, 1.0, tl.float64)
    for n in tl.static_range(EXP_SERIES_TERMS, 0, -1):
        series = 1.0 + (r * series) * (1.0 / n)
    scale = ((k.to(tl.int64) + EXPONENT_BIAS) << 52).to(tl.float64, bitcast=True)
    return series * scale


@triton.jit
def _cos_two_pi64(u):
    """cos(2 pi u) for float64 u in [0, 1) on a 2^-32 grid: _cos_two_pi_exact's operations."""
    t = u - tl.floor(u + 0.5)
    a = tl.abs(t)
    flip = a > 0.25
    b = tl.where(flip, 0.5 - a, a)
    theta = TWO_PI * b
    theta2 = theta * theta
    series = tl.full(u.shape, 1.0, tl.float64)
    for n in tl.static_range(COS_SERIES_TERMS, 0, -1):
        series = 1.0 - (theta2 * series) * (1.0 / ((2 * n - 1) * (2 * n)))
    return tl.where(flip, -series, series)


@triton.jit
def _sample_mixing_kernel(seed_ptr, lam_ptr, box_ptr, mode_ptr, draws, height, width, cutmix_alpha_bits,
                          mixup_alpha_bits, switch_threshold, apply_threshold,
                          CORRECT_LAM: tl.constexpr, BLOCK: tl.constexpr, MIX_CALLS_PER_DRAW: tl.constexpr,
                          GAMMA_ATTEMPTS: tl.constexpr, PHILOX_ROUNDS: tl.constexpr):
    """Per draw: lam (fp32), box (x0, y0, x1, y1) int32 and mode int32 of timm's Mixup rule (_sample_mixing_torch).

    Inputs: seed (one int64); the alphas as float64 bit patterns; thresholds round(p * 2^32).
    A program is BLOCK draws x 2 * GAMMA_ATTEMPTS lanes: one Marsaglia-Tsang attempt per lane (lane
    g * GAMMA_ATTEMPTS + k: attempt k of gamma g, Philox call 1 + lane), then each gamma takes its
    first accepted attempt. Bytes: 24 per draw written.
    """
    # 1. The draw's decisions and its Beta shape.
    draw = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = draw < draws
    seed = tl.load(seed_ptr)
    first_call = draw * MIX_CALLS_PER_DRAW
    switch_word, apply_word, centre_y_word, centre_x_word = tl.randint4x(seed, first_call, PHILOX_ROUNDS)
    use_cutmix = switch_word.to(tl.int64) < switch_threshold
    applied = apply_word.to(tl.int64) < apply_threshold
    alpha = tl.where(use_cutmix, _float64_from_bits(cutmix_alpha_bits), _float64_from_bits(mixup_alpha_bits))
    boosted = alpha < 1.0
    d = tl.where(boosted, alpha + 1.0, alpha) - ONE_THIRD
    c = 1.0 / tl.sqrt(9.0 * d)  # float64 sqrt is correctly rounded (sqrt.rn.f64)

    # 2. Every attempt of both gammas at once (the words and arithmetic of _log_gamma).
    lane = tl.arange(0, 2 * GAMMA_ATTEMPTS)[None, :]
    attempt = lane % GAMMA_ATTEMPTS
    second = lane >= GAMMA_ATTEMPTS
    w0, w1, w2, w3 = tl.randint4x(seed, first_call[:, None] + 1 + lane, PHILOX_ROUNDS)
    z = tl.sqrt(-2.0 * _log64(_uniform64_positive(w0))) * _cos_two_pi64(_uniform64(w1))
    t = 1.0 + c[:, None] * z
    v = t * t * t
    positive = v > 0.0
    log_v = _log64(tl.where(positive, v, 1.0))
    accepted = positive & (_log64(_uniform64_positive(w2)) <
                           0.5 * z * z + d[:, None] - d[:, None] * v + d[:, None] * log_v)

    # 3. Per gamma, log v of its first accepted attempt (0 when all are rejected: v = 1), and the boost word.
    order = tl.where(accepted, attempt, GAMMA_ATTEMPTS)
    first0 = tl.min(tl.where(second, GAMMA_ATTEMPTS, order), axis=1)[:, None]
    first1 = tl.min(tl.where(second, order, GAMMA_ATTEMPTS), axis=1)[:, None]
    chosen = tl.where(second, attempt == first1, attempt == first0)
    log_v0 = tl.sum(tl.where(chosen & ~second, log_v, 0.0), axis=1)  # one term, the rest 0: exact
    log_v1 = tl.sum(tl.where(chosen & second, log_v, 0.0), axis=1)
    boost_word0 = tl.sum(tl.where(lane == 0, w3.to(tl.int64), 0), axis=1)
    boost_word1 = tl.sum(tl.where(lane == GAMMA_ATTEMPTS, w3.to(tl.int64), 0), axis=1)
    log_d = _log64(d)
    log_g0 = log_d + log_v0
    log_g1 = log_d + log_v1
    log_g0 = tl.where(boosted, log_g0 + _log64(_uniform64_positive(boost_word0)) / alpha, log_g0)
    log_g1 = tl.where(boosted, log_g1 + _log64(_uniform64_positive(boost_word1)) / alpha, log_g1)
    difference = tl.minimum(tl.maximum(log_g1 - log_g0, -EXP_LIMIT), EXP_LIMIT)
    lam = (1.0 / (1.0 + _exp64(difference))).to(tl.float32)

    # timm's box: centre uniform over the pixels, half sides floor(side * sqrt(1 - lam) / 2) in fp32.
    height = tl.cast(height, tl.int64)  # tl.cast: Triton passes a size of 1 as an int
    width = tl.cast(width, tl.int64)
    centre_y = (centre_y_word.to(tl.int64) * height) >> 32
    centre_x = (centre_x_word.to(tl.int64) * width) >> 32
    side = tl.sqrt((1.0 - lam).to(tl.float64)).to(tl.float32)  # = fp32 sqrt correctly rounded
    half_h = tl.floor(side * height.to(tl.float32) * 0.5).to(tl.int64)
    half_w = tl.floor(side * width.to(tl.float32) * 0.5).to(tl.int64)
    y0 = tl.maximum(centre_y - half_h, 0)
    y1 = tl.minimum(centre_y + half_h, height)
    x0 = tl.maximum(centre_x - half_w, 0)
    x1 = tl.minimum(centre_x + half_w, width)
    if CORRECT_LAM:
        area = ((y1 - y0) * (x1 - x0)).to(tl.float64)
        kept = (1.0 - area / tl.maximum(height * width, 1).to(tl.float64)).to(tl.float32)
        lam = tl.where(use_cutmix, kept, lam)
    lam = tl.where(applied, lam, 1.0)
    mode = tl.where(applied, tl.where(use_cutmix, _CUTMIX, _MIXUP), _KEEP).to(tl.int32)
    tl.store(lam_ptr + draw, lam, mask=valid)
    tl.store(mode_ptr + draw, mode, mask=valid)
    tl.store(box_ptr + draw * 4, x0.to(tl.int32), mask=valid)
    tl.store(box_ptr + draw * 4 + 1, y0.to(tl.int32), mask=valid)
    tl.store(box_ptr + draw * 4 + 2, x1.to(tl.int32), mask=valid)
    tl.store(box_ptr + draw * 4 + 3, y1.to(tl.int32), mask=valid)


@triton.jit
def _round_half_even64(x):
    """x (float64 >= 0) rounded to the nearest integer, ties to even, exactly (torch.round)."""
    whole = tl.floor(x)
    fraction = x - whole  # exact
    odd = (whole.to(tl.int64) & 1) == 1
    return tl.where((fraction > 0.5) | ((fraction == 0.5) & odd), whole + 1.0, whole)


@triton.jit
def _sample_erasing_kernel(seed_ptr, box_ptr, mode_ptr, noise_key_ptr, samples, height, width, apply_threshold,
                           scale_low_bits, scale_high_bits, log_ratio_low_bits, log_ratio_high_bits,
                           BLOCK: tl.constexpr, ERASE_CALLS_PER_SAMPLE: tl.constexpr,
                           ERASE_ATTEMPTS: tl.constexpr, ERASE_NOISE_KEY_COUNTER: tl.constexpr,
                           PHILOX_ROUNDS: tl.constexpr):
    """Per sample: box (x0, y0, x1, y1) int32 and mode (ERASE or KEEP) of torchvision's RandomErasing rule
    (_sample_erasing_torch); program 0 also writes the noise key. Bytes: 20 per sample written."""
    sample = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = sample < samples
    seed = tl.load(seed_ptr)
    first_call = sample * ERASE_CALLS_PER_SAMPLE
    decision_word, _, _, _ = tl.randint4x(seed, first_call, PHILOX_ROUNDS)
    scale_low = _float64_from_bits(scale_low_bits)
    scale_high = _float64_from_bits(scale_high_bits)
    log_low = _float64_from_bits(log_ratio_low_bits)
    log_high = _float64_from_bits(log_ratio_high_bits)
    height = tl.cast(height, tl.int64)  # tl.cast: Triton passes a size of 1 as an int
    width = tl.cast(width, tl.int64)
    image_area = (height * width).to(tl.float64)
    found = sample < 0  # all False
    top = tl.zeros_like(sample)
    left = tl.zeros_like(sample)
    box_h = tl.zeros_like(sample)
    box_w = tl.zeros_like(sample)
    for k in tl.static_range(ERASE_ATTEMPTS):
        w_area, w_ratio, w_top, w_left = tl.randint4x(seed, first_call + 1 + k, PHILOX_ROUNDS)
        area = (scale_low + (scale_high - scale_low) * _uniform64(w_area)) * image_area
        aspect = _exp64(log_low + (log_high - log_low) * _uniform64(w_ratio))
        h = _round_half_even64(tl.sqrt(area * aspect)).to(tl.int64)
        w = _round_half_even64(tl.sqrt(area / aspect)).to(tl.int64)
        take = (h < height) & (w < width) & ~found
        top = tl.where(take, (w_top.to(tl.int64) * tl.maximum(height - h + 1, 1)) >> 32, top)
        left = tl.where(take, (w_left.to(tl.int64) * tl.maximum(width - w + 1, 1)) >> 32, left)
        box_h = tl.where(take, h, box_h)
        box_w = tl.where(take, w, box_w)
        found = found | take
    erase = found & (decision_word.to(tl.int64) < apply_threshold)
    tl.store(mode_ptr + sample, tl.where(erase, _ERASE, _KEEP).to(tl.int32), mask=valid)
    tl.store(box_ptr + sample * 4, left.to(tl.int32), mask=valid)
    tl.store(box_ptr + sample * 4 + 1, top.to(tl.int32), mask=valid)
    tl.store(box_ptr + sample * 4 + 2, (left + box_w).to(tl.int32), mask=valid)
    tl.store(box_ptr + sample * 4 + 3, (top + box_h).to(tl.int32), mask=valid)
    # The noise key: words 0 and 1 of its own call as one signed 64-bit integer (high word signed).
    key_low, key_high, _, _ = tl.randint4x(seed, tl.zeros_like(sample) + ERASE_NOISE_KEY_COUNTER, PHILOX_ROUNDS)
    high = key_high.to(tl.int64)
    high = high - (high >= (1 << 31)).to(tl.int64) * WORD_RANGE
    tl.store(noise_key_ptr + sample * 0, high * WORD_RANGE + key_low.to(tl.int64), mask=sample == 0)


# ----------------------------------------------------------------------------- launchers
# x is contiguous or channels_last (see _dense_layout); out has x's layout.


def _geometry(x, channels_last):
    """Strides of the row decomposition shared by the kernels: (sample, plane, row, row length, planes)."""
    n, c, h, w = x.shape
    if channels_last:
        return c * h * w, 0, w * c, w * c, 1
    return c * h * w, h * w, w, w, c


def _next_power_of_2(value):
    """The smallest power of 2 >= value (>= 1); triton.next_power_of_2 is a constexpr_function, slow to call."""
    return 1 << (max(value, 1) - 1).bit_length()


def _power_of_2_divisor(value, limit):
    """The largest power of 2 that divides value (> 0) and is at most limit."""
    return min(value & -value, limit) if value > 0 else 1


def _tiling(row_len, height):
    """(ROWS, BLOCK_J) of a [ROWS, BLOCK_J] tile: sides that divide H and the row length when such a tile
    has at least MIN_EXACT_TILE_ELEMENTS elements, else the smallest powers of 2 covering them (capped)."""
    block_j = _power_of_2_divisor(row_len, MAX_BLOCK_J)
    rows = _power_of_2_divisor(height, TILE_ELEMENTS // block_j) if block_j >= CHUNK else 0
    if rows * block_j < MIN_EXACT_TILE_ELEMENTS:
        block_j = min(_next_power_of_2(row_len), MAX_BLOCK_J)
        rows = max(1, min(TILE_ELEMENTS // block_j, _next_power_of_2(height)))
    return rows, block_j


def _largest_divisor(value, limit, *limits):
    """The largest divisor of value (> 0) up to every limit (1 at least): how many tiles, planes or column blocks
    a program takes."""
    limit = max(1, min((limit, *limits)))
    return max(steps for steps in range(1, limit + 1) if value % steps == 0)


def _warps(tile_elements, element_size):
    """Warps for a tile read in VECTOR_BYTES vectors, VECTORS_PER_THREAD per thread (NUM_WARPS when that is
    not whole)."""
    threads = tile_elements * element_size // (VECTOR_BYTES * VECTORS_PER_THREAD)
    return max(1, min(MAX_WARPS, threads // 32)) if threads >= 32 else NUM_WARPS


def _dense_layout(x):
    """x as a tensor the kernels can walk, and whether it is channels_last.

    Contiguous wins when a tensor is both (C == 1 or H == W == 1); any other layout is
    copied to contiguous.
    """
    if x.is_contiguous():
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    return x.contiguous(), False


def _cuda_dtype_code(dtype):
    """csrc/mixing.cu's code for dtype; float64 (which its kernels do not instantiate) is a TypeError."""
    if dtype not in MIXING_DTYPE_CODES:
        raise TypeError(f"recipe_kernels.mixing: backend='cuda' takes float32, float16, bfloat16 and uint8 "
                        f"images and outputs, not {dtype}; use backend='triton' or 'torch' for float64")
    return MIXING_DTYPE_CODES[dtype]


# --- composite_batch: every sample of x composited with its partner per `mode`, in x's layout


def _composite_torch(x: torch.Tensor, box: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor,
                     mode: torch.Tensor, fill: torch.Tensor, mean: Optional[torch.Tensor],
                     std: Optional[torch.Tensor], table: Optional[torch.Tensor], noise_seed: Optional[torch.Tensor],
                     out_dtype: torch.dtype, visit_flip_pairs: bool) -> torch.Tensor:
    """Composites every sample of x with its partner per `mode`; the output keeps x's layout.

    box (N, 4) int32, partner (N,) int32, mode (N,) int32; lam (N,) and fill (C,) in the
    compositing dtype (_math_dtype(x.dtype)); mean/std (C,) in the normalization dtype or None;
    table: None, or for a uint8 x with mean and std, _normalization_table(mean, std, out_dtype) (the
    Triton kernel looks the output up there; speed only); noise_seed (1,) int64 or None (then ERASE
    writes fill). visit_flip_pairs: speed only.
    """
    x, _ = _dense_layout(x)
    out = torch.empty_like(x, dtype=out_dtype)
    if x.numel() == 0:
        return out
    value = reference.composite_batch(x, box, lam, partner, mode, fill=fill, mean=mean, std=std,
                                      noise_seed=noise_seed, math_dtype=lam.dtype)
    out.copy_(value)  # float outputs round to nearest even; uint8 values are already integers
    return out


@functools.lru_cache(maxsize=256)
def _composite_launch_config(n, c, h, w, channels_last, element_size, table_path, sm_count):
    """(grid, num_warps, ROWS, BLOCK_J, ROW_STEPS, COLUMN_STEPS, COLUMN_STRIDE, PLANE_STEPS, EXACT_TILES, CHUNK)
    of _composite_kernel for a shape (a pure function of its arguments, kept per shape: the eager call's host
    time). The grid is (row groups x column groups, plane groups, samples); launches take at most
    MAX_GRID_PLANE_GROUPS and MAX_GRID_SAMPLES. Only the uint8 table path (table_path) groups planes and column blocks: the generic path's
    per-element box tests, the same for every plane, would be kept in registers across such a loop."""
    row_len, planes = (w * c, 1) if channels_last else (w, c)
    rows, block_j = _tiling(row_len, h)
    exact = h % rows == 0 and row_len % block_j == 0
    row_steps = _largest_divisor(h // rows, MAX_ROW_STEPS) if exact else 1
    column_blocks = cdiv(row_len, block_j)
    # channels_last: a block's bytes have the channels of the block column_stride before it
    column_stride = c // math.gcd(c, block_j) if channels_last else 1
    if not table_path or column_blocks % column_stride:
        column_stride = 1
    # Planes, then column blocks, grouped while the grid keeps MIN_PROGRAMS_PER_SM programs per SM.
    programs = n * planes * cdiv(h, rows * row_steps) * column_blocks
    least = MIN_PROGRAMS_PER_SM * sm_count
    plane_steps = _largest_divisor(planes, MAX_PLANE_STEPS if table_path else 1, programs // least)
    column_steps = _largest_divisor(column_blocks // column_stride, MAX_COLUMN_STEPS if table_path else 1,
                                    programs // (least * plane_steps))
    grid = (cdiv(h, rows * row_steps) * (column_blocks // column_steps), planes // plane_steps, n)
    return (grid, _warps(rows * block_j, element_size), rows, block_j, row_steps, column_steps, column_stride,
            plane_steps, exact, min(CHUNK, block_j))


def _composite_triton(x, box, lam, partner, mode, fill, mean, std, table, noise_seed, out_dtype, visit_flip_pairs):
    x, channels_last = _dense_layout(x)
    out = torch.empty_like(x, dtype=out_dtype)
    if x.numel() == 0:
        return out
    n, c, h, w = x.shape
    # The table path reads x as 4-byte words, CHUNK bytes at a time; other uint8 rows normalize per element (the
    # same values: the table holds the reference's (level - mean) / std).
    has_table = (table is not None and x.dtype == torch.uint8 and (w * c if channels_last else w) % CHUNK == 0
                 and x.data_ptr() % 4 == 0)
    (grid, num_warps, rows, block_j, row_steps, column_steps, column_stride, plane_steps, exact,
     chunk) = _composite_launch_config(n, c, h, w, channels_last, x.element_size(), has_table,
                                       _backend.sm_count(x.device))
    for first_plane_group in range(0, grid[1], MAX_GRID_PLANE_GROUPS):
        for first_slot in range(0, n, MAX_GRID_SAMPLES):
            # no FMA contraction (launch): MixUp equals the other backends bit for bit
            launch(_composite_kernel, (grid[0], min(MAX_GRID_PLANE_GROUPS, grid[1] - first_plane_group),
                                       min(MAX_GRID_SAMPLES, n - first_slot)),
                   x, out, box, lam, partner, mode, fill, mean if mean is not None else fill,
                   std if std is not None else fill, table if table is not None else fill,
                   noise_seed if noise_seed is not None else box,
                   n, c, h, w, first_plane_group, first_slot, num_warps=num_warps, CHANNELS_LAST=channels_last,
                   PIXEL_STRIDE=c if channels_last else 1, HAS_NORM=mean is not None,
                   HAS_TABLE=has_table, RANDOM_FILL=noise_seed is not None,
                   VISIT_FLIP_PAIRS=visit_flip_pairs, ROWS=rows, BLOCK_J=block_j, ROW_STEPS=row_steps,
                   COLUMN_STEPS=column_steps, COLUMN_STRIDE=column_stride, PLANE_STEPS=plane_steps,
                   EXACT_TILES=exact, CHUNK=chunk, PHILOX_ROUNDS=PHILOX_ROUNDS)
    return out


def _composite_cuda_arguments(x, out, box, lam, partner, mode, fill, mean, std, noise_seed, channels_last,
                              visit_flip_pairs):
    """Every keyword argument of _C.composite_batch but the stream (also those of composite_batch_host)."""
    n, c, h, w = x.shape
    return dict(x=x.data_ptr(), out=out.data_ptr(), box=box.data_ptr(), lam=lam.data_ptr(),
                partner=partner.data_ptr(), mode=mode.data_ptr(), fill=fill.data_ptr(),
                mean=mean.data_ptr() if mean is not None else 0, std=std.data_ptr() if std is not None else 0,
                seed=noise_seed.data_ptr() if noise_seed is not None else 0, n=n, c=c, h=h, w=w,
                channels_last=channels_last, visit_flip_pairs=visit_flip_pairs, in_dtype=_cuda_dtype_code(x.dtype),
                out_dtype=_cuda_dtype_code(out.dtype))


def _composite_cuda(x, box, lam, partner, mode, fill, mean, std, table, noise_seed, out_dtype, visit_flip_pairs):
    x, channels_last = _dense_layout(x)
    _cuda_dtype_code(x.dtype), _cuda_dtype_code(out_dtype)  # float64 raises before anything is allocated
    out = torch.empty_like(x, dtype=out_dtype)
    if x.numel() == 0:
        return out
    _backend.launch_cuda(_backend._C.composite_batch, x.device,
                         **_composite_cuda_arguments(x, out, box, lam, partner, mode, fill, mean, std, noise_seed,
                                                     channels_last, visit_flip_pairs))
    return out


# --- cutmix_swap_: in place, sample i and sample N-1-i exchange the pixels inside box[i] (all boxes equal)
# x is contiguous or channels_last (the public function checked it).


def _cutmix_swap_torch(x: torch.Tensor, box: torch.Tensor) -> None:
    if x.numel() != 0 and x.shape[0] >= 2:
        reference.cutmix_swap_(x, box)


def _cutmix_swap_triton(x, box):
    if x.numel() == 0 or x.shape[0] < 2:
        return
    channels_last = not x.is_contiguous()
    n, c, h, w = x.shape
    sample_stride, plane_stride, row_stride, row_len, planes = _geometry(x, channels_last)
    rows, block_j = _tiling(row_len, h)
    row_blocks, col_blocks = cdiv(h, rows), cdiv(row_len, block_j)
    launch(_cutmix_swap_kernel, ((n // 2) * planes * row_blocks * col_blocks,),
           x, box, n, h, sample_stride, plane_stride, row_stride, row_len, planes, row_blocks, col_blocks,
           num_warps=NUM_WARPS, CHANNELS_LAST=channels_last, PIXEL_STRIDE=c if channels_last else 1, ROWS=rows,
           BLOCK_J=block_j, CHUNK=CHUNK)


def _cutmix_swap_cuda(x, box):
    if x.numel() == 0 or x.shape[0] < 2:
        return
    n, c, h, w = x.shape
    _backend.launch_cuda(_backend._C.cutmix_swap, x.device, x=x.data_ptr(), box=box.data_ptr(), n=n, c=c, h=h, w=w,
                         channels_last=not x.is_contiguous(), dtype=_cuda_dtype_code(x.dtype))


# ----------------------------------------------------------------------------- ops


composite_batch_op = Op("composite_batch", torch=_composite_torch, triton=_composite_triton, cuda=_composite_cuda)


@composite_batch_op.register_fake
def _(x, box, lam, partner, mode, fill, mean, std, table, noise_seed, out_dtype, visit_flip_pairs, backend):
    x, _ = _dense_layout(x)
    return torch.empty_like(x, dtype=out_dtype)


cutmix_swap_op = Op("cutmix_swap_", torch=_cutmix_swap_torch, triton=_cutmix_swap_triton, cuda=_cutmix_swap_cuda,
                    mutates_args=("x",))


@cutmix_swap_op.register_fake
def _(x, box, backend):
    return None


def _normalization_table_torch(mean: torch.Tensor, std: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(C, 256) in out_dtype: (level - mean[c]) / std[c] for every uint8 level, the reference's operations
    (so the Triton kernel's lookup equals the reference bit for bit)."""
    levels = torch.arange(UINT8_LEVELS.value, dtype=mean.dtype, device=mean.device)
    return ((levels - mean[:, None]) / std[:, None]).to(out_dtype)


# An op on every backend (torch ops alone) so that torch.compile keeps the reference's division as it is.
normalization_table_op = Op("normalization_table", torch=_normalization_table_torch,
                            triton=_normalization_table_torch, cuda=_normalization_table_torch)


@normalization_table_op.register_fake
def _(mean, std, out_dtype, backend):
    return mean.new_empty((mean.shape[0], UINT8_LEVELS.value), dtype=out_dtype)


# ----------------------------------------------------------------------------- sampling on the device


# Every random number of a call comes from Philox4x32(seed, counter) (recipe_kernels._philox), one
# seed drawn on the device per call. Draw d (a sample, or the batch) owns calls d * CALLS + 0 ..
# CALLS - 1, each giving four 32-bit words. One small kernel per call samples every draw
# (_sample_mixing_kernel, _sample_erasing_kernel); the torch backend computes the same numbers with
# torch ops, on symbolic sizes too (torch.compile with dynamic shapes).
#
# Exact elementary functions: log, exp and cos are float64 series of +, -, *, / and sqrt only, each
# correctly rounded in IEEE arithmetic on every backend (no FMA contraction: _ops.launch), evaluated
# in the same order by the kernels and by torch. So every backend samples the same bits: library
# log/exp/cos differ between CPU, GPU and Triton's interpreter in the last bit, which could move a
# box edge or an accept decision. Each is accurate to a few float64 ulps.

# Marsaglia-Tsang attempts per gamma draw, all drawn at once. The sampler accepts with probability
# 0.9517 at shape 1, its worst case (more above), so all attempts are rejected with probability
# 0.0483^8 = 3.0e-11; that draw then takes the proposal's centre, v = 1 (G = shape - 1/3).
GAMMA_ATTEMPTS = 8
# Calls per draw of the CutMix/MixUp sampler: call 0 holds the words (switch, apply, centre y,
# centre x); call 1 + g * GAMMA_ATTEMPTS + k holds attempt k of gamma g (lam = G0 / (G0 + G1)).
MIX_DECISION_CALL = 0
MIX_CALLS_PER_DRAW = 1 + 2 * GAMMA_ATTEMPTS
# Random erasing, per sample: call 0 holds the word of the p decision; call 1 + k holds candidate k's
# words (area, log aspect, top, left). torchvision tries 10 candidates.
ERASE_ATTEMPTS = 10
ERASE_CALLS_PER_SAMPLE = 1 + ERASE_ATTEMPTS
# The counter of the call whose words 0 and 1 make the noise key of value="random": far above
# every per-sample counter, so the noise (keyed apart) and the boxes never share words.
ERASE_NOISE_KEY_COUNTER = 1 << 62
# Lanes per program of the sampling kernels: one warp on a GPU (the interpreter's cost is per program).
# The erasing kernel has a lane per sample; the mixing kernel a lane per gamma attempt of each draw.
SAMPLING_BLOCK = 4096 if _ops.INTERPRETING else 32
MIX_SAMPLING_DRAWS = SAMPLING_BLOCK // (2 * GAMMA_ATTEMPTS)


def _log_exact(x):
    """log(x) for a float64 tensor of finite normal x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
    log x = e ln 2 + 2 atanh((m - 1) / (m + 1)) (the atanh series in s^2, Horner)."""
    bits = x.view(torch.int64)
    exponent = (bits >> 52) - EXPONENT_BIAS.value
    mantissa = ((bits & MANTISSA_MASK.value) | ONE_BITS.value).view(torch.float64)
    large = mantissa > SQRT_TWO.value
    mantissa = torch.where(large, mantissa * 0.5, mantissa)
    e = (exponent + large.to(torch.int64)).to(torch.float64)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    series = torch.zeros_like(s)
    for k in range(LOG_SERIES_TERMS.value, 0, -1):
        series = series * s2 + 2.0 / (2 * k + 1)
    return e * LN2_HIGH.value + (e * LN2_LOW.value + (2.0 * s + s * (s2 * series)))


def _exp_exact(x):
    """exp(x) for a float64 tensor with |x| <= EXP_LIMIT: x = k ln 2 + r, e^r by its Taylor series, times 2^k."""
    k = torch.floor(x * INV_LN2.value + 0.5)
    r = (x - k * LN2_HIGH.value) - k * LN2_LOW.value
    series = torch.ones_like(r)
    for n in range(EXP_SERIES_TERMS.value, 0, -1):
        series = 1.0 + (r * series) * (1.0 / n)
    scale = ((k.to(torch.int64) + EXPONENT_BIAS.value) << 52).view(torch.float64)
    return series * scale


def _cos_two_pi_exact(u):
    """cos(2 pi u) for a float64 tensor u in [0, 1) on a 2^-32 grid: reduced exactly to 2 pi b with
    b in [0, 1/4] (cos(2 pi (1/2 - a)) = -cos(2 pi a)), then cos's Taylor series in t^2."""
    t = u - torch.floor(u + 0.5)
    a = t.abs()
    flip = a > 0.25
    b = torch.where(flip, 0.5 - a, a)
    theta = TWO_PI.value * b
    theta2 = theta * theta
    series = torch.ones_like(theta)
    for n in range(COS_SERIES_TERMS.value, 0, -1):
        series = 1.0 - (theta2 * series) * (1.0 / ((2 * n - 1) * (2 * n)))
    return torch.where(flip, -series, series)


def _philox_words(seed, draws, calls):
    """(draws, calls, 4) int64 words (uint32 values) of Philox(seed, d * calls + c)."""
    counters = torch.arange(draws * calls, dtype=torch.int64, device=seed.device)
    return torch.stack(philox4x32(seed, counters), dim=-1).reshape(draws, calls, 4)


def _uniform(word):
    """word / 2^32: float64 uniform on [0, 1) in steps of 2^-32 (exact)."""
    return word.to(torch.float64) * INV_WORD_RANGE.value


def _uniform_positive(word):
    """(word + 1) / 2^32: float64 uniform on (0, 1], safe under log."""
    return (word + 1).to(torch.float64) * INV_WORD_RANGE.value


def _threshold(probability):
    """round(p * 2^32): a word below it happens with probability p (exact to 2^-33; 1 always, 0 never)."""
    return round(probability * WORD_RANGE.value)


def _uniform_index(word, bound):
    """floor(word * bound / 2^32): an integer uniform on [0, bound) for bound >= 1 (bias below bound / 2^32)."""
    return (word * bound) >> 32


def _float64_bits(value):
    """A Python float's float64 bit pattern as a signed int (how the sampling kernels take float64 arguments)."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _log_gamma(shape, words):
    """log G, G ~ Gamma(shape, 1), per element of the float64 tensor shape (> 0), by Marsaglia-Tsang.

    words: shape's shape + (GAMMA_ATTEMPTS, 4). Attempt k: a normal z from words 0 and 1
    (Box-Muller), v = (1 + c z)^3 with d = s - 1/3, c = 1 / sqrt(9 d); accepted when v > 0 and
    log(u) < z^2 / 2 + d - d v + d log v with u from word 2; G = d v of the first accepted attempt.
    For shape < 1 it samples s = shape + 1 and boosts, G = G' * u^(1/shape) with u from word 3 of
    attempt 0. Works in logs, so tiny shapes cannot underflow to G = 0.
    """
    boosted = shape < 1.0
    d = (torch.where(boosted, shape + 1.0, shape) - ONE_THIRD.value).unsqueeze(-1)
    c = 1.0 / torch.sqrt(9.0 * d)
    z = torch.sqrt(-2.0 * _log_exact(_uniform_positive(words[..., 0]))) * _cos_two_pi_exact(_uniform(words[..., 1]))
    t = 1.0 + c * z
    v = t * t * t
    positive = v > 0.0
    log_v = _log_exact(torch.where(positive, v, 1.0))
    accepted = positive & (_log_exact(_uniform_positive(words[..., 2])) < 0.5 * z * z + d - d * v + d * log_v)
    first = accepted.to(torch.int8).argmax(dim=-1, keepdim=True)
    log_v = torch.where(accepted.any(dim=-1), log_v.gather(-1, first).squeeze(-1), 0.0)  # all rejected: v = 1
    log_g = _log_exact(d.squeeze(-1)) + log_v
    boost = _log_exact(_uniform_positive(words[..., 0, 3])) / shape
    return torch.where(boosted, log_g + boost, log_g)


def _sample_beta(alpha, words):
    """Beta(alpha, alpha) per element of the float64 tensor alpha, as fp32: G0 / (G0 + G1) = 1 / (1 + G1 / G0).

    words: alpha's shape + (2 * GAMMA_ATTEMPTS, 4), the attempts of G0 then of G1. lam is in [0, 1]
    (fp32 rounding gives exactly 1 for lam above 1 - 2^-25, 1.7% of the draws at alpha = 0.2).
    """
    pair = alpha.unsqueeze(-1).expand(*alpha.shape, 2)  # G0 and G1 in one pass
    log_g = _log_gamma(pair, words.unflatten(-2, (2, GAMMA_ATTEMPTS)))
    difference = (log_g[..., 1] - log_g[..., 0]).clamp(-EXP_LIMIT.value, EXP_LIMIT.value)
    return (1.0 / (1.0 + _exp_exact(difference))).to(torch.float32)


def _sample_mixing_torch(seed: torch.Tensor, draws: int, height: int, width: int, cutmix_alpha: float,
                         mixup_alpha: float, switch_threshold: int, apply_threshold: int,
                         correct_lam: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lam (draws,) fp32, box (draws, 4) int32, mode (draws,) int32): see _sample_mixing."""
    words = _philox_words(seed, draws, MIX_CALLS_PER_DRAW)
    decision = words[:, MIX_DECISION_CALL]
    use_cutmix = decision[:, 0] < switch_threshold
    applied = decision[:, 1] < apply_threshold
    alpha = torch.where(use_cutmix, torch.full_like(use_cutmix, cutmix_alpha, dtype=torch.float64), mixup_alpha)
    lam = _sample_beta(alpha, words[:, MIX_DECISION_CALL + 1:])
    box, kept = _cutmix_boxes(lam, decision[:, 2], decision[:, 3], height, width)
    if correct_lam:
        lam = torch.where(use_cutmix, kept, lam)
    lam = torch.where(applied, lam, 1.0)
    mode = torch.where(use_cutmix, int(MixMode.CUTMIX), int(MixMode.MIXUP))
    mode = torch.where(applied, mode, int(MixMode.KEEP)).to(torch.int32)
    return lam, box, mode


def _sample_mixing_triton(seed, draws, height, width, cutmix_alpha, mixup_alpha, switch_threshold, apply_threshold,
                          correct_lam):
    lam = torch.empty(draws, dtype=torch.float32, device=seed.device)
    box = torch.empty((draws, 4), dtype=torch.int32, device=seed.device)
    mode = torch.empty(draws, dtype=torch.int32, device=seed.device)
    if draws > 0:
        launch(_sample_mixing_kernel, (cdiv(draws, MIX_SAMPLING_DRAWS),), seed, lam, box, mode, draws, height, width,
               _float64_bits(cutmix_alpha), _float64_bits(mixup_alpha), switch_threshold, apply_threshold,
               num_warps=1, CORRECT_LAM=correct_lam, BLOCK=MIX_SAMPLING_DRAWS, MIX_CALLS_PER_DRAW=MIX_CALLS_PER_DRAW,
               GAMMA_ATTEMPTS=GAMMA_ATTEMPTS, PHILOX_ROUNDS=PHILOX_ROUNDS)
    return lam, box, mode


# The CUDA backend samples with the Triton kernel: a few microseconds once per call.
sample_mixing_op = Op("sample_mixing", torch=_sample_mixing_torch, triton=_sample_mixing_triton,
                      cuda=_sample_mixing_triton)


@sample_mixing_op.register_fake
def _(seed, draws, height, width, cutmix_alpha, mixup_alpha, switch_threshold, apply_threshold, correct_lam,
      backend):
    return (seed.new_empty(draws, dtype=torch.float32), seed.new_empty((draws, 4), dtype=torch.int32),
            seed.new_empty(draws, dtype=torch.int32))


def _sample_mixing(seed: torch.Tensor, draws: int, height: int, width: int, *, cutmix_alpha: float,
                   mixup_alpha: float, switch_prob: float, prob: float, correct_lam: bool,
                   backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per draw: (lam (draws,) fp32, box (draws, 4) int32, mode (draws,) int32) of timm's Mixup rule.

    A draw is mixed with probability prob; then CutMix with probability switch_prob (lam ~
    Beta(cutmix_alpha), a box, lam corrected to the kept area with correct_lam) else MixUp
    (lam ~ Beta(mixup_alpha)). Unmixed draws keep their pixels with lam = 1. An alpha of 0
    (a disabled method) is never drawn from: switch_prob is 0 or 1 then. One kernel launch
    (torch ops on the torch backend); every backend returns the same bits. backend: None picks
    the mixing default for the seed's device.
    """
    backend = _backend.resolve("mixing", seed.device, backend)
    return sample_mixing_op(seed, draws, height, width, cutmix_alpha or 1.0, mixup_alpha or 1.0,
                            _threshold(switch_prob), _threshold(prob), bool(correct_lam), backend)


def _cutmix_boxes(lam, centre_y_word, centre_x_word, height, width):
    """CutMix boxes (the paper's rule, timm's integers) for lam (N,) fp32, and the kept fraction of each image.

    Centre uniform over the pixels (from a Philox word each); sides r_h = H*sqrt(1-lam),
    r_w = W*sqrt(1-lam) in fp32 (each step correctly rounded), taken as centre -/+ floor(r/2) and clipped to the image.
    kept = 1 - box area / (H*W), and 1 for an image with no pixels.
    """
    centre_y = _uniform_index(centre_y_word, height)
    centre_x = _uniform_index(centre_x_word, width)
    # fp32 sqrt correctly rounded, through float64 (torch's fp32 sqrt on the CPU is not: sqrt(1 - 2^-24) gives 1)
    side = torch.sqrt((1.0 - lam).to(torch.float64)).to(torch.float32)
    half_h = (side * height * 0.5).floor().to(torch.int64)
    half_w = (side * width * 0.5).floor().to(torch.int64)
    y0, y1 = (centre_y - half_h).clamp(min=0), (centre_y + half_h).clamp(max=height)
    x0, x1 = (centre_x - half_w).clamp(min=0), (centre_x + half_w).clamp(max=width)
    box = torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int32)
    area = ((y1 - y0) * (x1 - x0)).to(torch.float64)
    kept = (1.0 - area / torch.sym_max(height * width, 1)).to(torch.float32)
    return box, kept


def _sample_erasing_torch(seed: torch.Tensor, samples: int, height: int, width: int, apply_threshold: int,
                          scale_low: float, scale_high: float, log_ratio_low: float,
                          log_ratio_high: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(box (samples, 4) int32, mode (samples,) int32 ERASE or KEEP, noise key (1,) int64): see _erasing_boxes."""
    words = _philox_words(seed, samples, ERASE_CALLS_PER_SAMPLE)
    candidates = words[:, 1:]
    area = (scale_low + (scale_high - scale_low) * _uniform(candidates[..., 0])) * (height * width)
    aspect = _exp_exact(log_ratio_low + (log_ratio_high - log_ratio_low) * _uniform(candidates[..., 1]))
    box_h = torch.round(torch.sqrt(area * aspect)).to(torch.int64)
    box_w = torch.round(torch.sqrt(area / aspect)).to(torch.int64)
    fits = (box_h < height) & (box_w < width)  # torchvision accepts h or w = 0 (an empty box)
    top = _uniform_index(candidates[..., 2], (height - box_h + 1).clamp(min=1))
    left = _uniform_index(candidates[..., 3], (width - box_w + 1).clamp(min=1))
    first_fit = fits.to(torch.int8).argmax(dim=-1, keepdim=True)
    pick = lambda t: t.gather(-1, first_fit).squeeze(-1)  # noqa: E731
    top, left, box_h, box_w = pick(top), pick(left), pick(box_h), pick(box_w)
    found = fits.any(dim=-1)
    erase = found & (words[:, 0, 0] < apply_threshold)
    box = torch.stack([left, top, left + box_w, top + box_h], dim=-1)
    box = torch.where(found.unsqueeze(-1), box, 0).to(torch.int32)  # no candidate fits: an empty box
    mode = torch.where(erase, int(MixMode.ERASE), int(MixMode.KEEP)).to(torch.int32)
    # Two words as one signed 64-bit key: high word in [-2^31, 2^31), so nothing overflows.
    key_low, key_high, _, _ = philox4x32(seed, torch.full((1,), ERASE_NOISE_KEY_COUNTER, device=seed.device))
    high = key_high - (key_high >= (1 << 31)).to(torch.int64) * WORD_RANGE.value
    return box, mode, high * WORD_RANGE.value + key_low


def _sample_erasing_triton(seed, samples, height, width, apply_threshold, scale_low, scale_high, log_ratio_low,
                           log_ratio_high):
    box = torch.empty((samples, 4), dtype=torch.int32, device=seed.device)
    mode = torch.empty(samples, dtype=torch.int32, device=seed.device)
    noise_key = torch.empty(1, dtype=torch.int64, device=seed.device)
    launch(_sample_erasing_kernel, (max(cdiv(samples, SAMPLING_BLOCK), 1),), seed, box, mode, noise_key, samples,
           height, width, apply_threshold, _float64_bits(scale_low), _float64_bits(scale_high),
           _float64_bits(log_ratio_low), _float64_bits(log_ratio_high),
           num_warps=1, BLOCK=SAMPLING_BLOCK, ERASE_CALLS_PER_SAMPLE=ERASE_CALLS_PER_SAMPLE,
           ERASE_ATTEMPTS=ERASE_ATTEMPTS, ERASE_NOISE_KEY_COUNTER=ERASE_NOISE_KEY_COUNTER,
           PHILOX_ROUNDS=PHILOX_ROUNDS)
    return box, mode, noise_key


sample_erasing_op = Op("sample_erasing", torch=_sample_erasing_torch, triton=_sample_erasing_triton,
                       cuda=_sample_erasing_triton)


@sample_erasing_op.register_fake
def _(seed, samples, height, width, apply_threshold, scale_low, scale_high, log_ratio_low, log_ratio_high, backend):
    return (seed.new_empty((samples, 4), dtype=torch.int32), seed.new_empty(samples, dtype=torch.int32),
            seed.new_empty(1, dtype=torch.int64))


def _erasing_boxes(seed, n, height, width, p, scale, ratio, backend):
    """Random-erasing boxes (torchvision's RandomErasing.get_params), each sample's mode, and a noise key.

    Per sample, with probability p: up to ERASE_ATTEMPTS candidates with area ~ U(scale) * H * W,
    log aspect ~ U(log ratio), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect))
    (half to even, as Python's round); the first with h < H and w < W is placed at top ~ U{0..H-h},
    left ~ U{0..W-w} (h or w may be 0: an empty box, erasing nothing). A sample none fits is left
    alone. Returns box (n, 4) int32, mode (n,) int32 (ERASE or KEEP) and a (1,) int64 key for
    value="random". One kernel launch (torch ops on the torch backend); the same bits on every backend.
    """
    return sample_erasing_op(seed, n, height, width, _threshold(p), scale[0], scale[1], math.log(ratio[0]),
                             math.log(ratio[1]), backend)


def _partner_index(n, partner, device):
    """flip: i pairs with N-1-i (timm); roll: i pairs with i-1 (torchvision)."""
    index = torch.arange(n, device=device, dtype=torch.int32)
    return index.flip(0) if partner == "flip" else index.roll(1)


# ----------------------------------------------------------------------------- validation


def _check_image(x):
    _checks.tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in IMAGE_DTYPES:
        raise TypeError(f"x must be float32, float16, bfloat16, uint8 or float64, got {x.dtype}")


def _math_dtype(*dtypes):
    """The arithmetic dtype for images or outputs of these dtypes: float64 if one is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _check_target(x, target):
    _checks.tensor(target, "target")
    if target.dim() == 0 or target.shape[0] != x.shape[0]:
        raise ValueError(f"target has shape {tuple(target.shape)} but x has {x.shape[0]} samples; "
                         "its first dimension must match")
    if target.dtype != torch.int64:
        raise TypeError(f"target must hold int64 class indices (MixedTarget), got {target.dtype}")
    _checks.same_device(target, "target", x, "x")


def _check_alpha(alpha, name="alpha", allow_zero=False):
    """A Beta concentration: finite and > 0 (>= 0 with allow_zero, where 0 disables a method)."""
    return _checks.positive(alpha, name, allow_zero)


def _check_partner(partner):
    if partner not in ("flip", "roll"):
        raise ValueError(f"partner must be 'flip' or 'roll', got {partner!r}")


def _check_range(name, pair, upper=None):
    try:
        low, high = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {pair!r}") from None
    if not (0.0 < low <= high) or (upper is not None and high > upper) or math.isinf(high):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {pair!r}")
    return low, high


# Read-only constant tensors (per-channel values, partner indices, zero fills) made once per key: a
# tensor built from a Python list is a host-to-device copy, which waits on the host and cannot be
# captured in a CUDA graph, and any tensor made per call costs the host an op.
_CONSTANTS = {}
_CONSTANTS_SIZE = 64


def _constant(key, make):
    """make() once per key in eager mode (never to be written to); anew when traced (a graph constant)."""
    if torch.compiler.is_compiling():
        return make()
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        if len(_CONSTANTS) >= _CONSTANTS_SIZE:
            _CONSTANTS.clear()
        tensor = _CONSTANTS[key] = make()
    return tensor


def _channel_tensor(values, device, dtype):
    same = lambda v: v == values[0] or (math.isnan(v) and math.isnan(values[0]))  # noqa: E731
    if all(map(same, values[1:])):  # one value (or none): a fill kernel, no copy at all
        return _constant(("full", len(values), values[0] if values else 0.0, device, dtype),
                         lambda: torch.full((len(values),), values[0] if values else 0.0, dtype=dtype, device=device))
    return _constant(("values", tuple(values), device, dtype),
                     lambda: torch.tensor(values, dtype=dtype, device=device))


def _per_channel(name, values, channels, device, finite=False, allow_nan=True, dtype=torch.float32):
    """A number or a length-C sequence/tensor as a (C,) tensor of `dtype` (fp32 or fp64) on device (not to be
    written to).

    Sequences of distinct values are copied to the device once and cached, so that later
    calls neither wait on the host nor break CUDA-graph capture. Python numbers are checked
    (finite: no NaN or inf; allow_nan=False: no NaN); tensor values are not (a host sync).
    A tensor must be on x's device or on the CPU (then copied).
    """
    if isinstance(values, torch.Tensor):
        if values.numel() not in (1, channels) or values.dim() > 1:
            raise ValueError(f"{name} must have 1 or {channels} values (one per channel), got shape "
                             f"{tuple(values.shape)}")
        if values.device != device and values.device.type != "cpu":
            raise ValueError(f"{name} is on {values.device} but x is on {device}")
        if values.is_complex():
            raise TypeError(f"{name} must hold real numbers, got {values.dtype}")
        return values.to(device=device, dtype=dtype).expand(channels).contiguous()
    number = isinstance(values, numbers.Real) and not isinstance(values, bool)
    if number:  # one value for any C (a symbolic C under torch.compile stays symbolic)
        values = [float(values)]
    else:
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a sequence of {channels} numbers, got {values!r}") from None
        if len(values) != channels:
            raise ValueError(f"{name} has {len(values)} values but x has {channels} channels")
    if (finite and not all(math.isfinite(v) for v in values)) or (not allow_nan and any(map(math.isnan, values))):
        raise ValueError(f"{name} must be {'finite' if finite else 'a number, not NaN'}, got {values}")
    if number:
        return _constant(("full", channels, values[0], device, dtype),
                         lambda: torch.full((channels,), values[0], dtype=dtype, device=device))
    return _channel_tensor(values, device, dtype)


def _normalization(x, mean, std, out_dtype, backend):
    """(mean, std, table, out_dtype) as the op wants them.

    out_dtype defaults to x's dtype, or float32 when a uint8 x is normalized. mean and std
    are float64 when x or out_dtype is (the normalization then runs in float64), else float32.
    table: for a uint8 x on the triton backend, the (C, 256) normalized outputs (else None).
    """
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    if out_dtype is None:
        out_dtype = torch.float32 if (mean is not None and x.dtype == torch.uint8) else x.dtype
    if out_dtype not in IMAGE_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16, bfloat16, uint8 or float64, got {out_dtype}")
    if out_dtype == torch.uint8 and (x.dtype != torch.uint8 or mean is not None):
        raise ValueError("out_dtype=torch.uint8 needs a uint8 x and no normalization")
    if mean is None:
        return None, None, None, out_dtype
    with_table = x.dtype == torch.uint8 and backend == "triton"
    if type(mean) is tuple and type(std) is tuple:  # the usual spelling: checked and converted once per values
        key = ("normalization", mean, std, x.shape[1], x.device, out_dtype, with_table)
        mean, std, table = _constant(key, lambda: _normalization_tensors(x, mean, std, out_dtype, with_table))
    else:
        mean, std, table = _normalization_tensors(x, mean, std, out_dtype, with_table)
    return mean, std, table, out_dtype


def _normalization_tensors(x, mean, std, out_dtype, with_table):
    """mean and std checked and converted to (C,) tensors of the normalization dtype on x's device, and
    the lookup table (or None)."""
    dtype = _math_dtype(x.dtype, out_dtype)
    if not isinstance(std, torch.Tensor):
        stds = [std] if isinstance(std, numbers.Real) else list(std)
        if any(float(s) == 0.0 for s in stds):
            raise ValueError(f"std must not contain zeros, got {std!r}")
    channels = x.shape[1]
    mean = _per_channel("mean", mean, channels, x.device, finite=True, dtype=dtype)
    std = _per_channel("std", std, channels, x.device, finite=True, dtype=dtype)
    return mean, std, normalization_table_op(mean, std, out_dtype, "triton") if with_table else None


# ----------------------------------------------------------------------------- public API


# A number, one number per channel, or a (C,) / one-element tensor.
PerChannel = Union[float, Sequence[float], torch.Tensor]


def composite_batch(x: torch.Tensor, box: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor,
                    mode: torch.Tensor, *, fill: PerChannel = 0.0, noise_seed: Optional[torch.Tensor] = None,
                    mean: Optional[PerChannel] = None, std: Optional[PerChannel] = None,
                    out_dtype: Optional[torch.dtype] = None, flip_pairs_hint: bool = False,
                    backend: Optional[str] = None) -> torch.Tensor:
    """The compositing kernel on explicit per-sample parameters: bring your own sampling.

    x: (N, C, H, W), contiguous or channels_last, float32/float16/bfloat16/uint8/float64
    (float64: compositing in float64; the other dtypes composite in float32).
    box: (N, 4) integers (x0, y0, x1, y1), half-open, in pixels (used by CUTMIX and ERASE).
    lam: (N,) floating (used in the compositing dtype), the weight of x[n] in MIXUP. partner: (N,) sample indices (clamped to
    [0, N)). mode: (N,) MixMode codes; any other value keeps the sample. box, partner and mode
    are integer tensors (int64 values beyond int32 are clamped to its range, which keeps
    their meaning). fill: what ERASE writes, a number or one value per channel, in x's units
    (uint8 rounds half up and saturates; a NaN fill raises for uint8 when given as numbers,
    and becomes 0 when given as a tensor). noise_seed: a one-element integer tensor on x's
    device; when given, ERASE writes standard normal noise from Philox instead.
    mean, std, out_dtype: write (out - mean[c]) / std[c] as out_dtype in the same pass.
    flip_pairs_hint: say True when partner[i] == N-1-i; the kernel then visits each pair
    together so the partner's read hits L2 (speed only: results never depend on it).
    Returns a new tensor in x's layout. No host sync; parameters are not range-checked
    on the host (that would need one).
    """
    _check_image(x)
    n, channels = x.shape[0], x.shape[1]
    expected = {"box": (n, 4), "lam": (n,), "partner": (n,), "mode": (n,)}
    given = {"box": box, "lam": lam, "partner": partner, "mode": mode}
    for name, tensor in given.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected[name]:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be a tensor of shape {expected[name]}, got {shape}")
        _checks.same_device(tensor, name, x, "x")
        if name == "lam" and not tensor.is_floating_point():
            raise TypeError(f"lam must be a floating tensor, got {tensor.dtype}")
        if name != "lam" and tensor.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{name} must be an integer tensor, got {tensor.dtype}")
    if noise_seed is not None:
        if x.dtype == torch.uint8:
            raise ValueError("normal-noise erasing needs a floating x, not uint8")
        if not isinstance(noise_seed, torch.Tensor) or noise_seed.numel() != 1:
            shape = tuple(noise_seed.shape) if isinstance(noise_seed, torch.Tensor) else type(noise_seed).__name__
            raise ValueError(f"noise_seed must be a tensor with one element, got {shape}")
        if noise_seed.dtype not in _INDEX_DTYPES:
            raise TypeError(f"noise_seed must be an integer tensor, got {noise_seed.dtype}")
        _checks.same_device(noise_seed, "noise_seed", x, "x")
    math_dtype = _math_dtype(x.dtype)
    fill = _per_channel("fill", fill, channels, x.device, allow_nan=x.dtype != torch.uint8, dtype=math_dtype)
    backend = _backend.resolve("mixing", x.device, backend)
    mean, std, table, out_dtype = _normalization(x, mean, std, out_dtype, backend)
    return composite_batch_op(
        x, _as_int32(box), lam.to(math_dtype).contiguous(), _as_int32(partner), _as_int32(mode), fill, mean, std,
        table, None if noise_seed is None else noise_seed.reshape(1).to(torch.int64), out_dtype, bool(flip_pairs_hint),
        backend)


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _as_int32(tensor):
    """An integer tensor as contiguous int32; int64 values beyond int32 are clamped (not wrapped) to its range."""
    if tensor.dtype == torch.int64:
        tensor = tensor.clamp(-2**31, 2**31 - 1)
    return tensor.to(torch.int32).contiguous()


def _mix(x, target, lam, box, mode, partner, mean, std, table, out_dtype, inplace, backend):
    """Runs the compositing op and builds the MixedTarget (y_b = target[partner])."""
    n = x.shape[0]
    y_b = target.flip(0) if partner == "flip" else target.roll(1, 0)
    if box.shape[0] != n:  # one draw for the batch
        box, lam, mode = box.expand(n, 4).contiguous(), lam.expand(n).contiguous(), mode.expand(n).contiguous()
    if inplace:
        cutmix_swap_op(x, box, backend)
        return x, y_b
    math_dtype = _math_dtype(x.dtype)
    if lam.dtype != math_dtype:
        lam = lam.to(math_dtype)
    device = x.device
    partner_index = _constant(("partner", n, partner, device), lambda: _partner_index(n, partner, device))
    zeros = _constant(("zeros", x.shape[1], math_dtype, device),
                      lambda: torch.zeros(x.shape[1], dtype=math_dtype, device=device))
    out = composite_batch_op(x, box, lam, partner_index, mode, zeros, mean, std, table, None, out_dtype,
                             partner == "flip", backend)
    return out, y_b


def _check_inplace(x, per_sample, partner, mean, out_dtype):
    if per_sample or partner != "flip":
        raise ValueError("inplace=True is exact only for a per-batch box with the flip partner "
                         "(per_sample=False, partner='flip')")
    if mean is not None or (out_dtype is not None and out_dtype != x.dtype):
        raise ValueError("inplace=True cannot normalize or change the dtype")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("inplace=True needs a contiguous or channels_last x")


def cutmix(x: torch.Tensor, target: torch.Tensor, *, alpha: float = 1.0, per_sample: bool = False,
           partner: str = "flip", correct_lam: bool = True, mean: Optional[PerChannel] = None,
           std: Optional[PerChannel] = None, out_dtype: Optional[torch.dtype] = None,
           generator: Optional[torch.Generator] = None, inplace: bool = False,
           backend: Optional[str] = None) -> Tuple[torch.Tensor, MixedTarget]:
    """CutMix: each sample takes its partner's pixels inside a box; returns (x_mixed, MixedTarget).

    lambda ~ Beta(alpha, alpha), one per batch or one per sample (per_sample=True), drawn
    on x's device. Box per the CutMix paper (see _cutmix_boxes); with correct_lam, lambda
    becomes the kept fraction 1 - box area / (H*W). partner: "flip" (i with N-1-i, timm)
    or "roll" (i with i-1, torchvision). mean/std/out_dtype normalize in the same pass.
    inplace=True (per-batch box, flip partner only) swaps the boxes of each pair and
    touches nothing else. lam in the target is a 0-d tensor per batch, (N,) per sample.
    """
    _check_image(x)
    _check_target(x, target)
    alpha = _check_alpha(alpha)
    _check_partner(partner)
    if inplace:
        _check_inplace(x, per_sample, partner, mean, out_dtype)
    backend = _backend.resolve("mixing", x.device, backend)
    mean, std, table, out_dtype = _normalization(x, mean, std, out_dtype, backend)
    n, _, height, width = x.shape
    lam, box, mode = _sample_mixing(draw_seed(x.device, generator), n if per_sample else 1, height, width,
                                    cutmix_alpha=alpha, mixup_alpha=0.0, switch_prob=1.0, prob=1.0,
                                    correct_lam=correct_lam, backend=backend)
    out, y_b = _mix(x, target, lam, box, mode, partner, mean, std, table, out_dtype, inplace, backend)
    return out, MixedTarget.of_checked(target, y_b, lam if per_sample else lam.reshape(()))


def mixup(x: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.2, per_sample: bool = False,
          partner: str = "flip", mean: Optional[PerChannel] = None, std: Optional[PerChannel] = None,
          out_dtype: Optional[torch.dtype] = None, generator: Optional[torch.Generator] = None,
          inplace: bool = False, backend: Optional[str] = None) -> Tuple[torch.Tensor, MixedTarget]:
    """MixUp: lam * x[i] + (1 - lam) * x[partner(i)]; returns (x_mixed, MixedTarget).

    lambda ~ Beta(alpha, alpha) per batch or per sample, drawn on x's device. uint8 rounds
    half up. In-place MixUp is not exact (every pixel depends on a partner that may already
    be overwritten), so inplace=True raises ValueError.
    """
    _check_image(x)
    _check_target(x, target)
    alpha = _check_alpha(alpha)
    _check_partner(partner)
    if inplace:
        raise ValueError("inplace=True is exact only for CutMix with a per-batch box and the flip partner; "
                         "MixUp rewrites every pixel from its partner")
    backend = _backend.resolve("mixing", x.device, backend)
    mean, std, table, out_dtype = _normalization(x, mean, std, out_dtype, backend)
    n, _, height, width = x.shape
    lam, box, mode = _sample_mixing(draw_seed(x.device, generator), n if per_sample else 1, height, width,
                                    cutmix_alpha=0.0, mixup_alpha=alpha, switch_prob=0.0, prob=1.0,
                                    correct_lam=False, backend=backend)
    out, y_b = _mix(x, target, lam, box, mode, partner, mean, std, table, out_dtype, False, backend)
    return out, MixedTarget.of_checked(target, y_b, lam if per_sample else lam.reshape(()))


def cutmix_or_mixup(x: torch.Tensor, target: torch.Tensor, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                    prob: float = 1.0, switch_prob: float = 0.5, per_sample: bool = True, correct_lam: bool = True,
                    partner: str = "flip", mean: Optional[PerChannel] = None, std: Optional[PerChannel] = None,
                    out_dtype: Optional[torch.dtype] = None, generator: Optional[torch.Generator] = None,
                    backend: Optional[str] = None) -> Tuple[torch.Tensor, MixedTarget]:
    """timm's Mixup as one kernel launch: each sample (or the batch) picks CutMix or MixUp.

    With probability prob a sample is mixed; then CutMix with probability switch_prob
    (lambda ~ Beta(cutmix_alpha)) else MixUp (lambda ~ Beta(mixup_alpha)). An alpha of 0
    disables that method. Unmixed samples keep their pixels and get lam = 1. With prob = 0
    nothing is drawn: no generator is touched (nn.CutMixUp in eval mode).
    """
    _check_image(x)
    _check_target(x, target)
    mixup_alpha = _check_alpha(mixup_alpha, "mixup_alpha", allow_zero=True)
    cutmix_alpha = _check_alpha(cutmix_alpha, "cutmix_alpha", allow_zero=True)
    if mixup_alpha == 0.0 and cutmix_alpha == 0.0:
        raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing to mix")
    prob = _checks.probability(prob, "prob")
    switch_prob = _checks.probability(switch_prob, "switch_prob")
    if mixup_alpha == 0.0:
        switch_prob = 1.0
    elif cutmix_alpha == 0.0:
        switch_prob = 0.0
    _check_partner(partner)
    backend = _backend.resolve("mixing", x.device, backend)
    mean, std, table, out_dtype = _normalization(x, mean, std, out_dtype, backend)
    n, _, height, width = x.shape
    draws = n if per_sample else 1
    if prob == 0.0:  # nothing to mix: draw nothing, so the generator's stream moves on only in training
        lam = torch.ones(draws, dtype=torch.float32, device=x.device)
        box = torch.zeros((draws, 4), dtype=torch.int32, device=x.device)
        mode = torch.full((draws,), int(MixMode.KEEP), dtype=torch.int32, device=x.device)
    else:
        lam, box, mode = _sample_mixing(draw_seed(x.device, generator), draws, height, width,
                                        cutmix_alpha=cutmix_alpha, mixup_alpha=mixup_alpha,
                                        switch_prob=switch_prob, prob=prob, correct_lam=correct_lam, backend=backend)
    out, y_b = _mix(x, target, lam, box, mode, partner, mean, std, table, out_dtype, False, backend)
    return out, MixedTarget.of_checked(target, y_b, lam if per_sample else lam.reshape(()))


def random_erasing(x: torch.Tensor, *, p: float = 0.5, scale: Tuple[float, float] = (0.02, 0.33),
                   ratio: Tuple[float, float] = (0.3, 3.3), value: Union[PerChannel, str] = 0.0,
                   generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Random erasing (cutout) per sample: with probability p a random box is overwritten.

    Box as torchvision's RandomErasing (area fraction ~ U(scale), log aspect ~ U(log ratio),
    up to 10 attempts to fit; a candidate of height or width 0 fits and erases nothing). value: a number, one number per channel, or "random" for
    per-pixel standard normal noise from Philox (floating x only); for uint8 x it rounds half
    up and saturates to [0, 255] (NaN raises). Returns a new tensor.
    """
    _check_image(x)
    p = _checks.probability(p, "p")
    scale = _check_range("scale", scale, upper=1.0)
    ratio = _check_range("ratio", ratio)
    n, channels, height, width = x.shape
    random_fill = isinstance(value, str)
    if random_fill and value != "random":
        raise ValueError(f"value must be a number, a per-channel sequence or 'random', got {value!r}")
    if random_fill and x.dtype == torch.uint8:
        raise ValueError("value='random' (normal noise) needs a floating x, not uint8")
    math_dtype = _math_dtype(x.dtype)
    fill = torch.zeros(channels, dtype=math_dtype, device=x.device) if random_fill else \
        _per_channel("value", value, channels, x.device, allow_nan=x.dtype != torch.uint8, dtype=math_dtype)
    backend = _backend.resolve("mixing", x.device, backend)
    box, mode, noise_key = _erasing_boxes(draw_seed(x.device, generator), n, height, width, p, scale, ratio, backend)
    seed = noise_key if random_fill else None
    lam = torch.ones(n, dtype=math_dtype, device=x.device)
    partner = torch.arange(n, dtype=torch.int32, device=x.device)
    return composite_batch_op(x, box, lam, partner, mode, fill, None, None, None, seed, x.dtype, False, backend)
