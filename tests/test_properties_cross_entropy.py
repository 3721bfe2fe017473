"""Property-based tests (hypothesis): cross_entropy, MixedTarget and nn.CrossEntropyLoss against
torch's F.cross_entropy in float64, across random shapes (C = 1 and spatial dims included), dtypes,
memory layouts, options, target kinds and backends; losses and gradients.

Sizes are tiny and example counts small: the Triton backend runs in the interpreter on the CPU
(the whole file takes well under a minute on two cores).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recipe_kernels as rk

from conftest import BACKENDS, DEVICE

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SMALL_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Against float64 on the same (rounded) logits: fp32 math, the loss in fp32, the gradient rounded once.
LOSS_TOLERANCE = dict(rtol=2e-5, atol=2e-5)
GRAD_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float16: dict(rtol=1e-3, atol=2e-5),
                  torch.bfloat16: dict(rtol=8e-3, atol=2e-4), torch.float64: dict(rtol=1e-10, atol=1e-12)}

dtypes = st.sampled_from(list(GRAD_TOLERANCE))
backends = st.sampled_from(BACKENDS)
# (N, C, d1, ..., dk): N = 0 is a zero batch, C = 1 gives a loss and gradient of exactly zero.
shapes = st.tuples(st.integers(0, 3), st.integers(1, 9), st.lists(st.integers(1, 2), max_size=2)).map(
    lambda t: (t[0], t[1]) + tuple(t[2]))
# How the logits sit in memory: their logical values never depend on it.
layouts = st.sampled_from(["contiguous", "classes_last", "strided", "expanded"])
smoothings = st.one_of(st.sampled_from([0.0, 1.0, 0.1]), st.floats(0.0, 1.0))
reductions = st.sampled_from(["none", "mean", "sum"])
target_kinds = st.sampled_from(["index", "probabilities", "mixed_float", "mixed_0d", "mixed_per_sample"])


def lay_out(storage, shape, layout):
    """logits of `shape` viewed out of `storage` (made by `storage_for`) in the given layout."""
    if layout == "classes_last":  # (N, d1, ..., C) in memory: channels_last-like, classes strided
        return storage.movedim(-1, 1)
    if layout == "strided":  # every other class of a wider tensor
        return storage[:, ::2]
    if layout == "expanded":  # one sample broadcast over the batch: stride 0 along N
        return storage.expand(shape)
    return storage


def storage_for(shape, layout, generator):
    """fp32 values for the storage that lay_out views as logits of `shape`."""
    n, c, rest = shape[0], shape[1], tuple(shape[2:])
    storage_shape = {"classes_last": (n,) + rest + (c,), "strided": (n, 2 * c) + rest,
                     "expanded": (1, c) + rest}.get(layout, shape)
    return 3 * torch.randn(storage_shape, generator=generator)


def make_target(kind, shape, generator, ignore_index, dtype):
    """(our target, torch's target, whether torch's target is already smoothed)."""
    n, c, rest = shape[0], shape[1], tuple(shape[2:])
    rows = (n,) + rest
    if kind == "index":
        target = torch.randint(0, c, rows, generator=generator)
        ignored = torch.rand(rows, generator=generator) < 0.3
        target = torch.where(ignored, ignore_index, target).to(DEVICE)
        return target, target, False
    if kind == "probabilities":
        q = torch.softmax(torch.randn(shape, generator=generator), 1).to(DEVICE, dtype)
        return q, q.double(), False
    y_a, y_b = (torch.randint(0, c, rows, generator=generator).to(DEVICE) for _ in range(2))
    if kind == "mixed_float":
        lam = float(torch.rand((), generator=generator))
    elif kind == "mixed_0d":
        lam = torch.rand((), generator=generator).to(DEVICE)
    else:
        lam = torch.rand(n, generator=generator).to(DEVICE)
        lam[:1] = 1.0  # an unmixed sample, as CutMixUp gives
    return rk.MixedTarget(y_a, y_b, lam), None, True


def torch_reference(storage, shape, layout, target, grad_output, smoothed, **options):
    """F.cross_entropy in float64 through the same layout: (loss, gradient with respect to the
    storage, the size of the terms summed into each element of that gradient)."""
    base = storage.detach().double().requires_grad_()
    logits = lay_out(base, shape, layout)
    if options.get("weight") is not None:
        options["weight"] = options["weight"].double()
    if smoothed:
        options["label_smoothing"] = 0.0  # MixedTarget.dense() is smoothed already
    if target.is_floating_point():  # torch refuses ignore_index with probabilities; ours does not use it
        options.pop("ignore_index", None)
    loss = F.cross_entropy(logits, target, **options)
    if not loss.requires_grad:  # nothing in the graph (an empty batch)
        return loss.detach(), torch.zeros_like(base), torch.zeros_like(base)
    grad, logits_grad = torch.autograd.grad(loss, (base, logits), grad_output.double())
    # An expanded storage element receives the sum of N rounded row gradients: its error scales with
    # the sum of their sizes, not with the (possibly cancelling) sum itself.
    magnitude = logits_grad.abs().sum(0, keepdim=True) if layout == "expanded" else grad.abs()
    return loss.detach(), grad, magnitude


def assert_grad_close(actual, expected, magnitude, dtype):
    tolerance = GRAD_TOLERANCE[dtype]
    bound = tolerance["atol"] + tolerance["rtol"] * magnitude
    error = (actual.double() - expected).abs()
    ok = (error <= bound) | (torch.isnan(actual) & torch.isnan(expected))
    assert bool(ok.all()), f"gradient differs by up to {(error - bound).max().item():.3g} beyond the tolerance"


@SETTINGS
@given(shape=shapes, dtype=dtypes, layout=layouts, kind=target_kinds, weighted=st.booleans(),
       ignore_in_range=st.booleans(), label_smoothing=smoothings, reduction=reductions,
       unit_grad_output=st.booleans(), inplace=st.booleans(), validate=st.booleans(), backend=backends,
       seed=st.integers(0, 2**31))
def test_loss_and_gradient_match_torch_in_float64(shape, dtype, layout, kind, weighted, ignore_in_range,
                                                   label_smoothing, reduction, unit_grad_output, inplace, validate,
                                                   backend, seed):
    generator = torch.Generator().manual_seed(seed)
    num_classes = shape[1]
    storage = storage_for(shape, layout, generator).to(DEVICE, dtype)
    weight = (torch.rand(num_classes, generator=generator) + 0.25).to(DEVICE) if weighted else None
    # ignore_index either torch's default or a real class (whose targets are then ignored).
    ignore_index = int(torch.randint(0, num_classes, (), generator=generator)) if ignore_in_range else -100
    target, torch_target, smoothed = make_target(kind, shape, generator, ignore_index, dtype)
    if smoothed:
        torch_target = target.dense(num_classes, label_smoothing, dtype=torch.float64)
    row_shape = (shape[0],) + tuple(shape[2:])
    if reduction == "none":
        grad_output = torch.ones(row_shape) if unit_grad_output else torch.randn(row_shape, generator=generator)
    else:  # exactly 1 is the masked-off scaling path
        grad_output = torch.tensor(1.0 if unit_grad_output else float(torch.rand((), generator=generator) + 0.5))
    grad_output = grad_output.to(DEVICE)

    # Ours: the storage is a leaf; the logits are a non-leaf in the chosen layout (inplace_backward
    # overwrites them when they are contiguous and falls back to a buffer otherwise).
    leaf = storage.clone().requires_grad_()
    logits = lay_out(leaf * 1.0, shape, layout)
    loss = rk.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                            label_smoothing=label_smoothing, inplace_backward=inplace, validate=validate,
                            backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output)
    expected_loss, expected_grad, magnitude = torch_reference(
        storage, shape, layout, torch_target, grad_output, smoothed, weight=weight, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.shape == expected_loss.shape
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE, equal_nan=True)
    assert grad.dtype == dtype and grad.shape == storage.shape
    assert_grad_close(grad, expected_grad, magnitude, dtype)

    # Without a gradient wanted, the forward-only kernels give the same loss.
    with torch.no_grad():
        loss_only = rk.cross_entropy(lay_out(storage, shape, layout), target, weight=weight,
                                     ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=label_smoothing, backend=backend)
    torch.testing.assert_close(loss_only, loss.detach(), rtol=1e-6, atol=1e-6, equal_nan=True)


@SMALL_SETTINGS
@given(shape=shapes, dtype=dtypes, label_smoothing=smoothings, reduction=reductions, weighted=st.booleans(),
       backend=backends, seed=st.integers(0, 2**31))
def test_module_matches_torch_module(shape, dtype, label_smoothing, reduction, weighted, backend, seed, monkeypatch):
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", backend)
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=generator)).to(DEVICE, dtype)
    target = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=generator).to(DEVICE)
    weight = (torch.rand(shape[1], generator=generator) + 0.25).to(DEVICE) if weighted else None
    ours = rk.nn.CrossEntropyLoss(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    theirs = torch.nn.CrossEntropyLoss(weight=None if weight is None else weight.double(), reduction=reduction,
                                       label_smoothing=label_smoothing)
    torch.testing.assert_close(ours(logits, target).double(), theirs(logits.double(), target), **LOSS_TOLERANCE,
                               equal_nan=True)


@SMALL_SETTINGS
@given(shape=shapes, label_smoothing=smoothings, backend=backends, seed=st.integers(0, 2**31),
       lam=st.sampled_from([0.0, 1.0]))
def test_mixed_target_with_lam_0_or_1_is_plain_cross_entropy(shape, label_smoothing, backend, seed, lam):
    # lam = 1 is CE against y_a alone, lam = 0 against y_b alone (an unmixed sample).
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=generator)).to(DEVICE)
    rows = (shape[0],) + tuple(shape[2:])
    y_a, y_b = (torch.randint(0, shape[1], rows, generator=generator).to(DEVICE) for _ in range(2))
    mixed = rk.cross_entropy(logits, rk.MixedTarget(y_a, y_b, lam), reduction="none",
                             label_smoothing=label_smoothing, backend=backend)
    plain = F.cross_entropy(logits.double(), y_a if lam == 1.0 else y_b, reduction="none",
                            label_smoothing=label_smoothing)
    torch.testing.assert_close(mixed.double(), plain, **LOSS_TOLERANCE)


@SMALL_SETTINGS
@given(rows=st.integers(1, 4), num_classes=st.integers(1, 7), mixed=st.booleans(), backend=backends,
       seed=st.integers(0, 2**31))
def test_out_of_range_class_index_never_gives_a_silent_number(rows, num_classes, mixed, backend, seed):
    # One row's index is outside [0, C): the kernels give NaN for that row only, the torch backend
    # raises (as torch does), validate=True raises ValueError everywhere.
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, num_classes, generator=generator)).to(DEVICE)
    target = torch.randint(0, num_classes, (rows,), generator=generator)
    bad_row = int(torch.randint(0, rows, (), generator=generator))
    target[bad_row] = [num_classes, -1, num_classes + 1000, -2**40][seed % 4]
    target = target.to(DEVICE)
    if mixed:
        y_b = torch.randint(0, num_classes, (rows,), generator=generator).to(DEVICE)
        target = rk.MixedTarget(target, y_b, 0.5) if seed % 2 else rk.MixedTarget(y_b, target, 0.5)
    with pytest.raises(ValueError, match="outside"):
        rk.cross_entropy(logits, target, validate=True, backend=backend)
    if backend == "torch":
        with pytest.raises((IndexError, RuntimeError)):
            rk.cross_entropy(logits, target, backend=backend)
        return
    x = logits.clone().requires_grad_()
    loss = rk.cross_entropy(x, target, reduction="none", label_smoothing=0.1, backend=backend)
    loss.sum().backward()
    good = torch.arange(rows, device=DEVICE) != bad_row
    loss = loss.detach()
    assert math.isnan(loss[bad_row].item()) and torch.isnan(x.grad[bad_row]).all()
    assert not torch.isnan(loss[good]).any() and not torch.isnan(x.grad[good]).any()
