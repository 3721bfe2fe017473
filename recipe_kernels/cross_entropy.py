"""Label-smoothed cross-entropy over class indices, class probabilities or MixedTarget, in one pass.

Top to bottom: Triton kernels, launchers (Triton and CUDA), torch.library registration
with autograd, public functions. Semantics are torch's F.cross_entropy (weights,
ignore_index, label smoothing, the `mean` denominator); reference.cross_entropy_rows
spells them out.

How the gradient reaches autograd. When the logits need a gradient, the forward kernel
writes d(loss)/d(logits) for grad_output = 1 in the same pass that computes the loss
(the `mean` denominator, computed on the device from the targets beforehand, is already
folded in). Backward multiplies that buffer in place by grad_output; where grad_output
is exactly 1 (loss.backward() on a scalar loss, the usual case) the scaling kernel's
loads and stores are masked off, so it moves no bytes. No host sync anywhere.
float16 and float64 (GRADIENT_IN_BACKWARD_DTYPES) instead compute the loss alone and let
backward run the same kernel with grad_output folded in: one rounding under loss scaling,
and a backward that can run twice. A probability target's gradient, -(1 - e) w_c log p_c,
is written in backward by the same kernel (OF_TARGET). A backward that builds a graph
(create_graph=True) recomputes everything from the held inputs in differentiable torch ops.

Per row r with logits x (C classes), m = max_c x_c, the shifted logits s_c = x_c - m,
L = log sum_c exp(s_c) (so lse = m + L), class weights w (ones by default), e = label_smoothing
and q the probability target (zero for index targets):
  loss_r = a_a (L - s[y_a]) + a_b (L - s[y_b]) + beta (W L - sum_c w_c s_c)
           + (1 - e)(sum_c w_c q_c L - sum_c w_c q_c s_c)
  grad_c = p_c K - a_a [c == y_a] - a_b [c == y_b] - beta w_c - (1 - e) w_c q_c
with p_c = exp(s_c - L), W = sum_c w_c, K = a_a + a_b + beta W + (1 - e) sum_c w_c q_c and
  index target y: a_a = (1 - e) w_y, a_b = 0, beta = e / C (all zero where y == ignore_index);
  MixedTarget:    a_a = lam (1 - e) w[y_a], a_b = (1 - lam)(1 - e) w[y_b], beta = e / C;
  probabilities:  a_a = a_b = 0, beta = e / C.
Everything is computed in the shifted domain: s_c is exact for logits within a factor of two of
the max, so a loss never carries the rounding error of lse at the scale of the largest logit
(softmax is shift-invariant; at logits of 1e4 the unshifted form lost three digits). The sums
over s_c are kept relative to the running max while the row is swept, and moved onto a new max
by adding (old max - new max) times the summed weight so far.
A class index outside [0, C) (other than ignore_index) is never used as an address: it
turns a_a into NaN, so that row's loss and gradient are NaN.
"""
import functools
import struct
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from recipe_kernels import _backend, _checks, reference
from recipe_kernels._codes import TargetKind
from recipe_kernels._ops import Op, apply_function, launch
from recipe_kernels._triton_common import bf16_to_fp32, cdiv, round_to
from recipe_kernels.targets import MixedTarget

# Target kinds: TARGET_KIND of the kernels (compared with these constexprs), `kind` of the CUDA launcher.
INDEX, MIXED, PROBABILITIES = TargetKind.INDEX, TargetKind.MIXED, TargetKind.PROBABILITY
INDEX_TARGET = tl.constexpr(int(TargetKind.INDEX))
PROBABILITY_TARGET = tl.constexpr(int(TargetKind.PROBABILITY))
# Consecutive classes each lane folds at once (16 bytes of bf16): one running max per lane group.
LANE_GROUP = tl.constexpr(8)
LOG2E = tl.constexpr(1.4426950408889634)  # exp(v) = exp2(v log2(e)): one FMUL and one MUFU.EX2
# GRAD_OUTPUT of the kernels: what multiplies the gradient besides the mean's 1 / denominator.
NO_GRAD_OUTPUT, SCALAR_GRAD_OUTPUT, PER_ROW_GRAD_OUTPUT = (tl.constexpr(code) for code in range(3))
REDUCTIONS = ("none", "mean", "sum")
# Classes per Triton block of a short row (up to this many: one block of up to 4 warps).
# 1024 classes over 4 warps: 8 per thread (16-byte loads in bf16), 72 registers for the
# heaviest variant on sm_90 (ptxas, no spills), so several programs share an SM; 4096 per
# program took 244 registers.
MAX_BLOCK = 1024
# A row of up to this many classes is one block held in registers (this many per thread) by one program
# (_cross_entropy_fwd_kernel): sweep 2 reads nothing again, so DRAM sees one read and one write.
ROW_IN_REGISTERS = 32768
ROW_ELEMENTS_PER_THREAD = 64
# Longer rows, and rows of at least two chunks too few for SPLIT_PROGRAMS_PER_SM programs per SM, go to
# _cross_entropy_split_kernel in chunks of SPLIT_BLOCK classes on SPLIT_WARPS warps: 128 classes per thread
# amortise each item's fixed work (the queue, the reductions, the partials) and one warp reduces without
# barriers. ptxas: at most 213 registers over every dtype and target kind, no spills (4 warps at 16384
# classes spilled).
SPLIT_BLOCK = 4096
SPLIT_WARPS = 1
SPLIT_PROGRAMS_PER_SM = 4
# Threads of the split kernel's persistent grid per SM: at up to 255 registers each, 256 threads fill the
# register file.
SPLIT_THREADS_PER_SM = 256
# Threads an SM holds at most (sm_80, sm_90): bounds the persistent grid of rows held in registers.
RESIDENT_THREADS_PER_SM = 2048
# Sweep 2 of a split row reads its chunks again: from L2 while what the GPU reads between the two sweeps
# (the rows of split_lag, plus the chunks in flight) fits in this share of L2.
L2_RESIDENT_FRACTION = 2 / 3
DEFAULT_L2_BYTES = 50 << 20  # H100 and H200; devices that say otherwise are asked (_l2_bytes)
# Fields per (row, split) of the split kernel's workspace: six partial statistics of the chunk (max,
# sum exp(x - max), sum w (x - max), sum w, sum w q, sum w q (x - max)); over split 0's, once merged, the
# eight values sweep 2 of the row needs (_merge_row).
PARTIAL_FIELDS = tl.constexpr(8)
# Items of the split kernel's queue a program takes with one atomic: the queue's one counter sees a fraction
# of the items, and a program waits for its next grab once per that many items.
ITEMS_PER_GRAB = tl.constexpr(4)
SCALE_BLOCK = 2048
SCALE_PROGRAMS_PER_SM = 4  # the backward scaling's grid-stride programs (CUDA: blocks) per SM
SCALE_MIN_BLOCKS = 8
# The `mean` denominator of index targets (_index_denominator_kernel): rows per block, and rows per
# program before a second program is added, up to MAX_DENOMINATOR_PARTIALS programs (partial sums
# that every main program adds up again, so few).
DENOMINATOR_BLOCK = 1024
DENOMINATOR_ROWS = 16384
MAX_DENOMINATOR_PARTIALS = 64
# float16 ends its normal range at 6.1e-5: a gradient stored in fp16 with the mean's 1/denominator
# folded in, then multiplied by a loss scale (2^10 .. 2^16), has lost the bits of its small entries
# (relative errors of 0.3 against float64). In fp16 the forward therefore computes the loss alone and
# backward writes the gradient, grad_output and 1/denominator folded in, rounded once. bf16 has fp32's
# range and keeps the single pass. float64 does the same as fp16 so that backward can run again
# through the same graph (gradcheck does): there is no buffer scaled in place.
GRADIENT_IN_BACKWARD_DTYPES = (torch.float16, torch.float64)
# The dtypes of logits and probability targets. float64 computes in fp64 (Triton, torch backend);
# the CUDA kernels take the other three.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _row_position(row, num_classes, inner_size):
    """(sample, row_offset) of row r (int64): position r % inner_size of sample r // inner_size, whose
    classes start at row_offset, inner_size apart."""
    sample = row // inner_size
    return sample, sample * num_classes * inner_size + row % inner_size


@triton.jit
def _target_class(target_ptr, row, weight_ptr, num_classes, HAS_WEIGHT: tl.constexpr):
    """(y, in_range, w) of a row's class index y: whether it lies in [0, C), and its class weight (1 without
    weights; masked off the load, so 0, out of range)."""
    y = tl.load(target_ptr + row)
    in_range = (y >= 0) & (y < num_classes)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + y, mask=in_range, other=0.0)
    else:
        w = 1.0
    return y, in_range, w


@triton.jit
def _row_coefficients(target_ptr, target_b_ptr, lam_ptr, weight_ptr, row, sample, num_classes,
                      ignore_index, label_smoothing,
                      TARGET_KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """(a_a, a_b, beta, y_a, y_b, active) of one row in ACC; see the module docstring.

    An index outside [0, C) is masked off the weight load and makes a_a NaN. y_a and y_b
    come back as -1 where they must never match a class (probabilities, ignored rows).
    """
    one_minus_eps = 1.0 - label_smoothing
    beta = tl.zeros([], ACC) + label_smoothing / num_classes
    no_class = tl.full([], -1, tl.int64)
    a_a = tl.zeros([], ACC)
    a_b = tl.zeros([], ACC)
    y_a = no_class
    y_b = no_class
    active = no_class == -1
    if TARGET_KIND != PROBABILITY_TARGET:  # probabilities have no per-row class
        y_a, in_range_a, w_a = _target_class(target_ptr, row, weight_ptr, num_classes, HAS_WEIGHT)
        if TARGET_KIND == INDEX_TARGET:
            active = y_a != ignore_index
            a_a = tl.where(active, tl.where(in_range_a, one_minus_eps * w_a, float("nan")), 0.0)
            beta = tl.where(active, beta, 0.0)
            y_a = tl.where(active, y_a, no_class)
        else:  # MixedTarget
            y_b, in_range_b, w_b = _target_class(target_b_ptr, row, weight_ptr, num_classes, HAS_WEIGHT)
            lam = tl.load(lam_ptr + sample)
            a_a = tl.where(in_range_a & in_range_b, lam * one_minus_eps * w_a, float("nan"))
            a_b = (1.0 - lam) * one_minus_eps * w_b
    return a_a, a_b, beta, y_a, y_b, active


@triton.jit
def _target_logits(x_ptr, row_offset, class_stride, num_classes, y_a, y_b, ACC: tl.constexpr):
    """(x[y_a], x[y_b]) of a row in ACC, 0 where there is no such class."""
    x_a = tl.load(x_ptr + row_offset + y_a * class_stride, mask=(y_a >= 0) & (y_a < num_classes), other=0.0).to(ACC)
    x_b = tl.load(x_ptr + row_offset + y_b * class_stride, mask=(y_b >= 0) & (y_b < num_classes), other=0.0).to(ACC)
    return x_a, x_b


@triton.jit
def _widen(x, ACC: tl.constexpr):
    """Logits x in ACC: bf16 to fp32 at one instruction per element (bf16_to_fp32)."""
    if x.dtype == tl.bfloat16 and ACC == tl.float32:
        return bf16_to_fp32(x)
    return x.to(ACC)


@triton.jit
def _rebase(sum_shifted, old_max, new_shift, sum_weights):
    """A sum of w (x - old_max) moved onto new_shift: + (old_max - new_shift) * sum of w. Nothing
    was seen (old_max = -inf, an empty sum) or only -inf (the sum is -inf already): unchanged."""
    return sum_shifted + tl.where(old_max == -float("inf"), 0.0, old_max - new_shift) * sum_weights


@triton.jit
def _block_classes(block, class_stride, BLOCK: tl.constexpr, UNIT_STRIDE: tl.constexpr):
    """(classes relative to the chunk's start, their offsets from its first class) of one block, as
    [BLOCK // LANE_GROUP, LANE_GROUP]: a lane's LANE_GROUP consecutive classes (one 16-byte load in bf16).
    In int32 for unit class strides (the chunk then has < 2^31 classes): half the registers of int64,
    which lets a whole row stay in registers."""
    LANES: tl.constexpr = BLOCK // LANE_GROUP
    classes = block * BLOCK + tl.arange(0, LANES)[:, None] * LANE_GROUP + tl.arange(0, LANE_GROUP)[None, :]
    if UNIT_STRIDE:
        offsets = classes
    else:
        offsets = classes.to(tl.int64) * class_stride
    return classes, offsets


@triton.jit
def _block_mask(classes, block, n, BLOCK: tl.constexpr, LANE_ALIGNED: tl.constexpr):
    """(in_chunk, lane_in_chunk): which classes of a block lie in the chunk's n, and which lanes. With
    LANE_ALIGNED (n a multiple of LANE_GROUP) a lane is all in or all out: one predicate per lane
    ([LANES, 1], broadcast), not a compare per element."""
    lane_in_chunk = block * BLOCK + tl.arange(0, BLOCK // LANE_GROUP) * LANE_GROUP < n
    if LANE_ALIGNED:
        in_chunk = lane_in_chunk[:, None]
    else:
        in_chunk = classes < n
    return in_chunk, lane_in_chunk


@triton.jit
def _lane_sum(values, lane_in_chunk, LANE_MASKED: tl.constexpr):
    """Sum over each lane's classes; 0 for lanes outside the chunk when LANE_MASKED (their values may be
    -inf or NaN: x = -inf there)."""
    total = tl.sum(values, 1)
    if LANE_MASKED:
        total = tl.where(lane_in_chunk, total, 0.0)
    return total


@triton.jit
def _class_terms(q_ptr, weight_ptr, first, start, classes, offsets, in_chunk, MASKED: tl.constexpr,
                 POLICY: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                 HAS_SMOOTHING: tl.constexpr, ACC: tl.constexpr):
    """(w, q) of one block: the class weights (1.0 without weights) and the probability target (0.0 unless
    IS_PROB), in ACC; masked to the chunk (0 outside) when MASKED."""
    w = 1.0
    q = 0.0
    if HAS_WEIGHT and (HAS_SMOOTHING or IS_PROB):
        if MASKED:
            w = tl.load(weight_ptr + start + classes, mask=in_chunk, other=0.0)
        else:
            w = tl.load(weight_ptr + start + classes)
    if IS_PROB:
        if MASKED:
            q = tl.load(q_ptr + first + offsets, mask=in_chunk, other=0.0, eviction_policy=POLICY).to(ACC)
        else:
            q = tl.load(q_ptr + first + offsets, eviction_policy=POLICY).to(ACC)
    return w, q


@triton.jit
def _lane_shift(lane_max):
    """The max of lanes, 0 for a lane of -inf only (nothing to shift by)."""
    return tl.where(lane_max == -float("inf"), 0.0, lane_max)


@triton.jit
def _fold_block(x, w, q, count, lane_max, lane_exp, lane_t, lane_w, lane_wq, lane_wqt, in_chunk, lane_in_chunk,
                MASKED: tl.constexpr, LANE_ALIGNED: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                HAS_SMOOTHING: tl.constexpr):
    """Folds one block of logits x ([LANES, LANE_GROUP] in ACC, -inf outside the chunk) into each lane's
    running statistics (online softmax: one rescale per lane and block, one FMA and one exp per element).

    Per element t = (x - max) log2(e): the subtraction is exact near the max, so no rounding at the scale
    of the logits enters (a product x log2(e) would carry one of up to half its ulp, which overflows
    exp2 for logits past 1e9). Each lane keeps its max, sum 2^t, sum w t, sum w (`count`, the lane's
    classes in the chunk, without weights), sum w q and sum w q t, all relative to its current max:
    rebased by (max_old - max_new) log2(e) when the max rises. No lane talks to another. Also returns
    t and 2^t ([LANES, LANE_GROUP]) and the lanes' shift.
    """
    new_max = tl.maximum(lane_max, tl.max(x, 1))
    shift = _lane_shift(new_max)
    t = (x - shift[:, None]) * LOG2E
    # A lane of -inf only so far has nothing to move (and exp2 of its rise could overflow to inf * 0).
    unseen = lane_max == -float("inf")
    rise = tl.where(unseen, 0.0, (lane_max - shift) * LOG2E)
    exp_t = tl.math.exp2(t)
    lane_exp = lane_exp * tl.math.exp2(tl.where(unseen, -float("inf"), rise)) + tl.sum(exp_t, 1)
    if HAS_SMOOTHING or IS_PROB:
        block_t, block_w, block_wq, block_wqt = _weighted_lane_sums(t, w, q, in_chunk, lane_in_chunk, MASKED,
                                                                    LANE_ALIGNED, IS_PROB, HAS_WEIGHT,
                                                                    HAS_SMOOTHING)
        if HAS_SMOOTHING:
            lane_t = tl.fma(lane_w, rise, lane_t) + block_t
            if HAS_WEIGHT:
                lane_w += block_w
            else:
                lane_w += count
        if IS_PROB:
            lane_wqt = tl.fma(lane_wq, rise, lane_wqt) + block_wqt
            lane_wq += block_wq
    return new_max, lane_exp, lane_t, lane_w, lane_wq, lane_wqt, t, exp_t, shift


@triton.jit
def _weighted_lane_sums(t, w, q, in_chunk, lane_in_chunk, MASKED: tl.constexpr, LANE_ALIGNED: tl.constexpr,
                        IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr):
    """Per lane of one block: (sum w t, sum w, sum w q, sum w q t) over the classes in the chunk (t is -inf
    outside it); only what HAS_SMOOTHING and IS_PROB ask for (zeros otherwise)."""
    counted = t
    if MASKED and not LANE_ALIGNED:
        counted = tl.where(in_chunk, t, 0.0)
    LANE_MASKED: tl.constexpr = MASKED and LANE_ALIGNED
    sum_t = tl.zeros(lane_in_chunk.shape, t.dtype)
    sum_w = tl.zeros(lane_in_chunk.shape, t.dtype)
    sum_wq = tl.zeros(lane_in_chunk.shape, t.dtype)
    sum_wqt = tl.zeros(lane_in_chunk.shape, t.dtype)
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            sum_t = _lane_sum(w * counted, lane_in_chunk, LANE_MASKED)
            sum_w = tl.sum(w, 1)
        else:
            sum_t = _lane_sum(counted, lane_in_chunk, LANE_MASKED)
    if IS_PROB:
        wq = w * q
        sum_wqt = _lane_sum(wq * counted, lane_in_chunk, LANE_MASKED)
        sum_wq = tl.sum(wq, 1)
    return sum_t, sum_w, sum_wq, sum_wqt


@triton.jit
def _chunk_statistics(x_ptr, q_ptr, weight_ptr, first, class_stride, start, n,
                      BLOCK: tl.constexpr, BLOCKS: tl.constexpr, MASKED: tl.constexpr,
                      LANE_ALIGNED: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                      HAS_SMOOTHING: tl.constexpr, UNIT_STRIDE: tl.constexpr, HOLD_LOG2: tl.constexpr,
                      LAST_POLICY: tl.constexpr, ACC: tl.constexpr):
    """Sweep 1 over the n classes of a chunk (its first class at offset `first`, class `start` of the row):
    (max m, sum exp(x - m), sum w (x - m), sum w, sum w q, sum w q (x - m), held, held_offset).

    A chunk of one block takes its max first, then sums against it. A longer one: each lane keeps its
    own running statistics (_fold_block) and the lanes are merged once at the end: one block reduction
    per chunk. Blocks 0 .. BLOCKS - 2 are read with evict_last (sweep 2 reads them again, newest first:
    L2 should keep them); every block is masked to the chunk when MASKED (n may end inside one). The last
    block stays in registers as `held` for sweep 2 to use without reading or converting it again (the
    fwd kernel's rows of one block): t with log2(exp(x - m)) = t + held_offset
    (per lane) when HOLD_LOG2, else 2^t, with exp(x - m) = 2^t 2^held_offset (held_offset -inf for a
    lane of -inf only). LAST_POLICY is the last block's eviction policy: "evict_last" where sweep 2
    reads it again instead.
    """
    LANES: tl.constexpr = BLOCK // LANE_GROUP
    lane_first = tl.arange(0, LANES) * LANE_GROUP
    if BLOCKS == 1:
        # The chunk is one block: its max first (one block reduction), then every t against it; no lane
        # keeps a running max, nothing is rescaled.
        classes, offsets = _block_classes(0, class_stride, BLOCK, UNIT_STRIDE)
        in_chunk, lane_in_chunk = _block_mask(classes, 0, n, BLOCK, LANE_ALIGNED)
        if MASKED:
            x_loaded = tl.load(x_ptr + first + offsets, mask=in_chunk, other=-float("inf"),
                               eviction_policy=LAST_POLICY)
        else:
            x_loaded = tl.load(x_ptr + first + offsets, eviction_policy=LAST_POLICY)
        x = _widen(x_loaded, ACC)
        w, q = _class_terms(q_ptr, weight_ptr, first, start, classes, offsets, in_chunk, MASKED, "evict_last",
                            IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, ACC)
        # The max in the loaded dtype is exact: bf16 pairs take one packed max for two classes.
        row_max = tl.max(tl.max(x_loaded, 1), 0).to(ACC)
        shift = _lane_shift(row_max)
        t_held = (x - shift) * LOG2E
        exp_held = tl.math.exp2(t_held)
        sum_exp = tl.sum(tl.sum(exp_held, 1), 0)
        lane_t, lane_w, lane_wq, lane_wqt = _weighted_lane_sums(t_held, w, q, in_chunk, lane_in_chunk, MASKED,
                                                                LANE_ALIGNED, IS_PROB, HAS_WEIGHT, HAS_SMOOTHING)
        sum_t = tl.sum(lane_t, 0)
        sum_wqt = tl.sum(lane_wqt, 0)
        held_offset = tl.zeros([LANES], ACC)
    else:
        lane_max = tl.full([LANES], -float("inf"), ACC)
        lane_exp = tl.zeros([LANES], ACC)
        lane_t = tl.zeros([LANES], ACC)
        lane_w = tl.zeros([LANES], ACC)
        lane_wq = tl.zeros([LANES], ACC)
        lane_wqt = tl.zeros([LANES], ACC)
        # A constexpr trip count: the classes of one chunk are fixed per C (one compile per vocabulary).
        for block in range(BLOCKS - 1):
            classes, offsets = _block_classes(block, class_stride, BLOCK, UNIT_STRIDE)
            in_chunk, lane_in_chunk = _block_mask(classes, block, n, BLOCK, LANE_ALIGNED)
            if MASKED:
                x = _widen(tl.load(x_ptr + first + offsets, mask=in_chunk, other=-float("inf"),
                                   eviction_policy="evict_last"), ACC)
                count = tl.minimum(tl.maximum(n - block * BLOCK - lane_first, 0), LANE_GROUP).to(ACC)
            else:
                x = _widen(tl.load(x_ptr + first + offsets, eviction_policy="evict_last"), ACC)
                count = 1.0 * LANE_GROUP
            w, q = _class_terms(q_ptr, weight_ptr, first, start, classes, offsets, in_chunk, MASKED,
                                "evict_last", IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, ACC)
            lane_max, lane_exp, lane_t, lane_w, lane_wq, lane_wqt, _, _, _ = _fold_block(
                x, w, q, count, lane_max, lane_exp, lane_t, lane_w, lane_wq, lane_wqt, in_chunk, lane_in_chunk,
                MASKED, LANE_ALIGNED, IS_PROB, HAS_WEIGHT, HAS_SMOOTHING)
        classes, offsets = _block_classes(BLOCKS - 1, class_stride, BLOCK, UNIT_STRIDE)
        in_chunk, lane_in_chunk = _block_mask(classes, BLOCKS - 1, n, BLOCK, LANE_ALIGNED)
        if MASKED:
            x = _widen(tl.load(x_ptr + first + offsets, mask=in_chunk, other=-float("inf"),
                               eviction_policy=LAST_POLICY), ACC)
            count = tl.minimum(tl.maximum(n - (BLOCKS - 1) * BLOCK - lane_first, 0), LANE_GROUP).to(ACC)
        else:
            x = _widen(tl.load(x_ptr + first + offsets, eviction_policy=LAST_POLICY), ACC)
            count = 1.0 * LANE_GROUP
        w, q = _class_terms(q_ptr, weight_ptr, first, start, classes, offsets, in_chunk, MASKED, "evict_last",
                            IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, ACC)
        lane_max, lane_exp, lane_t, lane_w, lane_wq, lane_wqt, t_held, exp_held, _ = _fold_block(
            x, w, q, count, lane_max, lane_exp, lane_t, lane_w, lane_wq, lane_wqt, in_chunk, lane_in_chunk, MASKED,
            LANE_ALIGNED, IS_PROB, HAS_WEIGHT, HAS_SMOOTHING)
        # The one merge: every lane's sums moved onto the chunk's max.
        row_max = tl.max(lane_max, 0)
        shift = _lane_shift(row_max)
        unseen = lane_max == -float("inf")
        lane_rise = tl.where(unseen, 0.0, (lane_max - shift) * LOG2E)
        held_offset = tl.where(unseen, -float("inf"), lane_rise)  # a lane of -inf only holds 2^t = 0
        sum_exp = tl.sum(lane_exp * tl.math.exp2(held_offset), 0)
        sum_t = tl.sum(tl.fma(lane_w, lane_rise, lane_t), 0)
        sum_wqt = tl.sum(tl.fma(lane_wq, lane_rise, lane_wqt), 0)
    sum_s = tl.zeros([], ACC)
    sum_w = tl.zeros([], ACC)
    sum_wq = tl.zeros([], ACC)
    sum_wqs = tl.zeros([], ACC)
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            sum_w = tl.sum(lane_w, 0)
        else:
            sum_w = tl.cast(n, ACC)  # the lanes count the chunk's classes (n may be a constant 1: tl.cast)
        sum_s = sum_t / LOG2E
    if IS_PROB:
        sum_wq = tl.sum(lane_wq, 0)
        sum_wqs = sum_wqt / LOG2E
    if HOLD_LOG2:
        return row_max, sum_exp, sum_s, sum_w, sum_wq, sum_wqs, t_held, held_offset
    return row_max, sum_exp, sum_s, sum_w, sum_wq, sum_wqs, exp_held, held_offset


@triton.jit
def _row_loss_and_factor(log_sum, sum_wx, sum_w, sum_wq, sum_wqx, x_a, x_b, row_max, a_a, a_b, beta, active,
                         label_smoothing, z_loss, IS_PROB: tl.constexpr, HAS_Z_LOSS: tl.constexpr):
    """The row's loss and K, the factor of p_c in its gradient (module docstring), from the
    shifted statistics: log_sum = L, sum_wx = sum w (x - m), sum_wqx = sum w q (x - m).
    HAS_Z_LOSS adds z_loss lse^2 to the loss and 2 z_loss lse to K (lse = m + L)."""
    loss = a_a * (log_sum - (x_a - row_max)) + a_b * (log_sum - (x_b - row_max)) + beta * (sum_w * log_sum - sum_wx)
    factor = a_a + a_b + beta * sum_w
    if IS_PROB:
        one_minus_eps = 1.0 - label_smoothing
        loss += one_minus_eps * (sum_wq * log_sum - sum_wqx)
        factor += one_minus_eps * sum_wq
    if HAS_Z_LOSS:
        lse = row_max + log_sum
        loss += z_loss * lse * lse
        factor += 2.0 * z_loss * lse
    return tl.where(active, loss, 0.0), factor


@triton.jit
def _gradient_values(log2_p, w, q, k, b, c, OF_TARGET: tl.constexpr, IS_PROB: tl.constexpr,
                     HAS_SMOOTHING: tl.constexpr):
    """The gradient at log2 p (ACC) without the target classes' terms: p k - b w - c w q, with
    k = K grad_scale, b = beta grad_scale, c = (1 - e) grad_scale. With OF_TARGET the probability
    target's: -c w log p."""
    if OF_TARGET:
        return -c * w * (log2_p / LOG2E)
    return _gradient_of_probability(tl.math.exp2(log2_p), w, q, k, b, c, IS_PROB, HAS_SMOOTHING)


@triton.jit
def _gradient_of_probability(p, w, q, k, b, c, IS_PROB: tl.constexpr, HAS_SMOOTHING: tl.constexpr):
    """_gradient_values from p itself: p k - b w - c w q."""
    # Explicit FMAs: launch() compiles without contraction.
    if HAS_SMOOTHING:
        grad = tl.fma(p, k, -b * w)
    else:
        grad = p * k
    if IS_PROB:
        grad -= c * w * q
    return grad


@triton.jit
def _log2_probability(x, shift, log_sum):
    """log2 p of logits x (ACC): x - shift is exact near the max, as in sweep 1."""
    return tl.fma(x - shift, tl.full([], LOG2E, x.dtype), -log_sum * LOG2E)  # log2(e) in x's precision


@triton.jit
def _store_gradient(pointers, grad, in_chunk, MASKED: tl.constexpr):
    """One block of the gradient, rounded once to its dtype, marked evict_first (never read again here);
    masked to the chunk when MASKED."""
    if MASKED:
        tl.store(pointers, round_to(grad, pointers.dtype.element_ty), mask=in_chunk, eviction_policy="evict_first")
    else:
        tl.store(pointers, round_to(grad, pointers.dtype.element_ty), eviction_policy="evict_first")


@triton.jit
def _write_chunk_gradient(x_ptr, q_ptr, weight_ptr, grad_ptr, first, class_stride, start, n, held, held_offset,
                          shift, log_sum, k, b, c, ZEROS: tl.constexpr, BLOCK: tl.constexpr, BLOCKS: tl.constexpr,
                          HELD: tl.constexpr, MASKED: tl.constexpr, LANE_ALIGNED: tl.constexpr,
                          IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                          OF_TARGET: tl.constexpr, UNIT_STRIDE: tl.constexpr, ACC: tl.constexpr):
    """Sweep 2 over the n classes of a chunk: _gradient_values rounded once (ZEROS: zeros, read nothing).
    Newest first: the last block from `held` (HELD: sweep 1 left it in registers, _chunk_statistics
    says how), then the others in the reverse order of sweep 1, so that
    the most recently read, the likeliest still in L2, come first. They are read and written with
    evict_first: nothing here is read again."""
    if HELD:
        classes, offsets = _block_classes(BLOCKS - 1, class_stride, BLOCK, UNIT_STRIDE)
        in_chunk, _ = _block_mask(classes, BLOCKS - 1, n, BLOCK, LANE_ALIGNED)
        if ZEROS:
            grad = tl.zeros(classes.shape, ACC)
        else:
            w, q = _class_terms(q_ptr, weight_ptr, first, start, classes, offsets, in_chunk, MASKED, "evict_first",
                                IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, ACC)
            lane_offset = held_offset - log_sum * LOG2E
            if OF_TARGET:  # held is t
                grad = _gradient_values(held + lane_offset[:, None], w, q, k, b, c, OF_TARGET, IS_PROB,
                                        HAS_SMOOTHING)
            else:  # held is 2^t: p = 2^t times the lane's 2^(held_offset - log2 of the sum), one FMA each
                lane_k = tl.broadcast_to((tl.math.exp2(lane_offset) * k)[:, None], held.shape)
                grad = _gradient_of_probability(held, w, q, lane_k, b, c, IS_PROB, HAS_SMOOTHING)
        _store_gradient(grad_ptr + first + offsets, grad, in_chunk, MASKED)
    LOOPED: tl.constexpr = BLOCKS - 1 if HELD else BLOCKS
    for newest in range(LOOPED):
        block = LOOPED - 1 - newest
        classes, offsets = _block_classes(block, class_stride, BLOCK, UNIT_STRIDE)
        in_chunk, _ = _block_mask(classes, block, n, BLOCK, LANE_ALIGNED)
        if ZEROS:
            grad = tl.zeros(classes.shape, ACC)
        else:
            if MASKED:
                x = tl.load(x_ptr + first + offsets, mask=in_chunk, other=0.0, eviction_policy="evict_first")
            else:
                x = tl.load(x_ptr + first + offsets, eviction_policy="evict_first")
            w, q = _class_terms(q_ptr, weight_ptr, first, start, classes, offsets, in_chunk, MASKED,
                                "evict_first", IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, ACC)
            grad = _gradient_values(_log2_probability(_widen(x, ACC), shift, log_sum), w, q, k, b, c, OF_TARGET,
                                    IS_PROB, HAS_SMOOTHING)
        _store_gradient(grad_ptr + first + offsets, grad, in_chunk, MASKED)


@triton.jit
def _target_class_gradient(weight_ptr, num_classes, y, x_y, a_y, y_other, a_other, shift, log_sum, k, b, c,
                           HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr):
    """The gradient of target class y with its target term: _gradient_values minus a_y, and minus a_other
    too when the other target is the same class."""
    if HAS_WEIGHT and HAS_SMOOTHING:
        w = tl.load(weight_ptr + y, mask=(y >= 0) & (y < num_classes), other=0.0)
    else:
        w = 1.0
    grad = _gradient_values(_log2_probability(x_y, shift, log_sum), w, 0.0, k, b, c, False, False, HAS_SMOOTHING)
    return grad - (tl.where(y_other == y, a_other, 0.0) + a_y)


@triton.jit
def _gradient_parameters(mean_scale, grad_output_ptr, weight_ptr, row, num_classes, row_max, log_sum, factor,
                         a_a, a_b, y_a, y_b, x_a, x_b, beta, label_smoothing, TARGET_KIND: tl.constexpr,
                         GRAD_OUTPUT: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                         ACC: tl.constexpr):
    """What sweep 2 of a row needs: (shift, k, b, c, grad_a, grad_b) with k = K grad_scale,
    b = beta grad_scale, c = (1 - e) grad_scale, and the gradients of the target classes y_a and y_b
    (MixedTarget), written once each after the sweep (_write_row_gradient)."""
    grad_scale = _row_grad_scale(mean_scale, grad_output_ptr, row, GRAD_OUTPUT, ACC)
    shift = tl.where(row_max == -float("inf"), 0.0, row_max)
    k = factor * grad_scale
    b = beta * grad_scale
    c = (1.0 - label_smoothing) * grad_scale
    grad_a = _target_class_gradient(weight_ptr, num_classes, y_a, x_a, a_a * grad_scale, y_b, a_b * grad_scale, shift,
                                    log_sum, k, b, c, HAS_WEIGHT, HAS_SMOOTHING)
    grad_b = tl.zeros([], ACC)
    if TARGET_KIND != INDEX_TARGET and TARGET_KIND != PROBABILITY_TARGET:
        grad_b = _target_class_gradient(weight_ptr, num_classes, y_b, x_b, a_b * grad_scale, y_a, a_a * grad_scale,
                                        shift, log_sum, k, b, c, HAS_WEIGHT, HAS_SMOOTHING)
    return shift, k, b, c, grad_a, grad_b


@triton.jit
def _reciprocal(value, ACC: tl.constexpr):
    """1 / value rounded to nearest, as torch divides (Triton's fp32 `/` is approximate on the GPU)."""
    if ACC == tl.float64:
        reciprocal = 1.0 / value
    else:  # not an early return: Triton compiles the code after one too (div_rn takes fp32 only)
        reciprocal = tl.math.div_rn(tl.full([], 1.0, ACC), value)
    return reciprocal


@triton.jit
def _mean_denominator(denominator_ptr, num_partials, total_rows, TARGET_KIND: tl.constexpr,
                      PARTIALS_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """The `mean` denominator: for index targets the sum of the partial sums _index_denominator_kernel
    wrote (the summed weight of counted rows), for the other targets the row count."""
    if TARGET_KIND == INDEX_TARGET:
        partials = tl.arange(0, PARTIALS_BLOCK)
        return tl.sum(tl.load(denominator_ptr + partials, mask=partials < num_partials, other=0.0), 0)
    return tl.zeros([], ACC) + total_rows


@triton.jit
def _row_grad_scale(mean_scale, grad_output_ptr, row, GRAD_OUTPUT: tl.constexpr, ACC: tl.constexpr):
    """The factor of this row's gradient: mean_scale (1 / the `mean` denominator, or 1) times grad_output
    (GRAD_OUTPUT: NO_GRAD_OUTPUT, one value, or one per row)."""
    scale = mean_scale
    if GRAD_OUTPUT == SCALAR_GRAD_OUTPUT:
        scale = scale * tl.load(grad_output_ptr).to(ACC)
    elif GRAD_OUTPUT == PER_ROW_GRAD_OUTPUT:
        scale = scale * tl.load(grad_output_ptr + row).to(ACC)
    return scale


@triton.jit
def _mean_scale(denominator, MEAN: tl.constexpr, ACC: tl.constexpr):
    """1 / the `mean` denominator with MEAN, else 1."""
    if MEAN:
        return _reciprocal(denominator, ACC)
    return tl.full([], 1.0, ACC)


@triton.jit
def _counted_weight(target_ptr, weight_ptr, first, end, num_classes, ignore_index, BLOCK: tl.constexpr,
                    HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """[BLOCK] partial sums of w[y] (1 without weights) over the counted rows (y not ignore_index, in [0, C))
    among rows [first, first + BLOCK) below end."""
    index = first + tl.arange(0, BLOCK)
    y = tl.load(target_ptr + index, mask=index < end, other=0)
    counted = (index < end) & (y != ignore_index) & (y >= 0) & (y < num_classes)
    if HAS_WEIGHT:
        return tl.load(weight_ptr + y, mask=counted, other=0.0)
    return counted.to(ACC)


@triton.jit
def _index_denominator_kernel(target_ptr, weight_ptr, partial_ptr, rows, num_classes, ignore_index,
                              rows_per_program, BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """partial[p] = the summed weight w[y] (1 without weights) of the counted rows (y not ignore_index,
    in [0, C)) among rows [p * rows_per_program, (p + 1) * rows_per_program); grid (partials,).
    Bytes: 8 per row of target, plus the weights gathered (cached)."""
    first = tl.program_id(0).to(tl.int64) * rows_per_program
    total = tl.zeros([BLOCK], ACC)
    for offset in range(0, rows_per_program, BLOCK):
        total += _counted_weight(target_ptr, weight_ptr, first + offset, rows, num_classes, ignore_index, BLOCK,
                                 HAS_WEIGHT, ACC)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(total, 0))


@triton.jit
def _row_result(x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr, row,
                num_classes, inner_size, ignore_index, label_smoothing, z_loss, mean_scale, row_max, sum_exp, sum_s,
                sum_w, sum_wq, sum_wqs, TARGET_KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                HAS_SMOOTHING: tl.constexpr, HAS_Z_LOSS: tl.constexpr, WRITE_LSE: tl.constexpr,
                GRAD_OUTPUT: tl.constexpr, ACC: tl.constexpr):
    """From a row's statistics (_chunk_statistics over the whole row, or merged): stores its loss (and lse)
    and returns what its sweep 2 needs, (shift, log_sum, k, b, c, active, y_a, grad_a, y_b, grad_b)
    (_gradient_parameters). The target logits are read here, before any gradient overwrites them
    (inplace_backward)."""
    sample, row_offset = _row_position(row, num_classes, inner_size)
    a_a, a_b, beta, y_a, y_b, active = _row_coefficients(
        target_ptr, target_b_ptr, lam_ptr, weight_ptr, row, sample, num_classes, ignore_index, label_smoothing,
        TARGET_KIND, HAS_WEIGHT, ACC)
    x_a, x_b = _target_logits(x_ptr, row_offset, inner_size, num_classes, y_a, y_b, ACC)
    if not HAS_WEIGHT:
        sum_w = tl.zeros([], ACC) + num_classes
    log_sum = tl.log(sum_exp)
    loss, factor = _row_loss_and_factor(log_sum, sum_s, sum_w, sum_wq, sum_wqs, x_a, x_b, row_max, a_a, a_b, beta,
                                        active, label_smoothing, z_loss, TARGET_KIND == PROBABILITY_TARGET,
                                        HAS_Z_LOSS)
    tl.store(loss_ptr + row, loss)
    if WRITE_LSE:
        tl.store(lse_ptr + row, row_max + log_sum)
    shift, k, b, c, grad_a, grad_b = _gradient_parameters(
        mean_scale, grad_output_ptr, weight_ptr, row, num_classes, row_max, log_sum, factor, a_a, a_b, y_a, y_b,
        x_a, x_b, beta, label_smoothing, TARGET_KIND, GRAD_OUTPUT, HAS_WEIGHT, HAS_SMOOTHING, ACC)
    return shift, log_sum, k, b, c, active, y_a, grad_a, y_b, grad_b


@triton.jit
def _prologue(target_ptr, weight_ptr, denominator_ptr, num_partials, total_rows, num_classes, ignore_index,
              label_smoothing, z_loss, TARGET_KIND: tl.constexpr, MEAN: tl.constexpr, HAS_WEIGHT: tl.constexpr,
              COUNT_TARGETS: tl.constexpr, PARTIALS_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """(label_smoothing, z_loss, mean_scale) in ACC, once per program: mean_scale is 1 / the `mean`
    denominator (or 1); program 0 stores the denominator's total after the partials, for the host's mean.
    The denominator of index targets sums the num_partials partials of _index_denominator_kernel, or
    with COUNT_TARGETS every row's target itself, PARTIALS_BLOCK rows at a time (no kernel before this one:
    a few loads per thread and program, cached)."""
    if COUNT_TARGETS and MEAN and TARGET_KIND == INDEX_TARGET:
        total = tl.zeros([PARTIALS_BLOCK], ACC)
        for first in range(0, total_rows, PARTIALS_BLOCK):
            total += _counted_weight(target_ptr, weight_ptr, first, total_rows, num_classes, ignore_index,
                                     PARTIALS_BLOCK, HAS_WEIGHT, ACC)
        denominator = tl.sum(total, 0)
    else:
        denominator = _mean_denominator(denominator_ptr, num_partials, total_rows, TARGET_KIND, PARTIALS_BLOCK, ACC)
    if MEAN and TARGET_KIND == INDEX_TARGET:
        if tl.program_id(0) == 0:
            tl.store(denominator_ptr + num_partials, denominator)
    return tl.full([], label_smoothing, ACC), tl.full([], z_loss, ACC), _mean_scale(denominator, MEAN, ACC)


@triton.jit
def _cross_entropy_fwd_kernel(
        x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, denominator_ptr, grad_output_ptr, loss_ptr, lse_ptr,
        grad_ptr, rows, num_classes, inner_size, num_partials, total_rows, ignore_index,
        label_smoothing: "fp64", z_loss: "fp64", TARGET_KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr,
        HAS_SMOOTHING: tl.constexpr, HAS_Z_LOSS: tl.constexpr, WRITE_LSE: tl.constexpr, WRITE_GRAD: tl.constexpr,
        MEAN: tl.constexpr, GRAD_OUTPUT: tl.constexpr, OF_TARGET: tl.constexpr, BLOCK: tl.constexpr,
        PARTIALS_BLOCK: tl.constexpr, LANE_ALIGNED: tl.constexpr, EVEN: tl.constexpr, UNIT_STRIDE: tl.constexpr,
        ACC: tl.constexpr):
    """Cross-entropy of rows of up to ROW_IN_REGISTERS classes, each one block held in registers between its
    two sweeps; a persistent grid: program p takes rows p, p + programs, ... (row_programs: as many as the
    SMs' threads could hold, so that the prologue is paid once per program). EVEN: C is the block's size,
    so nothing is masked.

    Inputs: logits x as (N, C, inner_size) (row r = n * inner_size + i; classes inner_size
    apart), the target (int64 (rows,) indices, two of them and lam (N,) for MixedTarget, or
    probabilities of x's layout), class weights ((C,), optional), the partial sums of the `mean`
    denominator (index targets with MEAN; num_partials of them, from _index_denominator_kernel;
    program 0 stores their total after them, for the host's mean), grad_output (one value or
    one per row, as GRAD_OUTPUT says; the gradient's factor is grad_output / the mean denominator).
    Outputs: loss ((rows,)) and, when WRITE_GRAD, grad in x's layout (may be x itself: each
    row is read before it is overwritten): the gradient with respect to the logits, or with
    OF_TARGET to the probability target. The math, lam, weights, grad scale and loss are in ACC: fp64
    for fp64 logits, else fp32 (label_smoothing arrives as an fp64 and is rounded to ACC).

    Sweep 1 reads the row for its statistics, sweep 2 writes its gradient from the registers. Bytes: one
    read of the logits and one write of the gradient, N * C * itemsize each way, plus 8 bytes of target
    and 4 of loss per row (probability targets add one read of q per sweep). Without WRITE_GRAD, sweep 2
    is skipped.
    """
    label_smoothing, z_loss, mean_scale = _prologue(
        target_ptr, weight_ptr, denominator_ptr, num_partials, total_rows, num_classes, ignore_index, label_smoothing,
        z_loss, TARGET_KIND, MEAN, HAS_WEIGHT, False, PARTIALS_BLOCK, ACC)
    IS_PROB: tl.constexpr = TARGET_KIND == PROBABILITY_TARGET
    for program_row in tl.range(tl.program_id(0), rows, tl.num_programs(0)):
        row = program_row + tl.zeros([], tl.int64)  # int64 offsets (the interpreter's loop yields Python ints)
        _, first = _row_position(row, num_classes, inner_size)
        # 1. Sweep 1: statistics of the row.
        row_max, sum_exp, sum_s, sum_w, sum_wq, sum_wqs, held, held_offset = _chunk_statistics(
            x_ptr, target_ptr, weight_ptr, first, inner_size, 0, num_classes, BLOCK, 1, not EVEN, LANE_ALIGNED,
            IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, UNIT_STRIDE, OF_TARGET, "", ACC)
        # 2. Its loss, then sweep 2: its gradient.
        shift, log_sum, k, b, c, active, y_a, grad_a, y_b, grad_b = _row_result(
            x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr, row,
            num_classes, inner_size, ignore_index, label_smoothing, z_loss, mean_scale, row_max, sum_exp, sum_s,
            sum_w, sum_wq, sum_wqs, TARGET_KIND, HAS_WEIGHT, HAS_SMOOTHING, HAS_Z_LOSS, WRITE_LSE, GRAD_OUTPUT, ACC)
        if WRITE_GRAD:
            _write_row_gradient(x_ptr, target_ptr, weight_ptr, grad_ptr, first, inner_size, 0, num_classes, held,
                                held_offset, shift, log_sum, k, b, c, active, y_a, grad_a, y_b, grad_b,
                                TARGET_KIND, BLOCK, 1, True, not EVEN, LANE_ALIGNED, HAS_WEIGHT, HAS_SMOOTHING,
                                OF_TARGET, UNIT_STRIDE, ACC)


@triton.jit
def _write_row_gradient(x_ptr, q_ptr, weight_ptr, grad_ptr, first, class_stride, start, n, held, held_offset, shift,
                        log_sum, k, b, c, active, y_a, grad_a, y_b, grad_b, TARGET_KIND: tl.constexpr,
                        BLOCK: tl.constexpr, BLOCKS: tl.constexpr, HELD: tl.constexpr,
                        MASKED: tl.constexpr, LANE_ALIGNED: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                        HAS_SMOOTHING: tl.constexpr, OF_TARGET: tl.constexpr, UNIT_STRIDE: tl.constexpr,
                        ACC: tl.constexpr):
    """Sweep 2 of a chunk (_write_chunk_gradient; zeros for an inactive row, whatever its logits hold), then
    the target classes' gradients (_gradient_parameters) stored over theirs when in this chunk: one store
    per target instead of a compare per element."""
    IS_PROB: tl.constexpr = TARGET_KIND == PROBABILITY_TARGET
    if active:
        _write_chunk_gradient(x_ptr, q_ptr, weight_ptr, grad_ptr, first, class_stride, start, n, held,
                              held_offset, shift, log_sum, k, b, c, False, BLOCK, BLOCKS, HELD, MASKED,
                              LANE_ALIGNED, IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, OF_TARGET, UNIT_STRIDE, ACC)
    else:
        _write_chunk_gradient(x_ptr, q_ptr, weight_ptr, grad_ptr, first, class_stride, start, n, held,
                              held_offset, shift, log_sum, k, b, c, True, BLOCK, BLOCKS, HELD, MASKED,
                              LANE_ALIGNED, IS_PROB, HAS_WEIGHT, HAS_SMOOTHING, OF_TARGET, UNIT_STRIDE, ACC)
    if TARGET_KIND != PROBABILITY_TARGET and not OF_TARGET:
        tl.debug_barrier()  # the chunk's stores before the two that overwrite target classes
        in_chunk = active & (y_a >= start) & (y_a < start + n)
        tl.store(grad_ptr + first + (y_a - start) * class_stride, round_to(grad_a, grad_ptr.dtype.element_ty),
                 mask=in_chunk)
        if TARGET_KIND != INDEX_TARGET:
            in_chunk = active & (y_b >= start) & (y_b < start + n)
            tl.store(grad_ptr + first + (y_b - start) * class_stride, round_to(grad_b, grad_ptr.dtype.element_ty),
                     mask=in_chunk)


@triton.jit
def _merge_row(x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr,
               partial_ptr, row, num_classes, inner_size, num_splits, ignore_index, label_smoothing, z_loss,
               mean_scale, TARGET_KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
               HAS_Z_LOSS: tl.constexpr, WRITE_LSE: tl.constexpr, WRITE_GRAD: tl.constexpr,
               GRAD_OUTPUT: tl.constexpr, SPLITS_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """A split row's statistics from its chunks' partials: max over chunks, sums of exp rescaled to it,
    shifted sums rebased onto it, plain sums of the rest. Stores the row's loss (_row_result) and, for
    sweep 2, over split 0's fields: shift, log_sum, k, b, c, active and the target classes' gradients.
    The partials come from other programs: read through L2 (.cg), never from a stale L1 line."""
    splits = tl.arange(0, SPLITS_BLOCK)
    in_use = splits < num_splits
    fields = partial_ptr + (row * num_splits + splits) * PARTIAL_FIELDS
    chunk_max = tl.load(fields + 0, mask=in_use, other=-float("inf"), cache_modifier=".cg")
    row_max = tl.max(chunk_max, 0)
    shift = tl.where(row_max == -float("inf"), 0.0, row_max)
    sum_exp = tl.sum(tl.load(fields + 1, mask=in_use, other=0.0, cache_modifier=".cg") * tl.exp(chunk_max - shift),
                     0)
    chunk_w = tl.load(fields + 3, mask=in_use, other=0.0, cache_modifier=".cg")
    chunk_wq = tl.load(fields + 4, mask=in_use, other=0.0, cache_modifier=".cg")
    sum_s = tl.sum(_rebase(tl.load(fields + 2, mask=in_use, other=0.0, cache_modifier=".cg"), chunk_max, shift,
                           chunk_w), 0)
    sum_wqs = tl.sum(_rebase(tl.load(fields + 5, mask=in_use, other=0.0, cache_modifier=".cg"), chunk_max, shift,
                             chunk_wq), 0)
    shift, log_sum, k, b, c, active, _, grad_a, _, grad_b = _row_result(
        x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr, row, num_classes,
        inner_size, ignore_index, label_smoothing, z_loss, mean_scale, row_max, sum_exp, sum_s, tl.sum(chunk_w, 0),
        tl.sum(chunk_wq, 0), sum_wqs, TARGET_KIND, HAS_WEIGHT, HAS_SMOOTHING, HAS_Z_LOSS, WRITE_LSE, GRAD_OUTPUT,
        ACC)
    if WRITE_GRAD:
        tl.debug_barrier()  # every thread has read the partials before they are overwritten
        merged = partial_ptr + row * num_splits * PARTIAL_FIELDS
        tl.store(merged + 0, shift)
        tl.store(merged + 1, log_sum)
        tl.store(merged + 2, k)
        tl.store(merged + 3, b)
        tl.store(merged + 4, c)
        tl.store(merged + 5, active.to(ACC))
        tl.store(merged + 6, grad_a)
        tl.store(merged + 7, grad_b)


@triton.jit
def _cross_entropy_split_kernel(
        x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, denominator_ptr, grad_output_ptr, loss_ptr, lse_ptr,
        grad_ptr, rows, num_classes, inner_size, num_partials, total_rows, ignore_index,
        label_smoothing: "fp64", z_loss: "fp64", partial_ptr, queue_ptr, chunk_size, num_splits, lag,
        TARGET_KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr,
        HAS_SMOOTHING: tl.constexpr, HAS_Z_LOSS: tl.constexpr, WRITE_LSE: tl.constexpr, WRITE_GRAD: tl.constexpr,
        MEAN: tl.constexpr, GRAD_OUTPUT: tl.constexpr, OF_TARGET: tl.constexpr, BLOCK: tl.constexpr,
        PARTIALS_BLOCK: tl.constexpr, LANE_ALIGNED: tl.constexpr, EVEN: tl.constexpr, UNIT_STRIDE: tl.constexpr,
        ACC: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr, SPLITS_BLOCK: tl.constexpr):
    """Cross-entropy of rows cut into num_splits chunks of chunk_size classes (the last one shorter): rows
    too long to hold in registers, or too few to fill the GPU. One persistent grid works through a queue of
    items, each one chunk of one row:
      sweep 1 of a chunk: its partial statistics (_chunk_statistics), stored in partial (rows, splits,
        PARTIAL_FIELDS); the row's last chunk to arrive merges them (_merge_row: the loss, and what sweep 2
        needs);
      sweep 2 of a chunk (WRITE_GRAD): its gradient, once the row is merged; the chunk comes again from L2.
    queue (int32, zeros): [0] hands out the items in order, ITEMS_PER_GRAB at a time (one atomic per grab),
    [1 + row] counts the row's chunks done (splits + 1 once merged). Items run in steps: step s holds sweep 1
    of row s, then sweep 2 of row s - lag. Deadlock-free at any residency: a program works through its grab
    in order and waits only in sweep 2, for sweep-1 items of lower index, held by running programs that are
    either working on them or waiting, in turn, on items of still lower index. With lag >= programs / splits
    the wait is rare, and between a chunk's two sweeps about 2 x lag rows move through L2, which keeps the
    chunk (split_lag). The result does not depend on which program takes which item.

    EVEN: C is a multiple of the chunk, so nothing is masked. Inputs and outputs as _cross_entropy_fwd_kernel;
    the `mean` denominator of index targets is counted by every program from the targets (_prologue).
    Bytes: one read of the logits from DRAM and one write of the gradient (sweep 2's reads come from L2), the
    partials (32 bytes per chunk), 12 per row.
    """
    label_smoothing, z_loss, mean_scale = _prologue(
        target_ptr, weight_ptr, denominator_ptr, num_partials, total_rows, num_classes, ignore_index, label_smoothing,
        z_loss, TARGET_KIND, MEAN, HAS_WEIGHT, True, PARTIALS_BLOCK, ACC)
    SWEEPS: tl.constexpr = 2 if WRITE_GRAD else 1
    items = (rows + (SWEEPS - 1) * lag) * SWEEPS * num_splits
    grabbed = tl.atomic_add(queue_ptr, ITEMS_PER_GRAB)
    while grabbed < items:
        for item in range(grabbed, tl.minimum(grabbed + ITEMS_PER_GRAB, items)):
            sweep, row, split = _queue_item(item, rows, num_splits, lag, SWEEPS)
            if sweep == 1:
                _split_statistics(
                    x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr,
                    partial_ptr, queue_ptr, row, split, num_classes, inner_size, chunk_size, num_splits,
                    ignore_index, label_smoothing, z_loss, mean_scale, TARGET_KIND, HAS_WEIGHT, HAS_SMOOTHING,
                    HAS_Z_LOSS, WRITE_LSE, WRITE_GRAD, GRAD_OUTPUT, OF_TARGET, BLOCK, BLOCKS_PER_CHUNK,
                    SPLITS_BLOCK, LANE_ALIGNED, EVEN, UNIT_STRIDE, ACC)
            elif sweep == 2:
                _split_gradient(x_ptr, target_ptr, target_b_ptr, weight_ptr, grad_ptr, partial_ptr, queue_ptr,
                                row, split, num_classes, inner_size, chunk_size, num_splits, TARGET_KIND,
                                HAS_WEIGHT, HAS_SMOOTHING, OF_TARGET, BLOCK, BLOCKS_PER_CHUNK, LANE_ALIGNED, EVEN,
                                UNIT_STRIDE, ACC)
        grabbed = tl.atomic_add(queue_ptr, ITEMS_PER_GRAB)


@triton.jit
def _queue_item(item, rows, num_splits, lag, SWEEPS: tl.constexpr):
    """(sweep, row, split) of the split kernel's queue item `item`: items run in steps of SWEEPS * num_splits,
    step s holding sweep 1 of row s's chunks, then (SWEEPS == 2) sweep 2 of row s - lag's. Sweep 0: an item
    with no row (the first lag steps' sweep 2, the last lag steps' sweep 1)."""
    step = item // (SWEEPS * num_splits)
    split = item % (SWEEPS * num_splits)
    if split < num_splits:
        sweep = tl.where(step < rows, 1, 0)
        row = step
    else:
        sweep = tl.where(step >= lag, 2, 0)
        row = step - lag
        split -= num_splits
    return sweep, row, split


@triton.jit
def _split_statistics(x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr,
                      partial_ptr, queue_ptr, row, split, num_classes, inner_size, chunk_size, num_splits,
                      ignore_index, label_smoothing, z_loss, mean_scale, TARGET_KIND: tl.constexpr,
                      HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_Z_LOSS: tl.constexpr,
                      WRITE_LSE: tl.constexpr, WRITE_GRAD: tl.constexpr, GRAD_OUTPUT: tl.constexpr,
                      OF_TARGET: tl.constexpr, BLOCK: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr,
                      SPLITS_BLOCK: tl.constexpr, LANE_ALIGNED: tl.constexpr, EVEN: tl.constexpr,
                      UNIT_STRIDE: tl.constexpr, ACC: tl.constexpr):
    """Sweep 1 of one chunk of a split row: its partial statistics, read with evict_last (sweep 2 reads them
    again); then the chunk's arrival is counted, and the row's last chunk merges the row."""
    _, row_offset = _row_position(row, num_classes, inner_size)
    start = split * chunk_size
    n = tl.minimum(chunk_size, num_classes - start).to(tl.int32)  # classes in the chunk (< 2^31)
    row_max, sum_exp, sum_s, sum_w, sum_wq, sum_wqs, _, _ = _chunk_statistics(
        x_ptr, target_ptr, weight_ptr, row_offset + start * inner_size, inner_size, start, n, BLOCK,
        BLOCKS_PER_CHUNK, not EVEN, LANE_ALIGNED, TARGET_KIND == PROBABILITY_TARGET, HAS_WEIGHT, HAS_SMOOTHING,
        UNIT_STRIDE, False, "evict_last", ACC)
    fields = partial_ptr + (row * num_splits + split) * PARTIAL_FIELDS
    tl.store(fields + 0, row_max)
    tl.store(fields + 1, sum_exp)
    tl.store(fields + 2, sum_s)
    tl.store(fields + 3, sum_w)
    tl.store(fields + 4, sum_wq)
    tl.store(fields + 5, sum_wqs)
    tl.debug_barrier()  # the fields are stored before the arrival that publishes them
    done = queue_ptr + 1 + row
    if tl.atomic_add(done, 1, sem="acq_rel") == num_splits - 1:  # the row's last chunk: the others' are visible
        _merge_row(x_ptr, target_ptr, target_b_ptr, lam_ptr, weight_ptr, grad_output_ptr, loss_ptr, lse_ptr,
                   partial_ptr, row, num_classes, inner_size, num_splits, ignore_index, label_smoothing, z_loss,
                   mean_scale, TARGET_KIND, HAS_WEIGHT, HAS_SMOOTHING, HAS_Z_LOSS, WRITE_LSE, WRITE_GRAD,
                   GRAD_OUTPUT, SPLITS_BLOCK, ACC)
        tl.debug_barrier()  # the merged fields are stored before the release below
        tl.atomic_add(done, 1, sem="release")


@triton.jit
def _split_gradient(x_ptr, target_ptr, target_b_ptr, weight_ptr, grad_ptr, partial_ptr, queue_ptr, row, split,
                    num_classes, inner_size, chunk_size, num_splits, TARGET_KIND: tl.constexpr,
                    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, OF_TARGET: tl.constexpr,
                    BLOCK: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr, LANE_ALIGNED: tl.constexpr,
                    EVEN: tl.constexpr, UNIT_STRIDE: tl.constexpr, ACC: tl.constexpr):
    """Sweep 2 of one chunk of a split row, once the row is merged (its count past num_splits): the gradient
    from the merged fields (_merge_row), the chunk's logits read again (from L2) and written once."""
    done = queue_ptr + 1 + row
    count = tl.atomic_add(done, 0, sem="acquire")
    while count <= num_splits:
        count = tl.atomic_add(done, 0, sem="acquire")
    _, row_offset = _row_position(row, num_classes, inner_size)
    merged = partial_ptr + row * num_splits * PARTIAL_FIELDS
    shift = tl.load(merged + 0, cache_modifier=".cg")
    log_sum = tl.load(merged + 1, cache_modifier=".cg")
    k = tl.load(merged + 2, cache_modifier=".cg")
    b = tl.load(merged + 3, cache_modifier=".cg")
    c = tl.load(merged + 4, cache_modifier=".cg")
    active = tl.load(merged + 5, cache_modifier=".cg") != 0.0
    grad_a = tl.load(merged + 6, cache_modifier=".cg")
    grad_b = tl.load(merged + 7, cache_modifier=".cg")
    no_class = tl.full([], -1, tl.int64)
    y_a = no_class
    y_b = no_class
    if TARGET_KIND != PROBABILITY_TARGET:
        y_a = tl.load(target_ptr + row)
        if TARGET_KIND != INDEX_TARGET:
            y_b = tl.load(target_b_ptr + row)
    start = split * chunk_size
    n = tl.minimum(chunk_size, num_classes - start).to(tl.int32)
    _write_row_gradient(x_ptr, target_ptr, weight_ptr, grad_ptr, row_offset + start * inner_size, inner_size, start,
                        n, shift, shift, shift, log_sum, k, b, c, active, y_a, grad_a, y_b, grad_b, TARGET_KIND,
                        BLOCK, BLOCKS_PER_CHUNK, False, not EVEN, LANE_ALIGNED, HAS_WEIGHT, HAS_SMOOTHING, OF_TARGET,
                        UNIT_STRIDE, ACC)


@triton.jit
def _scale_gradient_kernel(grad_ptr, factor_ptr, n_elements, num_classes, inner_size, iterations,
                           PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """grad *= factor in place, factor one value (PER_ROW=False) or one per row (rows,), in the
    factor's dtype (fp64 for fp64 gradients, else fp32); a grid-stride loop of `iterations` blocks
    per program (at most SCALE_PROGRAMS_PER_SM programs per SM).

    Inputs: grad (N, C, inner_size) contiguous, factor. Bytes: with one factor of exactly 1 each
    program reads it and skips the loop (loss.backward() on a scalar loss): nothing else moves;
    per-row factors of 1 mask their rows' loads and stores off; elsewhere one read and one write
    of the gradient, plus the factors (cached).
    """
    pid = tl.program_id(0).to(tl.int64)
    programs = tl.num_programs(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    if PER_ROW:
        scalar = tl.zeros([], factor_ptr.dtype.element_ty)  # never 1: every program sweeps
    else:
        scalar = tl.load(factor_ptr)
    if scalar != 1.0:
        for iteration in range(iterations):
            offsets = (iteration * programs + pid) * BLOCK + lanes
            in_bounds = offsets < n_elements
            if PER_ROW:
                # Divided one factor at a time: num_classes * inner_size can pass 2^31 while each is an int32.
                rows = (offsets // inner_size // num_classes) * inner_size + offsets % inner_size
                factor = tl.load(factor_ptr + rows, mask=in_bounds, other=1.0)
            else:
                factor = tl.full([BLOCK], 1.0, factor_ptr.dtype.element_ty) * scalar
            needed = in_bounds & (factor != 1.0)
            grad = tl.load(grad_ptr + offsets, mask=needed, other=0.0).to(factor_ptr.dtype.element_ty)
            tl.store(grad_ptr + offsets, round_to(grad * factor, grad_ptr.dtype.element_ty), mask=needed)


# ----------------------------------------------------------------------------- implementations
# Each op below has one implementation per backend, taking the op's arguments: the torch one
# (reference.py's formulas), and the Triton and CUDA ones, which differ only in their launcher
# (_cross_entropy_triton, _cross_entropy_cuda).


def split_count(rows, num_classes, device, long_rows=True):
    """How many chunks of SPLIT_BLOCK classes each row is cut into: 1 for rows of up to ROW_IN_REGISTERS
    classes unless they are too few for SPLIT_PROGRAMS_PER_SM programs per SM and C spans two chunks;
    longer rows always, unless not long_rows (the CUDA kernels sweep a long row in one block, and merge
    split rows in separate kernels, after every chunk's sweep 1: for rows too few to fill the GPU only)."""
    few_rows = rows < SPLIT_PROGRAMS_PER_SM * _backend.sm_count(device)
    if (num_classes > ROW_IN_REGISTERS and long_rows) or (few_rows and num_classes >= 2 * SPLIT_BLOCK):
        return cdiv(num_classes, SPLIT_BLOCK)
    return 1


def uses_split_kernel(num_classes, splits):
    """Whether rows go to _cross_entropy_split_kernel (else one block each in _cross_entropy_fwd_kernel)."""
    return splits > 1 or num_classes > ROW_IN_REGISTERS


def _power_of_two_at_least(n):
    """The smallest power of two >= n (triton.next_power_of_2 is a constexpr_function: slow to call)."""
    return 1 << (n - 1).bit_length()


def _block_and_warps(num_classes, splits):
    """(BLOCK, num_warps): a row held in registers is one block, ROW_ELEMENTS_PER_THREAD per thread
    (at least 4 warps); a split row's chunks are blocks of up to SPLIT_BLOCK classes on SPLIT_WARPS."""
    if uses_split_kernel(num_classes, splits):
        return max(16, min(SPLIT_BLOCK, _power_of_two_at_least(cdiv(num_classes, splits)))), SPLIT_WARPS
    whole_row = _power_of_two_at_least(num_classes)
    if whole_row > MAX_BLOCK:
        return whole_row, max(4, whole_row // (32 * ROW_ELEMENTS_PER_THREAD))
    return max(16, whole_row), 4


@functools.lru_cache(maxsize=None)
def _l2_bytes(device: torch.device) -> int:
    """The L2 cache of a CUDA device (DEFAULT_L2_BYTES elsewhere: the interpreter, the static model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    return DEFAULT_L2_BYTES


def row_programs(rows: int, num_warps: int, device: torch.device) -> int:
    """Programs of _cross_entropy_fwd_kernel, each looping over rows (a persistent grid): as many per SM as
    its threads could hold (RESIDENT_THREADS_PER_SM), so that each program's prologue (the `mean`
    denominator and its reciprocal) is paid once per program, not per row."""
    return min(rows, RESIDENT_THREADS_PER_SM // (32 * num_warps) * _backend.sm_count(device))


def split_programs(items: int, num_warps: int, chunk_bytes: int, device: torch.device) -> int:
    """Programs of _cross_entropy_split_kernel's persistent grid: SPLIT_THREADS_PER_SM per SM, no more
    than the sweep-1 items, and few enough that what the GPU reads between a chunk's two sweeps (about
    2 x programs chunks, split_lag) fits in L2_RESIDENT_FRACTION of L2."""
    resident = int(L2_RESIDENT_FRACTION * _l2_bytes(device)) // (2 * chunk_bytes)
    return max(1, min(items, SPLIT_THREADS_PER_SM // (32 * num_warps) * _backend.sm_count(device), resident))


def split_lag(programs: int, splits: int) -> int:
    """Rows between sweep 1 of a row and its sweep 2 in the split kernel's queue: enough that the programs
    in flight (one item each) have finished the row's sweep 1 when its sweep 2 is handed out, so that
    sweep 2 rarely waits. Between a chunk's two sweeps the GPU then moves about 2 x lag rows through L2
    (lag rows read by sweep 1, lag rows of gradient written)."""
    return cdiv(programs, splits)


@functools.lru_cache(maxsize=256)  # a pure function of rows, asked twice a call
def _denominator_partials(rows):
    """(programs, rows per program, block) of _index_denominator_kernel: one program per
    DENOMINATOR_ROWS rows, at most MAX_DENOMINATOR_PARTIALS (each main program sums them all)."""
    block = max(16, min(DENOMINATOR_BLOCK, _power_of_two_at_least(rows)))
    programs = min(MAX_DENOMINATOR_PARTIALS, cdiv(rows, DENOMINATOR_ROWS))
    rows_per_program = cdiv(cdiv(rows, programs), block) * block
    return cdiv(rows, rows_per_program), rows_per_program, block


def _grad_output_kind(grad_output):
    if grad_output is None:
        return NO_GRAD_OUTPUT.value
    return SCALAR_GRAD_OUTPUT.value if grad_output.dim() == 0 else PER_ROW_GRAD_OUTPUT.value


def _cross_entropy_triton(x, target, target_b, lam, weight, loss, lse, grad, denominator, grad_output, ignore_index,
                          label_smoothing, z_loss, mean, target_kind, splits, of_target):
    num_classes = x.shape[1]
    rows = loss.numel()
    inner_size = x.numel() // (x.shape[0] * num_classes)
    block, num_warps = _block_and_warps(num_classes, splits)
    math_dtype = loss.dtype
    if math_dtype == torch.float32:
        # The kernel rounds it to fp32 itself; rounded here too, HAS_SMOOTHING agrees (say for 1e-100).
        label_smoothing = struct.unpack("f", struct.pack("f", label_smoothing))[0]
        z_loss = struct.unpack("f", struct.pack("f", z_loss))[0]
    split_kernel = uses_split_kernel(num_classes, splits)
    num_partials, partials_block = 0, 2
    if denominator is not None:
        num_partials, rows_per_program, denominator_block = _denominator_partials(rows)
        partials_block = max(2, _power_of_two_at_least(num_partials))
    if denominator is not None and split_kernel:  # which counts the targets itself
        partials_block = denominator_block
    elif denominator is not None:
        launch(_index_denominator_kernel, (num_partials,), target, weight if weight is not None else denominator,
               denominator, rows, num_classes, ignore_index, rows_per_program, num_warps=4, BLOCK=denominator_block,
               HAS_WEIGHT=weight is not None, ACC=math_dtype)
    args = (x, target, target_b if target_b is not None else target, lam if lam is not None else loss,
            weight if weight is not None else loss, denominator if denominator is not None else loss,
            grad_output if grad_output is not None else loss, loss, lse if lse is not None else loss,
            grad if grad is not None else x, rows, num_classes, inner_size, num_partials, rows, ignore_index,
            label_smoothing, z_loss)
    constexprs = dict(TARGET_KIND=int(target_kind), HAS_WEIGHT=weight is not None,
                      HAS_SMOOTHING=label_smoothing > 0.0, HAS_Z_LOSS=z_loss > 0.0, WRITE_LSE=lse is not None,
                      WRITE_GRAD=grad is not None, MEAN=mean, GRAD_OUTPUT=_grad_output_kind(grad_output),
                      OF_TARGET=of_target, BLOCK=block, PARTIALS_BLOCK=partials_block,
                      LANE_ALIGNED=num_classes % LANE_GROUP.value == 0, UNIT_STRIDE=inner_size == 1, ACC=math_dtype)
    if not split_kernel:
        launch(_cross_entropy_fwd_kernel, (row_programs(rows, num_warps, x.device),), *args, num_warps=num_warps,
               **constexprs, EVEN=num_classes == block)
        return
    chunk = cdiv(cdiv(num_classes, splits), block) * block
    splits = cdiv(num_classes, chunk)
    partial = torch.empty((rows, splits, PARTIAL_FIELDS.value), dtype=math_dtype, device=x.device)
    programs = split_programs(rows * splits, num_warps, chunk * x.element_size(), x.device)
    lag = split_lag(programs, splits)
    if (rows + lag) * 2 * splits + ITEMS_PER_GRAB.value * programs >= 1 << 31:  # the queue counts in int32
        raise ValueError(f"cross_entropy: {rows} rows of {splits} chunks are too many items for the split kernel")
    queue = torch.zeros(rows + 1, dtype=torch.int32, device=x.device)
    launch(_cross_entropy_split_kernel, (programs,), *args, partial, queue, chunk, splits, lag, num_warps=num_warps,
           **constexprs, EVEN=num_classes % chunk == 0, BLOCKS_PER_CHUNK=chunk // block,
           SPLITS_BLOCK=max(2, _power_of_two_at_least(splits)))


def _pointer(tensor):
    return 0 if tensor is None else tensor.data_ptr()


def _cross_entropy_cuda(x, target, target_b, lam, weight, loss, lse, grad, denominator, grad_output, ignore_index,
                        label_smoothing, z_loss, mean, target_kind, splits, of_target):
    num_classes = x.shape[1]
    rows = loss.numel()
    partial = None
    if splits > 1:
        partial = torch.empty((rows, splits, PARTIAL_FIELDS.value), dtype=torch.float32, device=x.device)
    num_partials, rows_per_partial, _ = _denominator_partials(rows) if denominator is not None else (0, 0, 0)
    if target_kind == PROBABILITIES:
        target = target.to(x.dtype)  # the CUDA kernels read probabilities in the logits' dtype
    # ... and write every gradient in it: the target's gradient passes through a buffer of that dtype.
    out = grad if grad is None or grad.dtype == x.dtype else torch.empty_like(grad, dtype=x.dtype)
    _backend.launch_cuda(
        _backend._C.cross_entropy_fwd, x.device, x=x.data_ptr(), target=target.data_ptr(), target_b=_pointer(target_b),
        lam=_pointer(lam), weight=_pointer(weight), denominator=_pointer(denominator),
        grad_output=_pointer(grad_output), loss=loss.data_ptr(), lse=_pointer(lse), grad=_pointer(out),
        partial=_pointer(partial), rows=rows, num_classes=num_classes,
        inner_size=x.numel() // (x.shape[0] * num_classes), splits=splits, num_partials=num_partials,
        rows_per_partial=rows_per_partial, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        mean=mean, grad_output_kind=_grad_output_kind(grad_output), grad_of_target=of_target, kind=int(target_kind),
        dtype=_backend.CUDA_DTYPE_CODES[x.dtype])
    if out is not grad:
        grad.copy_(out)


def _target_kind(target, target_b):
    if target_b is not None:
        return MIXED
    return PROBABILITIES if target.is_floating_point() else INDEX


def _row_shape(logits):
    return (logits.shape[0],) + tuple(logits.shape[2:])


def _math_dtype(logits):
    """The precision of the arithmetic, and the loss's dtype: fp64 for fp64 logits, else fp32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _scaled_reference_gradient(row_grad, denominator, grad_output, reduction, target, target_b, ignore_index):
    """reference.cross_entropy_rows's gradient of the summed losses times grad_output (None: 1; one
    value per row for reduction="none"), divided by the `mean` denominator."""
    if grad_output is not None:
        row_factor = grad_output.to(row_grad.dtype)
        row_grad = row_grad * (row_factor.unsqueeze(1) if row_factor.dim() > 0 else row_factor)
    if reduction == "mean":
        row_grad = row_grad * (1.0 / denominator)  # as the kernels scale
    if target_b is None and not target.is_floating_point():
        # Ignored rows stay exactly zero when everything is ignored (0 * inf), as in torch;
        # rows that count keep 0 * inf = NaN (all-zero class weights), as in torch.
        row_grad = torch.where((target == ignore_index).unsqueeze(1), 0.0, row_grad)
    return row_grad


def _reduce(row_loss, denominator, reduction):
    if reduction == "none":
        return row_loss
    total = row_loss.sum()
    return total / denominator if reduction == "mean" else total


def _forward_reference(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss,
                       lse, grad, splits, grad_output, of_target):
    """The torch backend of _forward_kernels (same arguments), from reference.cross_entropy_rows."""
    math_dtype = _math_dtype(logits)
    row_loss, row_grad, denominator = reference.cross_entropy_rows(
        logits, target, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
        target_b=target_b, lam=lam, z_loss=z_loss, math_dtype=math_dtype)
    if lse is not None:
        lse.copy_(reference.row_logsumexp(logits, math_dtype=math_dtype))
    if grad is not None:
        if of_target:
            row_grad = reference.cross_entropy_target_gradient(
                logits, weight=weight, label_smoothing=label_smoothing, math_dtype=math_dtype)
        grad.copy_(_scaled_reference_gradient(row_grad, denominator, grad_output, reduction, target, target_b,
                                              ignore_index))
    return _reduce(row_loss, denominator, reduction)


def _forward_kernels(launcher, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing,
                     z_loss, lse, grad, splits, grad_output, of_target):
    """Reduced loss (z_loss lse^2 added per counted row); writes each row's lse into `lse` (fp32, the
    row shape) and the gradient into `grad` when they are not None, for grad_output (None: 1;
    a scalar, or one value per row for reduction="none"): with respect to the logits, or with
    of_target to the probability target. The `mean` denominator and the gradient's factor are
    computed on the device by the launcher's kernels. Inputs contiguous (_contiguous_inputs)."""
    math_dtype = _math_dtype(logits)
    row_loss = torch.empty(_row_shape(logits), dtype=math_dtype, device=logits.device)
    rows = row_loss.numel()
    target_kind = _target_kind(target, target_b)
    mean = reduction == "mean"
    denominator = None  # index targets: partial sums of the counted weight, then their total
    if mean and target_kind == INDEX and rows > 0:
        denominator = torch.empty(_denominator_partials(rows)[0] + 1, dtype=math_dtype, device=logits.device)
    if rows > 0:
        if splits <= 0:
            splits = split_count(rows, logits.shape[1], logits.device, launcher is _cross_entropy_triton)
        if grad_output is not None:
            grad_output = grad_output.to(math_dtype)
            grad_output = grad_output if grad_output.is_contiguous() else grad_output.contiguous()
        launcher(logits, target, target_b, lam, weight, row_loss, lse, grad, denominator, grad_output, ignore_index,
                 label_smoothing, z_loss, mean, target_kind, splits, of_target)
    if reduction == "none":
        return row_loss
    total = row_loss.sum()
    if not mean:
        return total
    return total / (denominator[-1] if denominator is not None else rows)


def _contiguous_inputs(logits, target, target_b, lam, weight):
    """The inputs contiguous, lam and weight in the math dtype, as the launchers take them."""
    math_dtype = _math_dtype(logits)
    return (logits.contiguous(), target.contiguous(), None if target_b is None else target_b.contiguous(),
            None if lam is None else lam.to(math_dtype).contiguous(),
            None if weight is None else weight.to(math_dtype).contiguous())


_FORWARDS = dict(torch=_forward_reference, triton=functools.partial(_forward_kernels, _cross_entropy_triton),
                 cuda=functools.partial(_forward_kernels, _cross_entropy_cuda))


def _loss(forward, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse,
          splits):
    logits, target, target_b, lam, weight = _contiguous_inputs(logits, target, target_b, lam, weight)
    return forward(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse, None,
                   splits, None, False)


def _loss_with_grad(forward, logits, grad, target, target_b, lam, weight, ignore_index, reduction, label_smoothing,
                    z_loss, lse, splits, grad_output):
    logits, target, target_b, lam, weight = _contiguous_inputs(logits, target, target_b, lam, weight)
    return forward(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse, grad,
                   splits, grad_output, False)


def _loss_inplace(forward, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss,
                  lse, splits, grad_output):
    _, target, target_b, lam, weight = _contiguous_inputs(logits, target, target_b, lam, weight)
    return forward(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse,
                   logits, splits, grad_output, False)


def _target_grad(forward, logits, grad, target, weight, reduction, label_smoothing, splits, grad_output):
    logits, target, _, _, weight = _contiguous_inputs(logits, target, None, None, weight)
    # z-loss does not depend on the target: its gradient is the plain cross-entropy's.
    forward(logits, target, None, None, weight, -100, reduction, label_smoothing, 0.0, None, grad, splits, grad_output,
            True)


def _kernel_implementations(body):
    """The triton and cuda entries of an op's table: `body` with that backend's forward."""
    return dict(triton=functools.partial(body, _FORWARDS["triton"]), cuda=functools.partial(body, _FORWARDS["cuda"]))


# The torch implementations carry the ops' schemas (their type hints). `splits` <= 0 picks the split count.


def _loss_torch(logits: torch.Tensor, target: torch.Tensor, target_b: Optional[torch.Tensor],
                lam: Optional[torch.Tensor], weight: Optional[torch.Tensor], ignore_index: int, reduction: str,
                label_smoothing: float, z_loss: float, lse: Optional[torch.Tensor], splits: int) -> torch.Tensor:
    """The loss (fp64 for fp64 logits, else fp32): a scalar, or the target's row shape for reduction="none".
    `lse`, when given (fp32, the row shape), receives each row's log-sum-exp."""
    return _loss(_forward_reference, logits, target, target_b, lam, weight, ignore_index, reduction,
                 label_smoothing, z_loss, lse, splits)


def _loss_with_grad_torch(logits: torch.Tensor, grad: torch.Tensor, target: torch.Tensor,
                          target_b: Optional[torch.Tensor], lam: Optional[torch.Tensor],
                          weight: Optional[torch.Tensor], ignore_index: int, reduction: str, label_smoothing: float,
                          z_loss: float, lse: Optional[torch.Tensor], splits: int,
                          grad_output: Optional[torch.Tensor]) -> torch.Tensor:
    """The loss; writes d loss / d logits for grad_output (None: 1) into `grad` (contiguous, logits' shape)."""
    return _loss_with_grad(_forward_reference, logits, grad, target, target_b, lam, weight, ignore_index, reduction,
                           label_smoothing, z_loss, lse, splits, grad_output)


def _loss_inplace_torch(logits: torch.Tensor, target: torch.Tensor, target_b: Optional[torch.Tensor],
                        lam: Optional[torch.Tensor], weight: Optional[torch.Tensor], ignore_index: int,
                        reduction: str, label_smoothing: float, z_loss: float, lse: Optional[torch.Tensor],
                        splits: int, grad_output: Optional[torch.Tensor]) -> torch.Tensor:
    """The loss; overwrites the (contiguous) logits with d loss / d logits for grad_output (None: 1)."""
    return _loss_inplace(_forward_reference, logits, target, target_b, lam, weight, ignore_index, reduction,
                         label_smoothing, z_loss, lse, splits, grad_output)


def _target_grad_torch(logits: torch.Tensor, grad: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                       reduction: str, label_smoothing: float, splits: int,
                       grad_output: Optional[torch.Tensor]) -> None:
    """Writes d loss / d target of probability targets (contiguous, the target's shape) into `grad`, for
    grad_output (None: 1): -(1 - e) w_c log p_c per element, reduced like the loss. The row's log-sum-exp
    comes from the logits in the same pass."""
    _target_grad(_forward_reference, logits, grad, target, weight, reduction, label_smoothing, splits, grad_output)


def _scale_grad_torch(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    """grad *= grad_output in place: a scalar, or one value per row (reduction="none")."""
    math_dtype = _math_dtype(grad)
    shape = (grad.shape[0], 1) + tuple(grad.shape[2:]) if grad_output.dim() > 0 else ()
    grad.copy_(grad.to(math_dtype) * grad_output.to(math_dtype).reshape(shape))


def _scale_grad_triton(grad, grad_output):
    if grad.numel() == 0:
        return
    num_classes = grad.shape[1]
    math_dtype = _math_dtype(grad)
    factor = grad_output if grad_output.dtype == math_dtype else grad_output.to(math_dtype)
    factor = factor if factor.is_contiguous() else factor.contiguous()
    # Up to SCALE_PROGRAMS_PER_SM per SM, but one per SM at least before each has SCALE_MIN_BLOCKS blocks:
    # a small gradient is not spread over programs that each do little besides starting.
    sm_count = _backend.sm_count(grad.device)
    programs = min(cdiv(grad.numel(), SCALE_BLOCK), SCALE_PROGRAMS_PER_SM * sm_count,
                   max(sm_count, cdiv(grad.numel(), SCALE_BLOCK * SCALE_MIN_BLOCKS)))
    launch(_scale_gradient_kernel, (programs,), grad, factor, grad.numel(), num_classes,
           grad.numel() // (grad.shape[0] * num_classes), cdiv(grad.numel(), programs * SCALE_BLOCK), num_warps=8,
           PER_ROW=grad_output.dim() > 0, BLOCK=SCALE_BLOCK)


def _scale_grad_cuda(grad, grad_output):
    if grad.numel() == 0:
        return
    num_classes = grad.shape[1]
    factor = grad_output.to(torch.float32).contiguous()
    _backend.launch_cuda(
        _backend._C.cross_entropy_scale_grad, grad.device, grad=grad.data_ptr(), factor=factor.data_ptr(),
        n=grad.numel(), num_classes=num_classes, inner_size=grad.numel() // (grad.shape[0] * num_classes),
        per_row=grad_output.dim() > 0, max_blocks=SCALE_PROGRAMS_PER_SM * _backend.sm_count(grad.device),
        dtype=_backend.CUDA_DTYPE_CODES[grad.dtype])


# ----------------------------------------------------------------------------- ops
# Five ops: the loss alone (no gradient wanted); the loss writing the gradient into a given buffer;
# the loss writing the gradient over the logits; a probability target's gradient into a given
# buffer; the in-place scaling of a gradient by grad_output. The gradient-writing ops mutate a
# tensor, which register_autograd does not accept, so the autograd.Functions below carry the
# autograd formulas (torch.compile traces them).

cross_entropy_op = Op("cross_entropy", torch=_loss_torch, **_kernel_implementations(_loss), mutates_args=("lse",))
cross_entropy_with_grad_op = Op("cross_entropy_with_grad_", torch=_loss_with_grad_torch,
                                **_kernel_implementations(_loss_with_grad), mutates_args=("grad", "lse"))
cross_entropy_inplace_op = Op("cross_entropy_inplace_", torch=_loss_inplace_torch,
                              **_kernel_implementations(_loss_inplace), mutates_args=("logits", "lse"))
cross_entropy_target_grad_op = Op("cross_entropy_target_grad_", torch=_target_grad_torch,
                                  **_kernel_implementations(_target_grad), mutates_args=("grad",))
scale_grad_op = Op("cross_entropy_scale_grad_", torch=_scale_grad_torch, triton=_scale_grad_triton,
                   cuda=_scale_grad_cuda, mutates_args=("grad",))


def _fake_loss(logits, reduction):
    """What the three loss ops return: in the math dtype, a scalar or one value per row."""
    return logits.new_empty(_row_shape(logits) if reduction == "none" else (), dtype=_math_dtype(logits))


@cross_entropy_op.register_fake
def _(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse, splits, backend):
    return _fake_loss(logits, reduction)


@cross_entropy_with_grad_op.register_fake
def _(logits, grad, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse, splits,
      grad_output, backend):
    return _fake_loss(logits, reduction)


@cross_entropy_inplace_op.register_fake
def _(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse, splits, grad_output,
      backend):
    return _fake_loss(logits, reduction)


@cross_entropy_target_grad_op.register_fake
def _(logits, grad, target, weight, reduction, label_smoothing, splits, grad_output, backend):
    return None


@scale_grad_op.register_fake
def _(grad, grad_output, backend):
    return None


# What backward may read again, in the order the Functions take them.
_HELD_INPUT_NAMES = ("logits", "target", "target_b", "lam", "weight")


def _hold_inputs(ctx, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss,
                 backend):
    """Keeps the forward's inputs for the backward paths that read them again: a backward that builds
    a graph (double backward), the gradient written in backward (float16, float64) and a probability
    target's gradient.

    They are held, not saved with save_for_backward, so that the usual backward, which reads only
    the gradient buffer, still allows them to change in place after the forward (as torch's does).
    Their version counters are noted (eagerly; dynamo cannot trace them) and checked when read.
    """
    ctx.held = (logits, target, target_b, lam, weight)
    ctx.held_versions = None if torch.compiler.is_compiling() else tuple(
        None if tensor is None else tensor._version for tensor in ctx.held)
    ctx.options = (ignore_index, reduction, label_smoothing, z_loss)
    ctx.backend = backend


def _held_inputs(ctx):
    """The forward's inputs, or a RuntimeError if any of them was modified in place since."""
    if ctx.held_versions is not None:
        for name, tensor, version in zip(_HELD_INPUT_NAMES, ctx.held, ctx.held_versions):
            if tensor is not None and tensor._version != version:
                raise RuntimeError(f"cross_entropy's backward needs the {name} as the forward saw them, but they "
                                   "were modified in place since; compute the loss after that modification")
    return ctx.held


def _differentiable_gradients(ctx, grad_loss):
    """d loss / d logits and d loss / d target in differentiable torch ops, recomputed from the held
    inputs (the reference formulas), for a backward that builds a graph: create_graph=True gives
    second derivatives. None for an input that needs no gradient."""
    logits, target, target_b, lam, weight = _held_inputs(ctx)
    ignore_index, reduction, label_smoothing, z_loss = ctx.options
    math_dtype = _math_dtype(logits)
    _, row_grad, denominator = reference.cross_entropy_rows(
        logits, target, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
        target_b=target_b, lam=lam, z_loss=z_loss, math_dtype=math_dtype)
    grad = grad_target = None
    if ctx.needs_input_grad[0]:
        grad = _scaled_reference_gradient(row_grad, denominator, grad_loss, reduction, target, target_b,
                                          ignore_index).to(logits.dtype)
    if ctx.needs_input_grad[1]:
        target_grad = reference.cross_entropy_target_gradient(logits, weight=weight, label_smoothing=label_smoothing,
                                                              math_dtype=math_dtype)
        grad_target = _scaled_reference_gradient(target_grad, denominator, grad_loss, reduction, target, target_b,
                                                 ignore_index).to(target.dtype)
    return grad, grad_target


def _target_gradient(ctx, grad_loss):
    """d loss / d target of a probability target for grad_output, from the held logits (one pass)."""
    logits, target, _, _, weight = _held_inputs(ctx)
    _, reduction, label_smoothing, _ = ctx.options
    grad = torch.empty_like(target, memory_format=torch.contiguous_format)
    cross_entropy_target_grad_op(logits, grad, target, weight, reduction, label_smoothing, 0, grad_loss, ctx.backend)
    return grad


def _scaled_saved_gradient(ctx, grad_loss):
    """The gradient the forward wrote, scaled in place by grad_output."""
    (grad,) = ctx.saved_tensors
    scale_grad_op(grad, grad_loss, ctx.backend)
    return grad


def _gradient_written_in_backward(ctx, grad_loss):
    """The gradient for grad_output, written now from the held logits in one pass (rounded once):
    into a new buffer, or over the logits themselves for inplace_backward=True."""
    logits, target, target_b, lam, weight = _held_inputs(ctx)
    ignore_index, reduction, label_smoothing, z_loss = ctx.options
    if ctx.gradient_into_logits:
        cross_entropy_inplace_op(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing,
                                 z_loss, None, 0, grad_loss, ctx.backend)
        return logits.detach()
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    cross_entropy_with_grad_op(logits, grad, target, target_b, lam, weight, ignore_index, reduction,
                               label_smoothing, z_loss, None, 0, grad_loss, ctx.backend)
    return grad


def _backward(ctx, grad_loss):
    """The backward of the Functions below: the gradients of the logits and of the target (None where
    not needed)."""
    if torch.is_grad_enabled():  # create_graph=True: the gradients must carry a graph
        if ctx.overwrote_logits:
            raise RuntimeError("double backward (create_graph=True) needs the logits, but inplace_backward=True "
                               "overwrote the logits with the gradient; use inplace_backward=False")
        return _differentiable_gradients(ctx, grad_loss)
    # The target's gradient reads the logits: first, before backward may write over them.
    grad_target = _target_gradient(ctx, grad_loss) if ctx.needs_input_grad[1] else None
    if not ctx.needs_input_grad[0]:
        grad = None
    elif ctx.gradient_written:
        grad = _scaled_saved_gradient(ctx, grad_loss)
    else:
        grad = _gradient_written_in_backward(ctx, grad_loss)
    return grad, grad_target


class CrossEntropyFunction(torch.autograd.Function):
    """The loss, with the gradient written by the forward into a new contiguous buffer.

    Backward scales that buffer in place by grad_output and hands it on: no second N x C
    allocation. Scaling bumps its version, so a second backward through the same graph
    (retain_graph) raises instead of scaling twice. In float16 (GRADIENT_IN_BACKWARD_DTYPES)
    the forward computes the loss alone and backward writes the gradient for grad_output,
    into a new buffer or (gradient_into_logits, inplace_backward=True) over the logits.
    A probability target's gradient is written in backward from the held logits. A backward
    that builds a graph (create_graph=True) recomputes the gradients from the held inputs in
    differentiable torch ops.
    """

    @staticmethod
    def forward(ctx, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse,
                backend, gradient_into_logits):
        ctx.gradient_written = ctx.needs_input_grad[0] and logits.dtype not in GRADIENT_IN_BACKWARD_DTYPES
        if ctx.gradient_written:
            grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
            loss = cross_entropy_with_grad_op(logits, grad, target, target_b, lam, weight, ignore_index, reduction,
                                              label_smoothing, z_loss, lse, 0, None, backend)
            ctx.save_for_backward(grad)
        else:
            loss = cross_entropy_op(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing,
                                    z_loss, lse, 0, backend)
        _hold_inputs(ctx, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss,
                     backend)
        ctx.gradient_into_logits = gradient_into_logits
        ctx.overwrote_logits = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return _backward(ctx, grad_loss) + (None,) * 10  # the other inputs get none


def _loss_writing_over_logits(ctx, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing,
                              z_loss, lse, backend):
    """The in-place Functions' forward: the loss, with the gradient written over the logits, saved for backward."""
    loss = cross_entropy_inplace_op(logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing,
                                    z_loss, lse, 0, None, backend)
    ctx.save_for_backward(logits)
    ctx.backend = backend
    ctx.gradient_written = ctx.overwrote_logits = True
    return loss


class CrossEntropyInplaceFunction(torch.autograd.Function):
    """inplace_backward=True: the logits' storage receives the gradient in the forward.

    The logits are marked dirty, so autograd raises if anything else saved them for its
    backward, instead of handing it a gradient where it expects logits. Double backward
    raises: the logits it would need are gone.
    """

    @staticmethod
    def forward(ctx, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse,
                backend):
        loss = _loss_writing_over_logits(ctx, logits, target, target_b, lam, weight, ignore_index, reduction,
                                         label_smoothing, z_loss, lse, backend)
        ctx.mark_dirty(logits)
        return loss, logits  # autograd wants the dirty tensor among the outputs

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_overwritten_logits):
        return _backward(ctx, grad_loss) + (None,) * 9


class CrossEntropyInplaceViewFunction(torch.autograd.Function):
    """inplace_backward=True for logits that are a view (say logits.view(-1, C) of a model's output).

    Autograd refuses a Function that modifies a view in place and returns two tensors, and
    mark_dirty needs the modified tensor among the outputs; so this one returns the loss alone
    and leaves the logits unmarked. The op's write still bumps their version counter: anything
    that saved the logits (or their base) for its backward raises, as with the other Function.
    """

    @staticmethod
    def forward(ctx, logits, target, target_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse,
                backend):
        return _loss_writing_over_logits(ctx, logits, target, target_b, lam, weight, ignore_index, reduction,
                                         label_smoothing, z_loss, lse, backend)

    @staticmethod
    def backward(ctx, grad_loss):
        return _backward(ctx, grad_loss) + (None,) * 9


# ----------------------------------------------------------------------------- public API


def _check_logits(logits):
    _checks.floating(logits, "logits", FLOAT_DTYPES)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, C) or (N, C, d1, ..., dk), got {tuple(logits.shape)}; "
                         "for a single sample use logits[None]")
    if logits.shape[1] == 0:
        raise ValueError(f"logits have no classes (shape {tuple(logits.shape)}, C = 0); cross-entropy needs C >= 1")


def _index_shape_error(logits, target):
    return ValueError(f"target has shape {tuple(target.shape)} but logits {tuple(logits.shape)} need class "
                      f"indices of shape {_row_shape(logits)} or probabilities of shape {tuple(logits.shape)}")


def _check_target(logits, target):
    """(y_a, y_b, lam) with y_b and lam None unless target is a MixedTarget."""
    if isinstance(target, MixedTarget):
        if tuple(target.shape) != _row_shape(logits):
            raise ValueError(f"MixedTarget has shape {tuple(target.shape)} but logits {tuple(logits.shape)} "
                             f"need {_row_shape(logits)}")
        if target.device != logits.device:
            raise ValueError(f"MixedTarget is on {target.device} but logits are on {logits.device}")
        return target.y_a, target.y_b, target.per_sample_lam()
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor or a MixedTarget, got {type(target).__name__}")
    _checks.same_device(target, "target", logits, "logits")
    if target.is_floating_point():
        if target.dim() != logits.dim() or target.shape[0] != logits.shape[0] or \
                tuple(target.shape[2:]) != tuple(logits.shape[2:]):
            raise _index_shape_error(logits, target)
        if target.shape[1] != logits.shape[1]:
            raise ValueError(f"probability target has {target.shape[1]} classes but logits have "
                             f"{logits.shape[1]}")
        _checks.floating(target, "probability target", FLOAT_DTYPES)
        return target, None, None
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"class-index target must be an integer tensor, got {target.dtype}")
    if tuple(target.shape) != _row_shape(logits):
        raise _index_shape_error(logits, target)
    return target if target.dtype == torch.int64 else target.to(torch.int64), None, None


def _may_receive_gradient(logits):
    """Whether inplace_backward=True may write the gradient into the logits' storage (they are contiguous
    and neither a leaf nor a view of one). Not when they are a view of part of a tensor: split, chunk,
    unbind, tensor_split or slicing give sibling views, which share the base's version counter, so
    writing into one makes the other's backward raise; and not when autograd forbids in-place writes
    to the view (outputs of split/chunk/unbind, views made under no_grad), as it does for any in-place op.
    Those logits get a separate gradient buffer instead, decided before anything is written."""
    base = logits._base
    if base is None:
        return True
    if logits.numel() != base.numel():
        return False
    # Dynamo cannot trace the creation record; under torch.compile such a view fails its tracing
    # (on fake tensors, before anything runs).
    return torch.compiler.is_compiling() or \
        torch._C._autograd._get_creation_meta(logits) == torch._C._autograd.CreationMeta.DEFAULT


def _validate_indices(num_classes, indices, ignore_index):
    """Host-side range check (syncs the device): only with validate=True."""
    for y, allowed_ignore in indices:
        bad = (y < 0) | (y >= num_classes)
        if allowed_ignore:
            bad &= y != ignore_index
        if bool(bad.any()):
            value = int(y[bad].flatten()[0])
            raise ValueError(f"target holds class index {value}, outside [0, {num_classes})"
                             + (f" and not ignore_index={ignore_index}" if allowed_ignore else ""))


def _validate_lam(lam):
    """Host-side check that a MixedTarget's lam lies in [0, 1] (syncs the device): only with validate=True."""
    bad = ~((lam >= 0) & (lam <= 1))  # NaN is bad too
    if bool(bad.any()):
        raise ValueError(f"MixedTarget: lam holds {float(lam[bad].flatten()[0])}, outside [0, 1]")


def cross_entropy(input: torch.Tensor, target: Union[torch.Tensor, MixedTarget], weight: Optional[torch.Tensor] = None,
                  size_average: Optional[bool] = None, ignore_index: int = -100, reduce: Optional[bool] = None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                  return_lse: bool = False, inplace_backward: bool = False, validate: bool = False,
                  backend: Optional[str] = None) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """F.cross_entropy(input, target, ...) in one pass over the logits, gradient included.

    Takes F.cross_entropy's arguments, positionally and by keyword; the legacy size_average and
    reduce set the reduction by torch's rules, with torch's deprecation warning. The package's
    own options are keyword-only.
    input (the logits): (N, C) or (N, C, d1, ..., dk), float32/float16/bfloat16 with fp32 math and
    a float32 loss, or float64 with fp64 math and a float64 loss (not on the CUDA backend).
    target: int64 class indices (N, d1, ...), class probabilities of logits' shape, or a
    MixedTarget (per row lam CE(y_a) + (1 - lam) CE(y_b), equal to CE against
    target.dense(C, label_smoothing) with `mean` over rows, and never building it).
    Semantics of weight, ignore_index, reduction and label_smoothing are torch's.

    A class index outside [0, C) (and not ignore_index) gives NaN for its row on the GPU
    backends (no out-of-bounds access); the torch backend raises as torch does; with
    validate=True (one host sync) every backend raises ValueError, as it does for a tensor
    lam of a MixedTarget outside [0, 1]. A row whose target is ignore_index has loss and
    gradient exactly 0 even if its logits hold NaN or inf (torch's gradient is NaN there).
    inplace_backward=True writes the gradient into the logits' storage (they may be a view of a
    whole tensor, such as logits.view(-1, C), but neither a leaf nor a view of one: ValueError;
    nothing else may need them: autograd raises if something does); non-contiguous logits and
    views of part of a tensor (split, chunk, unbind, tensor_split, slices) fall back to a
    separate gradient buffer.
    A probability target that requires grad gets torch's gradient, -(1 - e) w_c log p_c per element
    reduced like the loss. Second derivatives (create_graph=True) are torch's.
    Backward through the same loss twice (retain_graph) raises where the forward wrote the gradient
    (float32, bfloat16): its buffer is scaled in place.
    z_loss >= 0 adds z_loss * lse^2 to the loss of every counted row (PaLM's auxiliary loss; lse the
    row's log-sum-exp; not ignored rows, unweighted), reduced with the rest (the `mean` denominator
    is unchanged), in the same pass; its gradient is 2 z_loss lse p_c. return_lse=True returns
    (loss, lse) with lse the per-row log-sum-exp in float32, the target's row shape, with no gradient.
    """
    logits = input
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)  # warns as torch does
    _check_logits(logits)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    label_smoothing = _checks.probability(label_smoothing, "label_smoothing")
    z_loss = _checks.positive(z_loss, "z_loss", allow_zero=True)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    num_classes = logits.shape[1]
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.shape[0] != num_classes:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"weight must be a 1-D tensor of {num_classes} class weights, got {shape}")
        _checks.same_device(weight, "weight", logits, "logits")
        if weight.requires_grad and torch.is_grad_enabled():
            raise ValueError("gradients with respect to weight are not supported (torch has none either); "
                             "pass weight.detach()")
    y_a, y_b, lam = _check_target(logits, target)
    if validate and not y_a.is_floating_point():
        if y_b is None:
            _validate_indices(num_classes, [(y_a, True)], ignore_index)
        else:
            _validate_indices(num_classes, [(y_a, False), (y_b, False)], ignore_index)
            _validate_lam(lam)
    backend = _backend.resolve("cross_entropy", logits.device, backend)
    if backend == "cuda" and logits.dtype not in _backend.CUDA_DTYPE_CODES:
        raise TypeError(f"the CUDA cross-entropy kernels take float32, float16 or bfloat16 logits, got {logits.dtype}; "
                        "use backend='triton' or 'torch' for float64")
    weight = None if weight is None else weight.to(_math_dtype(logits))
    lam = None if lam is None else lam.to(_math_dtype(logits))
    lse = torch.empty(_row_shape(logits), dtype=torch.float32, device=logits.device) if return_lse else None
    loss = _loss_through_autograd(logits, y_a, y_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss,
                                  lse, backend, inplace_backward)
    return (loss, lse) if return_lse else loss


def _loss_through_autograd(logits, y_a, y_b, lam, weight, ignore_index, reduction, label_smoothing, z_loss, lse,
                           backend, inplace_backward):
    """The loss through the op or autograd.Function the call needs (see cross_entropy)."""
    target_needs_grad = y_a.requires_grad  # only probabilities can
    options = (ignore_index, reduction, label_smoothing, z_loss, lse)
    if not (torch.is_grad_enabled() and (logits.requires_grad or target_needs_grad)):
        return cross_entropy_op(logits, y_a, y_b, lam, weight, *options, 0, backend)
    if inplace_backward and logits.requires_grad and logits.is_contiguous():
        if (logits if logits._base is None else logits._base).is_leaf:  # torch refuses in-place writes to leaves
            raise ValueError("inplace_backward=True would overwrite a leaf tensor that requires grad (the logits "
                             "or the tensor they view); pass logits computed from it, or inplace_backward=False")
        # Logits that cannot take the gradient get a separate buffer (below). A target that needs its
        # gradient reads them in backward, so they must stay until then: only float16, whose backward
        # writes over them after that, keeps them in place.
        writable = _may_receive_gradient(logits)
        if writable and logits.dtype in GRADIENT_IN_BACKWARD_DTYPES:  # the forward leaves them be
            return apply_function(CrossEntropyFunction, logits, y_a, y_b, lam, weight, *options, backend, True)
        if writable and not target_needs_grad:
            if logits._base is not None:
                return apply_function(CrossEntropyInplaceViewFunction, logits, y_a, y_b, lam, weight, *options, backend)
            loss, _ = apply_function(CrossEntropyInplaceFunction, logits, y_a, y_b, lam, weight, *options, backend)
            return loss
    return apply_function(CrossEntropyFunction, logits, y_a, y_b, lam, weight, *options, backend, False)
