"""The CUDA dropout kernels' own code, run on the CPU through _C's *_host entry points.

Each kernel body is a __host__ __device__ function; the host entry points run it for every
thread of a small emulated grid on CPU tensors. Small grids make the grid-stride loops, the
bias-column stepping and the row blocking do real work; odd storage offsets turn the vector
loads off. The results must equal the torch backend bit for bit.
"""
import pytest
import torch

import recipe_kernels  # noqa: F401  (registers the ops)
from recipe_kernels import _backend
from recipe_kernels._philox import drop_threshold, keep_scale
from recipe_kernels.dropout import (_bias_backward_row_blocks, _math_dtype, _dropout_bias_backward_cuda_arguments,
                                    _dropout_cuda_arguments, _drop_path_cuda_arguments)

pytestmark = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = torch.tensor([0x5DEECE66D - (1 << 40)])


def randn(*shape, dtype, offset=0, seed=0):
    """A CPU tensor whose data starts `offset` elements into its storage (offset 1: unaligned)."""
    flat = torch.randn(offset + torch.Size(shape).numel(), generator=torch.Generator().manual_seed(seed)).to(dtype)
    return flat[offset:].view(shape)


# (x, residual, bias, out) dtypes: one dtype throughout, and mixed residual streams (each input read in
# its own dtype, the result rounded once to out's).
DTYPE_SETS = [(d, d, d, d) for d in DTYPES] + [
    (torch.bfloat16, torch.float32, torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16, torch.float32, torch.float32),
    (torch.float32, torch.float16, torch.bfloat16, torch.bfloat16),
    # float64 ops compute in fp64 (and so does anything that touches a float64 tensor).
    (torch.float64, torch.float64, torch.float64, torch.float64),
    (torch.float32, torch.float64, torch.bfloat16, torch.float64),
    (torch.float64, None, None, torch.bfloat16),
]


@pytest.mark.parametrize("dtypes", DTYPE_SETS)
@pytest.mark.parametrize("with_residual,bias_size", [(False, 0), (True, 0), (True, 12), (False, 7), (True, 1000)])
@pytest.mark.parametrize("blocks,offset", [(1, 0), (2, 1), (64, 0)])
def test_dropout_kernel_code_equals_torch_backend(dtypes, with_residual, bias_size, blocks, offset):
    x_dtype, residual_dtype, bias_dtype, out_dtype = dtypes
    n = 3 * 1000 + 3  # a partial Philox group at the end; more groups than one block's threads
    if bias_size:
        n = (n // bias_size) * bias_size
    x = randn(n, dtype=x_dtype, offset=offset)
    residual = randn(n, dtype=residual_dtype or x_dtype, offset=offset, seed=1) if with_residual else None
    bias = randn(bias_size, dtype=bias_dtype or x_dtype, seed=2) if bias_size else None
    out = torch.empty(n, dtype=out_dtype)
    _backend._C.dropout_host(**_dropout_cuda_arguments(x, residual, bias, SEED, out, 0.3), blocks=blocks)
    x2 = x.reshape(-1, bias_size) if bias_size else x
    expected = torch.ops.recipe_kernels.dropout(x2, None if residual is None else residual.reshape(x2.shape),
                                                bias, SEED, 0.3, out_dtype, "torch").reshape(-1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtypes", DTYPE_SETS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_drop_path_kernel_code_equals_torch_backend(dtypes, with_residual):
    x_dtype, residual_dtype, _, out_dtype = dtypes
    rows, row_size = 33, 2048 + 5  # two blocks per row, the second partial
    x = randn(rows, row_size, dtype=x_dtype)
    residual = randn(rows, row_size, dtype=residual_dtype or x_dtype, seed=1) if with_residual else None
    out = torch.empty(rows, row_size, dtype=out_dtype)
    _backend._C.drop_path_host(**_drop_path_cuda_arguments(x, residual, SEED, out, 0.5))
    assert torch.equal(out, torch.ops.recipe_kernels.drop_path(x, residual, SEED, 0.5, out_dtype, "torch"))


@pytest.mark.parametrize("grad_dtype,grad_x_dtype", [(d, d) for d in DTYPES + [torch.float64]] + [
    (torch.float32, torch.bfloat16), (torch.float64, torch.float32)])
@pytest.mark.parametrize("rows,columns,offset", [(5, 8, 0), (700, 12, 1), (3, 1032, 0)])
def test_bias_backward_kernel_code_equals_torch_backend(grad_dtype, grad_x_dtype, rows, columns, offset):
    grad = randn(rows, columns, dtype=grad_dtype, offset=offset)
    row_blocks, rows_per_block = _bias_backward_row_blocks(rows, columns)
    grad_x = torch.empty(rows, columns, dtype=grad_x_dtype)
    partial = torch.empty(row_blocks, columns, dtype=_math_dtype(grad, grad_x))  # as the op allocates it
    _backend._C.dropout_bias_backward_host(**_dropout_bias_backward_cuda_arguments(grad, SEED, grad_x, partial,
                                                                                   rows_per_block, 0.2))
    expected_grad_x, expected_bias = torch.ops.recipe_kernels.dropout_bias_backward(grad, SEED, 0.2, columns, grad_x_dtype,
                                                                                    "torch")
    assert torch.equal(grad_x, expected_grad_x)
    torch.testing.assert_close(partial.sum(0), expected_bias, rtol=1e-5, atol=1e-5)


def test_unknown_dtype_code_raises():
    x = torch.zeros(8)
    with pytest.raises(ValueError, match="unknown dtype code 9"):
        _backend._C.dropout_host(**{**_dropout_cuda_arguments(x, None, None, SEED, x.clone(), 0.3), "x_dtype": 9},
                                 blocks=1)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("offset", [0, 1])  # aligned vectors, then element by element
def test_dropout_kernel_code_in_place(dtype, offset):
    # rk.dropout(inplace=True) hands the kernel x as its own output.
    x = randn(1003, dtype=dtype, offset=offset)
    expected = torch.ops.recipe_kernels.dropout(x, None, None, SEED, 0.3, dtype, "torch")
    _backend._C.dropout_host(**_dropout_cuda_arguments(x, None, None, SEED, x, 0.3), blocks=2)
    assert torch.equal(x, expected)
