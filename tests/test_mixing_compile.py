"""torch.compile(fullgraph=True) of every mixing op survives new sizes of every dimension.

A second distinct size makes dynamo treat that dimension as symbolic; every sampling step
must then trace with symbolic N, C, H and W (torch.rand of a symbolic size and
torch._sample_dirichlet did not). That tracing (dynamo, then AOT autograd over fake tensors)
is the same whatever compiles the graph afterwards, so these tests use the "aot_eager"
backend: inductor's C++ build of the sampling graph takes minutes on the CPU machines.
test_mixing.py::test_compile_fullgraph_has_no_graph_breaks and test_training_step.py compile
with inductor. Compiled results equal eager ones drawn from the same seed.
"""
import pytest
import torch

import recipe_kernels as rk

from conftest import DEVICE

# Three batch sizes (even, odd, prime), then new C, H and W (H != W, odd sizes); no size is 1 (dynamo
# specializes sizes 0 and 1, a recompile, not a failure). Small enough for the Triton interpreter.
SHAPES = [(4, 3, 8, 8), (5, 3, 8, 8), (7, 3, 8, 8), (6, 2, 5, 9), (3, 4, 7, 6)]
NUM_CLASSES = [10, 10, 17, 3, 1000]
COMPILER = "aot_eager"


def every_op(backend):
    """fn(x, y) calling every sampling op once, returning their tensors (MixedTargets spelled out).

    One function for all ops: each compile of the Philox sampling takes seconds on the CPU.
    """
    module = rk.nn.CutMixUp(prob=0.8)  # its own default backend

    def run(x, y):
        outputs = []
        for x_mixed, mixed in (rk.cutmix(x, y, per_sample=True, backend=backend),
                               rk.mixup(x, y, per_sample=True, backend=backend),
                               rk.cutmix_or_mixup(x, y, prob=0.8, backend=backend),
                               module(x, y)):
            outputs += [x_mixed, mixed.y_a, mixed.y_b, mixed.lam]
        outputs.append(rk.random_erasing(x, p=0.7, backend=backend))
        outputs.append(rk.random_erasing(x, p=0.7, value="random", backend=backend))
        return outputs

    return run


def inputs(shape, num_classes, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator).to(DEVICE)
    y = torch.randint(0, num_classes, (shape[0],), generator=generator).to(DEVICE)
    return x, y


def assert_compiled_equals_eager(fn, compiled, x, y, seed):
    torch.manual_seed(seed)
    expected = fn(x, y)
    torch.manual_seed(seed)
    actual = compiled(x, y)
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, index
        assert torch.equal(a, e), index


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_ops_survive_new_sizes(backend, fresh_dynamo):
    fn = every_op(backend)
    compiled = torch.compile(fn, fullgraph=True, backend=COMPILER)
    for seed, (shape, num_classes) in enumerate(zip(SHAPES, NUM_CLASSES)):
        x, y = inputs(shape, num_classes, seed)
        assert_compiled_equals_eager(fn, compiled, x, y, seed)


def test_compiled_ops_with_every_dimension_marked_dynamic(backend, fresh_dynamo):
    fn = every_op(backend)
    compiled = torch.compile(fn, fullgraph=True, backend=COMPILER)
    for seed, shape in enumerate([(4, 3, 8, 6), (6, 2, 5, 9), (3, 4, 6, 7)]):
        x, y = inputs(shape, 10, seed)
        for dim in range(4):
            torch._dynamo.mark_dynamic(x, dim)  # raises if tracing specializes that dimension
        torch._dynamo.mark_dynamic(y, 0)
        assert_compiled_equals_eager(fn, compiled, x, y, seed)
