"""The dispatch codes are defined once (recipe_kernels/_codes.py) and mirrored by csrc/codes.h."""
import os
import re

import torch

from recipe_kernels import _codes

HEADER = os.path.join(os.path.dirname(__file__), "..", "csrc", "codes.h")
# csrc's name for each entry of _codes.DTYPE_CODES
CSRC_DTYPE_NAMES = {torch.float32: "kFloat32", torch.float16: "kFloat16", torch.bfloat16: "kBFloat16",
                    torch.float64: "kFloat64", torch.uint8: "kUInt8"}
CSRC_MIX_MODE_NAMES = {"KEEP": "kKeep", "MIXUP": "kMixUp", "CUTMIX": "kCutMix", "ERASE": "kErase"}
CSRC_TARGET_KIND_NAMES = {"INDEX": "kIndexTarget", "MIXED": "kMixedTarget", "PROBABILITY": "kProbabilityTarget"}


def header_constants():
    """Every `kName = value` in csrc/codes.h, enums and constexprs alike."""
    with open(HEADER) as f:
        return {name: int(value) for name, value in re.findall(r"\b(k\w+)\s*=\s*(-?\d+)", f.read())}


def test_header_mirrors_python_exactly():
    expected = {CSRC_DTYPE_NAMES[dtype]: code for dtype, code in _codes.DTYPE_CODES.items()}
    expected["kRawBytes"] = _codes.RAW_BYTES
    expected.update({CSRC_MIX_MODE_NAMES[m.name]: int(m) for m in _codes.MixMode})
    expected.update({CSRC_TARGET_KIND_NAMES[k.name]: int(k) for k in _codes.TargetKind})
    assert header_constants() == expected


def test_codes_are_distinct():
    assert len(set(_codes.DTYPE_CODES.values()) | {_codes.RAW_BYTES}) == len(_codes.DTYPE_CODES) + 1
