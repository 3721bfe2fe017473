"""The op layer (recipe_kernels/_ops.py): eager calls skip the dispatcher, traced calls and modes
go through the registered op, and both give the same values and gradients."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recipe_kernels import _ops

CALLS = []


def _scale_torch(x: torch.Tensor, factor: float) -> torch.Tensor:
    CALLS.append("torch")
    return x * factor


def _scale_other(x: torch.Tensor, factor: float) -> torch.Tensor:
    CALLS.append("other")
    return x * factor


scale_op = _ops.Op("test_scale", torch=_scale_torch, triton=_scale_other, cuda=_scale_other)
scale_op.register_fake(lambda x, factor, backend: torch.empty_like(x))


def _setup(ctx, inputs, output):
    ctx.factor, ctx.backend = inputs[1], inputs[2]


def _backward(ctx, grad):
    # Through the op itself, so a graph built here is differentiable again.
    return scale_op(grad, ctx.factor, ctx.backend), None, None


scale_op.register_autograd(_backward, setup_context=_setup)


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_schema_is_the_torch_implementations_plus_backend():
    assert str(scale_op.custom_op._opoverload._schema) == \
        "recipe_kernels::test_scale(Tensor x, float factor, str backend) -> Tensor"


def test_eager_call_runs_the_chosen_implementation_without_the_dispatcher():
    CALLS.clear()
    x = torch.randn(4)
    with OpNames() as mode:  # a mode routes through the registered op: it is seen
        torch.testing.assert_close(scale_op(x, 2.0, "triton"), 2 * x)
    assert "recipe_kernels.test_scale.default" in mode.names
    assert CALLS == ["other"]
    CALLS.clear()
    assert _ops.is_eager((x, 2.0, "torch")) and not _ops.is_eager((torch.nn.Parameter(x).as_subclass(type("T", (torch.Tensor,), {})),))
    subclassed = x.as_subclass(type("T", (torch.Tensor,), {}))
    assert _ops.is_eager(([x, torch.nn.Parameter(x)], [1, 2.0]))
    assert not _ops.is_eager(([x, subclassed],)) and not _ops.is_eager(([x, x], (subclassed,)))
    assert not _ops.is_eager(([1, torch.SymInt],))
    torch.testing.assert_close(scale_op(x, 3.0, "torch"), 3 * x)
    assert CALLS == ["torch"]


def test_functorch_transforms_take_the_registered_op():
    """Under torch.func the tensors are functorch wrappers of plain type: a direct call would run the
    implementation on them, and the eager autograd.Function skips Function.apply's functorch check."""
    x = torch.randn(4)
    assert _ops.is_eager((x, 2.0, "torch"))
    seen = []
    torch.func.vmap(lambda row: seen.append(_ops.is_eager((row, 2.0, "torch"))) or row)(x.reshape(2, 2))
    torch.func.grad(lambda t: seen.append(_ops.eager_mode((t, 2.0, "torch"))) or t.sum())(x)
    assert seen == [False, _ops._NOT_EAGER]
    with pytest.raises(RuntimeError, match="setup_context"):  # torch's own refusal, not a wrong gradient
        torch.func.grad(lambda t: scale_op(t, 2.0, "torch").sum())(x)


def test_eager_graph_node_is_the_functions():
    x = torch.randn(3, requires_grad=True)
    y = scale_op(x, 2.0, "torch")
    assert type(y.grad_fn).__name__ == "TestScaleFunctionBackward"
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


@pytest.mark.parametrize("path", ["eager", "registered"])
def test_gradients_and_second_derivatives_match_between_paths(path):
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    op = scale_op if path == "eager" else scale_op.custom_op

    def f(t):
        return op(t, 1.5, "torch").pow(3).sum()

    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    torch.testing.assert_close(g, 3 * 1.5 ** 3 * x.detach() ** 2)
    (gg,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(gg, 6 * 1.5 ** 3 * x.detach())


def test_compiled_gradient():
    x = torch.randn(5, requires_grad=True)
    f = torch.compile(lambda t: scale_op(t, 1.5, "torch").sum(), fullgraph=True, backend="aot_eager")
    (g,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g, torch.full_like(x, 1.5))


def test_opcheck():
    torch.library.opcheck(scale_op.custom_op, (torch.randn(3, requires_grad=True), 2.0, "torch"))


# ----------------------------------------------------------------------------- tuple outputs, dtypes, in-place writes


def _scale_pair_torch(x: torch.Tensor, factor: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    CALLS.append("torch")
    return (x * factor).to(dtype), x.sum(0)


pair_op = _ops.Op("test_scale_pair", torch=_scale_pair_torch, triton=_scale_pair_torch, cuda=_scale_pair_torch)
pair_op.register_fake(lambda x, factor, dtype, backend: (torch.empty_like(x, dtype=dtype), x.new_empty(x.shape[1:])))


def _pair_setup(ctx, inputs, output):
    ctx.factor, ctx.shape = inputs[1], inputs[0].shape


def _pair_backward(ctx, grad_scaled, grad_sum):
    return grad_scaled * ctx.factor + grad_sum.expand(ctx.shape), None, None, None


pair_op.register_autograd(_pair_backward, setup_context=_pair_setup)


def test_a_dtype_argument_keeps_the_call_eager():
    x = torch.randn(3, 2)
    assert _ops.is_eager((x, 2.0, torch.float64, "torch"))
    with OpNames() as mode:
        pair_op(x, 2.0, torch.float64, "torch")
    assert "recipe_kernels.test_scale_pair.default" in mode.names  # under a mode: the registered op
    mode.names.clear()
    CALLS.clear()
    scaled, total = pair_op(x, 2.0, torch.float64, "torch")
    assert CALLS == ["torch"] and scaled.dtype == torch.float64
    torch.testing.assert_close(total, x.sum(0))


@pytest.mark.parametrize("path", ["eager", "registered"])
def test_tuple_output_gradients_match_between_paths(path):
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    op = pair_op if path == "eager" else pair_op.custom_op
    scaled, total = op(x, 1.5, torch.float64, "torch")
    (grad,) = torch.autograd.grad(scaled.sum() + 2 * total.sum(), x)
    torch.testing.assert_close(grad, torch.full_like(x, 1.5 + 2))


def _fill_torch(x: torch.Tensor, value: float) -> None:
    x.fill_(value)


fill_op = _ops.Op("test_fill_", torch=_fill_torch, triton=_fill_torch, cuda=_fill_torch, mutates_args=("x",))
fill_op.register_fake(lambda x, value, backend: None)


def test_in_place_op_bumps_the_version_on_the_eager_path():
    x = torch.zeros(4)
    version = x._version
    assert fill_op(x, 3.0, "torch") is None
    assert torch.equal(x, torch.full((4,), 3.0)) and x._version > version
    torch.library.opcheck(fill_op.custom_op, (torch.zeros(4), 3.0, "torch"))


# ----------------------------------------------------------------------------- the launch cache's key


def _triton_specialisations(values):
    """Triton's own specialisation of each value as a kernel argument, for an sm_90 target."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return [native_specialize_impl(backend, value, False, True, True) for value in values]


def test_launch_key_tells_apart_every_pair_of_arguments_triton_compiles_apart():
    """A cached launch reuses the compiled kernel of an equal key, so two arguments that Triton
    compiles differently must never share a key (else a kernel compiled for 16-byte alignment,
    i32, or the constant 1 would run on arguments that break that assumption)."""
    storage = torch.zeros(64, dtype=torch.float32)
    values = [0, 1, 2, 16, 17, -16, 2**31 - 16, 2**31 - 1, 2**31, -2**31, -2**31 - 16, 2**63 - 16, 2**63,
              2**64 - 16, True, False, None, 0.5, 1.0,
              storage, storage[1:], storage[4:], storage.to(torch.bfloat16), storage.to(torch.bfloat16)[8:],
              storage.to(torch.int64), storage.to(torch.uint8)[1:], torch.nn.Parameter(storage)]
    triton_keys = _triton_specialisations(values)
    # Each value beside a tensor: a launch needs one (its device).
    our_keys = [_ops._launch_key(test_launch_key_tells_apart_every_pair_of_arguments_triton_compiles_apart, 4,
                                 {}, [storage, value])[1] for value in values]
    for i in range(len(values)):
        for j in range(len(values)):
            if triton_keys[i] != triton_keys[j]:
                assert our_keys[i] != our_keys[j], (values[i], values[j], triton_keys[i], triton_keys[j])


def test_launch_key_separates_constexprs_and_warps():
    x = torch.zeros(4)
    base = _ops._launch_key(len, 4, {"BLOCK": 8}, [x])[1]
    assert _ops._launch_key(len, 8, {"BLOCK": 8}, [x])[1] != base
    assert _ops._launch_key(len, 4, {"BLOCK": 16}, [x])[1] != base
    assert _ops._launch_key(len, 4, {"OTHER": 8}, [x])[1] != base
    assert _ops._launch_key(len, 4, {"BLOCK": 8}, [x])[1] == base


def test_launch_key_places_tell_constexprs_apart_from_arguments():
    """Keys of one kernel with the same items in other places: a constexpr's value equal to another's
    name, or a constexpr passed as an argument instead."""
    x = torch.zeros(4)
    keys = [_ops._launch_key(len, 4, {"A": "B", "B": 1}, [x])[1], _ops._launch_key(len, 4, {"B": "A", "A": 1}, [x])[1],
            _ops._launch_key(len, 4, {"A": "B"}, [x, 1])[1], _ops._launch_key(len, 4, {"A": "B"}, [x, None])[1],
            _ops._launch_key(len, 4, {"A": "B"}, [x, x])[1], _ops._launch_key(len, 4, {"A": "B"}, [None, x])[1]]
    assert len(set(keys)) == len(keys)


# Under the stand-in driver (TRITON_INTERPRET unset, so in a subprocess): each public call's launch,
# on the cached path, runs the compiled kernel Triton's own path picks for the same call, with the
# same grid and arguments. The calls differ in what Triton specialises: dtype, 16-byte alignment,
# an int's divisibility, constexprs; each runs after the others have filled the cache.
_CACHED_LAUNCH_SCRIPT = r"""
import sys
import torch
import recipe_kernels as rk
from recipe_kernels import _ops
from standin_driver import StandInDriver, _Launcher
from triton import knobs

runs = []  # (launcher: one per compiled kernel, packed metadata, grid, arguments) of each run
record = _Launcher.__call__
def recording(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter, exit, *args):
    runs.append((self, packed_metadata, (grid_x, grid_y, grid_z), args))
    return record(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter, exit, *args)
_Launcher.__call__ = recording

def launch_twice(kernel, grid, *args, **kwargs):
    _ops.launch(kernel, grid, *args, **kwargs)  # the cached path, once the kernel is compiled
    cached = runs[-1]
    knobs.runtime.launch_enter_hook.add(print)  # with a hook set, launch takes Triton's own path
    try:
        _ops.launch(kernel, grid, *args, **kwargs)
    finally:
        knobs.runtime.launch_enter_hook.remove(print)
    own = runs[-1]
    assert cached[:3] == own[:3] and len(cached[3]) == len(own[3]), (cached, own)
    assert all(a is b if isinstance(a, torch.Tensor) else a == b for a, b in zip(cached[3], own[3])), (cached, own)

dropout_module = sys.modules["recipe_kernels.dropout"]
dropout_module.launch = launch_twice
storage = torch.randn(4 * 4096 + 16, dtype=torch.bfloat16)
calls = [lambda: rk.dropout(storage[:4096].view(64, 64), 0.1, backend="triton"),
         lambda: rk.dropout(storage[1:4097], 0.1, backend="triton"),  # 2 bytes off 16-byte alignment
         lambda: rk.dropout(storage[:4000].float(), 0.1, backend="triton"),  # fp32, n not a multiple of 16
         lambda: rk.dropout_add(storage[:4096].view(64, 64), storage[4096:8192].view(64, 64), 0.1,
                                bias=storage[8192:8256], backend="triton"),
         lambda: rk.dropout(storage[:4096].double(), 0.1, backend="triton")]
with StandInDriver():
    for call in calls * 2:  # the second round finds every other call's kernel in the cache too
        call()
assert len({run[0] for run in runs}) == len(calls), "one compiled kernel per call's specialisation"
print("ok")
"""


def test_cached_launches_run_the_kernel_and_arguments_triton_picks():
    import os
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "benchmarks"), root])
    result = subprocess.run([sys.executable, "-c", _CACHED_LAUNCH_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=600, cwd=root)
    if result.returncode != 0 and "ptxas" in result.stderr:
        pytest.skip(f"Triton cannot compile for sm_90 here: {result.stderr.splitlines()[-1]}")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
