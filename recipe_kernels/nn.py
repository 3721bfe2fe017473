"""Modules over the package's functions: drop-in replacements for torch and timm modules."""
import torch

from recipe_kernels.dropout import dropout, drop_path


class Dropout(torch.nn.Module):
    """Drop-in for torch.nn.Dropout(p). `inplace` is accepted for compatibility; the result is a new tensor."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class DropPath(torch.nn.Module):
    """Drop-in for timm's DropPath(drop_prob): x * keep[sample] / (1 - p) in training, identity in eval."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob has to be between 0 and 1, but got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob:.3f}"


def replace_modules(model: torch.nn.Module) -> int:
    """Swaps torch.nn.Dropout and timm-style DropPath modules inside `model` for this package's.

    A timm-style DropPath is any module class named DropPath with a `drop_prob` attribute
    (timm.layers.DropPath and its copies) that scales by keep (scale_by_keep is True or
    absent). Returns how many modules were replaced.
    """
    replaced = 0
    for name, child in model.named_children():
        if type(child) is torch.nn.Dropout:
            setattr(model, name, Dropout(child.p))
        elif (type(child).__name__ == "DropPath" and not isinstance(child, DropPath)
              and hasattr(child, "drop_prob") and getattr(child, "scale_by_keep", True)):
            setattr(model, name, DropPath(child.drop_prob))
        else:
            replaced += replace_modules(child)
            continue
        getattr(model, name).train(child.training)
        replaced += 1
    return replaced


# ----------------------------------------------------------------------------- cross-entropy modules


# ----------------------------------------------------------------------------- mixing modules
