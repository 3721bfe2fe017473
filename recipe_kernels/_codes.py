"""Integer codes that the kernels dispatch on, defined once for Python and csrc.

csrc/codes.h mirrors every value here; tests/test_codes.py checks that the two agree.
"""
import enum

import torch

# Element types of kernel arguments (csrc's DtypeCode). Each op accepts its own subset.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3, torch.uint8: 4}
# Not a dtype: an EMA table row copied byte for byte (ModelEMA's integer buffers).
RAW_BYTES = 5


class MixMode(enum.IntEnum):
    """What composite_batch does with each sample (the values of its `mode` tensor)."""
    KEEP = 0
    MIXUP = 1
    CUTMIX = 2
    ERASE = 3


class TargetKind(enum.IntEnum):
    """The kind of cross-entropy target: class indices, a MixedTarget, or class probabilities."""
    INDEX = 0
    MIXED = 1
    PROBABILITY = 2
