"""Inverted dropout, dropout fused with bias and residual, and stochastic depth (drop path).

Top to bottom: Triton kernels; the implementations, one per backend (torch, Triton, CUDA) for
each op, all taking the op's arguments; the ops (_ops.Op: the backend table, fakes, autograd);
public functions. A call takes three hops from the public function to the kernel:

    dropout()  ->  dropout_op (the table picks the backend)  ->  _dropout_triton  ->  _dropout_kernel
                                                             ->  _dropout_cuda    ->  _C.dropout

Each public call draws one seed on the device; the mask is regenerated from it in backward,
so autograd saves 8 bytes, never a mask.

Bytes moved per element (s = element size): dropout 2s each way, in place too; dropout_add 3s
forward (x, residual, out) and 2s backward (grad in, grad_x out; grad_residual is the
incoming grad itself); drop_path_add 3s forward for kept samples, 2s for dropped ones. With
mixed dtypes each tensor counts its own size (a residual of another dtype than the result
gets its gradient through one cast).

Each input is read in its own dtype; the math runs in fp32, or in fp64 when any operand is
float64, and the result is rounded once.
"""
import functools
import struct
from typing import Optional

import torch
import triton
import triton.language as tl

from recipe_kernels import _backend, _checks, reference
from recipe_kernels._ops import Op, apply_function, launch
from recipe_kernels._philox import PHILOX_ROUNDS, KEEP_BITS, draw_seed, drop_threshold, keep_from_bits, keep_scale
from recipe_kernels._triton_common import cdiv, round_to

# Elements per Triton program of dropout: 8 warps x 32 threads x 2 rows of 8 elements (four Philox
# calls a thread: per-thread costs, the key schedule among them, spread over more elements).
BLOCK = 4096
# drop_path's programs: 8 warps x 32 threads x 8 elements.
DROP_PATH_BLOCK = 2048
NUM_WARPS = 8
# From this many bias elements on, a program's BLOCK elements wrap around the bias at most once, and
# the forward kernel finds each bias column with one conditional subtract (exact at any size);
# smaller biases take the fp32-reciprocal quotient, exact below 2^24.
WIDE_BIAS_NUMEL = BLOCK
# Columns per program of the fused bias backward; must equal kBiasBackwardColumns in csrc/dropout.cu.
BIAS_BACKWARD_COLUMNS = 1024
BIAS_BACKWARD_NUM_WARPS = 4
# Rows of the bias backward whose loads a thread has in flight at once (Little's law: one 16-byte
# row is too few bytes per SM to hide DRAM latency).
BIAS_BACKWARD_ROWS_IN_FLIGHT = 2
# The bias backward's grid aims at about this many programs, so the GPU is full while the partial sums stay small.
BIAS_BACKWARD_PROGRAMS = 1024
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y

# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _philox_words_x4(seed, counters, PHILOX_ROUNDS: tl.constexpr):
    """The four Philox words of each counter, as a [len(counters), 4] block: word j of counter g
    belongs to element 4*g + j (the RNG contract in _philox.py). tl.join keeps a row's words
    in one thread, in element order, without selects."""
    r0, r1, r2, r3 = tl.randint4x(seed, counters, PHILOX_ROUNDS)
    # join(join(a, c), join(b, d)) flattens to a, b, c, d.
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [counters.shape[0], 4])


@triton.jit
def _philox_words_x8_from(seed, counters, PHILOX_ROUNDS: tl.constexpr):
    """The words of counters c and c + 1 for each c in `counters`, as a [len(counters), 8] block:
    eight consecutive elements a row, so that a thread moves 16 bytes of bf16 at once."""
    first = _philox_words_x4(seed, counters, PHILOX_ROUNDS)
    second = _philox_words_x4(seed, counters + 1, PHILOX_ROUNDS)
    return tl.reshape(tl.join(first, second).permute(0, 2, 1), [counters.shape[0], 8])


@triton.jit
def _philox_words_x8(seed, pairs, PHILOX_ROUNDS: tl.constexpr):
    """The words of elements 8*p .. 8*p + 7 for each p in `pairs` (counters 2p and 2p + 1)."""
    return _philox_words_x8_from(seed, pairs * 2, PHILOX_ROUNDS)


@triton.jit
def _kept(words, keep_from):
    """The keep decision of the RNG contract, (word >> 8) >= drop_threshold, as one unsigned
    compare: word >= drop_threshold << 8 (keep_from, see keep_from_bits)."""
    return words >= keep_from.to(tl.uint32, bitcast=True)


@triton.jit
def _scale_from_bits(scale_bits, MATH_DTYPE: tl.constexpr):
    """The scale 1/(1-p) in MATH_DTYPE, passed as the bits of a double (see _scale_bits)."""
    return scale_bits.to(tl.int64).to(tl.float64, bitcast=True).to(MATH_DTYPE)


@triton.jit
def _round_result(value, dtype: tl.constexpr):
    """An fp32 or fp64 value rounded to `dtype`; fp64 reaches the narrower dtypes through fp32, as torch's casts do."""
    if dtype != tl.float64:
        value = value.to(tl.float32)
    return round_to(value, dtype)


@triton.jit
def _dropout_kernel(x_ptr, residual_ptr, bias_ptr, seed_ptr, out_ptr, n_elements, bias_numel,
                    inverse_bias_numel, keep_from, scale_bits,
                    HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_MULTIPLE_OF_8: tl.constexpr,
                    WIDE_BIAS: tl.constexpr, MATH_DTYPE: tl.constexpr, INDEX_DTYPE: tl.constexpr,
                    BLOCK: tl.constexpr, PHILOX_ROUNDS: tl.constexpr):
    """out = residual + (x + bias) * keep / (1 - p) over n_elements contiguous elements.

    Inputs: x (n), residual (n, optional), bias (its bias_numel elements repeat along x,
    optional), seed (one int64), each in its own dtype; the math runs in MATH_DTYPE (fp32, or
    fp64 for float64 ops) and out is rounded once. Indices and Philox counters are INDEX_DTYPE:
    int32 where every index fits (32-bit address math, and a counter's high word is the constant
    0), else int64. Bytes: reads x and residual, writes out
    once each; the bias stays in cache. Per element: a quarter of a Philox call (7 rounds: 3.5
    multiplies and 1.75 three-way xors), a compare, a select and one multiply
    (benchmarks/static_model.py counts them in the sm_90 code).
    """
    # 1. Rows of eight consecutive elements, two Philox calls each (a thread takes two rows).
    pid = tl.program_id(0).to(INDEX_DTYPE)
    pairs = pid * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
    words = _philox_words_x8(tl.load(seed_ptr), pairs, PHILOX_ROUNDS)
    # 2. Keep decision (the RNG contract), and its multiplier: dropped elements are multiplied by 0
    # as in torch (NaN stays NaN).
    multiplier = tl.where(_kept(words, keep_from), _scale_from_bits(scale_bits, MATH_DTYPE), 0.0)
    # 3. Load, scale, add in MATH_DTYPE, store.
    offsets = pairs[:, None] * 8 + tl.arange(0, 8)[None, :]
    in_bounds = offsets < n_elements
    value = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0).to(MATH_DTYPE)
    if HAS_BIAS:
        # The bias column, column = (first_column + local) mod bias_numel: one modulo per
        # program, then per element (an integer modulo would cost about 30 instructions and make
        # the kernel compute-bound) either
        # - WIDE_BIAS (bias_numel >= BLOCK): position < 2 * bias_numel, so one conditional
        #   subtract, exact at any size (in INDEX_DTYPE, which holds position); or
        # - a quotient from the fp32 reciprocal, off by at most one and corrected: exact because
        #   position < bias_numel + BLOCK < 2 * BLOCK < 2^24.
        first_column = (pid * BLOCK) % bias_numel
        if not WIDE_BIAS:
            first_column = first_column.to(tl.int32)
        if BIAS_MULTIPLE_OF_8:  # eight elements never wrap: one column per eight, 16-byte loads
            position = first_column + tl.arange(0, BLOCK // 8) * 8
        else:
            position = first_column + tl.arange(0, BLOCK // 8)[:, None] * 8 + tl.arange(0, 8)[None, :]
        if WIDE_BIAS:
            columns = tl.where(position >= bias_numel, position - bias_numel, position)
        else:
            columns = position - (position.to(tl.float32) * inverse_bias_numel).to(tl.int32) * bias_numel
            columns = tl.where(columns < 0, columns + bias_numel, columns)
            columns = tl.where(columns >= bias_numel, columns - bias_numel, columns)
        if BIAS_MULTIPLE_OF_8:
            columns = tl.multiple_of(columns, 8)[:, None] + tl.arange(0, 8)[None, :]
        value += tl.load(bias_ptr + columns, mask=in_bounds, other=0.0).to(MATH_DTYPE)
    out = value * multiplier
    if HAS_RESIDUAL:
        out += tl.load(residual_ptr + offsets, mask=in_bounds, other=0.0).to(MATH_DTYPE)
    tl.store(out_ptr + offsets, _round_result(out, out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _drop_path_kernel(x_ptr, residual_ptr, seed_ptr, out_ptr, row_size, blocks_per_row,
                      drop_threshold, scale_bits,
                      HAS_RESIDUAL: tl.constexpr, MATH_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                      KEEP_BITS: tl.constexpr, PHILOX_ROUNDS: tl.constexpr):
    """out = residual + x * keep[row] / (1 - p) for rows of row_size contiguous elements.

    Inputs: x and residual (optional) as (rows, row_size), seed (one int64). keep[row] is
    the dropout decision of element `row` of a (rows,) tensor. Each tensor has its own dtype;
    the math runs in MATH_DTYPE. Bytes: a kept row reads x and residual and writes out; a
    dropped row never reads x.
    """
    pid = tl.program_id(0).to(tl.int64)
    row = pid // blocks_per_row
    columns = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    # 1. The row's Philox word: word row & 3 of the call with counter row >> 2.
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), row >> 2, PHILOX_ROUNDS)
    lane = row & 3
    word = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    keep = (word >> (32 - KEEP_BITS)).to(tl.int32) >= drop_threshold
    # 2. A dropped row's x is masked off the load entirely.
    in_row = columns < row_size
    offsets = row * row_size + columns
    scale = _scale_from_bits(scale_bits, MATH_DTYPE)
    out = tl.load(x_ptr + offsets, mask=in_row & keep, other=0.0).to(MATH_DTYPE) * scale
    if HAS_RESIDUAL:
        out += tl.load(residual_ptr + offsets, mask=in_row, other=0.0).to(MATH_DTYPE)
    tl.store(out_ptr + offsets, _round_result(out, out_ptr.dtype.element_ty), mask=in_row)


@triton.jit
def _dropout_bias_backward_kernel(grad_ptr, seed_ptr, grad_x_ptr, partial_ptr, rows, columns,
                                  keep_from, scale_bits, MATH_DTYPE: tl.constexpr,
                                  ROWS_PER_PROGRAM: tl.constexpr, ROWS_IN_FLIGHT: tl.constexpr,
                                  BLOCK_COLUMNS: tl.constexpr, INDEX_DTYPE: tl.constexpr,
                                  PHILOX_ROUNDS: tl.constexpr):
    """Backward of dropout_add with a bias, in one pass: grad_x = grad * keep / (1 - p) and its column sums.

    Inputs: grad as (rows, columns) with columns % 4 == 0 (so a Philox group never straddles
    two rows), seed (one int64). Program (i, j) takes ROWS_PER_PROGRAM rows of column block j,
    ROWS_IN_FLIGHT rows at a time (their loads in flight together), eight consecutive columns
    a thread (16-byte loads of 16-bit types), and writes its column sums (MATH_DTYPE, the math's
    precision; rows added in order) to partial[i, columns]. Bytes: reads grad and writes grad_x
    once; partial is (rows / ROWS_PER_PROGRAM) x columns, a few % of grad.
    """
    row_block = tl.program_id(0).to(INDEX_DTYPE)
    # Pairs of Philox groups (eight columns) of this program, counted within a row.
    first_group = (tl.program_id(1) * (BLOCK_COLUMNS // 8) + tl.arange(0, BLOCK_COLUMNS // 8)) * 2
    column = first_group[:, None] * 4 + tl.arange(0, 8)[None, :]
    in_columns = column < columns
    seed = tl.load(seed_ptr)
    column_sums = tl.zeros([BLOCK_COLUMNS // 8, 8], dtype=MATH_DTYPE)
    multiplier_if_kept = _scale_from_bits(scale_bits, MATH_DTYPE)
    for step in range(0, ROWS_PER_PROGRAM, ROWS_IN_FLIGHT):
        for in_flight in tl.static_range(ROWS_IN_FLIGHT):
            row = row_block * ROWS_PER_PROGRAM + step + in_flight
            keep = _kept(_philox_words_x8_from(seed, row * (columns // 4) + first_group, PHILOX_ROUNDS), keep_from)
            offsets = row * columns + column
            mask = in_columns & (row < rows)
            grad_x = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(MATH_DTYPE) * tl.where(
                keep, multiplier_if_kept, 0.0)
            tl.store(grad_x_ptr + offsets, _round_result(grad_x, grad_x_ptr.dtype.element_ty), mask=mask)
            column_sums += grad_x
    tl.store(partial_ptr + row_block * columns + column, column_sums, mask=in_columns)


# ----------------------------------------------------------------------------- implementations
# One per backend for each op, all taking the op's arguments; the torch one's type hints are the op's
# schema. Inputs may have any layout: each implementation makes them contiguous before a kernel walks
# raw pointers over them (autograd hands expanded, stride-0 gradients).


def _math_dtype(*operands):
    """float64 when any operand (a tensor or a dtype; None for an absent one) is float64, so that
    float64 ops keep their precision; float32 otherwise."""
    for operand in operands:
        if operand is not None and (operand if type(operand) is torch.dtype else operand.dtype) is torch.float64:
            return torch.float64
    return torch.float32


def _index_dtype(numel):
    """The kernels' index type for numel elements: int32 while every index a program forms fits."""
    return torch.int32 if numel + BLOCK < 1 << 31 else torch.int64


@functools.lru_cache(maxsize=256)  # a run uses a few p values; packing costs more than a cache hit
def _scale_bits(p, math_dtype):
    """keep_scale(p, math_dtype) as the int64 bit pattern of a double: Triton types a Python float
    argument as fp32 (and its interpreter rounds one there), which float64 ops cannot afford."""
    return struct.unpack("<q", struct.pack("<d", keep_scale(p, math_dtype)))[0]


def _contiguous(tensor):
    return None if tensor is None else tensor.contiguous()


def _new_like(x, dtype):
    """A new contiguous tensor of x's shape in `dtype`: every op's output (fakes included)."""
    return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)


def _kernel_operands(x, residual, bias, out_dtype, out=None):
    """(x, residual, bias, out) for a kernel: the inputs contiguous, and `out`, or a new contiguous
    tensor of x's shape in out_dtype."""
    x, residual, bias = x.contiguous(), _contiguous(residual), _contiguous(bias)
    return x, residual, bias, (_new_like(x, out_dtype) if out is None else out)


def _typed(name, tensor):
    """{name: data pointer, name_dtype: dtype code} for the _C launchers; zeros for an absent tensor."""
    if tensor is None:
        return {name: 0, f"{name}_dtype": 0}
    return {name: tensor.data_ptr(), f"{name}_dtype": _backend.CUDA_DTYPE_CODES_WITH_FLOAT64[tensor.dtype]}


# The *_cuda_arguments functions build every keyword argument of a _C launcher but the stream; the
# tests hand the same arguments to the _C.*_host entry points, which run the kernels' thread code on
# CPU tensors.

# --- dropout: residual + (x + bias) * keep / (1 - p)


def _dropout_torch(x: torch.Tensor, residual: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   seed: torch.Tensor, p: float, out_dtype: torch.dtype) -> torch.Tensor:
    """residual + (x + bias) * keep / (1 - p); residual and bias may be None. Each input is read in
    its own dtype; the result is rounded once to out_dtype. Output is contiguous."""
    x, residual, bias = x.contiguous(), _contiguous(residual), _contiguous(bias)
    out = reference.dropout(x, seed, p, residual=residual, bias=bias,
                            math_dtype=_math_dtype(x, residual, bias, out_dtype))
    return out.to(out_dtype).contiguous()


def _dropout_triton(x, residual, bias, seed, p, out_dtype, out=None):
    """As _dropout_torch; `out` (contiguous), when given, is written instead of a new tensor."""
    x, residual, bias, out = _kernel_operands(x, residual, bias, out_dtype, out)
    numel = x.numel()
    if numel > 0:
        bias_numel = bias.numel() if bias is not None else 1
        math_dtype = _math_dtype(x, residual, bias, out)
        launch(_dropout_kernel, (cdiv(numel, BLOCK),),  # an absent residual or bias is None: a constexpr to Triton
               x, residual, bias, seed, out, numel, bias_numel, 1.0 / bias_numel, keep_from_bits(p),
               _scale_bits(p, math_dtype), num_warps=NUM_WARPS, HAS_RESIDUAL=residual is not None,
               HAS_BIAS=bias is not None, BIAS_MULTIPLE_OF_8=bias_numel % 8 == 0,
               WIDE_BIAS=bias_numel >= WIDE_BIAS_NUMEL, MATH_DTYPE=math_dtype, INDEX_DTYPE=_index_dtype(numel),
               BLOCK=BLOCK, PHILOX_ROUNDS=PHILOX_ROUNDS)
    return out


def _dropout_cuda_arguments(x, residual, bias, seed, out, p):
    math_dtype = _math_dtype(x, residual, bias, out)
    return dict(**_typed("x", x), **_typed("residual", residual), **_typed("bias", bias), seed=seed.data_ptr(),
                **_typed("out", out), n=x.numel(), bias_numel=bias.numel() if bias is not None else 1,
                drop_threshold=drop_threshold(p), scale=keep_scale(p, math_dtype),
                fp64_math=math_dtype == torch.float64)


def _dropout_cuda(x, residual, bias, seed, p, out_dtype, out=None):
    """As _dropout_torch; `out` (contiguous), when given, is written instead of a new tensor."""
    x, residual, bias, out = _kernel_operands(x, residual, bias, out_dtype, out)
    if x.numel() > 0:
        _backend.launch_cuda(_backend._C.dropout, x.device,
                             **_dropout_cuda_arguments(x, residual, bias, seed, out, p))
    return out


# --- dropout_: x = x * keep / (1 - p) in place


def _dropout_inplace_torch(x: torch.Tensor, seed: torch.Tensor, p: float) -> None:
    x.copy_(_dropout_torch(x, None, None, seed, p, x.dtype))


def _dropout_inplace_with(kernel_implementation, x, seed, p):
    """In place through _dropout_triton or _dropout_cuda: a contiguous x is the kernel's own output,
    one pass (each element is read, then written, by the same program or thread); any other layout
    goes through a contiguous result copied back."""
    if x.is_contiguous():
        kernel_implementation(x, None, None, seed, p, x.dtype, out=x)
    else:
        x.copy_(kernel_implementation(x, None, None, seed, p, x.dtype))


# --- drop_path: residual + x * keep[sample] / (1 - p)


def _drop_path_torch(x: torch.Tensor, residual: Optional[torch.Tensor], seed: torch.Tensor, p: float,
                     out_dtype: torch.dtype) -> torch.Tensor:
    """residual + x * keep[sample] / (1 - p), one keep per index along dim 0, rounded once to
    out_dtype. Output is contiguous."""
    x, residual = x.contiguous(), _contiguous(residual)
    out = reference.drop_path(x, seed, p, residual=residual, math_dtype=_math_dtype(x, residual, out_dtype))
    return out.to(out_dtype).contiguous()


def _drop_path_triton(x, residual, seed, p, out_dtype):
    x, residual, _, out = _kernel_operands(x, residual, None, out_dtype)
    if x.numel() > 0:
        row_size = x.numel() // x.shape[0]
        blocks_per_row = cdiv(row_size, DROP_PATH_BLOCK)
        math_dtype = _math_dtype(x, residual, out)
        launch(_drop_path_kernel, (x.shape[0] * blocks_per_row,),
               x, residual, seed, out, row_size, blocks_per_row,  # an absent residual is None, as in dropout
               drop_threshold(p), _scale_bits(p, math_dtype), num_warps=NUM_WARPS,
               HAS_RESIDUAL=residual is not None, MATH_DTYPE=math_dtype,
               BLOCK=DROP_PATH_BLOCK, KEEP_BITS=KEEP_BITS, PHILOX_ROUNDS=PHILOX_ROUNDS)
    return out


def _drop_path_cuda_arguments(x, residual, seed, out, p):
    math_dtype = _math_dtype(x, residual, out)
    return dict(**_typed("x", x), **_typed("residual", residual), seed=seed.data_ptr(), **_typed("out", out),
                rows=x.shape[0], row_size=x.numel() // x.shape[0], drop_threshold=drop_threshold(p),
                scale=keep_scale(p, math_dtype), fp64_math=math_dtype == torch.float64)


def _drop_path_cuda(x, residual, seed, p, out_dtype):
    x, residual, _, out = _kernel_operands(x, residual, None, out_dtype)
    if x.numel() > 0:
        _backend.launch_cuda(_backend._C.drop_path, x.device, **_drop_path_cuda_arguments(x, residual, seed, out, p))
    return out


# --- dropout_bias_backward: grad_x = grad * keep / (1 - p) and its sums over bias-sized rows


@functools.lru_cache(maxsize=256)  # a pure function of two ints, on every backward
def _bias_backward_row_blocks(rows, columns):
    """(row blocks, rows per block) for the bias backward: about BIAS_BACKWARD_PROGRAMS programs in
    all, at most MAX_GRID_Y row blocks.

    Rows per block is a power of two because the Triton kernel takes it as a constexpr
    (few variants to compile; and the interpreter cannot loop to a runtime bound with numpy 2.4).
    """
    column_blocks = cdiv(columns, BIAS_BACKWARD_COLUMNS)
    rows_per_block = max(cdiv(rows, max(1, BIAS_BACKWARD_PROGRAMS // column_blocks)),
                         cdiv(rows, MAX_GRID_Y), 1)
    rows_per_block = 1 << (rows_per_block - 1).bit_length()  # the next power of two
    return cdiv(rows, rows_per_block), rows_per_block


def _bias_backward_in_two_passes(dropout_implementation, grad, seed, p, bias_numel, grad_x_dtype):
    """grad_x through dropout_implementation in the math's precision, its row sums, then grad_x rounded:
    the torch backend, and the bias sizes the fused kernels do not take."""
    math_dtype = _math_dtype(grad, grad_x_dtype)
    grad_x = dropout_implementation(grad, None, None, seed, p, math_dtype)
    rows = grad.numel() // bias_numel if bias_numel else 0
    return grad_x.to(grad_x_dtype), grad_x.reshape(rows, bias_numel).sum(0)


def _fused_bias_backward_buffers(grad, bias_numel, grad_x_dtype):
    """(grad, grad_x, partial, rows per block) for the fused kernels: grad contiguous, grad_x like it
    in grad_x_dtype, partial column sums (row blocks, bias_numel) in the math's precision."""
    row_blocks, rows_per_block = _bias_backward_row_blocks(grad.numel() // bias_numel, bias_numel)
    grad = grad.contiguous()
    grad_x = _new_like(grad, grad_x_dtype)
    partial = torch.empty(row_blocks, bias_numel, dtype=_math_dtype(grad, grad_x_dtype), device=grad.device)
    return grad, grad_x, partial, rows_per_block


def _fused_bias_backward_unfit(grad, bias_numel):
    """Whether the fused kernels cannot take this gradient: its Philox groups of four would straddle
    two rows (bias_numel % 4 != 0), or it is empty."""
    return bias_numel % 4 != 0 or grad.numel() == 0


def _dropout_bias_backward_torch(grad: torch.Tensor, seed: torch.Tensor, p: float, bias_numel: int,
                                 grad_x_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_bias): grad_x = grad * keep / (1 - p) in grad_x_dtype, and its sums over every
    bias_numel-sized row in the math's precision (fp32, fp64 for float64)."""
    return _bias_backward_in_two_passes(_dropout_torch, grad, seed, p, bias_numel, grad_x_dtype)


def _dropout_bias_backward_triton(grad, seed, p, bias_numel, grad_x_dtype):
    """As _dropout_bias_backward_torch, in one pass over grad (then a sum over the small partial sums)."""
    if _fused_bias_backward_unfit(grad, bias_numel):
        return _bias_backward_in_two_passes(_dropout_triton, grad, seed, p, bias_numel, grad_x_dtype)
    grad, grad_x, partial, rows_per_block = _fused_bias_backward_buffers(grad, bias_numel, grad_x_dtype)
    launch(_dropout_bias_backward_kernel, (partial.shape[0], cdiv(bias_numel, BIAS_BACKWARD_COLUMNS)),
           grad, seed, grad_x, partial, grad.numel() // bias_numel, bias_numel, keep_from_bits(p),
           _scale_bits(p, partial.dtype), num_warps=BIAS_BACKWARD_NUM_WARPS,
           MATH_DTYPE=partial.dtype, ROWS_PER_PROGRAM=rows_per_block,
           ROWS_IN_FLIGHT=min(BIAS_BACKWARD_ROWS_IN_FLIGHT, rows_per_block), BLOCK_COLUMNS=BIAS_BACKWARD_COLUMNS,
           INDEX_DTYPE=_index_dtype(partial.shape[0] * rows_per_block * bias_numel), PHILOX_ROUNDS=PHILOX_ROUNDS)
    return grad_x, partial.sum(0)


def _dropout_bias_backward_cuda_arguments(grad, seed, grad_x, partial, rows_per_block, p):
    columns = partial.shape[1]
    return dict(**_typed("grad", grad), seed=seed.data_ptr(), **_typed("grad_x", grad_x), partial=partial.data_ptr(),
                rows=grad.numel() // columns, columns=columns, rows_per_block=rows_per_block,
                row_blocks=partial.shape[0], drop_threshold=drop_threshold(p), scale=keep_scale(p, partial.dtype),
                fp64_math=partial.dtype == torch.float64)


def _dropout_bias_backward_cuda(grad, seed, p, bias_numel, grad_x_dtype):
    """As _dropout_bias_backward_triton."""
    if _fused_bias_backward_unfit(grad, bias_numel):
        return _bias_backward_in_two_passes(_dropout_cuda, grad, seed, p, bias_numel, grad_x_dtype)
    grad, grad_x, partial, rows_per_block = _fused_bias_backward_buffers(grad, bias_numel, grad_x_dtype)
    _backend.launch_cuda(_backend._C.dropout_bias_backward, grad.device,
                         **_dropout_bias_backward_cuda_arguments(grad, seed, grad_x, partial, rows_per_block, p))
    return grad_x, partial.sum(0)


# ----------------------------------------------------------------------------- ops


dropout_op = Op("dropout", torch=_dropout_torch, triton=_dropout_triton, cuda=_dropout_cuda)


@dropout_op.register_fake
def _(x, residual, bias, seed, p, out_dtype, backend):
    return _new_like(x, out_dtype)


def _dropout_setup_context(ctx, inputs, output):
    x, residual, bias, seed, p, out_dtype, backend = inputs
    ctx.save_for_backward(seed)  # the only thing saved: 8 bytes
    ctx.p, ctx.backend, ctx.x_dtype = p, backend, x.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.bias_dtype = None if bias is None else bias.dtype


def _residual_gradient(ctx, grad):
    """The incoming gradient in the residual's dtype (None without a residual); grad itself when it
    has that dtype, as Tensor.to would return it, but without its 0.8 µs."""
    if ctx.residual_dtype is None:
        return None
    return grad if grad.dtype == ctx.residual_dtype else grad.to(ctx.residual_dtype)


def _dropout_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    # d/dx of (x + bias) * keep * scale is the same mask and scale: regenerate it from the seed.
    # Each input's gradient comes back in that input's dtype.
    grad_bias = None
    if ctx.bias_shape is None:
        grad_x = dropout_op(grad, None, None, seed, ctx.p, ctx.x_dtype, ctx.backend)
    else:
        grad_x, grad_bias = dropout_bias_backward_op(grad, seed, ctx.p, ctx.bias_shape.numel(), ctx.x_dtype,
                                                     ctx.backend)
        grad_bias = grad_bias.to(ctx.bias_dtype)
        if grad_bias.shape != ctx.bias_shape:  # a reshape to its own shape still costs about 2 µs
            grad_bias = grad_bias.reshape(ctx.bias_shape)
    return grad_x, _residual_gradient(ctx, grad), grad_bias, None, None, None, None


dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup_context)


dropout_bias_backward_op = Op("dropout_bias_backward", torch=_dropout_bias_backward_torch,
                              triton=_dropout_bias_backward_triton, cuda=_dropout_bias_backward_cuda)


@dropout_bias_backward_op.register_fake
def _(grad, seed, p, bias_numel, grad_x_dtype, backend):
    return _new_like(grad, grad_x_dtype), grad.new_empty(bias_numel, dtype=_math_dtype(grad, grad_x_dtype))


def _dropout_bias_backward_setup_context(ctx, inputs, output):
    grad, seed, p, bias_numel, grad_x_dtype, backend = inputs
    ctx.save_for_backward(seed)
    ctx.p, ctx.bias_numel, ctx.backend, ctx.grad_dtype = p, bias_numel, backend, grad.dtype


def _dropout_bias_backward_backward(ctx, grad_of_grad_x, grad_of_grad_bias):
    """Second order: grad_x = grad * m and grad_bias = the column sums of grad * m (m = keep / (1 - p))
    are linear in grad, so d/d grad is m * (grad_of_grad_x + grad_of_grad_bias repeated along the
    rows): the forward dropout op with grad_of_grad_bias as its bias, under the same seed. (Autograd
    hands zeros, not None, for an output that got no gradient.)"""
    (seed,) = ctx.saved_tensors
    rows = grad_of_grad_x.reshape(-1, ctx.bias_numel) if ctx.bias_numel else grad_of_grad_x.reshape(0, 0)
    grad_grad = dropout_op(rows, None, grad_of_grad_bias, seed, ctx.p, ctx.grad_dtype, ctx.backend)
    return grad_grad.reshape(grad_of_grad_x.shape), None, None, None, None, None


dropout_bias_backward_op.register_autograd(_dropout_bias_backward_backward,
                                           setup_context=_dropout_bias_backward_setup_context)


dropout_inplace_op = Op("dropout_", torch=_dropout_inplace_torch,
                        triton=functools.partial(_dropout_inplace_with, _dropout_triton),
                        cuda=functools.partial(_dropout_inplace_with, _dropout_cuda), mutates_args=("x",))


@dropout_inplace_op.register_fake
def _(x, seed, p, backend):
    return None


class DropoutInplaceFunction(torch.autograd.Function):
    """rk.dropout(inplace=True): x is overwritten and marked dirty, so autograd rebases x's history
    (views included) and refuses anyone who saved x's old value. Backward regenerates the mask
    from the 8-byte seed, as the out-of-place op does. (A custom op that mutates its input cannot
    register autograd itself.)"""

    @staticmethod
    def forward(ctx, x, seed, p, backend):
        dropout_inplace_op(x, seed, p, backend)
        ctx.mark_dirty(x)
        ctx.save_for_backward(seed)
        ctx.p, ctx.backend = p, backend
        return x

    @staticmethod
    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        return dropout_op(grad, None, None, seed, ctx.p, grad.dtype, ctx.backend), None, None, None


drop_path_op = Op("drop_path", torch=_drop_path_torch, triton=_drop_path_triton, cuda=_drop_path_cuda)


@drop_path_op.register_fake
def _(x, residual, seed, p, out_dtype, backend):
    return _new_like(x, out_dtype)


def _drop_path_setup_context(ctx, inputs, output):
    x, residual, seed, p, out_dtype, backend = inputs
    ctx.save_for_backward(seed)
    ctx.p, ctx.backend, ctx.x_dtype = p, backend, x.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype


def _drop_path_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    grad_x = drop_path_op(grad, None, seed, ctx.p, ctx.x_dtype, ctx.backend)
    return grad_x, _residual_gradient(ctx, grad), None, None, None, None


drop_path_op.register_autograd(_drop_path_backward, setup_context=_drop_path_setup_context)


# ----------------------------------------------------------------------------- public API


def _check_beside_x(x, name, tensor):
    """A second input: floating, on x's device; its dtype may differ (torch's type promotion)."""
    _checks.floating(tensor, name)
    _checks.same_device(tensor, name, x, "x")


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Inverted dropout: each element is zeroed with probability p, the rest scaled by 1/(1-p).

    Same signature and convention as torch.nn.functional.dropout. The mask comes from Philox
    keyed by a seed drawn on x's device (torch.manual_seed reproduces it; see the RNG contract
    in recipe_kernels._philox). Backward regenerates the mask; nothing of x's size is saved.
    training=False or p=0 returns x itself. Otherwise the result is contiguous, or, with
    inplace=True, x itself overwritten (any layout; as in torch, refused for a leaf that
    requires grad while autograd records).
    """
    _checks.floating(x, "x")
    p = _checks.probability(p, "p")
    if not training or p == 0.0:
        return x
    device = x.device
    backend = _backend.resolve("dropout", device, backend)
    seed = draw_seed(device, generator)
    if inplace:
        if not (x.requires_grad and torch.is_grad_enabled()):  # nothing to record
            dropout_inplace_op(x, seed, p, backend)
            return x
        if x.is_leaf:
            raise RuntimeError("rk.dropout(inplace=True): a leaf Variable that requires grad is being used in an "
                               "in-place operation (torch refuses it too); use inplace=False or a non-leaf x")
        return apply_function(DropoutInplaceFunction, x, seed, p, backend)
    return dropout_op(x, None, None, seed, p, x.dtype, backend)


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float = 0.5, training: bool = True, *,
                bias: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                backend: Optional[str] = None) -> torch.Tensor:
    """residual + dropout(x + bias, p) in one pass, rounded once from fp32.

    residual has x's shape; bias has x's trailing shape (e.g. (hidden,)) and its gradient
    is reduced over the leading dimensions. The dtypes may differ: the result has torch's
    promoted dtype (a bf16 x with an fp32 residual gives fp32), each gradient its input's dtype. Under the same seed the mask equals dropout's
    mask for a tensor of x's shape. training=False or p=0 adds without dropping.
    """
    _checks.floating(x, "x")
    _check_beside_x(x, "residual", residual)
    _checks.same_shape(residual, "residual", x, "x")
    if bias is not None:
        _check_beside_x(x, "bias", bias)
        if bias.dim() > x.dim() or tuple(x.shape[x.dim() - bias.dim():]) != tuple(bias.shape):
            raise ValueError(f"bias has shape {tuple(bias.shape)}, which is not a trailing part of "
                             f"x's shape {tuple(x.shape)}")
    p = _checks.probability(p, "p")
    if not training:
        p = 0.0
    backend = _backend.resolve("dropout", x.device, backend)
    seed = draw_seed(x.device, generator) if p > 0.0 else torch.zeros(1, dtype=torch.int64, device=x.device)
    # torch's promotion of residual + (x + bias), where a 0-d bias does not promote an n-d x
    # (torch.result_type's rule, written out: dynamo cannot trace result_type).
    branch_dtype = x.dtype
    if bias is not None and (bias.dim() > 0 or x.dim() == 0):
        branch_dtype = torch.promote_types(x.dtype, bias.dtype)
    out_dtype = torch.promote_types(residual.dtype, branch_dtype)
    return dropout_op(x, residual, bias, seed, p, out_dtype, backend)


def drop_path(x: torch.Tensor, p: float = 0.1, training: bool = True, *, generator: Optional[torch.Generator] = None,
              backend: Optional[str] = None) -> torch.Tensor:
    """Stochastic depth: x * keep[b] / (1 - p), keep drawn per sample b along dim 0 (timm's DropPath).

    training=False or p=0 returns x itself. training defaults to True (torch's convention);
    timm's drop_path defaults to False.
    """
    _checks.floating(x, "x")
    p = _checks.probability(p, "p")
    if not training or p == 0.0:
        return x
    if x.dim() == 0:
        raise ValueError("drop_path needs at least one dimension (the samples), got a 0-d tensor")
    backend = _backend.resolve("drop_path", x.device, backend)
    return drop_path_op(x, None, draw_seed(x.device, generator), p, x.dtype, backend)


def drop_path_add(x: torch.Tensor, residual: torch.Tensor, p: float = 0.1, training: bool = True, *,
                  generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> torch.Tensor:
    """residual + x * keep[b] / (1 - p) in one kernel; a dropped sample never reads x.

    keep is drawn per sample along dim 0, the same draw as drop_path. The result has torch's
    promoted dtype of x and residual. training=False or p=0 returns residual + x.
    """
    _checks.floating(x, "x")
    _check_beside_x(x, "residual", residual)
    _checks.same_shape(residual, "residual", x, "x")
    p = _checks.probability(p, "p")
    if not training or p == 0.0:
        return residual + x
    if x.dim() == 0:
        raise ValueError("drop_path_add needs at least one dimension (the samples), got a 0-d tensor")
    backend = _backend.resolve("drop_path", x.device, backend)
    out_dtype = torch.promote_types(x.dtype, residual.dtype)
    return drop_path_op(x, residual, draw_seed(x.device, generator), p, out_dtype, backend)


def drop_path_rates(num_blocks: int, final_rate: float) -> list[float]:
    """Linear stochastic-depth rule: block l of L (1-based) drops with rate l / L * final_rate.

    The lecture's survival probability p_l = 1 - l/L (1 - p_L), written as drop rates.
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
    final_rate = _checks.probability(final_rate, "final_rate")
    return [block / num_blocks * final_rate for block in range(1, num_blocks + 1)]
