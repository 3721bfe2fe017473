"""The argument checks shared by the op families: each raises a TypeError or ValueError naming
the argument and what it got. Host values only: nothing here reads a device tensor."""
import math

import torch

FLOATING_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _dtype_names(dtypes):
    return ", ".join(str(dtype).replace("torch.", "") for dtype in dtypes)


def probability(value, name: str) -> float:
    """A Python number in [0, 1] (NaN and bools refused), returned as a float."""
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def positive(value, name: str, allow_zero: bool = False) -> float:
    """A finite Python number > 0 (or >= 0 with allow_zero), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return float(value)


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating(value, name: str, dtypes=FLOATING_DTYPES) -> torch.Tensor:
    """A tensor of one of `dtypes`."""
    if not isinstance(value, torch.Tensor) or value.dtype not in dtypes:
        tensor(value, name)
        raise TypeError(f"{name} must be {_dtype_names(dtypes)}, got {value.dtype}")
    return value


def same_device(value: torch.Tensor, name: str, reference: torch.Tensor, reference_name: str) -> None:
    if value.device != reference.device:
        raise ValueError(f"{name} is on {value.device} but {reference_name} is on {reference.device}")


def same_shape(value: torch.Tensor, name: str, reference: torch.Tensor, reference_name: str) -> None:
    if value.shape != reference.shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but {reference_name} has "
                         f"{tuple(reference.shape)}; they must match")
