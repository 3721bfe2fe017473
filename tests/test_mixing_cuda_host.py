"""The CUDA mixing kernels' own code, run on the CPU through _C's *_host entry points.

composite_kernel and cutmix_swap_kernel are __host__ __device__ thread functions; the host entry
points run every thread of the launcher's grid on CPU tensors. The results must equal the torch
backend bit for bit (README: CutMix, erasing with a fixed value, MixUp, normalization), except for
normal-noise erasing, whose logf/cosf may differ by an ulp between math libraries.

Sizes are odd on purpose: H not a multiple of the kernel's 8 rows per block, W not a multiple of any
vector width, one row wider than a block's 256 threads (their stride loop), boxes partly or wholly
outside the image, empty and inverted boxes, flip, roll and out-of-range (clamped) partners.
"""
import pytest
import torch

import recipe_kernels  # noqa: F401  (registers the ops)
from recipe_kernels import _backend
from recipe_kernels.mixing import MIXING_DTYPE_CODES, MixMode, _composite_cuda_arguments, _dense_layout

pytestmark = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, H, W): 2 row blocks, the second partial; C == 1 (channels_last is then contiguous);
# 3 row blocks; a row of 261 pixels (783 interleaved elements) wider than a block's 256 threads; rows of
# 32 pixels (96 interleaved), whole 16-byte vectors for every dtype: the vector path (as 3 x 4 x 6 for
# fp32 and 16-bit types in channels_last), boxes straddling vectors.
SHAPES = [(5, 3, 13, 11), (4, 1, 9, 17), (3, 4, 17, 6), (2, 3, 3, 261), (3, 3, 5, 32)]
SEED = torch.tensor([0x5DEECE66D - (1 << 40)])  # a negative int64: the key's high word is used

# Per-channel values in x's units: uint8 rounds 250.6 and 12.5 half up, saturates 300 and -4.
FILL = [0.25, -1.5, 250.6, 300.0, -4.0, 12.5]
MEAN = [0.5, -0.25, 120.0, 3.0]
STD = [0.3, 2.0, 57.1, 1.5]
# Every mode, plus a code the kernel does not know (it keeps the sample).
MODES = [MixMode.KEEP, MixMode.MIXUP, MixMode.CUTMIX, MixMode.ERASE, MixMode.MIXUP, MixMode.CUTMIX,
         MixMode.ERASE, 9]
LAMS = [0.37, 0.0, 1.0, 0.8125, 0.123, 0.5, 0.999, 0.61]


def boxes(height, width):
    """(x0, y0, x1, y1) half-open boxes that stress the bounds tests."""
    return [
        (1, 2, width - 2, height - 1),                   # inside, odd edges
        (-3, -2, 4, 5),                                  # partly outside, top left
        (width - 3, height - 4, width + 5, height + 2),  # partly outside, bottom right
        (0, 0, width, height),                           # the whole image
        (5, 3, 5, 9),                                    # empty (x0 == x1)
        (7, 4, 2, 1),                                    # inverted: empty
        (3, 0, 9, height),                               # full height, edges off any vector boundary
        (-10, -10, -5, -5),                              # wholly outside
    ]


def make_x(shape, dtype, channels_last, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    else:
        x = (torch.randn(shape, generator=generator) * 3).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def partners(n, kind):
    if kind == "flip":
        index = [n - 1 - i for i in range(n)]
    elif kind == "roll":
        index = [(i - 1) % n for i in range(n)]
    else:  # out of range on both sides: the kernel clamps to [0, N)
        index = [[-2, n + 3, 1, 0, n - 1][i % 5] for i in range(n)]
    return torch.tensor(index, dtype=torch.int32)


def composite_params(n, height, width, partner_kind):
    box_list = boxes(height, width)
    box = torch.tensor([box_list[(3 * i + 1) % len(box_list)] for i in range(n)], dtype=torch.int32)
    lam = torch.tensor([LAMS[i % len(LAMS)] for i in range(n)], dtype=torch.float32)
    mode = torch.tensor([int(MODES[(i + n) % len(MODES)]) for i in range(n)], dtype=torch.int32)
    return box, lam, partners(n, partner_kind), mode


def composite_host(x, box, lam, partner, mode, fill, mean, std, seed, out_dtype, visit_flip_pairs, sentinel):
    """_C.composite_batch_host into a fresh output full of `sentinel` (so a missed element shows)."""
    x, channels_last = _dense_layout(x)
    out = torch.full_like(x, sentinel, dtype=out_dtype)
    _backend._C.composite_batch_host(**_composite_cuda_arguments(x, out, box, lam, partner, mode, fill, mean, std,
                                                                 seed, channels_last, visit_flip_pairs))
    return out


def sentinels(dtype):
    return (0, 255) if dtype == torch.uint8 else (float("nan"),)


def assert_same_bits(actual, expected):
    """Bit-equal, signed zeros included; NaNs need only be NaN in both (their payload is not specified)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.uint8:
        assert torch.equal(actual, expected)
        return
    as_int = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[actual.dtype]
    actual_nan, expected_nan = actual.isnan(), expected.isnan()
    assert torch.equal(actual_nan, expected_nan), f"NaN at {int((actual_nan != expected_nan).sum())} elements"
    zero = torch.zeros((), dtype=actual.dtype)
    actual_bits = torch.where(actual_nan, zero, actual).contiguous().view(as_int)
    expected_bits = torch.where(expected_nan, zero, expected).contiguous().view(as_int)
    mismatch = actual_bits != expected_bits
    assert not mismatch.any(), (f"{int(mismatch.sum())} of {mismatch.numel()} elements differ, first at "
                                f"{mismatch.nonzero()[0].tolist()}: {actual[mismatch][:4]} vs {expected[mismatch][:4]}")


def output_cases():
    """(x dtype, out dtype or None for x's, normalize) pairs the public API accepts."""
    cases = []
    for dtype in DTYPES:
        cases += [(dtype, None, False), (dtype, torch.float32, True), (dtype, torch.bfloat16, True)]
        cases.append((dtype, torch.float16, False) if dtype != torch.float16 else (dtype, torch.float32, False))
    return cases


def case_id(case):
    dtype, out_dtype, normalize = case
    name = str(dtype).removeprefix("torch.")
    return f"{name}->{str(out_dtype or dtype).removeprefix('torch.')}{'+norm' if normalize else ''}"


@pytest.mark.parametrize("case", output_cases(), ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("partner_kind,visit_flip_pairs", [("flip", True), ("flip", False), ("roll", False),
                                                           ("roll", True), ("clamped", False)])
def test_composite_kernel_code_equals_torch_backend(case, channels_last, shape, partner_kind, visit_flip_pairs):
    dtype, out_dtype, normalize = case
    out_dtype = out_dtype or dtype
    n, c, h, w = shape
    x = make_x(shape, dtype, channels_last)
    box, lam, partner, mode = composite_params(n, h, w, partner_kind)
    fill = torch.tensor(FILL[:c])
    mean, std = (torch.tensor(MEAN[:c]), torch.tensor(STD[:c])) if normalize else (None, None)
    expected = torch.ops.recipe_kernels.composite_batch(x, box, lam, partner, mode, fill, mean, std, None, None,
                                                        out_dtype, visit_flip_pairs, "torch")
    for sentinel in sentinels(out_dtype):
        out = composite_host(x, box, lam, partner, mode, fill, mean, std, None, out_dtype, visit_flip_pairs,
                             sentinel)
        assert out.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
            memory_format=torch.channels_last)
        assert_same_bits(out, expected)


def erase_mask(x, box, mode):
    """Where ERASE writes its fill: inside the box of the ERASE samples (logical NCHW)."""
    n, _, h, w = x.shape
    rows = torch.arange(h).reshape(1, 1, h, 1)
    cols = torch.arange(w).reshape(1, 1, 1, w)
    b = box.long().reshape(n, 4, 1, 1, 1)
    inside = (rows >= b[:, 1]) & (rows < b[:, 3]) & (cols >= b[:, 0]) & (cols < b[:, 2])
    return (inside & (mode == int(MixMode.ERASE)).reshape(n, 1, 1, 1)).expand(x.shape)


@pytest.mark.parametrize("dtype,out_dtype,normalize", [
    (torch.float32, torch.float32, False), (torch.float16, torch.float16, False),
    (torch.bfloat16, torch.bfloat16, False), (torch.float32, torch.bfloat16, True),
    (torch.bfloat16, torch.float32, True), (torch.float16, torch.float32, True)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("visit_flip_pairs", [False, True])
def test_composite_kernel_code_with_noise_equals_torch_backend(dtype, out_dtype, normalize, channels_last, shape,
                                                               visit_flip_pairs):
    n, c, h, w = shape
    x = make_x(shape, dtype, channels_last)
    box, lam, partner, mode = composite_params(n, h, w, "flip")
    mode[0] = int(MixMode.ERASE)  # at least one sample with a non-empty erase box...
    box[0] = torch.tensor([1, 1, w - 1, h])
    fill = torch.tensor(FILL[:c])  # ...and a fill that must not be used
    mean, std = (torch.tensor(MEAN[:c]), torch.tensor(STD[:c])) if normalize else (None, None)
    expected = torch.ops.recipe_kernels.composite_batch(x, box, lam, partner, mode, fill, mean, std, None, SEED,
                                                        out_dtype, visit_flip_pairs, "torch")
    out = composite_host(x, box, lam, partner, mode, fill, mean, std, SEED, out_dtype, visit_flip_pairs, float("nan"))
    noise = erase_mask(x, box, mode)
    assert noise.any()
    # Outside the noise: bit for bit. Inside: logf and cosf of glibc and of torch may differ by an ulp,
    # which rounding to 16 bits can turn into one ulp of that dtype (then scaled by 1/std).
    assert_same_bits(torch.where(noise, 0.0, out.float()), torch.where(noise, 0.0, expected.float()))
    eps = max(torch.finfo(dtype).eps, torch.finfo(out_dtype).eps)
    assert not out.isnan().any()
    torch.testing.assert_close(out.float()[noise], expected.float()[noise], rtol=4 * eps,
                               atol=20 * eps if normalize else 4 * eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_composite_kernel_code_special_values(dtype, channels_last):
    # inf, NaN, -0.0, subnormals and values that overflow fp16 when mixed or normalized; a NaN and infinite fill
    # (given as a tensor, which the API does not check): uint8 saturates them (NaN gives 0).
    n, c, h, w = 4, 3, 9, 10
    x = make_x((n, c, h, w), dtype, channels_last=False)
    if dtype != torch.uint8:
        x.view(-1)[::7] = float("inf")
        x.view(-1)[3::11] = float("nan")
        x.view(-1)[5::13] = -0.0
        x.view(-1)[6::17] = -float("inf")
        x.view(-1)[2::19] = 1e-39  # subnormal in fp32 and bf16: neither side may flush it to zero
        if dtype != torch.float16:
            x.view(-1)[1::5] = 65504.0 * 4
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    box = torch.tensor([[0, 0, w, h], [2, 1, 9, 8], [-1, 3, 4, 20], [0, 0, 3, 3]], dtype=torch.int32)
    lam = torch.tensor([0.5, 0.25, 0.0, 1.0])
    partner = partners(n, "flip")
    mode = torch.tensor([MixMode.MIXUP, MixMode.ERASE, MixMode.CUTMIX, MixMode.MIXUP], dtype=torch.int32)
    fill = torch.tensor([float("nan"), float("inf"), -float("inf")])
    for out_dtype, normalize in [(dtype, False), (torch.float16, True), (torch.float32, True)]:
        mean, std = (torch.tensor([1e-3, -2.0, 100.0]), torch.tensor([1e-4, 3.0, 0.5])) if normalize else (None, None)
        expected = torch.ops.recipe_kernels.composite_batch(x, box, lam, partner, mode, fill, mean, std, None, None,
                                                            out_dtype, False, "torch")
        for sentinel in sentinels(out_dtype):
            out = composite_host(x, box, lam, partner, mode, fill, mean, std, None, out_dtype, False, sentinel)
            assert_same_bits(out, expected)


# The last: 16-byte aligned rows, whose box spans move as 16-byte vectors between one-by-one ends.
SWAP_SHAPES = [(3, 13, 11), (1, 9, 7), (2, 5, 261), (2, 6, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("n", [2, 3, 5, 6])
@pytest.mark.parametrize("image", SWAP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("box_index", range(8))
def test_cutmix_swap_kernel_code_equals_torch_backend(dtype, channels_last, n, image, box_index):
    c, h, w = image
    x = make_x((n, c, h, w), dtype, channels_last)
    box = torch.tensor([boxes(h, w)[box_index]], dtype=torch.int32).expand(n, 4).contiguous()
    expected = x.clone()  # clone keeps the layout, which the op reads
    torch.ops.recipe_kernels.cutmix_swap_(expected, box, "torch")
    out = x.clone()
    channels_last_walk = not out.is_contiguous()  # as cutmix_swap_op decides
    _backend._C.cutmix_swap_host(x=out.data_ptr(), box=box.data_ptr(), n=n, c=c, h=h, w=w,
                                 channels_last=channels_last_walk, dtype=MIXING_DTYPE_CODES[dtype])
    assert_same_bits(out, expected)
