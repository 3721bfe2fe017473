"""Pure-PyTorch oracles: the "torch" backend, the CPU fallback and what the tests compare against.

Each oracle takes the same seed tensor as the kernels and draws its mask from the same
Philox stream (recipe_kernels._philox), so masks agree bit for bit. `math_dtype` is the
precision of the arithmetic: float32 reproduces the kernels, float64 is the test oracle.
Results come back in math_dtype; callers round them to the output dtype.
"""
import torch

from recipe_kernels._philox import drop_threshold, keep_mask, keep_scale


def _keep_and_scale(seed, index, p, math_dtype):
    """Per-index multiplier: the fp32-rounded 1/(1-p) where kept, 0 where dropped."""
    if drop_threshold(p) == 0:
        return torch.full(index.shape, keep_scale(p), dtype=math_dtype, device=index.device)
    return keep_mask(seed, index, p).to(math_dtype) * keep_scale(p)


def dropout(x, seed, p, *, residual=None, bias=None, math_dtype=torch.float32):
    """residual + (x + bias) * keep / (1 - p), keep drawn per element by logical row-major index.

    A dropped element is multiplied by zero (NaN and inf stay NaN, as in torch).
    """
    index = torch.arange(x.numel(), device=x.device, dtype=torch.int64).reshape(x.shape)
    value = x.to(math_dtype)
    if bias is not None:
        value = value + bias.to(math_dtype)
    out = value * _keep_and_scale(seed, index, p, math_dtype)
    if residual is not None:
        out = out + residual.to(math_dtype)
    return out


def drop_path(x, seed, p, *, residual=None, math_dtype=torch.float32):
    """residual + x * keep[b] / (1 - p), keep drawn per sample b along dim 0 (stochastic depth).

    A dropped sample contributes exactly 0 (its x is never read, so NaN there does not spread).
    """
    samples = torch.arange(x.shape[0], device=x.device, dtype=torch.int64)
    multiplier = _keep_and_scale(seed, samples, p, math_dtype).reshape((-1,) + (1,) * (x.dim() - 1))
    out = torch.where(multiplier != 0, x.to(math_dtype) * multiplier, 0.0)
    if residual is not None:
        out = out + residual.to(math_dtype)
    return out


# ----------------------------------------------------------------------------- cross-entropy


# ----------------------------------------------------------------------------- mixing (CutMix, MixUp, random erasing)


# ----------------------------------------------------------------------------- EMA
