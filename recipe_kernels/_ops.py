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
import itertools

import torch
import triton.language as tl
from triton import knobs
from triton.runtime import driver as triton_driver

from recipe_kernels import _backend

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
# Argument types a schema takes that no tensor subclass or mode can hide behind.
_PLAIN_SCALARS = (int, float, str, bool, torch.dtype)
_PLAIN_ARGUMENTS = frozenset((*_PLAIN_TENSORS, *_PLAIN_SCALARS, type(None)))
_PLAIN_LIST_SCALARS = frozenset((int, float))
_REQUIRES_GRAD, _FALSE = itertools.repeat("requires_grad"), itertools.repeat(False)  # getattr's, for map
# Decided once: TRITON_INTERPRET must be set before triton is imported anyway.
INTERPRETING = _backend.triton_interpreting()


_NOT_EAGER, _EAGER, _EAGER_WITH_GRAPH = 0, 1, 2
_C_FUNCTION_APPLY = torch._C._FunctionBase.__dict__["apply"]  # what autograd.Function.apply calls


def eager_mode(args, autograd=True) -> int:
    """_EAGER when a call may skip the dispatcher (not traced, no torch mode or functorch transform,
    only plain tensors), _EAGER_WITH_GRAPH when it also needs an autograd graph, _NOT_EAGER otherwise.
    Arguments of plain types only (the common case) are checked in C, over map; a list of tensors
    (EMA's thousand) is checked for subclasses in one C call (torch's has_torch_function, false for
    Tensor and Parameter alone), and for requires_grad only when `autograd` (the op has a backward)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active():
        return _NOT_EAGER
    if _PLAIN_ARGUMENTS.issuperset(map(type, args)):
        requires_grad = any(map(getattr, args, _REQUIRES_GRAD, _FALSE))
    else:
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


def apply_function(function, *args):
    """function.apply(*args) for an autograd.Function. Function.apply's Python checks (about 1.5 µs)
    serve functorch transforms; without one active, the C apply under it builds the same graph node.
    Dynamo traces Function.apply itself."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return _C_FUNCTION_APPLY.__get__(None, function)(*args)


def is_eager(args) -> bool:
    """True when a call may skip the dispatcher: not traced, no torch mode or functorch transform, only
    plain tensors."""
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

        def forward(ctx, *args):
            output = implementations[args[-1]](*args[:-1])
            setup_context(ctx, args, output)
            if mutated:
                ctx.mark_dirty(*(args[index] for index in mutated))
            return output

        # Named at creation: autograd names the graph node's class (e.g. DropoutFunctionBackward) after it.
        name = f"{self.name.split('::')[1].title().replace('_', '')}Function"
        function = type(name, (torch.autograd.Function,),
                        {"forward": staticmethod(forward), "backward": staticmethod(backward)})
        self._function = function

    def __call__(self, *args):
        mode = eager_mode(args, self._function is not None)
        if mode == _NOT_EAGER:
            return self.custom_op(*args)
        if mode == _EAGER_WITH_GRAPH and self._function is not None:
            return apply_function(self._function, *args)
        output = self.implementations[args[-1]](*args[:-1])
        if self._mutated:  # what the dispatcher would do for a declared in-place write
            written = []
            for index in self._mutated:
                arg = args[index]
                if type(arg) is list:
                    written += arg
                elif arg is not None:
                    written.append(arg)
            torch.autograd.graph.increment_version(written)
        return output


# ----------------------------------------------------------------------------- Triton launches

# key -> (the compiled kernel's launcher, function, packed metadata; the constexprs as Triton took them,
# in the kernel's order; the kernel, held so that its id in the key is never reused by another kernel)
_COMPILED = {}


_INT32_MIN, _INT64_MIN = -(1 << 31), -(1 << 63)
_NO_TENSOR = "a Triton launch needs at least one tensor argument"
_SPECIALISERS = {}  # the argument types of a launch -> their specialiser (_specialiser)


def _specialiser(kinds):
    """For arguments of these types, a function of (kernel id, warps, constexprs, *arguments) that
    returns (the first tensor's device index, -1 for the CPU; the launch's key, one flat tuple: a token
    of these types, the kernel id, the warps, the device index, what Triton specialises each argument
    on (triton._C.libtriton.native_specialize_impl), then the constexprs' values and names).

    What Triton specialises on: a tensor's dtype and 16-byte alignment; an int's value 1, divisibility
    by 16 and type (i32, i64 or u64); nothing of a float (always fp32) or None; anything else (a bool)
    its value. Written out once per tuple of types, as Triton's own binder is, so that a launch
    dispatches on no argument's type; the token makes keys of other types unequal even where their
    items coincide (a None before a tensor and a tensor before a None). The constexprs' values, then
    their names, close the key: equal keys have equal names in equal places."""
    names = [f"arg{index}" for index in range(len(kinds))]
    device, items = None, []
    for name, kind in zip(names, kinds):
        if issubclass(kind, torch.Tensor):
            device = device or f"{name}.get_device()"
            items += [f"{name}.dtype", f"not {name}.data_ptr() & 15"]
        elif kind is int:
            items.append(f"{name} == 1 or (not {name} & 15, {_INT32_MIN} <= {name} < {-_INT32_MIN}, "
                         f"{_INT64_MIN} <= {name} < {-_INT64_MIN})")
        elif kind is not float and kind is not type(None):
            items.append(name)
    if device is None:
        raise ValueError(_NO_TENSOR)
    namespace = {"token": object()}
    exec(f"def launch_key(kernel_id, num_warps, constexprs, {', '.join(names)}):\n"
         f"    device = {device}\n"
         f"    return device, (token, kernel_id, num_warps, device, {''.join(item + ', ' for item in items)}"
         f"*constexprs.values(), *constexprs)\n", namespace)
    return namespace["launch_key"]


def _launch_key(kernel, num_warps, constexprs, args):
    """(the first tensor's device index, -1 for the CPU; the key of the compiled kernel a launch with
    these arguments needs: see _specialiser. Constexprs compare by equality, as in Triton's own cache.)"""
    kinds = tuple(map(type, args))
    launch_key = _SPECIALISERS.get(kinds)
    if launch_key is None:
        launch_key = _SPECIALISERS[kinds] = _specialiser(kinds)
    return launch_key(id(kernel), num_warps, constexprs, *args)


def _launch_hooks_set() -> bool:
    """Whether a profiler (proton, say) hooks launches: then Triton's own path runs them."""
    runtime = knobs.runtime
    enter, exit = runtime.launch_enter_hook, runtime.launch_exit_hook
    # A HookChain is set when it holds calls; a plain hook (or None) when it is there.
    return bool(getattr(enter, "calls", enter) or getattr(exit, "calls", exit))


_GRID_PADDING = {1: (1, 1), 2: (1,), 3: ()}  # a grid of one or two dimensions, made three
# A dtype constexpr is passed as a torch dtype, which launch keys hash and compare in C (a Triton
# dtype's __hash__ and __eq__ are Python), and handed to Triton as its own.
_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
                  torch.bfloat16: tl.bfloat16, torch.int32: tl.int32, torch.int64: tl.int64, torch.uint8: tl.uint8}


def _triton_constexprs(constexprs):
    return {name: _TRITON_DTYPES[value] if type(value) is torch.dtype else value for name, value in constexprs.items()}


def _launch_through_triton(kernel, grid, args, num_warps, constexprs):
    """kernel[grid](*args, ...) through Triton's own path, on the first tensor's device; returns the
    compiled kernel."""
    device = next((arg.device for arg in args if isinstance(arg, torch.Tensor)), None)
    if device is None:
        raise ValueError(_NO_TENSOR)
    with _backend.device_guard(device):  # Triton compiles for, and launches on, the current device
        return kernel[grid](*args, num_warps=num_warps, enable_fp_fusion=False, **_triton_constexprs(constexprs))


def launch(kernel, grid, *args, num_warps, **constexprs):
    """kernel[grid](*args, **constexprs) on the current stream of the tensors' device, without
    FMA contraction; on the eager path through a cached compiled kernel. A dtype constexpr is a
    torch dtype; the kernel sees Triton's."""
    if INTERPRETING or torch.compiler.is_compiling() or _launch_hooks_set():
        _launch_through_triton(kernel, grid, args, num_warps, constexprs)
        return
    device, key = _launch_key(kernel, num_warps, constexprs, args)
    entry = _COMPILED.get(key)
    active_driver = triton_driver.active
    if entry is None or (device >= 0 and device != active_driver.get_current_device()):
        compiled = _launch_through_triton(kernel, grid, args, num_warps, constexprs)
        if entry is None:
            triton_constexprs = _triton_constexprs(constexprs)
            _COMPILED[key] = (compiled.run, compiled.function, compiled.packed_metadata,
                              [triton_constexprs[name] for name in kernel.arg_names[len(args):]], kernel)
        return
    run, function, packed_metadata, triton_constexprs, _ = entry
    run(*grid, *_GRID_PADDING[len(grid)], active_driver.get_current_stream(max(device, 0)), function,
        packed_metadata, None, None, None, *args, *triton_constexprs)
