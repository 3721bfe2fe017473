"""Exponential moving average (EMA) of model weights: the multi-tensor op, one kernel launch for
the whole model. ModelEMA (the model plumbing) is in recipe_kernels.model_ema.

Top to bottom: Triton kernels; the chunk table; the implementations, one per backend (torch,
Triton, CUDA) for each op, all taking the op's arguments; the ops (_ops.Op: the backend table and
fakes); the public function `ema_update_`. A call takes three hops to the kernel:

    ema_update_()  ->  ema_update_op (its table picks the backend)  ->  _ema_update_with
                   ->  _launch_triton  ->  _ema_update_kernel,  or  _launch_cuda  ->  _C.ema_update

Formula, identical in every backend and in the oracle (recipe_kernels.reference): torch.lerp's,
with weight w = 1 - d,

    e <- e + w*(p - e)          when |w| < 0.5 (d > 0.5, every usual EMA decay)
    e <- p - (p - e)*(1 - w)    otherwise

in fp32, or in fp64 when either side of the pair is fp64 (reference.ema_math_dtype); each
operation rounded (w and 1 - w included), no FMA; then the result is rounded to fp32 and once
more to e's dtype. p == e stays exactly e (an exact zero is added or subtracted), so a frozen
parameter's EMA never drifts; torch._foreach_lerp_(e, p, w) gives the same bits wherever its
fused multiply-add rounds like a separate multiply (e.g. w or 1 - w a power of two).

Two cases are exact: d == 0 stores p (converted to e's dtype) and d == 1 (in the math's
precision) leaves e untouched, bit for bit, even when e or p holds inf or NaN. ModelEMA uses
d == 0 for "copy" steps and d == 1 for "skip" steps, so its schedule needs no branch on the host.
The decays travel as fp64 device tensors.

Multi-tensor apply: every (e, p) pair is cut into chunks of CHUNK elements, and one row of an
int64 table per chunk holds [e address, p address, element count, codes]; the kernel runs one
program (Triton) or block (CUDA) per row. Mixed dtypes travel as dtype codes in the row, so a
single launch covers any mix of fp32, fp16, bf16 and fp64 on either side. The Triton kernel is
compiled for the kinds of pairs (e dtype, p dtype) its table holds, so the usual table of one
kind runs straight-line code, and vectorizes each row whose addresses are 16-byte aligned. The table is cached
under the address, dtype, shape and strides of every tensor on both sides, read on every call,
so it is never stale: a re-allocated tensor, a model cast to another dtype or a view of another
dtype or layout at the same address gets a table of its own (or a ValueError when the pair no
longer matches).

Bytes moved per element: read p, read e, write e; 12 bytes for an fp32 pair, 10 for a bf16
model with an fp32 EMA. The table adds 32 bytes per chunk (under 0.02% for fp32).
"""
import bisect
import collections
import functools
import operator
import warnings
from typing import List, NamedTuple, Optional, Sequence, Union

import torch
import triton
import triton.language as tl
try:  # torch.compile's C++ tensor checks (a private API): one pass over thousands of tensors in C++
    from torch._C._dynamo.guards import TensorGuards
except ImportError:  # a torch without it: the same checks in Python, slower
    TensorGuards = None

from recipe_kernels import _backend, _checks, reference
from recipe_kernels._codes import DTYPE_CODES, RAW_BYTES
from recipe_kernels._ops import Op, launch
from recipe_kernels._triton_common import round_to

# Elements per table row (bytes for RAW_BYTES rows). Large enough that the table is noise,
# small enough that a 25M-parameter model still gives every SM many programs.
CHUNK = 16384
# Elements per loop step of a Triton program: 8 warps x 32 threads x 8 elements (few registers, many
# programs resident, each thread with 16-byte accesses in flight).
BLOCK = 2048
NUM_WARPS = 8
# Bytes per thread per access: one 128-bit load or store.
ACCESS_BYTES = 16
# CUDA threads per block (each moves 4 elements per step, vectorized when aligned).
CUDA_THREADS = 256

# Dtype codes of the table (recipe_kernels._codes): the floating dtypes, and RAW_BYTES for a row
# copied byte for byte (integer buffers of ModelEMA; e and p then share a dtype).
FLOAT64 = DTYPE_CODES[torch.float64]
EMA_DTYPE_CODES = _backend.CUDA_DTYPE_CODES_WITH_FLOAT64
# Bits of the codes column: e's dtype code, p's, the index of the row's decay in `decays`, and
# whether both of the row's addresses are 16-byte aligned (then its blocks move as vectors).
PARAM_CODE_SHIFT = 4
DECAY_SLOT_SHIFT = 8
ROW_ALIGNED_SHIFT = 12
CODE_MASK = (1 << PARAM_CODE_SHIFT) - 1
# The kinds of rows a table holds, as the bits of the kernel's KINDS constexpr (see kind_bit):
# the kernel compiles code for those kinds only.
FLOATING_CODES = 4  # the floating dtype codes are 0 .. 3
RAW_KIND_BIT = FLOATING_CODES * FLOATING_CODES
assert sorted(EMA_DTYPE_CODES.values()) == list(range(FLOATING_CODES))
# The kernel's ALIGNMENT constexpr: every row aligned, none, or a mix (then each row's flag decides).
ROWS_UNALIGNED, ROWS_ALIGNED, ROWS_MIXED = 0, 1, 2

# Decay slots of ModelEMA's two-element decay tensor.
AVERAGE_SLOT = 0  # parameters and averaged buffers: the schedule's decay
COPY_SLOT = 1  # copied buffers: 0 on an update step, 1 on a skipped one


# ----------------------------------------------------------------------------- Triton kernels

# The table's codes as kernel constants.
_FLOAT64 = tl.constexpr(FLOAT64)
_CODE_MASK = tl.constexpr(CODE_MASK)
_KIND_MASK = tl.constexpr((1 << 2 * PARAM_CODE_SHIFT) - 1)  # e's and p's codes: a row's kind
_DECAY_SLOT_SHIFT = tl.constexpr(DECAY_SLOT_SHIFT)
_ROW_ALIGNED_SHIFT = tl.constexpr(ROW_ALIGNED_SHIFT)
_RAW_BYTES = tl.constexpr(RAW_BYTES)
_AVERAGE_SLOT = tl.constexpr(AVERAGE_SLOT)
_FLOATING_CODES = tl.constexpr(FLOATING_CODES)
_ROWS_ALIGNED = tl.constexpr(ROWS_ALIGNED)
_ROWS_UNALIGNED = tl.constexpr(ROWS_UNALIGNED)

_TRITON_TYPES = {DTYPE_CODES[torch.float32]: tl.float32, DTYPE_CODES[torch.float16]: tl.float16,
                 DTYPE_CODES[torch.bfloat16]: tl.bfloat16, FLOAT64: tl.float64}


@triton.constexpr_function
def _element_type(code):
    """The Triton type of the floating dtype code `code`."""
    return _TRITON_TYPES[code]


@triton.constexpr_function
def _math_type(ema_code, param_code):
    """The precision of a pair's arithmetic: fp64 when either side is fp64, else fp32."""
    return tl.float64 if FLOAT64 in (ema_code, param_code) else tl.float32


@triton.constexpr_function
def kind_bit(ema_code, param_code):
    """The bit of the kernel's KINDS constexpr that stands for rows of these dtype codes (the table
    builder calls it too)."""
    return RAW_KIND_BIT if ema_code == RAW_BYTES else ema_code * FLOATING_CODES + param_code


@triton.constexpr_function
def _holds(kinds, ema_code, param_code):
    """Whether a table of these KINDS has rows of this pair of dtype codes."""
    return bool(kinds >> kind_bit(ema_code, param_code) & 1)


@triton.constexpr_function
def _one_kind(kinds):
    """Whether a table of these KINDS has rows of one kind only (then no row's codes are read)."""
    return kinds & (kinds - 1) == 0


@triton.constexpr_function
def _row_kind(ema_code, param_code):
    """The kind field of a row's codes (its e and p dtype codes)."""
    return ema_code | param_code << PARAM_CODE_SHIFT


@triton.constexpr_function
def _vector(ema_code, param_code):
    """Elements per thread per access: 16 bytes of the wider dtype of the pair."""
    return ACCESS_BYTES * 8 // max(_TRITON_TYPES[ema_code].primitive_bitwidth,
                                   _TRITON_TYPES[param_code].primitive_bitwidth)


@triton.jit
def _typed_pointer(address, CODE: tl.constexpr, ALIGNED: tl.constexpr):
    """A byte address as a pointer to the elements of dtype code CODE; ALIGNED (from the row's
    flag) says it is 16-byte aligned, which lets whole blocks load and store as vectors."""
    pointer = address.to(tl.pointer_type(_element_type(CODE)))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _blend_block(ema_pointer, param_pointer, offsets, mask, decay, from_ema, coeff, E_CODE: tl.constexpr,
                 MATH: tl.constexpr, FULL: tl.constexpr):
    """e <- lerp(e, p, 1 - d) on one block as base + coeff*(p - e), base e or p (see _blend_chunk);
    d == 0 stores p exactly. The result is stored as it is into fp64, else rounded to nearest even
    to fp32 and then to e's dtype (as torch's casts from fp64 do)."""
    if FULL:
        param = tl.load(param_pointer + offsets).to(MATH)
        ema = tl.load(ema_pointer + offsets).to(MATH)
    else:
        param = tl.load(param_pointer + offsets, mask=mask, other=0.0).to(MATH)
        ema = tl.load(ema_pointer + offsets, mask=mask, other=0.0).to(MATH)
    blended = tl.where(from_ema, ema, param) + coeff * (param - ema)
    blended = tl.where(decay == 0.0, param, blended)
    if E_CODE == _FLOAT64:
        result = blended.to(tl.float64)
    else:
        result = round_to(blended.to(tl.float32), _element_type(E_CODE))
    if FULL:
        tl.store(ema_pointer + offsets, result)
    else:
        tl.store(ema_pointer + offsets, result, mask=mask)


@triton.jit
def _blend_chunk(ema_address, param_address, count, decay, E_CODE: tl.constexpr, P_CODE: tl.constexpr,
                 CHUNK: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """e <- lerp(e, p, 1 - d) over one chunk of `count` elements, e and p of the dtype codes
    E_CODE and P_CODE, in fp64 when either is fp64, else in fp32. A decay that is 1 in that
    precision skips the chunk, reading nothing."""
    MATH: tl.constexpr = _math_type(E_CODE, P_CODE)
    decay = decay.to(MATH)
    if decay != 1.0:
        # torch.lerp's weight w = 1 - d and its two forms, as base + coeff*(p - e):
        # |w| < 0.5: e + w*(p - e); else p + (w - 1)*(p - e), which is p - (p - e)*(1 - w).
        weight = 1.0 - decay
        from_ema = tl.abs(weight) < 0.5
        coeff = tl.where(from_ema, weight, weight - 1.0)
        ema_pointer = _typed_pointer(ema_address, E_CODE, ALIGNED)
        param_pointer = _typed_pointer(param_address, P_CODE, ALIGNED)
        # Each thread takes VECTOR consecutive elements at a time, 16 bytes of the wider dtype: e and
        # p then share one layout, so the result goes from registers straight to memory.
        VECTOR: tl.constexpr = _vector(E_CODE, P_CODE)
        block = tl.arange(0, BLOCK // VECTOR)[:, None] * VECTOR + tl.arange(0, VECTOR)[None, :]
        # Whole blocks unmasked (vector accesses), then the tail masked; blocks past count do nothing.
        for start in tl.static_range(0, CHUNK, BLOCK):
            offsets = start + block
            if start + BLOCK <= count:
                _blend_block(ema_pointer, param_pointer, offsets, None, decay, from_ema, coeff, E_CODE, MATH, True)
            elif start < count:
                _blend_block(ema_pointer, param_pointer, offsets, offsets < count, decay, from_ema, coeff, E_CODE,
                             MATH, False)


@triton.jit
def _copy_chunk(ema_address, param_address, count, decay, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """count bytes from p to e unless decay is 1 (an integer buffer, copied or skipped)."""
    if decay != 1.0:
        block = tl.arange(0, BLOCK)
        for start in tl.static_range(0, CHUNK, BLOCK):
            if start < count:
                offsets = start + block
                raw = tl.load(param_address.to(tl.pointer_type(tl.int8)) + offsets, mask=offsets < count)
                tl.store(ema_address.to(tl.pointer_type(tl.int8)) + offsets, raw, mask=offsets < count)


@triton.jit
def _update_row(ema_address, param_address, count, kind, aligned, decay, E_CODE: tl.constexpr,
                P_CODE: tl.constexpr, ONE_KIND: tl.constexpr, ALIGNMENT: tl.constexpr, CHUNK: tl.constexpr,
                BLOCK: tl.constexpr):
    """The row's chunk if its kind (e code | p code << 4) is this one; with ONE_KIND it is. The
    alignment flag is read only in tables that mix aligned and unaligned rows."""
    if ONE_KIND or kind == _row_kind(E_CODE, P_CODE):
        if ALIGNMENT == _ROWS_ALIGNED:
            _blend_chunk(ema_address, param_address, count, decay, E_CODE, P_CODE, CHUNK, BLOCK, True)
        elif ALIGNMENT == _ROWS_UNALIGNED:
            _blend_chunk(ema_address, param_address, count, decay, E_CODE, P_CODE, CHUNK, BLOCK, False)
        elif aligned != 0:
            _blend_chunk(ema_address, param_address, count, decay, E_CODE, P_CODE, CHUNK, BLOCK, True)
        else:
            _blend_chunk(ema_address, param_address, count, decay, E_CODE, P_CODE, CHUNK, BLOCK, False)


@triton.jit
def _scheduled_decays(t, decay, warmup_gamma, warmup_power, min_decay, update_after_step, update_every,
                      WARMUP: tl.constexpr):
    """ModelEMA's (average, copy) decays of update t, in fp64 with the warmup term rounded to fp32
    (see reference.ema_decays)."""
    # The float arguments as fp64 tensors: the interpreter would take Python floats for fp32.
    average = tl.full([], decay, tl.float64)
    if WARMUP:
        steps_after = (t - update_after_step).to(tl.float64)
        warm = 1.0 - tl.exp(-warmup_power * tl.log(1.0 + steps_after / warmup_gamma))
        warm = warm.to(tl.float32).to(tl.float64)  # exp and log differ in the last fp64 bit across backends
        average = tl.minimum(average, tl.maximum(tl.full([], min_decay, tl.float64), warm))
    average = tl.where(t <= update_after_step, 0.0, average)
    skipped = (t % update_every) != 0
    return tl.where(skipped, 1.0, average), tl.where(skipped, 1.0, 0.0).to(tl.float64)


@triton.jit
def _ema_update_kernel(table_ptr, decays_ptr, num_updates_ptr, programs_done_ptr, decay: tl.float64,
                       warmup_gamma: tl.float64, warmup_power: tl.float64, min_decay: tl.float64,
                       update_after_step: tl.int64, update_every: tl.int64, CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr, KINDS: tl.constexpr, ALIGNMENT: tl.constexpr, SCHEDULE: tl.constexpr,
                       WARMUP: tl.constexpr):
    """e <- lerp(e, p, 1 - d) over the chunk of table row `program_id` (the module's formula), in
    fp64 when either side is fp64, else in fp32.

    Inputs: table (rows of 4 int64: e address, p address, count, codes: see the constants at the
    top of the module); decays (fp64, indexed by the decay slot). KINDS says which (e dtype, p
    dtype) pairs the table holds (bits: see kind_bit), so only their code is compiled, and a
    table of one kind never branches on a row's codes; ALIGNMENT whether every row, none, or
    some are 16-byte aligned (then each row's flag decides). With SCHEDULE (ModelEMA.update) the
    decays come from the schedule at t = num_updates + 1 instead, and the last program to finish
    (counted in programs_done, which it resets to 0) stores t in num_updates and the decays it used
    in decays[0:2]; the scalar arguments are the schedule's.
    Bytes: reads p and e and writes e once each (count * (2 * size(e) + size(p))), plus 32 table
    bytes and 8 decay or counter bytes per program. A decay of exactly 1 (in the math's precision)
    skips the chunk without touching memory. Byte-copy rows copy count bytes from p to e unless
    their decay is 1.
    """
    # 1. The row: where, how many, which dtypes, which decay. One scalar load each.
    row = table_ptr + tl.program_id(0).to(tl.int64) * 4
    ema_address = tl.load(row)
    param_address = tl.load(row + 1)
    count = tl.load(row + 2)
    codes = tl.load(row + 3)
    slot = (codes >> _DECAY_SLOT_SHIFT) & _CODE_MASK
    if SCHEDULE:
        t = tl.load(num_updates_ptr) + 1
        average, copy_decay = _scheduled_decays(t, decay, warmup_gamma, warmup_power, min_decay, update_after_step,
                                                update_every, WARMUP)
        row_decay = tl.where(slot == _AVERAGE_SLOT, average, copy_decay)
    else:
        row_decay = tl.load(decays_ptr + slot)
    # 2. The chunk, by the code compiled for its kind: byte copies, or the blend in the pair's precision.
    kind = codes & _KIND_MASK
    aligned = (codes >> _ROW_ALIGNED_SHIFT) & 1
    ONE_KIND: tl.constexpr = _one_kind(KINDS)
    if _holds(KINDS, _RAW_BYTES, _RAW_BYTES):
        if ONE_KIND or kind == _row_kind(_RAW_BYTES, _RAW_BYTES):
            _copy_chunk(ema_address, param_address, count, row_decay, CHUNK, BLOCK)
    for e_code in tl.static_range(_FLOATING_CODES):
        for p_code in tl.static_range(_FLOATING_CODES):
            if _holds(KINDS, e_code, p_code):
                _update_row(ema_address, param_address, count, kind, aligned, row_decay, e_code, p_code, ONE_KIND,
                            ALIGNMENT, CHUNK, BLOCK)
    # 3. The schedule's counter: every program has read it (the barrier), so the last one may advance it.
    if SCHEDULE:
        tl.debug_barrier()
        if tl.atomic_add(programs_done_ptr, 1) == tl.num_programs(0) - 1:
            tl.store(num_updates_ptr, t)
            tl.store(programs_done_ptr, 0)
            tl.store(decays_ptr, average)
            tl.store(decays_ptr + 1, copy_decay)


# ----------------------------------------------------------------------------- the chunk table

# Tables by layout (see _cached). Bounded; tables used by a CUDA graph capture (and their host
# copies) are pinned by id, because the captured kernel keeps reading them on every replay.
_TABLES = collections.OrderedDict()
_TABLES_MAX = 64
_PINNED_TABLES = {}
# The torch backend has no table; it remembers the keys of the pair lists it has checked.
_CHECKED_PAIRS = collections.OrderedDict()

# C-level accessors: the per-call checks below walk every tensor, so they avoid Python loops.
_data_ptr = torch.Tensor.data_ptr
_stride = torch.Tensor.stride
_is_contiguous = torch.Tensor.is_contiguous
_dtype = operator.attrgetter("dtype")
_shape = operator.attrgetter("shape")
_device = operator.attrgetter("device")


def _layout(tensors):
    """The address (storage offset included), dtype, shape and strides of every tensor: all that
    a table and the checks behind it depend on. One C-level pass per attribute."""
    return (tuple(map(_data_ptr, tensors)), tuple(map(_dtype, tensors)), tuple(map(_shape, tensors)),
            tuple(map(_stride, tensors)))


class _ListsMemo:
    """What the tensors of one caller's pair lists were when last checked, and the values
    (tables, checks) found for them then: a caller that passes the same list objects again (a
    ModelEMA, a training loop) is answered without hashing its layout.

    The tensors are compared anew on every call, each in C++: type, device, dtype, shape and
    strides through torch's TensorGuards (what torch.compile's guards check), then the addresses.
    So a tensor replaced in the list or changed behind it (`.data = ...`, a view of another dtype
    at the same address) is seen; only the list objects' identity is trusted, and only as a lookup
    key. No reference to a tensor is kept.
    """

    def __init__(self, tensors, slots):
        self.count, self.slots, self.addresses = len(tensors), list(slots), tuple(map(_data_ptr, tensors))
        self.guard = _tensor_guards(tensors)
        self.values = {}
        # Set by ema_update_ between its own check and the op's, which then need not check again.
        self.just_checked = False

    def matches(self, tensors, slots):
        return (len(tensors) == self.count and slots == self.slots and self.guard.check(*tensors)
                and tuple(map(_data_ptr, tensors)) == self.addresses)


def _tensor_guards(tensors):
    if TensorGuards is None:
        return _PythonTensorGuards(tensors)
    sizes, strides = [list(t.shape) for t in tensors], [list(t.stride()) for t in tensors]
    return TensorGuards(*tensors, dynamic_dims_sizes=sizes, dynamic_dims_strides=strides)


class _PythonTensorGuards:
    """TensorGuards' check of type, device, dtype, shape and strides, in Python."""

    def __init__(self, tensors):
        self.facts = self._facts(tensors)

    @staticmethod
    def _facts(tensors):
        return [(type(t), t.device, t.dtype, t.shape, t.stride()) for t in tensors]

    def check(self, *tensors):
        return self._facts(tensors) == self.facts


# (id of the ema list, id of the params list) -> _ListsMemo, least recently made first out.
_MEMOS = collections.OrderedDict()
_MEMOS_MAX = 16


def _unchanged_memo(ema, params, slots):
    """The memo of these list objects if their tensors and slots are as it remembers them, else None."""
    memo = _MEMOS.get((id(ema), id(params)))
    if memo is None:
        return None
    if memo.just_checked:
        memo.just_checked = False
        return memo
    return memo if memo.matches([*ema, *params], slots) else None


def _remember(ema, params, slots):
    """A new, empty memo of these list objects as they are now."""
    key = (id(ema), id(params))
    memo = _MEMOS[key] = _ListsMemo([*ema, *params], slots)
    _MEMOS.move_to_end(key)
    while len(_MEMOS) > _MEMOS_MAX:
        _MEMOS.popitem(last=False)
    return memo


def _cached(cache, ema, params, slots, make):
    """cache[key], made by make() on a miss (bounded, least recently used first out), where the
    key holds the device, the decay slots and the _layout of every tensor on both sides; for list
    objects seen before, found through their _ListsMemo.

    Either way every tensor is read on every call, so a tensor changed behind the caller
    (`.data = ...`, model.half(), a view of another dtype, shape or strides at the same address)
    is seen before any launch. The device is the first tensor's: under CUDA's unified addressing
    an address names its device.
    """
    memo = _unchanged_memo(ema, params, slots) or _remember(ema, params, slots)
    value = memo.values.get(id(cache))
    if value is not None:
        return value
    layout = _layout([*ema, *params])
    key = (ema[0].device, tuple(slots), *layout)
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        while len(cache) > _TABLES_MAX:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    memo.values[id(cache)] = value
    return value


def _dtype_codes(ema, param):
    """(e code, p code) of a pair: its floating dtype codes, or RAW_BYTES twice for a byte copy."""
    if ema.dtype in EMA_DTYPE_CODES:
        return EMA_DTYPE_CODES[ema.dtype], EMA_DTYPE_CODES[param.dtype]
    return RAW_BYTES, RAW_BYTES


class ChunkTable(NamedTuple):
    rows: torch.Tensor  # (chunks, 4) int64
    kinds: int  # the KINDS constexpr: a bit per kind of row present (kind_bit)
    alignment: int  # the ALIGNMENT constexpr: ROWS_ALIGNED, ROWS_UNALIGNED or ROWS_MIXED


def build_chunk_table(ema, params, slots) -> ChunkTable:
    """The table of the pairs, on CPU, with the kinds of its rows and their alignment.

    A pair of n elements gives ceil(n / CHUNK) rows; RAW_BYTES pairs are counted in bytes.
    Runs only when the cached table misses, so it re-checks here what the kernel trusts the table
    for (see _check_table_pairs): a model changed behind ModelEMA's back raises instead of making
    the kernel read past a tensor or write to another device.
    """
    _check_table_pairs(ema, params)
    raw = [e.dtype not in EMA_DTYPE_CODES for e in ema]
    counts = torch.tensor([e.numel() * (e.element_size() if r else 1) for e, r in zip(ema, raw)], dtype=torch.int64)
    ema_sizes = torch.tensor([1 if r else e.element_size() for e, r in zip(ema, raw)], dtype=torch.int64)
    param_sizes = torch.tensor([1 if r else p.element_size() for p, r in zip(params, raw)], dtype=torch.int64)
    ema_bases = torch.tensor([e.data_ptr() for e in ema], dtype=torch.int64)
    param_bases = torch.tensor([p.data_ptr() for p in params], dtype=torch.int64)
    dtype_codes = [_dtype_codes(e, p) for e, p in zip(ema, params)]
    # Chunk starts are multiples of CHUNK * size bytes away from the base: aligned rows are aligned pairs.
    aligned = ((ema_bases % 16 == 0) & (param_bases % 16 == 0)).tolist()
    codes = torch.tensor([e_code | p_code << PARAM_CODE_SHIFT | slot << DECAY_SLOT_SHIFT
                          | row_aligned << ROW_ALIGNED_SHIFT
                          for (e_code, p_code), slot, row_aligned in zip(dtype_codes, slots, aligned)],
                         dtype=torch.int64)
    chunks = (counts + CHUNK - 1) // CHUNK
    pair = torch.repeat_interleave(torch.arange(len(ema)), chunks)
    first_chunk = torch.cumsum(chunks, 0) - chunks
    start = (torch.arange(pair.numel()) - first_chunk[pair]) * CHUNK
    table = torch.stack([ema_bases[pair] + start * ema_sizes[pair], param_bases[pair] + start * param_sizes[pair],
                         torch.minimum(counts[pair] - start, torch.tensor(CHUNK)), codes[pair]], dim=1)
    present = [index for index, n in enumerate(chunks.tolist()) if n]
    kinds = 0
    for index in present:
        kinds |= 1 << kind_bit(*dtype_codes[index])
    blended_aligned = {aligned[index] for index in present if not raw[index]}
    alignment = ROWS_MIXED if len(blended_aligned) > 1 else ROWS_UNALIGNED if blended_aligned == {False} else \
        ROWS_ALIGNED
    return ChunkTable(table.contiguous(), kinds, alignment)


def _span(tensor):
    """The byte range [start, end) that a tensor's elements occupy (its extent for any strides)."""
    if tensor.numel() == 0:
        return 0, 0
    start = tensor.data_ptr()
    if tensor.is_contiguous():
        return start, start + tensor.numel() * tensor.element_size()
    extent = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return start, start + extent * tensor.element_size()


def _check_no_overlap(ema, params):
    """Raises unless the EMA tensors are pairwise disjoint in memory and each model tensor is
    disjoint from all of them or is exactly its own pair's EMA tensor. The pairs are updated in
    parallel, so an overlap would race (and the torch backend's per-pair order would differ)."""
    if not ema or ema[0].device.type == "meta":  # no memory
        return
    spans = sorted((*_span(e), index) for index, e in enumerate(ema) if e.numel())
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            first, second = sorted((first, second))
            raise ValueError(f"ema_tensors[{first}] and ema_tensors[{second}] overlap in memory; every EMA "
                             "tensor must have memory of its own (the pairs are updated in parallel)")
    starts = [start for start, _, _ in spans]
    for index, p in enumerate(params):
        if p.numel() == 0:
            continue
        start, end = _span(p)
        last = bisect.bisect_left(starts, end) - 1  # the last EMA tensor starting before p ends
        if last >= 0 and spans[last][1] > start and spans[last] != (start, end, index):
            raise ValueError(f"model_tensors[{index}] overlaps ema_tensors[{spans[last][2]}] in memory; a model "
                             "tensor may only be its own pair's EMA tensor itself, or disjoint from every EMA tensor")


def _check_table_pairs(ema, params):
    """What the kernels trust a table row for: one device, equal element counts, equal dtypes for
    byte copies, e and p laid out alike and densely, and no overlapping writes."""
    device = ema[0].device if ema else None
    for index, (e, p) in enumerate(zip(ema, params)):
        if e.device != device or p.device != device:
            raise ValueError(f"pair {index}: tensors on {e.device} and {p.device}, but pair 0 is on {device}; all "
                             "tensors must be on one device (was the model moved after the EMA was made?)")
        if e.shape != p.shape:
            raise ValueError(f"pair {index}: ema tensor has shape {tuple(e.shape)} but model tensor has "
                             f"{tuple(p.shape)} (was the model changed after the EMA was made?)")
        if (e.dtype in EMA_DTYPE_CODES) != (p.dtype in EMA_DTYPE_CODES) or (
                e.dtype not in EMA_DTYPE_CODES and e.dtype != p.dtype):
            raise ValueError(f"pair {index}: an ema tensor of {e.dtype} cannot follow a model tensor of {p.dtype}")
        if not _dense_layout(e) or (e.stride() != p.stride() and not (e.is_contiguous() and p.is_contiguous())):
            raise ValueError(f"pair {index}: ema strides {e.stride()} and model strides {p.stride()} differ or are "
                             "not dense (was the model's memory layout changed after the EMA was made?)")
    _check_no_overlap(ema, params)


def chunk_table(ema, params, slots):
    """The cached device ChunkTable of the pairs, found as _cached says.

    Built on a miss (checked, then one host-to-device copy).
    """
    table = _cached(_TABLES, ema, params, slots, lambda: _device_table(ema, params, slots))
    if table.rows.is_cuda and torch.cuda.is_current_stream_capturing():
        _PINNED_TABLES[id(table.rows)] = table
    return table


def _device_table(ema, params, slots):
    table = build_chunk_table(ema, params, slots)
    rows = table.rows
    if ema[0].is_cuda:  # from pinned memory, asynchronously: not even the first update syncs
        host = rows.pin_memory()
        rows = host.to(ema[0].device, non_blocking=True)
        if torch.cuda.is_current_stream_capturing():  # a captured copy reads host on every replay
            _PINNED_TABLES[id(host)] = host
    return table._replace(rows=rows.to(ema[0].device))


# ----------------------------------------------------------------------------- implementations


def _ema_update_torch(ema: List[torch.Tensor], params: List[torch.Tensor], decays: torch.Tensor,
                      slots: List[int]) -> None:
    """ema[i] <- lerp(ema[i], params[i], 1 - d) with d = decays[slots[i]]: the reference, one pair at
    a time (the CPU path and the oracle of the kernels).

    Expects what ema_update_ checks: equal sizes per pair, one device, e and p laid out alike in
    memory (same strides, dense); integer pairs are copied unless d == 1. Checks the pairs as a
    table build does (the same input is refused by every backend), once per layout."""
    _check_decays(decays, 1)
    if not ema:
        return
    _cached(_CHECKED_PAIRS, ema, params, slots, lambda: _check_table_pairs(ema, params) or True)
    for e, p, slot in zip(ema, params, slots):
        if e.numel() == 0:
            continue
        decay = decays[slot]
        if e.dtype in EMA_DTYPE_CODES:
            blended = reference.ema_blend(e, p, decay, math_dtype=reference.ema_math_dtype(e.dtype, p.dtype))
            e.copy_(blended.to(torch.float32) if e.element_size() == 2 else blended)  # via fp32, as the kernels
        else:  # integer buffer: copied unless skipped
            e.copy_(torch.where(decay == 1.0, e, p))


# What the schedule's arguments are in a launch without one (ema_update_): never read.
_NO_SCHEDULE = (0.0, 1.0, 1.0, 0.0, 0, 1)


def _ema_update_with(launch_table, ema, params, decays, slots):
    """As _ema_update_torch, in one launch_table(table, decays) over the pairs' ChunkTable."""
    _check_decays(decays, 1)
    table = chunk_table(ema, params, slots) if ema else None
    if table is not None and table.rows.shape[0]:
        launch_table(table, decays)


def _launch_triton(table, decays):
    """The Triton kernel, decays by slot from `decays`."""
    rows = table.rows
    launch(_ema_update_kernel, (rows.shape[0],), rows, decays, rows, rows, *_NO_SCHEDULE, num_warps=NUM_WARPS,
           CHUNK=CHUNK, BLOCK=BLOCK, KINDS=table.kinds, ALIGNMENT=table.alignment, SCHEDULE=False, WARMUP=False)


def _launch_cuda(table, decays):
    """csrc/ema.cu's kernel."""
    _backend.launch_cuda(_backend._C.ema_update, table.rows.device, table=table.rows.data_ptr(),
                         num_chunks=table.rows.shape[0], decays=decays.data_ptr(), chunk=CHUNK, threads=CUDA_THREADS)


def _check_decays(decays, least):
    """The kernels read (and the schedule writes) the decays as fp64 through a raw pointer."""
    if decays.dtype != torch.float64 or decays.numel() < least:
        raise ValueError(f"decays must be a float64 tensor of at least {least} elements, got {decays.dtype} "
                         f"of shape {tuple(decays.shape)}")


def _check_schedule(num_updates, programs_done, decays, update_after_step, update_every):
    """What the scheduled kernels read and write through raw pointers, and a schedule they can count."""
    _check_decays(decays, 2)
    if num_updates.dtype != torch.int64 or num_updates.numel() != 1 or programs_done.dtype != torch.int32 or \
            programs_done.numel() != 1:
        raise ValueError(f"num_updates must be one int64 and programs_done one int32, got {num_updates.dtype} "
                         f"{tuple(num_updates.shape)} and {programs_done.dtype} {tuple(programs_done.shape)}")
    if update_every < 1 or update_after_step < 0:  # t % 0 on the device: undefined, not an error
        raise ValueError(f"update_every must be >= 1 and update_after_step >= 0, got {update_every} and "
                         f"{update_after_step}")


def _ema_scheduled_update_torch(ema: List[torch.Tensor], params: List[torch.Tensor], slots: List[int],
                                num_updates: torch.Tensor, programs_done: torch.Tensor, decays: torch.Tensor,
                                decay: float, warmup: bool, warmup_gamma: float, warmup_power: float,
                                min_decay: float, update_after_step: int, update_every: int) -> None:
    """ModelEMA's update: t = num_updates + 1; decays <- [average decay, copy decay] of update t (the
    schedule, in fp64 on the device, no host sync); then _ema_update_torch with them; num_updates <- t.
    programs_done is the kernels' count of finished programs (0 between calls; untouched here)."""
    _check_schedule(num_updates, programs_done, decays, update_after_step, update_every)
    num_updates.add_(1)
    t = num_updates.to(torch.float64)
    average = torch.full_like(t, decay)
    if warmup:
        warm = 1.0 - torch.exp(-warmup_power * torch.log(1.0 + (t - update_after_step) / warmup_gamma))
        warm = warm.to(torch.float32).to(torch.float64)  # as every backend: exp and log differ in the last fp64 bit
        average = torch.minimum(average, torch.clamp(warm, min=min_decay))
    average = torch.where(t <= update_after_step, 0.0, average)
    skipped = torch.remainder(num_updates, update_every) != 0
    decays.copy_(torch.stack([torch.where(skipped, 1.0, average), skipped.to(torch.float64)]))
    _ema_update_torch(ema, params, decays, slots)


def _ema_scheduled_update_with(launch_table, ema, params, slots, num_updates, programs_done, decays, decay,
                               warmup, warmup_gamma, warmup_power, min_decay, update_after_step, update_every):
    """As _ema_scheduled_update_torch, in one launch_table(table, num_updates, programs_done, decays,
    schedule) over the pairs' ChunkTable. With no rows there is nothing to average, and
    the torch implementation advances the counter and decays."""
    _check_schedule(num_updates, programs_done, decays, update_after_step, update_every)
    schedule = (decay, warmup, warmup_gamma, warmup_power, min_decay, update_after_step, update_every)
    table = chunk_table(ema, params, slots) if ema else None
    if table is None or table.rows.shape[0] == 0:
        _ema_scheduled_update_torch(ema, params, slots, num_updates, programs_done, decays, *schedule)
    else:
        launch_table(table, num_updates, programs_done, decays, schedule)


def _launch_scheduled_triton(table, num_updates, programs_done, decays, schedule):
    """The Triton kernel, the schedule in every program."""
    decay, warmup, warmup_gamma, warmup_power, min_decay, update_after_step, update_every = schedule
    launch(_ema_update_kernel, (table.rows.shape[0],), table.rows, decays, num_updates, programs_done, decay,
           warmup_gamma, warmup_power, min_decay, update_after_step, update_every, num_warps=NUM_WARPS, CHUNK=CHUNK,
           BLOCK=BLOCK, KINDS=table.kinds, ALIGNMENT=table.alignment, SCHEDULE=True, WARMUP=warmup)


def _launch_scheduled_cuda(table, num_updates, programs_done, decays, schedule):
    """csrc/ema.cu's scheduled kernel."""
    names = ("decay", "warmup", "warmup_gamma", "warmup_power", "min_decay", "update_after_step", "update_every")
    _backend.launch_cuda(
        _backend._C.ema_scheduled_update, table.rows.device, table=table.rows.data_ptr(),
        num_chunks=table.rows.shape[0], num_updates=num_updates.data_ptr(), programs_done=programs_done.data_ptr(),
        decays=decays.data_ptr(), **dict(zip(names, schedule)), chunk=CHUNK, threads=CUDA_THREADS)


# ----------------------------------------------------------------------------- ops

# e <- lerp(e, p, 1 - decays[slot]) over every pair, in place. Eager calls bump the EMA tensors'
# version counters in one C++ loop, as the dispatcher would.
ema_update_op = Op("ema_update_", torch=_ema_update_torch, triton=functools.partial(_ema_update_with, _launch_triton),
                   cuda=functools.partial(_ema_update_with, _launch_cuda), mutates_args=("ema",))


@ema_update_op.register_fake
def _(ema, params, decays, slots, backend):
    return None


# ModelEMA.update in one launch: the schedule of update num_updates + 1, the update, the counter.
ema_scheduled_update_op = Op("ema_scheduled_update_", torch=_ema_scheduled_update_torch,
                             triton=functools.partial(_ema_scheduled_update_with, _launch_scheduled_triton),
                             cuda=functools.partial(_ema_scheduled_update_with, _launch_scheduled_cuda),
                             mutates_args=("ema", "num_updates", "programs_done", "decays"))


@ema_scheduled_update_op.register_fake
def _(ema, params, slots, num_updates, programs_done, decays, decay, warmup, warmup_gamma, warmup_power, min_decay,
      update_after_step, update_every, backend):
    return None


# ----------------------------------------------------------------------------- public function

# fp64 decay tensors made from Python floats, one per (value, device): converted once.
_DECAY_TENSORS = {}


def _decay_tensor(decay, device):
    key = (decay, device)
    tensor = _DECAY_TENSORS.get(key)
    if tensor is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            # Made inside a CUDA graph capture, the fill is only recorded: the tensor holds the value
            # during replays, but not yet, so it must not be cached for eager calls.
            return torch.full((1,), decay, dtype=torch.float64, device=device)
        if len(_DECAY_TENSORS) > 256:  # a schedule of Python floats: do not grow without bound
            _DECAY_TENSORS.clear()
        tensor = _DECAY_TENSORS[key] = torch.full((1,), decay, dtype=torch.float64, device=device)
    return tensor


def _local(tensor):
    """A DTensor's local shard (each rank averages its own shard); any other tensor as it is."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _is_dtensor(tensor):
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


def _dense_layout(tensor):
    """True when the elements fill their span once each, in any dimension order (contiguous,
    channels_last, transposed, ...): the kernels can then walk a pair in memory order."""
    if tensor.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(((size, stride) for size, stride in zip(tensor.shape, tensor.stride()) if size != 1),
                               key=operator.itemgetter(1)):
        if stride != expected:  # a gap (slicing) or a repeat (expand: stride 0)
            return False
        expected *= size
    return True


_PLAIN_TENSOR_TYPES = {torch.Tensor, torch.nn.Parameter, torch.nn.Buffer}
_FLOATING = set(EMA_DTYPE_CODES)


def _pairs_are_plain(ema, params):
    """True when the pairs need no per-pair work: plain contiguous floating tensors on one device,
    equal shapes. Every check is one C-level pass over a list (a Python loop costs ~3 us a pair)."""
    return (isinstance(ema, (list, tuple)) and isinstance(params, (list, tuple)) and len(ema) == len(params) > 0
            and set(map(type, ema)) | set(map(type, params)) <= _PLAIN_TENSOR_TYPES
            and set(map(_dtype, ema)) | set(map(_dtype, params)) <= _FLOATING
            and len(set(map(_device, ema)) | set(map(_device, params))) == 1
            and list(map(_shape, ema)) == list(map(_shape, params))
            and all(map(_is_contiguous, ema)) and all(map(_is_contiguous, params)))


def _check_pairs(ema_tensors, model_tensors):
    """Validated (ema, params) lists of local tensors, laid out alike; raises on bad input."""
    if not torch.compiler.is_compiling() and _pairs_are_plain(ema_tensors, model_tensors):  # dynamo: loop below
        return ema_tensors, model_tensors, ema_tensors[0].device
    for name, tensors in (("ema_tensors", ema_tensors), ("model_tensors", model_tensors)):
        if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    if len(ema_tensors) != len(model_tensors):
        raise ValueError(f"ema_tensors has {len(ema_tensors)} tensors but model_tensors has {len(model_tensors)}; "
                         "they must pair up one to one")
    ema, params = [], []
    device = None
    for index, (e, p) in enumerate(zip(ema_tensors, model_tensors)):
        for name, tensor in (("ema_tensors", e), ("model_tensors", p)):
            _checks.tensor(tensor, f"{name}[{index}]")
            if tensor.dtype not in EMA_DTYPE_CODES:
                raise ValueError(f"{name}[{index}] has dtype {tensor.dtype}; the EMA needs floating tensors "
                                 "(float32, float16, bfloat16 or float64)")
        if e.shape != p.shape:
            raise ValueError(f"pair {index}: ema tensor has shape {tuple(e.shape)} but model tensor has "
                             f"{tuple(p.shape)}; they must match")
        e, p = _local(e), _local(p)
        if e.shape != p.shape:
            raise ValueError(f"pair {index}: the local shards have shapes {tuple(e.shape)} and {tuple(p.shape)}; "
                             "shard the EMA like the model")
        device = device or e.device
        if e.device != device or p.device != device:
            raise ValueError(f"pair {index}: tensors on {e.device} and {p.device}, but pair 0 is on {device}; "
                             "all tensors must be on one device")
        if e.stride() != p.stride() or not _dense_layout(e):
            if not _dense_layout(e):  # e.g. expanded (stride 0): one element would take several updates
                raise ValueError(f"pair {index}: the ema tensor must be dense (contiguous, channels_last or "
                                 f"another order of its dimensions; not sliced or expanded), got strides {e.stride()}")
            p = torch.empty_like(e, dtype=p.dtype).copy_(p)  # a copy in e's memory order, read once
        ema.append(e.detach())
        params.append(p.detach())
    return ema, params, device


# [AVERAGE_SLOT] * n, one list per n: the same object on every call, as a memo compares it.
_AVERAGE_SLOTS = {}
# The key of ema_update_'s own check of its lists in their memo (the caches' keys are ints).
_CHECKED_INPUTS = "checked inputs"


def _checked_pairs(ema_tensors, model_tensors):
    """(ema, params, device, has a 16-bit EMA, slots, memo): the checked pairs. For list objects
    seen before whose tensors are unchanged, the lists themselves with their memo (see _ListsMemo),
    without another check; the memo is None where the pairs are not the lists themselves."""
    plain_lists = type(ema_tensors) in (list, tuple) and type(model_tensors) in (list, tuple) and \
        not torch.compiler.is_compiling()
    slots = _AVERAGE_SLOTS.get(len(ema_tensors)) if plain_lists else None
    if slots is None:
        slots = [AVERAGE_SLOT] * (len(ema_tensors) if plain_lists else 0)
        if plain_lists and len(_AVERAGE_SLOTS) < 64:
            _AVERAGE_SLOTS[len(ema_tensors)] = slots
    memo = _unchanged_memo(ema_tensors, model_tensors, slots) if plain_lists else None
    checked = memo.values.get(_CHECKED_INPUTS) if memo is not None else None
    if checked is not None:
        return (ema_tensors, model_tensors, *checked, slots, memo)
    ema, params, device = _check_pairs(ema_tensors, model_tensors)
    checked = device, any(e.dtype in (torch.bfloat16, torch.float16) for e in ema)
    if len(slots) != len(ema):
        slots = [AVERAGE_SLOT] * len(ema)
    memo = None
    if plain_lists and ema is ema_tensors and params is model_tensors and ema:
        memo = _remember(ema, params, slots)
        memo.values[_CHECKED_INPUTS] = checked
    return (ema, params, *checked, slots, memo)


@torch.no_grad()
def ema_update_(ema_tensors: Sequence[torch.Tensor], model_tensors: Sequence[torch.Tensor],
                decay: Union[float, torch.Tensor], *, backend: Optional[str] = None) -> None:
    """e <- lerp(e, p, 1 - decay), i.e. decay*e + (1-decay)*p, for every pair (e, p), in place, in
    one kernel launch (the exact formula, which keeps e when p == e, is in the module docstring).

    ema_tensors and model_tensors are equally long lists; each pair has one shape, any floating
    dtypes (e.g. a bf16 model with an fp32 EMA; the math is fp32, or fp64 for a pair with an fp64
    side). decay is a Python float in [0, 1] (made a device tensor once per value) or a 0-d
    floating tensor on the tensors' device, which is used as is: its range is not checked, because
    that would sync the host. decay 1 leaves e exactly as it was, decay 0 stores p exactly.
    DTensors update their local shards. Passing the same list objects on every call saves most of
    the host's work (their tensors are still compared on every call; see _ListsMemo).
    """
    ema, params, device, low_precision, slots, memo = _checked_pairs(ema_tensors, model_tensors)
    if isinstance(decay, torch.Tensor):
        if decay.numel() != 1 or not decay.is_floating_point():
            raise ValueError(f"a decay tensor must be a 0-d floating tensor, got shape {tuple(decay.shape)} "
                             f"and dtype {decay.dtype}")
        if device is not None and decay.device != device:
            raise ValueError(f"decay is on {decay.device} but the tensors are on {device}")
        decays = decay.detach().reshape(1).to(torch.float64)
    else:
        decay = _checks.probability(decay, "decay")
        if 0.999 <= decay < 1.0 and low_precision:
            _warn_low_precision_ema(decay)
        if not ema:
            return
        decays = _decay_tensor(decay, device)
    if not ema:
        return
    backend = _backend.resolve("ema", device, backend)
    if memo is not None:
        memo.just_checked = True  # the op's own lookup need not compare the tensors again
    try:
        ema_update_op(ema, params, decays, slots, backend)
    finally:
        if memo is not None:
            memo.just_checked = False


def _warn_low_precision_ema(decay):
    warnings.warn(f"an EMA held in bfloat16 or float16 with decay {decay} barely moves: (1 - decay) * (p - e) is "
                  "mostly below half a unit in the last place of e, so it rounds away. Keep the EMA in float32 "
                  "(ModelEMA(..., ema_dtype=torch.float32)).", UserWarning, stacklevel=3)
