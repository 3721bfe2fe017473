"""Property-based tests (hypothesis): the dropout family against its float64 oracle, across
random shapes, dtypes, strides, probabilities and backends."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recipe_kernels as rk
from recipe_kernels import reference
from recipe_kernels._philox import draw_seed

from conftest import BACKENDS, DEVICE

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

shapes = st.lists(st.integers(0, 23), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from(list(TOLERANCE))
probabilities = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.01, 0.99))
layouts = st.sampled_from(["contiguous", "transposed", "strided"])


def make(shape, dtype, layout, seed):
    """A tensor of `shape` in the given memory layout (logical values do not depend on the layout)."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        return torch.randn(shape[::-1], generator=generator).to(DEVICE, dtype).transpose(0, -1)
    if layout == "strided":
        return torch.randn(shape + (2,), generator=generator).to(DEVICE, dtype)[..., 0]
    return torch.randn(shape, generator=generator).to(DEVICE, dtype)


def close(actual, expected, dtype):
    tolerance = TOLERANCE[dtype] * (1 + expected.abs())
    return bool(((actual.double() - expected).abs() <= tolerance).all())


@SETTINGS
@given(shape=shapes, dtype=dtypes, residual_dtype=dtypes, p=probabilities, layout=layouts, with_bias=st.booleans(),
       backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31))
def test_dropout_add_matches_oracle(shape, dtype, residual_dtype, p, layout, with_bias, backend, seed):
    x, residual = make(shape, dtype, layout, seed), make(shape, residual_dtype, "contiguous", seed + 1)
    bias = make(shape[-1:], dtype, "contiguous", seed + 2) if with_bias else None
    torch.manual_seed(seed)
    out = rk.dropout_add(x, residual, p, bias=bias, backend=backend)
    torch.manual_seed(seed)
    expected = reference.dropout(x.double(), draw_seed(DEVICE) if p > 0 else torch.zeros(1, dtype=torch.int64),
                                 p, residual=residual.double(), bias=None if bias is None else bias.double(),
                                 math_dtype=torch.float64)
    promoted = torch.promote_types(dtype, residual_dtype)  # mixed residual streams follow torch's promotion
    assert out.shape == x.shape and out.dtype == promoted
    assert close(out, expected, promoted)


@SETTINGS
@given(shape=shapes, dtype=dtypes, p=probabilities, layout=layouts, seed=st.integers(0, 2**31))
def test_backends_agree_bit_for_bit(shape, dtype, p, layout, seed):
    x = make(shape, dtype, layout, seed)
    outputs = []
    for backend in BACKENDS:
        torch.manual_seed(seed)
        outputs.append((rk.dropout(x, p, backend=backend),
                        rk.drop_path_add(x, x, p, backend=backend) if x.dim() > 0 else None))
    for dropout_out, drop_path_out in outputs[1:]:
        assert torch.equal(dropout_out, outputs[0][0])
        assert torch.equal(drop_path_out, outputs[0][1])


@SETTINGS
@given(shape=shapes, p=st.floats(0.05, 0.95), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31))
def test_gradient_is_the_forward_mask_times_scale(shape, p, backend, seed):
    x = make(shape, torch.float32, "contiguous", seed).requires_grad_()
    x.data.abs_().add_(0.5)  # no zeros, so a zero output means dropped
    torch.manual_seed(seed)
    out = rk.dropout(x, p, backend=backend)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(grad, (out != 0).float() * scale.to(DEVICE))
