"""The CUDA augment kernel's own code (csrc/augment.cu), run on the CPU through _C's *_host entry points.

augment_kernel's two steps (compute a block's pixels into shared memory, then store them) are
__host__ __device__ functions of (block, thread); the host entry points run every thread of the
launcher's grid on CPU tensors. Against the torch backend (torch's interpolate, the oracle) within
the tolerances of tests/test_augment.py, and against the Triton kernel (the same fp32 steps) bit for bit.

Output sizes: 7 x 9 (one partial 256-pixel block, no 16-byte stores: 63 pixels) and 16 x 20 (two
blocks, the second partial, 16-byte stores: 320 pixels). Boxes are test_augment's: past two edges,
1 x 1, the whole image downscaled almost 3x, a small box upscaled.
"""
import pytest
import torch

import recipe_kernels as rk
from recipe_kernels import _backend, augment
from conftest import BACKENDS
from test_augment import BOXES, FLIP, HEIGHT, MEAN, STD, WIDTH, erased, normalised_as_the_kernels, sample_images

pytestmark = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")

SIZES = [(7, 9), (16, 20)]


def resized_crop_host(images, boxes, size, *, flip=None, mean=None, std=None, out_dtype=None, antialias=True,
                      channels_last=False, sentinel=None):
    """_C.resized_crop_host into a fresh output (full of `sentinel` when given, so a missed element shows)."""
    batch = augment._check_images(images)
    boxes = boxes.to(torch.int32).contiguous()
    mean, std, out_dtype = augment._normalization(batch, mean, std, out_dtype)
    out = augment._new_output(batch, *size, out_dtype, channels_last)
    if sentinel is not None:
        out.fill_(sentinel)
    table = augment.image_table(batch)
    _backend._C.resized_crop_host(**augment._resized_crop_cuda_arguments(table, batch, boxes, flip, mean, std, out,
                                                                         antialias))
    return out


def assert_close_to_torch(got, expected):
    if got.dtype == torch.uint8:  # both round fp32 half up; interpolate's sums may land across a .5
        assert (got.int() - expected.int()).abs().max() <= 1
    else:
        tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[got.dtype]
        torch.testing.assert_close(got.float(), expected.float(), rtol=tolerance, atol=1e-5)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype, out_dtype, normalise", [
    (torch.uint8, torch.uint8, False), (torch.uint8, torch.bfloat16, True), (torch.float32, torch.float32, False),
    (torch.float16, torch.float16, False), (torch.bfloat16, torch.float32, True)])
@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_kernel_code_matches_the_torch_backend(size, channels_last, dtype, out_dtype, normalise,
                                                            antialias):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = sample_images(dtype).cpu().contiguous(memory_format=memory_format)
    boxes = torch.tensor(BOXES)
    flip = torch.tensor(FLIP)
    norm = dict(mean=MEAN, std=STD) if normalise else {}
    expected = rk.resized_crop(images, boxes, size, flip=flip, antialias=antialias, out_dtype=out_dtype,
                               memory_format=memory_format, backend="torch", **norm)
    for sentinel in ((0, 255) if out_dtype == torch.uint8 else (float("nan"),)):
        got = resized_crop_host(images, boxes, size, flip=flip, out_dtype=out_dtype, antialias=antialias,
                                channels_last=channels_last, sentinel=sentinel, **norm)
        assert got.is_contiguous(memory_format=memory_format)
        assert_close_to_torch(got, expected)


def test_a_list_of_images_and_three_or_five_channels():
    # Decoded images of different sizes and layouts (the table holds each one's strides); 5 channels run as a
    # group of 4 and a masked group.
    for channels in (3, 5):
        images = [torch.rand(channels, 12, 14), torch.rand(channels, 15, 7).transpose(1, 2).contiguous().transpose(1, 2),
                  torch.rand(channels, 9, 9)]
        boxes = torch.tensor([[2, 1, 10, 12], [0, 2, 15, 4], [-1, -1, 11, 11]])
        flip = torch.tensor([False, True, True])
        for size, channels_last in (((6, 5), False), ((16, 20), True)):
            expected = rk.resized_crop(images, boxes, size, flip=flip, backend="torch",
                                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            got = resized_crop_host(images, boxes, size, flip=flip, channels_last=channels_last)
            assert_close_to_torch(got, expected)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
@pytest.mark.parametrize("dtype, out_dtype, normalise, antialias, channels_last", [
    (torch.float32, torch.float32, False, True, False), (torch.uint8, torch.bfloat16, True, True, True),
    (torch.uint8, torch.uint8, False, False, False)])
def test_resized_crop_kernel_code_equals_the_triton_kernel_bit_for_bit(dtype, out_dtype, normalise, antialias,
                                                                       channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = sample_images(dtype).cpu()
    boxes = torch.tensor(BOXES)
    flip = torch.tensor(FLIP)
    norm = dict(mean=MEAN, std=STD) if normalise else {}
    size = SIZES[1]
    expected = rk.resized_crop(images, boxes, size, flip=flip, antialias=antialias, out_dtype=out_dtype,
                               memory_format=memory_format, backend="triton", **norm)
    got = resized_crop_host(images, boxes, size, flip=flip, out_dtype=out_dtype, antialias=antialias,
                            channels_last=channels_last, **norm)
    assert torch.equal(got, expected)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
@pytest.mark.parametrize("dtype, out_dtype, normalise", [(torch.uint8, torch.bfloat16, True),
                                                         (torch.float32, torch.float32, False)])
@pytest.mark.parametrize("antialias", [True, False])
def test_triton_equals_the_kernel_code_bit_for_bit_on_strided_images_and_whole_tiles(dtype, out_dtype, normalise,
                                                                                     antialias):
    # channels_last images (column stride 3: no immediate tap offsets; bytes read clamped, floats masked) and a
    # 40 x 36 output: one whole Triton tile (16-byte stores) and three partial ones.
    images = sample_images(dtype).cpu().contiguous(memory_format=torch.channels_last)
    boxes = torch.tensor(BOXES)
    flip = torch.tensor(FLIP)
    norm = dict(mean=MEAN, std=STD) if normalise else {}
    size = (40, 36)
    expected = rk.resized_crop(images, boxes, size, flip=flip, antialias=antialias, out_dtype=out_dtype,
                               backend="triton", **norm)
    got = resized_crop_host(images, boxes, size, flip=flip, out_dtype=out_dtype, antialias=antialias, **norm)
    assert torch.equal(got, expected)


def batch_augment_host(images, size, params, mean, std, out_dtype, antialias, channels_last=False):
    batch = augment._check_images(images)
    mean, std, out_dtype = augment._normalization(batch, mean, std, out_dtype)
    out = augment._new_output(batch, *size, out_dtype, channels_last).fill_(float("nan"))
    table = augment.image_table(batch)
    crop = params["crop"].to(torch.int32)  # held here: the entry point reads it through a raw pointer
    _backend._C.batch_augment_host(**augment._batch_augment_cuda_arguments(
        table, batch, crop, params["flip"], params["mix_box"], params["lam"],
        params["partner"], params["mode"], params["erase_box"], params["erase"], params["fill"], mean, std, out,
        antialias))
    return out


def composed_on_host_crops(images, size, params, mean, std, out_dtype, antialias):
    """The composition batch_augment fuses, its crops from this same kernel code (fp32): MixUp/CutMix and erasing
    (torch), then the kernels' normalisation and the cast."""
    crop = resized_crop_host(images, params["crop"], size, flip=params["flip"], out_dtype=torch.float32,
                             antialias=antialias)
    mixed = rk.composite_batch(crop, params["mix_box"], params["lam"], params["partner"], params["mode"],
                               backend="torch")
    return normalised_as_the_kernels(erased(mixed, params, "torch"), mean, std).to(out_dtype)


@pytest.mark.parametrize("antialias, channels_last", [(True, False), (False, True)])
def test_batch_augment_kernel_code_equals_its_composition_and_the_triton_kernel(antialias, channels_last):
    images = [sample_images(torch.uint8, 1, 10 + i, 12 - i, i)[0].cpu() for i in range(4)]
    target = torch.tensor([3, 1, 4, 1])
    size = (16, 20)
    torch.manual_seed(5)
    _, _, params = rk.augment.batch_augment(images, target, size, scale=(0.3, 1.0), erase_p=0.5,
                                            erase_value=(10.0, 20.0, 30.0), mean=MEAN, std=STD,
                                            out_dtype=torch.bfloat16, antialias=antialias, return_params=True,
                                            backend="torch")
    modes = set(params["mode"].tolist())
    assert {int(rk.MixMode.MIXUP), int(rk.MixMode.CUTMIX)} <= modes and params["erase"].any()  # every path runs
    got = batch_augment_host(images, size, params, MEAN, STD, torch.bfloat16, antialias, channels_last)
    assert torch.equal(got, composed_on_host_crops(images, size, params, MEAN, STD, torch.bfloat16, antialias))
    if "triton" in BACKENDS:
        expected = augment.batch_augment_op(
            augment._check_images(images), params["crop"].to(torch.int32), params["flip"], params["mix_box"],
            params["lam"], params["partner"], params["mode"], params["erase_box"], params["erase"], params["fill"],
            torch.tensor(MEAN), torch.tensor(STD), *size, antialias, torch.bfloat16, channels_last, "triton")
        assert torch.equal(got, expected)


@pytest.mark.parametrize("channels", [3, 30])  # 30 uint8 -> fp32 channels: two outputs' staging past the limit
@pytest.mark.parametrize("partner", [[1, 0, 2, 9, 5, 3], [1, 2, 0, 4, 5, 3]])  # the second: two cycles
def test_batch_augment_kernel_code_equals_its_composition_for_any_partners(partner, channels):
    """Mutual partners (one block writes both, where their staging fits), a sample its own partner, an index past
    the batch (clamped) that pairs two samples, one-way partners and cycles, against the composition."""
    images = [torch.randint(0, 256, (channels, 9 + i % 3, 11 - i % 2), dtype=torch.uint8) for i in range(6)]
    size = (9, 7)  # 63 pixels: one block a sample
    mean, std = torch.linspace(10.0, 200.0, channels).tolist(), torch.linspace(20.0, 70.0, channels).tolist()
    torch.manual_seed(3)
    _, _, params = rk.augment.batch_augment(images, torch.arange(6), size, scale=(0.3, 1.0), erase_p=0.5,
                                            mean=mean, std=std, return_params=True, backend="torch")
    params["partner"] = torch.tensor(partner, dtype=torch.int32)
    params["mode"] = torch.tensor([rk.MixMode.MIXUP, rk.MixMode.CUTMIX] * 3, dtype=torch.int32)
    params["mix_box"] = torch.tensor([[1, 1, 4, 3]] * 6, dtype=torch.int32)
    got = batch_augment_host(images, size, params, mean, std, torch.float32, True)
    assert torch.equal(got, composed_on_host_crops(images, size, params, mean, std, torch.float32, True))


def test_too_many_channels_is_a_value_error_naming_the_limit():
    images = torch.rand(1, 49, 4, 4)
    with pytest.raises(ValueError, match="at most 48 channels, got 49"):
        resized_crop_host(images, torch.tensor([[0, 0, 4, 4]]), (2, 2))


def test_full_size_workload_geometry_in_one_sample():
    # One 3 x 60 x 64 uint8 image to a 56 x 56 normalised bf16 crop (the workload's shape, scaled down):
    # 13 blocks, 16-byte stores, antialias on a 1.07x downscale; against the torch backend.
    images = torch.randint(0, 256, (1, 3, 60, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[2, 3, 58, 60]])
    for channels_last in (False, True):
        got = resized_crop_host(images, boxes, (56, 56), mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                channels_last=channels_last)
        expected = rk.resized_crop(images, boxes, 56, mean=MEAN, std=STD, out_dtype=torch.bfloat16, backend="torch",
                                   memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_close_to_torch(got, expected)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
def test_antialias_strip_kernel_and_its_fallback_equal_the_kernel_code_bit_for_bit(monkeypatch):
    # _resized_crop_strip_kernel walks each program's output rows with WINDOW source rows' horizontal sums in
    # registers. 5 channels (a group of 4 and one of 1), channels_last images, a 9 x 7 output (odd), flips. Boxes:
    # past the top and right edges with 5 taps per axis (the window full: the fast path), past the bottom and left
    # with 6 row taps (the single-pass fallback), 6 column taps (fallback), a 3 x 2 box upscaled. Three segments of 3
    # rows (each fills its window, then walks). Two launches: the interpreter runs this kernel slowly.
    monkeypatch.setattr(augment, "MIN_SEGMENT_ROWS", 3)
    monkeypatch.setattr(augment, "STRIP_PROGRAMS_PER_SM", 100)
    generator = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[-2, 12, 22, 17], [3, -3, 23, 10], [5, 4, 12, 18], [20, 22, 3, 2]])
    flip = torch.tensor([True, False, True, False])
    size = (9, 7)
    floats = torch.rand((4, 5, 24, 26), generator=generator)
    # Non-finite pixels inside some windows (the outputs reading them are inf or NaN on both) and outside all.
    floats[0, 0, 10, 16], floats[2, 3, 14, 15], floats[1, 1, 0, 0] = float("inf"), float("nan"), -float("inf")
    for images, out_dtype, norm, channels_last in (
            (floats, torch.float32, {}, False),
            ((floats * 255).nan_to_num(7).clamp(0, 255).to(torch.uint8), torch.bfloat16,
             dict(mean=MEAN + (1.0, 2.0), std=STD + (3.0, 4.0)), True)):
        images = images.contiguous(memory_format=torch.channels_last)
        expected = resized_crop_host(images, boxes, size, flip=flip, out_dtype=out_dtype,
                                     channels_last=channels_last, **norm)
        got = rk.resized_crop(images, boxes, size, flip=flip, out_dtype=out_dtype, backend="triton",
                              memory_format=torch.channels_last if channels_last else torch.contiguous_format, **norm)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
        if out_dtype == torch.float32:
            assert got.isnan().any() and got.isinf().any() and got.isfinite().any()


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
def test_antialias_strip_kernel_over_two_strips_equals_the_kernel_code_bit_for_bit():
    # An output wider than a strip (STRIP_X + 4 columns: two strips, the second 4 wide), 2 rows, 3 channels. Sample 0
    # flipped (each strip's columns read the other's source columns), downscaled 1.5x on both axes (the fast path);
    # sample 1 downscaled 3x on rows (the single-pass fallback) and upscaled 2x on columns from a box past the left
    # edge.
    width = augment.STRIP_X + 4
    images = torch.randint(0, 256, (2, 3, 6, 2 * width), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    boxes = torch.tensor([[1, 3, 3, 3 * width // 2], [0, -5, 6, width // 2]])
    flip = torch.tensor([True, False])
    expected = resized_crop_host(images, boxes, (2, width), flip=flip, sentinel=7)
    got = rk.resized_crop(images, boxes, (2, width), flip=flip, backend="triton")
    assert torch.equal(got, expected)
