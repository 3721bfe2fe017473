"""torchvision, the augment tests' oracle, imports beside the CPU build of torch (tests/torchvision_oracle.py)."""
import os
import subprocess
import sys

import torch

import torchvision_oracle

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def test_torchvision_imports_in_a_fresh_interpreter_and_its_transforms_run():
    # A fresh interpreter: in this one another test may have imported torchvision already.
    torchvision_oracle.v2_functional()  # skips where torchvision is not installed (fails in CI)
    script = ("import torch, torchvision_oracle; F = torchvision_oracle.v2_functional(); "
              "x = torch.arange(48.).reshape(1, 4, 12); "
              "print(tuple(F.resized_crop(x, 1, 2, 3, 6, [2, 3], antialias=True).shape))")
    result = subprocess.run([sys.executable, "-c", script], cwd=TESTS_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 2, 3)"


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
