"""Modules and fitting into existing models."""
import pytest
import torch

import recipe_kernels as rk


class TimmStyleDropPath(torch.nn.Module):
    """Shaped like timm.layers.DropPath: class name DropPath, attributes drop_prob and scale_by_keep."""

    def __init__(self, drop_prob, scale_by_keep=True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        return x


TimmStyleDropPath.__name__ = "DropPath"


def test_replace_modules_swaps_dropout_and_drop_path():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.Dropout(0.2, inplace=True),
        torch.nn.Sequential(TimmStyleDropPath(0.1), torch.nn.Dropout(0.3), TimmStyleDropPath(0.1, scale_by_keep=False)),
    )
    model.eval()
    assert rk.nn.replace_modules(model) == 3
    assert isinstance(model[1], rk.nn.Dropout) and model[1].p == 0.2 and model[1].inplace
    assert isinstance(model[2][0], rk.nn.DropPath) and model[2][0].drop_prob == 0.1
    assert isinstance(model[2][1], rk.nn.Dropout) and model[2][1].p == 0.3 and not model[2][1].inplace
    assert type(model[2][2]).__name__ == "DropPath" and not isinstance(model[2][2], rk.nn.DropPath)  # unscaled: kept
    assert not model[1].training  # the replacement keeps the mode
    assert rk.nn.replace_modules(model) == 0  # nothing left to replace


def test_dropout_module_matches_function_under_same_seed():
    x = torch.randn(8, 16)
    module = rk.nn.Dropout(0.25)
    torch.manual_seed(0)
    expected = rk.dropout(x, 0.25)
    torch.manual_seed(0)
    assert torch.equal(module(x), expected)
    with pytest.raises(ValueError):
        rk.nn.DropPath(-0.1)
