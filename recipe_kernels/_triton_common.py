"""Triton helpers shared by the op modules."""
import triton
import triton.language as tl

from recipe_kernels import _backend


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on the host, for grids: triton.cdiv is a constexpr_function, several times slower to call."""
    return -(-a // b)


# Decided at import: True when Triton's interpreter runs the kernels. Where it differs from the GPU, the
# helpers below take another path that gives the GPU's bits: its fp32 -> bf16 casts truncate (3.6 and
# 3.7.1; the GPU rounds to nearest even), its tl.fma rounds twice (numpy's product, then the sum), and it
# cannot run inline PTX.
INTERPRETING = tl.constexpr(_backend.triton_interpreting())


@triton.jit
def round_to(value, dtype: tl.constexpr):
    """fp32 `value` rounded to nearest even in `dtype`, on the GPU and in the interpreter alike."""
    if INTERPRETING and dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)  # keep NaN a NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return value.to(dtype)


@triton.jit
def fma(a, b, c):
    """fp32 a * b + c rounded once to nearest even (FFMA), on the GPU and in the interpreter alike.

    The interpreter's path: a * b is exact in fp64 (24 + 24 significant bits); the fp64 sum is rounded to odd
    (TwoSum's error term says whether it was inexact; an inexact sum with an even last bit steps one ulp toward
    the exact value), and an fp64 rounded to odd, with 53 >= 24 + 2 bits, rounds to fp32 as the exact value does.
    """
    if INTERPRETING:
        product = a.to(tl.float64) * b.to(tl.float64)
        addend = c.to(tl.float64)
        total = product + addend
        addend_part = total - product  # TwoSum: total + error == product + addend exactly
        error = (product - (total - addend_part)) + (addend - addend_part)
        bits = total.to(tl.int64, bitcast=True)
        # Only a finite inexact total with an even last bit moves: away from zero when the error has its sign.
        inexact = (error != 0.0) & (total - total == 0.0) & ((bits & 1) == 0)
        step = tl.where((error > 0.0) == (total > 0.0), 1, -1)
        odd = tl.where(inexact, bits + step, bits).to(tl.float64, bitcast=True)
        return odd.to(tl.float32)
    return tl.fma(a, b, c)


@triton.jit
def bf16_to_fp32(x):
    """bf16 `x` widened to fp32 (exact), one instruction per element on the GPU: of each 32-bit pair, the low
    half shifted up and the high half masked in place (cvt.f32.bf16 costs the high half a PRMT and a shift)."""
    if INTERPRETING:
        return x.to(tl.float32)
    return tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=2)
