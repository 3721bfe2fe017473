"""The one way to declare an op and to launch a Triton kernel.

An op is declared once, with one implementation per backend taking the same arguments:

    dropout_op = Op("dropout", torch=_dropout_torch, triton=_dropout_triton, cuda=_dropout_cuda)
    dropout_op.register_fake(_dropout_fake)                  # same arguments, plus `backend`
    dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup_context)
    out = dropout_op(x, residual, bias, seed, p, backend)    # backend: "torch", "triton" or "cuda"

The schema is inferred from the torch implementation's type hints, with a final `str backend`,
and registered as the custom op recipe_kernels::<name> (what torch.compile, opcheck and
dispatch modes see). A plain eager call, with no tracing, no mode and no tensor subclass,
skips the dispatcher: it calls the implementation directly, or, when autograd needs a graph,
an autograd.Function built from the same backward. The dispatcher's per-call cost is
several times a small kernel's run time.

`launch(kernel, grid, *args, num_warps=..., **constexprs)` launches a Triton kernel on the
current stream of its tensors' device, without FMA contraction (every backend rounds the
same way). On the eager path it keeps the compiled kernel per specialisation and launches it
directly, skipping Triton's argument binder.
"""
import inspect

import torch
from triton import knobs
from triton.runtime import driver as triton_driver

from recipe_kernels import _backend

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
# Argument types a schema takes that no tensor subclass or mode can hide behind.
_PLAIN_SCALARS = (int, float, str, bool, torch.dtype)
# Decided once: TRITON_INTERPRET must be set before triton is imported anyway.
INTERPRETING = _backend.triton_interpreting()


def is_eager(args) -> bool:
    """True when a call may skip the dispatcher: not traced, no torch mode, only plain tensors."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return False
    for arg in args:
        kind = type(arg)
        if kind in _PLAIN_TENSORS or arg is None or kind in _PLAIN_SCALARS:
            continue
        if kind is list or kind is tuple:
            if not {type(item) for item in arg} <= {*_PLAIN_TENSORS, int, float}:
                return False
        else:
            return False
    return True


def _needs_graph(args) -> bool:
    if not torch.is_grad_enabled():
        return False
    for arg in args:
        if type(arg) in _PLAIN_TENSORS and arg.requires_grad:
            return True
        if type(arg) is list and any(type(item) in _PLAIN_TENSORS and item.requires_grad for item in arg):
            return True
    return False


class Op:
    """A custom op with one implementation per backend; see the module docstring."""

    def __init__(self, name, *, torch, triton, cuda, mutates_args=()):
        import torch as _torch  # the keyword `torch` names the implementation here

        self.name = f"recipe_kernels::{name}"
        self.implementations = {"torch": torch, "triton": triton, "cuda": cuda}
        implementations = self.implementations
        schema = _torch.library.infer_schema(torch, mutates_args=mutates_args)
        arguments, returns = schema.rsplit(" -> ", 1)
        schema = f"{arguments[:-1]}{', ' if arguments != '()' else ''}str backend) -> {returns}"
        parameter_names = list(inspect.signature(torch).parameters)
        self._mutated = [parameter_names.index(name) for name in mutates_args]

        def dispatch(*args):
            return implementations[args[-1]](*args[:-1])

        dispatch.__name__ = name
        self.custom_op = _torch.library.custom_op(self.name, dispatch, mutates_args=mutates_args, schema=schema)
        self._function = None

    def register_fake(self, fake):
        self.custom_op.register_fake(fake)
        return fake

    def register_autograd(self, backward, *, setup_context):
        """Registers backward for the traced op and builds the eager autograd.Function from it.

        backward may call ops: when the graph is being built (create_graph=True) its own ops
        record their autograd, so second derivatives are those of the backward's formula.
        """
        self.custom_op.register_autograd(backward, setup_context=setup_context)
        implementations, mutated = self.implementations, self._mutated

        class EagerFunction(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                output = implementations[args[-1]](*args[:-1])
                setup_context(ctx, args, output)
                if mutated:
                    ctx.mark_dirty(*(args[index] for index in mutated))
                return output

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, *grads)

        EagerFunction.__name__ = f"{self.name.split('::')[1].title().replace('_', '')}Function"
        self._function = EagerFunction

    def __call__(self, *args):
        if not is_eager(args):
            return self.custom_op(*args)
        if self._function is not None and _needs_graph(args):
            return self._function.apply(*args)
        output = self.implementations[args[-1]](*args[:-1])
        if self._mutated:  # what the dispatcher would do for a declared in-place write
            torch.autograd.graph.increment_version([args[index] for index in self._mutated
                                                     if isinstance(args[index], torch.Tensor)] +
                                                    [t for index in self._mutated if isinstance(args[index], list)
                                                     for t in args[index]])
        return output


# ----------------------------------------------------------------------------- Triton launches

_COMPILED = {}  # (kernel, device, options, specialisation) -> (CompiledKernel, constexpr names in parameter order)


def _specialisation(value):
    """What Triton specialises a runtime argument on (see triton.runtime.jit: specialize_impl)."""
    kind = type(value)
    if kind is int:
        return (value == 1, value % 16 == 0, -(1 << 31) <= value < (1 << 31))
    if kind in _PLAIN_TENSORS:
        return (value.dtype, value.data_ptr() % 16 == 0)
    if kind is float:
        return None
    return (kind, value)


def _launch_hooks_set() -> bool:
    """Whether a profiler (proton, say) hooks launches: then Triton's own path runs them."""
    enter, exit = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return (enter is not None and getattr(enter, "calls", True)) or (exit is not None and getattr(exit, "calls", True))


def _device_of(args):
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
    raise ValueError("a Triton launch needs at least one tensor argument")


def launch(kernel, grid, *args, num_warps, **constexprs):
    """kernel[grid](*args, **constexprs) on the current stream of the tensors' device, without
    FMA contraction; on the eager path through a cached compiled kernel."""
    device = _device_of(args)
    grid = tuple(grid) + (1,) * (3 - len(grid))
    if INTERPRETING or torch.compiler.is_compiling() or _launch_hooks_set():
        with _backend.device_guard(device):
            kernel[grid](*args, num_warps=num_warps, enable_fp_fusion=False, **constexprs)
        return
    # id(kernel): hashing a JITFunction hashes its source. Tensors, the usual argument, inline.
    key = (id(kernel), device.index, num_warps, *constexprs.items(),
           *[(arg.dtype, arg.data_ptr() % 16 == 0) if type(arg) is torch.Tensor else _specialisation(arg)
             for arg in args])
    entry = _COMPILED.get(key)
    if entry is None:
        with _backend.device_guard(device):
            compiled = kernel[grid](*args, num_warps=num_warps, enable_fp_fusion=False, **constexprs)
        order = kernel.arg_names[len(args):]
        _COMPILED[key] = compiled, (None if list(constexprs) == order else order)
        return
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        with _backend.device_guard(device):  # Triton launches on the current device
            return launch(kernel, grid, *args, num_warps=num_warps, **constexprs)
    compiled, order = entry
    stream = triton_driver.active.get_current_stream(device.index if device.type == "cuda" else 0)
    compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *args, *(constexprs.values() if order is None else [constexprs[name] for name in order]))
