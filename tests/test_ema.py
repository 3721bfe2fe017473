"""ema_update_ and ModelEMA: against the float64 oracle, across backends, schedule, resume, registration."""
import sys
import copy
import os
import warnings

import numpy as np
import pytest
import torch

import recipe_kernels as rk
from recipe_kernels import _backend, ema as ema_module, reference
from recipe_kernels.ema import CHUNK, ema_scheduled_update_op, ema_update_op
from recipe_kernels.model_ema import NUM_UPDATES_KEY

from conftest import BACKENDS, DEVICE

# (ema dtype, model dtype): plain fp32, the common bf16 model with an fp32 EMA, and the other mixes.
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
               (torch.float16, torch.float32), (torch.float64, torch.float16)]
# One rounding to e's dtype after fp32 math (fp64 EMAs still have fp32 math).
TOLERANCE = {torch.float32: dict(rtol=2e-6, atol=2e-6), torch.float64: dict(rtol=2e-6, atol=2e-6),
             torch.float16: dict(rtol=1e-3, atol=1e-3), torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}
# 1, 3: below a vector; 127, 129: around a power of two; 4097: a partial Triton block;
# CHUNK + 1 and 65537: a chunk boundary plus one element (a one-element chunk).
AWKWARD_SIZES = [1, 3, 127, 129, 4097, CHUNK + 1, 65537]


def sample_pairs(sizes=AWKWARD_SIZES, ema_dtype=torch.float32, model_dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ema = [torch.randn(n, generator=generator).to(DEVICE, ema_dtype) for n in sizes]
    params = [torch.randn(n, generator=generator).to(DEVICE, model_dtype) for n in sizes]
    return ema, params


def fp32(value):
    """value rounded to fp32, as the kernels receive a decay."""
    return float(torch.tensor(value, dtype=torch.float32))


def oracle(ema, params, decay):
    return [reference.ema_blend(e.double(), p.double(), fp32(decay), math_dtype=torch.float64)
            for e, p in zip(ema, params)]


# ----------------------------------------------------------------------------- ema_update_


@pytest.mark.parametrize("ema_dtype,model_dtype", DTYPE_PAIRS)
def test_ema_update_matches_float64_oracle(backend, ema_dtype, model_dtype):
    ema, params = sample_pairs(ema_dtype=ema_dtype, model_dtype=model_dtype)
    expected = oracle(ema, params, 0.9)
    rk.ema_update_(ema, params, 0.9, backend=backend)
    for e, want in zip(ema, expected):
        assert e.dtype == ema_dtype
        torch.testing.assert_close(e.double(), want, **TOLERANCE[ema_dtype])


def test_backends_bit_identical_on_mixed_lists():
    # One list mixing every dtype pair: still one launch, still bit-equal to the fp32 reference.
    pairs = [sample_pairs([n], e, m, seed=n) for n, (e, m) in zip(AWKWARD_SIZES, DTYPE_PAIRS * 2)]
    results = []
    for backend in BACKENDS:
        ema = [e[0].clone() for e, _ in pairs]
        rk.ema_update_(ema, [p[0] for _, p in pairs], 0.75, backend=backend)
        results.append(ema)
    for backend, result in zip(BACKENDS[1:], results[1:]):
        assert all(torch.equal(a, b) for a, b in zip(result, results[0])), backend


def test_many_tensors_in_one_launch(backend, monkeypatch):
    # 300 tensors of awkward sizes (every fifth one bf16) in one call, one launch.
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.choice([1, 2, 3, 5, 7, 127, 129, 255, 257, 1000, 1023], size=300)]
    ema, params = sample_pairs(sizes)
    params = [p.bfloat16() if i % 5 == 0 else p for i, p in enumerate(params)]
    expected = oracle(ema, params, 0.99)
    launches = count_launches(monkeypatch)
    rk.ema_update_(ema, params, 0.99, backend=backend)
    for e, want in zip(ema, expected):
        torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])
    if backend != "torch":
        assert launches == {"update": 1}


def test_decay_one_keeps_and_zero_copies_exactly(backend):
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-30, 3.0])
    ema = [special.clone().to(DEVICE), torch.randn(37, device=DEVICE).bfloat16()]
    params = [special.flip(0).to(DEVICE), torch.randn(37, device=DEVICE)]
    before = [e.clone() for e in ema]
    rk.ema_update_(ema, params, 1.0, backend=backend)
    assert all(torch.equal(e.view(torch.int16 if e.dtype == torch.bfloat16 else torch.int32),
                           b.view(torch.int16 if b.dtype == torch.bfloat16 else torch.int32))
               for e, b in zip(ema, before))
    rk.ema_update_(ema, params, 0.0, backend=backend)
    assert torch.equal(ema[0].nan_to_num(), params[0].nan_to_num()) and ema[0].isnan()[3]
    assert torch.equal(ema[1], params[1].bfloat16())


def test_decay_as_device_tensor_equals_float(backend):
    ema, params = sample_pairs([1000, 5])
    ema_tensor_decay = [e.clone() for e in ema]
    rk.ema_update_(ema, params, 0.875, backend=backend)
    rk.ema_update_(ema_tensor_decay, params, torch.tensor(0.875, device=DEVICE), backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(ema, ema_tensor_decay))
    rk.ema_update_(ema_tensor_decay, params, torch.tensor(0.5, device=DEVICE, dtype=torch.float64), backend=backend)
    torch.testing.assert_close(ema_tensor_decay[1], 0.5 * ema[1] + 0.5 * params[1])


def test_non_contiguous_model_tensor_and_channels_last_pairs(backend):
    ema = [torch.randn(6, 5, device=DEVICE), torch.randn(2, 3, 4, 5, device=DEVICE)]
    params = [torch.randn(5, 6, device=DEVICE).t(), torch.randn(2, 3, 4, 5, device=DEVICE)]
    ema[1] = ema[1].contiguous(memory_format=torch.channels_last)
    params[1] = params[1].contiguous(memory_format=torch.channels_last)
    expected = oracle(ema, params, 0.5)
    rk.ema_update_(ema, params, 0.5, backend=backend)
    for e, want in zip(ema, expected):
        torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])
    assert ema[1].is_contiguous(memory_format=torch.channels_last)


def test_empty_lists_and_empty_tensors(backend):
    rk.ema_update_([], [], 0.5, backend=backend)
    ema, params = [torch.empty(0, device=DEVICE), torch.ones(3, device=DEVICE)], [torch.empty(0, device=DEVICE),
                                                                                    torch.zeros(3, device=DEVICE)]
    rk.ema_update_(ema, params, 0.5, backend=backend)
    assert torch.equal(ema[1], torch.full((3,), 0.5, device=DEVICE))


# ----------------------------------------------------------------------------- the chunk table


def count_launches(monkeypatch):
    """Counts Triton launches of the EMA kernels into the returned dict."""
    launches = {}
    for name, kernel_name in (("update", "_ema_update_kernel"),):
        kernel = getattr(ema_module, kernel_name)

        class Counting:
            def __getitem__(self, grid, kernel=kernel, name=name):
                launches[name] = launches.get(name, 0) + 1
                return kernel[grid]

        monkeypatch.setattr(ema_module, kernel_name, Counting())
    return launches


def test_table_rows_cover_every_element_once():
    ema, params = sample_pairs([1, CHUNK, CHUNK + 1, 3 * CHUNK - 1], model_dtype=torch.bfloat16)
    table = ema_module.build_chunk_table(ema, params, [0] * 4)
    rows = table.rows
    assert rows.shape == (1 + 1 + 2 + 3, 4) and table.alignment == ema_module.ROWS_ALIGNED
    assert table.kinds == 1 << ema_module.kind_bit(0, 2)  # one kind: fp32 EMA of a bf16 model
    counts = rows[:, 2].tolist()
    assert counts == [1, CHUNK, CHUNK, 1, CHUNK, CHUNK, CHUNK - 1]
    # Chunk k of a pair starts k * CHUNK elements in: 4 bytes per fp32 EMA element, 2 per bf16 one.
    assert rows[3, 0].item() == ema[2].data_ptr() + CHUNK * 4
    assert rows[3, 1].item() == params[2].data_ptr() + CHUNK * 2
    assert (rows[:, 3] == (0 | 2 << ema_module.PARAM_CODE_SHIFT | 1 << ema_module.ROW_ALIGNED_SHIFT)).all()


def test_rows_carry_their_own_alignment(every_backend):
    # One unaligned pair does not turn every row's vector accesses off: each row has its flag,
    # and the table says it mixes both, so the kernel reads the flags.
    ema, params = sample_pairs([CHUNK + 3, 129, 5])
    storage = torch.randn(130, device=DEVICE)
    params[1] = storage[1:]  # 4 bytes in: unaligned
    ema.append(torch.zeros(3, dtype=torch.int32, device=DEVICE))  # a byte copy: no alignment of its own
    params.append(torch.arange(3, dtype=torch.int32, device=DEVICE))
    table = ema_module.build_chunk_table(ema, params, [0] * 4)
    flags = ((table.rows[:, 3] >> ema_module.ROW_ALIGNED_SHIFT) & 1).tolist()
    assert flags[:4] == [1, 1, 0, 1] and table.alignment == ema_module.ROWS_MIXED
    assert table.kinds == 1 << ema_module.kind_bit(0, 0) | 1 << ema_module.RAW_KIND_BIT
    expected = oracle(ema[:3], params[:3], 0.25)
    ema_module.ema_update_op(ema, params, torch.tensor([0.25], dtype=torch.float64, device=DEVICE), [0] * 4,
                             every_backend)
    for e, want in zip(ema, expected):
        torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])
    assert torch.equal(ema[3], params[3])
    assert ema_module.build_chunk_table(ema[2:], params[2:], [0] * 2).alignment == ema_module.ROWS_ALIGNED


def test_table_cached_and_rebuilt_when_tensors_move(backend):
    ema, params = sample_pairs([100, 7])
    first = ema_module.chunk_table(ema, params, [0, 0]).rows
    assert ema_module.chunk_table(ema, params, [0, 0]).rows is first
    # A re-allocated tensor (as model.to() or .data = ... do) gets a new table, never a stale one.
    params[0].data = params[0].data.clone().mul_(2)
    ema[1].data = ema[1].data.double()
    assert ema_module.chunk_table(ema, params, [0, 0]).rows is not first
    expected = oracle(ema, params, 0.5)
    rk.ema_update_(ema, params, 0.5, backend=backend)
    for e, want in zip(ema, expected):
        torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])


@pytest.mark.skipif(_backend._C is None, reason="CUDA extension not built")
def test_cuda_blend_host_code_equals_reference():
    e, p = torch.randn(5000), torch.randn(5000)
    e[:4] = torch.tensor([float("inf"), float("nan"), 0.0, 1e38])
    for decay in (0.0, 0.3, 0.9999, 1.0):
        host = torch.from_numpy(_backend._C.ema_blend_host(e.numpy(), p.numpy(), decay))
        expected = reference.ema_blend(e, p, torch.tensor(decay, dtype=torch.float32))
        assert torch.equal(host.nan_to_num(), expected.nan_to_num()) and torch.equal(host.isnan(), expected.isnan())


# ----------------------------------------------------------------------------- the table is never stale


class HostLaunchers:
    """_C with its GPU launchers replaced by their *_host entry points (same argument names): the
    cuda backend's whole host path (pairs, tables, caches, launch arguments) then runs the CUDA
    kernels' own code on CPU tensors."""

    def __init__(self, extension):
        self.extension = extension

    def ema_update(self, table, num_chunks, decays, chunk, threads, stream):
        self.extension.ema_update_host(table, num_chunks, decays, chunk, threads)

    def ema_scheduled_update(self, stream, **arguments):
        self.extension.ema_scheduled_update_host(**arguments)


# The backends of the tests, plus "cuda" through the host entry points where there is no GPU.
EVERY_BACKEND = BACKENDS + (["cuda"] if DEVICE.type == "cpu" and _backend._C is not None else [])


@pytest.fixture(params=EVERY_BACKEND)
def every_backend(request, monkeypatch):
    if request.param == "cuda" and DEVICE.type == "cpu":
        monkeypatch.setattr(_backend, "_C", HostLaunchers(_backend._C))
        monkeypatch.setattr(_backend, "launch_cuda", lambda launcher, device, **arguments: launcher(**arguments, stream=0))
        why_unavailable = _backend.why_unavailable
        monkeypatch.setattr(_backend, "why_unavailable",
                            lambda backend, device: None if backend == "cuda" else why_unavailable(backend, device))
    return request.param


def linear_and_ema(backend, model_dtype=torch.bfloat16, ema_dtype=torch.float32):
    """An 8 x 8 bias-free Linear (square, so a transposed weight keeps its shape) and its EMA, updated once."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8, bias=False).to(DEVICE, model_dtype)
    ema = rk.ModelEMA(model, decay=0.5, ema_dtype=ema_dtype, backend=backend)
    ema.update(model)
    return model, ema


def refill(tensor, seed):
    """New values in place (the tensor keeps its address, dtype and layout)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float64))


def check_update(ema, model):
    """ema.update(model) equals the float64 formula on the tensors' current logical values."""
    e_before, p = ema.module.weight.detach().double().clone(), model.weight.detach().double()
    ema.update(model)
    torch.testing.assert_close(ema.module.weight.detach().double(), 0.5 * e_before + 0.5 * p,
                               **TOLERANCE[ema.module.weight.dtype])


def test_model_dtype_view_at_the_same_address(every_backend):
    model, ema = linear_and_ema(every_backend)
    address = model.weight.data_ptr()
    model.weight.data = model.weight.data.view(torch.float16)  # bf16 bits reread as fp16: a new dtype, same block
    refill(model.weight, 1)
    assert model.weight.data_ptr() == address
    check_update(ema, model)


def test_ema_dtype_view_at_the_same_address(every_backend):
    model, ema = linear_and_ema(every_backend, model_dtype=torch.float32, ema_dtype=torch.bfloat16)
    address = ema.module.weight.data_ptr()
    ema.module.weight.data = ema.module.weight.data.view(torch.float16)
    refill(ema.module.weight, 2)
    assert ema.module.weight.data_ptr() == address
    check_update(ema, model)


def test_transposed_view_at_the_same_address_raises(every_backend):
    # A ModelEMA walks each pair in memory order; a model tensor whose layout no longer matches its
    # EMA tensor's is refused (as when the pairs are made), never read in the wrong order.
    model, ema = linear_and_ema(every_backend)
    model.weight.data = model.weight.data.t()
    with pytest.raises(ValueError, match="memory layout"):
        ema.update(model)
    model.weight.data = model.weight.data.t()  # back: updates resume
    check_update(ema, model)
    ema.module.weight.data = ema.module.weight.data.t()
    with pytest.raises(ValueError, match="memory layout"):
        ema.update(model)


def test_shape_change_at_the_same_address_raises(every_backend):
    model, ema = linear_and_ema(every_backend)
    model.weight.data = model.weight.data.view(4, 16)
    with pytest.raises(ValueError, match=r"shape \(8, 8\) but model tensor has \(4, 16\)"):
        ema.update(model)


def test_storage_offset_change(every_backend):
    model, ema = linear_and_ema(every_backend)
    storage = torch.zeros(65, dtype=model.weight.dtype, device=DEVICE)
    model.weight.data = storage[1:].view(8, 8)  # one element in: an unaligned address
    refill(model.weight, 3)
    check_update(ema, model)
    model.weight.data = storage[:64].view(8, 8)
    refill(model.weight, 4)
    check_update(ema, model)


def test_dtype_round_trip_of_the_model(every_backend):
    # model.bfloat16(); update; model.float(); model.half(); update: an allocator may hand the same
    # block back at each step.
    model, ema = linear_and_ema(every_backend, model_dtype=torch.float32)
    for convert in (torch.nn.Module.bfloat16, torch.nn.Module.float, torch.nn.Module.half, torch.nn.Module.float):
        convert(model)
        refill(model.weight, 5)
        check_update(ema, model)


def test_ema_update_follows_every_change_of_its_lists(every_backend):
    # The same list objects on every call; their tensors change behind them.
    storage = torch.zeros(65, dtype=torch.bfloat16, device=DEVICE)
    ema, params = [torch.randn(8, 8, device=DEVICE)], [storage[:64].view(8, 8)]
    changes = [lambda: params[0].view(torch.float16),  # dtype view, same address
               lambda: params[0].t(),  # transposed view, same address
               lambda: storage[1:].view(8, 8),  # another storage offset
               lambda: params[0].float(), lambda: params[0].half()]
    for step, change in enumerate(changes):
        params[0] = change()
        refill(params[0], 10 + step)
        expected = oracle(ema, params, 0.5)
        rk.ema_update_(ema, params, 0.5, backend=every_backend)
        torch.testing.assert_close(ema[0].double(), expected[0], **TOLERANCE[torch.float32])
    params[0] = params[0].view(4, 16)
    with pytest.raises(ValueError, match="must match"):
        rk.ema_update_(ema, params, 0.5, backend=every_backend)


def test_reused_lists_follow_changes_of_the_same_tensor_objects(every_backend):
    # The lists and their tensor objects stay the same; what those objects hold changes in place
    # (metadata through .data, a transpose, requires_grad): each call reads it anew.
    ema, params = [torch.randn(8, 8, device=DEVICE), torch.randn(5, device=DEVICE)], \
        [torch.randn(8, 8, device=DEVICE), torch.randn(5, device=DEVICE)]
    changes = [lambda: None,
               lambda: setattr(params[0], "data", params[0].data.clone()),  # another address
               lambda: params[0].t_(),  # same address, transposed strides
               lambda: setattr(ema[1], "data", ema[1].data.double()),  # another dtype
               lambda: params[1].requires_grad_(True),
               lambda: setattr(params[1], "data", torch.zeros(9, device=DEVICE)[2:7])]  # another storage offset
    for step, change in enumerate(changes):
        change()
        refill(params[0], 20 + step)
        expected = oracle(ema, params, 0.5)
        rk.ema_update_(ema, params, 0.5, backend=every_backend)
        for e, want in zip(ema, expected):
            torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])


def test_remembered_lists_keep_no_tensor_alive(backend):
    import gc
    import weakref
    ema, params = sample_pairs([7, 9])
    rk.ema_update_(ema, params, 0.5, backend=backend)
    rk.ema_update_(ema, params, 0.5, backend=backend)
    watched = [weakref.ref(t) for t in ema + params]
    del ema, params
    gc.collect()
    assert all(ref() is None for ref in watched)


def test_model_ema_update_is_one_launch(monkeypatch):
    # The schedule runs inside the update kernel: one launch per update, buffers and all, and the
    # counter advances once however many programs the launch has.
    model = SmallNet().to(DEVICE)  # several tensors: several programs
    ema = rk.ModelEMA(model, decay=0.5, warmup=True, update_every=2, backend="triton")
    launches = count_launches(monkeypatch)
    for t in range(1, 4):
        ema.update(model)
        assert launches == {"update": t} and ema.num_updates.item() == t
        assert ema._programs_done.item() == 0


def test_counter_advances_once_per_update_over_many_programs(every_backend):
    model = torch.nn.Sequential(torch.nn.Linear(64, 3 * CHUNK // 64 + 1), torch.nn.BatchNorm1d(3 * CHUNK // 64 + 1))
    model = model.to(DEVICE)
    ema = rk.ModelEMA(model, decay=0.5, update_after_step=1, update_every=2, backend=every_backend)
    expected = {name: value.double() for name, value in model.state_dict().items() if value.is_floating_point()}
    for t in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update(model)
        assert ema.num_updates.item() == t and ema._programs_done.item() == 0
        assert ema._decays.tolist() == list(reference.ema_decays(t, 0.5, update_after_step=1, update_every=2))
        for name, value in model.state_dict().items():
            if name in expected and t % 2 == 0:
                expected[name] = lerp_float64(expected[name], value, 0.5)
    for name, value in ema.module.state_dict().items():
        if name in expected:
            torch.testing.assert_close(value.double(), expected[name], **TOLERANCE[torch.float32])


# ----------------------------------------------------------------------------- the lerp form


def lerp_weight(decay):
    """torch.lerp's weight for a decay as every backend computes it: 1 - d, rounded to fp32."""
    return float(torch.tensor(1.0) - torch.tensor(decay, dtype=torch.float32))


# Decays whose products w*(p - e) or (1 - w)*(p - e) are exact in fp32 (w or 1 - w a power of
# two): there torch's fused multiply-add cannot differ from the unfused lerp, so bits must match.
EXACT_PRODUCT_DECAYS = [0.5, 0.75, 0.25, 1 - 2**-10, 2**-7]


def test_lerp_equals_foreach_lerp_bit_for_bit_where_products_are_exact(every_backend):
    ema, params = sample_pairs([1, 129, 4097])
    for decay in EXACT_PRODUCT_DECAYS:
        ours, torchs = [e.clone() for e in ema], [e.clone() for e in ema]
        rk.ema_update_(ours, params, decay, backend=every_backend)
        torch._foreach_lerp_(torchs, params, lerp_weight(decay))
        for a, b in zip(ours, torchs):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), decay


def test_lerp_within_torch_fma_rounding_of_foreach_lerp(every_backend):
    # torch's lerp fuses its multiply-add; ours rounds the product first (bit-equal across backends).
    ema, params = sample_pairs([129, 4097])
    for decay in (0.9999, 0.999, 0.6, 0.3, 0.1):
        ours, torchs = [e.clone() for e in ema], [e.clone() for e in ema]
        rk.ema_update_(ours, params, decay, backend=every_backend)
        torch._foreach_lerp_(torchs, params, lerp_weight(decay))
        for a, b, e, p in zip(ours, torchs, ema, params):
            assert bool(((a - b).abs() <= 2.0**-22 * torch.maximum(e.abs(), p.abs())).all()), decay


@pytest.mark.filterwarnings("ignore:an EMA held in bfloat16 or float16")
@pytest.mark.parametrize("ema_dtype,model_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                                   (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
def test_equal_model_and_ema_values_stay_bit_exact(every_backend, ema_dtype, model_dtype):
    # p == e: e + w*(p - e) adds an exact zero, p - (p - e)*(1 - w) subtracts one. d*e + (1-d)*p
    # rounds its two products apart and moves about 0.007% of the elements per update at d = 0.9999.
    generator = torch.Generator().manual_seed(7)
    narrow = min(ema_dtype, model_dtype, key=lambda dtype: torch.finfo(dtype).bits)
    values = (torch.randn(20000, generator=generator) * 10).to(narrow)  # held exactly by both dtypes
    param, ema = values.to(DEVICE, model_dtype), [values.to(DEVICE, ema_dtype).clone()]
    for decay in (0.9999, 0.999, 0.9, 0.7, 0.5, 0.3):
        rk.ema_update_(ema, [param], decay, backend=every_backend)
        assert torch.equal(ema[0], values.to(DEVICE, ema_dtype)), decay


def test_frozen_parameters_stay_bit_exact_over_1000_updates(every_backend):
    # A parameter that never changes, through the copy phase and a warmup whose decay differs at
    # every step. One tensor: each one costs the Triton interpreter about 40 ms per update.
    torch.manual_seed(3)
    model = torch.nn.Linear(16, 16, bias=False).to(DEVICE)
    with torch.no_grad():
        model.weight.copy_(torch.randn(16, 16) * 3)  # full-precision values (uniform inits have few significant bits)
    ema = rk.ModelEMA(model, decay=0.9999, warmup=True, update_after_step=3, backend=every_backend)
    for _ in range(1000):
        ema.update(model)
    assert ema.num_updates.item() == 1000
    assert torch.equal(ema.module.weight, model.weight)


# ----------------------------------------------------------------------------- float64


def lerp_float64(ema, param, decay):
    """torch.lerp's two forms in float64 with w = 1 - decay, written out (the test's own oracle)."""
    e, p, weight = ema.double(), param.double(), 1.0 - decay
    if decay == 0.0:
        return p
    return e + weight * (p - e) if abs(weight) < 0.5 else p - (p - e) * (1.0 - weight)


@pytest.mark.parametrize("decay", [0.9999, 0.999, 0.6, 0.3, 0.0])
def test_float64_pairs_have_float64_math(every_backend, decay):
    # Within an fp64 rounding or two of the float64 formula; fp32 math would be 1e-8 off.
    ema, params = sample_pairs([1, 129, 4097], torch.float64, torch.float64)
    expected = [lerp_float64(e, p, decay) for e, p in zip(ema, params)]
    rk.ema_update_(ema, params, decay, backend=every_backend)
    for e, want in zip(ema, expected):
        assert e.dtype == torch.float64
        torch.testing.assert_close(e, want, rtol=4e-16, atol=4e-16)


def test_float64_pairs_equal_foreach_lerp_where_products_are_exact(every_backend):
    ema, params = sample_pairs([129, 4097], torch.float64, torch.float64)
    for decay in EXACT_PRODUCT_DECAYS:
        ours, torchs = [e.clone() for e in ema], [e.clone() for e in ema]
        rk.ema_update_(ours, params, decay, backend=every_backend)
        torch._foreach_lerp_(torchs, params, 1.0 - decay)
        assert all(torch.equal(a, b) for a, b in zip(ours, torchs)), decay


@pytest.mark.parametrize("ema_dtype,model_dtype", [(torch.float32, torch.float64), (torch.bfloat16, torch.float64),
                                                   (torch.float64, torch.bfloat16), (torch.float64, torch.float32)])
def test_mixed_pairs_with_a_float64_side_have_float64_math(every_backend, ema_dtype, model_dtype):
    # The math is float64; the result is stored as it is in an fp64 EMA, else rounded to fp32 and
    # (for 16-bit EMAs) then to the EMA's dtype, as torch's casts do. A model value of 1e300 averages
    # in fp64 (and rounds to inf in an fp32 EMA) instead of becoming inf first.
    ema, params = sample_pairs([5, 4097], ema_dtype, model_dtype)
    params[0][0] = 1e300 if model_dtype == torch.float64 else params[0][0]
    decay = 0.999
    expected = [lerp_float64(e, p, decay) for e, p in zip(ema, params)]
    rk.ema_update_(ema, params, decay, backend=every_backend)
    for e, want in zip(ema, expected):
        assert torch.equal(e, want if ema_dtype == torch.float64 else want.float().to(ema_dtype))


def test_model_ema_of_a_float64_model(every_backend):
    model = make_model(torch.float64)
    ema = run_model_ema(model, 4, every_backend, decay=0.999, warmup=True, update_after_step=1)
    expected = make_model(torch.float64).state_dict()
    for t in range(1, 5):
        train_step_reference = make_model(torch.float64)
        for step in range(1, t + 1):
            train_step(train_step_reference, step)
        decay = reference.ema_decays(t, 0.999, warmup=True, update_after_step=1)[0]
        for name, value in train_step_reference.state_dict().items():
            if value.is_floating_point():
                expected[name] = lerp_float64(expected[name], value, decay)
            else:
                expected[name] = value
    for name, value in ema.module.state_dict().items():
        assert value.dtype == expected[name].dtype, name
        torch.testing.assert_close(value, expected[name], rtol=1e-14, atol=1e-14, msg=name)


# ----------------------------------------------------------------------------- the schedule

SCHEDULES = [dict(decay=0.9), dict(decay=0.9999, warmup=True),
             dict(decay=0.999, warmup=True, warmup_gamma=10.0, warmup_power=0.75, min_decay=0.5,
                  update_after_step=3, update_every=2),
             dict(decay=0.99, update_after_step=4, update_every=3)]


def scheduled_update(num_updates, decays, schedule, backend, pairs=None):
    """One ema_scheduled_update_op of `pairs` (default: one tiny pair) with the `schedule` (every
    argument given): num_updates advances and decays hold the decays it used."""
    ema, params = pairs or ([torch.zeros(3, device=DEVICE)], [torch.ones(3, device=DEVICE)])
    programs_done = torch.zeros((), dtype=torch.int32, device=num_updates.device)
    ema_scheduled_update_op(ema, params, [0] * len(ema), num_updates, programs_done, decays, schedule["decay"],
                            schedule["warmup"], schedule["warmup_gamma"], schedule["warmup_power"],
                            schedule["min_decay"], schedule["update_after_step"], schedule["update_every"], backend)
    assert programs_done.item() == 0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_kernel_matches_reference(backend, schedule):
    full = {**dict(warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, min_decay=0.0, update_after_step=0,
                   update_every=1), **schedule}
    num_updates = torch.zeros((), dtype=torch.int64, device=DEVICE)
    decays = torch.zeros(2, device=DEVICE, dtype=torch.float64)
    for t in range(1, 13):
        scheduled_update(num_updates, decays, full, backend)
        expected = reference.ema_decays(t, **schedule)
        assert num_updates.item() == t
        assert decays.tolist() == pytest.approx(expected, rel=1e-12, abs=0), t
        if _backend._C is not None:
            host = _backend._C.ema_decays_host(t, full["decay"], full["warmup"], full["warmup_gamma"],
                                               full["warmup_power"], full["min_decay"], full["update_after_step"],
                                               full["update_every"])
            assert list(host) == pytest.approx(expected, rel=1e-12, abs=0), t


def timm_get_decay(t, decay, min_decay, update_after_step, use_warmup, warmup_gamma, warmup_power):
    """timm.utils.ModelEmaV3.get_decay(step=t), transcribed from timm 1.0 (timm's train.py passes
    step = the number of updates so far, this one included)."""
    step = max(0, t - update_after_step - 1)
    if step <= 0:
        return 0.0
    if use_warmup:
        value = 1 - (1 + step / warmup_gamma) ** -warmup_power
        return max(min(value, decay), min_decay)
    return decay


def diffusers_get_decay(t, decay, min_decay, update_after_step, inv_gamma, power):
    """diffusers.training_utils.EMAModel(use_ema_warmup=True).get_decay(t), transcribed (its step()
    passes t = optimization_step, counted from 1)."""
    step = max(0, t - update_after_step - 1)
    if step <= 0:
        return 0.0
    value = 1 - (1 + step / inv_gamma) ** -power
    return max(min(value, decay), min_decay)


def timm_decays(steps, **settings):
    """timm's own ModelEmaV3.get_decay where timm is installed, else the transcription."""
    try:
        from timm.utils import ModelEmaV3
    except ImportError:
        return [timm_get_decay(t, **settings) for t in steps]
    timm_ema = ModelEmaV3(torch.nn.Linear(1, 1), **settings)
    return [timm_ema.get_decay(t) for t in steps]


def model_ema_decays(ema, steps):
    """The average decay of each of ModelEMA's updates 1..steps, as its own update launch used it."""
    decays = []
    model = copy.deepcopy(ema.module)
    for _ in steps:
        ema.update(model)
        decays.append(ema._decays[0].item())
    return decays


# (decay, timm's update_after_step a, use_warmup, warmup_gamma, warmup_power, min_decay): timm's
# defaults, longer and shorter warmups, a min_decay that binds, no warmup.
TIMM_SETTINGS = [(0.9999, 0, True, 1.0, 2 / 3, 0.0), (0.999, 5, True, 1.0, 0.75, 0.0),
                 (0.99, 10, True, 10.0, 0.5, 0.3), (0.95, 3, True, 2.0, 1.0, 0.9), (0.99, 7, False, 1.0, 2 / 3, 0.0)]


@pytest.mark.parametrize("decay,a,use_warmup,gamma,power,min_decay", TIMM_SETTINGS)
def test_schedule_equals_timm_with_update_after_step_plus_one(every_backend, decay, a, use_warmup, gamma, power,
                                                              min_decay):
    steps = range(1, 201)
    ema = rk.ModelEMA(torch.nn.Linear(1, 1).to(DEVICE), decay=decay, warmup=use_warmup, warmup_gamma=gamma,
                      warmup_power=power, min_decay=min_decay, update_after_step=a + 1, backend=every_backend)
    timm = timm_decays(steps, decay=decay, min_decay=min_decay, update_after_step=a, use_warmup=use_warmup,
                       warmup_gamma=gamma, warmup_power=power)
    # rk rounds the warmup term to fp32 (the backends' exp and log differ in the last fp64 bit).
    assert model_ema_decays(ema, steps) == pytest.approx(timm, rel=2**-24, abs=0)
    if use_warmup:
        diffusers = [diffusers_get_decay(t, decay, min_decay, a, gamma, power) for t in steps]
        assert diffusers == timm


def test_schedule_next_to_timm_when_min_decay_exceeds_decay(every_backend):
    # timm clamps max(min(w, decay), min_decay): min_decay wins. rk clamps min(decay, max(min_decay, w)):
    # decay wins. The copy steps agree.
    steps = range(1, 51)
    ema = rk.ModelEMA(torch.nn.Linear(1, 1).to(DEVICE), decay=0.99, warmup=True, min_decay=0.999,
                      update_after_step=3, backend=every_backend)
    timm = timm_decays(steps, decay=0.99, min_decay=0.999, update_after_step=2, use_warmup=True, warmup_gamma=1.0,
                       warmup_power=2 / 3)
    assert model_ema_decays(ema, steps) == [0.0] * 3 + [0.99] * 47
    assert timm == [0.0] * 3 + [0.999] * 47


# ----------------------------------------------------------------------------- ModelEMA


class SmallNet(torch.nn.Module):
    """Linear + BatchNorm (floating and integer buffers) + a bias-free Linear of an odd size."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 7)
        self.norm = torch.nn.BatchNorm1d(7)
        self.fc2 = torch.nn.Linear(7, 3, bias=False)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)).relu())


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return SmallNet().to(DEVICE, dtype)


@torch.no_grad()
def train_step(model, step):
    """Moves every parameter and buffer, as an optimizer step and a forward in train mode would."""
    generator = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * 0.1)
    model.train()
    model(torch.randn(4, 5, generator=generator).to(DEVICE, next(model.parameters()).dtype))


def simulate(model, steps, buffers="average", ema_dtype=None, **schedule):
    """The float64 oracle of ModelEMA: the state dict after `steps` updates."""
    ema = {k: v.double() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    param_names = {name for name, _ in model.named_parameters()}
    for t in range(1, steps + 1):
        train_step(model, t)
        average, copy_decay = (fp32(d) for d in reference.ema_decays(t, **schedule))
        for name, value in model.state_dict().items():
            if name not in param_names and buffers == "ignore":
                continue
            if not value.is_floating_point():
                ema[name] = value.clone() if copy_decay == 0 else ema[name]
                continue
            decay = average if name in param_names or buffers == "average" else copy_decay
            ema[name] = reference.ema_blend(ema[name], value.double(), decay, math_dtype=torch.float64)
    return ema


def run_model_ema(model, steps, backend, **kwargs):
    ema = rk.ModelEMA(model, backend=backend, **kwargs)
    for t in range(1, steps + 1):
        train_step(model, t)
        ema.update(model)
    return ema


@pytest.mark.parametrize("buffers", ["average", "copy", "ignore"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_model_ema_matches_float64_oracle(backend, buffers, schedule):
    steps = 7
    ema = run_model_ema(make_model(), steps, backend, buffers=buffers, **schedule)
    expected = simulate(make_model(), steps, buffers=buffers, **schedule)
    state = ema.state_dict()
    assert state.pop(NUM_UPDATES_KEY).item() == steps
    assert state.keys() == expected.keys()
    for name, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(value, expected[name]), name


def test_bf16_model_with_fp32_ema(backend, monkeypatch):
    model = make_model(torch.bfloat16)
    launches = count_launches(monkeypatch)
    ema = run_model_ema(model, 5, backend, decay=0.9, warmup=True, ema_dtype=torch.float32)
    expected = simulate(make_model(torch.bfloat16), 5, decay=0.9, warmup=True)
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, name
            torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-5, msg=name)
    if backend != "torch":  # per update: the schedule, the parameters and the buffers in one kernel
        assert launches == {"update": 5}


def test_module_is_an_evaluation_copy(backend):
    model = make_model()
    model(torch.randn(3, 5, device=DEVICE)).sum().backward()
    ema = rk.ModelEMA(model, ema_dtype=torch.float64, backend=backend)
    assert not ema.module.training and model.training
    assert all(not p.requires_grad and p.grad is None for p in ema.module.parameters())
    assert all(p.dtype == torch.float64 for p in ema.module.parameters())
    assert ema.module.norm.num_batches_tracked.dtype == torch.int64
    assert ema.module.fc1.weight.data_ptr() != model.fc1.weight.data_ptr()


def test_resume_through_state_dict_is_bit_identical(backend):
    schedule = dict(decay=0.99, warmup=True, update_after_step=2, update_every=2)
    straight = run_model_ema(make_model(), 9, backend, **schedule)

    model = make_model()
    first = run_model_ema(model, 5, backend, **schedule)
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = rk.ModelEMA(make_model(seed=1), backend=backend, **schedule)  # other weights, replaced by load
    resumed.load_state_dict(saved)
    for t in range(6, 10):
        train_step(model, t)
        resumed.update(model)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class NetWithNonPersistentBuffer(SmallNet):
    """SmallNet plus a floating buffer left out of state_dict() that every forward changes."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(3), persistent=False)

    def forward(self, x):
        self.calls.add_(1)
        return super().forward(x)


def make_model_with_non_persistent_buffer():
    torch.manual_seed(0)
    return NetWithNonPersistentBuffer().to(DEVICE)


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_non_persistent_buffers_are_neither_averaged_nor_saved(backend, buffers):
    # As timm's ModelEmaV3, which walks state_dict(): .module keeps the value it was made with.
    model = make_model_with_non_persistent_buffer()
    ema = run_model_ema(model, 3, backend, decay=0.5, buffers=buffers)
    assert torch.equal(model.calls, torch.full((3,), 3.0, device=DEVICE))
    assert torch.equal(ema.module.calls, torch.zeros(3, device=DEVICE))
    assert "calls" not in ema.state_dict()
    ema.copy_to(model)
    assert torch.equal(model.calls, torch.full((3,), 3.0, device=DEVICE))


@pytest.mark.parametrize("resume_from", ["a new model", "the trained model"])
@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_resume_with_non_persistent_buffers_is_bit_identical(backend, buffers, resume_from):
    # 3 + 2 updates against 5: the state_dict() and the averaged weights are identical whether the
    # resumed EMA is made from a new model (timm's train.py) or from the trained one; its
    # non-persistent buffer is the one it was made with, as in any module made from that model.
    straight = run_model_ema(make_model_with_non_persistent_buffer(), 5, backend, decay=0.75, buffers=buffers)
    model = make_model_with_non_persistent_buffer()
    first = run_model_ema(model, 3, backend, decay=0.75, buffers=buffers)
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    source = make_model_with_non_persistent_buffer() if resume_from == "a new model" else model
    made_with = source.calls.clone()
    resumed = rk.ModelEMA(source, decay=0.75, buffers=buffers, backend=backend)
    resumed.load_state_dict(saved)
    for t in (4, 5):
        train_step(model, t)
        resumed.update(model)
    assert straight.state_dict().keys() == resumed.state_dict().keys()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.module.calls, made_with)


def test_copy_to_casts_to_the_model_dtype(backend):
    model = make_model(torch.bfloat16)
    ema = run_model_ema(model, 2, backend, decay=0.5, ema_dtype=torch.float32)
    target = make_model(torch.bfloat16, seed=3)
    ema.copy_to(target)
    for (name, value), source in zip(target.state_dict().items(), ema.module.state_dict().values()):
        assert value.dtype == (torch.bfloat16 if source.is_floating_point() else source.dtype)
        assert torch.equal(value, source.to(value.dtype)), name


def test_reallocated_and_replaced_parameters_are_followed(backend):
    model = make_model()
    ema = rk.ModelEMA(model, decay=0.5, backend=backend)
    ema.update(model)
    # In place re-allocation: same Parameter objects, new storage (and a new dtype).
    model.to(torch.float64)
    with torch.no_grad():
        model.fc1.weight.fill_(2.0)
    before = ema.module.fc1.weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module.fc1.weight, 0.5 * before + 1.0)
    # Replaced Parameter objects (load_state_dict(assign=True) does this): the pairs are made anew.
    model.fc2.weight = torch.nn.Parameter(torch.full((3, 7), 4.0, device=DEVICE, dtype=torch.float64))
    before = ema.module.fc2.weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module.fc2.weight, 0.5 * before + 2.0)


def test_replaced_buffers_are_followed_on_both_sides(backend):
    # model.double() makes new buffer objects (and converts parameters in place); so does
    # ema.module.double() on the EMA's side. No hook on Module._apply sees this: every update reads
    # each tensor from its module.
    model = make_model()
    ema = rk.ModelEMA(model, decay=0.5, backend=backend)
    ema.update(model)
    old = model.norm.running_mean
    model.double()
    assert model.norm.running_mean is not old
    with torch.no_grad():
        model.norm.running_mean.fill_(4.0)
    before = ema.module.norm.running_mean.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module.norm.running_mean, 0.5 * before + 2.0)
    old = ema.module.norm.running_mean
    ema.module.double()
    assert ema.module.norm.running_mean is not old
    with torch.no_grad():
        model.norm.running_mean.fill_(8.0)
    before = ema.module.norm.running_mean.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module.norm.running_mean, 0.5 * before + 4.0)


def test_no_process_wide_patch_of_module_apply():
    rk.ModelEMA(make_model())
    assert torch.nn.Module._apply.__module__ == "torch.nn.modules.module"
    assert not hasattr(torch.nn.Module._apply, "__wrapped__")


def test_a_tensor_deleted_from_the_model_raises(backend):
    # `del` registers nothing; the pairs notice the tensor is gone from its module.
    model = make_model()
    ema = rk.ModelEMA(model, decay=0.5, backend=backend)
    ema.update(model)
    del model.fc2.weight
    with pytest.raises(ValueError, match="do not match"):
        ema.update(model)


def test_ddp_wrapper_is_unwrapped_without_a_process_group():
    model = make_model()
    # DistributedDataParallel needs a process group; the unwrapping only looks at .module.
    wrapper = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(wrapper)
    wrapper.module = model
    ema = rk.ModelEMA(wrapper, decay=0.0)
    assert set(ema.state_dict()) == set(model.state_dict()) | {NUM_UPDATES_KEY}
    ema.update(wrapper)


# ----------------------------------------------------------------------------- warnings and bad input


def test_warns_for_low_precision_ema_with_high_decay():
    with pytest.warns(UserWarning, match="float32"):
        rk.ModelEMA(make_model(torch.bfloat16), decay=0.9999)
    with pytest.warns(UserWarning, match="barely moves"):
        rk.ema_update_([torch.zeros(3, dtype=torch.bfloat16)], [torch.ones(3)], 0.999)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rk.ModelEMA(make_model(torch.bfloat16), decay=0.9999, ema_dtype=torch.float32)
        rk.ModelEMA(make_model(torch.bfloat16), decay=0.99)
        rk.ema_update_([torch.zeros(3)], [torch.ones(3, dtype=torch.bfloat16)], 0.9999)


def test_bad_input_raises_clear_errors():
    e, p = [torch.zeros(4)], [torch.ones(4)]
    with pytest.raises(ValueError, match="ema_tensors has 1 tensors but model_tensors has 2"):
        rk.ema_update_(e, p * 2, 0.5)
    with pytest.raises(ValueError, match=r"pair 0: ema tensor has shape \(4,\) but model tensor has \(2, 2\)"):
        rk.ema_update_(e, [torch.ones(2, 2)], 0.5)
    for decay in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="decay must be in"):
            rk.ema_update_(e, p, decay)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        rk.ema_update_(e, [torch.ones(4, device="meta")], 0.5)
    with pytest.raises(ValueError, match=r"model_tensors\[0\] has dtype torch.int64; the EMA needs floating"):
        rk.ema_update_(e, [torch.ones(4, dtype=torch.int64)], 0.5)
    with pytest.raises(ValueError, match=r"ema_tensors\[0\] has dtype torch.int32"):
        rk.ema_update_([torch.ones(4, dtype=torch.int32)], p, 0.5)
    with pytest.raises(TypeError, match="decay must be a Python float"):
        rk.ema_update_(e, p, True)
    with pytest.raises(ValueError, match="a decay tensor must be a 0-d floating tensor"):
        rk.ema_update_(e, p, torch.tensor([0.5, 0.5]))
    with pytest.raises(TypeError, match="must be a list or tuple"):
        rk.ema_update_(e[0], p[0], 0.5)
    with pytest.raises(ValueError, match="the ema tensor must be dense"):
        rk.ema_update_([torch.zeros(3, 8)[:, ::2]], [torch.ones(3, 4)], 0.5)


def test_model_ema_bad_arguments():
    model = make_model()
    for kwargs, message in [(dict(decay=1.5), "decay must be in"), (dict(buffers="mean"), "buffers must be one of"),
                            (dict(update_every=0), "update_every must be an int >= 1"),
                            (dict(update_after_step=-1), "update_after_step must be an int >= 0"),
                            (dict(warmup_gamma=0.0), "warmup_gamma must be a positive"),
                            (dict(ema_dtype=torch.int32), "ema_dtype must be a floating dtype")]:
        with pytest.raises(ValueError, match=message):
            rk.ModelEMA(model, **kwargs)
    ema = rk.ModelEMA(model)
    with pytest.raises(ValueError, match="do not match"):
        ema.update(torch.nn.Linear(5, 7).to(DEVICE))
    with pytest.raises(ValueError, match="no '_ema_num_updates'"):
        ema.load_state_dict(model.state_dict())


# ----------------------------------------------------------------------------- registration


def test_opcheck(backend):
    ema, params = sample_pairs([5, 130], model_dtype=torch.bfloat16)
    decays = torch.tensor([0.25, 0.0], device=DEVICE, dtype=torch.float64)
    torch.library.opcheck(ema_update_op.custom_op, (ema, params, decays, [0, 1], backend))
    num_updates = torch.zeros((), dtype=torch.int64, device=DEVICE)
    programs_done = torch.zeros((), dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(ema_scheduled_update_op.custom_op,
                          (ema, params, [0, 1], num_updates, programs_done, torch.zeros_like(decays), 0.999, True, 1.0,
                           2 / 3, 0.0, 1, 2, backend))


def test_compile_fullgraph_update(backend):
    model = make_model()
    eager = rk.ModelEMA(model, decay=0.9, warmup=True, update_every=2, backend=backend)
    compiled_ema = rk.ModelEMA(model, decay=0.9, warmup=True, update_every=2, backend=backend)
    compiled_update = torch.compile(lambda m: compiled_ema.update(m), fullgraph=True)
    for t in range(1, 4):
        train_step(model, t)
        eager.update(model)
        compiled_update(model)
    for (name, a), b in zip(eager.state_dict().items(), compiled_ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    decay = torch.tensor(0.5, device=DEVICE)
    ema, params = sample_pairs([10, 3])
    expected = oracle(ema, params, 0.5)
    torch.compile(lambda e, p, d: rk.ema_update_(e, p, d, backend=backend), fullgraph=True)(ema, params, decay)
    for e, want in zip(ema, expected):
        torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])


# ----------------------------------------------------------------------------- GPU only

gpu_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")


def wide_model(tensors=400):
    """A model of `tensors` parameters of awkward sizes, plus BatchNorm buffers."""
    layers = [torch.nn.Linear(37, 37) for _ in range((tensors - 3) // 2)] + [torch.nn.BatchNorm1d(37)]
    return torch.nn.Sequential(*layers).to(DEVICE)


@gpu_only
def test_update_makes_no_host_sync(backend):
    model = wide_model()
    ema = rk.ModelEMA(model, warmup=True, update_after_step=2, update_every=2, backend=backend)
    ema.update(model)  # compiles the kernels and builds the tables
    rk.ema_update_(list(ema.module.parameters()), list(model.parameters()), 0.999, backend=backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            ema.update(model)
        rk.ema_update_(list(ema.module.parameters()), list(model.parameters()), 0.999, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu_only
def test_one_kernel_per_update(backend):
    if backend == "torch":
        pytest.skip("the torch backend is the per-tensor reference")
    model = wide_model(400)
    assert len(list(model.parameters())) + len(list(model.buffers())) >= 400
    ema = rk.ModelEMA(model, warmup=True, backend=backend)
    ema.update(model)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        ema.update(model)
        torch.cuda.synchronize()
    kernels = [e for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]


@gpu_only
def test_cuda_graph_capture_and_replay(backend):
    model = wide_model(40)
    ema = rk.ModelEMA(model, decay=0.5, update_every=2, backend=backend)
    reference_ema = rk.ModelEMA(model, decay=0.5, update_every=2, backend=backend)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ema.update(model)  # warm-up outside the capture: compiles kernels, builds tables
    torch.cuda.current_stream().wait_stream(stream)
    reference_ema.update(model)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ema.update(model)
    for t in range(2, 6):
        train_step_wide(model, t)
        graph.replay()
        reference_ema.update(model)
    torch.cuda.synchronize()
    assert ema.num_updates.item() == 5
    for (name, a), b in zip(ema.state_dict().items(), reference_ema.state_dict().values()):
        assert torch.equal(a, b), name


@torch.no_grad()
def train_step_wide(model, step):
    for p in model.parameters():
        p.add_(0.01 * step)


def captured(fn):
    """fn() warmed up on a side stream (kernels compiled, tables built, as torch's docs ask), then
    captured into a CUDA graph, which is returned."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@gpu_only
def test_ema_update_function_in_cuda_graph_matches_eager(backend):
    # Mixed dtypes, a chunk boundary, a channels_last pair and a decay tensor whose value changes
    # between replays: each replay equals an eager update.
    ema, params = sample_pairs([CHUNK + 3, 129, 1], model_dtype=torch.bfloat16)
    ema.append(torch.randn(2, 3, 4, 5, device=DEVICE).contiguous(memory_format=torch.channels_last))
    params.append(torch.randn(2, 3, 4, 5, device=DEVICE).contiguous(memory_format=torch.channels_last))
    eager = [e.clone() for e in ema]
    decay = torch.tensor(0.5, device=DEVICE)
    graph = captured(lambda: rk.ema_update_(ema, params, decay, backend=backend))
    rk.ema_update_(eager, params, decay, backend=backend)  # the warm-up's update
    for step, value in enumerate([0.9, 0.0, 1.0, 0.75]):
        with torch.no_grad():
            for p in params:
                p.add_(0.25 * (step + 1))
        decay.fill_(value)
        graph.replay()
        rk.ema_update_(eager, params, decay, backend=backend)
        torch.cuda.synchronize()
        for a, b in zip(ema, eager):
            assert torch.equal(a, b), (step, value)


@gpu_only
def test_first_update_inside_a_capture(backend):
    # Nothing warmed up for these tensors or this float decay: the table is built (from a pinned
    # host copy) and the decay tensor made during the capture, and the transposed model tensor is
    # copied inside it. Replays must see all three, and a later eager call with the same float must
    # not pick up a decay tensor that only the graph fills.
    rk.ema_update_(*sample_pairs([5], seed=1), 0.5, backend=backend)  # compiles the kernel, on other tensors
    torch.cuda.synchronize()
    ema, params = sample_pairs([CHUNK + 7, 33], model_dtype=torch.float16)
    ema.append(torch.randn(6, 5, device=DEVICE))
    params.append(torch.randn(5, 6, device=DEVICE).t())
    start = [e.clone() for e in ema]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rk.ema_update_(ema, params, 0.3125, backend=backend)
    for e, s in zip(ema, start):
        e.copy_(s)
    eager = [e.clone() for e in start]
    for _ in range(3):
        graph.replay()
        rk.ema_update_(eager, params, 0.3125, backend=backend)
        torch.cuda.synchronize()
        for a, b in zip(ema, eager):
            assert torch.equal(a, b)
    fresh = [s.clone() for s in start]
    rk.ema_update_(fresh, params, 0.3125, backend=backend)
    for e, want in zip(fresh, oracle(start, params, 0.3125)):
        torch.testing.assert_close(e.double(), want, **TOLERANCE[torch.float32])


@gpu_only
def test_more_than_2_to_31_elements(backend):
    # A bf16 model tensor and an fp32 EMA of 2^31 + 8 elements (12 GB): offsets past 2^31 must not
    # wrap. Slices at the start, across 2^31 and at the end are checked bit for bit against the
    # fp32 reference, and a neighbouring small pair must come out right too.
    if backend == "torch":
        pytest.skip("the torch backend is the reference of the slices")
    n = 2**31 + 8
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip("needs 16 GB of free GPU memory")
    param = torch.empty(n, dtype=torch.bfloat16, device=DEVICE).uniform_(-1, 1)
    ema = torch.empty(n, dtype=torch.float32, device=DEVICE).uniform_(-1, 1)
    small_ema, small_param = torch.randn(1000, device=DEVICE), torch.randn(1000, device=DEVICE)
    slices = [slice(0, 64), slice(2**31 - CHUNK - 5, 2**31 - CHUNK + 5), slice(2**31 - 64, 2**31 + 8),
              slice(n - 64, n)]
    before = [(ema[s].clone(), param[s].clone()) for s in slices]
    small_expected = reference.ema_blend(small_ema, small_param, torch.tensor(0.75, device=DEVICE))
    rk.ema_update_([small_ema, ema, small_param.clone()[:0]], [small_param, param, small_param[:0]], 0.75,
                   backend=backend)
    torch.cuda.synchronize()
    for s, (e, p) in zip(slices, before):
        expected = reference.ema_blend(e, p, torch.tensor(0.75, device=DEVICE))
        assert torch.equal(ema[s], expected), s
    assert torch.equal(small_ema, small_expected)


# ----------------------------------------------------------------------------- GPU code generation, checked on the CPU

_COMPILE_FOR_SM90 = r"""
import os, json
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from recipe_kernels import ema
counts = {}
runtime = dict(table_ptr="*i64", decays_ptr="*fp64", num_updates_ptr="*i64", programs_done_ptr="*i32", decay="fp64",
               warmup_gamma="fp64", warmup_power="fp64", min_decay="fp64", update_after_step="i64", update_every="i64")
bf16_model_fp32_ema = 1 << ema.kind_bit(0, 2)
# A model's usual mix: fp32 and bf16 weights into an fp32 EMA, and integer buffers. (All 17 kinds
# at once compile too, in minutes: too slow for this suite.)
usual_mix = (1 << ema.kind_bit(0, 0)) | (1 << ema.kind_bit(0, 2)) | (1 << ema.RAW_KIND_BIT)
# (KINDS, ALIGNMENT, SCHEDULE, WARMUP)
cases = {"one kind, aligned": (bf16_model_fp32_ema, ema.ROWS_ALIGNED, False, False),
         "one kind, aligned, scheduled": (bf16_model_fp32_ema, ema.ROWS_ALIGNED, True, False),
         "one kind, aligned, warmup": (bf16_model_fp32_ema, ema.ROWS_ALIGNED, True, True),
         "several kinds, mixed alignment": (usual_mix, ema.ROWS_MIXED, False, False)}
for case, (kinds, alignment, schedule, warmup) in cases.items():
    constants = dict(CHUNK=ema.CHUNK, BLOCK=ema.BLOCK, KINDS=kinds, ALIGNMENT=alignment, SCHEDULE=schedule,
                     WARMUP=warmup)
    signature = dict(runtime, **{name: "constexpr" for name in constants})
    source = ASTSource(fn=ema._ema_update_kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=ema.NUM_WARPS, enable_fp_fusion=False))
    ptx = compiled.asm["ptx"]
    counts[case] = dict(vector_loads=ptx.count("ld.global.v4"), vector_stores=ptx.count("st.global.v4"),
                        fma=ptx.count("fma.rn.f32") + ptx.count("fma.rn.f64"), shared=compiled.metadata.shared)
print(json.dumps(counts))
"""


def test_triton_kernels_compile_for_sm90_with_vector_loads_and_no_fma():
    # The interpreter accepts code that the compiler rejects (e.g. values of different types leaving
    # an if); compile for an H100 ahead of time, without a GPU, in a process without TRITON_INTERPRET.
    import json
    import subprocess
    import sys
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True,
                            env=environment, timeout=300)
    if result.returncode != 0 and "ptxas" in result.stderr and "not found" in result.stderr:
        pytest.skip("Triton's ptxas is not available")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    for case in ("one kind, aligned", "one kind, aligned, scheduled"):
        # 16-byte accesses to the fp32 EMA both ways; e and p share a layout, so no shared-memory
        # round trip between the loads and the store (a few bytes for the counter's atomic only).
        assert counts[case]["vector_loads"] > 0 and counts[case]["vector_stores"] > 0, case
        assert counts[case]["shared"] <= 16, case
    # Bit-equal to the other backends: no contraction in the blend (the warmup's fp64 exp and log
    # are library code with fused multiply-adds of their own; their result is rounded to fp32).
    assert all(count["fma"] == 0 for case, count in counts.items() if not case.endswith("warmup"))


def test_eager_update_of_tensors_that_require_grad(backend):
    ema_model, model = torch.nn.Linear(3, 4).to(DEVICE), torch.nn.Linear(3, 4).to(DEVICE)  # both require grad
    expected = oracle(list(ema_model.parameters()), list(model.parameters()), 0.25)
    rk.ema_update_(list(ema_model.parameters()), list(model.parameters()), 0.25, backend=backend)
    for e, want in zip(ema_model.parameters(), expected):
        torch.testing.assert_close(e.detach().double(), want, **TOLERANCE[torch.float32])


def test_memo_checks_without_torch_compiles_guards(monkeypatch):
    """A torch without torch._C._dynamo.guards.TensorGuards gets the same checks in Python."""
    ema_module = sys.modules["recipe_kernels.ema"]
    monkeypatch.setattr(ema_module, "TensorGuards", None)
    tensors = [torch.zeros(4, 3), torch.zeros(2)]
    guard = ema_module._tensor_guards(tensors)
    assert guard.check(*tensors)
    assert not guard.check(tensors[0].t(), tensors[1])            # strides
    assert not guard.check(tensors[0].double(), tensors[1])       # dtype
    assert not guard.check(tensors[0], torch.zeros(3))            # shape
