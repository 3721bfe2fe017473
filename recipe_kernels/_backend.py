"""Backend choice: which implementation runs an op, and why another cannot.

backend=None resolves to $RECIPE_KERNELS_BACKEND if set, else the op's default
backend for CUDA tensors and "torch" for CPU tensors. Asking for a backend that
cannot run raises a RuntimeError that says why.
"""
import contextlib
import glob
import importlib
import importlib.machinery
import os
import shutil
import sys

import torch

from recipe_kernels._codes import DTYPE_CODES

BACKENDS = ("triton", "cuda", "torch")

# An op's default on CUDA stays "triton" until its CUDA kernel has passed the
# whole suite on a GPU and measured at least as fast (benchmarks/results/results.csv).
# Evidence so far: none of the CUDA kernels has run on a GPU yet.
CUDA_DEFAULTS = {
    "dropout": "triton",
    "drop_path": "triton",
    "drop_path_residual": "triton",
    "cross_entropy": "triton",
    "mixing": "triton",
    "ema": "triton",
    "augment": "triton",
}

BUILD_COMMAND = "RECIPE_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation --no-deps ."


def _nvcc_found() -> bool:
    """Whether a build here would find nvcc: setup.py looks in $CUDA_HOME/bin, $CUDA_PATH/bin, then PATH."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    return any(home and os.path.exists(os.path.join(home, "bin", "nvcc")) for home in homes) or bool(shutil.which("nvcc"))


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _why_extension_missing(error: ImportError, package_dir: str = PACKAGE_DIR) -> str:
    """Says in plain words why recipe_kernels._C did not load, and what would build it."""
    if isinstance(error, ModuleNotFoundError) and error.name == "recipe_kernels._C":
        builds = [os.path.basename(path) for path in glob.glob(os.path.join(package_dir, "_C.*.so"))]
        other_builds = sorted(name for name in builds
                              if name.removeprefix("_C") not in importlib.machinery.EXTENSION_SUFFIXES)
        if other_builds:
            problem = (f"the CUDA extension recipe_kernels._C is not built for this Python "
                       f"({sys.implementation.cache_tag}; found {', '.join(other_builds)})")
        else:
            problem = "the CUDA extension recipe_kernels._C is not built"
    else:  # it is there but cannot load, e.g. a missing symbol
        problem = f"the CUDA extension recipe_kernels._C failed to load ({error})"
    if _nvcc_found():
        remedy = f"build it by running `{BUILD_COMMAND}` in the source tree"
    else:
        remedy = "building it needs nvcc from the CUDA toolkit, which this machine lacks"
    return f"{problem}; only the 'cuda' backend needs it (triton and torch run without it); {remedy}"


try:
    _C = importlib.import_module("recipe_kernels._C")
    CUDA_EXTENSION_ERROR = None
except ImportError as exc:
    _C = None
    CUDA_EXTENSION_ERROR = _why_extension_missing(exc)


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(backend: str, device: torch.device):
    """The reason `backend` cannot run on `device`, or None when it can."""
    if backend == "torch":
        return None
    if backend == "triton":
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            return None
        if device.type == "cpu":
            return "Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 set before triton is imported)"
        return f"Triton kernels do not run on {device.type} tensors"
    if backend == "cuda":
        if _C is None:
            return CUDA_EXTENSION_ERROR
        if device.type != "cuda":
            no_gpu = "" if torch.cuda.is_available() else " (no GPU is visible)"
            return f"the CUDA kernels need CUDA tensors, got a {device.type} tensor{no_gpu}"
        return None
    return f"unknown backend {backend!r}; choose one of {BACKENDS}"


BACKEND_VARIABLE = "RECIPE_KERNELS_BACKEND"
# os.environ.get of an unset variable costs about 1 µs (it raises and catches a KeyError), as much as
# the rest of a small op's checks. os.environ's own dict, which os.environ[...] = ... and del keep
# current, answers in a dict lookup; where an os.environ lacks it, the plain get.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_BACKEND_KEY = os.environ.encodekey(BACKEND_VARIABLE) if _ENVIRON_DATA is not None else None


def _backend_from_environment():
    """$RECIPE_KERNELS_BACKEND as it is now, None when unset or empty."""
    if _ENVIRON_DATA is None:
        return os.environ.get(BACKEND_VARIABLE) or None
    value = _ENVIRON_DATA.get(_BACKEND_KEY)
    return None if value is None else os.environ.decodevalue(value) or None


def resolve(op: str, device: torch.device, backend=None) -> str:
    """The backend that runs `op` on `device`, or a RuntimeError saying why it cannot."""
    if backend is None:
        backend = _backend_from_environment()
    if backend is None:
        backend = CUDA_DEFAULTS[op] if device.type == "cuda" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    reason = why_unavailable(backend, device)
    if reason is not None:
        raise RuntimeError(f"recipe_kernels.{op}: backend {backend!r} is unavailable: {reason}")
    return backend


def device_guard(device: torch.device):
    """Makes `device` current for a Triton launch (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# What sm_count reports off a GPU (the interpreter): small, so test shapes exercise multi-program paths.
INTERPRETER_SM_COUNT = 4


_SM_COUNTS = {}  # CUDA device index -> its SMs: the hardware's, so never stale


def _cuda_index(device: torch.device) -> int:
    """The index of a CUDA device; "cuda" without one is the current device."""
    return device.index if device.index is not None else torch.cuda.current_device()


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device`'s GPU, for grid sizing (torch's properties call costs
    microseconds, and the ops ask on every call)."""
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    index = _cuda_index(device)
    count = _SM_COUNTS.get(index)
    if count is None:
        count = _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return count


def launch_cuda(launcher, device: torch.device, **arguments):
    """launcher(**arguments, stream=...), a _C launcher, on the current stream of `device`, with
    `device` current: a CUDA launch goes to the current device, and only that device's streams
    serve it. The stream is torch's raw handle, as Triton's launcher takes it
    (torch.cuda.current_stream builds a Stream object, microseconds a call)."""
    index = _cuda_index(device)
    stream = torch._C._cuda_getCurrentRawStream(index)
    if index == torch._C._cuda_getDevice():
        return launcher(**arguments, stream=stream)
    with torch.cuda.device(index):
        return launcher(**arguments, stream=stream)


# The floating dtypes most CUDA kernels take, with their codes (recipe_kernels._codes).
CUDA_DTYPE_CODES = {dtype: DTYPE_CODES[dtype] for dtype in (torch.float32, torch.float16, torch.bfloat16)}
# With float64, for the kernels that compute float64 in fp64 (the dropout family).
CUDA_DTYPE_CODES_WITH_FLOAT64 = {**CUDA_DTYPE_CODES, torch.float64: DTYPE_CODES[torch.float64]}
