"""resized_crop / random_resized_crop against torchvision's v2 transforms, per sample, on every backend.

Sizes are tiny (the Triton interpreter runs about a second per call here): images of at most
24 x 24 and outputs of at most 12 x 12, with boxes chosen so that one batch covers every case
(a box leaving its image across two edges, a 1 x 1 box, the whole image downscaled almost 3x,
a small box upscaled).
"""
import math
import os

import numpy as np
import pytest
import torch
import triton.language as tl

import recipe_kernels as rk
from recipe_kernels import augment
from conftest import BACKENDS, DEVICE
from exact_rounding import exact_fma
import torchvision_oracle

F = torchvision_oracle.v2_functional()

HEIGHT, WIDTH = 20, 24
# (top, left, height, width): past the top and right edges (downscale 12/7 x 10/9), a 1 x 1 box in
# the bottom-left corner (upscale), the whole image (downscale 20/7 x 24/9), a small inner box.
BOXES = [[-3, 18, 12, 10], [19, 0, 1, 1], [0, 0, HEIGHT, WIDTH], [5, 4, 4, 5]]
FLIP = [True, False, True, False]
SIZE = (7, 9)  # odd on both axes
MEAN, STD = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)


def sample_images(dtype, n=len(BOXES), height=HEIGHT, width=WIDTH, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (n, 3, height, width), generator=generator, dtype=torch.uint8)
    else:
        images = torch.rand((n, 3, height, width), generator=generator).to(dtype)
    return images.to(DEVICE)


def torchvision_resized_crop(images, boxes, size, flip, antialias):
    """torchvision's resized_crop and horizontal_flip, one sample at a time: the oracle."""
    out = []
    for image, box, flipped in zip(images, boxes.tolist(), flip.tolist()):
        resized = F.resized_crop(image, *box, list(size), antialias=antialias)
        out.append(F.horizontal_flip(resized) if flipped else resized)
    return torch.stack(out)


def assert_matches_torchvision(got, expected, dtype):
    if dtype == torch.uint8:  # torchvision's uint8 path has fixed-point weights: one level
        assert (got.int() - expected.int()).abs().max() <= 1
    elif dtype == torch.float32:  # images in [0, 1]: 1e-4 of the value range
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    else:  # both interpolate in fp32; the one rounding may differ by an ulp
        torch.testing.assert_close(got.float(), expected.float(), rtol=1.6e-2 if dtype == torch.bfloat16 else 2e-3,
                                   atol=1e-3)


@pytest.mark.parametrize("dtype, antialias, channels_last", [
    (torch.float32, True, False), (torch.float32, False, True), (torch.uint8, True, True),
    (torch.uint8, False, False), (torch.float16, True, False), (torch.bfloat16, True, True)])
def test_resized_crop_matches_torchvision_per_sample(backend, dtype, antialias, channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = sample_images(dtype).contiguous(memory_format=memory_format)
    boxes = torch.tensor(BOXES, device=DEVICE)
    flip = torch.tensor(FLIP, device=DEVICE)
    got = rk.resized_crop(images, boxes, SIZE, flip=flip, antialias=antialias, memory_format=memory_format,
                          backend=backend)
    assert got.dtype == dtype and got.shape == (len(BOXES), 3, *SIZE)
    assert got.is_contiguous(memory_format=memory_format)
    assert_matches_torchvision(got, torchvision_resized_crop(images, boxes, SIZE, flip, antialias), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_a_list_of_sizes_normalised_matches_torchvision_on_float_images(backend, dtype):
    # Decoded images of different sizes; uint8 is interpolated in fp32 with no uint8 rounding on the way.
    sizes = [(12, 14), (15, 7), (9, 9)]
    images = [sample_images(dtype, 1, height, width, seed)[0] for seed, (height, width) in enumerate(sizes)]
    boxes = torch.tensor([[2, 1, 10, 12], [0, 2, 15, 4], [-1, -1, 11, 11]], device=DEVICE)
    flip = torch.tensor([False, True, True], device=DEVICE)
    size = (6, 5)
    got = rk.resized_crop(images, boxes, size, flip=flip, mean=MEAN, std=STD, out_dtype=torch.float32,
                          backend=backend)
    expected = torchvision_resized_crop([image.float() for image in images], boxes, size, flip, True)
    expected = F.normalize(expected, list(MEAN), list(STD))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def test_normalised_bf16_output_rounds_the_normalised_fp32_value_once(backend):
    images = sample_images(torch.uint8, n=2)
    boxes = torch.tensor(BOXES[2:], device=DEVICE)
    got = rk.resized_crop(images, boxes, 5, mean=MEAN, std=STD, out_dtype=torch.bfloat16, backend=backend)
    fp32 = rk.resized_crop(images, boxes, 5, mean=MEAN, std=STD, backend="torch")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), fp32.to(torch.bfloat16).float(), rtol=0, atol=2 ** -6)


def normalised_as_the_kernels(x, mean, std):
    """fma(v, 1 / std[c], -mean[c] * (1 / std[c])) per element of the fp32 (N, C, h, w) x, the reciprocal and the
    shift rounded once: how the kernels of resized_crop and batch_augment normalise (exact_fma: one rounding)."""
    mean = torch.tensor(mean, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).reshape(1, -1, 1, 1)
    inverse_std = (1.0 / std).expand_as(x)
    shift = (-mean * (1.0 / std)).expand_as(x)
    expected = [exact_fma(*terms) for terms in zip(*(t.flatten().cpu().numpy() for t in (x, inverse_std, shift)))]
    return torch.tensor(np.array(expected, dtype=np.float32), device=x.device).reshape(x.shape)


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "torch"])
def test_kernels_normalise_by_the_correctly_rounded_reciprocal_of_std(backend):
    # The kernels compute fma(v, 1 / std, -mean * (1 / std)), the reciprocal and the shift rounded once (one FMA per
    # element, not a subtract and a divide): within an ulp or two of the quotient the torch backend (the oracle)
    # computes, and exactly that fma. The torch backend itself divides.
    images = sample_images(torch.uint8)
    boxes = torch.tensor(BOXES, device=DEVICE)
    flip = torch.tensor(FLIP, device=DEVICE)
    got = rk.resized_crop(images, boxes, SIZE, flip=flip, mean=MEAN, std=STD, out_dtype=torch.float32,
                          backend=backend)
    plain = rk.resized_crop(images, boxes, SIZE, flip=flip, out_dtype=torch.float32, backend=backend)
    assert torch.equal(got, normalised_as_the_kernels(plain, MEAN, STD))
    # near v = mean the difference cancels: within an ulp or two of the shift (about 2 here), not of the result
    mean = torch.tensor(MEAN, device=DEVICE).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, device=DEVICE).reshape(1, 3, 1, 1)
    torch.testing.assert_close(got, (plain - mean) / std, rtol=1e-6, atol=5e-7)


@pytest.mark.parametrize("channels", [1, 5])
def test_one_and_five_channels_and_a_one_pixel_wide_image(backend, channels):
    # 5 channels run as a group of 4 and a group of 1 (its missing channels skipped); a byte image one pixel wide
    # cannot read its first two column taps as one pair of columns, so the kernels read it through masks.
    generator = torch.Generator().manual_seed(channels)
    images = [torch.randint(0, 256, (channels, 9, width), generator=generator, dtype=torch.uint8).to(DEVICE)
              for width in (11, 1)]
    boxes = torch.tensor([[-1, 2, 8, 8], [1, 0, 6, 1]], device=DEVICE)
    flip = torch.tensor([True, False], device=DEVICE)
    for antialias in (True, False):
        got = rk.resized_crop(images, boxes, (5, 3), flip=flip, antialias=antialias, out_dtype=torch.float32,
                              backend=backend)
        expected = torchvision_resized_crop([image.float() for image in images], boxes, (5, 3), flip, antialias)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * 255)


def test_a_box_of_the_output_size_inside_the_image_is_copied_exactly(backend):
    images = sample_images(torch.float32, n=2)
    boxes = torch.tensor([[1, 2, 7, 9], [13, 15, 7, 9]], device=DEVICE)
    got = rk.resized_crop(images, boxes, SIZE, backend=backend)
    torch.testing.assert_close(got, torch.stack([images[0, :, 1:8, 2:11], images[1, :, 13:20, 15:24]]), rtol=0, atol=0)


def test_backends_agree_and_a_new_output_size_needs_no_new_kernel():
    if "triton" not in BACKENDS:
        pytest.skip("needs the triton backend")
    images = sample_images(torch.float32, n=2)
    boxes = torch.tensor(BOXES[:2], device=DEVICE)
    for size in ((3, 4), (5, 2)):
        torch.testing.assert_close(rk.resized_crop(images, boxes, size, backend="triton"),
                                   rk.resized_crop(images, boxes, size, backend="torch"), rtol=0, atol=1e-5)
    if DEVICE.type == "cuda":  # one compiled kernel served both sizes (the sizes are not specialised on)
        assert len(augment._resized_crop_kernel.device_caches[DEVICE.index][0]) == 1


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the interpreter reads the constexpr at each call; compiled kernels keep the one they had")
def test_both_tile_orientations_give_the_same_bits(monkeypatch):
    """augment.TILE_COLUMNS_FIRST (Triton's version picks it: the GPU machine's 3.6 takes the other one) moves a
    tile's columns to its other dimension and changes no value: edge tiles, flips, both layouts, antialias on and
    off, a tile inside the output (its unmasked stores), a list of byte images and batch_augment's mixing."""
    images = sample_images(torch.uint8)
    boxes = torch.tensor(BOXES, device=DEVICE)
    flip = torch.tensor(FLIP, device=DEVICE)
    byte_list = [sample_images(torch.uint8, 1, 10 + i, 12 - i, i)[0] for i in range(4)]
    inner_tile = (augment.BLOCK_Y + 1, augment.BLOCK_X + 3)  # one whole tile, the rest edge tiles

    def outputs():
        torch.manual_seed(5)
        return [rk.resized_crop(images, boxes, SIZE, flip=flip, antialias=antialias, mean=MEAN, std=STD,
                                memory_format=memory_format, backend="triton")
                for antialias, memory_format in ((False, torch.channels_last), (True, torch.contiguous_format))] + \
            [rk.resized_crop(images[:1], boxes[2:3], inner_tile, flip=flip[:1], backend="triton"),
             rk.augment.batch_augment(byte_list, torch.arange(4, device=DEVICE), (6, 7), scale=(0.3, 1.0),
                                      erase_p=0.5, mean=MEAN, std=STD, backend="triton")[0]]

    default = outputs()
    monkeypatch.setattr(augment, "TILE_COLUMNS_FIRST", tl.constexpr(not augment.TILE_COLUMNS_FIRST))
    for got, expected in zip(outputs(), default):
        assert torch.equal(got, expected)


def test_opcheck():
    images = sample_images(torch.uint8, n=2, height=6, width=7)
    boxes = torch.tensor([[0, 1, 5, 6], [-1, 0, 3, 2]], dtype=torch.int32, device=DEVICE)
    flip = torch.tensor([True, False], device=DEVICE)
    mean = torch.tensor(MEAN, device=DEVICE)
    std = torch.tensor(STD, device=DEVICE)
    for backend in BACKENDS:
        torch.library.opcheck(augment.resized_crop_op.custom_op,
                              ([images], boxes, flip, mean, std, 3, 4, True, torch.float32, False, backend))


def test_compiles_fullgraph_at_new_sizes_and_batch_sizes():
    # aot_eager traces the whole graph through the op's fake as inductor would, without its code generation.
    backend = "triton" if "triton" in BACKENDS else "torch"
    compiled = torch.compile(lambda images, boxes, flip, size: rk.resized_crop(
        images, boxes, size, flip=flip, mean=MEAN, std=STD, out_dtype=torch.bfloat16, backend=backend),
        fullgraph=True, backend="aot_eager")
    for n, size in ((2, (5, 6)), (3, (7, 4))):
        images = sample_images(torch.uint8, n=n)
        boxes = torch.tensor(BOXES[:n], device=DEVICE)
        flip = torch.tensor(FLIP[:n], device=DEVICE)
        expected = rk.resized_crop(images, boxes, size, flip=flip, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                   backend=backend)
        torch.testing.assert_close(compiled(images, boxes, flip, size), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- sampling


def sampled(n=2000, height=40, width=30, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, seed=1):
    sizes = torch.tensor([[height, width]], device=DEVICE).expand(n, 2)
    seed = torch.tensor([seed], dtype=torch.int64, device=DEVICE)
    return augment.sample_crops(seed, sizes, scale, ratio, hflip)


def test_sampled_boxes_lie_inside_their_images_with_area_and_aspect_in_range():
    scale, ratio = (0.1, 0.6), (0.5, 2.0)
    boxes, _ = sampled(scale=scale, ratio=ratio)
    top, left, height, width = boxes.unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (height > 0).all() and (width > 0).all()
    assert (top + height <= 40).all() and (left + width <= 30).all()
    # w and h are rounded: the area and the aspect are in range up to half a pixel on each side.
    assert ((height + 0.5) * (width + 0.5) >= scale[0] * 1200).all()
    assert ((height - 0.5) * (width - 0.5) <= scale[1] * 1200).all()
    assert ((width + 0.5) / (height - 0.5) >= ratio[0]).all() and ((width - 0.5) / (height + 0.5) <= ratio[1]).all()
    # Every top and left is reached, roughly uniformly: the first candidate's placement is U{0..H-h}.
    assert top.unique().numel() > 20 and left.unique().numel() > 15


def test_the_area_fraction_is_uniform_like_torchvisions():
    boxes, _ = sampled(n=2000, height=200, width=200, ratio=(1.0, 1.0))
    fraction = (boxes[:, 2] * boxes[:, 3]).double() / 40000
    assert abs(fraction.mean().item() - 0.54) < 0.025  # U(0.08, 1) has mean 0.54, sd 0.27 (sd of the mean 0.006)


def test_images_too_small_for_the_candidates_take_torchvisions_centre_crop():
    # A 2 x 21 image: at scale >= 0.9 and aspect in [1, 1.2] no candidate fits (h >= 6 > 2).
    boxes, _ = sampled(n=50, height=2, width=21, scale=(0.9, 1.0), ratio=(1.0, 1.2))
    # torchvision: in_ratio = 10.5 > 1.2, so h = 2, w = round(2 * 1.2) = 2, centred.
    assert boxes.tolist() == [[0, 9, 2, 2]] * 50
    boxes, _ = sampled(n=5, height=21, width=2, scale=(0.9, 1.0), ratio=(1.0, 1.2))
    assert boxes.tolist() == [[9, 0, 2, 2]] * 5  # in_ratio < 1: w = 2, h = round(2 / 1) = 2


def test_flip_frequency():
    n = 3000
    for hflip in (0.0, 0.3, 1.0):
        _, flip = sampled(n=n, hflip=hflip)
        assert abs(flip.double().mean().item() - hflip) < 4 * math.sqrt(hflip * (1 - hflip) / n) + 1e-12


def test_random_resized_crop_is_reproducible_equal_across_backends_and_replayed_by_resized_crop():
    images = [sample_images(torch.uint8, 1, 8 + 2 * i, 12 - 3 * i, i)[0] for i in range(3)]
    results = {}
    for backend in BACKENDS:
        torch.manual_seed(7)
        results[backend] = rk.random_resized_crop(images, (4, 3), mean=MEAN, std=STD, return_params=True,
                                                  backend=backend)
    x, boxes, flip = results[BACKENDS[0]]
    for other in BACKENDS[1:]:
        torch.testing.assert_close(results[other][1], boxes, rtol=0, atol=0)
        torch.testing.assert_close(results[other][2], flip, rtol=0, atol=0)
        torch.testing.assert_close(results[other][0], x, rtol=0, atol=1e-4)
    replayed = rk.resized_crop(images, boxes, (4, 3), flip=flip, mean=MEAN, std=STD, backend=BACKENDS[-1])
    assert torch.equal(replayed, results[BACKENDS[-1]][0])
    torch.manual_seed(8)
    assert not torch.equal(rk.random_resized_crop(images, (4, 3), return_params=True, backend="torch")[1], boxes)


def test_the_module_crops_each_sample_its_own_way():
    images = sample_images(torch.float32, n=3)
    module = rk.nn.RandomResizedCrop(4, scale=(0.2, 0.5), hflip=0.5)
    torch.manual_seed(3)
    x = module(images)
    torch.manual_seed(3)
    _, boxes, flip = rk.random_resized_crop(images, 4, scale=(0.2, 0.5), return_params=True)
    assert x.shape == (3, 3, 4, 4) and len({tuple(box) for box in boxes.tolist()}) == 3
    assert torch.equal(x, rk.resized_crop(images, boxes, 4, flip=flip))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_value_errors_naming_the_problem():
    images = sample_images(torch.float32, n=2)
    boxes = torch.tensor(BOXES[:2], device=DEVICE)
    cases = [
        (lambda: rk.resized_crop(images, boxes[:, :3], 4), "boxes must be an \\(2, 4\\) tensor"),
        (lambda: rk.resized_crop(images, boxes[:1], 4), "boxes must be an \\(2, 4\\) tensor"),
        (lambda: rk.resized_crop(images, boxes.float(), 4), "boxes must be an integer tensor"),
        (lambda: rk.resized_crop(images, boxes, 0), "size must be positive"),
        (lambda: rk.resized_crop(images, boxes, (4, -1)), "size must be positive"),
        (lambda: rk.resized_crop(images, boxes, (4, 2.5)), "size must be an int or a pair"),
        (lambda: rk.resized_crop(images, boxes, (4, augment.MAX_OUTPUT_SIDE + 1)), "size must be at most"),
        (lambda: rk.resized_crop(images, boxes, 4, flip=torch.ones(2, device=DEVICE)), "flip must be None or"),
        (lambda: rk.resized_crop(images.double(), boxes, 4), "images must be uint8, float32"),
        (lambda: rk.resized_crop(images[0], boxes, 4), "images must be a 4-D"),
        (lambda: rk.resized_crop([images[0], images[1].half()], boxes, 4), "images\\[1\\] has dtype"),
        (lambda: rk.resized_crop([images[0], images[1, :2]], boxes, 4), "images\\[1\\] has channels 2"),
        (lambda: rk.resized_crop([images[0], images[1].to("meta")], boxes, 4), "images\\[1\\] has device meta"),
        (lambda: rk.resized_crop([], boxes, 4), "images is an empty list"),
        (lambda: rk.resized_crop(images, boxes, 4, mean=MEAN), "mean and std must be given together"),
        (lambda: rk.resized_crop(images, boxes, 4, memory_format=torch.preserve_format), "memory_format"),
        (lambda: rk.resized_crop(images.clone().requires_grad_(), boxes, 4), "no gradient"),
        (lambda: rk.random_resized_crop(images, 4, scale=(0.0, 1.0)), "scale must satisfy 0 < low <= high <= 1"),
        (lambda: rk.random_resized_crop(images, 4, scale=(0.5, 0.2)), "scale must satisfy"),
        (lambda: rk.random_resized_crop(images, 4, scale=(0.5, 1.5)), "scale must satisfy"),
        (lambda: rk.random_resized_crop(images, 4, ratio=(0.0, 1.0)), "ratio must satisfy 0 < low <= high"),
        (lambda: rk.random_resized_crop(images, 4, ratio=(2.0, 1.0)), "ratio must satisfy"),
        (lambda: rk.random_resized_crop(images, 4, hflip=1.5), "hflip must be a probability"),
        (lambda: rk.random_resized_crop(images, -3), "size must be positive"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ----------------------------------------------------------------------------- BatchAugment


# Every way a sample can stand to its partner: see test_batch_augment_equals_its_composition_for_any_partners.
PARTNERS = [1, 0, 2, 9, 5, 3]


def composed(images, size, params, mean, std, out_dtype, backend):
    """What batch_augment fuses: resized_crop to fp32, composite_batch's mixing and erasing, then the normalisation
    (the torch backend: composite_batch's division; the kernels: normalised_as_the_kernels) and the cast."""
    x = rk.resized_crop(images, params["crop"], size, flip=params["flip"], out_dtype=torch.float32, backend=backend)
    x = rk.composite_batch(x, params["mix_box"], params["lam"], params["partner"], params["mode"], backend=backend)
    if backend == "torch":
        return erased(x, params, backend, mean=mean, std=std, out_dtype=out_dtype)
    return normalised_as_the_kernels(erased(x, params, backend), mean, std).to(out_dtype)


def erased(mixed, params, backend, **normalisation):
    """composite_batch's erasing of the mixed crops (and its normalisation and cast, when given)."""
    n = mixed.shape[0]
    erase_mode = torch.where(params["erase"], int(rk.MixMode.ERASE), int(rk.MixMode.KEEP))
    return rk.composite_batch(mixed, params["erase_box"], torch.ones(n, device=mixed.device),
                              torch.arange(n, device=mixed.device), erase_mode, fill=params["fill"], backend=backend,
                              **normalisation)


def test_batch_augment_equals_its_composition_bit_for_bit(backend):
    images = [sample_images(torch.uint8, 1, 10 + i, 12 - i, i)[0] for i in range(4)]
    target = torch.tensor([3, 1, 4, 1], device=DEVICE)
    size = (6, 7)
    torch.manual_seed(5)
    x, mixed_target, params = rk.augment.batch_augment(
        images, target, size, scale=(0.3, 1.0), erase_p=0.5, erase_value=(10.0, 20.0, 30.0), mean=MEAN, std=STD,
        out_dtype=torch.bfloat16, return_params=True, backend=backend)
    modes = set(params["mode"].tolist())
    assert {int(rk.MixMode.MIXUP), int(rk.MixMode.CUTMIX)} <= modes and params["erase"].any()  # every path runs
    assert x.dtype == torch.bfloat16 and x.shape == (4, 3, *size)
    assert torch.equal(x, composed(images, size, params, MEAN, STD, torch.bfloat16, backend))
    assert torch.equal(mixed_target.y_a, target) and torch.equal(mixed_target.y_b, target.flip(0))
    assert torch.equal(mixed_target.lam, params["lam"])
    rk.MixedTarget(mixed_target.y_a, mixed_target.y_b, mixed_target.lam)  # the checks of_checked skipped pass


def test_batch_augment_equals_its_composition_for_any_partners(backend):
    """Mutual partners (one program writes both: 0 and 1), a sample its own partner (2), an index past the batch
    (clamped to the last sample, as composite_batch does) that pairs 3 with 5, and 4 taking 5 one way."""
    partner = PARTNERS
    images = [sample_images(torch.uint8, 1, 9 + i % 3, 11 - i % 2, i)[0] for i in range(6)]
    size = (5, 6)
    torch.manual_seed(3)
    _, _, params = rk.augment.batch_augment(images, torch.arange(6, device=DEVICE), size, scale=(0.3, 1.0),
                                            erase_p=0.5, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                            return_params=True, backend="torch")
    params["partner"] = torch.tensor(partner, dtype=torch.int32, device=DEVICE)
    params["mode"] = torch.tensor([rk.MixMode.MIXUP, rk.MixMode.CUTMIX] * 3, dtype=torch.int32, device=DEVICE)
    params["mix_box"] = torch.tensor([[1, 1, 4, 3]] * 6, dtype=torch.int32, device=DEVICE)
    x = augment.batch_augment_op(augment._check_images(images), params["crop"].to(torch.int32), params["flip"],
                                 params["mix_box"], params["lam"], params["partner"], params["mode"],
                                 params["erase_box"], params["erase"], params["fill"],
                                 torch.tensor(MEAN, device=DEVICE), torch.tensor(STD, device=DEVICE), *size, True,
                                 torch.float32, False, backend)
    # fp32 out: no rounding hides a difference in the mixing or the normalisation
    assert torch.equal(x, composed(images, size, params, MEAN, STD, torch.float32, backend))


def test_batch_augment_module_eval_is_the_centre_crop_normalised_with_the_target_unchanged():
    images = sample_images(torch.uint8, n=2)
    target = torch.tensor([0, 5], device=DEVICE)
    module = rk.nn.BatchAugment(8, mean=MEAN, std=STD).eval()
    state = torch.get_rng_state()
    x, y = module(images, target)
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    assert y is target
    # 20 x 24 images: the largest 8 x 8-aspect box is 20 x 20; 0.875 of it is 17.5 -> 18, centred.
    boxes = torch.tensor([[1, 3, 18, 18]] * 2, device=DEVICE)
    torch.testing.assert_close(x, rk.resized_crop(images, boxes, 8, mean=MEAN, std=STD), rtol=0, atol=0)
    expected = torchvision_resized_crop(images.float(), boxes, (8, 8), torch.zeros(2, dtype=torch.bool), True)
    torch.testing.assert_close(x, F.normalize(expected, list(MEAN), list(STD)), rtol=0, atol=1e-3)
