"""torchvision as a test oracle, also where its compiled ops cannot load.

PyPI's torchvision 0.28.0 (the release for torch 2.13.0) is a CUDA build. Beside the CPU
build of torch its `_C.so` fails to load (it links the CUDA runtime), and `import torchvision`
then fails: torchvision/_meta_registrations.py calls torch.library.register_fake on
`torchvision::nms` and `torchvision::qnms`, which only its `_C.so` defines. The transforms the
tests use (torchvision.transforms.v2.functional) are plain torch. So, before the import, this
module defines the schemas of those two ops when `_C.so` does not load: the fake registration
then succeeds, and calling nms/qnms raises torch's "no kernel" error instead of giving wrong
numbers. Where `_C.so` loads (the GPU machines), nothing is defined.

Tests call `v2_functional()`. Without torchvision they are skipped, except in CI (CI=true),
where they fail: tests/conftest.py imports torchvision through this module up front.
"""
import glob
import importlib.util
import os

import pytest
import torch

# The ops torchvision registers fakes for at import, with their schemas as torchvision's csrc defines them.
_FAKED_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_schemas = None  # the torch.library.Library holding the definitions; it must outlive the import


def _compiled_ops_load(package_dir):
    """Whether torchvision's `_C` library loads here (what torchvision.extension tries at import)."""
    for path in glob.glob(os.path.join(package_dir, "_C*.so")):
        try:
            torch.ops.load_library(path)
            return True
        except (ImportError, OSError):
            return False
    return False


def import_torchvision():
    """Imports torchvision (defining its compiled ops' schemas first where `_C` cannot load) and returns it.

    Raises ModuleNotFoundError when torchvision is not installed.
    """
    global _schemas
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ModuleNotFoundError("torchvision is not installed; the tests use it as their oracle "
                                  "(pip install -r requirements.txt)", name="torchvision")
    if _schemas is None and not _compiled_ops_load(os.path.dirname(spec.origin)):
        _schemas = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _FAKED_OP_SCHEMAS:
            _schemas.define(schema)
    import torchvision
    return torchvision


def v2_functional():
    """torchvision.transforms.v2.functional; a module-level skip when torchvision is missing, an error in CI."""
    try:
        import_torchvision()
    except ModuleNotFoundError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("torchvision (the oracle) is not installed", allow_module_level=True)
    from torchvision.transforms.v2 import functional
    return functional
