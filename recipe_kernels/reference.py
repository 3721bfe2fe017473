"""Pure-PyTorch oracles: the "torch" backend, the CPU fallback and what the tests compare against.

Each oracle takes the same seed tensor as the kernels and draws its mask from the same
Philox stream (recipe_kernels._philox), so masks agree bit for bit. `math_dtype` is the
precision of the arithmetic: float32 reproduces the kernels, float64 is the test oracle.
Results come back in math_dtype; callers round them to the output dtype.
"""
import torch

from recipe_kernels._codes import MixMode
from recipe_kernels._philox import KEEP_BITS, drop_threshold, keep_mask, keep_scale, philox4x32


def dropout(x, seed, p, *, residual=None, bias=None, math_dtype=torch.float32):
    """residual + (x + bias) * keep / (1 - p), keep drawn per element by logical row-major index.

    A dropped element is multiplied by zero (NaN and inf stay NaN, as in torch). The scale is
    1/(1-p) rounded to math_dtype: float32 is the fp32 ops' arithmetic, float64 the float64 ops'.
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
        multiplier = keep.to(math_dtype) * keep_scale(p, math_dtype)
    out = value * multiplier
    if residual is not None:
        out = out + residual.to(math_dtype)
    return out


def drop_path(x, seed, p, *, residual=None, math_dtype=torch.float32):
    """residual + x * keep[b] / (1 - p), keep drawn per sample b along dim 0 (stochastic depth).

    A dropped sample contributes exactly 0 (its x is never read, so NaN there does not spread).
    """
    samples = torch.arange(x.shape[0], device=x.device, dtype=torch.int64)
    multiplier = keep_mask(seed, samples, p).to(math_dtype) * keep_scale(p, math_dtype)
    multiplier = multiplier.reshape((-1,) + (1,) * (x.dim() - 1))
    out = torch.where(multiplier != 0, x.to(math_dtype) * multiplier, 0.0)
    if residual is not None:
        out = out + residual.to(math_dtype)
    return out


def subset_keys(seed, num_samples):
    """drop_path_residual's sort keys: (word(n) - 2^31) * 2^32 + n for n < N (< 2^32), int64.

    word(n) is element n's Philox word (drop_path's per-sample word); ordering the keys
    orders the (word, index) pairs, so ties between words are broken by the index.
    """
    from recipe_kernels._philox import element_words
    samples = torch.arange(num_samples, device=seed.device, dtype=torch.int64)
    return (element_words(seed, samples) - (1 << 31)) * (1 << 32) + samples


def subset_from_keys(keys, kept):
    """(rows, slot): the indices of the `kept` smallest keys in increasing order, and the map
    slot[rows[j]] = j, -1 for the other samples (int64, on keys' device, no host sync)."""
    rows = torch.sort(torch.topk(keys, kept, largest=False, sorted=False).indices).values
    slot = torch.full_like(keys, -1).scatter_(0, rows, torch.arange(kept, device=keys.device))
    return rows, slot


def _scaled_rows(t, scale, math_dtype):
    value = t.reshape(t.shape[0], t.shape[1:].numel()).to(math_dtype)
    return value * scale if scale != 1.0 else value


def gather_rows(x, rows, scale, *, math_dtype=torch.float32):
    """scale * x[rows] as (len(rows), row size): drop_path_residual's gather (of x, scale 1; of the
    output's gradient, scale N/k)."""
    return _scaled_rows(x.index_select(0, rows), scale, math_dtype)


def add_rows(x, y, rows, scale, *, math_dtype=torch.float32):
    """x with scale * y[j] added to row rows[j], as (N, row size): drop_path_residual's residual add
    (scale N/k) and its grad_x (the branch's input gradient added to grad_out, scale 1). The other
    rows are x's, unchanged (even -0.0)."""
    out = x.reshape(x.shape[0], x.shape[1:].numel()).to(math_dtype, copy=True)
    return out.index_copy_(0, rows, out.index_select(0, rows) + _scaled_rows(y, scale, math_dtype))


# ----------------------------------------------------------------------------- cross-entropy


def _classes_last(tensor):
    """(N, C, d1, ..., dk) -> (N * d1 * ... * dk, C); (N, C) unchanged."""
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1]) if tensor.dim() > 2 else tensor


def cross_entropy_rows(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                       target_b=None, lam=None, z_loss=0.0, math_dtype=torch.float32):
    """Per-row losses, the gradient of their sum, and the `mean` denominator of F.cross_entropy.

    logits: (N, C) or (N, C, d1, ..., dk). target: int64 class indices of shape (N, d1, ...),
    or class probabilities of logits' shape, or (with target_b and lam) the two index
    tensors and the per-sample (N,) weight of a MixedTarget. With e = label_smoothing, w the
    class weights (ones by default) and logp = log_softmax(logits):
      index target y: loss = -(1-e) w_y logp_y - e/C sum_c w_c logp_c; loss and gradient exactly 0
                      where y == ignore_index, whatever the row's logits (torch: NaN gradient there);
                      denominator = sum of w_y over the rows not ignored (torch's convention);
      probabilities q: loss = -sum_c w_c ((1-e) q_c + e/C) logp_c; denominator = rows;
      mixed:         loss = lam loss(y_a) + (1-lam) loss(y_b); denominator = rows (as CE against
                     MixedTarget.dense(), a probability target).
    z_loss > 0 adds z_loss lse^2 (lse = logsumexp of the row) to every counted row's loss and
    2 z_loss lse p to its gradient.
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
        if eps > 0:  # skipped at 0 so that a -inf logit does not turn 0 * inf into NaN
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
        beta = counted.to(math_dtype) * (eps / num_classes)  # a Python float: exact in math_dtype
        losses = -alpha * logp.gather(1, safe_y[:, None])[:, 0]
        one_hot = torch.nn.functional.one_hot(safe_y, num_classes).to(math_dtype)
        grad = alpha[:, None] * (p - one_hot)
        if eps > 0:
            losses = losses + beta * smooth_loss
            grad = grad + beta[:, None] * (p * w.sum() - w)
        # An ignored row is exactly zero even when its logits hold NaN or inf (0 * NaN would not be).
        losses = torch.where(counted, losses, 0.0)
        grad = torch.where(counted[:, None], grad, 0.0)
        denominator = w_y.sum()
    if z_loss > 0:  # skipped at 0, like smoothing, so that -inf rows stay as they were
        lse = torch.logsumexp(x, dim=1)
        counted_rows = torch.ones_like(lse, dtype=torch.bool) if target_b is not None or target.is_floating_point() \
            else target.reshape(-1) != ignore_index
        losses = losses + torch.where(counted_rows, z_loss * lse * lse, 0.0)
        grad = grad + torch.where(counted_rows, 2.0 * z_loss * lse, 0.0)[:, None] * p
    if logits.dim() > 2:
        grad = grad.reshape(logits.shape[0], *logits.shape[2:], num_classes).movedim(-1, 1)
    row_shape = (logits.shape[0],) + tuple(logits.shape[2:])
    return losses.reshape(row_shape), grad.contiguous(), denominator


def row_logsumexp(logits, *, math_dtype=torch.float32):
    """log sum_c exp(logits_c) per row, in the target's row shape (N, d1, ..., dk)."""
    return torch.logsumexp(logits.to(math_dtype), dim=1)


def cross_entropy_target_gradient(logits, *, weight=None, label_smoothing=0.0, math_dtype=torch.float32):
    """d(sum of per-row losses) / d q for class probabilities q of logits' shape, in math_dtype:
    -(1 - e) w_c log_softmax(logits)_c (torch smooths q as (1 - e) q + e / C before using it)."""
    logp = torch.log_softmax(logits.to(math_dtype), dim=1)
    w = 1.0 if weight is None else weight.to(math_dtype).reshape((-1,) + (1,) * (logits.dim() - 2))
    return -(1.0 - label_smoothing) * w * logp


# ----------------------------------------------------------------------------- mixing (CutMix, MixUp, random erasing)

_TWO_PI_F32 = 6.2831855  # 2*pi rounded to fp32, as in the kernels
_TWO_POW_MINUS_24 = 5.9604644775390625e-08


def erase_noise(seed, index):
    """Standard normal fp32 noise per logical element index: Box-Muller on words 0 and 1 of Philox(seed, index).

    u1 = (top 24 bits of word 0 + 1) * 2^-24 in (0, 1], u2 = top 24 bits of word 1 * 2^-24;
    z = sqrt(-2 log u1) * cos(2 pi u2), every step in fp32 in the kernels' order.
    """
    from recipe_kernels._philox import philox4x32 as philox_words
    word0, word1, _, _ = philox_words(seed, index)
    u1 = ((word0 >> 8) + 1).to(torch.float32) * _TWO_POW_MINUS_24
    u2 = (word1 >> 8).to(torch.float32) * _TWO_POW_MINUS_24
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(u2 * _TWO_PI_F32)


def _round_to_dtype(value, dtype):
    """value rounded to what `dtype` stores, kept in value's dtype: uint8 rounds half up and saturates (NaN gives 0)."""
    if dtype == torch.uint8:
        rounded = torch.floor(value + 0.5)
        return torch.where(rounded > 0.0, rounded, 0.0).clamp(max=255.0)  # NaN > 0 is false: 0, as the kernels
    if dtype == torch.float64:
        return value
    return value.to(dtype).to(value.dtype)


def composite_batch(x, box, lam, partner, mode, *, fill=None, mean=None, std=None, noise_seed=None,
                    math_dtype=torch.float32):
    """The compositing oracle: per sample n with partner m = partner[n] (clamped to [0, N)),

        mode 1 (MixUp)   lam[n] * x[n] + (1 - lam[n]) * x[m]
        mode 2 (CutMix)  x[m] inside box[n] = (x0, y0, x1, y1) (half-open), x[n] outside
        mode 3 (erase)   fill[c] (or erase_noise at the NCHW index when noise_seed is given) inside, x[n] outside
        otherwise        x[n]

    rounded to x's dtype (uint8 half up), then (v - mean[c]) / std[c] when mean is given (in
    mean's dtype if it is wider than math_dtype). Returns (N, C, H, W) in that dtype; callers
    round it to the output dtype.
    """
    n, channels, height, width = x.shape
    own = x.to(math_dtype)
    other = own[partner.long().clamp(0, n - 1)]
    as_sample = lambda t: t.reshape(n, 1, 1, 1)  # noqa: E731
    box = box.long()
    rows = torch.arange(height, device=x.device).reshape(1, 1, height, 1)
    cols = torch.arange(width, device=x.device).reshape(1, 1, 1, width)
    inside = ((rows >= as_sample(box[:, 1])) & (rows < as_sample(box[:, 3])) &
              (cols >= as_sample(box[:, 0])) & (cols < as_sample(box[:, 2])))
    mode = as_sample(mode)
    weight = as_sample(lam.to(math_dtype))
    mixed = weight * own + (1 - weight) * other
    value = torch.where(mode == MixMode.MIXUP, mixed, own)
    value = torch.where((mode == MixMode.CUTMIX) & inside, other, value)
    if noise_seed is not None:
        index = torch.arange(x.numel(), device=x.device, dtype=torch.int64).reshape(x.shape)
        fill_value = erase_noise(noise_seed, index).to(math_dtype)
    else:
        fill_value = (fill if fill is not None else torch.zeros(channels)).to(x.device, math_dtype)
        fill_value = fill_value.reshape(1, channels, 1, 1)
    value = torch.where((mode == MixMode.ERASE) & inside, fill_value, value)
    value = _round_to_dtype(value, x.dtype)  # the value an unfused op would store
    if mean is not None:  # in mean's dtype when wider (float64 normalization of a float32 composite)
        norm_dtype = torch.promote_types(math_dtype, mean.dtype)
        value = (value.to(norm_dtype) - mean.to(norm_dtype).reshape(1, channels, 1, 1)) / \
            std.to(norm_dtype).reshape(1, channels, 1, 1)
    return value


def cutmix_swap_(x, box):
    """In place: sample i and sample N-1-i exchange their pixels inside the batch's box (box[i], all equal)."""
    n, _, height, width = x.shape
    box = box.long().reshape(n, 4, 1, 1, 1)
    rows = torch.arange(height, device=x.device).reshape(1, 1, height, 1)
    cols = torch.arange(width, device=x.device).reshape(1, 1, 1, width)
    inside = (rows >= box[:, 1]) & (rows < box[:, 3]) & (cols >= box[:, 0]) & (cols < box[:, 2])
    x.copy_(torch.where(inside, x.flip(0), x))  # the middle sample of an odd batch is its own partner
    return x


# ----------------------------------------------------------------------------- EMA


def ema_math_dtype(ema_dtype, param_dtype):
    """The precision of a pair's EMA arithmetic: float64 when either side is float64, else float32."""
    return torch.float64 if torch.float64 in (ema_dtype, param_dtype) else torch.float32


def ema_blend(ema, param, decay, *, math_dtype=torch.float32):
    """torch.lerp(e, p, w) with w = 1 - d, each operation rounded to math_dtype (no FMA); d == 0
    gives p, d == 1 gives e.

    torch's lerp formula: e + w*(p - e) when |w| < 0.5, else p - (p - e)*(1 - w). Both keep e
    exactly when p == e (finite). decay is a Python float or a 0-d tensor, rounded to math_dtype
    first. The kernels compute this in ema_math_dtype of the pair (that math_dtype reproduces them
    bit for bit) and round the result to fp32, then to e's dtype.
    """
    e, p = ema.to(math_dtype), param.to(math_dtype)
    d = torch.as_tensor(decay, dtype=torch.float64, device=e.device).to(math_dtype)  # a Python float is fp64
    weight = 1.0 - d
    small = weight.abs() < 0.5
    # base + coeff*(p - e): w - 1 is -(1 - w) exactly, so the second form is p - (p - e)*(1 - w).
    blended = torch.where(small, e, p) + torch.where(small, weight, weight - 1.0) * (p - e)
    return torch.where(d == 0.0, p, torch.where(d == 1.0, e, blended))


def ema_decays(t, decay, *, warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, min_decay=0.0,
               update_after_step=0, update_every=1):
    """ModelEMA's decays for update number t (1-based), in float64: (parameter decay, copy decay).

    Skipped update (update_every > 1, t % update_every != 0): (1, 1), nothing changes. Copy
    phase (t <= update_after_step): (0, 0). Else (d, 0) with d = decay or, with warmup,
    min(decay, max(min_decay, 1 - (1 + s/warmup_gamma)^(-warmup_power))), s = t - update_after_step.
    The warmup term 1 - (1 + s/warmup_gamma)^(-warmup_power) is rounded to fp32: the backends'
    exp and log (the kernels compute the power as exp(-power * log(base)) in fp64) differ in the
    last fp64 bit, and the rounding makes their decays equal. The rest is exact in fp64.
    """
    if t % update_every != 0:
        return 1.0, 1.0
    if t <= update_after_step:
        return 0.0, 0.0
    if warmup:
        s = t - update_after_step
        warm = torch.tensor(1.0 - (1.0 + s / warmup_gamma) ** (-warmup_power), dtype=torch.float32).item()
        return min(decay, max(min_decay, warm)), 0.0
    return decay, 0.0


# ----------------------------------------------------------------------------- augment (crop, resize, flip)


def resized_crop(images, boxes, size, *, flip=None, antialias=True, mean=None, std=None):
    """Per sample n: crop images[n] (C, H, W) to boxes[n] = (top, left, height, width), zeros outside
    the image (torchvision's crop pads), resize to size = (h, w) with torch's bilinear interpolate
    (align_corners=False, antialias), flip horizontally where flip[n], then (v - mean[c]) / std[c].

    All in fp32 (a uint8 image is not rounded on the way); returns (N, C, h, w) fp32. Reads the
    boxes on the host: the oracle, not a fast path.
    """
    out = []
    flips = [False] * len(images) if flip is None else flip.tolist()
    for image, (top, left, box_height, box_width), flipped in zip(images, boxes.tolist(), flips):
        channels, height, width = image.shape
        crop = image.new_zeros((channels, max(box_height, 0), max(box_width, 0)), dtype=torch.float32)
        rows = slice(max(top, 0), min(top + box_height, height))
        cols = slice(max(left, 0), min(left + box_width, width))
        if rows.start < rows.stop and cols.start < cols.stop:
            crop[:, rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = image[:, rows, cols].float()
        if crop.numel() == 0:
            resized = crop.new_zeros((channels, *size))
        elif tuple(crop.shape[1:]) == tuple(size):  # torchvision returns the crop itself
            resized = crop
        else:
            resized = torch.nn.functional.interpolate(crop[None], size=list(size), mode="bilinear",
                                                      align_corners=False, antialias=antialias)[0]
        out.append(resized.flip(-1) if flipped else resized)
    value = torch.stack(out)
    if mean is not None:
        value = (value - mean.float().reshape(1, -1, 1, 1)) / std.float().reshape(1, -1, 1, 1)
    return value


def round_image(value, dtype):
    """fp32 image values rounded to `dtype`: uint8 half up and saturating, floating dtypes to nearest even."""
    if dtype == torch.uint8:
        return _round_to_dtype(value, torch.uint8).to(torch.uint8)
    return value.to(dtype)
