"""cutmix, mixup, cutmix_or_mixup, random_erasing, composite_batch: pixels, lambdas, layouts, backends, plumbing."""
import math

import pytest
import torch
import triton
import triton.language as tl

import recipe_kernels as rk
from recipe_kernels import _backend, mixing, reference
from recipe_kernels.mixing import MixMode, composite_batch_op, cutmix_swap_op
from recipe_kernels.targets import MixedTarget

from conftest import BACKENDS, DEVICE

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]
# 4 x 3 x 16 x 16: even N (no sample is its own flip partner), 3 channels (channels_last
# differs from contiguous), small enough for the Triton interpreter.
SHAPE = (4, 3, 16, 16)
MEAN, STD = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)


def sample_inputs(shape=SHAPE, dtype=torch.float32, channels_last=False, seed=0):
    """x whose samples occupy disjoint value ranges (sample n in [50n, 50n + 41)), so that every
    pixel differs from the same pixel of any other sample; and int64 class targets."""
    generator = torch.Generator().manual_seed(seed)
    n = shape[0]
    base = torch.randint(0, 40, shape, generator=generator).float() + 50.0 * torch.arange(n).reshape(n, 1, 1, 1)
    if dtype != torch.uint8:
        base = base + torch.rand(shape, generator=generator)
    x = base.to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.arange(n, device=DEVICE) * 7


def with_seed(fn, seed=1234):
    torch.manual_seed(seed)
    return fn()


def partner_of(n, partner):
    index = torch.arange(n, device=DEVICE)
    return index.flip(0) if partner == "flip" else index.roll(1)


def pasted_rectangle(out, own, other):
    """The (x0, y0, x1, y1) rectangle where out takes `other`, checking that out is `own` elsewhere.

    Returns None when out equals own everywhere. Needs own != other at every pixel.
    """
    taken = (out == other).all(0)
    assert torch.equal(taken, (out != own).any(0)), "a pixel is neither own nor partner"
    assert torch.equal(out[:, ~taken], own[:, ~taken])
    if not taken.any():
        return None
    rows, cols = taken.any(1).nonzero().flatten(), taken.any(0).nonzero().flatten()
    y0, y1, x0, x1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
    assert taken[y0:y1, x0:x1].all() and taken.sum().item() == (y1 - y0) * (x1 - x0), "not one rectangle"
    return x0, y0, x1, y1


def all_modes_params(n=4, height=16, width=16):
    """Explicit parameters covering every mode: CutMix (a box clipped at the corner), MixUp, erase, keep."""
    box = torch.tensor([[10, 12, 40, 40], [0, 0, 5, 5], [3, 2, 9, 13], [1, 1, 4, 4]], dtype=torch.int32)[:n]
    lam = torch.tensor([0.3, 0.37, 1.0, 0.5])[:n]
    partner = torch.arange(n).roll(1).to(torch.int32)
    mode = torch.tensor([MixMode.CUTMIX, MixMode.MIXUP, MixMode.ERASE, MixMode.KEEP], dtype=torch.int32)[:n]
    return [t.to(DEVICE) for t in (box, lam, partner, mode)]


# ----------------------------------------------------------------------------- CutMix, pixel-exact


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("partner", ["flip", "roll"])
def test_cutmix_pastes_one_rectangle_and_lam_is_the_kept_area(backend, per_sample, partner):
    x, target = sample_inputs()
    n, _, height, width = x.shape
    out, mixed = with_seed(lambda: rk.cutmix(x, target, per_sample=per_sample, partner=partner, backend=backend))
    index = partner_of(n, partner)
    assert isinstance(mixed, MixedTarget) and out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(mixed.y_a, target) and torch.equal(mixed.y_b, target[index])
    assert mixed.lam.shape == ((n,) if per_sample else ())
    MixedTarget(mixed.y_a, mixed.y_b, mixed.lam)  # built unchecked (of_checked): the checks pass on its parts
    lam = mixed.per_sample_lam()
    boxes = []
    for i in range(n):
        box = pasted_rectangle(out[i], x[i], x[index[i]])
        area = 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])
        assert lam[i].item() == pytest.approx(1 - area / (height * width), abs=1e-6)
        boxes.append(box)
    if not per_sample:
        assert all(box == boxes[0] for box in boxes)
    else:
        assert len(set(boxes)) > 1


def test_cutmix_box_follows_the_paper():
    # Without correct_lam the box side is about sqrt(1 - lam) of the image side (clipping only shrinks it).
    x, target = sample_inputs(shape=(64, 1, 32, 32))
    out, mixed = with_seed(lambda: rk.cutmix(x, target, per_sample=True, correct_lam=False, backend="torch"))
    for i in range(64):
        box = pasted_rectangle(out[i], x[i], x[63 - i])
        side = 32 * math.sqrt(1 - mixed.lam[i].item())
        width, height = (0, 0) if box is None else (box[2] - box[0], box[3] - box[1])
        assert width <= side + 1e-4 and height <= side + 1e-4
        if box is not None and 0 < box[0] and box[2] < 32:  # not clipped: the full width 2 * floor(side / 2)
            assert width == 2 * math.floor(side / 2 + 1e-6) or width == 2 * math.floor(side / 2 - 1e-6)


# ----------------------------------------------------------------------------- the low-level kernel, layouts, dtypes


@pytest.mark.parametrize("dtype", DTYPES)
def test_composite_batch_matches_reference_in_both_layouts(backend, dtype):
    x, _ = sample_inputs(dtype=dtype)
    box, lam, partner, mode = all_modes_params()
    fill = [7.0, 8.0, 9.0]
    out = rk.composite_batch(x, box, lam, partner, mode, fill=fill, backend=backend)
    expected = reference.composite_batch(x, box, lam, partner, mode, fill=torch.tensor(fill))
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, expected.to(dtype))  # fp32 arithmetic without FMA: bit-identical, MixUp included
    expected64 = reference.composite_batch(x, box, lam, partner, mode, fill=torch.tensor(fill),
                                           math_dtype=torch.float64)
    torch.testing.assert_close(out.double(), expected64, rtol=8e-3, atol=1.0 if dtype == torch.uint8 else 1e-5)
    channels_last = rk.composite_batch(x.contiguous(memory_format=torch.channels_last), box, lam, partner, mode,
                                       fill=fill, backend=backend)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(channels_last, out)


def test_composite_batch_odd_shapes_and_strided_input(backend):
    # 3 x 2 x 5 x 7: odd sizes everywhere; a transposed (neither layout) input is copied to contiguous.
    x = torch.randn(3, 2, 7, 5, device=DEVICE).transpose(2, 3)
    box = torch.tensor([[1, 1, 4, 3], [0, 0, 7, 5], [2, 0, 3, 5]], dtype=torch.int32, device=DEVICE)
    lam = torch.tensor([0.2, 0.5, 0.9], device=DEVICE)
    partner = torch.tensor([2, 0, 9], dtype=torch.int32, device=DEVICE)  # 9 is clamped to 2
    mode = torch.tensor([MixMode.CUTMIX, MixMode.ERASE, MixMode.MIXUP], dtype=torch.int32, device=DEVICE)
    out = rk.composite_batch(x, box, lam, partner, mode, fill=-1.0, backend=backend)
    assert torch.equal(out, reference.composite_batch(x, box, lam, partner, mode, fill=torch.full((2,), -1.0)))
    assert torch.equal(out[2], 0.9 * x[2] + (1 - torch.tensor(0.9)) * x[2])


@pytest.mark.parametrize("channels_last", [False, True])
def test_boxes_spanning_several_load_chunks(backend, channels_last):
    # Rows of 40 pixels: boxes cover whole 16-element load chunks and straddle others at both edges.
    x, _ = sample_inputs(shape=(3, 2, 3, 40), dtype=torch.uint8, channels_last=channels_last)
    box = torch.tensor([[3, 0, 37, 3], [17, 1, 32, 2], [0, 0, 40, 3]], dtype=torch.int32, device=DEVICE)
    lam = torch.ones(3, device=DEVICE)
    partner = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEVICE)
    mode = torch.tensor([MixMode.CUTMIX, MixMode.ERASE, MixMode.CUTMIX], dtype=torch.int32, device=DEVICE)
    out = rk.composite_batch(x, box, lam, partner, mode, fill=5, backend=backend)
    assert torch.equal(out, reference.composite_batch(x, box, lam, partner, mode, fill=torch.full((2,), 5.0)).to(
        torch.uint8))
    swapped = x.clone()
    cutmix_swap_op(swapped, box[:1].expand(3, 4).contiguous(), backend)
    assert torch.equal(swapped, reference.cutmix_swap_(x.clone(), box[:1].expand(3, 4)))
    assert torch.equal(swapped[1], x[1]) and not torch.equal(swapped[0], x[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_erase_noise_is_per_pixel_normal_and_layout_independent(backend, dtype):
    x = torch.zeros(2, 3, 32, 32, device=DEVICE, dtype=dtype)
    box = torch.tensor([[0, 0, 32, 32], [4, 4, 8, 8]], dtype=torch.int32, device=DEVICE)
    ones = torch.ones(2, device=DEVICE)
    partner = torch.arange(2, dtype=torch.int32, device=DEVICE)
    mode = torch.full((2,), int(MixMode.ERASE), dtype=torch.int32, device=DEVICE)
    seed = torch.tensor([99], device=DEVICE)
    out = rk.composite_batch(x, box, ones, partner, mode, noise_seed=seed, backend=backend)
    noise = out[0].float()
    assert abs(noise.mean().item()) < 0.15 and abs(noise.std().item() - 1) < 0.1  # 3072 draws
    assert torch.unique(noise).numel() > 0.9 * noise.numel() if dtype == torch.float32 else True
    assert (out[1][:, 4:8, 4:8] != 0).all() and (out[1] != 0).sum() == 3 * 16  # only the box
    expected = reference.composite_batch(x, box, ones, partner, mode, noise_seed=seed)
    # log and cos differ by an ulp between math libraries: equal up to one rounding of the output
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), rtol=1e-5 if dtype == torch.float32 else 8e-3,
                               atol=1e-6)
    channels_last = rk.composite_batch(x.contiguous(memory_format=torch.channels_last), box, ones, partner, mode,
                                       noise_seed=seed, backend=backend)
    assert torch.equal(channels_last, out)


# ----------------------------------------------------------------------------- MixUp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("partner", ["flip", "roll"])
def test_mixup_matches_its_formula(backend, dtype, partner):
    x, target = sample_inputs(dtype=dtype)
    out, mixed = with_seed(lambda: rk.mixup(x, target, per_sample=True, partner=partner, backend=backend))
    index = partner_of(x.shape[0], partner)
    assert torch.equal(mixed.y_b, target[index])
    lam = mixed.lam.reshape(-1, 1, 1, 1)
    formula = lam.double() * x.double() + (1 - lam.double()) * x[index].double()
    if dtype == torch.uint8:  # rounded half up, from fp32 arithmetic: within 1 of the exact value, mostly equal
        assert (out.double() - formula).abs().max() <= 1.0
        exact32 = torch.floor(lam * x.float() + (1 - lam) * x[index].float() + 0.5)
        assert torch.equal(out, exact32.to(torch.uint8))
    else:
        torch.testing.assert_close(out.double(), formula, rtol={torch.float32: 1e-6}.get(dtype, 8e-3), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_lambda_moments_match_beta(alpha):
    n = 20000
    x = torch.zeros(n, 1, 1, 1, device=DEVICE)
    _, mixed = with_seed(lambda: rk.mixup(x, torch.zeros(n, dtype=torch.int64, device=DEVICE), alpha=alpha,
                                          per_sample=True, backend="torch"))
    lam = mixed.lam.double()
    variance = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(lam.mean().item() - 0.5) < 5 * math.sqrt(variance / n)
    assert lam.var().item() == pytest.approx(variance, rel=0.05)
    assert 0.0 <= lam.min().item() and lam.max().item() <= 1.0
    # per batch: one lambda, a 0-d tensor
    _, batch = rk.mixup(x[:4], torch.zeros(4, dtype=torch.int64, device=DEVICE), alpha=alpha, backend="torch")
    assert batch.lam.dim() == 0


# ----------------------------------------------------------------------------- random erasing


def test_random_erasing_one_rectangle_at_the_right_rate(backend):
    n, height, width = 128, 12, 12
    x, _ = sample_inputs(shape=(n, 1, height, width))
    x = x + 1.0  # no pixel is 0, the erase value
    p, scale = 0.5, (0.05, 0.3)
    out = with_seed(lambda: rk.random_erasing(x, p=p, scale=scale, ratio=(0.5, 2.0), backend=backend))
    erased = 0
    for i in range(n):
        box = pasted_rectangle(out[i], x[i], torch.zeros_like(x[i]))
        if box is not None:
            erased += 1
            h, w = box[3] - box[1], box[2] - box[0]
            assert h < height and w < width
            assert 0.5 * scale[0] * height * width <= h * w <= 1.5 * scale[1] * height * width
    assert abs(erased - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_random_erasing_values(backend):
    x, _ = sample_inputs(dtype=torch.float32)
    out = with_seed(lambda: rk.random_erasing(x, p=1.0, value=(1.5, 2.5, 3.5), backend=backend))
    for c, value in enumerate((1.5, 2.5, 3.5)):
        changed = out[:, c] != x[:, c]
        assert changed.any() and (out[:, c][changed] == value).all()
    noisy = with_seed(lambda: rk.random_erasing(x, p=1.0, value="random", backend=backend))
    changed = noisy != x
    assert changed.any() and noisy[changed].abs().max() < 10  # normal noise, not image values
    uint8 = rk.random_erasing(sample_inputs(dtype=torch.uint8)[0], p=1.0, value=300.0, backend=backend)
    assert uint8.dtype == torch.uint8 and (uint8 == 255).any()  # saturates


# ----------------------------------------------------------------------------- fused normalization


@pytest.mark.parametrize("op", ["cutmix", "mixup"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_normalization_equals_separate_ops(backend, op, channels_last):
    x, target = sample_inputs(dtype=torch.uint8, channels_last=channels_last)
    fn = getattr(rk, op)
    fused, _ = with_seed(lambda: fn(x, target, per_sample=True, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                    backend=backend))
    mixed, _ = with_seed(lambda: fn(x, target, per_sample=True, backend=backend))
    mean = torch.tensor(MEAN, device=DEVICE).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, device=DEVICE).reshape(1, 3, 1, 1)
    separate = ((mixed.float() - mean) / std).to(torch.bfloat16)
    assert fused.dtype == torch.bfloat16 and torch.equal(fused, separate)
    assert fused.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    default, _ = with_seed(lambda: fn(x, target, per_sample=True, mean=MEAN, std=STD, backend=backend))
    assert default.dtype == torch.float32  # uint8 normalized defaults to float32


@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_normalization_lookup_equals_the_division(channels_last):
    # The Triton kernel looks a normalized uint8 output up in a (C, 256) table built with the reference's
    # division: every mode (MixUp rounded, a fill that saturates), every output dtype, bit for bit.
    x, _ = sample_inputs(shape=(4, 3, 16, 16), dtype=torch.uint8, channels_last=channels_last)
    box, lam, partner, mode = all_modes_params()
    for out_dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        outputs = [rk.composite_batch(x, box, lam, partner, mode, fill=(300.0, -3.0, 7.5), mean=MEAN, std=STD,
                                      out_dtype=out_dtype, backend=backend) for backend in ("torch", "triton")]
        assert torch.equal(outputs[0], outputs[1]), out_dtype


# Weights past fp32's range overflow on purpose: numpy says so in the interpreter.
IGNORE_OVERFLOW = pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")


@triton.jit
def _table_levels_kernel(own_ptr, other_ptr, lam_ptr, levels_ptr, identity_ptr, IS_MIXUP: tl.constexpr,
                         WORDS: tl.constexpr):
    # The uint8 table path's arithmetic on WORDS words of 4 bytes each: its level of every byte pair, looked up in
    # an identity table (entry v is v).
    word = tl.arange(0, WORDS)
    own = tl.load(own_ptr + word).to(tl.uint32, bitcast=True)
    other = tl.load(other_ptr + word).to(tl.uint32, bitcast=True)
    own_scale, own_shift, other_scale, other_shift = mixing._byte_product_terms(tl.load(lam_ptr), IS_MIXUP)
    for k in tl.static_range(4):
        level = mixing._normalized_byte(own, other, k, own_scale, own_shift, other_scale, other_shift, identity_ptr)
        tl.store(levels_ptr + word * 4 + k, level)


def _reference_levels(own, other, lam):
    """The reference's uint8 level of lam * own + (1 - lam) * other, one fp32 rounding per operation, rounded half
    up and saturated (NaN gives 0)."""
    lam = torch.tensor(lam, dtype=torch.float32, device=own.device)
    value = (lam * own.float() + (1.0 - lam) * other.float()) + 0.5
    return torch.nan_to_num(torch.floor(value), nan=0.0).clamp(0, 255)


@IGNORE_OVERFLOW
def test_uint8_table_levels_equal_the_reference_for_every_byte_pair_and_weight():
    # One FFMA per product (the byte in the mantissa of 2^23), and past |lam| = 2^100 scale and shift that give the
    # reference's levels, overflow included: every pair of bytes, weights across the range of fp32.
    own = torch.arange(256, device=DEVICE).repeat_interleave(256).to(torch.uint8)
    other = torch.arange(256, device=DEVICE).repeat(256).to(torch.uint8)
    overflow = 2.0 ** 128 - 2.0 ** 103  # the least |lam * b| that rounds to inf
    lams = [0.3, 0.37, 0.0, 1.0, -0.0, 1.5, -0.5, 3.0, -7.25, 1e-30, 2.0 ** -140, 1e20, -1e30, 2.0 ** 99,
            2.0 ** 100, -(2.0 ** 100), 2.0 ** 104, 2.0 ** 105, 1e33, 2.0 ** 120, 1e38, -1e38, 3.4028234663852886e38,
            -3.4028234663852886e38, math.inf, -math.inf, math.nan]
    for byte in (1, 2, 3, 100, 254, 255, 256):  # either side of the lam whose product with `byte` first overflows
        at = torch.tensor(overflow / byte, dtype=torch.float32)
        lams += [float(torch.nextafter(at, torch.tensor(0.0))), float(at), float(torch.nextafter(at, at * 2))]
    identity = torch.arange(256, dtype=torch.float32, device=DEVICE)
    for lam in lams:
        for is_mixup in (True, False):
            levels = torch.empty(own.numel(), dtype=torch.float32, device=DEVICE)
            _table_levels_kernel[(1,)](own.view(torch.int32), other.view(torch.int32),
                                       torch.tensor([lam], dtype=torch.float32, device=DEVICE), levels, identity,
                                       IS_MIXUP=is_mixup, WORDS=own.numel() // 4, enable_fp_fusion=False)
            expected = _reference_levels(own, other, lam) if is_mixup else own.float()
            assert torch.equal(levels, expected), (lam, is_mixup, (levels != expected).sum())


@IGNORE_OVERFLOW
# Each layout once, each visiting order once (the suite's time: about 10 s a case in the interpreter).
@pytest.mark.parametrize("channels_last, flip_pairs_hint", [(False, True), (True, False)])
def test_uint8_table_path_groups_planes_columns_and_samples(monkeypatch, channels_last, flip_pairs_hint):
    # 16 x 3 x 32 x 48: enough programs (16 per SM at the interpreter's 4 SMs) for a program to take all 3 planes
    # and 3 column blocks (NCHW), or 3 column blocks 3 apart, whose bytes have the same channels (channels_last);
    # launches of 5 samples at a time. Boxes cut 16-byte chunks; MixUp weights across fp32's range.
    monkeypatch.setattr(mixing, "MAX_GRID_SAMPLES", 5)
    n, h, w = 16, 32, 48
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=generator).to(DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mode = torch.tensor([MixMode.CUTMIX, MixMode.MIXUP, MixMode.ERASE, MixMode.KEEP] * 4, dtype=torch.int32)
    box = torch.tensor([[5, 3, 37, 29], [0, 0, 48, 32], [17, 1, 18, 31], [-4, -4, 60, 60]] * 4, dtype=torch.int32)
    lam = torch.tensor([0.3, 0.37, 1.0, 0.5, 0.7, math.nan, 0.1, 0.0, 0.2, -2.5, 0.4, 0.6, 0.8, 1e38, 0.9, 2.0 ** 110])
    partner = torch.arange(n - 1, -1, -1, dtype=torch.int32)
    outputs = [rk.composite_batch(x, *(t.to(DEVICE) for t in (box, lam, partner, mode)), fill=(300.0, -3.0, 7.5),
                                  mean=MEAN, std=STD, out_dtype=torch.bfloat16, flip_pairs_hint=flip_pairs_hint,
                                  backend=backend) for backend in ("torch", "triton")]
    assert torch.equal(outputs[0], outputs[1])


def test_composite_grid_takes_plane_groups_and_samples_in_several_launches(monkeypatch, backend):
    # CUDA's grid limits (65535 plane groups, 65535 samples per launch) made small: 3 planes and 4 samples over
    # 2 x 2 launches, floating and uint8 (normalized) x, both layouts.
    monkeypatch.setattr(mixing, "MAX_GRID_PLANE_GROUPS", 2)
    monkeypatch.setattr(mixing, "MAX_GRID_SAMPLES", 3)
    box, lam, partner, mode = all_modes_params()
    for dtype in (torch.float32, torch.uint8):
        for channels_last in (False, True):
            x, _ = sample_inputs(dtype=dtype, channels_last=channels_last)
            kwargs = dict(mean=MEAN, std=STD, out_dtype=torch.bfloat16) if dtype == torch.uint8 else {}
            out = rk.composite_batch(x, box, lam, partner, mode, fill=(1.0, 2.0, 3.0), backend=backend, **kwargs)
            expected = rk.composite_batch(x, box, lam, partner, mode, fill=(1.0, 2.0, 3.0), backend="torch",
                                          **kwargs)
            assert torch.equal(out, expected), (dtype, channels_last)


@pytest.mark.parametrize("case", ["row not a multiple of 16 bytes", "x not 4-byte aligned"])
def test_uint8_normalization_without_the_table_path_equals_the_reference(case):
    # The table path reads 4-byte words; rows of other lengths, or an x at an odd address, normalize per element.
    shape = (4, 3, 8, 20) if case.startswith("row") else (4, 3, 16, 16)
    generator = torch.Generator().manual_seed(5)
    storage = torch.randint(0, 256, (math.prod(shape) + 1,), dtype=torch.uint8, generator=generator)
    x = (storage[:-1] if case.startswith("row") else storage[1:]).view(shape).to(DEVICE)
    box, lam, partner, mode = all_modes_params()
    outputs = [rk.composite_batch(x, box, lam, partner, mode, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                  backend=backend) for backend in ("torch", "triton")]
    assert torch.equal(outputs[0], outputs[1])


# ----------------------------------------------------------------------------- agreement and determinism


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_backends_agree(dtype):
    x, target = sample_inputs(dtype=dtype, channels_last=True)
    calls = {
        "cutmix": lambda b: rk.cutmix(x, target, per_sample=True, backend=b)[0],
        "cutmix_or_mixup": lambda b: rk.cutmix_or_mixup(x, target, backend=b)[0],
        "mixup": lambda b: rk.mixup(x, target, backend=b)[0],
        "random_erasing": lambda b: rk.random_erasing(x, p=1.0, value=(1, 2, 3), backend=b),
    }
    for name, call in calls.items():
        outputs = [with_seed(lambda: call(b)) for b in BACKENDS]
        for backend, out in zip(BACKENDS[1:], outputs[1:]):
            if name == "mixup":  # equal up to rounding; in practice bit-identical (no FMA anywhere)
                torch.testing.assert_close(out.float(), outputs[0].float(), rtol=8e-3, atol=1.0)
            else:
                assert torch.equal(out, outputs[0]), (name, backend)


def test_deterministic_under_manual_seed_and_generator(backend):
    x, target = sample_inputs()
    first = with_seed(lambda: rk.cutmix_or_mixup(x, target, backend=backend)[0], seed=3)
    again = with_seed(lambda: rk.cutmix_or_mixup(x, target, backend=backend)[0], seed=3)
    assert torch.equal(first, again)
    torch.manual_seed(3)
    a, b = rk.cutmix(x, target, per_sample=True, backend=backend)[0], rk.cutmix(x, target, per_sample=True,
                                                                              backend=backend)[0]
    assert not torch.equal(a, b)
    generator = torch.Generator(device=DEVICE).manual_seed(5)
    with_generator = rk.random_erasing(x, p=1.0, value="random", generator=generator, backend=backend)
    generator.manual_seed(5)
    assert torch.equal(rk.random_erasing(x, p=1.0, value="random", generator=generator, backend=backend),
                       with_generator)


@pytest.mark.skipif(_backend._C is None or not hasattr(_backend._C, "composite_values_host"),
                    reason="CUDA extension (with mixing) not built")
def test_cuda_per_element_arithmetic_equals_reference():
    generator = torch.Generator().manual_seed(0)
    count = 1000
    own, other = torch.rand(count, generator=generator) * 255, torch.rand(count, generator=generator) * 255
    inside = torch.rand(count, generator=generator) < 0.5
    for mode in (MixMode.KEEP, MixMode.MIXUP, MixMode.CUTMIX, MixMode.ERASE):
        for round_uint8 in (False, True):
            out = torch.empty(count)
            _backend._C.composite_values_host(own=own.data_ptr(), other=other.data_ptr(), inside=inside.data_ptr(),
                                              out=out.data_ptr(), count=count, mode=int(mode), lam=0.37, fill=12.0,
                                              round_uint8=round_uint8)
            expected = {MixMode.KEEP: own, MixMode.MIXUP: 0.37 * own + (1 - torch.tensor(0.37)) * other,
                        MixMode.CUTMIX: torch.where(inside, other, own),
                        MixMode.ERASE: torch.where(inside, 12.0, own)}[mode]
            if round_uint8:
                expected = torch.floor(expected + 0.5).clamp(0, 255)
            assert torch.equal(out, expected), (mode, round_uint8)
    index = torch.arange(5000, dtype=torch.int64) * 7919
    noise = torch.empty(5000)
    _backend._C.erase_noise_host(seed=-123456789, index=index.data_ptr(), out=noise.data_ptr(), count=5000)
    expected = reference.erase_noise(torch.tensor([-123456789]), index)
    torch.testing.assert_close(noise, expected, rtol=2e-6, atol=1e-6)  # logf/cosf of glibc vs torch: an ulp


# ----------------------------------------------------------------------------- float64


def float64_inputs(shape=SHAPE):
    """sample_inputs in float64 plus offsets of 2^-40, which float32 arithmetic would lose."""
    x, target = sample_inputs(shape=shape, dtype=torch.float64)
    offsets = torch.arange(x.numel(), device=DEVICE, dtype=torch.float64).reshape(x.shape) % 7
    return x + offsets * 2.0**-40, target


@pytest.mark.parametrize("partner", ["flip", "roll"])
def test_float64_mixup_equals_its_float64_formula(backend, partner):
    x, target = float64_inputs()
    out, mixed = with_seed(lambda: rk.mixup(x, target, per_sample=True, partner=partner, backend=backend))
    lam = mixed.lam.double().reshape(-1, 1, 1, 1)
    assert out.dtype == torch.float64
    assert torch.equal(out, lam * x + (1 - lam) * x[partner_of(4, partner)])  # fp64, no FMA, bit for bit


def test_float64_cutmix_erasing_and_normalization(backend):
    x, target = float64_inputs()
    out, mixed = with_seed(lambda: rk.cutmix(x, target, per_sample=True, backend=backend))
    for i in range(4):
        box = pasted_rectangle(out[i], x[i], x[3 - i])  # exact float64 copies inside and outside
        area = 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])
        assert mixed.lam[i].item() == pytest.approx(1 - area / 256, abs=1e-6)
    # The fill is the float64 value 0.1, not its float32 rounding.
    erased = with_seed(lambda: rk.random_erasing(x, p=1.0, value=(0.1, 0.2, 0.3), backend=backend))
    for c, value in enumerate((0.1, 0.2, 0.3)):
        changed = erased[:, c] != x[:, c]
        assert changed.any() and (erased[:, c][changed] == value).all()
    # Fused normalization in float64 equals mixing, then normalizing in float64.
    mean = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, device=DEVICE).reshape(1, 3, 1, 1)
    std = torch.tensor([0.7, 1.3, 2.9], dtype=torch.float64, device=DEVICE).reshape(1, 3, 1, 1)
    for images in (x, sample_inputs(dtype=torch.uint8)[0]):
        fused, _ = with_seed(lambda: rk.cutmix_or_mixup(images, target, mean=(0.1, 0.2, 0.3), std=(0.7, 1.3, 2.9),
                                                        out_dtype=torch.float64, backend=backend))
        mixed_images, _ = with_seed(lambda: rk.cutmix_or_mixup(images, target, backend=backend))
        assert fused.dtype == torch.float64 and torch.equal(fused, (mixed_images.double() - mean) / std)
    # float64 -> bfloat16 rounds through float32, as torch's cast does.
    to_bf16, _ = with_seed(lambda: rk.mixup(x, target, mean=(0.1, 0.2, 0.3), std=(0.7, 1.3, 2.9),
                                            out_dtype=torch.bfloat16, backend=backend))
    mixed_images, _ = with_seed(lambda: rk.mixup(x, target, backend=backend))
    assert torch.equal(to_bf16, ((mixed_images - mean) / std).to(torch.bfloat16))
    swapped, _ = with_seed(lambda: rk.cutmix(x.clone(), target, inplace=True, backend=backend))
    assert torch.equal(swapped, with_seed(lambda: rk.cutmix(x, target, backend=backend))[0])


def test_float64_opcheck(backend):
    x, _ = float64_inputs(shape=(4, 3, 4, 4))
    box, lam, partner, mode = all_modes_params(height=4, width=4)
    fill = torch.full((3,), 0.1, dtype=torch.float64, device=DEVICE)
    mean = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, device=DEVICE)
    op = composite_batch_op.custom_op
    torch.library.opcheck(op, (x, box, lam.double(), partner, mode, fill, mean, mean + 1, None, None, torch.float64,
                               True, backend))
    torch.library.opcheck(op, (x, box, lam.double(), partner, mode, fill, None, None, None,
                               torch.tensor([3], device=DEVICE), torch.float64, False, backend))


def test_cuda_backend_refuses_float64_with_a_type_error():
    with pytest.raises(TypeError, match="backend='cuda'.*float64.*'triton' or 'torch'"):
        mixing._cuda_dtype_code(torch.float64)
    if DEVICE.type == "cuda" and _backend._C is not None:
        x, target = float64_inputs()
        with pytest.raises(TypeError, match="float64"):
            rk.mixup(x, target, backend="cuda")
        with pytest.raises(TypeError, match="float64"):
            rk.cutmix(sample_inputs(dtype=torch.uint8)[0], target, mean=MEAN, std=STD, out_dtype=torch.float64,
                      backend="cuda")


# ----------------------------------------------------------------------------- CutMixUp and per-sample modes


def test_cutmixup_per_sample_chooses_modes_in_one_launch(backend, monkeypatch):
    x, target = sample_inputs(shape=(32, 3, 8, 8))
    launches = []
    original = mixing.composite_batch_op
    monkeypatch.setattr(mixing, "composite_batch_op", lambda *args: launches.append(1) or original(*args))
    module = rk.nn.CutMixUp(prob=0.8, per_sample=True)
    out, mixed = with_seed(lambda: module(x, target))
    assert len(launches) == 1
    lam = mixed.lam
    kinds = set()
    for i in range(32):
        partner = x[31 - i]
        if lam[i].item() == 1.0 and torch.equal(out[i], x[i]):
            kinds.add("keep")
        elif (out[i] == x[i]).logical_or(out[i] == partner).all():
            box = pasted_rectangle(out[i], x[i], partner)
            area = 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])
            assert lam[i].item() == pytest.approx(1 - area / 64, abs=1e-6)
            kinds.add("cutmix")
        else:
            torch.testing.assert_close(out[i], lam[i] * x[i] + (1 - lam[i]) * partner)
            kinds.add("mixup")
    assert kinds == {"keep", "cutmix", "mixup"}
    module.eval()
    kept, eval_target = module(x, target)
    assert torch.equal(kept, x) and torch.equal(eval_target.lam, torch.ones(32, device=DEVICE))


@pytest.mark.parametrize("per_sample", [True, False])
def test_cutmixup_in_eval_touches_no_generator(per_sample):
    # An evaluation pass must not shift the training stream: no generator state changes.
    x, target = sample_inputs()
    module = rk.nn.CutMixUp(per_sample=per_sample, mean=MEAN, std=STD).eval()
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else None
    out, mixed = module(x, target)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(DEVICE), cuda_state)
    mean = torch.tensor(MEAN, device=DEVICE).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, device=DEVICE).reshape(1, 3, 1, 1)
    assert torch.equal(out, (x - mean) / std) and bool((mixed.per_sample_lam() == 1).all())


def test_cutmixup_per_batch_and_single_method():
    x, target = sample_inputs()
    _, mixed = with_seed(lambda: rk.nn.CutMixUp(per_sample=False)(x, target))
    assert mixed.lam.dim() == 0
    out, _ = with_seed(lambda: rk.nn.CutMixUp(mixup_alpha=0.0, per_sample=True)(x, target))
    for i in range(4):
        pasted_rectangle(out[i], x[i], x[3 - i])  # CutMix only


# ----------------------------------------------------------------------------- in place


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("n", [4, 5])
def test_inplace_cutmix_swaps_only_the_box(backend, channels_last, n):
    x, target = sample_inputs(shape=(n, 3, 16, 16), channels_last=channels_last)
    expected, expected_target = with_seed(lambda: rk.cutmix(x, target, backend=backend))
    inplace = x.clone()
    out, mixed = with_seed(lambda: rk.cutmix(inplace, target, inplace=True, backend=backend))
    assert out is inplace and torch.equal(out, expected)
    assert torch.equal(mixed.lam, expected_target.lam)


def test_inplace_raises_where_not_exact():
    x, target = sample_inputs()
    for kwargs in (dict(per_sample=True), dict(partner="roll"), dict(mean=MEAN, std=STD)):
        with pytest.raises(ValueError, match="inplace"):
            rk.cutmix(x, target, inplace=True, **kwargs)
    with pytest.raises(ValueError, match="inplace"):
        rk.mixup(x, target, inplace=True)
    with pytest.raises(ValueError, match="inplace"):
        rk.cutmix(x.transpose(2, 3), target, inplace=True)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_value_error():
    x, target = sample_inputs()
    with pytest.raises(ValueError, match="4-D"):
        rk.cutmix(x[0], target)
    with pytest.raises(ValueError, match="4-D"):
        rk.random_erasing(x.flatten(2))
    with pytest.raises(ValueError, match="target has shape"):
        rk.mixup(x, target[:3])
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            rk.cutmix(x, target, alpha=alpha)
        with pytest.raises(ValueError, match="alpha"):
            rk.mixup(x, target, alpha=alpha)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            rk.random_erasing(x, p=p)
    for scale in ((0.0, 0.3), (0.4, 0.2), (0.1, 1.5), (0.1,), "ab"):
        with pytest.raises(ValueError, match="scale"):
            rk.random_erasing(x, scale=scale)
    for ratio in ((0.0, 1.0), (3.0, 0.3), (-1.0, 2.0)):
        with pytest.raises(ValueError, match="ratio"):
            rk.random_erasing(x, ratio=ratio)
    with pytest.raises(ValueError, match="mean has 2 values but x has 3 channels"):
        rk.cutmix(x, target, mean=(0.5, 0.5), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="std has 4 values"):
        rk.mixup(x, target, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="together"):
        rk.mixup(x, target, mean=MEAN)
    with pytest.raises(ValueError, match="value"):
        rk.random_erasing(x, value=(1.0, 2.0))
    with pytest.raises(ValueError, match="value"):
        rk.random_erasing(x, value="noise")
    with pytest.raises(ValueError, match="uint8"):
        rk.random_erasing(x.to(torch.uint8), value="random")
    with pytest.raises(ValueError, match="partner"):
        rk.cutmix(x, target, partner="shuffle")
    with pytest.raises(ValueError, match="both 0"):
        rk.nn.CutMixUp(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="box must be a tensor of shape"):
        rk.composite_batch(x, torch.zeros(4, 3), torch.ones(4), torch.arange(4), torch.zeros(4))
    with pytest.raises(TypeError, match="uint8"):
        rk.cutmix(x.int(), target)
    with pytest.raises(TypeError, match="int64 class indices"):
        rk.mixup(x, target.float())


def test_mixing_dtype_codes_extend_the_cuda_codes():
    assert mixing.MIXING_DTYPE_CODES[torch.uint8] not in _backend.CUDA_DTYPE_CODES.values()
    assert all(mixing.MIXING_DTYPE_CODES[d] == code for d, code in _backend.CUDA_DTYPE_CODES.items())


# ----------------------------------------------------------------------------- registration


@pytest.mark.parametrize("normalize", [False, True])
def test_opcheck(backend, normalize):
    x, _ = sample_inputs(shape=(4, 3, 4, 4))
    box, lam, partner, mode = all_modes_params(height=4, width=4)
    fill = torch.zeros(3, device=DEVICE)
    mean = torch.tensor(MEAN, device=DEVICE) if normalize else None
    std = torch.tensor(STD, device=DEVICE) if normalize else None
    out_dtype = torch.bfloat16 if normalize else x.dtype
    op = composite_batch_op.custom_op
    torch.library.opcheck(op, (x, box, lam, partner, mode, fill, mean, std, None, None, out_dtype, True, backend))
    torch.library.opcheck(op, (x, box, lam, partner, mode, fill, None, None, None, torch.tensor([3], device=DEVICE),
                               x.dtype, False, backend))
    if normalize:  # a uint8 x with the lookup table of its normalized outputs
        levels = (x * 255).to(torch.uint8)
        table = mixing.normalization_table_op(mean, std, out_dtype, backend)
        torch.library.opcheck(op, (levels, box, lam, partner, mode, fill, mean, std, table, None, out_dtype, True,
                                   backend))
        torch.library.opcheck(mixing.normalization_table_op.custom_op, (mean, std, out_dtype, backend))
    torch.library.opcheck(cutmix_swap_op.custom_op, (x.clone(), box[:1].expand(4, 4).contiguous(), backend))


def test_compile_fullgraph_has_no_graph_breaks(backend):
    def augment(x, target):
        mixed, mixed_target = rk.cutmix_or_mixup(x, target, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                                 backend=backend)
        erased = rk.random_erasing(mixed, p=0.5, value="random", backend=backend)
        cut, _ = rk.cutmix(x, target, per_sample=True, backend=backend)
        swapped, _ = rk.cutmix(x.clone(), target, inplace=True, backend=backend)
        up, _ = rk.mixup(x, target, backend=backend)
        return erased, mixed_target.lam, cut, swapped, up

    x, target = sample_inputs(dtype=torch.uint8)
    compiled = torch.compile(augment, fullgraph=True)
    erased, lam, cut, swapped, up = compiled(x, target)
    assert erased.dtype == torch.bfloat16 and lam.shape == (4,) and cut.dtype == torch.uint8
    assert swapped.shape == up.shape == x.shape
    compiled(x, target)  # runs again without recompiling


# ----------------------------------------------------------------------------- GPU only: graphs, syncs, > 2^31 elements

gpu_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU (RECIPE_KERNELS_TEST_DEVICE=cuda)")
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]


def augment_all(x, xf, target, backend):
    """Every sampler once, per sample where it applies: the outputs and lambdas a graph replay must redraw."""
    cut, cut_target = rk.cutmix(x, target, per_sample=True, backend=backend)
    up, up_target = rk.mixup(x, target, per_sample=True, backend=backend)
    both, both_target = rk.cutmix_or_mixup(x, target, mean=MEAN, std=STD, out_dtype=torch.bfloat16, backend=backend)
    erased = rk.random_erasing(x, p=1.0, value=(1, 2, 3), backend=backend)
    noise = rk.random_erasing(xf, p=1.0, value="random", backend=backend)
    return cut, cut_target.lam, up, up_target.lam, both, both_target.lam, erased, noise


@gpu_only
@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
def test_cuda_graph_replays_draw_fresh_boxes_and_lambdas(kernel_backend):
    x, target = sample_inputs(shape=(4, 3, 32, 32), dtype=torch.uint8)
    xf = x.float()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture: compile kernels, cache per-channel values
        for _ in range(2):
            augment_all(x, xf, target, kernel_backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = augment_all(x, xf, target, kernel_backend)
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append([t.clone() for t in static])
    torch.cuda.synchronize()
    names = ["cutmix", "cutmix lam", "mixup", "mixup lam", "cutmix_or_mixup", "cutmix_or_mixup lam", "erasing",
             "erasing noise"]
    for first, second in zip(replays, replays[1:]):
        for name, a, b in zip(names, first, second):
            assert not torch.equal(a, b), f"{name}: a replay repeated the previous draw"
    for replay in replays:  # and each replay is a valid CutMix: one rectangle per sample, lam = the kept area
        cut, lam = replay[0], replay[1]
        for i in range(4):
            box = pasted_rectangle(cut[i], x[i], x[3 - i])
            area = 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])
            assert lam[i].item() == pytest.approx(1 - area / (32 * 32), abs=1e-6)


@gpu_only
@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
def test_no_host_sync_per_sample(kernel_backend):
    x, target = sample_inputs(shape=(4, 3, 32, 32), dtype=torch.uint8)
    xf = x.float()
    calls = [
        lambda: rk.cutmix(x, target, per_sample=True, backend=kernel_backend),
        lambda: rk.cutmix(x.clone(), target, inplace=True, backend=kernel_backend),
        lambda: rk.mixup(x, target, per_sample=True, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                         backend=kernel_backend),
        lambda: rk.cutmix_or_mixup(x, target, per_sample=True, backend=kernel_backend),
        lambda: rk.random_erasing(x, p=0.5, value=(1, 2, 3), backend=kernel_backend),
        lambda: rk.random_erasing(xf, p=0.5, value="random", backend=kernel_backend),
        lambda: rk.composite_batch(x[:4], *all_modes_params(n=4, height=32, width=32), fill=[7.0, 8.0, 9.0],
                                   backend=kernel_backend),
    ]
    for call in calls:  # warm up: compile the kernels, cache the per-channel values
        call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


# (N, 3, 224, 224) with N = 14268: 2,147,733,504 elements, past 2^31; sample N-1 starts past 2^31 and its flip
# partner is sample 0, so its partner reads step back by more than 2^31 elements.
BIG_N = 14268
assert BIG_N * 3 * 224 * 224 > 2**31


def reference_samples(x, box, lam, partner, mode, fill, samples):
    """The float32 reference for a few samples of a big batch: each sample computed beside its partner only."""
    rows = []
    for i in samples:
        pair = torch.stack([x[i], x[int(partner[i])]])
        pick = [i, i]
        rows.append(reference.composite_batch(pair, box[pick], lam[pick], torch.tensor([1, 1], device=x.device),
                                              mode[pick], fill=fill)[0])
    return torch.stack(rows)


@gpu_only
@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
def test_more_than_2_to_31_elements_uint8(kernel_backend):
    n, c, h, w = BIG_N, 3, 224, 224
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, device=DEVICE, generator=generator)
    x[0] //= 2  # samples 0 and N-1 differ at every pixel, so that the in-place CutMix box can be read off
    x[n - 1] = x[n - 1] // 2 + 128
    corner = torch.randint(0, 200, (n, 2), device=DEVICE, generator=generator)
    box = torch.cat([corner, corner + torch.randint(1, 60, (n, 2), device=DEVICE, generator=generator)], 1)
    box = box.to(torch.int32)
    lam = torch.rand(n, device=DEVICE, generator=generator)
    partner = torch.arange(n, device=DEVICE).flip(0).to(torch.int32)
    mode = (torch.arange(n, device=DEVICE) % 4).to(torch.int32)  # KEEP, MIXUP, CUTMIX, ERASE in turn
    samples = [0, 1, 2, 3, n // 2, n - 4, n - 3, n - 2, n - 1]
    fill = torch.tensor([5.0, 6.0, 7.0], device=DEVICE)
    out = rk.composite_batch(x, box, lam, partner, mode, fill=fill, flip_pairs_hint=True, backend=kernel_backend)
    expected = reference_samples(x, box, lam, partner, mode, fill, samples)
    assert torch.equal(out[samples], expected.to(torch.uint8))
    del out

    torch.manual_seed(0)  # the public functions at this size: MixUp (per sample), then in-place CutMix
    mixed, mixed_target = rk.mixup(x, torch.zeros(n, dtype=torch.int64, device=DEVICE), per_sample=True,
                                   backend=kernel_backend)
    lam = mixed_target.lam[samples].reshape(-1, 1, 1, 1)
    formula = torch.floor(lam * x[samples].float() + (1 - lam) * x[[n - 1 - i for i in samples]].float() + 0.5)
    assert torch.equal(mixed[samples], formula.to(torch.uint8))
    del mixed
    first, last = x[0].clone(), x[n - 1].clone()
    _, cut_target = rk.cutmix(x, torch.zeros(n, dtype=torch.int64, device=DEVICE), inplace=True,
                              backend=kernel_backend)
    box = pasted_rectangle(x[n - 1], last, first)
    assert box is not None and box == pasted_rectangle(x[0], first, last)
    area = (box[2] - box[0]) * (box[3] - box[1])
    assert cut_target.lam.item() == pytest.approx(1 - area / (h * w), abs=1e-6)


@gpu_only
@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
def test_more_than_2_to_31_elements_erase_noise(kernel_backend):
    # float16, so that the noise is keyed by logical indices past 2^31 (counter = the NCHW index).
    n, c, h, w = BIG_N, 3, 224, 224
    x = torch.zeros((n, c, h, w), dtype=torch.float16, device=DEVICE)
    box = torch.tensor([0, 0, w, h], dtype=torch.int32, device=DEVICE).expand(n, 4).contiguous()
    ones = torch.ones(n, device=DEVICE)
    partner = torch.arange(n, dtype=torch.int32, device=DEVICE)
    mode = torch.full((n,), int(MixMode.KEEP), dtype=torch.int32, device=DEVICE)
    mode[[0, n - 1]] = int(MixMode.ERASE)
    seed = torch.tensor([12345], device=DEVICE)
    out = rk.composite_batch(x, box, ones, partner, mode, noise_seed=seed, backend=kernel_backend)
    plane = c * h * w
    for i in (0, n - 1):
        index = torch.arange(i * plane, (i + 1) * plane, dtype=torch.int64, device=DEVICE).reshape(c, h, w)
        expected = reference.erase_noise(seed, index).to(torch.float16)
        torch.testing.assert_close(out[i].float(), expected.float(), rtol=2e-3, atol=1e-3)
    assert torch.equal(out[1], x[1]) and torch.equal(out[n - 2], x[n - 2])
