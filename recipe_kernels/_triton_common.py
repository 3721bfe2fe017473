"""Triton helpers shared by the op modules."""
import triton
import triton.language as tl

from recipe_kernels import _backend


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on the host, for grids: triton.cdiv is a constexpr_function, several times slower to call."""
    return -(-a // b)


# Decided at import: True when Triton's interpreter runs the kernels. Its fp32 -> bf16 casts
# truncate (3.6 and 3.7.1) where the GPU rounds to nearest even; round_to rounds like the GPU.
INTERPRETER_ROUNDS_BF16 = tl.constexpr(_backend.triton_interpreting())


@triton.jit
def round_to(value, dtype: tl.constexpr):
    """fp32 `value` rounded to nearest even in `dtype`, on the GPU and in the interpreter alike."""
    if INTERPRETER_ROUNDS_BF16 and dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)  # keep NaN a NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return value.to(dtype)
