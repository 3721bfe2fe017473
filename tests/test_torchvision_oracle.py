"""torchvision, the augment tests' oracle, imports beside the CPU build of torch (tests/torchvision_oracle.py)."""
import torch

import torchvision_oracle


def test_torchvision_imports_and_its_v2_transforms_run():
    functional = torchvision_oracle.v2_functional()  # skips where torchvision is not installed (fails in CI)
    x = torch.arange(48.).reshape(1, 4, 12)
    assert functional.resized_crop(x, 1, 2, 3, 6, [2, 3], antialias=True).shape == (1, 2, 3)


def test_the_defined_schemas_have_no_kernel_so_nms_raises_rather_than_computing():
    torchvision = torchvision_oracle.import_torchvision()
    if torchvision_oracle._schemas is None:  # its compiled ops loaded: nothing was defined
        return
    try:
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    except RuntimeError as error:
        assert "Couldn't load custom C++ ops" in str(error)
    else:
        raise AssertionError("nms ran without its compiled kernel")
