"""Exact fp32 rounding oracles for the tests: rational arithmetic (fractions.Fraction) rounded once."""
import math
from fractions import Fraction

import numpy as np

FLOAT32_MAX = Fraction(float(np.finfo(np.float32).max))
# |x| at or past the midpoint between the largest fp32 and 2^128 rounds to infinity.
OVERFLOW = FLOAT32_MAX + Fraction(2) ** 103


def round_to_float32(exact: Fraction) -> np.float32:
    """The fp32 nearest to `exact`, ties to the even significand; infinity past the overflow midpoint."""
    if abs(exact) >= OVERFLOW:
        return np.float32(math.copysign(math.inf, exact))
    guess = np.float32(float(exact))  # within an ulp (double rounding); the neighbours decide
    if np.isinf(guess):
        guess = np.float32(math.copysign(float(FLOAT32_MAX), exact))
    with np.errstate(over="ignore"):
        neighbours = (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf)))
    candidates = [c for c in neighbours if np.isfinite(c)]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1))


def exact_fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """a * b + c rounded once to fp32 (C's fmaf)."""
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.float32(np.float64(a) * np.float64(b) + np.float64(c))  # the inf and NaN rules
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:  # an exact zero is -0 only when the product and c are both negative zeros
        product_negative = np.signbit(a) != np.signbit(b)
        return np.float32(-0.0) if product_negative and np.signbit(c) else np.float32(0.0)
    return round_to_float32(exact)
