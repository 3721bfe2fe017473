"""The package's RNG contract, in torch integer ops (the reference every kernel matches).

Philox4x32 with PHILOX_ROUNDS rounds, key = the 64-bit seed, counter = (i >> 2, 0, 0)
for the element with 64-bit logical row-major index i, which takes word i & 3 of
that call's output: one Philox call serves four consecutive elements.

An element is dropped iff (word >> 8) < drop_threshold(p) = round(p * 2^24): an
integer comparison, identical on every backend, whose keep probability is within
2^-25 of 1 - p. The seed is drawn per call on the tensor's device (draw_seed), so a
captured CUDA graph draws a fresh one on every replay.
"""
import functools
import struct

import torch

PHILOX_ROUNDS = 7  # the fewest rounds Random123 rates crush-resistant; keeps dropout memory-bound
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
KEEP_BITS = 24
_MASK32 = 0xFFFFFFFF


def drop_threshold(p: float) -> int:
    """round(p * 2^24): an element is dropped when the top 24 bits of its word are below this."""
    return int(round(p * (1 << KEEP_BITS)))


@functools.lru_cache(maxsize=256)  # a run uses a few p values; the bit arithmetic costs more than a cache hit
def keep_from_bits(p: float) -> int:
    """drop_threshold(p) << (32 - KEEP_BITS) as the bits of an int32: a word, read unsigned, is kept
    iff it is >= this, the same decision as (word >> 8) >= drop_threshold(p) without the shift.
    At p = 1 it wraps to 0 and keeps every element, which is harmless where the kept elements are
    multiplied by keep_scale(1) = 0, as in the dropout kernels that use it."""
    bits = (drop_threshold(p) << (32 - KEEP_BITS)) & _MASK32
    return bits - (1 << 32) if bits >= 1 << 31 else bits


def keep_scale(p: float, math_dtype: torch.dtype = torch.float32) -> float:
    """1/(1-p), the inverted-dropout scale every backend uses: rounded to fp32 for fp32 math, in full
    for the float64 ops' fp64 math; 0 when p == 1."""
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    return scale if math_dtype == torch.float64 else struct.unpack("f", struct.pack("f", scale))[0]


def draw_seed(device, generator=None) -> torch.Tensor:
    """A fresh 64-bit seed as a one-element int64 tensor on `device`, drawn from torch's RNG.

    Drawn on the device itself: no host sync, and each replay of a captured CUDA graph
    draws anew. Never pass seeds as Python ints (a graph would freeze them).
    """
    # [-2^63, 2^63 - 1): every 64-bit key but one. Out of place, so that dynamo can trace it.
    return torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, device=device, generator=generator)


def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of a * b for a 32-bit constant a and uint32 values b in int64.

    b is split into 16-bit halves so that no int64 product overflows.
    """
    low_product = a * (b & 0xFFFF)    # < 2^48
    high_product = a * (b >> 16)      # < 2^48
    lo = (low_product + ((high_product & 0xFFFF) << 16)) & _MASK32
    hi = ((high_product + (low_product >> 16)) >> 16) & _MASK32
    return hi, lo


def philox4x32(seed: torch.Tensor, counter: torch.Tensor, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 words for 64-bit counters (c0, c1) = (counter lo, hi), c2 = c3 = 0.

    seed: int64 tensor with one element; counter: int64 tensor. Returns four int64
    tensors of counter's shape holding uint32 values, equal bit for bit to Triton's
    tl.randint4x(seed, counter, rounds) and to csrc/philox.cuh.
    """
    seed = seed.reshape(()).to(torch.int64)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0 = counter & _MASK32
    c1 = (counter >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def element_words(seed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The Philox word of each element index (int64 holding uint32): word index & 3 of call index >> 2."""
    words = torch.stack(philox4x32(seed, index >> 2), dim=-1)
    return torch.gather(words, -1, (index & 3).unsqueeze(-1)).squeeze(-1)


def keep_mask(seed: torch.Tensor, index: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean keep decision for each logical element index under drop probability p."""
    return (element_words(seed, index) >> (32 - KEEP_BITS)) >= drop_threshold(p)
