"""Property-based tests (hypothesis): the EMA family against its float64 formula, on every
backend, across random lists of tensor pairs (counts, sizes around the chunk size, every dtype
pair, odd layouts), decays (floats and 0-d tensors, 0 and 1 among them) and ModelEMA schedules.
The backends must also agree bit for bit, as the README promises."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recipe_kernels as rk
from recipe_kernels import _backend, reference
from recipe_kernels.ema import CHUNK, ema_scheduled_update_op
from recipe_kernels.model_ema import NUM_UPDATES_KEY

from conftest import BACKENDS, DEVICE

pytestmark = pytest.mark.filterwarnings("ignore:an EMA held in bfloat16 or float16")

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Relative size of one rounding to the EMA's dtype (an fp64 EMA holds the fp32 result exactly).
ROUNDING = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float64: 0.0}
FP32_EPS = 2.0**-24

# 1-D sizes: small ones (0, 1, odd) and the edges of a Triton block (4096) and of a chunk.
sizes_1d = st.one_of(st.integers(0, 40), st.sampled_from([127, 129, 4095, 4097, CHUNK - 1, CHUNK + 1]))
shapes = st.one_of(sizes_1d.map(lambda n: (n,)), st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple))
dtypes = st.sampled_from(DTYPES)
# EMA tensors are updated in place, so they are dense; model tensors may be any view.
ema_layouts = st.sampled_from(["contiguous", "transposed", "channels_last"])
model_layouts = st.sampled_from(["contiguous", "transposed", "channels_last", "strided", "expanded"])
pairs = st.lists(st.tuples(shapes, dtypes, dtypes, ema_layouts, model_layouts), min_size=1, max_size=4)
decays = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.999]), st.floats(0.0, 1.0))
decay_kinds = st.sampled_from(["float", "tensor float32", "tensor float64"])


def make(shape, dtype, layout, generator, specials=False):
    """A tensor of `shape` in `layout` (its logical values do not depend on the layout); with
    specials, its first values in memory are NaN, inf and -inf."""
    if layout == "transposed" and len(shape) >= 2:
        base_shape = shape[::-1]
    elif layout == "strided":
        base_shape = shape + (2,)
    elif layout == "expanded" and len(shape) >= 1:
        base_shape = (1,) + shape[1:]
    else:
        base_shape = shape
    values = torch.randn(base_shape, generator=generator, dtype=torch.float64)
    if specials:
        values.view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)[:values.numel()]
    values = values.to(DEVICE, dtype)
    if layout == "transposed" and len(shape) >= 2:
        return values.permute(*reversed(range(len(shape))))
    if layout == "channels_last" and len(shape) == 4:
        return values.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return values[..., 1]
    if layout == "expanded" and len(shape) >= 1:
        return values.expand(shape)
    return values


def fp32(value):
    """value rounded to fp32, as every backend receives a decay."""
    return float(torch.tensor(value, dtype=torch.float32))


def check_against_formula(actual, ema_before, param, decay):
    """actual == d*e + (1-d)*p up to the fp32 math and one rounding to e's dtype; d == 1 keeps e
    bit for bit and d == 0 stores p (through fp32); non-finite values where the formula has them."""
    if decay == 1.0:
        assert torch.equal(actual.reshape(-1).view(torch.uint8), ema_before.reshape(-1).view(torch.uint8)), "d = 1"
        return
    e, p = ema_before.double(), param.double()
    expected = reference.ema_blend(e, p, decay, math_dtype=torch.float64)
    finite = expected.isfinite()
    assert torch.equal(actual.isnan(), expected.isnan()) and torch.equal(actual.isinf(), expected.isinf())
    assert torch.equal(actual[~finite & ~actual.isnan()], expected[~finite & ~expected.isnan()].to(actual.dtype))
    scale = (decay * e).abs() + ((1 - decay) * p).abs()
    tolerance = ROUNDING[actual.dtype] * expected.abs() + 8 * FP32_EPS * scale + 1e-7
    error = (actual.double() - expected).abs()
    assert bool((error[finite] <= tolerance[finite]).all()), float((error - tolerance)[finite].max())


@SETTINGS
@given(specs=pairs, decay=decays, decay_kind=decay_kinds, specials=st.booleans(), seed=st.integers(0, 2**31))
def test_ema_update_matches_formula_and_backends_agree_bit_for_bit(specs, decay, decay_kind, specials, seed):
    generator = torch.Generator().manual_seed(seed)
    ema, params = [], []
    for shape, ema_dtype, model_dtype, ema_layout, model_layout in specs:
        ema.append(make(shape, ema_dtype, ema_layout, generator))
        params.append(make(shape, model_dtype, model_layout, generator, specials))  # NaN and inf propagate
    results = []
    for backend in BACKENDS:
        copies = [e.clone() for e in ema]  # clone keeps the (dense) strides
        value = decay if decay_kind == "float" else torch.tensor(decay, device=DEVICE,
                                                                 dtype=getattr(torch, decay_kind.split()[1]))
        rk.ema_update_(copies, params, value, backend=backend)
        assert all(c.stride() == e.stride() and c.dtype == e.dtype for c, e in zip(copies, ema)), "updated in place"
        results.append(copies)
    given = fp32(decay) if decay_kind == "tensor float32" else decay  # the decays travel as fp64
    for actual, e, p in zip(results[0], ema, params):
        # fp32 math rounds the decay to fp32; fp64 math (a pair with an fp64 side) takes it as it is.
        math_decay = given if reference.ema_math_dtype(e.dtype, p.dtype) == torch.float64 else fp32(given)
        check_against_formula(actual, e, p, math_decay)
    for backend, result in zip(BACKENDS[1:], results[1:]):
        for a, b in zip(result, results[0]):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), backend


class TinyNet(torch.nn.Module):
    """A 1x1 convolution (4-D weights, so channels_last applies), BatchNorm (floating buffers and an
    int64 counter) and a Linear of odd sizes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.norm = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


def tiny_model(dtype, channels_last):
    torch.manual_seed(0)
    model = TinyNet().to(DEVICE, dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@torch.no_grad()
def train_step(model, step):
    """Moves every parameter and buffer, as an optimizer step and a forward in train mode would."""
    generator = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * 0.1)
    model.train()
    model(torch.randn(4, 2, 3, 3, generator=generator).to(DEVICE, next(model.parameters()).dtype))


def simulate(model, steps, buffers, ema_dtype, schedule):
    """The float64 oracle of ModelEMA's state dict after `steps` updates (fp32-rounded decays)."""
    cast = (lambda v: v.to(ema_dtype)) if ema_dtype is not None else (lambda v: v)
    ema = {k: cast(v).double() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    params = {name for name, _ in model.named_parameters()}
    for t in range(1, steps + 1):
        train_step(model, t)
        average, copy_decay = (fp32(d) for d in reference.ema_decays(t, **schedule))
        for name, value in model.state_dict().items():
            if name not in params and buffers == "ignore":
                continue
            if not value.is_floating_point():
                ema[name] = value.clone() if copy_decay == 0 else ema[name]
                continue
            decay = average if name in params or buffers == "average" else copy_decay
            ema[name] = reference.ema_blend(ema[name], value.double(), decay, math_dtype=torch.float64)
    return ema


schedules = st.fixed_dictionaries(dict(
    decay=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0]), warmup=st.booleans(), warmup_gamma=st.floats(0.5, 10.0),
    warmup_power=st.floats(0.3, 1.0), min_decay=st.sampled_from([0.0, 0.3]), update_after_step=st.integers(0, 3),
    update_every=st.integers(1, 3)))


@settings(SETTINGS, max_examples=40)
@given(schedule=schedules, buffers=st.sampled_from(["average", "copy", "ignore"]),
       model_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       ema_dtype=st.sampled_from([None, torch.float32, torch.bfloat16, torch.float64]),
       channels_last=st.booleans(), steps=st.integers(1, 5))
def test_model_ema_schedule_matches_oracle_and_backends_agree(schedule, buffers, model_dtype, ema_dtype,
                                                               channels_last, steps):
    states = []
    for backend in BACKENDS:
        model = tiny_model(model_dtype, channels_last)
        ema = rk.ModelEMA(model, buffers=buffers, ema_dtype=ema_dtype, backend=backend, **schedule)
        for t in range(1, steps + 1):
            train_step(model, t)
            ema.update(model)
        states.append(ema.state_dict())
    state = dict(states[0])
    assert state.pop(NUM_UPDATES_KEY).item() == steps
    expected = simulate(tiny_model(model_dtype, channels_last), steps, buffers, ema_dtype, schedule)
    assert state.keys() == expected.keys()
    held = ema_dtype or model_dtype
    for name, value in state.items():
        if not value.is_floating_point():
            assert torch.equal(value, expected[name]), name
            continue
        assert value.dtype == held, name
        # One rounding to the EMA's dtype per update, plus fp32 math (and fp32-rounded decays).
        tolerance = steps * (ROUNDING[held] + 8 * FP32_EPS) * (expected[name].abs() + 1)
        assert bool(((value.double() - expected[name]).abs() <= tolerance).all()), name
    for backend, other in zip(BACKENDS[1:], states[1:]):
        for name, value in states[0].items():
            assert torch.equal(value, other[name]), (backend, name)


# ----------------------------------------------------------------------------- the CUDA code's arithmetic, on the CPU

needs_extension = pytest.mark.skipif(_backend._C is None, reason="CUDA extension not built")


@needs_extension
@SETTINGS
@given(n=st.integers(0, 300), decay=decays, specials=st.booleans(), seed=st.integers(0, 2**31))
def test_cuda_blend_host_code_equals_torch_backend(n, decay, specials, seed):
    # csrc/ema.cu's ema_blend (a __host__ __device__ function) against the fp32 reference, bit for bit.
    generator = torch.Generator().manual_seed(seed)
    e = make((n,), torch.float32, "contiguous", generator).cpu()
    p = make((n,), torch.float32, "contiguous", generator, specials).cpu()
    host = torch.from_numpy(_backend._C.ema_blend_host(e.numpy(), p.numpy(), decay))
    expected = reference.ema_blend(e, p, torch.tensor(decay, dtype=torch.float32))
    assert torch.equal(host.isnan(), expected.isnan()) and torch.equal(host.nan_to_num(), expected.nan_to_num())


@needs_extension
@SETTINGS
@given(schedule=schedules, t=st.integers(1, 10**6))
def test_cuda_schedule_host_code_equals_torch_backend(schedule, t):
    # csrc/ema.cu's ema_decays against the torch backend's schedule (both fp64).
    num_updates = torch.tensor(t - 1, dtype=torch.int64)
    decays = torch.zeros(2, dtype=torch.float64)
    ema_scheduled_update_op([], [], [], num_updates, torch.zeros((), dtype=torch.int32), decays, schedule["decay"],
                            schedule["warmup"], schedule["warmup_gamma"], schedule["warmup_power"],
                            schedule["min_decay"], schedule["update_after_step"], schedule["update_every"], "torch")
    host = _backend._C.ema_decays_host(t, schedule["decay"], schedule["warmup"], schedule["warmup_gamma"],
                                       schedule["warmup_power"], schedule["min_decay"], schedule["update_after_step"],
                                       schedule["update_every"])
    assert list(host) == decays.tolist()
    assert decays.tolist() == pytest.approx(reference.ema_decays(t, **schedule), rel=1e-12, abs=0)
