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
_PLAIN_LIST_SCALARS = frozenset((int, float))
# Decided once: TRITON_INTERPRET must be set before triton is imported anyway.
INTERPRETING = _backend.triton_interpreting()


_NOT_EAGER, _EAGER, _EAGER_WITH_GRAPH = 0, 1, 2


def eager_mode(args, autograd=True) -> int:
    """_EAGER when a call may skip the dispatcher (not traced, no torch mode, only plain tensors),
    _EAGER_WITH_GRAPH when it also needs an autograd graph (only asked when `autograd`: the op has
    one), _NOT_EAGER otherwise. A list of tensors (EMA's thousand) is checked for subclasses in one
    C call (torch's has_torch_function, false for Tensor and Parameter alone)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return _NOT_EAGER
    requires_grad = False
    for arg in args:
        kind = type(arg)
        if kind in _PLAIN_TENSORS:
            requires_grad = requires_grad or arg.requires_grad
        elif kind is list or kind is tuple:
            if arg and isinstance(arg[0], torch.Tensor):
                if torch._C._has_torch_function(arg):
                    return _NOT_EAGER
                requires_grad = requires_grad or (autograd and any(item.requires_grad for item in arg))
            elif not _PLAIN_LIST_SCALARS.issuperset(map(type, arg)):  # in C: EMA's slots are a thousand ints
                return _NOT_EAGER
        elif arg is not None and kind not in _PLAIN_SCALARS:
            return _NOT_EAGER
    return _EAGER_WITH_GRAPH if requires_grad and torch.is_grad_enabled() else _EAGER


def is_eager(args) -> bool:
    """True when a call may skip the dispatcher: not traced, no torch mode, only plain tensors."""
    return eager_mode(args, autograd=False) != _NOT_EAGER


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
        mode = eager_mode(args, self._function is not None)
        if mode == _NOT_EAGER:
            return self.custom_op(*args)
        if mode == _EAGER_WITH_GRAPH and self._function is not None:
            return self._function.apply(*args)
        output = self.implementations[args[-1]](*args[:-1])
        if self._mutated:  # what the dispatcher would do for a declared in-place write
            torch.autograd.graph.increment_version([args[index] for index in self._mutated
                                                     if isinstance(args[index], torch.Tensor)] +
                                                    [t for index in self._mutated if isinstance(args[index], list)
                                                     for t in args[index]])
        return output


# ----------------------------------------------------------------------------- Triton launches

_COMPILED = {}  # (kernel, warps, constexprs, specialisation[, device]) -> (CompiledKernel, constexpr order or None)


_INT32_RANGE = range(-(1 << 31), 1 << 31)
_INT64_RANGE = range(-(1 << 63), 1 << 63)


def _launch_key(kernel, num_warps, constexprs, args):
    """(the first tensor's device, the key of the compiled kernel a launch with these arguments needs).

    Each argument keys on what Triton specialises it on (triton._C.libtriton.native_specialize_impl):
    a tensor's dtype and 16-byte alignment; an int's value 1, divisibility by 16 and type (i32, i64 or
    u64); nothing of a float (always fp32); anything else (None, a bool) its type and value.
    id(kernel): hashing a JITFunction hashes its source."""
    device = None
    key = [id(kernel), num_warps, *constexprs.items()]
    append = key.append
    for arg in args:
        kind = type(arg)
        if isinstance(arg, torch.Tensor):
            if device is None:
                device = arg.device
            append((arg.dtype, arg.data_ptr() & 15 == 0))
        elif kind is int:
            append(arg == 1 or (arg & 15 == 0, arg in _INT32_RANGE, arg in _INT64_RANGE))
        else:
            append(None if kind is float else (kind, arg))
    return device, key


def _launch_hooks_set() -> bool:
    """Whether a profiler (proton, say) hooks launches: then Triton's own path runs them."""
    enter, exit = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return (enter is not None and getattr(enter, "calls", True)) or (exit is not None and getattr(exit, "calls", True))


def launch(kernel, grid, *args, num_warps, **constexprs):
    """kernel[grid](*args, **constexprs) on the current stream of the tensors' device, without
    FMA contraction; on the eager path through a cached compiled kernel."""
    device, key = _launch_key(kernel, num_warps, constexprs, args)
    if device is None:
        raise ValueError("a Triton launch needs at least one tensor argument")
    grid = (*grid, 1, 1)
    if INTERPRETING or torch.compiler.is_compiling() or _launch_hooks_set():
        with _backend.device_guard(device):
            kernel[grid[:3]](*args, num_warps=num_warps, enable_fp_fusion=False, **constexprs)
        return
    index = device.index
    if index is not None:  # a GPU: its compiled kernels are loaded per device
        key.append(index)
    key = tuple(key)
    entry = _COMPILED.get(key)
    if entry is None or (index is not None and index != triton_driver.active.get_current_device()):
        with _backend.device_guard(device):  # Triton compiles for, and launches on, the current device
            compiled = kernel[grid[:3]](*args, num_warps=num_warps, enable_fp_fusion=False, **constexprs)
        if entry is None:
            order = kernel.arg_names[len(args):]
            _COMPILED[key] = compiled, (None if list(constexprs) == order else order)
        return
    compiled, order = entry
    compiled.run(grid[0], grid[1], grid[2], triton_driver.active.get_current_stream(index or 0), compiled.function,
                 compiled.packed_metadata, None, None, None,
                 *args, *(constexprs.values() if order is None else [constexprs[name] for name in order]))
