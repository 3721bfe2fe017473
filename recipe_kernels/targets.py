"""MixedTarget: the targets of a CutMix/MixUp batch, kept as two index tensors and a weight.

Mixing (recipe_kernels.mixing) produces it; cross_entropy consumes it without ever
building the N x C soft-target tensor. `.dense()` builds that tensor for other losses.
"""
import numbers
from typing import Union

import torch


class MixedTarget:
    """Per sample n: the soft target lam[n] * LS(y_a[n]) + (1 - lam[n]) * LS(y_b[n]).

    y_a, y_b: int64 class indices of the same shape, (N,) or (N, d1, ..., dk).
    lam: a Python float in [0, 1], a 0-d tensor, or a per-sample (N,) tensor (any floating dtype;
    its values are not checked here, which would sync the device: cross_entropy(validate=True) does).
    LS is label smoothing with epsilon = the loss's label_smoothing:
    LS(y) = (1 - epsilon) * onehot(y) + epsilon / C (timm's mixup_target convention).
    Cross-entropy against a MixedTarget is lam * CE(y_a) + (1 - lam) * CE(y_b) per sample,
    which is exactly CE against `.dense()`; class indices must lie in [0, C) (no ignore_index).
    """

    __slots__ = ("y_a", "y_b", "lam")

    def __init__(self, y_a: torch.Tensor, y_b: torch.Tensor, lam: Union[float, torch.Tensor]) -> None:
        for name, y in (("y_a", y_a), ("y_b", y_b)):
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"MixedTarget: {name} must be a torch.Tensor, got {type(y).__name__}")
            if y.dtype != torch.int64:
                raise TypeError(f"MixedTarget: {name} must hold int64 class indices, got {y.dtype}")
            if y.dim() == 0:
                raise ValueError(f"MixedTarget: {name} must have a sample dimension, got a 0-d tensor")
        if y_a.shape != y_b.shape:
            raise ValueError(f"MixedTarget: y_a has shape {tuple(y_a.shape)} but y_b has {tuple(y_b.shape)}; "
                             "they must match")
        if y_a.device != y_b.device:
            raise ValueError(f"MixedTarget: y_a is on {y_a.device} but y_b is on {y_b.device}")
        if isinstance(lam, torch.Tensor):
            if not lam.is_floating_point():
                raise TypeError(f"MixedTarget: lam must be a floating tensor, got {lam.dtype}")
            if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != y_a.shape[0]):
                raise ValueError(f"MixedTarget: lam must be 0-d or have shape ({y_a.shape[0]},), "
                                 f"got {tuple(lam.shape)}")
            if lam.device != y_a.device:
                raise ValueError(f"MixedTarget: lam is on {lam.device} but y_a is on {y_a.device}")
        elif isinstance(lam, numbers.Real) and not isinstance(lam, bool):
            lam = float(lam)
            if not 0.0 <= lam <= 1.0:  # also rejects NaN; a tensor lam is checked by validate=True (a sync)
                raise ValueError(f"MixedTarget: lam must be in [0, 1], got {lam}")
        else:
            raise TypeError(f"MixedTarget: lam must be a float or a tensor, got {type(lam).__name__}")
        self.y_a, self.y_b, self.lam = y_a, y_b, lam

    @classmethod
    def of_checked(cls, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor) -> "MixedTarget":
        """A MixedTarget of parts the caller has already checked (the mixing ops' own targets and
        draws), without __init__'s checks: they cost about 1 µs of an eager call's host time."""
        target = cls.__new__(cls)
        target.y_a, target.y_b, target.lam = y_a, y_b, lam
        return target

    @property
    def shape(self):
        """The shape of the index tensors: (N,) or (N, d1, ..., dk)."""
        return self.y_a.shape

    @property
    def device(self):
        return self.y_a.device

    def per_sample_lam(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """lam as an (N,) tensor of `dtype` on the targets' device (no host sync)."""
        n = self.y_a.shape[0]
        if isinstance(self.lam, torch.Tensor):
            return self.lam.to(device=self.device, dtype=dtype).expand(n).contiguous()
        return torch.full((n,), self.lam, dtype=dtype, device=self.device)

    def to(self, device: Union[str, torch.device]) -> "MixedTarget":
        """The same MixedTarget with its tensors on `device`."""
        lam = self.lam.to(device) if isinstance(self.lam, torch.Tensor) else self.lam
        return MixedTarget(self.y_a.to(device), self.y_b.to(device), lam)

    def dense(self, num_classes: int, label_smoothing: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The soft target lam * LS(y_a) + (1 - lam) * LS(y_b), shape (N, C) or (N, C, d1, ..., dk).

        This is the N x C tensor that cross_entropy avoids; use it for other losses.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        off_value = label_smoothing / num_classes
        on_value = 1.0 - label_smoothing + off_value
        lam = self.per_sample_lam(dtype).reshape((-1,) + (1,) * self.y_a.dim())

        def smoothed(y):  # (N, ..., C) then classes moved to dim 1
            one_hot = torch.nn.functional.one_hot(y, num_classes).to(dtype)
            return one_hot * (on_value - off_value) + off_value

        mixed = lam * smoothed(self.y_a) + (1.0 - lam) * smoothed(self.y_b)
        return mixed.movedim(-1, 1).contiguous() if self.y_a.dim() > 1 else mixed

    def __repr__(self):
        lam = self.lam if not isinstance(self.lam, torch.Tensor) else f"tensor{tuple(self.lam.shape)}"
        return f"MixedTarget(shape={tuple(self.y_a.shape)}, lam={lam})"
