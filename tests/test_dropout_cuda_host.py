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
from recipe_kernels.dropout import _bias_backward_row_blocks

pytestmark = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = torch.tensor([0x5DEECE66D - (1 << 40)])


def pointer(tensor):
    return 0 if tensor is None else tensor.data_ptr()


def randn(*shape, dtype, offset=0, seed=0):
    """A CPU tensor whose data starts `offset` elements into its storage (offset 1: unaligned)."""
    flat = torch.randn(offset + torch.Size(shape).numel(), generator=torch.Generator().manual_seed(seed)).to(dtype)
    return flat[offset:].view(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual,bias_size", [(False, 0), (True, 0), (True, 12), (False, 7), (True, 1000)])
@pytest.mark.parametrize("blocks,offset", [(1, 0), (2, 1), (64, 0)])
def test_dropout_kernel_code_equals_torch_backend(dtype, with_residual, bias_size, blocks, offset):
    n = 3 * 1000 + 3  # a partial Philox group at the end; more groups than one block's threads
    x = randn(n, dtype=dtype, offset=offset)
    residual = randn(n, dtype=dtype, offset=offset, seed=1) if with_residual else None
    if bias_size:
        n = (n // bias_size) * bias_size
        x = x[:n]
        residual = residual[:n] if residual is not None else None
    bias = randn(bias_size, dtype=dtype, seed=2) if bias_size else None
    out = torch.empty_like(x)
    _backend._C.dropout_host(pointer(x), pointer(residual), pointer(bias), SEED.data_ptr(), out.data_ptr(), n,
                             max(bias_size, 1), drop_threshold(0.3), keep_scale(0.3),
                             _backend.CUDA_DTYPE_CODES[dtype], blocks)
    x2 = x.reshape(-1, bias_size) if bias_size else x
    expected = torch.ops.recipe_kernels.dropout(x2, None if residual is None else residual.reshape(x2.shape),
                                                bias, SEED, 0.3, "torch").reshape(-1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_drop_path_kernel_code_equals_torch_backend(dtype, with_residual):
    rows, row_size = 33, 2048 + 5  # two blocks per row, the second partial
    x = randn(rows, row_size, dtype=dtype)
    residual = randn(rows, row_size, dtype=dtype, seed=1) if with_residual else None
    out = torch.empty_like(x)
    _backend._C.drop_path_host(pointer(x), pointer(residual), SEED.data_ptr(), out.data_ptr(), rows, row_size,
                               drop_threshold(0.5), keep_scale(0.5), _backend.CUDA_DTYPE_CODES[dtype])
    assert torch.equal(out, torch.ops.recipe_kernels.drop_path(x, residual, SEED, 0.5, "torch"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,columns,offset", [(5, 8, 0), (700, 12, 1), (3, 1032, 0)])
def test_bias_backward_kernel_code_equals_torch_backend(dtype, rows, columns, offset):
    grad = randn(rows, columns, dtype=dtype, offset=offset)
    row_blocks, rows_per_block = _bias_backward_row_blocks(rows, columns)
    grad_x = torch.empty_like(grad)
    partial = torch.empty(row_blocks, columns)
    _backend._C.dropout_bias_backward_host(grad.data_ptr(), SEED.data_ptr(), grad_x.data_ptr(), partial.data_ptr(),
                                           rows, columns, rows_per_block, row_blocks, drop_threshold(0.2),
                                           keep_scale(0.2), _backend.CUDA_DTYPE_CODES[dtype])
    expected_grad_x, expected_bias = torch.ops.recipe_kernels.dropout_bias_backward(grad, SEED, 0.2, columns, "torch")
    assert torch.equal(grad_x, expected_grad_x)
    torch.testing.assert_close(partial.sum(0), expected_bias, rtol=1e-5, atol=1e-5)
