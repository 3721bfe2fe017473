"""A stand-in Triton driver: compiles for a real GPU target on a machine without one.

    with StandInDriver(capability=90, sm_count=132) as driver:
        rk.dropout(torch.randn(4096, device="cpu"), 0.1, backend="triton")
    launch = driver.launches[0]       # grid, warps, the CompiledKernel (its asm["sass"], ...)

Inside the context, Triton believes it runs on a GPU of the given compute capability: every
public op runs its whole host path on CPU tensors (argument checks, seed, the real grid and
the real specialisation of every argument) and Triton compiles the kernel with its bundled
ptxas. The launch itself is recorded, not run: nothing is computed, outputs stay as allocated.
CPU tensors from torch's allocator are 64-byte aligned, as CUDA's are, so pointer
specialisations match a GPU run for fresh tensors.

Used by benchmarks/static_model.py (what the GPU would run) and benchmarks/bench_host.py
(host time per call without a GPU). Requires TRITON_INTERPRET unset.
"""
import dataclasses
import os
import re
import subprocess

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver as triton_driver

from recipe_kernels import _backend

# H100 SXM / H200: 132 SMs, 228 KiB of shared memory per SM (227 KiB per block), 64 K registers per SM.
H100_SM_COUNT = 132
MAX_SHARED_PER_BLOCK = 232448
MAX_THREADS_PER_BLOCK = 1024
_KERNELS = {}  # id(metadata) -> CompiledKernel, for every kernel loaded under a stand-in driver


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch."""
    name: str
    grid: tuple
    num_warps: int
    kernel: object  # triton.compiler.CompiledKernel: .asm["ptx"], .asm["cubin"], .metadata

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def cuobjdump():
    """Triton's bundled cuobjdump, which reads the cubins it compiles."""
    import triton.backends.nvidia as nvidia
    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack (local memory), shared memory of the one kernel in `cubin`."""
    path = f"/tmp/recipe_kernels_standin_{os.getpid()}.cubin"
    with open(path, "wb") as handle:
        handle.write(cubin)
    try:
        text = subprocess.run([cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.remove(path)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {"registers": int(fields.get("REG", 0)), "stack": int(fields.get("STACK", 0)),
            "local": int(fields.get("LOCAL", 0)), "shared": int(fields.get("SHARED", 0))}


class _Utils:
    def __init__(self, sm_count):
        self.sm_count = sm_count

    def load_binary(self, name, cubin, shared, device):
        usage = resource_usage(cubin)
        # Any non-None module makes Triton load a kernel once, not on every launch.
        return name, name, usage["registers"], usage["stack"], MAX_THREADS_PER_BLOCK

    def get_device_properties(self, device):
        return {"max_shared_mem": MAX_SHARED_PER_BLOCK, "multiprocessor_count": self.sm_count,
                "max_num_regs": 65536, "warpSize": 32}


class _Launcher:
    """Records a launch in the stand-in driver active at the time (a compiled kernel keeps its
    launcher across drivers)."""

    def __init__(self, src, metadata):
        self.name, self.metadata = src.fn.__name__ if hasattr(src, "fn") else str(src), metadata

    def __call__(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata,
                 enter_hook, exit_hook, *args):
        # The least a record can cost: bench_host times the op's host path, not the stand-in's.
        triton_driver.active.records.append((self, grid_x, grid_y, grid_z))


class StandInDriver(DriverBase):
    """A Triton driver for a GPU that is not there; see the module docstring."""

    def __init__(self, capability: int = 90, sm_count: int = H100_SM_COUNT):
        super().__init__()
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            raise RuntimeError("the stand-in driver compiles real GPU code: unset TRITON_INTERPRET")
        self.capability, self.sm_count = capability, sm_count
        self.utils = _Utils(sm_count)
        self.records = []  # (launcher, grid x, y, z) per launch, in order; see launches
        self.launcher_cls = _Launcher

    # Triton's driver interface ------------------------------------------------------------
    @staticmethod
    def is_active():
        return False

    def map_python_to_cpp_type(self, ty):
        return ty

    def get_current_target(self):
        return GPUTarget("cuda", self.capability, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.capability, 10)

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("the stand-in driver runs nothing, so it cannot time kernels")

    @property
    def launches(self) -> list:
        """Every launch so far, in order, as a Launch."""
        return [Launch(launcher.name, tuple(grid), launcher.metadata.num_warps, _KERNELS.get(id(launcher.metadata)))
                for launcher, *grid in self.records]

    def __enter__(self):
        self._previous_why_unavailable = _backend.why_unavailable
        previous = self._previous_why_unavailable

        def why_unavailable(backend, device):  # Triton "runs" on CPU tensors here
            return None if backend == "triton" else previous(backend, device)

        _backend.why_unavailable = why_unavailable
        self._previous_sm_count = _backend.sm_count
        _backend.sm_count = lambda device: self.sm_count
        triton_driver.set_active(self)
        self._watch_compiles()
        return self

    def __exit__(self, *exc):
        triton_driver._active = None  # back to the default, created lazily (there may be none here)
        _backend.why_unavailable = self._previous_why_unavailable
        _backend.sm_count = self._previous_sm_count
        import triton.compiler.compiler as compiler
        compiler.CompiledKernel._init_handles = self._previous_init_handles
        return False

    def _watch_compiles(self):
        """Remember each CompiledKernel by its metadata, so a launch record can name its code."""
        import triton.compiler.compiler as compiler
        self._previous_init_handles = compiler.CompiledKernel._init_handles
        previous, kernels = self._previous_init_handles, _KERNELS

        def init_handles(kernel):
            kernels[id(kernel.metadata)] = kernel
            return previous(kernel)

        compiler.CompiledKernel._init_handles = init_handles
