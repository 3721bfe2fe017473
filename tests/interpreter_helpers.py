"""A faster Triton interpreter for the tests: a @triton.jit helper patches the language once per kernel launch.

On every call of a @triton.jit helper, Triton's interpreter (triton.runtime.interpreter.InterpretedFunction.__call__)
patches the triton.language modules the helper sees for the interpreter: an inspect.getmembers over up to four
modules, about a millisecond. Nothing undoes a helper's patching before the launch ends (only the launch's own patch
scope is restored), so a second call of the same helper in the same launch finds every builtin already replaced and
changes nothing. Kernels that call helpers per row or per tap spent most of their interpreted time there. Here the
first call of each helper in a launch patches as Triton does; its later calls in that launch run the rewritten
function directly. Only speed changes: the same code runs on the same values.
"""
from triton.runtime import interpreter


def patch_helpers_once_per_launch() -> None:
    if not (hasattr(interpreter, "GridExecutor") and hasattr(interpreter.InterpretedFunction, "rewrite")):
        return  # another Triton's interpreter: leave it as it is
    launch = interpreter.GridExecutor.__call__
    call_helper = interpreter.InterpretedFunction.__call__
    patched = set()  # the helpers that have patched the language in the running launch

    def launch_afresh(self, *args, **kwargs):
        patched.clear()
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.clear()

    def call_helper_patched_once(self, *args, **kwargs):
        if self not in patched:
            patched.add(self)
            return call_helper(self, *args, **kwargs)
        function = self.rewrite()
        try:
            return function(*args, **kwargs)
        except Exception as error:  # as Triton's own path reports it
            raise interpreter.InterpreterError(repr(error)) from error

    interpreter.GridExecutor.__call__ = launch_afresh
    interpreter.InterpretedFunction.__call__ = call_helper_patched_once
