"""Test setup: where the tests run and over which backends.

By default the tests run on the CPU with TRITON_INTERPRET=1 (set here, before triton is
imported), so the real Triton kernels run through the interpreter. With
RECIPE_KERNELS_TEST_DEVICE=cuda (scripts/gpu_check.sh) they run on the GPU over all
three backends. With RECIPE_KERNELS_TEST_DEVICE=standin (scripts/compile_suite.sh) every Triton
kernel they launch is compiled for sm_90 under the stand-in driver and not run: only the compile
errors among the failures mean anything.
"""
import os
import sys

TEST_DEVICE = os.environ.get("RECIPE_KERNELS_TEST_DEVICE", "cpu")
if TEST_DEVICE == "standin":
    os.environ.pop("TRITON_INTERPRET", None)
elif TEST_DEVICE != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from recipe_kernels import _backend  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    from interpreter_helpers import patch_helpers_once_per_launch  # noqa: E402
    patch_helpers_once_per_launch()

if TEST_DEVICE == "standin":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    from standin_driver import StandInDriver  # noqa: E402
    StandInDriver().__enter__()  # sm_90, 132 SMs, for the whole session
DEVICE = torch.device("cuda" if TEST_DEVICE == "cuda" else "cpu")
BACKENDS = ["torch", "triton"] + (["cuda"] if DEVICE.type == "cuda" else [])
if DEVICE.type == "cuda" and _backend._C is None:
    raise RuntimeError(f"GPU tests need the CUDA extension: {_backend.CUDA_EXTENSION_ERROR}")
# In CI (CI=true) a missing extension or test dependency must fail the run, not turn tests into skips.
if os.environ.get("CI") == "true":
    if _backend._C is None:
        raise RuntimeError(f"CI builds the CUDA extension, but it did not import: {_backend.CUDA_EXTENSION_ERROR}")
    import expecttest  # noqa: E402,F401  (torch's OpInfo samples)
    import matplotlib  # noqa: E402,F401  (the demo's plot)
    from torchvision_oracle import import_torchvision  # noqa: E402  (the augment tests' oracle)
    import_torchvision()


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    monkeypatch.delenv("RECIPE_KERNELS_BACKEND", raising=False)
