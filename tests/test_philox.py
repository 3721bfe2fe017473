"""The RNG contract: one Philox4x32 stream, bit-identical in torch, Triton and the CUDA code."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from recipe_kernels import _backend
from recipe_kernels._philox import PHILOX_ROUNDS, drop_threshold, draw_seed, keep_mask, philox4x32

# Seeds with both halves set, the sign bit set, and zero; counters across the 2^32 boundary.
SEEDS = [0, 1, -1, 0x923456789ABCDEF0 - (1 << 64), 0x0FEDCBA987654321]
COUNTERS = torch.tensor([0, 1, 2, 3, 1000, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 40) + 7, (1 << 62) + 3])


@triton.jit
def _philox_words_kernel(seed_ptr, counter_ptr, out_ptr, n, ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < n
    counters = tl.load(counter_ptr + offsets, mask=mask, other=0)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), counters, ROUNDS)
    tl.store(out_ptr + offsets * 4 + 0, r0.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(out_ptr + offsets * 4 + 1, r1.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(out_ptr + offsets * 4 + 2, r2.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(out_ptr + offsets * 4 + 3, r3.to(tl.int64) & 0xFFFFFFFF, mask=mask)


def test_reference_matches_random123_known_answer():
    # Random123's published philox4x32_10 vector for counter 0, key 0.
    words = philox4x32(torch.tensor([0]), torch.tensor([0]), rounds=10)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("seed", SEEDS)
def test_triton_randint4x_equals_reference(seed, device):
    counters = COUNTERS.to(device)
    out = torch.empty(len(COUNTERS), 4, dtype=torch.int64, device=device)
    _philox_words_kernel[(1,)](torch.tensor([seed], device=device), counters, out, len(COUNTERS),
                               ROUNDS=PHILOX_ROUNDS, BLOCK=16)
    expected = torch.stack(philox4x32(torch.tensor([seed]), COUNTERS), dim=-1)
    assert torch.equal(out.cpu(), expected)


cuda_host = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")


@cuda_host
@pytest.mark.parametrize("seed", SEEDS)
def test_cuda_host_philox_equals_reference(seed):
    assert _backend._C.PHILOX_ROUNDS == PHILOX_ROUNDS
    words = _backend._C.philox4x32_host(seed, COUNTERS.numpy())
    expected = torch.stack(philox4x32(torch.tensor([seed]), COUNTERS), dim=-1)
    assert np.array_equal(words.astype(np.int64), expected.numpy())


@cuda_host
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.97, 1.0])
def test_cuda_host_keep_mask_equals_reference(p):
    seed = torch.tensor([SEEDS[3]])
    for start in (0, 5, (1 << 32) - 6):  # unaligned starts, and across the 2^32 boundary
        index = torch.arange(start, start + 999, dtype=torch.int64)
        host = _backend._C.keep_mask_host(SEEDS[3], start, 999, drop_threshold(p))
        assert np.array_equal(host, keep_mask(seed, index, p).numpy())


def test_drawn_seeds_follow_manual_seed_and_differ(device):
    torch.manual_seed(7)
    first, second = draw_seed(device), draw_seed(device)
    torch.manual_seed(7)
    assert torch.equal(draw_seed(device), first)
    assert not torch.equal(first, second)
    generator = torch.Generator(device=device).manual_seed(7)
    assert draw_seed(device, generator).dtype == torch.int64


def test_keep_probability_is_within_2_to_minus_24():
    for p in (0.1, 0.3, 1 / 3, 0.5, 0.999):
        exact_keep = 1 - drop_threshold(p) / 2**24
        assert abs(exact_keep - (1 - p)) <= 2**-24
