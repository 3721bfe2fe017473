"""Pure-PyTorch oracles: the "torch" backend, the CPU fallback and what the tests compare against.

Each oracle takes the same seed tensor as the kernels and draws its mask from the same
Philox stream (recipe_kernels._philox), so masks agree bit for bit. `math_dtype` is the
precision of the arithmetic: float32 reproduces the kernels, float64 is the test oracle.
Results come back in math_dtype; callers round them to the output dtype.
"""
import torch

from recipe_kernels._philox import KEEP_BITS, drop_threshold, keep_mask, keep_scale, philox4x32


def dropout(x, seed, p, *, residual=None, bias=None, math_dtype=torch.float32):
    """residual + (x + bias) * keep / (1 - p), keep drawn per element by logical row-major index.

    A dropped element is multiplied by zero (NaN and inf stay NaN, as in torch).
    """
    value = x.to(math_dtype)
    if bias is not None:
        value = value + bias.to(math_dtype)
    if drop_threshold(p) == 0:
        multiplier = torch.ones((), dtype=math_dtype, device=x.device)
    else:
        # All four words of each Philox call, in element order: index i takes word i & 3 of call i >> 2.
        calls = torch.arange((x.numel() + 3) // 4, device=x.device, dtype=torch.int64)
        words = torch.stack(philox4x32(seed, calls), dim=-1).reshape(-1)[:x.numel()].reshape(x.shape)
        keep = (words >> (32 - KEEP_BITS)) >= drop_threshold(p)
        multiplier = keep.to(math_dtype) * keep_scale(p)
    out = value * multiplier
    if residual is not None:
        out = out + residual.to(math_dtype)
    return out


def drop_path(x, seed, p, *, residual=None, math_dtype=torch.float32):
    """residual + x * keep[b] / (1 - p), keep drawn per sample b along dim 0 (stochastic depth).

    A dropped sample contributes exactly 0 (its x is never read, so NaN there does not spread).
    """
    samples = torch.arange(x.shape[0], device=x.device, dtype=torch.int64)
    multiplier = keep_mask(seed, samples, p).to(math_dtype) * keep_scale(p)
    multiplier = multiplier.reshape((-1,) + (1,) * (x.dim() - 1))
    out = torch.where(multiplier != 0, x.to(math_dtype) * multiplier, 0.0)
    if residual is not None:
        out = out + residual.to(math_dtype)
    return out


# ----------------------------------------------------------------------------- cross-entropy


def _classes_last(tensor):
    """(N, C, d1, ..., dk) -> (N * d1 * ... * dk, C); (N, C) unchanged."""
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1]) if tensor.dim() > 2 else tensor


def cross_entropy_rows(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                       target_b=None, lam=None, math_dtype=torch.float32):
    """Per-row losses, the gradient of their sum, and the `mean` denominator of F.cross_entropy.

    logits: (N, C) or (N, C, d1, ..., dk). target: int64 class indices of shape (N, d1, ...),
    or class probabilities of logits' shape, or (with target_b and lam) the two index
    tensors and the per-sample (N,) weight of a MixedTarget. With e = label_smoothing, w the
    class weights (ones by default) and logp = log_softmax(logits):
      index target y: loss = -(1-e) w_y logp_y - e/C sum_c w_c logp_c, 0 where y == ignore_index;
                      denominator = sum of w_y over the rows not ignored (torch's convention);
      probabilities q: loss = -sum_c w_c ((1-e) q_c + e/C) logp_c; denominator = rows;
      mixed:         loss = lam loss(y_a) + (1-lam) loss(y_b); denominator = rows (as CE against
                     MixedTarget.dense(), a probability target).
    Returns (losses of the target's row shape, d(sum of losses)/d logits in logits' shape,
    denominator), in math_dtype. An index out of range raises (torch.gather), as in torch.
    """
    x = _classes_last(logits).to(math_dtype)
    rows, num_classes = x.shape
    w = torch.ones(num_classes, dtype=math_dtype, device=x.device) if weight is None else weight.to(math_dtype)
    logp = torch.log_softmax(x, dim=1)
    p = logp.exp()
    eps = label_smoothing
    smooth_loss = -(logp * w).sum(1)  # -sum_c w_c logp_c
    if target_b is not None:  # MixedTarget
        lam_rows = lam.to(math_dtype).reshape(-1, *([1] * (target.dim() - 1))).expand(target.shape).reshape(-1)
        losses = torch.zeros(rows, dtype=math_dtype, device=x.device)
        grad = torch.zeros_like(x)
        for y, share in ((target.reshape(-1), lam_rows), (target_b.reshape(-1), 1.0 - lam_rows)):
            alpha = share * (1.0 - eps) * w[y]
            losses = losses - alpha * logp.gather(1, y[:, None])[:, 0]
            grad = grad + alpha[:, None] * (p - torch.nn.functional.one_hot(y, num_classes).to(math_dtype))
        losses = losses + eps / num_classes * smooth_loss
        grad = grad + eps / num_classes * (p * w.sum() - w)
        denominator = torch.tensor(float(rows), dtype=math_dtype, device=x.device)
    elif target.is_floating_point():  # class probabilities
        q = (1.0 - eps) * _classes_last(target).to(math_dtype) + eps / num_classes
        wq = w * q
        losses = -(wq * logp).sum(1)
        grad = p * wq.sum(1, keepdim=True) - wq
        denominator = torch.tensor(float(rows), dtype=math_dtype, device=x.device)
    else:  # class indices
        y = target.reshape(-1)
        counted = y != ignore_index
        safe_y = torch.where(counted, y, 0)
        w_y = torch.where(counted, w[safe_y], 0.0)  # raises for an index out of range
        alpha = (1.0 - eps) * w_y
        beta = torch.where(counted, eps / num_classes, 0.0).to(math_dtype)
        losses = -alpha * logp.gather(1, safe_y[:, None])[:, 0] + beta * smooth_loss
        one_hot = torch.nn.functional.one_hot(safe_y, num_classes).to(math_dtype)
        grad = alpha[:, None] * (p - one_hot) + beta[:, None] * (p * w.sum() - w)
        denominator = w_y.sum()
    if logits.dim() > 2:
        grad = grad.reshape(logits.shape[0], *logits.shape[2:], num_classes).movedim(-1, 1)
    row_shape = (logits.shape[0],) + tuple(logits.shape[2:])
    return losses.reshape(row_shape), grad.contiguous(), denominator


# ----------------------------------------------------------------------------- mixing (CutMix, MixUp, random erasing)


# ----------------------------------------------------------------------------- EMA
