"""The Triton helpers of recipe_kernels._triton_common that emulate GPU rounding in the interpreter.

fma must give a * b + c rounded once to the nearest fp32 (ties to even), as the GPU's FFMA and C's fmaf do; the
oracle is exact rational arithmetic (tests/exact_rounding.py), over random triples and the cases
where rounding twice goes wrong: a product just off an fp32 midpoint, an exact midpoint decided by a far smaller
addend, cancellation, subnormal results, overflow, infinities, NaNs and signed zeros.
"""
import numpy as np
import torch
import triton
import triton.language as tl

from conftest import DEVICE
from exact_rounding import exact_fma
from recipe_kernels._triton_common import fma

BLOCK = 1024


@triton.jit
def _fma_kernel(a_ptr, b_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    a = tl.load(a_ptr + offsets, mask=mask)
    b = tl.load(b_ptr + offsets, mask=mask)
    c = tl.load(c_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, fma(a, b, c), mask=mask)


def triton_fma(a, b, c):
    out = torch.empty_like(a)
    _fma_kernel[(triton.cdiv(a.numel(), BLOCK),)](a, b, c, out, a.numel(), BLOCK=BLOCK)
    return out


def check(a, b, c):
    a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
    got = triton_fma(*(torch.from_numpy(v.copy()).to(DEVICE) for v in (a, b, c))).cpu().numpy()
    expected = np.array([exact_fma(*t) for t in zip(a, b, c)], dtype=np.float32)
    same = (got.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(got) & np.isnan(expected))
    bad = np.flatnonzero(~same)
    assert bad.size == 0, [(a[i], b[i], c[i], got[i], expected[i]) for i in bad[:5]]


def random_floats(rng, n, low_exponent=-30, high_exponent=30):
    significand = rng.uniform(1.0, 2.0, n) * rng.choice([-1.0, 1.0], n)
    return (significand * np.exp2(rng.integers(low_exponent, high_exponent, n))).astype(np.float32)


def test_fma_rounds_random_triples_once():
    rng = np.random.default_rng(0)
    n = 3000
    a, b = random_floats(rng, n), random_floats(rng, n)
    # c near a * b (cancellation), of any size, or far below it (the product's own rounding decides)
    near = (-(a.astype(np.float64) * b)).astype(np.float32) * (1 + rng.integers(-4, 5, n) * 2.0 ** -23)
    c = np.where(rng.random(n) < 0.4, near.astype(np.float32), random_floats(rng, n, -60, 60))
    check(a, b, c)


def test_fma_rounds_products_just_off_a_midpoint_correctly():
    # c = x with an odd last bit, a * b = ulp(x) / 2 * (1 - 2^-2k): the exact sum lies just below the midpoint
    # x + ulp / 2. Rounded to fp64 first (k >= 15) it would land on the midpoint and round up to even.
    rng = np.random.default_rng(1)
    n = 2000
    x = random_floats(rng, n, -100, 100)
    x = (x.view(np.uint32) | 1).view(np.float32)  # an odd significand
    k = rng.integers(10, 24, n)
    half_ulp_exponent = np.frexp(np.abs(x.astype(np.float64)))[1] - 25  # ulp(x) / 2 = 2^(e - 25)
    split = rng.integers(-10, 11, n)
    sign = np.sign(x) * rng.choice([-1.0, 1.0], n)  # toward x's magnitude or away from it
    below = rng.random(n) < 0.5  # (1 + 2^-k)(1 - 2^-k) = 1 - 2^-2k, or (1 + 2^-k)^2 = 1 + 2^(1-k) + 2^-2k
    a = ((1 + np.exp2(-k)) * np.exp2(half_ulp_exponent - split) * sign).astype(np.float32)
    b = (np.where(below, 1 - np.exp2(-k), 1 + np.exp2(-k)) * np.exp2(split)).astype(np.float32)
    check(a, b, x)


def test_fma_breaks_an_exact_midpoint_product_by_a_tiny_addend():
    # a * b with 25 significant bits ending in 1 is an fp32 midpoint; c far below it (lost when added in fp64)
    # decides the direction, or c = 0 leaves the tie to even.
    rng = np.random.default_rng(2)
    n = 2000
    a = ((rng.integers(1 << 12, 1 << 13, n) | 1) * np.exp2(rng.integers(-40, 20, n))).astype(np.float32)
    b = ((rng.integers(1 << 12, 1 << 13, n) | 1) * np.exp2(rng.integers(-40, 20, n))).astype(np.float32)
    b = b * rng.choice([-1.0, 1.0], n).astype(np.float32)
    product = a.astype(np.float64) * b
    tiny = np.abs(product) * np.exp2(-rng.integers(40, 90, n)) * rng.choice([-1.0, 0.0, 1.0], n)
    check(a, b, tiny.astype(np.float32))


def test_fma_subnormal_results_overflow_and_special_values():
    rng = np.random.default_rng(3)
    n = 1000
    a, b = random_floats(rng, n, -80, -40), random_floats(rng, n, -80, -40)
    c = random_floats(rng, n, -150, -120)
    check(a, b, c)  # results at and below 2^-126
    big = np.float32(np.finfo(np.float32).max)
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    inf, nan = np.float32(np.inf), np.float32(np.nan)
    cases = [(big, 2, 0), (big, 1, big), (big, -1, -big), (2.0 ** 64, 2.0 ** 64, -big), (big, 1, 2.0 ** 103),
             (big, 1, 2.0 ** 103 - 2.0 ** 79), (tiny, 0.5, 0), (tiny, 0.5, tiny), (tiny, -0.5, 0), (tiny, 1.5, 0),
             (inf, 0, 1), (inf, 1, -inf), (inf, 2, 1), (1, 1, -inf), (nan, 1, 1), (1, 1, nan),
             (0.0, -1, 0.0), (-0.0, 1, -0.0), (0.0, -1, -0.0), (1, 1, -1), (-1, 1, 1), (3, -0.0, 0.0)]
    check(*zip(*cases))
