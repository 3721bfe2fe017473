"""The CUDA EMA kernels' own code, run on the CPU through _C's *_host entry points.

ema_update's body is a __host__ __device__ function of (block, thread, threads); ema_update_host
runs it for every thread of every block of the real launch grid. Its chunk tables come from the
package's own builder (recipe_kernels.ema.build_chunk_table), which for CPU tensors holds CPU
addresses, so the kernel walks exactly the rows a GPU launch would. Results must equal the torch
backend bit for bit (NaNs compare as NaNs: their payloads are not part of the contract).
Storage offsets of one element make the addresses unaligned, which turns the vector loads off.
"""
import math

import pytest
import torch

import recipe_kernels as rk
from recipe_kernels import _backend, reference
from recipe_kernels import ema as ema_module
from recipe_kernels.ema import AVERAGE_SLOT, CHUNK, COPY_SLOT, CUDA_THREADS, build_chunk_table

pytestmark = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")

FLOATING = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DTYPE_PAIRS = [(e, p) for e in FLOATING for p in FLOATING]
# 0: no rows; 1, 3: below one vector; 127, 129: around a power of two; then a chunk's edges and
# several chunks with a partial last one.
SIZES = [0, 1, 3, 127, 129, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
# Values the blend must carry exactly or turn into NaN alike (fp64 ones leave the fp32 range).
SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 65504.0, 3e38, 1e-40, 6e-8, -1e-45, 1e300, 1e-300]
INTEGER_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool]


def make(n, dtype, generator, offset=0, specials=True):
    """A CPU tensor of n values starting `offset` elements into its storage (1: unaligned), with
    SPECIALS in the first places when asked."""
    if dtype.is_floating_point:
        values = torch.randn(n + offset, generator=generator, dtype=torch.float64) * 3
        if specials and n:
            values[offset:offset + len(SPECIALS)] = torch.tensor(SPECIALS[:n], dtype=torch.float64)
        values = values.to(dtype)
    elif dtype == torch.bool:
        values = torch.randint(0, 2, (n + offset,), generator=generator).bool()
    else:
        info = torch.iinfo(dtype)
        values = torch.randint(info.min, info.max, (n + offset,), generator=generator, dtype=torch.int64).to(dtype)
    return values[offset:]


def fp64_decays(*values):
    """A decays tensor as the kernels read it: fp64, indexed by decay slot."""
    return torch.tensor(values, dtype=torch.float64)


def run_kernel_code(ema, params, decays, slots, threads=CUDA_THREADS):
    """ema_update's CUDA code over the table that the cuda backend would launch for these pairs."""
    table = build_chunk_table(ema, params, slots).rows
    _backend._C.ema_update_host(table.data_ptr(), table.shape[0], decays.data_ptr(), CHUNK, threads)


def run_torch_backend(ema, params, decays, slots):
    ema_module.ema_update_op(ema, params, decays, slots, "torch")


def assert_same_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.is_floating_point():
        nan = actual.isnan()
        assert torch.equal(nan, expected.isnan())
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[actual.element_size()]
        assert torch.equal(actual[~nan].view(bits), expected[~nan].view(bits))
    else:
        assert torch.equal(actual, expected)


def check_against_torch_backend(ema, params, decays, slots, threads=CUDA_THREADS):
    """Runs both on copies of the same EMA tensors (offsets kept) and compares them bit for bit;
    the model tensors must come out untouched."""
    def copies(tensors):
        return [t.detach().clone() if t.storage_offset() == 0 else
                torch.empty(t.numel() + t.storage_offset(), dtype=t.dtype)[t.storage_offset():].copy_(t)
                for t in tensors]
    kernel_ema, torch_ema, params_before = copies(ema), copies(ema), copies(params)
    run_kernel_code(kernel_ema, params, decays, slots, threads)
    run_torch_backend(torch_ema, params, decays, slots)
    for index, (got, want) in enumerate(zip(kernel_ema, torch_ema)):
        try:
            assert_same_bits(got, want)
        except AssertionError:
            raise AssertionError(f"pair {index}: {got.dtype} <- {params[index].dtype}, {got.numel()} elements, "
                                 f"offset {got.storage_offset()}, decays {decays.tolist()}") from None
    for after, before in zip(params, params_before):
        assert_same_bits(after, before)


# ----------------------------------------------------------------------------- ema_update


@pytest.mark.parametrize("ema_dtype,param_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("ema_offset,param_offset", [(0, 0), (1, 1), (1, 0), (0, 1)])
def test_every_dtype_pair_and_size_equals_torch_backend(ema_dtype, param_dtype, ema_offset, param_offset):
    generator = torch.Generator().manual_seed(len(SIZES) * ema_offset + param_offset)
    ema = [make(n, ema_dtype, generator, ema_offset) for n in SIZES]
    params = [make(n, param_dtype, generator, param_offset) for n in SIZES]
    for decay in (0.0, 0.3, 0.9999, 1.0):
        check_against_torch_backend(ema, params, fp64_decays(decay), [AVERAGE_SLOT] * len(ema))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_half_aligned_addresses_take_the_scalar_path(dtype):
    # An offset of 8 bytes is aligned for 8-byte vectors, not for the kernel's 16-byte ones.
    offset = 8 // dtype.itemsize
    generator = torch.Generator().manual_seed(5)
    ema = [make(n, dtype, generator, offset) for n in (5, 129, CHUNK + 3)]
    params = [make(n, dtype, generator, offset) for n in (5, 129, CHUNK + 3)]
    check_against_torch_backend(ema, params, fp64_decays(0.7), [AVERAGE_SLOT] * 3)


@pytest.mark.parametrize("threads", [1, 3, 32, 1000])
def test_any_block_size_covers_every_element(threads):
    # The launcher uses CUDA_THREADS; other block sizes stress the per-thread striding of both loops.
    generator = torch.Generator().manual_seed(threads)
    sizes = [1, 7, 4099, CHUNK + 9]
    ema = [make(n, torch.float32, generator, 1 if n % 2 else 0) for n in sizes] + [make(1001, torch.int32, generator)]
    params = [make(n, torch.bfloat16, generator) for n in sizes] + [make(1001, torch.int32, generator)]
    check_against_torch_backend(ema, params, fp64_decays(0.6, 0.0), [AVERAGE_SLOT] * 4 + [COPY_SLOT],
                                threads=threads)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
@pytest.mark.parametrize("offset", [0, 1])
def test_raw_byte_rows_copy_unless_skipped(dtype, offset):
    # Counted in bytes: 3000 int64 elements are 24000 bytes, two chunks.
    generator = torch.Generator().manual_seed(offset)
    sizes = [0, 1, 3, 129, 3000, CHUNK + 1]
    ema = [make(n, dtype, generator, offset) for n in sizes]
    params = [make(n, dtype, generator, offset) for n in sizes]
    for copy_decay in (0.0, 0.5, 1.0):
        check_against_torch_backend(ema, params, fp64_decays(0.9, copy_decay), [COPY_SLOT] * len(ema))


@pytest.mark.parametrize("decays", [[0.75, 0.0], [0.0, 0.0], [1.0, 1.0], [0.5, 1.0], [1.0, 0.0], [0.999, 0.0]])
def test_decay_slots_as_model_ema_uses_them(decays):
    # Parameters and averaged buffers on the average slot, copied float and integer buffers on the
    # copy slot; decays of exactly 0 and 1 with NaN and inf on both sides.
    generator = torch.Generator().manual_seed(11)
    kinds = [(torch.float32, torch.float32, AVERAGE_SLOT), (torch.float32, torch.bfloat16, AVERAGE_SLOT),
             (torch.float16, torch.float32, COPY_SLOT), (torch.float64, torch.float64, COPY_SLOT),
             (torch.int64, torch.int64, COPY_SLOT), (torch.bfloat16, torch.float16, AVERAGE_SLOT),
             (torch.uint8, torch.uint8, COPY_SLOT)]
    ema, params, slots = [], [], []
    for index, (ema_dtype, param_dtype, slot) in enumerate(kinds):
        for n in (3, 129, CHUNK + 1):
            ema.append(make(n, ema_dtype, generator, index % 2))
            params.append(make(n, param_dtype, generator, (index + n) % 2))
            slots.append(slot)
    check_against_torch_backend(ema, params, fp64_decays(*decays), slots)


def test_hundreds_of_tensors_in_one_table():
    generator = torch.Generator().manual_seed(2024)
    ema, params, slots = [], [], []
    for index in range(400):
        n = int(torch.randint(0, 3000, (), generator=generator)) if index % 50 else CHUNK + index
        if index % 7 == 3:
            dtype = INTEGER_DTYPES[index % len(INTEGER_DTYPES)]
            ema_dtype = param_dtype = dtype
            slot = COPY_SLOT
        else:
            ema_dtype, param_dtype = DTYPE_PAIRS[index % len(DTYPE_PAIRS)]
            slot = COPY_SLOT if index % 11 == 0 else AVERAGE_SLOT
        ema.append(make(n, ema_dtype, generator, int(index % 3 == 0), specials=index % 5 == 0))
        params.append(make(n, param_dtype, generator, int(index % 4 == 0), specials=index % 5 == 0))
        slots.append(slot)
    table = build_chunk_table(ema, params, slots).rows
    assert table.shape[0] > 400  # some pairs span several chunks
    check_against_torch_backend(ema, params, fp64_decays(0.9, 0.0), slots)


def test_pair_of_a_tensor_with_itself_and_layouts():
    # A model tensor may be its own EMA tensor; channels_last pairs are walked in memory order.
    generator = torch.Generator().manual_seed(3)
    same = make(CHUNK + 5, torch.float32, generator)
    ema_cl = torch.randn(2, 3, 5, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    param_cl = torch.randn(2, 3, 5, 7, generator=generator).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    kernel_same, torch_same = same.clone(), same.clone()
    kernel_cl, torch_cl = ema_cl.clone(), ema_cl.clone()  # clone keeps channels_last
    decays = fp64_decays(0.25)
    run_kernel_code([kernel_same, kernel_cl], [kernel_same, param_cl], decays, [AVERAGE_SLOT] * 2)
    run_torch_backend([torch_same, torch_cl], [torch_same, param_cl], decays, [AVERAGE_SLOT] * 2)
    assert_same_bits(kernel_same, torch_same)
    assert_same_bits(kernel_cl, torch_cl)


def test_launch_checks_match_the_gpu_launcher():
    e, p = torch.zeros(4), torch.ones(4)
    table = build_chunk_table([e], [p], [AVERAGE_SLOT]).rows
    decays = fp64_decays(0.5)
    _backend._C.ema_update_host(table.data_ptr(), 0, decays.data_ptr(), CHUNK, CUDA_THREADS)  # nothing to do
    assert torch.equal(e, torch.zeros(4))
    for chunk, threads in ((0, CUDA_THREADS), (CHUNK, 0)):
        with pytest.raises(ValueError, match="bad chunk or threads"):
            _backend._C.ema_update_host(table.data_ptr(), 1, decays.data_ptr(), chunk, threads)


# ----------------------------------------------------------------------------- ModelEMA end to end


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(37, 129)
        self.norm = torch.nn.BatchNorm1d(129)  # float buffers and an int64 num_batches_tracked
        self.out = torch.nn.Linear(129, 3, bias=False)


@pytest.mark.parametrize("buffers", ["average", "copy"])
@pytest.mark.parametrize("ema_dtype", [None, torch.float64])
def test_model_ema_steps_equal_torch_backend(buffers, ema_dtype):
    # The scheduled update kernel (schedule, update, counter), on ModelEMA's own pairs, slots and tables
    # (an fp64 EMA of a bf16 model has fp64 math).
    torch.manual_seed(0)
    model = Net().to(torch.bfloat16)
    options = dict(decay=0.99, warmup=True, update_after_step=3, update_every=2, buffers=buffers,
                   ema_dtype=ema_dtype, backend="torch")
    expected, emulated = rk.ModelEMA(model, **options), rk.ModelEMA(model, **options)
    for _ in range(12):
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.add_(torch.randn_like(tensor) if tensor.is_floating_point() else 1)
        expected.update(model)
        pairs, (ema, params) = emulated._pairs_for(model)
        run_scheduled_kernel_code(ema, params, pairs.slots, emulated.num_updates, emulated._decays, emulated)
        assert emulated.num_updates.item() == expected.num_updates.item()
        assert_same_bits(emulated._decays, expected._decays)
        wanted = expected.module.state_dict()
        for name, got in emulated.module.state_dict().items():
            assert_same_bits(got, wanted[name])


# ----------------------------------------------------------------------------- the schedule in ema_scheduled_update


def run_scheduled_kernel_code(ema, params, slots, num_updates, decays, schedule, threads=CUDA_THREADS):
    """ema_scheduled_update's CUDA code over the pairs' table (or, with no pairs, one empty row, so
    that the schedule still runs): every block, the last one advancing num_updates."""
    table = build_chunk_table(ema, params, slots).rows if ema else torch.zeros(1, 4, dtype=torch.int64)
    programs_done = torch.zeros((), dtype=torch.int32)
    _backend._C.ema_scheduled_update_host(
        table=table.data_ptr(), num_chunks=table.shape[0], num_updates=num_updates.data_ptr(),
        programs_done=programs_done.data_ptr(), decays=decays.data_ptr(), decay=schedule.decay,
        warmup=schedule.warmup, warmup_gamma=schedule.warmup_gamma, warmup_power=schedule.warmup_power,
        min_decay=schedule.min_decay, update_after_step=schedule.update_after_step,
        update_every=schedule.update_every, chunk=CHUNK, threads=threads)
    assert programs_done.item() == 0


class Schedule:
    def __init__(self, decay, warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, min_decay=0.0,
                 update_after_step=0, update_every=1):
        self.decay, self.warmup, self.warmup_gamma, self.warmup_power = decay, warmup, warmup_gamma, warmup_power
        self.min_decay, self.update_after_step, self.update_every = min_decay, update_after_step, update_every

    def reference(self, t):
        return reference.ema_decays(t, self.decay, warmup=self.warmup, warmup_gamma=self.warmup_gamma,
                                    warmup_power=self.warmup_power, min_decay=self.min_decay,
                                    update_after_step=self.update_after_step, update_every=self.update_every)


SCHEDULES = [Schedule(0.9), Schedule(0.9999, warmup=True), Schedule(1.0), Schedule(0.0, update_every=3),
             Schedule(0.999, warmup=True, warmup_gamma=10.0, warmup_power=0.75, min_decay=0.5, update_after_step=3,
                      update_every=2),
             Schedule(0.99, update_after_step=40, update_every=7),
             Schedule(0.9999, warmup=True, warmup_gamma=1.5, warmup_power=0.5, update_after_step=100)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(vars(s)))
@pytest.mark.parametrize("start", [0, 10**6])
def test_schedule_kernel_code_equals_torch_backend(schedule, start):
    # 300 steps from t = 1 (copy phase, warmup) or from a resumed counter.
    host_updates, host_decays = torch.tensor(start), fp64_decays(-1.0, -1.0)
    torch_updates, torch_decays = torch.tensor(start), fp64_decays(-1.0, -1.0)
    for t in range(start + 1, start + 301):
        run_scheduled_kernel_code([], [], [], host_updates, host_decays, schedule)
        ema_module.ema_scheduled_update_op([], [], [], torch_updates, torch.zeros((), dtype=torch.int32), torch_decays,
                                           schedule.decay, schedule.warmup, schedule.warmup_gamma,
                                           schedule.warmup_power, schedule.min_decay, schedule.update_after_step,
                                           schedule.update_every, "torch")
        assert host_updates.item() == t
        assert_same_bits(host_decays, torch_decays)
        assert host_decays.tolist() == pytest.approx(schedule.reference(t), rel=1e-12, abs=0), t
