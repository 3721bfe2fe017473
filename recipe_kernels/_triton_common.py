"""Triton helpers shared by the op modules."""
import triton
import triton.language as tl

from recipe_kernels import _backend


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on the host, for grids: triton.cdiv is a constexpr_function, several times slower to call."""
    return -(-a // b)


def emulate_bf16_rounding() -> bool:
    """The value of the EMULATE_BF16_RTNE constexpr: True under TRITON_INTERPRET=1.

    Triton 3.6's interpreter truncates fp32 -> bf16 casts where the GPU rounds to
    nearest even; the emulation makes interpreted kernels round like the GPU.
    """
    return _backend.triton_interpreting()


@triton.jit
def cast_to(value, dtype: tl.constexpr, EMULATE_BF16_RTNE: tl.constexpr):
    """round_to under the signature the families not yet on the op layer still pass
    (EMULATE_BF16_RTNE always equals INTERPRETER_ROUNDS_BF16)."""
    return round_to(value, dtype)


# Decided at import: True when Triton's interpreter runs the kernels (it truncates fp32 -> bf16).
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
