"""dropout, dropout_add, drop_path, drop_path_add: against the float64 oracle and across backends."""
import math
import sys

import numpy as np
import pytest
import torch

import recipe_kernels as rk
from recipe_kernels import _backend, reference
from recipe_kernels._philox import drop_threshold, draw_seed, keep_mask, keep_scale
from recipe_kernels.dropout import (BLOCK, WIDE_BIAS_NUMEL, _dropout_triton, dropout_bias_backward_op,
                                    dropout_inplace_op, dropout_op, drop_path_op)

from conftest import BACKENDS, DEVICE

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Tolerance of one rounding to the output dtype after exact fp32 arithmetic.
TOLERANCE = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-3),
             torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}
# 3 x 1000: not a multiple of 4 (a partial Philox group) nor of BLOCK (a partial program).
SHAPE = (3, 1000)


def sample_inputs(shape=SHAPE, dtype=torch.float32, bias_shape=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    residual = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    bias = None if bias_shape is None else torch.randn(bias_shape, generator=generator).to(DEVICE, dtype)
    return x, residual, bias


def with_seed(fn, seed=1234):
    torch.manual_seed(seed)
    return fn()


def oracle_seed(seed=1234):
    """The seed the next public call draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return draw_seed(DEVICE)


# ----------------------------------------------------------------------------- values against the oracle


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_matches_float64_oracle(backend, dtype, p):
    x, _, _ = sample_inputs(dtype=dtype)
    out = with_seed(lambda: rk.dropout(x, p, backend=backend))
    expected = reference.dropout(x.double(), oracle_seed(), p, math_dtype=torch.float64)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_shape", [None, (1000,), (3, 1000)])
def test_dropout_add_matches_float64_oracle(backend, dtype, bias_shape):
    x, residual, bias = sample_inputs(dtype=dtype, bias_shape=bias_shape)
    out = with_seed(lambda: rk.dropout_add(x, residual, 0.3, bias=bias, backend=backend))
    expected = reference.dropout(x.double(), oracle_seed(), 0.3, residual=residual.double(),
                                 bias=None if bias is None else bias.double(), math_dtype=torch.float64)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_drop_path_add_matches_float64_oracle(backend, dtype):
    # 64 samples so that both outcomes occur; rows of 37 elements, not a multiple of anything.
    x, residual, _ = sample_inputs(shape=(64, 37), dtype=dtype)
    out = with_seed(lambda: rk.drop_path_add(x, residual, 0.5, backend=backend))
    expected = reference.drop_path(x.double(), oracle_seed(), 0.5, residual=residual.double(), math_dtype=torch.float64)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])
    dropped = (out == residual).all(dim=1)
    assert 0 < dropped.sum() < 64


# Bias sizes on both sides of WIDE_BIAS_NUMEL, where the Triton kernel switches its column arithmetic
# (fp32-reciprocal quotient below, one conditional subtract from there on); with and without
# a multiple of 8. Three rows: programs start at many different columns.
@pytest.mark.parametrize("bias_numel", [WIDE_BIAS_NUMEL - 8, WIDE_BIAS_NUMEL - 1, WIDE_BIAS_NUMEL,
                                        WIDE_BIAS_NUMEL + 5, 2 * WIDE_BIAS_NUMEL + 8])
def test_dropout_add_bias_columns_around_the_wide_bias_threshold(backend, bias_numel):
    x, residual, bias = sample_inputs((3, bias_numel), bias_shape=(bias_numel,))
    out = with_seed(lambda: rk.dropout_add(x, residual, 0.3, bias=bias, backend=backend))
    expected = torch_formula("dropout_add", x.double(), residual.double(), bias.double(), 0.3, oracle_seed())
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[torch.float32])


def test_triton_kernel_takes_a_bias_of_2_to_24_elements_and_more():
    # The launcher alone, with x shorter than the bias (columns = indices): one program, not 2^24 / BLOCK.
    bias = torch.randn((1 << 24) + 8, dtype=torch.bfloat16, device=DEVICE)
    x = torch.randn(40, dtype=torch.bfloat16, device=DEVICE)
    seed = torch.tensor([99], device=DEVICE)
    out = _dropout_triton(x, None, bias, seed, 0.3, x.dtype)
    expected = torch_formula("dropout", x.double() + bias[:40].double(), None, None, 0.3, seed)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[torch.bfloat16])


# ----------------------------------------------------------------------------- mixed dtypes


def mixed_inputs(x_dtype, residual_dtype, bias_dtype, shape=(6, 40)):
    x, residual, bias = sample_inputs(shape, bias_shape=shape[-1:])
    return x.to(x_dtype), residual.to(residual_dtype), (None if bias_dtype is None else bias.to(bias_dtype))


def assert_one_rounding(got, expected64, dtype, name):
    """got equals the float64 value rounded once to `dtype` (within one rounding when the float64
    value sits on a rounding boundary of fp32 arithmetic)."""
    assert got.dtype == dtype, f"{name}: {got.dtype} != {dtype}"
    torch.testing.assert_close(got, expected64.to(dtype), **TOLERANCE[dtype], msg=name)


# An fp32 residual stream with a bf16 branch is the autocast pattern; every pair of the three dtypes.
@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("residual_dtype", DTYPES)
@pytest.mark.parametrize("bias_dtype", [None] + DTYPES)
def test_dropout_add_mixed_dtypes_follow_torch_promotion(backend, x_dtype, residual_dtype, bias_dtype):
    x, residual, bias = mixed_inputs(x_dtype, residual_dtype, bias_dtype)
    leaves = [t.requires_grad_() for t in (x, residual, bias) if t is not None]
    out = with_seed(lambda: rk.dropout_add(x, residual, 0.3, bias=bias, backend=backend))
    with torch.no_grad():  # torch's own promotion decides the result dtype
        promoted = (residual + torch.nn.functional.dropout(x if bias is None else x + bias, 0.0)).dtype
    inputs64 = [t.detach().double().requires_grad_() for t in leaves]
    expected = torch_formula("dropout_add", inputs64[0], inputs64[1], inputs64[2] if bias is not None else None,
                             0.3, oracle_seed())
    assert_one_rounding(out.detach(), expected.detach(), promoted, "out")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE, promoted)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    for name, leaf, got, want in zip(("x", "residual", "bias"), leaves, grads, expected_grads):
        assert_one_rounding(got, want, leaf.dtype, name)


@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("residual_dtype", DTYPES)
def test_drop_path_add_mixed_dtypes_follow_torch_promotion(backend, x_dtype, residual_dtype):
    x, residual, _ = mixed_inputs(x_dtype, residual_dtype, None, shape=(16, 5))
    x.requires_grad_(), residual.requires_grad_()
    out = with_seed(lambda: rk.drop_path_add(x, residual, 0.5, backend=backend))
    promoted = torch.result_type(x, residual)
    inputs64 = [t.detach().double().requires_grad_() for t in (x, residual)]
    expected = torch_formula("drop_path_add", inputs64[0], inputs64[1], None, 0.5, oracle_seed())
    assert_one_rounding(out.detach(), expected.detach(), promoted, "out")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE, promoted)
    grads = torch.autograd.grad(out, (x, residual), grad_out)
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    for name, leaf, got, want in zip(("x", "residual"), (x, residual), grads, expected_grads):
        assert_one_rounding(got, want, leaf.dtype, name)
    assert rk.drop_path_add(x, residual, 0.0, backend=backend).dtype == promoted


def test_a_zero_dim_bias_does_not_promote_like_in_torch(backend):
    x, residual = (torch.randn(4, 8, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    bias = torch.tensor(0.5, device=DEVICE)  # fp32, 0-d: torch's x + bias stays bf16
    out = rk.dropout_add(x, residual, 0.3, bias=bias, backend=backend)
    assert out.dtype == (residual + (x + bias)).dtype == torch.bfloat16


def test_dropout_add_equals_residual_plus_dropout_under_same_seed(backend):
    x, residual, bias = sample_inputs(bias_shape=(1000,))
    fused = with_seed(lambda: rk.dropout_add(x, residual, 0.25, bias=bias, backend=backend))
    unfused = residual + with_seed(lambda: rk.dropout(x + bias, 0.25, backend=backend))
    torch.testing.assert_close(fused, unfused, rtol=1e-6, atol=1e-6)
    assert torch.equal(fused == residual, unfused == residual)


def test_drop_path_is_one_decision_per_sample(backend):
    x = torch.rand(64, 5, 7, device=DEVICE) + 1.0  # no zeros in x
    out = with_seed(lambda: rk.drop_path(x, 0.5, backend=backend))
    zero_rows = (out == 0).flatten(1)
    assert torch.equal(zero_rows.all(1), zero_rows.any(1))
    kept = ~zero_rows.any(1)
    assert torch.equal(out[kept], x[kept] * keep_scale(0.5))
    # Its decision for sample b is dropout's decision for element b of a (64,) tensor.
    element_mask = with_seed(lambda: rk.dropout(torch.ones(64, device=DEVICE), 0.5, backend=backend)) != 0
    assert torch.equal(kept, element_mask)


# ----------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_five_sigma_and_exact_scale(backend, p):
    n = 1 << 15
    x = torch.rand(n, device=DEVICE) + 0.5
    out = with_seed(lambda: rk.dropout(x, p, backend=backend))
    kept = out != 0
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept.sum().item() - n * (1 - p)) < 5 * sigma
    scale = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)  # 1/(1-p) rounded to fp32
    assert torch.equal(out[kept], x[kept] * scale.to(DEVICE))


@pytest.mark.parametrize("op", ["dropout", "dropout_add", "drop_path_add"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_outputs_bit_identical_across_backends(op, dtype):
    x, residual, bias = sample_inputs(shape=(8, 513), dtype=dtype, bias_shape=(513,))
    calls = {
        "dropout": lambda b: rk.dropout(x, 0.4, backend=b),
        "dropout_add": lambda b: rk.dropout_add(x, residual, 0.4, bias=bias, backend=b),
        "drop_path_add": lambda b: rk.drop_path_add(x, residual, 0.4, backend=b),
    }
    outputs = [with_seed(lambda: calls[op](b)) for b in BACKENDS]
    for backend, out in zip(BACKENDS[1:], outputs[1:]):
        assert torch.equal(out, outputs[0]), backend


@pytest.mark.skipif(_backend._C is None, reason="CUDA extension not built")
def test_mask_equals_cuda_host_code(backend):
    p = 0.3
    out = with_seed(lambda: rk.dropout(torch.ones(5000, device=DEVICE), p, backend=backend))
    seed = int(oracle_seed().item())
    host = _backend._C.keep_mask_host(seed, 0, 5000, drop_threshold(p))
    assert np.array_equal((out != 0).cpu().numpy(), host)


def test_deterministic_under_manual_seed_and_fresh_each_call(backend):
    x = torch.randn(4096, device=DEVICE)
    first = with_seed(lambda: rk.dropout(x, 0.5, backend=backend), seed=3)
    again = with_seed(lambda: rk.dropout(x, 0.5, backend=backend), seed=3)
    assert torch.equal(first, again)
    torch.manual_seed(3)
    a, b = rk.dropout(x, 0.5, backend=backend), rk.dropout(x, 0.5, backend=backend)
    assert not torch.equal(a != 0, b != 0)
    generator = torch.Generator(device=DEVICE).manual_seed(5)
    with_generator = rk.dropout(x, 0.5, generator=generator, backend=backend)
    generator.manual_seed(5)
    assert torch.equal(rk.dropout(x, 0.5, generator=generator, backend=backend), with_generator)


def test_no_mask_pattern_repeats_across_rows_or_blocks(backend):
    # 2 x BLOCK elements: distinct rows of 64, distinct Triton blocks, distinct Philox groups.
    mask = with_seed(lambda: rk.dropout(torch.ones(2 * BLOCK, device=DEVICE), 0.5, backend=backend)) != 0
    rows = mask.reshape(-1, 64).cpu()
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]
    assert not torch.equal(mask[:BLOCK], mask[BLOCK:])
    groups = mask.reshape(-1, 4).cpu().to(torch.int64) @ torch.tensor([1, 2, 4, 8])
    assert torch.unique(groups).numel() == 16  # all 16 patterns of four appear
    assert abs(mask.reshape(-1, 4).float().mean(0) - 0.5).max() < 0.05  # no word of a call is biased


def test_mask_follows_logical_index_not_strides(backend):
    x = torch.randn(40, 30, device=DEVICE)
    transposed = x.t()  # non-contiguous
    out = with_seed(lambda: rk.dropout(transposed, 0.5, backend=backend))
    expected = with_seed(lambda: rk.dropout(transposed.contiguous(), 0.5, backend=backend))
    assert torch.equal(out, expected)
    expanded = torch.randn(1, 30, device=DEVICE).expand(40, 30)  # stride 0
    out = with_seed(lambda: rk.dropout(expanded, 0.5, backend=backend))
    assert torch.equal(out, with_seed(lambda: rk.dropout(expanded.contiguous(), 0.5, backend=backend)))


# ----------------------------------------------------------------------------- autograd


def test_backward_uses_forward_mask(backend):
    x = torch.randn(3, 1000, device=DEVICE, requires_grad=True)
    out = with_seed(lambda: rk.dropout(x, 0.4, backend=backend))
    out.sum().backward()  # an expanded (stride 0) gradient reaches backward
    expected = (out != 0).float() * keep_scale(0.4)
    assert torch.equal(x.grad, expected)


# Bias gradients: fused one-pass path (bias size % 4 == 0, one or many rows per program, a
# 2-d bias) and the unfused fallback (37 columns).
@pytest.mark.parametrize("shape,bias_shape", [(SHAPE, (1000,)), ((300, 8), (8,)), ((2, 3, 8), (3, 8)),
                                              ((6, 37), (37,))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_add_gradients_match_float64_oracle(backend, dtype, shape, bias_shape):
    x, residual, bias = (t.requires_grad_() for t in sample_inputs(shape, dtype=dtype, bias_shape=bias_shape))
    grad_out = torch.randn(shape, device=DEVICE).to(dtype)
    out = with_seed(lambda: rk.dropout_add(x, residual, 0.3, bias=bias, backend=backend))
    grads = torch.autograd.grad(out, (x, residual, bias), grad_out)
    inputs64 = [t.detach().double().requires_grad_() for t in (x, residual, bias)]
    expected = reference.dropout(inputs64[0], oracle_seed(), 0.3, residual=inputs64[1], bias=inputs64[2],
                                 math_dtype=torch.float64)
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    for name, got, want in zip(("x", "residual", "bias"), grads, expected_grads):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.double(), want, **tolerance, msg=name)


def test_unfused_bias_gradient_sums_unrounded_values_as_the_torch_backend_does():
    # 37 columns take the two-pass fallback on the kernel backends; its bias gradient must be the
    # column sums of grad * keep / (1 - p) before rounding to bf16, bit for bit as on "torch".
    x, residual, bias = (t.requires_grad_() for t in sample_inputs((64, 37), torch.bfloat16, bias_shape=(37,)))
    grad_out = torch.randn(64, 37, device=DEVICE).bfloat16()
    grads = {}
    for backend in ("torch", "triton"):
        out = with_seed(lambda: rk.dropout_add(x, residual, 0.3, bias=bias, backend=backend))
        grads[backend] = torch.autograd.grad(out, (x, bias), grad_out)
    assert torch.equal(grads["triton"][0], grads["torch"][0])
    assert torch.equal(grads["triton"][1], grads["torch"][1])


def test_drop_path_add_gradients(backend):
    x = torch.randn(32, 9, device=DEVICE, requires_grad=True)
    residual = torch.randn(32, 9, device=DEVICE, requires_grad=True)
    out = with_seed(lambda: rk.drop_path_add(x, residual, 0.5, backend=backend))
    out.backward(torch.ones_like(out))
    kept = (out != residual).any(1, keepdim=True).float()
    assert torch.equal(x.grad, kept.expand(32, 9) * keep_scale(0.5))
    assert torch.equal(residual.grad, torch.ones_like(residual))


def torch_formula(op, x, residual, bias, p, seed):
    """The op written in torch's own terms, residual + F.dropout-like(x + bias) or residual + x * keep[b]
    / (1 - p), with the mask that `seed` gives: autograd differentiates it to any order by itself."""
    if op.startswith("drop_path"):
        keep = keep_mask(seed, torch.arange(x.shape[0], device=DEVICE), p).reshape((-1,) + (1,) * (x.dim() - 1))
    else:
        keep = keep_mask(seed, torch.arange(x.numel(), device=DEVICE), p).reshape(x.shape)
    value = x if bias is None else x + bias
    out = value * (keep.to(value.dtype) * (1.0 / (1.0 - p)))
    return out if residual is None else residual + out


# (op, shape, bias shape): the fused bias backward (8 and 3 x 4 columns) and its fallback (37 columns).
SECOND_ORDER_CASES = [("dropout", (6, 8), None), ("dropout_add", (6, 8), None), ("dropout_add", (6, 8), (8,)),
                      ("dropout_add", (2, 3, 4), (3, 4)), ("dropout_add", (6, 37), (37,)),
                      ("drop_path", (16, 5), None), ("drop_path_add", (16, 5), None)]


def call_op(op, x, residual, bias, p, backend):
    calls = {"dropout": lambda: rk.dropout(x, p, backend=backend),
             "dropout_add": lambda: rk.dropout_add(x, residual, p, bias=bias, backend=backend),
             "drop_path": lambda: rk.drop_path(x, p, backend=backend),
             "drop_path_add": lambda: rk.drop_path_add(x, residual, p, backend=backend)}
    return with_seed(calls[op])


@pytest.mark.parametrize("op,shape,bias_shape", SECOND_ORDER_CASES)
def test_second_order_gradients_match_torch_formula(backend, op, shape, bias_shape):
    x, residual, bias = sample_inputs(shape, bias_shape=bias_shape)
    residual = residual if op.endswith("_add") else None
    leaves = [t.requires_grad_() for t in (x, residual, bias) if t is not None]
    results = []
    for formula in (lambda: call_op(op, x, residual, bias, 0.4, backend),
                    lambda: torch_formula(op, x, residual, bias, 0.4, oracle_seed())):
        out = formula()
        # A gradient penalty: the first gradient depends on the inputs through grad_output = 2 out.
        first = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
        penalty = sum((g.square() * torch.linspace(0.5, 1.5, g.numel()).reshape(g.shape)).sum() for g in first)
        results.append(torch.autograd.grad(penalty, leaves, retain_graph=True))
        # The gradient of the first gradient with respect to grad_output (what gradgradcheck probes).
        grad_output = torch.randn(shape, generator=torch.Generator().manual_seed(7)).requires_grad_()
        first = torch.autograd.grad(out, leaves, grad_output, create_graph=True)
        results.append(torch.autograd.grad(sum((g * g.detach().sign()).sum() for g in first), grad_output))
    for got, want in zip(results[0] + results[1], results[2] + results[3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- float64


@pytest.mark.parametrize("op,shape,bias_shape", SECOND_ORDER_CASES)
def test_float64_computes_in_fp64(backend, op, shape, bias_shape):
    x, residual, bias = (None if t is None else t.double() for t in sample_inputs(shape, bias_shape=bias_shape))
    residual = residual if op.endswith("_add") else None
    out = call_op(op, x, residual, bias, 0.4, backend)
    assert out.dtype == torch.float64
    # fp64 math, scale 1/(1-p) in full: torch's float64 formula to the last bit or so.
    torch.testing.assert_close(out, torch_formula(op, x, residual, bias, 0.4, oracle_seed()), rtol=1e-15, atol=1e-15)


# Tiny shapes: gradcheck perturbs every element. The fused bias backward (4 and 2 x 4 columns) and its fallback (3).
GRADCHECK_CASES = [("dropout", (3, 4), None), ("dropout_add", (3, 4), (4,)), ("dropout_add", (2, 2, 4), (2, 4)),
                   ("dropout_add", (4, 3), (3,)), ("drop_path", (6, 2), None), ("drop_path_add", (6, 2), None)]


@pytest.mark.parametrize("op,shape,bias_shape", GRADCHECK_CASES)
def test_float64_gradcheck_and_gradgradcheck(backend, op, shape, bias_shape):
    x, residual, bias = (None if t is None else t.double() for t in sample_inputs(shape, bias_shape=bias_shape))
    inputs = [t.requires_grad_() for t in (x, residual if op.endswith("_add") else None, bias) if t is not None]

    def fn(*tensors):  # the same seed, so the same mask, on every call
        tensors = list(tensors)
        x = tensors.pop(0)
        residual = tensors.pop(0) if op.endswith("_add") else None
        return call_op(op, x, residual, tensors.pop(0) if tensors else None, 0.4, backend)

    # fast_mode: a random projection of the Jacobian (the interpreter is slow); the torch backend checks all.
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=backend != "torch")
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=backend != "torch")


def test_autograd_saves_only_the_seed(backend):
    saved_bytes = []

    def pack(tensor):
        saved_bytes.append(tensor.numel() * tensor.element_size())
        return tensor

    x = torch.randn(64, 64, device=DEVICE, requires_grad=True)
    residual = torch.randn(64, 64, device=DEVICE, requires_grad=True)
    bias = torch.randn(64, device=DEVICE, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = [rk.dropout(x, 0.5, backend=backend), rk.dropout_add(x, residual, 0.5, bias=bias, backend=backend),
                rk.drop_path_add(x, residual, 0.5, backend=backend)]
    assert len(saved_bytes) == 3 and max(saved_bytes) <= 8
    sum(o.sum() for o in outs).backward()


# ----------------------------------------------------------------------------- in place


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_inplace_writes_into_x_and_returns_it(backend, dtype):
    x, _, _ = sample_inputs(dtype=dtype)
    original = x.clone()
    storage = x.data_ptr()
    out = with_seed(lambda: rk.dropout(x, 0.3, inplace=True, backend=backend))
    assert out is x and x.data_ptr() == storage
    expected = torch_formula("dropout", original.double(), None, None, 0.3, oracle_seed())
    torch.testing.assert_close(x.double(), expected, **TOLERANCE.get(dtype, dict(rtol=1e-15, atol=1e-15)))
    assert torch.equal(x, with_seed(lambda: rk.dropout(original, 0.3, backend=backend)))  # the out-of-place mask


def test_inplace_on_a_non_contiguous_view_follows_the_logical_index(backend):
    base = torch.randn(30, 40, device=DEVICE)
    expected = with_seed(lambda: rk.dropout(base.t(), 0.5, backend=backend))
    view = base.t()
    assert with_seed(lambda: rk.dropout(view, 0.5, inplace=True, backend=backend)) is view
    assert torch.equal(base.t(), expected)


def test_inplace_gradients_like_torch(backend):
    leaf = torch.randn(6, 40, device=DEVICE, requires_grad=True)
    hidden = leaf * 2.0
    out = with_seed(lambda: rk.dropout(hidden, 0.4, inplace=True, backend=backend))
    assert out is hidden
    (grad,) = torch.autograd.grad(out.square().sum(), leaf, create_graph=True)
    hidden64 = leaf.detach().double() * 2.0
    expected = torch_formula("dropout", hidden64, None, None, 0.4, oracle_seed())
    expected_grad = 2.0 * 2.0 * expected * torch_formula("dropout", torch.ones_like(hidden64), None, None, 0.4,
                                                          oracle_seed())
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-6, atol=1e-6)
    (second,) = torch.autograd.grad(grad.sum(), leaf)  # second order through the in-place op
    keep_scaled = torch_formula("dropout", torch.ones_like(hidden64), None, None, 0.4, oracle_seed())
    torch.testing.assert_close(second.double(), 8.0 * keep_scaled.square(), rtol=1e-6, atol=1e-6)
    # In place on a view of a non-leaf, as torch allows.
    base = leaf * 1.0
    rk.dropout(base[2:], 0.4, inplace=True, backend=backend)
    (grad,) = torch.autograd.grad(base.sum(), leaf)
    assert torch.equal(grad[:2], torch.ones(2, 40, device=DEVICE))
    assert torch.equal(grad[2:] != 0, base[2:].detach() != 0)


def test_inplace_saves_only_the_seed(backend):
    saved_bytes = []
    leaf = torch.randn(64, 64, device=DEVICE, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_bytes.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        rk.dropout(leaf * 1.0, 0.5, inplace=True, backend=backend)
    assert max(saved_bytes) <= 8  # the seed (the multiply saves a Python scalar)


def test_inplace_refuses_a_leaf_that_requires_grad_like_torch(backend):
    leaf = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.nn.functional.dropout(leaf, 0.5, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        rk.dropout(leaf, 0.5, inplace=True, backend=backend)
    assert torch.equal(leaf.detach(), before)  # refused before anything was written
    with torch.no_grad():  # as in torch, allowed without autograd
        assert rk.dropout(leaf, 0.5, inplace=True, backend=backend) is leaf
    assert not torch.equal(leaf.detach(), before)
    assert rk.dropout(leaf, 0.5, training=False, inplace=True, backend=backend) is leaf  # nothing to do


def test_inplace_opcheck(backend):
    x = torch.randn(4, 24, device=DEVICE)
    seed = torch.tensor([42], device=DEVICE)
    torch.library.opcheck(dropout_inplace_op.custom_op, (x, seed, 0.3, backend))
    torch.library.opcheck(dropout_inplace_op.custom_op, (x.t(), seed, 0.3, backend))  # non-contiguous


def test_inplace_compiles_fullgraph(backend):
    compiled = torch.compile(lambda x: rk.dropout(x * 2.0, 0.3, inplace=True, backend=backend).sum(), fullgraph=True)
    for rows in (3, 5, 8):  # new sizes
        leaf = torch.randn(rows, 16, device=DEVICE, requires_grad=True)
        loss = with_seed(lambda: compiled(leaf))
        loss.backward()
        eager_leaf = leaf.detach().clone().requires_grad_()
        eager = with_seed(lambda: rk.dropout(eager_leaf * 2.0, 0.3, inplace=True, backend=backend).sum())
        eager.backward()
        torch.testing.assert_close(loss, eager)
        assert torch.equal(leaf.grad, eager_leaf.grad)


# ----------------------------------------------------------------------------- edge cases


def test_eval_and_zero_p_return_x_itself(backend):
    x = torch.randn(10, device=DEVICE)
    assert rk.dropout(x, 0.5, training=False, backend=backend) is x
    assert rk.dropout(x, 0.0, backend=backend) is x
    assert rk.drop_path(x, 0.5, training=False, backend=backend) is x
    residual = torch.randn(10, device=DEVICE)
    torch.testing.assert_close(rk.dropout_add(x, residual, 0.5, training=False, backend=backend), x + residual)
    torch.testing.assert_close(rk.drop_path_add(x, residual, 0.0, backend=backend), x + residual)


def test_p_one_gives_zeros_without_nan(backend):
    x = torch.randn(5, 7, device=DEVICE, requires_grad=True)
    out = rk.dropout(x, 1.0, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    residual = torch.randn(5, 7, device=DEVICE)
    assert torch.equal(rk.drop_path_add(x.detach(), residual, 1.0, backend=backend), residual)


def test_nan_propagates_like_torch(backend):
    x = torch.full((4096,), float("nan"), device=DEVICE)
    assert torch.isnan(rk.dropout(x, 0.5, backend=backend)).all()  # torch multiplies dropped NaN by 0
    assert torch.isnan(torch.nn.functional.dropout(x, 0.5)).all()


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0)])
def test_empty_tensors(backend, shape):
    x = torch.empty(shape, device=DEVICE, requires_grad=True)
    residual = torch.empty(shape, device=DEVICE)
    assert rk.dropout(x, 0.5, backend=backend).shape == shape
    assert rk.dropout_add(x, residual, 0.5, backend=backend).shape == shape
    out = rk.drop_path_add(x, residual, 0.5, backend=backend)
    assert out.shape == shape
    out.sum().backward()
    bias = torch.zeros(shape[-1:], device=DEVICE, requires_grad=True)
    first = torch.autograd.grad(rk.dropout_add(x, residual, 0.5, bias=bias, backend=backend).square().sum(),
                                (x, bias), create_graph=True)
    torch.autograd.grad(sum(g.sum() for g in first), (x, bias), allow_unused=True)  # second order on nothing


# ----------------------------------------------------------------------------- bad input


def test_bad_p_raises_value_error():
    x = torch.randn(4, device=DEVICE)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            rk.dropout(x, p)
    with pytest.raises(TypeError, match="p must be a Python float"):
        rk.dropout(x, torch.tensor(0.5))


def test_non_floating_dtype_raises_type_error():
    with pytest.raises(TypeError, match="float32, float16, bfloat16, float64"):
        rk.dropout(torch.arange(4, device=DEVICE), 0.5)
    with pytest.raises(TypeError, match="residual must be float32, float16, bfloat16, float64"):
        rk.drop_path_add(torch.ones(4, device=DEVICE), torch.ones(4, dtype=torch.complex64, device=DEVICE), 0.5)


def test_shape_mismatch_names_the_shapes():
    x = torch.randn(4, 6, device=DEVICE)
    with pytest.raises(ValueError, match=r"residual has shape \(4, 5\) but x has \(4, 6\)"):
        rk.dropout_add(x, torch.randn(4, 5, device=DEVICE), 0.5)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\).*\(4, 6\)"):
        rk.dropout_add(x, x, 0.5, bias=torch.randn(4, device=DEVICE))
    with pytest.raises(ValueError, match=r"residual has shape"):
        rk.drop_path_add(x, torch.randn(6, 4, device=DEVICE), 0.5)


def test_device_and_dtype_mismatch():
    x = torch.randn(4, 6, device=DEVICE)
    with pytest.raises(ValueError, match="residual is on meta"):
        rk.dropout_add(x, torch.empty(4, 6, device="meta"), 0.5)


def test_unavailable_backend_says_why(monkeypatch):
    x = torch.randn(4)
    with pytest.raises(ValueError, match="unknown backend"):
        rk.dropout(x, 0.5, backend="tpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: .*CUDA tensors|not built"):
        rk.dropout(x, 0.5, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="Triton kernels need a CUDA tensor"):
        rk.dropout(x, 0.5, backend="triton")


def test_cuda_launches_go_to_their_tensors_device_and_its_current_stream(monkeypatch):
    """A CUDA launch goes to the current device: a _C launcher for a tensor on another device runs
    with that device made current (and restored), on that device's current stream. torch's CUDA
    calls are faked here (no GPU): the current device, the raw stream per device, torch.cuda.device."""
    current = [0]
    guards = []

    class DeviceGuard:  # torch.cuda.device's part: the index is current inside the block
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            guards.append(self.index)
            self.previous, current[0] = current[0], self.index

        def __exit__(self, *exception):
            current[0] = self.previous

    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: current[0], raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 1000 + index, raising=False)
    monkeypatch.setattr(torch.cuda, "device", DeviceGuard)
    launches = []

    def launcher(**arguments):
        launches.append((arguments, current[0]))
        return "launched"

    assert _backend.launch_cuda(launcher, torch.device("cuda", 1), n=3) == "launched"
    assert launches == [(dict(n=3, stream=1001), 1)] and guards == [1] and current[0] == 0
    launches.clear()
    current[0] = 1  # already current: no guard
    _backend.launch_cuda(launcher, torch.device("cuda", 1), n=4)
    assert launches == [(dict(n=4, stream=1001), 1)] and guards == [1]


def test_environment_variable_chooses_the_backend(monkeypatch):
    assert _backend.resolve("dropout", torch.device("cpu")) == "torch"
    assert _backend.resolve("dropout", torch.device("cuda")) == _backend.CUDA_DEFAULTS["dropout"]
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", "triton")
    assert _backend.resolve("dropout", torch.device("cpu")) == "triton"
    # Read anew on every call (from os.environ's own dict): a change, an empty value, a deletion.
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", "torch")
    assert _backend.resolve("dropout", torch.device("cuda")) == "torch"
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", "")
    assert _backend.resolve("dropout", torch.device("cuda")) == _backend.CUDA_DEFAULTS["dropout"]
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match="no-such-backend"):
        _backend.resolve("dropout", torch.device("cpu"))
    monkeypatch.delenv("RECIPE_KERNELS_BACKEND")
    assert _backend.resolve("dropout", torch.device("cpu")) == "torch"
    monkeypatch.setattr(_backend, "_ENVIRON_DATA", None)  # an os.environ without its own dict: the plain get
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", "triton")
    assert _backend.resolve("dropout", torch.device("cpu")) == "triton"


# ----------------------------------------------------------------------------- registration


@pytest.mark.parametrize("with_extras", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])  # bf16 x with fp32 residual and bias: mixed
def test_opcheck(backend, with_extras, x_dtype):
    x, residual, bias = sample_inputs(shape=(4, 24), bias_shape=(24,))
    x = x.to(x_dtype).requires_grad_()
    residual.requires_grad_(), bias.requires_grad_()
    residual, bias = (residual, bias) if with_extras else (None, None)
    out_dtype = torch.float32 if with_extras else x_dtype
    seed = torch.tensor([42], device=DEVICE)
    torch.library.opcheck(dropout_op.custom_op, (x, residual, bias, seed, 0.3, out_dtype, backend))
    torch.library.opcheck(drop_path_op.custom_op, (x, residual, seed, 0.3, out_dtype, backend))
    torch.library.opcheck(dropout_bias_backward_op.custom_op,
                          (x, seed, 0.3, 24 if with_extras else 6, torch.float16, backend))


def test_compile_fullgraph(backend):
    def block(x, residual, bias):
        hidden = rk.dropout_add(x.bfloat16(), residual, 0.1, bias=bias, backend=backend)  # fp32 stream, bf16 branch
        hidden = rk.drop_path_add(rk.dropout(hidden, 0.2, backend=backend), hidden, 0.3, backend=backend)
        return hidden.square().mean()

    compiled = torch.compile(block, fullgraph=True)
    x, residual, bias = (t.requires_grad_() for t in sample_inputs(shape=(8, 32), bias_shape=(32,)))
    compiled(x, residual, bias).backward()
    assert x.grad is not None and bias.grad.shape == (32,)
    with_seed(lambda: compiled(x, residual, bias))  # runs again without recompiling


# ----------------------------------------------------------------------------- modules and rates


def test_modules(backend):
    x = torch.randn(16, 8, device=DEVICE)
    dropout, drop_path = rk.nn.Dropout(0.5), rk.nn.DropPath(0.5)
    assert dropout(x).shape == x.shape and not torch.equal(dropout(x), x)
    assert drop_path(x).shape == x.shape
    dropout.eval(), drop_path.eval()
    assert dropout(x) is x and drop_path(x) is x
    with pytest.raises(ValueError):
        rk.nn.Dropout(1.5)


def test_dropout_module_honours_inplace():
    x = torch.randn(16, 8, device=DEVICE)
    original = x.clone()
    module = rk.nn.Dropout(0.5, inplace=True)
    assert repr(module) == repr(torch.nn.Dropout(0.5, inplace=True)) == "Dropout(p=0.5, inplace=True)"
    out = with_seed(lambda: module(x))
    assert out is x and torch.equal(x, with_seed(lambda: rk.dropout(original, 0.5)))


def test_drop_path_rates_linear_rule():
    rates = rk.drop_path_rates(4, 0.2)
    assert rates == pytest.approx([0.05, 0.1, 0.15, 0.2])
    # the lecture's survival probability p_l = 1 - l/L (1 - p_L), with p_L = 0.8
    assert [1 - r for r in rates] == pytest.approx([1 - l / 4 * (1 - 0.8) for l in range(1, 5)])
    assert rk.drop_path_rates(0, 0.1) == []
    with pytest.raises(ValueError):
        rk.drop_path_rates(4, 1.5)


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU with 10 GB free")
def test_more_than_2_to_31_elements(backend):
    if backend == "torch":
        pytest.skip("the torch reference materialises int64 indices: 40 GB")
    n = (1 << 31) + 4099
    x = torch.ones(n, device=DEVICE, dtype=torch.bfloat16)
    out = with_seed(lambda: rk.dropout(x, 0.5, backend=backend))
    tail = torch.arange(n - 5000, n, device=DEVICE)  # indices past 2^31: 64-bit counters and offsets
    assert torch.equal(out[-5000:] != 0, keep_mask(oracle_seed(), tail, 0.5))


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")
def test_no_host_sync(backend):
    if backend == "torch":
        pytest.skip("the reference is not a hot path")
    x = torch.randn(4096, device=DEVICE, requires_grad=True)
    residual = torch.randn(4096, device=DEVICE)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = rk.dropout_add(rk.dropout(x, 0.3, backend=backend), residual, 0.2, backend=backend)
        rk.drop_path_add(out.reshape(64, 64), residual.reshape(64, 64), 0.5, backend=backend).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")
def test_cuda_graph_replays_draw_fresh_masks(backend):
    if backend == "torch":
        pytest.skip("the reference's gather is not what this checks")
    x = torch.ones(1 << 14, device=DEVICE)
    residual = torch.zeros(64, 256, device=DEVICE)
    rk.dropout(x, 0.5, backend=backend)  # compile the kernel outside capture
    rk.drop_path_add(residual, residual, 0.5, backend=backend)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = rk.dropout(x, 0.5, backend=backend)
        rows = rk.drop_path_add(x.reshape(64, 256), residual, 0.5, backend=backend)
    graph.replay()
    first, first_rows = out.clone(), rows.clone()
    graph.replay()
    assert not torch.equal(first, out)
    assert not torch.equal(first_rows, rows)
    assert abs((out != 0).float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("with_bias", [False, True])
def test_64_bit_indices_match_32_bit(monkeypatch, with_bias):
    """Tensors past 2^31 elements take int64 indices and counters; too big to test here, the same
    kernels forced to int64 on a small tensor must give the int32 path's bits."""
    dropout_module = sys.modules["recipe_kernels.dropout"]  # the package exports a function of that name
    x = torch.randn(3, 1000, device=DEVICE)
    residual = torch.randn(3, 1000, device=DEVICE)
    bias = torch.randn(1000, device=DEVICE) if with_bias else None
    grad = torch.randn(3, 1000, device=DEVICE)
    seed = torch.tensor([12345], dtype=torch.int64, device=DEVICE)

    def run():
        out = dropout_module._dropout_triton(x, residual, bias, seed, 0.3, torch.float32)
        return out, dropout_module._dropout_bias_backward_triton(grad, seed, 0.3, 1000, torch.float32)

    out32, (grad_x32, grad_bias32) = run()
    monkeypatch.setattr(dropout_module, "_index_dtype", lambda numel: torch.int64)
    out64, (grad_x64, grad_bias64) = run()
    assert torch.equal(out32, out64) and torch.equal(grad_x32, grad_x64) and torch.equal(grad_bias32, grad_bias64)
