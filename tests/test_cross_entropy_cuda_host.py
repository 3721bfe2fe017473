"""The CUDA cross-entropy gradient scaling kernel's own code, run on the CPU through _C's *_host entry point.

scale_gradient's body is a __host__ __device__ function of (thread, threads); cross_entropy_scale_grad_host
runs it for every thread of the launcher's grid. It must equal grad * grad_output computed in fp32 and
rounded once to grad's dtype, for 16-byte vectors (aligned storage) and one element at a time (a storage
offset of one element), rows and sample planes that straddle a vector, and small grids that stride.
"""
import pytest
import torch

from recipe_kernels import _backend

pytestmark = pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C) and (N, C, inner): classes fewer than a vector's elements, rows that straddle vectors, a tail.
SHAPES = [(5, 37), (7, 3), (3, 5, 7), (2, 16, 1), (4, 9, 3)]


def scale_host(grad, factor, per_row, max_blocks):
    n, num_classes = grad.numel(), grad.shape[1]
    _backend._C.cross_entropy_scale_grad_host(grad=grad.data_ptr(), factor=factor.data_ptr(), n=n,
                                              num_classes=num_classes, inner_size=n // (grad.shape[0] * num_classes),
                                              per_row=per_row, max_blocks=max_blocks,
                                              dtype=_backend.CUDA_DTYPE_CODES[grad.dtype])


def make_grad(shape, dtype, offset, generator):
    storage = torch.randn(torch.Size(shape).numel() + offset, generator=generator).to(dtype)
    return storage[offset:].view(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("max_blocks", [1, 3])
def test_per_row_factors_equal_fp32_product(dtype, shape, offset, max_blocks):
    generator = torch.Generator().manual_seed(len(shape) * 10 + offset)
    grad = make_grad(shape, dtype, offset, generator)
    rows = (shape[0],) + tuple(shape[2:])
    factor = torch.randn(rows, generator=generator)
    factor.view(-1)[::3] = 1.0  # rows left as they are
    expected = (grad.float() * factor.unsqueeze(1)).to(dtype)
    scale_host(grad, factor.contiguous(), True, max_blocks)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("value", [0.37, 1.0, -2.5])
def test_scalar_factor_equals_fp32_product(dtype, offset, value):
    generator = torch.Generator().manual_seed(offset)
    grad = make_grad((6, 101), dtype, offset, generator)
    expected = (grad.float() * value).to(dtype)
    scale_host(grad, torch.tensor([value]), False, 2)
    assert torch.equal(grad, expected)
