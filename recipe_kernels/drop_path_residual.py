"""Stochastic depth that runs the residual branch only on the kept samples (DINOv2's
drop_add_residual_stochastic_depth, fused and graph-safe).

Top to bottom: Triton kernels; the implementations, one per backend (torch, Triton, CUDA) for
each op; the ops (_ops.Op: the backend table, fakes, autograd); public function. One call draws one seed on the device; from it every
backend picks the same subset S of k = max(1, int(N (1 - p))) samples: one Philox word per
sample, S = the k smallest (word, index) pairs, in increasing index order.

Forward: gather x[S] into a contiguous (k, ...) tensor, y = branch(x[S]), then one pass over
all N rows writes out = x, plus (N/k) y[j] on row S[j]. Backward: grad_y = (N/k) grad_out[S]
(a fused gather) and, after the branch's backward, grad_x = grad_out + grad_x[S] added at S in
one pass.

Bytes moved (a "row" is one sample's elements of x; s = element size, all dtypes equal):
forward (2N + 3k) rows x s (gather: read k, write k; add: read N of x and k of y, write N);
backward (2N + 3k) rows x s (gather of the gradient: read k, write k; grad_x: read N of
grad_out and k of the branch's input gradient, write N). Nothing of N rows is saved.
"""
import struct
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from recipe_kernels import _backend, _checks, reference
from recipe_kernels._ops import Op, apply_function, launch
from recipe_kernels._philox import PHILOX_ROUNDS, draw_seed
from recipe_kernels._triton_common import cdiv, round_to
from recipe_kernels.dropout import _philox_words_x4

# Elements per Triton program of the row kernels: 8 warps x 32 threads x 8 elements (16 bytes of bf16).
BLOCK = 2048
NUM_WARPS = 8
# Samples per program of the subset-key kernel (a Philox call serves four).
KEY_BLOCK = 1024
KEY_NUM_WARPS = 4
# The key packs (word, index) into one int64, so a sample index must fit in 32 bits.
MAX_SAMPLES = 1 << 32


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _subset_keys_kernel(seed_ptr, keys_ptr, num_samples, KEY_BLOCK: tl.constexpr, PHILOX_ROUNDS: tl.constexpr):
    """keys[n] = (word(n) - 2^31) * 2^32 + n for the N samples: sorting keys sorts (word, index) pairs.

    word(n) is the Philox word of element n (the RNG contract: word n & 3 of the call with counter
    n >> 2). Bytes: writes 8 per sample.
    """
    pid = tl.program_id(0).to(tl.int64)
    counters = pid * (KEY_BLOCK // 4) + tl.arange(0, KEY_BLOCK // 4)
    words = tl.reshape(_philox_words_x4(tl.load(seed_ptr), counters, PHILOX_ROUNDS), [KEY_BLOCK])
    samples = pid * KEY_BLOCK + tl.arange(0, KEY_BLOCK)
    # The top bit flipped, read as a signed 32-bit number: word - 2^31, ordered like word.
    signed_word = (words ^ 0x80000000).to(tl.int32, bitcast=True).to(tl.int64)
    tl.store(keys_ptr + samples, signed_word * (1 << 32) + samples, mask=samples < num_samples)


@triton.jit
def _combine_rows_kernel(a_ptr, b_ptr, index_ptr, out_ptr, row_size, blocks_per_row, scale,
                         HAS_A: tl.constexpr, BLOCK: tl.constexpr):
    """out[r] = a[r] + scale * b[index[r]], or a[r] where index[r] < 0; without a: scale * b[index[r]].

    Rows of row_size contiguous elements; fp32 math rounded once to out's dtype, and a row with
    index < 0 is a's row converted (bit-identical when the dtypes agree). The forward gather is
    (no a, index = S, scale 1), the residual add (a = x, b = y, index = the map n -> j or -1,
    scale N/k); backward, the gradient's gather (scale N/k) and grad_x (scale 1). Bytes: reads a's
    row and, where index >= 0, b's row; writes out's row.
    """
    pid = tl.program_id(0).to(tl.int64)
    row = pid // blocks_per_row
    columns = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    in_row = columns < row_size
    source = tl.load(index_ptr + row)
    selected = source >= 0
    value = tl.load(b_ptr + source * row_size + columns, mask=in_row & selected, other=0.0).to(tl.float32) * scale
    if HAS_A:
        own = tl.load(a_ptr + row * row_size + columns, mask=in_row, other=0.0).to(tl.float32)
        value = tl.where(selected, own + value, own)
    tl.store(out_ptr + row * row_size + columns, round_to(value, out_ptr.dtype.element_ty), mask=in_row)


# ----------------------------------------------------------------------------- implementations
# One per backend for each op, all taking the op's arguments; the torch one's type hints are the op's schema.


def subset_size(num_samples, p: float) -> int:
    """k = max(1, int(N (1 - p))), DINOv2's rule, in Python float math.

    num_samples may be a SymInt (torch.compile with a dynamic batch): the same expression
    then traces into the graph, and each new batch size evaluates it in the same float math.
    """
    return max(1, int(num_samples * (1.0 - p)))


def subset_scale(num_samples: int, kept: int) -> float:
    """N / k rounded to fp32: the scale of the branch's output on every backend."""
    return struct.unpack("f", struct.pack("f", num_samples / kept))[0]


def _branch_scale(num_samples, kept, scaled):
    return subset_scale(num_samples, kept) if scaled else 1.0


# --- drop_path_residual_subset: S and the map n -> j


def _check_subset(num_samples, kept):
    if not 1 <= kept <= num_samples < MAX_SAMPLES:
        raise ValueError(f"drop_path_residual: cannot keep {kept} of {num_samples} samples")


def _subset_torch(seed: torch.Tensor, num_samples: int, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, slot): rows = S, the kept samples in increasing order (k,), and the map slot (N,) with
    slot[S[j]] = j and -1 elsewhere; int64 on seed's device."""
    _check_subset(num_samples, kept)
    return reference.subset_from_keys(reference.subset_keys(seed, num_samples), kept)


def _new_keys(seed, num_samples, kept):
    _check_subset(num_samples, kept)
    return torch.empty(num_samples, dtype=torch.int64, device=seed.device)


def _subset_triton(seed, num_samples, kept):
    keys = _new_keys(seed, num_samples, kept)
    launch(_subset_keys_kernel, (cdiv(num_samples, KEY_BLOCK),), seed, keys, num_samples,
           num_warps=KEY_NUM_WARPS, KEY_BLOCK=KEY_BLOCK, PHILOX_ROUNDS=PHILOX_ROUNDS)
    return reference.subset_from_keys(keys, kept)


# The *_cuda_arguments functions build every keyword argument of a _C launcher but the stream; the
# tests hand the same arguments to the _C.*_host entry points.


def _subset_keys_cuda_arguments(seed, keys):
    return dict(seed=seed.data_ptr(), keys=keys.data_ptr(), num_samples=keys.numel())


def _subset_cuda(seed, num_samples, kept):
    keys = _new_keys(seed, num_samples, kept)
    _backend.launch_cuda(_backend._C.drop_path_residual_keys, keys.device, **_subset_keys_cuda_arguments(seed, keys))
    return reference.subset_from_keys(keys, kept)


# --- the rows kernel behind drop_path_residual_gather and drop_path_residual_add


def _rows_operands(a, b, index, out_dtype):
    """(a, b, index, out) for the rows kernel: the inputs contiguous, out new and contiguous: a's
    shape or, without a, index's length by b's row shape."""
    shape = a.shape if a is not None else (index.shape[0],) + b.shape[1:]
    out = torch.empty(shape, dtype=out_dtype, device=b.device)
    return None if a is None else a.contiguous(), b.contiguous(), index.contiguous(), out


def _combine_rows_cuda_arguments(a, b, index, out, scale):
    codes = _backend.CUDA_DTYPE_CODES
    return dict(a=a.data_ptr() if a is not None else 0, b=b.data_ptr(), index=index.data_ptr(), out=out.data_ptr(),
                rows=out.shape[0], row_size=out.numel() // out.shape[0], scale=scale,
                a_dtype=codes[a.dtype] if a is not None else codes[out.dtype], b_dtype=codes[b.dtype],
                out_dtype=codes[out.dtype])


def _combine_rows_triton(a, b, index, out_dtype, scale):
    a, b, index, out = _rows_operands(a, b, index, out_dtype)
    if out.numel() > 0:
        row_size = out.numel() // out.shape[0]
        blocks_per_row = cdiv(row_size, BLOCK)
        launch(_combine_rows_kernel, (out.shape[0] * blocks_per_row,),
               a if a is not None else out, b, index, out, row_size, blocks_per_row, scale,
               num_warps=NUM_WARPS, HAS_A=a is not None, BLOCK=BLOCK)
    return out


def _combine_rows_cuda(a, b, index, out_dtype, scale):
    a, b, index, out = _rows_operands(a, b, index, out_dtype)
    if out.numel() > 0:
        _backend.launch_cuda(_backend._C.drop_path_residual_rows, out.device,
                             **_combine_rows_cuda_arguments(a, b, index, out, scale))
    return out


# --- drop_path_residual_gather: c x[rows]


def _gather_torch(x: torch.Tensor, rows: torch.Tensor, scaled: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """x[rows] as a contiguous (k, ...) tensor in out_dtype, times N/k (N = len(x), k = len(rows)) when scaled."""
    scale = _branch_scale(x.shape[0], rows.shape[0], scaled)
    return reference.gather_rows(x, rows, scale).to(out_dtype).reshape((rows.shape[0],) + x.shape[1:])


def _gather_triton(x, rows, scaled, out_dtype):
    return _combine_rows_triton(None, x, rows, out_dtype, _branch_scale(x.shape[0], rows.shape[0], scaled))


def _gather_cuda(x, rows, scaled, out_dtype):
    return _combine_rows_cuda(None, x, rows, out_dtype, _branch_scale(x.shape[0], rows.shape[0], scaled))


# --- drop_path_residual_add: x + c y at the rows of S


def _residual_add_torch(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, slot: torch.Tensor, scaled: bool,
                        out_dtype: torch.dtype) -> torch.Tensor:
    """out[n] = x[n] + c y[slot[n]] where slot[n] >= 0, x[n] elsewhere; c = N/k when scaled, else 1.

    One pass over x's N rows, fp32 math rounded once to out_dtype; contiguous. The kernels read the
    map slot; the torch reference, and autograd's gather of the gradient, read rows (= S).
    """
    scale = _branch_scale(x.shape[0], y.shape[0], scaled)
    return reference.add_rows(x, y, rows, scale).to(out_dtype).reshape(x.shape)


def _residual_add_triton(x, y, rows, slot, scaled, out_dtype):
    return _combine_rows_triton(x, y, slot, out_dtype, _branch_scale(x.shape[0], y.shape[0], scaled))


def _residual_add_cuda(x, y, rows, slot, scaled, out_dtype):
    return _combine_rows_cuda(x, y, slot, out_dtype, _branch_scale(x.shape[0], y.shape[0], scaled))


# ----------------------------------------------------------------------------- ops


subset_op = Op("drop_path_residual_subset", torch=_subset_torch, triton=_subset_triton, cuda=_subset_cuda)


@subset_op.register_fake
def _(seed, num_samples, kept, backend):
    return seed.new_empty(kept, dtype=torch.int64), seed.new_empty(num_samples, dtype=torch.int64)


gather_op = Op("drop_path_residual_gather", torch=_gather_torch, triton=_gather_triton, cuda=_gather_cuda)


@gather_op.register_fake
def _(x, rows, scaled, out_dtype, backend):
    return x.new_empty((rows.shape[0],) + x.shape[1:], dtype=out_dtype)


residual_add_op = Op("drop_path_residual_add", torch=_residual_add_torch, triton=_residual_add_triton,
                     cuda=_residual_add_cuda)


@residual_add_op.register_fake
def _(x, y, rows, slot, scaled, out_dtype, backend):
    return torch.empty_like(x, dtype=out_dtype, memory_format=torch.contiguous_format)


def _residual_add_setup_context(ctx, inputs, output):
    x, y, rows, slot, scaled, out_dtype, backend = inputs
    ctx.save_for_backward(rows)
    ctx.scaled, ctx.backend = scaled, backend
    ctx.x_dtype, ctx.y_dtype = x.dtype, y.dtype


def _residual_add_backward(ctx, grad):
    (rows,) = ctx.saved_tensors
    # d out / d x is the identity; d out[S[j]] / d y[j] = c: a gather of the gradient, scaled.
    grad_y = gather_op(grad, rows, ctx.scaled, ctx.y_dtype, ctx.backend)
    return grad.to(ctx.x_dtype), grad_y, None, None, None, None, None


residual_add_op.register_autograd(_residual_add_backward, setup_context=_residual_add_setup_context)


class GatherSubsetFunction(torch.autograd.Function):
    """(x[S], x): the branch's input, and x passed through to the residual add.

    Autograd sums the gradients of a tensor's uses with a separate pass. Here x reaches the
    output along two paths (through the branch, and straight through the add), so both meet
    in this Function's backward, which adds the branch's input gradient into the add's
    gradient at S in one pass: grad_x = grad_out + scatter(grad_xs), with no N-row zeros or sum.
    """

    @staticmethod
    def forward(ctx, x, rows, slot, backend):
        ctx.save_for_backward(rows, slot)
        ctx.backend = backend
        return gather_op(x, rows, False, x.dtype, backend), x

    @staticmethod
    def backward(ctx, grad_xs, grad_x):
        rows, slot = ctx.saved_tensors
        return residual_add_op(grad_x, grad_xs, rows, slot, False, grad_x.dtype, ctx.backend), None, None, None


# ----------------------------------------------------------------------------- public API


def _check_branch_output(xs, y):
    name = "drop_path_residual: branch output"
    _checks.tensor(y, name)
    if y.shape != xs.shape:
        raise ValueError(f"{name} has shape {tuple(y.shape)}, but its input x[S] has shape {tuple(xs.shape)}; "
                         "they must match")
    _checks.same_device(y, name, xs, "x")
    _checks.floating(y, name, dtypes=tuple(_backend.CUDA_DTYPE_CODES))


def drop_path_residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], p: float = 0.1,
                       training: bool = True, *, generator: Optional[torch.Generator] = None,
                       backend: Optional[str] = None) -> torch.Tensor:
    """x + branch(x) with stochastic depth, running branch only on the kept samples.

    In training with 0 < p < 1 and N = x.shape[0] > 0: k = max(1, int(N (1 - p))) samples S,
    a uniformly random subset drawn on x's device (torch.manual_seed or `generator`
    reproduces it), y = branch(x[S]) called once on a contiguous (k, ...) tensor, and
    out[S[j]] = x[S[j]] + (N/k) y[j], out[n] = x[n] elsewhere. The result has dtype
    torch.result_type(x, y) (fp32 for an fp32 x with a bf16 branch), fp32 math rounded once.
    p = 0, training=False or N = 0: x + branch(x). p = 1 in training: x, without calling branch.
    """
    _checks.floating(x, "x")
    if not callable(branch):
        raise TypeError(f"drop_path_residual: branch must be callable, got {type(branch).__name__}")
    p = _checks.probability(p, "p")
    if x.dim() == 0:
        raise ValueError("drop_path_residual needs at least one dimension (the samples), got a 0-d tensor")
    if training and p == 1.0:
        return x
    if not training or p == 0.0 or x.shape[0] == 0:
        y = branch(x)
        _check_branch_output(x, y)
        return x + y
    num_samples = x.shape[0]
    backend = _backend.resolve("drop_path_residual", x.device, backend)
    rows, slot = subset_op(draw_seed(x.device, generator), num_samples, subset_size(num_samples, p), backend)
    xs, x_through = apply_function(GatherSubsetFunction, x, rows, slot, backend)
    y = branch(xs)
    _check_branch_output(xs, y)
    return residual_add_op(x_through, y, rows, slot, True, torch.promote_types(x.dtype, y.dtype), backend)
