"""Property-based tests (hypothesis): the mixing family against its float64 oracle and across backends.

- composite_batch on random per-sample parameters (boxes empty, full, partly or wholly outside the
  image; lam in and a little outside [0, 1]; partners out of range, which are clamped; invalid mode
  codes, which keep the sample; fixed and normal-noise fills; uint8 fills out of range), over random
  tiny N, C, H, W (H or W may be 0), every input dtype, contiguous, channels_last and other layouts
  (transposed, strided, expanded with stride 0), normalization on or off and out_dtype;
- the public samplers (cutmix, mixup, cutmix_or_mixup, nn.CutMixUp, random_erasing): lam in [0, 1],
  the pasted rectangle's area equals 1 - lam under correct_lam, MixUp equals its formula, erasing
  is one rectangle of the fill, fused normalization equals mixing then normalizing, and the
  result is reproducible under torch.manual_seed and bit-identical on every backend.

Bounded for the CPU (the Triton backend runs in its interpreter): about 30 s on two cores.
"""
import math

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import recipe_kernels as rk
from recipe_kernels import reference
from recipe_kernels.mixing import MixMode

from conftest import BACKENDS, DEVICE

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]
COMPOSITE_DTYPES = DTYPES + [torch.float64]  # float64 composites in float64
# One ulp relative to the value (fp32 arithmetic, then one rounding to the dtype may land on
# either neighbour of the float64 value); uint8 rounds half up, so it may differ by 1.
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.uint8: 0.0,
       torch.float64: 2.0**-52}
TINY = {torch.float32: 1e-38, torch.float16: 6e-8, torch.bfloat16: 1e-38, torch.uint8: 0.0, torch.float64: 1e-300}
F32 = 2.0**-23
HUGE = 2**32  # beyond int32: must be clamped, not wrapped (2^32 + 2 would wrap to CUTMIX)
CHANNELS_LAST = torch.channels_last


def equal(a, b):
    """Bit for bit, NaN equal to NaN."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        ((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else (a == b)).all())


def layout_of(x, layout):
    """x (logical values unchanged) in the given memory layout."""
    if layout == "channels_last":
        return x.contiguous(memory_format=CHANNELS_LAST)
    if layout == "transposed":  # H and W swapped in memory
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "strided":  # every other element of a wider tensor
        return torch.stack([x, x], dim=-1)[..., 0]
    if layout == "expanded":  # stride 0 along N: every sample is sample 0
        return x[:1].expand_as(x)
    return x


def image_data(shape, dtype, seed, special):
    """Random images; uint8 hits 0 and 255; floats optionally carry NaN and +-inf."""
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, generator=generator).float()
        extremes = torch.rand(shape, generator=generator)
        x = torch.where(extremes < 0.15, 0.0, torch.where(extremes > 0.85, 255.0, x))
    else:
        x = torch.randn(shape, generator=generator) * 30
        if special and x.numel() >= 3:
            flat = x.view(-1)
            picks = torch.randperm(flat.numel(), generator=generator)[:3]
            flat[picks] = torch.tensor([math.nan, math.inf, -math.inf])
    return x.to(DEVICE, dtype)


# ----------------------------------------------------------------------------- composite_batch


@st.composite
def composite_cases(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    dtype = draw(st.sampled_from(COMPOSITE_DTYPES))
    boxes, lams, partners, modes = [], [], [], []
    for _ in range(n):
        kind = draw(st.sampled_from(["random", "full", "empty", "outside", "huge"]))
        if kind == "huge":  # int64 coordinates beyond int32: the box still covers what it covers
            box = [-HUGE - draw(st.integers(0, 3)), draw(st.integers(-1, h)), HUGE + draw(st.integers(0, 3)),
                   draw(st.integers(0, h + 1))]
        elif kind == "full":
            box = [0, 0, w, h]
        elif kind == "empty":
            x0, y0 = draw(st.integers(-2, w + 2)), draw(st.integers(-2, h + 2))
            box = [x0, y0, x0 - draw(st.integers(0, 2)), y0 + draw(st.integers(-2, 3))]
        elif kind == "outside":
            box = [w + draw(st.integers(0, 3)), -draw(st.integers(0, 3)), w + 9, h + 9]
        else:
            box = [draw(st.integers(-3, w + 3)), draw(st.integers(-3, h + 3)),
                   draw(st.integers(-3, w + 3)), draw(st.integers(-3, h + 3))]
        boxes.append(box)
        lams.append(draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0, width=32),
                                   st.floats(-0.25, 1.25, width=32))))
        partners.append(draw(st.one_of(st.integers(-2, n + 1), st.sampled_from([-HUGE, HUGE]))))  # clamped to [0, N)
        modes.append(draw(st.sampled_from([int(m) for m in MixMode] + [-1, 4, 7, HUGE + int(MixMode.CUTMIX)])))
    normalize = draw(st.booleans())
    noise = dtype != torch.uint8 and draw(st.booleans())
    if dtype == torch.uint8:
        fill = draw(st.one_of(st.floats(-50, 300, width=32), st.lists(st.sampled_from([-7.0, 0.0, 127.5, 255.0, 300.0]),
                                                                      min_size=c, max_size=c)))
    else:
        fill = draw(st.one_of(st.floats(-10, 10, width=32), st.lists(st.floats(-10, 10, width=32), min_size=c,
                                                                    max_size=c)))
    mean = [draw(st.floats(-100, 100, width=32)) for _ in range(c)] if normalize else None
    std = [draw(st.floats(0.125, 100, width=32)) * draw(st.sampled_from([1, -1])) for _ in range(c)] if normalize \
        else None
    out_dtypes = [None, torch.float32, torch.float16, torch.bfloat16, torch.float64] + \
        ([torch.uint8] if dtype == torch.uint8 and not normalize else [])
    out_dtype = draw(st.sampled_from(out_dtypes))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed", "strided", "expanded"]))
    fits_int32 = all(abs(v) < 2**31 for v in sum(boxes, []))
    box_dtype = draw(st.sampled_from([torch.int32, torch.int64])) if fits_int32 else torch.int64
    mode_dtype = torch.int32 if all(abs(v) < 2**31 for v in modes) else torch.int64
    params = (torch.tensor(boxes, dtype=box_dtype), torch.tensor(lams, dtype=torch.float32), torch.tensor(partners),
              torch.tensor(modes, dtype=mode_dtype))
    return dict(shape=(n, c, h, w), dtype=dtype, params=[p.to(DEVICE) for p in params], fill=fill, mean=mean,
                std=std, out_dtype=out_dtype, layout=layout, noise=noise, special=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


def composite_bound(x, box, lam, partner, mode, value64, out64, case, noise):
    """Per element, how far a correct fp32 kernel may be from the float64 oracle."""
    n = x.shape[0]
    own = x.double()
    other = own[partner.long().clamp(0, n - 1)]
    weight = lam.double().reshape(n, 1, 1, 1)
    is_mixup = (mode == MixMode.MIXUP).reshape(n, 1, 1, 1)
    # MixUp: three fp32 roundings of terms as large as |lam a| + |(1 - lam) b|.
    arithmetic = torch.where(is_mixup, 4 * F32 * (weight.abs() * own.abs() + (1 - weight).abs() * other.abs()), 0.0)
    if noise:  # log and cos of each math library: about an ulp of fp32
        arithmetic = arithmetic + 4e-6 * (value64.abs() + 1)
    dtype = x.dtype
    value_error = arithmetic + ULP[dtype] * value64.abs() + TINY[dtype] + (1.0 if dtype == torch.uint8 else 0.0) * \
        is_mixup
    value_error = torch.nan_to_num(value_error, nan=0.0, posinf=0.0)
    out_dtype = case["out_dtype"] or (torch.float32 if case["mean"] and dtype == torch.uint8 else dtype)
    if case["mean"] is not None:
        mean = torch.tensor(case["mean"], dtype=torch.float64, device=DEVICE).reshape(1, -1, 1, 1)
        std = torch.tensor(case["std"], dtype=torch.float32, device=DEVICE).double().reshape(1, -1, 1, 1)
        value_error = (value_error + 4 * F32 * (value64.abs() + mean.abs())) / std.abs()
    return value_error + ULP[out_dtype] * out64.abs() + TINY[out_dtype], out_dtype


@settings(SETTINGS, max_examples=80)
@given(case=composite_cases())
def test_composite_batch_matches_oracle_on_every_backend(case):
    n, c, h, w = case["shape"]
    box, lam, partner, mode = case["params"]
    x = layout_of(image_data(case["shape"], case["dtype"], case["seed"], case["special"]), case["layout"])
    seed = torch.tensor([case["seed"]], device=DEVICE) if case["noise"] else None
    kwargs = dict(fill=case["fill"], noise_seed=seed, mean=case["mean"], std=case["std"], out_dtype=case["out_dtype"])
    outputs = {b: rk.composite_batch(x, box, lam, partner, mode, backend=b, **kwargs) for b in BACKENDS}

    fill = torch.tensor(case["fill"], dtype=torch.float32).expand(c) if c else torch.zeros(0)
    value64 = reference.composite_batch(x, box, lam, partner, mode, fill=fill, noise_seed=seed,
                                        math_dtype=torch.float64)
    out64 = value64
    if case["mean"] is not None:
        mean = torch.tensor(case["mean"], dtype=torch.float32).to(DEVICE, torch.float64).reshape(1, -1, 1, 1)
        std = torch.tensor(case["std"], dtype=torch.float32).to(DEVICE, torch.float64).reshape(1, -1, 1, 1)
        out64 = (value64 - mean) / std
    bound, out_dtype = composite_bound(x, box, lam, partner, mode, value64, out64, case, case["noise"])

    first = outputs[BACKENDS[0]]
    for backend, out in outputs.items():
        assert out.shape == x.shape and out.dtype == out_dtype, backend
        keeps_channels_last = case["layout"] == "channels_last" and not x.is_contiguous()
        assert out.is_contiguous(memory_format=CHANNELS_LAST if keeps_channels_last else torch.contiguous_format)
        got = out.double()
        nan = out64.isnan()
        if out_dtype == torch.uint8:
            nan = torch.zeros_like(nan)  # a NaN rounds to 0 in uint8 (checked bit for bit below)
        assert torch.equal(got.isnan(), nan), backend
        infinite = out64.isinf() & ~nan
        assert torch.equal(got[infinite], out64[infinite]), backend  # -inf and +inf where the oracle has them
        finite = ~nan & ~out64.isinf()
        error = (got - out64).abs()
        assert bool((error[finite] <= bound[finite]).all()), (backend, (error - bound)[finite].max().item())
        # Bit-identical across backends (README: CutMix, fixed-value erasing and MixUp, fp32 without FMA);
        # normal noise differs by about an ulp of log/cos between math libraries.
        if case["noise"]:
            same = (got == first.double()) | (got.isnan() & first.isnan()) | ((got - first.double()).abs() <= 2 * bound)
            assert bool(same.all()), backend
        else:
            assert equal(out, first), backend


# ----------------------------------------------------------------------------- public samplers


def labelled_images(shape, dtype, seed):
    """Sample n takes values in [40 n + 10, 40 n + 40): every pixel differs from the same pixel of any
    other sample, from the erase values used below and from normal noise (|z| < 6); integers, exact
    in every dtype (N <= 5)."""
    generator = torch.Generator().manual_seed(seed)
    n = shape[0]
    x = torch.randint(10, 40, shape, generator=generator).float() + 40.0 * torch.arange(n).reshape(n, 1, 1, 1)
    return x.to(DEVICE, dtype)


def partner_index(n, partner):
    index = torch.arange(n, device=DEVICE)
    return index.flip(0) if partner == "flip" else index.roll(1)


def mixup_formula(own, other, lam, dtype):
    """lam * own + (1 - lam) * other in fp32 without FMA, rounded as x's dtype stores it."""
    lam = lam.to(torch.float32)
    value = lam * own.float() + (1 - lam) * other.float()
    return reference._round_to_dtype(value, dtype).to(dtype)


def rectangle(taken):
    """(x0, y0, x1, y1) if the True pixels of `taken` (H, W) form one rectangle, () if none, else None."""
    if not taken.any():
        return ()
    rows, cols = taken.any(1).nonzero().flatten(), taken.any(0).nonzero().flatten()
    y0, y1, x0, x1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
    if taken.sum().item() != (y1 - y0) * (x1 - x0):
        return None
    return x0, y0, x1, y1


def cutmix_area(out, own, other):
    """The area CutMix pasted into `out` (own outside one rectangle, other inside), or None if it is not that."""
    taken = (out == other).all(0)
    if not torch.equal(out[:, ~taken], own[:, ~taken]):
        return None
    box = rectangle(taken)
    return None if box is None else (0 if box == () else (box[2] - box[0]) * (box[3] - box[1]))


@st.composite
def sampler_cases(draw):
    n = draw(st.integers(0, 5))
    return dict(shape=(n, draw(st.integers(1, 3)), draw(st.integers(0, 9)), draw(st.integers(0, 9))),
                dtype=draw(st.sampled_from(DTYPES)), channels_last=draw(st.booleans()),
                op=draw(st.sampled_from(["cutmix", "mixup", "cutmix_or_mixup", "CutMixUp"])),
                alpha=draw(st.one_of(st.sampled_from([0.2, 1.0]), st.floats(0.05, 5.0))),
                per_sample=draw(st.booleans()), partner=draw(st.sampled_from(["flip", "roll"])),
                correct_lam=draw(st.booleans()), prob=draw(st.sampled_from([0.0, 0.5, 1.0])),
                switch_prob=draw(st.sampled_from([0.0, 0.5, 1.0])), normalize=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


def call_sampler(case, x, target, backend, normalize=False):
    norm = dict(mean=[0.5 * (k + 1) for k in range(x.shape[1])], std=[2.0 + k for k in range(x.shape[1])],
                out_dtype=torch.bfloat16) if normalize else {}
    common = dict(partner=case["partner"], **norm)
    torch.manual_seed(case["seed"])
    if case["op"] == "cutmix":
        return rk.cutmix(x, target, alpha=case["alpha"], per_sample=case["per_sample"],
                         correct_lam=case["correct_lam"], backend=backend, **common)
    if case["op"] == "mixup":
        return rk.mixup(x, target, alpha=case["alpha"], per_sample=case["per_sample"], backend=backend, **common)
    kwargs = dict(mixup_alpha=case["alpha"], cutmix_alpha=1.0, prob=case["prob"], switch_prob=case["switch_prob"],
                  per_sample=case["per_sample"], correct_lam=case["correct_lam"])
    if case["op"] == "cutmix_or_mixup":
        return rk.cutmix_or_mixup(x, target, backend=backend, **kwargs, **common)
    module = rk.nn.CutMixUp(**kwargs, **common)
    if backend != "torch":  # the module has no backend argument: compare it with the function it wraps
        return rk.cutmix_or_mixup(x, target, backend=backend, **kwargs, **common)
    return module(x, target)


def sampler_case(**kw):
    case = dict(shape=(4, 3, 0, 5), dtype=torch.float32, channels_last=False, op="cutmix", alpha=1.0,
                per_sample=True, partner="flip", correct_lam=True, prob=1.0, switch_prob=0.5, normalize=False, seed=0)
    case.update(kw)
    return case


@SETTINGS
@given(case=sampler_cases())
@example(case=sampler_case())  # an empty image: lam = 1, not inf
@example(case=sampler_case(shape=(3, 2, 6, 0), op="cutmix_or_mixup", per_sample=False, switch_prob=1.0))
@example(case=sampler_case(shape=(5, 1, 7, 9), dtype=torch.uint8, channels_last=True, op="CutMixUp", prob=0.5,
                           normalize=True))
def test_public_samplers_invariants(case):
    n, c, h, w = case["shape"]
    dtype = case["dtype"]
    x = labelled_images(case["shape"], dtype, case["seed"])
    if case["channels_last"]:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    target = torch.arange(n, device=DEVICE) * 3 + 1
    out, mixed = call_sampler(case, x, target, "torch")

    # Shapes, dtypes, layout and the MixedTarget.
    assert out.shape == x.shape and out.dtype == dtype
    if case["channels_last"] and not x.is_contiguous():
        assert out.is_contiguous(memory_format=CHANNELS_LAST)
    index = partner_index(n, case["partner"])
    assert torch.equal(mixed.y_a, target) and torch.equal(mixed.y_b, target[index])
    assert mixed.lam.shape == ((n,) if case["per_sample"] else ())
    lam = mixed.per_sample_lam()
    assert bool(((lam >= 0) & (lam <= 1)).all()), lam

    # Per sample: the output is MixUp's formula with its lam, or CutMix's rectangle with lam = kept area.
    cutmix_ok = case["op"] != "mixup"
    mixup_ok = case["op"] == "mixup" or (case["op"] != "cutmix" and case["prob"] > 0 and case["switch_prob"] < 1)
    for i in range(n):
        own, other = x[i], x[index[i]]
        if h * w == 0:  # an empty image: CutMix pastes nothing, so its kept fraction is 1
            assert lam[i].item() == 1.0 or not (case["op"] == "cutmix" and case["correct_lam"])
            continue
        is_mixup = mixup_ok and torch.equal(out[i], mixup_formula(own, other, lam[i], dtype))
        area = cutmix_area(out[i], own, other) if cutmix_ok else None
        if index[i] == i:  # its own partner: CutMix changes nothing visible
            assert is_mixup or torch.equal(out[i], own)
            continue
        if not is_mixup:
            assert area is not None, f"sample {i} is neither MixUp nor one CutMix rectangle"
            if case["correct_lam"] or lam[i].item() == 1.0:
                assert lam[i].item() == 1.0 - area / (h * w) or abs(lam[i].item() - (1.0 - area / (h * w))) < 1e-6
            else:  # the paper's box: each side at most sqrt(1 - lam) of the image's
                assert area <= (1 - lam[i].item()) * h * w + 1e-3
    if case["prob"] == 0.0 and case["op"] in ("cutmix_or_mixup", "CutMixUp"):
        assert torch.equal(out, x) and bool((lam == 1).all())

    # Reproducible under manual_seed, and bit-identical on every backend.
    again, again_mixed = call_sampler(case, x, target, "torch")
    assert torch.equal(again, out) and torch.equal(again_mixed.lam, mixed.lam)
    for backend in BACKENDS[1:]:
        other_out, other_mixed = call_sampler(case, x, target, backend)
        assert torch.equal(other_out, out), backend
        assert torch.equal(other_mixed.lam, mixed.lam), backend

    # Fused normalization equals mixing, then normalizing (v rounded to x's dtype first).
    if case["normalize"]:
        fused, fused_mixed = call_sampler(case, x, target, BACKENDS[-1], normalize=True)
        mean = torch.tensor([0.5 * (k + 1) for k in range(c)], device=DEVICE).reshape(1, c, 1, 1)
        std = torch.tensor([2.0 + k for k in range(c)], device=DEVICE).reshape(1, c, 1, 1)
        assert fused.dtype == torch.bfloat16 and torch.equal(fused, ((out.float() - mean) / std).to(torch.bfloat16))
        assert torch.equal(fused_mixed.lam, mixed.lam)


def test_cutmixup_module_in_eval_keeps_the_batch():
    x = labelled_images((3, 2, 5, 4), torch.uint8, 0)
    target = torch.arange(3, device=DEVICE)
    for per_sample in (True, False):
        module = rk.nn.CutMixUp(per_sample=per_sample, mean=(1.0, 2.0), std=(3.0, 4.0)).eval()
        out, mixed = module(x, target)
        mean = torch.tensor([1.0, 2.0], device=DEVICE).reshape(1, 2, 1, 1)
        std = torch.tensor([3.0, 4.0], device=DEVICE).reshape(1, 2, 1, 1)
        assert torch.equal(out, (x.float() - mean) / std) and bool((mixed.per_sample_lam() == 1).all())


@st.composite
def erasing_cases(draw):
    n, c = draw(st.integers(0, 5)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    scale_low = draw(st.floats(0.01, 0.6))
    ratio_low = draw(st.floats(0.2, 2.0))
    if dtype == torch.uint8:  # fills that round or saturate to values no pixel has: 0, 251, 255
        value = draw(st.one_of(st.sampled_from([-7.0, 250.6, 300.0]), st.lists(st.sampled_from([-7.0, 250.6, 300.0]),
                                                                             min_size=c, max_size=c)))
    else:
        value = draw(st.one_of(st.sampled_from([-7.25, 0.0, "random"]), st.lists(st.sampled_from([-7.25, 0.5, 1e4]),
                                                                                min_size=c, max_size=c)))
    return dict(shape=(n, c, draw(st.integers(0, 9)), draw(st.integers(0, 9))), dtype=dtype,
                channels_last=draw(st.booleans()), p=draw(st.sampled_from([0.0, 0.5, 1.0])),
                scale=(scale_low, draw(st.floats(scale_low, 1.0))), ratio=(ratio_low, draw(st.floats(ratio_low, 5.0))),
                value=value, seed=draw(st.integers(0, 2**31)))


@SETTINGS
@given(case=erasing_cases())
def test_random_erasing_invariants(case):
    n, c, h, w = case["shape"]
    dtype, value = case["dtype"], case["value"]
    x = labelled_images(case["shape"], dtype, case["seed"])
    if case["channels_last"]:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    kwargs = dict(p=case["p"], scale=case["scale"], ratio=case["ratio"], value=value)
    outputs = []
    for backend in BACKENDS:
        torch.manual_seed(case["seed"])
        outputs.append(rk.random_erasing(x, backend=backend, **kwargs))
    out = outputs[0]
    assert out.shape == x.shape and out.dtype == dtype
    for other in outputs[1:]:  # fixed fills bit for bit; normal noise up to an ulp of log/cos
        if value == "random":
            torch.testing.assert_close(other.float(), out.float(), rtol=2e-5 if dtype == torch.float32 else 8e-3,
                                       atol=1e-5)
        else:
            assert torch.equal(other, out)
    torch.manual_seed(case["seed"])
    assert torch.equal(rk.random_erasing(x, backend="torch", **kwargs), out)
    if value == "random":
        fill = None
    else:
        fill = torch.tensor(value, dtype=torch.float32, device=DEVICE).expand(c).reshape(c, 1)
        fill = reference._round_to_dtype(fill, dtype).to(dtype)
    erased = 0
    for i in range(n):
        changed = (out[i] != x[i]).any(0)
        box = rectangle(changed)
        assert box is not None, f"sample {i}: the erased pixels are not one rectangle"
        if box == ():
            continue
        erased += 1
        x0, y0, x1, y1 = box
        bh, bw = y1 - y0, x1 - x0
        assert bh < h and bw < w  # torchvision's rule: the box must fit strictly
        if fill is not None:
            assert bool((out[i][:, changed] == fill).all())
        area_low, area_high = case["scale"][0] * h * w, case["scale"][1] * h * w
        assert area_low - (bh + bw + 1) / 2 <= bh * bw <= area_high + (bh + bw + 1) / 2 + 0.25
    if case["p"] == 0.0:
        assert erased == 0 and torch.equal(out, x)


@settings(SETTINGS, max_examples=15)
@given(n=st.integers(1, 6), alpha=st.floats(0.05, 5.0), seed=st.integers(0, 2**31), correct_lam=st.booleans())
def test_samplers_are_deterministic_and_generator_driven(n, alpha, seed, correct_lam):
    x = labelled_images((n, 1, 6, 5), torch.float32, seed)
    target = torch.arange(n, device=DEVICE)
    generator = torch.Generator(device=DEVICE)
    results = []
    for _ in range(2):
        generator.manual_seed(seed)
        results.append((rk.cutmix(x, target, alpha=alpha, per_sample=True, correct_lam=correct_lam,
                                  generator=generator, backend="torch"),
                        rk.mixup(x, target, alpha=alpha, per_sample=True, generator=generator, backend="torch"),
                        rk.cutmix_or_mixup(x, target, mixup_alpha=alpha, generator=generator, backend="torch"),
                        rk.random_erasing(x, p=1.0, value="random", generator=generator, backend="torch")))
    for first, second in zip(*results):
        if isinstance(first, tuple):
            assert torch.equal(first[0], second[0]) and torch.equal(first[1].lam, second[1].lam)
        else:
            assert torch.equal(first, second)
    # The generator, not the global RNG, drives the draws.
    torch.manual_seed(seed + 1)
    generator.manual_seed(seed)
    cut, mixed = rk.cutmix(x, target, alpha=alpha, per_sample=True, correct_lam=correct_lam, generator=generator,
                           backend="torch")
    assert torch.equal(cut, results[0][0][0]) and torch.equal(mixed.lam, results[0][0][1].lam)


@settings(SETTINGS, max_examples=25)
@given(shape=st.tuples(st.integers(0, 5), st.integers(1, 3), st.integers(0, 9), st.integers(0, 9)),
       dtype=st.sampled_from(DTYPES), channels_last=st.booleans(), alpha=st.floats(0.05, 5.0),
       seed=st.integers(0, 2**31))
def test_inplace_cutmix_equals_out_of_place(shape, dtype, channels_last, alpha, seed):
    # In place swaps the box of each flip pair and touches nothing else: the same pixels as out of place.
    x = labelled_images(shape, dtype, seed)
    if channels_last:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    target = torch.arange(shape[0], device=DEVICE)
    torch.manual_seed(seed)
    expected, expected_target = rk.cutmix(x, target, alpha=alpha, backend="torch")
    for backend in BACKENDS:
        inplace = x.clone()
        torch.manual_seed(seed)
        out, mixed = rk.cutmix(inplace, target, alpha=alpha, inplace=True, backend=backend)
        assert out is inplace and torch.equal(out, expected), backend
        assert torch.equal(mixed.lam, expected_target.lam) and 0.0 <= mixed.lam.item() <= 1.0, backend
