"""cross_entropy and MixedTarget: against torch's F.cross_entropy in float64, across backends."""
import importlib
import itertools
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import recipe_kernels as rk
from recipe_kernels import _backend, reference
from recipe_kernels.cross_entropy import (MAX_BLOCK, _queue_item, cross_entropy_inplace_op, cross_entropy_op,
                                          cross_entropy_target_grad_op, cross_entropy_with_grad_op, scale_grad_op,
                                          split_count)

from conftest import DEVICE

# Tolerances against float64 on the same (rounded) logits: fp32 math, the gradient rounded once
# to the logits' dtype.
LOSS_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
GRAD_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-5),
                  torch.bfloat16: dict(rtol=8e-3, atol=1e-4)}
WIDE = 70_001  # more classes than one block (MAX_BLOCK) and than one split chunk: rows split over programs


def sample_inputs(shape, dtype=torch.float32, ignored=(), weighted=False, seed=0):
    """logits of `shape` (classes on dim 1), int64 targets with `ignored` rows set to -100, weights."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = shape[1]
    logits = (3 * torch.randn(shape, generator=generator)).to(DEVICE, dtype)
    target = torch.randint(0, num_classes, (shape[0],) + tuple(shape[2:]), generator=generator)
    target.view(-1)[list(ignored)] = -100
    weight = torch.rand(num_classes, generator=generator) + 0.5 if weighted else None
    return logits, target.to(DEVICE), None if weight is None else weight.to(DEVICE)


def torch_loss_and_grad(logits, target, grad_output=None, **options):
    """F.cross_entropy in float64 and its gradient with respect to the logits."""
    x = logits.detach().double().requires_grad_()
    if isinstance(options.get("weight"), torch.Tensor):
        options["weight"] = options["weight"].double()
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        target = target.double()
    loss = F.cross_entropy(x, target, **options)
    (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss) if grad_output is None else grad_output.double())
    return loss.detach(), grad


def our_loss_and_grad(logits, target, grad_output=None, **options):
    x = logits.detach().clone().requires_grad_()
    loss = rk.cross_entropy(x, target, **options)
    (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss) if grad_output is None else grad_output)
    return loss.detach(), grad


def assert_matches_torch(logits, target, backend, reduction="mean", torch_target=None, **options):
    """Our loss and gradient against torch's; a torch_target from MixedTarget.dense() is already smoothed."""
    grad_output = None
    if reduction == "none":  # random per-row grad_output
        grad_output = torch.randn(torch_target.shape if torch_target is not None and
                                  not torch_target.is_floating_point() else target_rows(logits),
                                  generator=torch.Generator().manual_seed(7)).to(DEVICE)
    loss, grad = our_loss_and_grad(logits, target, grad_output, reduction=reduction, backend=backend, **options)
    torch_options = dict(options)
    if isinstance(target, rk.MixedTarget):
        torch_options["label_smoothing"] = 0.0
    expected_loss, expected_grad = torch_loss_and_grad(
        logits, target if torch_target is None else torch_target, grad_output, reduction=reduction, **torch_options)
    assert loss.dtype == torch.float32 and loss.shape == expected_loss.shape
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE, equal_nan=True)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[logits.dtype], equal_nan=True)


def target_rows(logits):
    return (logits.shape[0],) + tuple(logits.shape[2:])


# ----------------------------------------------------------------------------- index targets


# (6, 7): small C, not a power of two; (3, 5, 2, 2): the (N, C, d1, d2) layout, classes strided.
@pytest.mark.parametrize("shape", [(6, 7), (3, 5, 2, 2)])
@pytest.mark.parametrize("weighted, label_smoothing, reduction",
                         list(itertools.product([False, True], [0.0, 0.1], ["none", "mean", "sum"])))
def test_every_option_matches_torch(backend, shape, weighted, label_smoothing, reduction):
    logits, target, weight = sample_inputs(shape, ignored=(1,), weighted=weighted)
    assert_matches_torch(logits, target, backend, reduction, weight=weight, label_smoothing=label_smoothing)


@pytest.mark.parametrize("shape, reason", [
    ((4, 1), "C = 1: the loss and gradient are exactly zero"),
    ((3, 1000), "one block, masked tail"),
    ((2, MAX_BLOCK + 3), "a row longer than one block"),
])
def test_class_counts(backend, shape, reason):
    logits, target, weight = sample_inputs(shape, ignored=(0,), weighted=True)
    assert_matches_torch(logits, target, backend, "mean", weight=weight, label_smoothing=0.2)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_wide_rows_split_over_programs(backend, reduction):
    logits, target, weight = sample_inputs((2, WIDE), weighted=True)
    assert split_count(2, WIDE, DEVICE) > 1  # the split path is what runs
    assert_matches_torch(logits, target, backend, reduction, weight=weight, label_smoothing=0.1)


def test_wide_rows_split_with_spatial_dims(backend):
    # (1, C, 2): two rows whose classes are 2 apart, each split over programs.
    from recipe_kernels.cross_entropy import SPLIT_BLOCK
    logits, target, weight = sample_inputs((1, 2 * SPLIT_BLOCK + 5, 2), dtype=torch.bfloat16, weighted=True)
    assert split_count(2, 2 * SPLIT_BLOCK + 5, DEVICE) > 1
    assert_matches_torch(logits, target, backend, "sum", weight=weight, label_smoothing=0.1)


def test_wide_rows_one_program_per_row(backend):
    # The same 70,001 classes without splitting: many blocks swept twice by one program.
    logits, target, _ = sample_inputs((2, WIDE))
    grad = torch.empty_like(logits)
    loss = cross_entropy_with_grad_op(logits, grad, target, None, None, None, -100, "sum", 0.1, 0.0, None, 1, None,
                                      backend)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_half_precision_logits(backend, dtype, weighted):
    logits, target, weight = sample_inputs((5, 300), dtype=dtype, ignored=(2,), weighted=weighted)
    assert_matches_torch(logits, target, backend, "mean", weight=weight, label_smoothing=0.1)
    assert_matches_torch(logits, target, backend, "none", weight=weight, label_smoothing=0.0)


FP16_MIN_NORMAL = 2.0 ** -14
FP16_MAX = 65504.0


@pytest.mark.parametrize("grad_output", [1.0, 2.0 ** 10, 2.0 ** 16, 3.7])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("inplace", [False, True])
def test_float16_gradient_under_loss_scaling(backend, grad_output, reduction, inplace):
    # GradScaler's recipe: confident fp16 logits, the loss times 2^10 .. 2^16. The gradient must be the
    # float64 one rounded once to fp16: relative 1e-3 where it is a normal fp16 number, within half a
    # subnormal step below that, and inf where float64's exceeds fp16's range (as F.cross_entropy's).
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 50, (16,), generator=generator)
    logits = (10 * F.one_hot(target, 50) + 0.5 * torch.randn(16, 50, generator=generator)).half().to(DEVICE)
    target = target.to(DEVICE)
    scale = torch.full((16,) if reduction == "none" else (), grad_output, device=DEVICE)
    leaf = logits.clone().requires_grad_()
    loss = rk.cross_entropy(leaf * 1.0, target, reduction=reduction, inplace_backward=inplace, backend=backend)
    loss.backward(scale)
    _, expected = torch_loss_and_grad(logits, target, scale, reduction=reduction)
    grad = leaf.grad.double()
    overflow = expected.abs() > FP16_MAX
    assert torch.equal(grad[overflow], expected[overflow].sign() * float("inf"))
    error = (grad - expected).abs()[~overflow]
    bound = torch.maximum(1e-3 * expected.abs(), torch.full_like(expected, 2.0 ** -25))[~overflow]
    assert bool((error <= bound).all()), f"largest excess {(error - bound).max().item():.3g}"
    assert bool((expected.abs() >= FP16_MIN_NORMAL).any())  # the loss scale lifts small entries into range


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_autocast_takes_logits_as_they_are(backend, reduction):
    # Under autocast a linear layer gives bf16 logits; the loss is fp32 (as F.cross_entropy's, which
    # autocast runs in fp32) and equals F.cross_entropy on those same logits in float64.
    layer = torch.nn.Linear(8, 10).to(DEVICE)
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    _, target, _ = sample_inputs((6, 10), ignored=(2,))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        logits = layer(features)
        loss = rk.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1, backend=backend)
        theirs = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1)
    assert logits.dtype == torch.bfloat16 and loss.dtype == theirs.dtype == torch.float32
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, torch.ones_like(loss), reduction=reduction,
                                                       label_smoothing=0.1)
    torch.testing.assert_close(loss.detach().double(), expected_loss, **LOSS_TOLERANCE)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.bfloat16])


def test_large_logits_are_stable(backend):
    logits, target, _ = sample_inputs((4, 50))
    logits = logits * 1000  # exp would overflow without the running max
    assert_matches_torch(logits, target, backend, "mean", label_smoothing=0.1)


LARGE_SHIFT = 1e4  # logits base + 1e4: lse rounded at this scale loses about 3 of fp32's 7 digits


def shifted_sample(target_kind, rows, num_classes, seed=0):
    """fp32 logits 3 * randn + LARGE_SHIFT, weights, and (our target, torch's target, torch's smoothing)
    for label_smoothing 0.1: MixedTarget's torch target is its dense form, smoothed already."""
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, num_classes, generator=generator) + LARGE_SHIFT).to(DEVICE)
    weight = (torch.rand(num_classes, generator=generator) + 0.5).to(DEVICE)
    if target_kind == "index":
        target = torch.randint(0, num_classes, (rows,), generator=generator).to(DEVICE)
        return logits, weight, target, target, 0.1
    if target_kind == "probabilities":
        target = torch.softmax(torch.randn(rows, num_classes, generator=generator), 1).to(DEVICE)
        return logits, weight, target, target, 0.1
    mixed = rk.MixedTarget(*(torch.randint(0, num_classes, (rows,), generator=generator).to(DEVICE) for _ in "ab"),
                           torch.rand(rows, generator=generator).to(DEVICE))
    return logits, weight, mixed, mixed.dense(num_classes, 0.1), 0.0


def torch_errors_at_large_shift(logits, weight, torch_target, torch_smoothing):
    """F.cross_entropy's per-row losses and gradient of their sum in float64 on the same fp32 logits,
    and the largest error of F.cross_entropy's own fp32 loss and gradient against them."""
    results = []
    for dtype in (torch.float64, torch.float32):
        x = logits.to(dtype).requires_grad_()
        target = torch_target.to(dtype) if torch_target.is_floating_point() else torch_target
        loss = F.cross_entropy(x, target, weight=weight.to(dtype), reduction="none", label_smoothing=torch_smoothing)
        results.append((loss.detach(), torch.autograd.grad(loss.sum(), x)[0]))
    (loss64, grad64), (loss32, grad32) = results
    return loss64, grad64, (loss32 - loss64).abs().max(), (grad32 - grad64).abs().max()


@pytest.mark.parametrize("target_kind", ["index", "probabilities", "mixed"])
@pytest.mark.parametrize("rows, num_classes, splits", [(64, 1000, 1), (8, 2 * MAX_BLOCK, 2)],
                         ids=["whole-rows", "split-rows"])
def test_large_shift_keeps_torch_precision(backend, target_kind, rows, num_classes, splits):
    # Softmax is shift-invariant: computed in the shifted domain, logits around 1e4 lose no more than
    # F.cross_entropy does in fp32 (the loss within 2x of its error against float64, and the gradient).
    logits, weight, target, torch_target, torch_smoothing = shifted_sample(target_kind, rows, num_classes)
    target_b = lam = None
    if isinstance(target, rk.MixedTarget):
        target, target_b, lam = target.y_a, target.y_b, target.per_sample_lam()
    grad = torch.empty_like(logits)
    loss = cross_entropy_with_grad_op(logits, grad, target, target_b, lam, weight, -100, "none", 0.1, 0.0, None,
                                      splits, None, backend)
    expected_loss, expected_grad, torch_loss_error, torch_grad_error = torch_errors_at_large_shift(
        logits, weight, torch_target, torch_smoothing)
    assert (loss.double() - expected_loss).abs().max() <= 2 * torch_loss_error
    assert (grad.double() - expected_grad).abs().max() <= 2 * torch_grad_error


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_nan_like_torch(backend, label_smoothing, weighted):
    logits, target, weight = sample_inputs((3, 6), ignored=(0, 1, 2), weighted=weighted)
    loss, grad = our_loss_and_grad(logits, target, weight=weight, label_smoothing=label_smoothing, backend=backend)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, weight=weight, label_smoothing=label_smoothing)
    assert torch.isnan(loss) and torch.isnan(expected_loss)
    torch.testing.assert_close(grad.double(), expected_grad, equal_nan=True)
    summed = rk.cross_entropy(logits, target, reduction="sum", backend=backend)
    assert summed.item() == 0.0


def test_ignore_index_inside_the_class_range(backend):
    logits, target, weight = sample_inputs((8, 5), weighted=True)
    assert_matches_torch(logits, target, backend, "mean", weight=weight, ignore_index=2, label_smoothing=0.1)


def test_minus_infinity_logits(backend):
    logits, target, _ = sample_inputs((3, 9))
    logits[:, 4] = float("-inf")  # a masked-out class (target never 4 here)
    target = torch.where(target == 4, 0, target)
    assert_matches_torch(logits, target, backend, "none")


# ----------------------------------------------------------------------------- probability targets


@pytest.mark.parametrize("shape", [(5, 11), (2, 4, 3)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_probability_targets(backend, shape, label_smoothing, reduction):
    logits, _, weight = sample_inputs(shape, weighted=True)
    probabilities = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(3)), 1).to(DEVICE)
    assert_matches_torch(logits, probabilities, backend, reduction, torch_target=probabilities,
                         weight=weight, label_smoothing=label_smoothing)


def test_probability_target_wide_rows(backend):
    logits, _, _ = sample_inputs((1, WIDE))
    probabilities = torch.softmax(torch.randn(1, WIDE), 1).to(DEVICE)
    assert_matches_torch(logits, probabilities, backend, "sum", torch_target=probabilities, label_smoothing=0.1)


def probability_gradients(logits, probabilities, loss_fn, grad_output_seed=5, logits_need_grad=True):
    """(loss, d loss/d logits or None, d loss/d probabilities) for loss_fn(logits, probabilities), with a
    random grad_output of the loss's shape."""
    x = logits.detach().clone().requires_grad_(logits_need_grad)
    q = probabilities.detach().clone().requires_grad_()
    loss = loss_fn(x, q)
    grad_output = torch.rand(loss.shape, generator=torch.Generator().manual_seed(grad_output_seed)).to(DEVICE) + 0.5
    inputs = (x, q) if logits_need_grad else (q,)
    grads = torch.autograd.grad(loss, inputs, grad_output.to(loss.dtype))
    return (loss.detach(),) + ((None,) if not logits_need_grad else ()) + grads


@pytest.mark.parametrize("shape", [(5, 11), (2, 4, 3)])
@pytest.mark.parametrize("weighted, label_smoothing, reduction",
                         [(False, 0.0, "mean"), (True, 0.2, "mean"), (True, 0.0, "sum"), (False, 0.1, "none"),
                          (True, 0.3, "none")])
@pytest.mark.parametrize("logits_need_grad", [True, False])
def test_probability_target_gradient_matches_torch(backend, shape, weighted, label_smoothing, reduction,
                                                   logits_need_grad):
    # d loss / d q = -(1 - e) w_c log p_c per element, reduced like the loss (torch smooths q as
    # (1 - e) q + e / C).
    logits, _, weight = sample_inputs(shape, weighted=weighted)
    probabilities = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(3)), 1).to(DEVICE)
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    loss, grad, grad_target = probability_gradients(
        logits, probabilities, lambda x, q: rk.cross_entropy(x, q, backend=backend, **options),
        logits_need_grad=logits_need_grad)
    options["weight"] = None if weight is None else weight.double()
    expected_loss, expected_grad, expected_grad_target = probability_gradients(
        logits.double(), probabilities.double(), lambda x, q: F.cross_entropy(x, q, **options),
        logits_need_grad=logits_need_grad)
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    assert grad_target.dtype == probabilities.dtype and grad_target.shape == probabilities.shape
    torch.testing.assert_close(grad_target.double(), expected_grad_target, rtol=1e-5, atol=1e-6)
    if logits_need_grad:
        torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.float32])


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_probability_target_gradient_with_inplace_backward(backend, inplace, dtype):
    # The target's gradient reads the logits in backward: inplace_backward keeps them until then (float16
    # writes its gradient over them after; the others fall back to a buffer).
    logits, _, weight = sample_inputs((6, 10), dtype=dtype, weighted=True)
    probabilities = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(3)), 1).to(DEVICE)
    leaf = logits.clone().requires_grad_()
    q = probabilities.clone().requires_grad_()
    loss = rk.cross_entropy(leaf * 1.0, q, weight=weight, label_smoothing=0.1, inplace_backward=inplace,
                            backend=backend)
    (256 * loss).backward()
    x = logits.double().requires_grad_()
    q64 = probabilities.double().requires_grad_()
    (256 * F.cross_entropy(x, q64, weight=weight.double(), label_smoothing=0.1)).backward()
    torch.testing.assert_close(leaf.grad.double(), x.grad, **GRAD_TOLERANCE[dtype])
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-5, atol=1e-5)


def test_probability_target_gradient_split_rows(backend):
    # Rows split over two programs: each writes its chunk of d loss/d q from the merged statistics.
    logits, _, weight = sample_inputs((3, 2 * MAX_BLOCK), weighted=True)
    probabilities = torch.softmax(torch.randn(3, 2 * MAX_BLOCK, generator=torch.Generator().manual_seed(3)),
                                  1).to(DEVICE)
    grad_output = torch.tensor([0.5, 2.0, -1.0], device=DEVICE)
    grad = torch.empty_like(probabilities)
    cross_entropy_target_grad_op(logits, grad, probabilities, weight, "none", 0.1, 2, grad_output, backend)
    q = probabilities.double().requires_grad_()
    loss = F.cross_entropy(logits.double(), q, weight=weight.double(), reduction="none", label_smoothing=0.1)
    (expected,) = torch.autograd.grad(loss, q, grad_output.double())
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-6)


# torch's OpInfo samples are float64, and so is the math then.
OPINFO_DTYPE = torch.float64


@pytest.fixture(scope="module")
def torch_opinfo_samples():
    """torch's own OpInfo samples for nn.functional.cross_entropy (CPU, float64): index and probability
    targets (the latter requiring grad), spatial dims, weights (negative ones too), ignore_index, reductions."""
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
    from torch.testing._internal.common_methods_invocations import op_db
    (opinfo,) = [op for op in op_db if op.name == "nn.functional.cross_entropy" and not op.variant_test_name]
    return list(opinfo.sample_inputs("cpu", torch.float64, requires_grad=True))


def opinfo_tensor(tensor):
    """A sample's tensor on the test device, floating ones in OPINFO_DTYPE."""
    if tensor is None:
        return None
    return tensor.detach().to(DEVICE, OPINFO_DTYPE if tensor.is_floating_point() else tensor.dtype)


def test_torch_opinfo_samples(backend, torch_opinfo_samples):
    def run(loss_fn, logits, target, weight, kwargs):
        x = logits.detach().clone().requires_grad_()
        inputs = (x,)
        if target.is_floating_point():
            target = target.detach().clone().requires_grad_()
            inputs += (target,)
        loss = loss_fn(x, target, weight=weight, **kwargs)
        grad_output = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
        return (loss.detach(),) + torch.autograd.grad(loss, inputs, grad_output)

    assert len(torch_opinfo_samples) >= 20
    for sample in torch_opinfo_samples:
        (target,) = sample.args
        kwargs = dict(sample.kwargs)
        weight = kwargs.pop("weight", None)
        expected = run(F.cross_entropy, sample.input, target, weight, kwargs)
        ours = run(lambda *args, **options: rk.cross_entropy(*args, backend=backend, **options),
                   opinfo_tensor(sample.input), opinfo_tensor(target), opinfo_tensor(weight), kwargs)
        for actual, wanted in zip(ours, expected):
            torch.testing.assert_close(actual.cpu().double(), wanted, rtol=1e-5, atol=1e-5,
                                       msg=lambda text: f"{sample}: {text}")


# ----------------------------------------------------------------------------- MixedTarget


def mixed_sample(rows=6, num_classes=9, lam_kind="per_sample", seed=0):
    generator = torch.Generator().manual_seed(seed)
    y_a = torch.randint(0, num_classes, (rows,), generator=generator).to(DEVICE)
    y_b = torch.randint(0, num_classes, (rows,), generator=generator).to(DEVICE)
    lam = {"float": 0.35, "scalar": torch.tensor(0.7), "per_sample": torch.rand(rows, generator=generator)}[lam_kind]
    return rk.MixedTarget(y_a, y_b, lam.to(DEVICE) if isinstance(lam, torch.Tensor) else lam)


@pytest.mark.parametrize("lam_kind", ["float", "scalar", "per_sample"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mixed_target_equals_dense_soft_target(backend, lam_kind, weighted, reduction):
    target = mixed_sample(lam_kind=lam_kind)
    logits, _, weight = sample_inputs((6, 9), weighted=weighted)
    assert_matches_torch(logits, target, backend, reduction, torch_target=target.dense(9, 0.1, dtype=torch.float64),
                         weight=weight, label_smoothing=0.1)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mixed_target_equals_lam_weighted_sum(backend, label_smoothing):
    target = mixed_sample()
    logits, _, _ = sample_inputs((6, 9))
    loss = rk.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing, backend=backend)
    x = logits.double()
    lam = target.lam.double()
    expected = (lam * F.cross_entropy(x, target.y_a, reduction="none", label_smoothing=label_smoothing)
                + (1 - lam) * F.cross_entropy(x, target.y_b, reduction="none", label_smoothing=label_smoothing))
    torch.testing.assert_close(loss.double(), expected, **LOSS_TOLERANCE)
    mean = rk.cross_entropy(logits, target, label_smoothing=label_smoothing, backend=backend)
    torch.testing.assert_close(mean.double(), expected.mean(), **LOSS_TOLERANCE)


def test_mixed_target_wide_rows_bf16(backend):
    target = mixed_sample(rows=2, num_classes=WIDE)
    logits, _, _ = sample_inputs((2, WIDE), dtype=torch.bfloat16)
    assert_matches_torch(logits, target, backend, "mean", torch_target=target.dense(WIDE, 0.1, dtype=torch.float64),
                         label_smoothing=0.1)


def test_mixed_target_with_spatial_dims(backend):
    # (N, C, d): lam is per sample n, shared by its d positions.
    generator = torch.Generator().manual_seed(4)
    y_a, y_b = (torch.randint(0, 5, (3, 4), generator=generator).to(DEVICE) for _ in range(2))
    target = rk.MixedTarget(y_a, y_b, torch.rand(3, generator=generator).to(DEVICE))
    logits, _, weight = sample_inputs((3, 5, 4), weighted=True)
    assert_matches_torch(logits, target, backend, "mean", torch_target=target.dense(5, 0.2, dtype=torch.float64),
                         weight=weight, label_smoothing=0.2)


def test_mixed_target_dense_is_timm_mixup_target():
    target = rk.MixedTarget(torch.tensor([0, 2]), torch.tensor([1, 2]), 0.25)
    dense = target.dense(3, label_smoothing=0.3)
    off, on = 0.1, 0.8  # timm: off = smoothing / C, on = 1 - smoothing + off
    expected = torch.tensor([[0.25 * on + 0.75 * off, 0.25 * off + 0.75 * on, off],
                             [off, off, on]])
    torch.testing.assert_close(dense, expected)
    torch.testing.assert_close(dense.sum(1), torch.ones(2))


def test_mixed_target_validation():
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="y_a has shape"):
        rk.MixedTarget(y, y[:2], 0.5)
    with pytest.raises(ValueError, match="lam must be 0-d or have shape"):
        rk.MixedTarget(y, y, torch.rand(2))
    with pytest.raises(TypeError, match="int64"):
        rk.MixedTarget(y.float(), y, 0.5)
    with pytest.raises(TypeError, match="lam must be"):
        rk.MixedTarget(y, y, "half")
    logits = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"MixedTarget has shape \(3,\)"):
        rk.cross_entropy(logits, rk.MixedTarget(y, y, 0.5).to(DEVICE))


# ----------------------------------------------------------------------------- autograd details


def test_backward_scales_by_grad_output_without_sync(backend):
    logits, target, _ = sample_inputs((4, 10))
    x = logits.clone().requires_grad_()
    (rk.cross_entropy(x, target, label_smoothing=0.1, backend=backend) * 3.0).backward()
    _, expected = torch_loss_and_grad(logits, target, label_smoothing=0.1)
    torch.testing.assert_close(x.grad.double(), 3.0 * expected, **GRAD_TOLERANCE[torch.float32])
    y = logits.clone().requires_grad_()
    rk.cross_entropy(y, target, reduction="none", backend=backend).sum().backward()  # expanded grad_output
    torch.testing.assert_close(y.grad.double(), torch_loss_and_grad(logits, target, reduction="sum")[1],
                               **GRAD_TOLERANCE[torch.float32])


def test_no_gradient_work_without_grad(backend):
    logits, target, _ = sample_inputs((4, 10))
    with torch.no_grad():
        loss = rk.cross_entropy(logits.requires_grad_(), target, backend=backend)
    assert loss.grad_fn is None


def test_backward_twice_raises_instead_of_double_scaling(backend):
    logits, target, _ = sample_inputs((4, 10))
    x = logits.clone().requires_grad_()
    loss = rk.cross_entropy(x, target, backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def second_order_sample(target_kind, rows=6, features=3, num_classes=5, seed=0):
    """Features, a classifier's weight, and (our target, torch's target, whether it is smoothed already):
    index targets have an ignored row."""
    generator = torch.Generator().manual_seed(seed)
    features_ = torch.randn(rows, features, generator=generator).to(DEVICE)
    classifier = torch.randn(num_classes, features, generator=generator).to(DEVICE)
    if target_kind == "index":
        target = torch.randint(0, num_classes, (rows,), generator=generator)
        target[1] = -100
        return features_, classifier, target.to(DEVICE), target.to(DEVICE), False
    if target_kind == "probabilities":
        target = torch.softmax(torch.randn(rows, num_classes, generator=generator), 1).to(DEVICE)
        return features_, classifier, target, target.double(), False
    mixed = rk.MixedTarget(*(torch.randint(0, num_classes, (rows,), generator=generator).to(DEVICE) for _ in "ab"),
                           torch.rand(rows, generator=generator).to(DEVICE))
    return features_, classifier, mixed, None, True


@pytest.mark.parametrize("target_kind", ["index", "probabilities", "mixed"])
@pytest.mark.parametrize("weighted, label_smoothing, reduction",
                         [(False, 0.0, "mean"), (True, 0.1, "mean"), (True, 0.0, "sum"), (False, 0.2, "none"),
                          (True, 0.1, "none")])
def test_double_backward_matches_torch(backend, target_kind, weighted, label_smoothing, reduction):
    # A gradient penalty through a classifier: d/dW |d loss/d features|^2 needs d^2 loss/d logits^2, and
    # with a grad_output that requires grad (reduction="none") d/d grad_output of the first gradient.
    features, classifier, target, torch_target, smoothed = second_order_sample(target_kind)
    if smoothed:
        torch_target = target.dense(5, label_smoothing, dtype=torch.float64)
    weight = torch.rand(5, generator=torch.Generator().manual_seed(1)).to(DEVICE) + 0.5 if weighted else None
    probe = torch.randn(features.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)

    def penalty_gradients(dtype, target, loss_fn):
        # A probability target requires grad too: its first gradient enters the penalty as well.
        x = features.to(dtype).requires_grad_()
        w = classifier.to(dtype).requires_grad_()
        q = (target.detach().to(dtype).requires_grad_(),) if target_kind == "probabilities" else ()
        loss = loss_fn(x @ w.t(), q[0] if q else target)
        grad_output = torch.ones_like(loss) if reduction != "none" else \
            torch.linspace(0.5, 2.0, loss.numel(), dtype=dtype, device=DEVICE).requires_grad_()
        first = torch.autograd.grad(loss, (x,) + q, grad_output, create_graph=True)
        penalty = first[0].pow(2).sum() + (first[0] * probe.to(dtype)).sum() + sum(g.pow(2).sum() for g in first[1:])
        inputs = (w, x) + q + ((grad_output,) if grad_output.requires_grad else ())
        return torch.autograd.grad(penalty, inputs)

    ours = penalty_gradients(torch.float32, target, lambda logits, target: rk.cross_entropy(
        logits, target, weight=weight, reduction=reduction, label_smoothing=label_smoothing, backend=backend))
    theirs = penalty_gradients(torch.float64, torch_target, lambda logits, target: F.cross_entropy(
        logits, target, weight=None if weight is None else weight.double(), reduction=reduction,
        label_smoothing=0.0 if smoothed else label_smoothing))
    for actual, expected in zip(ours, theirs):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)


def test_double_backward_after_inplace_backward_raises(backend):
    logits, target, _ = sample_inputs((4, 6))
    leaf = logits.clone().requires_grad_()
    for view in (lambda x: x, lambda x: x.view(-1, 6)):
        loss = rk.cross_entropy(view(leaf * 1.0), target, inplace_backward=True, backend=backend)
        with pytest.raises(RuntimeError, match="inplace_backward=True overwrote the logits"):
            torch.autograd.grad(loss, leaf, create_graph=True)


@pytest.mark.parametrize("target_kind", ["index", "mixed", "probabilities"])
def test_inplace_backward_writes_gradient_into_logits(backend, target_kind):
    logits, target, weight = sample_inputs((5, 12), ignored=(1,), weighted=True)
    if target_kind == "mixed":
        target = mixed_sample(rows=5, num_classes=12)
    elif target_kind == "probabilities":
        target = torch.softmax(torch.randn(5, 12), 1).to(DEVICE)
    leaf = logits.clone().requires_grad_()
    hidden = leaf * 1.0  # a non-leaf, as the output of a model's last layer is
    storage = hidden.data_ptr()
    loss = rk.cross_entropy(hidden, target, weight=weight, label_smoothing=0.1, inplace_backward=True,
                            backend=backend)
    (2.0 * loss).backward()
    expected_loss, expected_grad = torch_loss_and_grad(
        logits, target.dense(12, 0.1, dtype=torch.float64) if target_kind == "mixed" else target,
        weight=weight, label_smoothing=0.0 if target_kind == "mixed" else 0.1)
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(leaf.grad.double(), 2.0 * expected_grad, **GRAD_TOLERANCE[torch.float32])
    assert hidden.data_ptr() == storage  # no N x C buffer: the logits' storage holds the gradient
    torch.testing.assert_close(hidden.detach().double(), 2.0 * expected_grad, **GRAD_TOLERANCE[torch.float32])


@pytest.mark.parametrize("compiled", [False, True])
def test_inplace_backward_on_a_view(backend, compiled):
    # logits.view(-1, C) of a (B, T, C) output, as language models compute the loss: autograd forbids
    # the two-output Function on a view, so a one-output Function without mark_dirty takes it.
    layer = torch.nn.Linear(8, 10).to(DEVICE)
    features = torch.randn(2, 3, 8, device=DEVICE)
    _, target, _ = sample_inputs((6, 10), ignored=(2,))

    def step(features, target):
        logits = layer(features).view(-1, 10)
        return rk.cross_entropy(logits, target, label_smoothing=0.1, inplace_backward=True, backend=backend)

    loss = (torch.compile(step, fullgraph=True) if compiled else step)(features, target)
    (2.0 * loss).backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    expected = F.cross_entropy(layer(features).view(-1, 10).double(), target, label_smoothing=0.1)
    (2.0 * expected).backward()
    torch.testing.assert_close(loss.double(), expected.detach(), **LOSS_TOLERANCE)
    torch.testing.assert_close(grad.double(), layer.weight.grad.double(), rtol=1e-5, atol=1e-6)
    leaf = torch.randn(2, 3, 10, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="would overwrite a leaf tensor"):
        rk.cross_entropy(leaf.view(-1, 10), target, inplace_backward=True, backend=backend)
    with pytest.raises(ValueError, match="would overwrite a leaf tensor"):
        rk.cross_entropy(leaf[0], target[:3], inplace_backward=True, backend=backend)


CUT_INTO_TWO = {  # two crops' logits cut from one (8, C) output: each part is a view of part of it
    "split": lambda h: h.split(4),
    "chunk": lambda h: h.chunk(2),
    "unbind": lambda h: h.view(2, 4, h.shape[-1]).unbind(0),
    "tensor_split": lambda h: torch.tensor_split(h, 2),
    "split_whole": lambda h: (h.split(8)[0][:4], h[4:]),  # a split output covering all of h, then sliced
}


@pytest.mark.parametrize("cut", list(CUT_INTO_TWO))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("compiled", [False, True])
def test_inplace_backward_on_parts_of_one_output(backend, cut, dtype, compiled):
    # Outputs of split/chunk/unbind may not be modified in place (autograd), and sibling views share
    # their base's version counter: such logits get a separate gradient buffer, decided before anything
    # is written, so the output stays intact and the gradient is torch's.
    if compiled and (cut == "split_whole" or dtype == torch.float16):
        pytest.skip("one compiled case per way of cutting is enough")
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(3, 5).to(DEVICE, dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 3, generator=generator))
    features = torch.randn(8, 3, generator=generator).to(DEVICE, dtype)
    _, target, _ = sample_inputs((8, 5))

    def loss_of(output):
        first, second = CUT_INTO_TWO[cut](output)
        return (rk.cross_entropy(first, target[:4], inplace_backward=True, backend=backend)
                + rk.cross_entropy(second, target[4:], inplace_backward=True, backend=backend))

    if compiled:
        loss = torch.compile(lambda features: loss_of(layer(features)), fullgraph=True)(features)
    else:
        output = layer(features)
        loss = loss_of(output)
        torch.testing.assert_close(output, layer(features), rtol=0, atol=0)  # nothing was written over it
    (1024 * loss).backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    logits = layer(features).double()
    (1024 * (F.cross_entropy(logits[:4], target[:4]) + F.cross_entropy(logits[4:], target[4:]))).backward()
    # The layer's own backward (a matmul in `dtype`) adds its rounding to the logits' gradient's.
    torch.testing.assert_close(grad.double(), layer.weight.grad.double(), rtol=1e-4 if dtype == torch.float32 else 2e-3,
                               atol=0)


def test_inplace_backward_raises_when_logits_are_needed_elsewhere(backend):
    logits, target, _ = sample_inputs((4, 6))
    leaf = logits.clone().requires_grad_()
    hidden = leaf * 1.0
    penalty = hidden.pow(2).sum()  # saves hidden for its backward
    loss = rk.cross_entropy(hidden, target, inplace_backward=True, backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + penalty).backward()


def test_module_is_a_drop_in(backend, monkeypatch):
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", backend)
    logits, target, weight = sample_inputs((6, 9), ignored=(3,), weighted=True)
    ours = rk.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1, reduction="sum")
    theirs = torch.nn.CrossEntropyLoss(weight=weight.double(), label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(ours(logits, target).double(), theirs(logits.double(), target), **LOSS_TOLERANCE)
    mixed = mixed_sample()
    theirs.label_smoothing = 0.0  # the dense target is smoothed already
    torch.testing.assert_close(ours(logits, mixed).double(),
                               theirs(logits.double(), mixed.dense(9, 0.1, dtype=torch.float64)), **LOSS_TOLERANCE)
    with pytest.raises(ValueError):
        rk.nn.CrossEntropyLoss(reduction="avg")


# ----------------------------------------------------------------------------- drop-in for torch's calls


def docs_examples(obj):
    """The statements of the first `>>>` example block in obj's docstring (torch's own documentation)."""
    lines, started = [], False
    for line in obj.__doc__[obj.__doc__.index("Examples"):].splitlines():
        line = line.strip()
        if line.startswith(">>>"):
            started = True
            lines.append(line[3:].strip())
        elif started:
            break
    return [line for line in lines if line and not line.startswith("#")]


def run_docs_examples(statements, namespace):
    """Runs the statements from one seed; after each backward(): (the loss, the input's gradient)."""
    torch.manual_seed(0)
    results = []
    for statement in statements:
        exec(statement, namespace)
        if statement.endswith(".backward()"):
            loss = namespace[statement.split(".")[0]]
            results.append((loss.detach().clone(), namespace["input"].grad.clone()))
    return results


@pytest.mark.parametrize("documented", ["F.cross_entropy", "nn.CrossEntropyLoss"])
def test_torch_docs_examples_run_unchanged(backend, documented, monkeypatch):
    # torch's documentation examples, statement for statement, with F / nn standing for this package.
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", backend)
    statements = docs_examples(F.cross_entropy if documented == "F.cross_entropy" else torch.nn.CrossEntropyLoss)
    assert len(statements) >= 8
    ours = run_docs_examples(statements, dict(torch=torch, F=types.SimpleNamespace(cross_entropy=rk.cross_entropy),
                                              nn=types.SimpleNamespace(CrossEntropyLoss=rk.nn.CrossEntropyLoss)))
    theirs = run_docs_examples(statements, dict(torch=torch, F=F, nn=torch.nn))
    assert len(ours) == len(theirs) == 2  # index targets, then probabilities
    for (loss, grad), (expected_loss, expected_grad) in zip(ours, theirs):
        torch.testing.assert_close(loss, expected_loss, **LOSS_TOLERANCE)
        torch.testing.assert_close(grad, expected_grad, **GRAD_TOLERANCE[torch.float32])


def test_positional_and_keyword_arguments_are_torchs(backend):
    # (input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing), as F's.
    logits, target, weight = sample_inputs((6, 5), weighted=True)
    ours = rk.cross_entropy(logits, target, weight, None, 2, None, "sum", 0.1, backend=backend)
    theirs = F.cross_entropy(logits, target, weight, None, 2, None, "sum", 0.1)
    torch.testing.assert_close(ours, theirs, **LOSS_TOLERANCE)
    ours = rk.cross_entropy(input=logits, target=target, weight=weight, reduction="none", backend=backend)
    torch.testing.assert_close(ours, F.cross_entropy(input=logits, target=target, weight=weight, reduction="none"),
                               **LOSS_TOLERANCE)
    module = rk.nn.CrossEntropyLoss(weight, None, 2, None, "sum", 0.1)
    torch.testing.assert_close(module(input=logits, target=target),
                               torch.nn.CrossEntropyLoss(weight, None, 2, None, "sum", 0.1)(logits, target),
                               **LOSS_TOLERANCE)
    with pytest.raises(TypeError):  # the package's own options are keyword-only
        rk.cross_entropy(logits, target, weight, None, -100, None, "mean", 0.0, True)


@pytest.mark.parametrize("size_average, reduce", [(None, False), (False, None), (True, None), (False, True),
                                                  (True, True), (None, True)])
def test_legacy_size_average_and_reduce_follow_torch(backend, size_average, reduce):
    logits, target, weight = sample_inputs((6, 5), ignored=(1,), weighted=True)
    results = []
    for cross_entropy, loss_module, options in ((rk.cross_entropy, rk.nn.CrossEntropyLoss, dict(backend=backend)),
                                                 (F.cross_entropy, torch.nn.CrossEntropyLoss, {})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = cross_entropy(logits, target, weight, size_average=size_average, reduce=reduce,
                                 reduction="sum", **options)
            module = loss_module(weight, size_average, -100, reduce)
        results.append((loss, module.reduction, sorted(str(w.message) for w in caught)))
    (loss, reduction, messages), (expected_loss, expected_reduction, expected_messages) = results
    torch.testing.assert_close(loss, expected_loss, **LOSS_TOLERANCE)
    assert reduction == expected_reduction and messages == expected_messages and messages


@pytest.mark.parametrize("target_kind", ["index", "probabilities", "mixed"])
def test_float64_matches_torch_in_float64(backend, target_kind):
    # fp64 logits: fp64 math and a float64 loss, equal to F.cross_entropy's to fp64 rounding.
    logits, target, weight = sample_inputs((6, 7, 2), ignored=(3,), weighted=True)
    logits, weight = logits.double(), weight.double()
    torch_target, smoothing = target, 0.1
    if target_kind == "probabilities":
        target = torch_target = torch.softmax(torch.randn(6, 7, 2, generator=torch.Generator().manual_seed(3)),
                                              1).to(DEVICE, torch.float64)
    elif target_kind == "mixed":
        y_b = torch.randint(0, 7, (6, 2), generator=torch.Generator().manual_seed(4)).to(DEVICE)
        target = rk.MixedTarget(torch.where(target < 0, 0, target), y_b, torch.rand(6).to(DEVICE))
        torch_target, smoothing = target.dense(7, 0.1, dtype=torch.float64), 0.0
    for reduction in ("mean", "none"):
        loss, grad = our_loss_and_grad(logits, target, weight=weight, reduction=reduction, label_smoothing=0.1,
                                       backend=backend)
        expected_loss, expected_grad = torch_loss_and_grad(logits, torch_target, weight=weight, reduction=reduction,
                                                           label_smoothing=smoothing)
        assert loss.dtype == grad.dtype == torch.float64
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("target_kind, reduction", [("index", "mean"), ("probabilities", "none"), ("mixed", "sum")])
def test_float64_gradcheck_and_gradgradcheck(backend, target_kind, reduction):
    # torch's own numerical checks, first and second order, through every target kind (the probability
    # target is differentiated too), weights, ignore_index and smoothing. float64 writes its gradient in
    # backward, so backward can run again through the same graph, as gradcheck does.
    logits, target, weight = sample_inputs((3, 4), ignored=(1,), weighted=True)
    logits, weight = logits.double(), weight.double()
    inputs = [logits.clone().requires_grad_()]
    if target_kind == "probabilities":
        inputs.append(torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(3)),
                                    1).to(DEVICE, torch.float64).requires_grad_())
    elif target_kind == "mixed":
        target = rk.MixedTarget(torch.where(target < 0, 0, target), target.flip(0).clamp(min=0),
                                torch.rand(3).to(DEVICE))

    def loss_fn(x, *q):
        return rk.cross_entropy(x, q[0] if q else target, weight=weight, reduction=reduction, label_smoothing=0.1,
                                backend=backend)

    assert torch.autograd.gradcheck(loss_fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(loss_fn, inputs, fast_mode=True)


# ----------------------------------------------------------------------------- bad input


def test_out_of_range_class_index(backend):
    logits, target, weight = sample_inputs((4, 7), weighted=True)
    target[2] = 7
    if backend == "torch":
        with pytest.raises((IndexError, RuntimeError)):
            rk.cross_entropy(logits, target, weight=weight, backend=backend)
        with pytest.raises((IndexError, RuntimeError)):
            F.cross_entropy(logits, target)  # torch raises too
    else:  # the row is NaN, the others are untouched, nothing is read out of bounds
        x = logits.clone().requires_grad_()
        loss = rk.cross_entropy(x, target, weight=weight, reduction="none", label_smoothing=0.1, backend=backend)
        assert torch.isnan(loss[2]) and not torch.isnan(loss[[0, 1, 3]]).any()
        loss.sum().backward()
        assert torch.isnan(x.grad[2]).all() and not torch.isnan(x.grad[[0, 1, 3]]).any()
        mixed = rk.MixedTarget(target.clamp(max=6), torch.tensor([0, 1, -1, 3], device=DEVICE), 0.5)
        mixed_loss = rk.cross_entropy(logits, mixed, reduction="none", backend=backend)
        assert torch.isnan(mixed_loss[2]) and not torch.isnan(mixed_loss[[0, 1, 3]]).any()
    with pytest.raises(ValueError, match="class index 7, outside"):
        rk.cross_entropy(logits, target, validate=True, backend=backend)
    bad_mixed = rk.MixedTarget(target.clamp(0, 6), torch.tensor([0, -100, 1, 2], device=DEVICE), 0.5)
    with pytest.raises(ValueError, match="class index -100, outside"):  # no ignore_index for mixed targets
        rk.cross_entropy(logits, bad_mixed, validate=True, backend=backend)
    target[2] = -100
    rk.cross_entropy(logits, target, validate=True, backend=backend)  # ignore_index is allowed


def test_bad_input_raises_value_error():
    logits = torch.randn(4, 5, device=DEVICE)
    target = torch.tensor([0, 1, 2, 3], device=DEVICE)
    with pytest.raises(ValueError, match=r"target has shape \(3,\)"):
        rk.cross_entropy(logits, target[:3])
    with pytest.raises(ValueError, match="probability target has 6 classes but logits have 5"):
        rk.cross_entropy(logits, torch.rand(4, 6, device=DEVICE))
    with pytest.raises(ValueError, match=r"target has shape \(4, 5, 1\)"):
        rk.cross_entropy(logits, torch.rand(4, 5, 1, device=DEVICE))
    for label_smoothing in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            rk.cross_entropy(logits, target, label_smoothing=label_smoothing)
    with pytest.raises(ValueError, match="reduction must be one of"):
        rk.cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="weight must be a 1-D tensor of 5"):
        rk.cross_entropy(logits, target, weight=torch.ones(4, device=DEVICE))
    with pytest.raises(ValueError, match="logits must have shape"):
        rk.cross_entropy(logits[0], target[0])
    with pytest.raises(TypeError, match="float32, float16, bfloat16, float64"):
        rk.cross_entropy(logits.int(), target)


# ----------------------------------------------------------------------------- registration


@pytest.mark.parametrize("target_kind", ["index", "mixed", "probabilities"])
def test_opcheck(backend, target_kind):
    logits, target, weight = sample_inputs((4, 6), ignored=(1,), weighted=True)
    target_b = lam = None
    if target_kind == "mixed":
        mixed = mixed_sample(rows=4, num_classes=6)
        target, target_b, lam = mixed.y_a, mixed.y_b, mixed.per_sample_lam()
    elif target_kind == "probabilities":
        target = torch.softmax(torch.randn(4, 6), 1).to(DEVICE)
    for reduction in ("mean", "none"):
        torch.library.opcheck(cross_entropy_with_grad_op.custom_op, (logits, torch.empty_like(logits), target,
                                                                     target_b, lam, weight, -100, reduction, 0.1,
                                                                     0.01, None, 0, None, backend))
    torch.library.opcheck(cross_entropy_op.custom_op, (logits, target, target_b, lam, None, -100, "sum", 0.0, 0.01,
                                                       torch.empty(4, device=DEVICE), 0, backend))
    torch.library.opcheck(cross_entropy_inplace_op.custom_op, (logits.clone(), target, target_b, lam, weight, -100,
                                                               "mean", 0.1, 0.0, None, 0, None, backend))
    torch.library.opcheck(scale_grad_op.custom_op, (torch.randn(4, 6, device=DEVICE), torch.randn(4, device=DEVICE),
                                                    backend))
    if target_kind == "probabilities":
        for reduction, grad_output in (("mean", torch.tensor(3.0, device=DEVICE)),
                                       ("none", torch.rand(4, device=DEVICE))):
            torch.library.opcheck(cross_entropy_target_grad_op.custom_op, (logits, torch.empty_like(target), target,
                                                                           weight, reduction, 0.1, 0, grad_output,
                                                                           backend))


def test_compile_fullgraph(backend):
    layer = torch.nn.Linear(8, 10).to(DEVICE)

    def step(features, target, mixed):
        logits = layer(features)
        return (rk.cross_entropy(logits, target, label_smoothing=0.1, backend=backend)
                + rk.cross_entropy(logits, mixed, label_smoothing=0.1, backend=backend))

    compiled = torch.compile(step, fullgraph=True)
    features = torch.randn(6, 8, device=DEVICE)
    _, target, _ = sample_inputs((6, 10), ignored=(2,))
    mixed = mixed_sample(rows=6, num_classes=10)
    loss = compiled(features, target, mixed)
    loss.backward()
    compiled_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    logits = layer(features).double()
    expected = (F.cross_entropy(logits, target, label_smoothing=0.1)
                + F.cross_entropy(logits, mixed.dense(10, 0.1, dtype=torch.float64), label_smoothing=0.0))
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), **LOSS_TOLERANCE)
    torch.testing.assert_close(compiled_grad.double(), layer.weight.grad.double(), rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_inplace_backward(backend):
    layer = torch.nn.Linear(8, 10).to(DEVICE)

    def step(features, target):
        return rk.cross_entropy(layer(features), target, label_smoothing=0.1, inplace_backward=True,
                                backend=backend)

    features = torch.randn(6, 8, device=DEVICE)
    _, target, _ = sample_inputs((6, 10))
    loss = torch.compile(step, fullgraph=True)(features, target)
    (2.0 * loss).backward()
    compiled_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    (2.0 * F.cross_entropy(layer(features).double(), target, label_smoothing=0.1)).backward()
    torch.testing.assert_close(compiled_grad.double(), layer.weight.grad.double(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the reference itself


def test_reference_matches_torch_in_float64():
    logits, target, weight = sample_inputs((5, 4, 3), ignored=(2,), weighted=True)
    losses, grad, denominator = reference.cross_entropy_rows(
        logits.double(), target, weight=weight, label_smoothing=0.2, math_dtype=torch.float64)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, weight=weight, label_smoothing=0.2)
    torch.testing.assert_close(losses.sum() / denominator, expected_loss)
    torch.testing.assert_close(grad / denominator, expected_grad)


# ----------------------------------------------------------------------------- the CUDA kernels' arithmetic


@pytest.mark.skipif(not hasattr(_backend._C, "cross_entropy_host"), reason="CUDA extension not built")
@pytest.mark.parametrize("target_kind", ["index", "mixed", "probabilities"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunk", [5, 64], ids=["split-chunks", "whole-rows"])
def test_cuda_arithmetic_on_host(target_kind, weighted, chunk):
    # csrc/cross_entropy.cu's __host__ __device__ row logic run on the CPU: online statistics in groups
    # of four merged over chunks (as split rows are), loss and gradient, against float64.
    logits, target, weight = sample_inputs((6, 23), ignored=(1,), weighted=weighted)
    logits, target = logits.cpu(), target.cpu()
    weight = None if weight is None else weight.cpu()
    empty_i, empty_f = torch.empty(0, dtype=torch.int64), torch.empty(0)
    target_b = lam = q = None
    kind = {"index": 0, "mixed": 1, "probabilities": 2}[target_kind]
    if target_kind == "mixed":
        target = torch.where(target < 0, 0, target)
        target_b, lam = torch.roll(target, 1), torch.rand(6)
    elif target_kind == "probabilities":
        q = torch.softmax(torch.randn(6, 23), 1)
    loss, grad = _backend._C.cross_entropy_host(
        logits.numpy(), (target if q is None else empty_i).numpy(), (empty_i if target_b is None else target_b).numpy(),
        (empty_f if lam is None else lam).numpy(), (empty_f if weight is None else weight).numpy(),
        (empty_f if q is None else q).numpy(), -100, 0.1, kind, chunk)
    expected_loss, expected_grad, _ = reference.cross_entropy_rows(
        logits.double(), target if q is None else q, weight=weight, label_smoothing=0.1, target_b=target_b, lam=lam,
        math_dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(loss).double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(torch.from_numpy(grad).double(), expected_grad, **GRAD_TOLERANCE[torch.float32])


def cuda_host_rows(logits, target, weight, label_smoothing, chunk, of_target=False):
    """_C.cross_entropy_host on CPU tensors: (per-row losses, gradient of their sum with respect to the
    logits, or with of_target to the probability target)."""
    empty_i, empty_f = torch.empty(0, dtype=torch.int64), torch.empty(0)
    target_b = lam = q = None
    if isinstance(target, rk.MixedTarget):
        target, target_b, lam, kind = target.y_a, target.y_b, target.per_sample_lam(), 1
    elif target.is_floating_point():
        target, q, kind = empty_i, target, 2
    else:
        kind = 0
    loss, grad = _backend._C.cross_entropy_host(
        logits.cpu().numpy(), target.cpu().numpy(), (empty_i if target_b is None else target_b.cpu()).numpy(),
        (empty_f if lam is None else lam.cpu()).numpy(), (empty_f if weight is None else weight.cpu()).numpy(),
        (empty_f if q is None else q.cpu()).numpy(), -100, label_smoothing, kind, chunk, of_target)
    return torch.from_numpy(loss), torch.from_numpy(grad)


@pytest.mark.skipif(not hasattr(_backend._C, "cross_entropy_host"), reason="CUDA extension not built")
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunk", [5, 64], ids=["split-chunks", "whole-rows"])
def test_cuda_arithmetic_probability_target_gradient(weighted, chunk):
    logits, _, weight = sample_inputs((6, 23), weighted=weighted)
    probabilities = torch.softmax(torch.randn(6, 23, generator=torch.Generator().manual_seed(3)), 1)
    _, grad = cuda_host_rows(logits.cpu(), probabilities, None if weight is None else weight.cpu(), 0.1, chunk,
                             of_target=True)
    q = probabilities.double().requires_grad_()
    loss = F.cross_entropy(logits.cpu().double(), q, weight=None if weight is None else weight.cpu().double(),
                           reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(grad.double(), torch.autograd.grad(loss, q)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(_backend._C, "cross_entropy_host"), reason="CUDA extension not built")
@pytest.mark.parametrize("target_kind", ["index", "probabilities", "mixed"])
@pytest.mark.parametrize("chunk", [250, 1000], ids=["split-chunks", "whole-rows"])
def test_cuda_arithmetic_large_shift_keeps_torch_precision(target_kind, chunk):
    logits, weight, target, torch_target, torch_smoothing = shifted_sample(target_kind, 64, 1000)
    loss, grad = cuda_host_rows(logits, target, weight, 0.1, chunk)
    expected_loss, expected_grad, torch_loss_error, torch_grad_error = torch_errors_at_large_shift(
        logits, weight, torch_target, torch_smoothing)
    assert (loss.double() - expected_loss.cpu()).abs().max() <= 2 * torch_loss_error.cpu()
    assert (grad.double() - expected_grad.cpu()).abs().max() <= 2 * torch_grad_error.cpu()


@pytest.mark.skipif(not hasattr(_backend._C, "cross_entropy_host"), reason="CUDA extension not built")
def test_cuda_arithmetic_out_of_range_row_is_nan():
    logits = torch.randn(3, 5)
    target = torch.tensor([0, 5, -100])  # in range, out of range, ignored
    empty_i, empty_f = torch.empty(0, dtype=torch.int64).numpy(), torch.empty(0).numpy()
    loss, grad = _backend._C.cross_entropy_host(logits.numpy(), target.numpy(), empty_i, empty_f, empty_f, empty_f,
                                                -100, 0.1, 0, 64)
    loss, grad = torch.from_numpy(loss), torch.from_numpy(grad)
    assert not torch.isnan(loss[0]) and not torch.isnan(grad[0]).any()
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all()
    assert loss[2] == 0 and (grad[2] == 0).all()


# ----------------------------------------------------------------------------- GPU only

gpu_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")


def rows_against_torch(logits, target, grad_output, rows, label_smoothing):
    """Reference loss and gradient of a few rows (N, C) in float64, for grad_output per row."""
    x = logits.detach()[rows].double().requires_grad_()
    loss = F.cross_entropy(x, target[rows], reduction="none", label_smoothing=label_smoothing)
    (grad,) = torch.autograd.grad(loss, x, grad_output[rows].double())
    return loss.detach(), grad


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU with 10 GB free")
def test_more_than_2_to_31_logits(backend):
    # 16386 rows x 131072 classes in bf16: 2^31 + 2^18 elements, so the last rows start past 2^31.
    # Per-row grad_output makes backward scale the whole gradient too (its offsets pass 2^31).
    if backend == "torch":
        pytest.skip("the reference works in fp32 copies of the logits: tens of GB")
    rows, num_classes = (1 << 14) + 2, 1 << 17
    logits = torch.randn(rows, num_classes, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    target = torch.randint(0, num_classes, (rows,), device=DEVICE)
    target[-1] = num_classes - 1  # the very last element is the target logit
    grad_output = torch.rand(rows, device=DEVICE) + 0.5
    loss = rk.cross_entropy(logits, target, reduction="none", label_smoothing=0.1, backend=backend)
    loss.backward(grad_output)
    check = torch.tensor([0, 1, rows - 2, rows - 1], device=DEVICE)
    expected_loss, expected_grad = rows_against_torch(logits, target, grad_output, check, 0.1)
    torch.testing.assert_close(loss.detach()[check].double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(logits.grad[check].double(), expected_grad, **GRAD_TOLERANCE[torch.bfloat16])


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU with 10 GB free")
def test_more_than_2_to_31_elements_in_one_sample(backend):
    # (1, 64, 2^25 + 1) in bf16: one sample whose classes lie 2^25 + 1 apart, so C * d1 > 2^31 while C
    # and d1 each fit an int32 (the per-row scaling of backward divides by them one at a time).
    if backend == "torch":
        pytest.skip("the reference works in fp32 copies of the logits: tens of GB")
    num_classes, inner = 64, (1 << 25) + 1
    logits = torch.randn(1, num_classes, inner, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    target = torch.randint(0, num_classes, (1, inner), device=DEVICE)
    grad_output = torch.rand(1, inner, device=DEVICE) + 0.5
    loss = rk.cross_entropy(logits, target, reduction="none", label_smoothing=0.1, backend=backend)
    loss.backward(grad_output)
    positions = torch.tensor([0, 1, inner - 2, inner - 1], device=DEVICE)
    expected_loss, expected_grad = rows_against_torch(logits[0].t(), target[0], grad_output[0], positions, 0.1)
    torch.testing.assert_close(loss.detach()[0, positions].double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(logits.grad[0][:, positions].t().double(), expected_grad,
                               **GRAD_TOLERANCE[torch.bfloat16])


def graph_inputs(seed):
    """Logits and the three kinds of targets of one step (values change with seed, shapes do not)."""
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(64, 1000, generator=generator)).to(DEVICE)
    target = torch.randint(0, 1000, (64,), generator=generator).to(DEVICE)
    target[::7] = -100
    y_b = torch.randint(0, 1000, (64,), generator=generator).to(DEVICE)
    lam = torch.rand(64, generator=generator).to(DEVICE)
    probabilities = torch.softmax(torch.randn(64, 1000, generator=generator), 1).to(DEVICE)
    return logits, target, y_b, lam, probabilities


def graph_step(x, target, y_b, lam, probabilities, weight, backend):
    """Loss over index (weighted, mean over counted), mixed and probability targets, then backward."""
    loss = (rk.cross_entropy(x, target, weight=weight, label_smoothing=0.1, backend=backend)
            + rk.cross_entropy(x, rk.MixedTarget(torch.where(target < 0, 0, target), y_b, lam), label_smoothing=0.1,
                               backend=backend)
            + 0.5 * rk.cross_entropy(x, probabilities, reduction="sum", backend=backend))
    loss.backward()
    return loss


@gpu_only
def test_cuda_graph_capture_and_replay_match_eager(backend):
    if backend == "torch":
        pytest.skip("the reference is not what this checks")
    weight = torch.rand(1000, device=DEVICE) + 0.5
    static = [tensor.clone() for tensor in graph_inputs(0)]
    x = static[0].requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile the kernels outside capture
        for _ in range(2):
            x.grad = None
            graph_step(x, *static[1:], weight, backend)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = graph_step(x, *static[1:], weight, backend)
    for seed in (1, 2):  # new values in the static inputs, then replay
        fresh = graph_inputs(seed)
        with torch.no_grad():
            for tensor, value in zip(static, fresh):
                tensor.copy_(value)
        graph.replay()
        eager_x = fresh[0].clone().requires_grad_()
        eager_loss = graph_step(eager_x, *fresh[1:], weight, backend)
        torch.testing.assert_close(static_loss, eager_loss.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x.grad, eager_x.grad, rtol=1e-6, atol=1e-7)


@gpu_only
def test_no_host_sync(backend, monkeypatch):
    if backend == "torch":
        pytest.skip("the reference is not a hot path")
    monkeypatch.setenv("RECIPE_KERNELS_BACKEND", backend)  # for the module
    logits, target, y_b, lam, probabilities = graph_inputs(0)
    weight = torch.rand(1000, device=DEVICE) + 0.5
    module = rk.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1, inplace_backward=True)

    def step():
        x = logits.clone().requires_grad_()
        graph_step(x, target, y_b, lam, probabilities, weight, backend)
        hidden = x * 1.0
        rk.cross_entropy(hidden, rk.MixedTarget(y_b, y_b, 0.3), reduction="none", inplace_backward=True,
                         backend=backend).backward(torch.rand(64, device=DEVICE))
        with torch.no_grad():
            rk.cross_entropy(x, target, backend=backend)
        return module(x * 1.0, target)

    step()  # compile outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        step().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- z-loss and lse

Z_LOSS = 1e-2


def z_loss_expected(logits, target, reduction, z_loss=Z_LOSS, weight=None, label_smoothing=0.1, grad_output=None):
    """F.cross_entropy plus z_loss * logsumexp^2 per counted row, in float64: (loss, grad, lse)."""
    x = logits.detach().double().requires_grad_()
    w = None if weight is None else weight.double()
    if isinstance(target, rk.MixedTarget):
        dense = target.dense(logits.shape[1], label_smoothing, dtype=torch.float64)
        rows = F.cross_entropy(x, dense, weight=w, reduction="none")
        counted = torch.ones(target_rows(logits), dtype=torch.float64, device=x.device)
        denominator = counted.sum()
    elif target.is_floating_point():
        rows = F.cross_entropy(x, target.double(), weight=w, reduction="none", label_smoothing=label_smoothing)
        counted = torch.ones(target_rows(logits), dtype=torch.float64, device=x.device)
        denominator = counted.sum()
    else:
        rows = F.cross_entropy(x, target, weight=w, reduction="none", label_smoothing=label_smoothing)
        counted = (target != -100).double()
        denominator = (counted * (1.0 if w is None else w[target.clamp(min=0)])).sum()
    lse = torch.logsumexp(x, dim=1)
    rows = rows + z_loss * lse * lse * counted
    loss = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denominator}[reduction]
    (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss) if grad_output is None else grad_output.double())
    return loss.detach(), grad, lse.detach()


def z_loss_target(target_kind, shape, seed=0):
    logits, target, weight = sample_inputs(shape, ignored=(1,), weighted=True, seed=seed)
    if target_kind == "mixed":
        mixed = mixed_sample(rows=shape[0], num_classes=shape[1], seed=seed)
        return logits, rk.MixedTarget(mixed.y_a.to(DEVICE), mixed.y_b.to(DEVICE), mixed.lam), weight
    if target_kind == "probabilities":
        generator = torch.Generator().manual_seed(seed + 1)
        return logits, torch.softmax(torch.randn(shape, generator=generator), 1).to(DEVICE), weight
    return logits, target, weight


@pytest.mark.parametrize("target_kind", ["index", "mixed", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 7), (3, 5, 2)])
def test_z_loss_matches_float64_formula(backend, target_kind, reduction, shape):
    # PaLM's z-loss: z * lse^2 per counted row (not ignored rows), reduced with the loss; its gradient
    # 2 z lse p_c; the lse returned per row in fp32 without a gradient.
    if target_kind == "mixed" and len(shape) > 2:
        shape = shape[:2]
    logits, target, weight = z_loss_target(target_kind, shape)
    grad_output = None
    if reduction == "none":
        grad_output = torch.randn(target_rows(logits), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    x = logits.detach().clone().requires_grad_()
    loss, lse = rk.cross_entropy(x, target, weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=Z_LOSS,
                                 return_lse=True, backend=backend)
    (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss) if grad_output is None else grad_output)
    expected_loss, expected_grad, expected_lse = z_loss_expected(logits, target, reduction, weight=weight,
                                                                 grad_output=grad_output)
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.float32])
    assert lse.dtype == torch.float32 and lse.shape == target_rows(logits) and not lse.requires_grad
    torch.testing.assert_close(lse.double(), expected_lse, **LOSS_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_z_loss_split_rows_and_half_precision(backend, dtype):
    # Split rows (partials merged by the finishing kernel) and the fp16 gradient written in backward.
    logits, target, _ = sample_inputs((2, 2 * MAX_BLOCK + 3), dtype=dtype, ignored=(1,))
    x = logits.detach().clone().requires_grad_()
    loss, lse = rk.cross_entropy(x, target, z_loss=Z_LOSS, return_lse=True, backend=backend)
    loss.backward()
    expected_loss, expected_grad, expected_lse = z_loss_expected(logits, target, "mean", label_smoothing=0.0)
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(x.grad.double(), expected_grad, **GRAD_TOLERANCE[dtype])
    torch.testing.assert_close(lse.double(), expected_lse, **LOSS_TOLERANCE)


def test_z_loss_zero_and_return_lse_leave_the_loss_as_it_was(backend):
    logits, target, _ = sample_inputs((5, 9))
    plain = rk.cross_entropy(logits, target, label_smoothing=0.1, backend=backend)
    loss, lse = rk.cross_entropy(logits, target, label_smoothing=0.1, z_loss=0.0, return_lse=True, backend=backend)
    assert torch.equal(plain, loss)
    torch.testing.assert_close(lse, torch.logsumexp(logits.float(), 1))


def test_z_loss_in_module_and_bad_values():
    logits, target, _ = sample_inputs((4, 6))
    module = rk.nn.CrossEntropyLoss(label_smoothing=0.1, z_loss=Z_LOSS)
    expected, _, _ = z_loss_expected(logits, target, "mean")
    torch.testing.assert_close(module(logits, target).double(), expected, **LOSS_TOLERANCE)
    assert "z_loss=0.01" in repr(module)
    for bad, error in ((-1.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError)):
        with pytest.raises(error, match="z_loss"):
            rk.cross_entropy(logits, target, z_loss=bad)
        with pytest.raises(error, match="z_loss"):
            rk.nn.CrossEntropyLoss(z_loss=bad)
    with pytest.raises(TypeError, match="return_lse"):
        rk.cross_entropy(logits, target, return_lse=1)


def test_z_loss_compile_fullgraph(backend):
    layer = torch.nn.Linear(8, 10).to(DEVICE)
    features = torch.randn(6, 8, device=DEVICE)
    _, target, _ = sample_inputs((6, 10), ignored=(2,))

    def step(features, target):
        loss, lse = rk.cross_entropy(layer(features), target, z_loss=Z_LOSS, return_lse=True, backend=backend)
        return loss, lse

    loss, lse = torch.compile(step, fullgraph=True)(features, target)
    loss.backward()
    expected_loss, _, expected_lse = z_loss_expected(layer(features), target, "mean", label_smoothing=0.0)
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(lse.double(), expected_lse, **LOSS_TOLERANCE)


@pytest.mark.skipif(not hasattr(_backend._C, "cross_entropy_host"), reason="CUDA extension not built")
@pytest.mark.parametrize("target_kind", ["index", "mixed", "probabilities"])
@pytest.mark.parametrize("chunk", [5, 64], ids=["split-chunks", "whole-rows"])
def test_cuda_arithmetic_z_loss(target_kind, chunk):
    logits, target, weight = z_loss_target(target_kind, (6, 23))
    logits, weight = logits.cpu(), weight.cpu()
    if isinstance(target, rk.MixedTarget):
        target = rk.MixedTarget(target.y_a.cpu(), target.y_b.cpu(), target.lam)
    else:
        target = target.cpu()
    empty_i, empty_f = torch.empty(0, dtype=torch.int64), torch.empty(0)
    target_b = lam = q = None
    kind = {"index": 0, "mixed": 1, "probabilities": 2}[target_kind]
    y = target
    if target_kind == "mixed":
        y, target_b, lam = target.y_a, target.y_b, target.per_sample_lam().float()
    elif target_kind == "probabilities":
        y, q = empty_i, target
    loss, grad = _backend._C.cross_entropy_host(
        logits.numpy(), y.numpy(), (empty_i if target_b is None else target_b).numpy(),
        (empty_f if lam is None else lam).numpy(), weight.numpy(), (empty_f if q is None else q).numpy(), -100, 0.1,
        kind, chunk, z_loss=Z_LOSS)
    expected_loss, expected_grad, _ = z_loss_expected(logits, target, "none", weight=weight)
    torch.testing.assert_close(torch.from_numpy(loss).double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(torch.from_numpy(grad).double(), expected_grad, **GRAD_TOLERANCE[torch.float32])


# ----------------------------------------------------------------------------- grids


def test_backward_scaling_is_a_bounded_grid_stride(backend, monkeypatch):
    # At most 4 programs per SM, each looping over its share; grad_output = 1 leaves the gradient as it was,
    # any other value scales it, per row too.
    launches = []
    from recipe_kernels import _ops
    real_launch = _ops.launch

    def record(kernel, grid, *args, **kwargs):
        launches.append(grid)
        return real_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(importlib.import_module("recipe_kernels.cross_entropy"), "launch", record)
    grad = torch.randn(40, 1000, device=DEVICE)
    before = grad.clone()
    scale_grad_op(grad, torch.tensor(1.0, device=DEVICE), backend)
    assert torch.equal(grad, before)
    scale_grad_op(grad, torch.tensor(0.5, device=DEVICE), backend)
    torch.testing.assert_close(grad, before * 0.5)
    factors = torch.linspace(-1, 1, 40, device=DEVICE)
    scale_grad_op(grad, factors, backend)
    torch.testing.assert_close(grad, before * 0.5 * factors[:, None])
    if backend == "triton":
        assert launches and all(grid[0] <= 4 * _backend.sm_count(grad.device) for grid in launches)


def test_few_long_rows_cover_every_sm(monkeypatch):
    # 8 rows of 262144 classes: chunks of one block, as many as 4 programs per SM need, on a persistent grid
    # covering every SM (132 SMs: 64 chunks a row, 512 programs of one item each).
    monkeypatch.setattr(_backend, "sm_count", lambda device: 132)
    ce = importlib.import_module("recipe_kernels.cross_entropy")
    splits = split_count(8, 262144, torch.device("cpu"))
    block, num_warps = ce._block_and_warps(262144, splits)
    assert splits == 262144 // ce.SPLIT_BLOCK and block == ce.SPLIT_BLOCK
    assert ce.split_programs(8 * splits, num_warps, 2 * block, torch.device("cpu")) == 8 * splits >= 132
    assert split_count(8192, 32000, torch.device("cpu")) == 1


# ----------------------------------------------------------------------------- long rows, tiny
# The split kernel's queue for long rows, forced at tiny sizes through the module's thresholds.


@pytest.fixture
def long_rows(monkeypatch):
    """Rows over 64 classes are split: chunks of 32 classes (one block) over one warp, 2 SMs."""
    ce = importlib.import_module("recipe_kernels.cross_entropy")
    monkeypatch.setattr(ce, "ROW_IN_REGISTERS", 64)
    monkeypatch.setattr(ce, "SPLIT_BLOCK", 32)
    monkeypatch.setattr(_backend, "sm_count", lambda device: 2)
    return ce


@pytest.mark.parametrize("num_classes", [150, 160], ids=["ragged", "lane-aligned"])
def test_long_rows_through_the_split_queue(long_rows, num_classes):
    # 7 rows of 5 chunks: sweep 1 of each chunk, the last to arrive merges the row, sweep 2 of row r after
    # sweep 1 of row r + lag; an ignored row holding NaN and inf gets zeros.
    splits = long_rows.split_count(7, num_classes, DEVICE)
    assert splits == 5 and long_rows._block_and_warps(num_classes, splits) == (32, 1)
    programs = long_rows.split_programs(7 * splits, 1, 32 * 4, DEVICE)
    assert programs == 16 and long_rows.split_lag(programs, splits) == 4  # sweeps of rows r and r + 4 interleave
    logits, target, weight = sample_inputs((7, num_classes), ignored=(3,), weighted=True)
    logits[3, :5] = float("nan")
    logits[3, 5] = float("inf")
    for options in (dict(weight=weight, label_smoothing=0.1), dict(reduction="sum"), dict(label_smoothing=0.2)):
        loss, grad = our_loss_and_grad(logits, target, backend="triton", **options)
        expected_loss, expected_grad = torch_loss_and_grad(logits, target, **options)
        expected_grad[3] = 0.0  # ours is exactly 0 on an ignored row whatever its logits (torch's is NaN)
        torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
        torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.float32])
        assert torch.equal(grad[3], torch.zeros_like(grad[3]))


def test_long_rows_bounded_by_l2(long_rows, monkeypatch):
    # When what is read between a chunk's two sweeps would pass L2_RESIDENT_FRACTION of L2, fewer programs:
    # here two, so a lag of one row (sweep 2 of row r handed out right after sweep 1 of row r + 1); mixed
    # targets, some rows with y_a == y_b (both terms on one class).
    monkeypatch.setattr(long_rows, "_l2_bytes", lambda device: 1000)
    assert long_rows.split_programs(6 * 5, 1, 32 * 4, DEVICE) == 2
    assert long_rows.split_lag(2, 5) == 1
    logits, y_a, _ = sample_inputs((6, 150), seed=1)
    y_b = torch.randint(0, 150, (6,), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    y_b[::2] = y_a[::2]
    target = rk.MixedTarget(y_a, y_b, torch.rand(6, generator=torch.Generator().manual_seed(3)).to(DEVICE))
    loss, grad = our_loss_and_grad(logits, target, label_smoothing=0.1, backend="triton")
    expected_loss, expected_grad = torch_loss_and_grad(logits, target.dense(150, 0.1, dtype=torch.float64))
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.float32])


@triton.jit
def _decode_queue(out_ptr, items, rows, num_splits, lag, SWEEPS: tl.constexpr):
    for item in range(0, items):
        sweep, row, split = _queue_item(item, rows, num_splits, lag, SWEEPS)
        tl.store(out_ptr + 3 * item, sweep)
        tl.store(out_ptr + 3 * item + 1, row)
        tl.store(out_ptr + 3 * item + 2, split)


def _decoded_queue(rows, splits, lag, sweeps):
    """The split kernel's items in queue order, as (sweep, row, split), decoded by its own _queue_item."""
    items = (rows + (sweeps - 1) * lag) * sweeps * splits
    out = torch.empty(items * 3, dtype=torch.int32, device=DEVICE)
    _decode_queue[(1,)](out, items, rows, splits, lag, SWEEPS=sweeps)
    return [tuple(entry) for entry in out.view(-1, 3).tolist()]


def _run_schedule(queue, programs, splits, generator):
    """Runs the queue's protocol with `programs` programs interleaved at random: each takes ITEMS_PER_GRAB items at
    a time and works through them in order; a sweep-2 item waits until its row's sweep-1 items are all done.
    Returns whether every item completed (False: a deadlock)."""
    from recipe_kernels.cross_entropy import ITEMS_PER_GRAB
    next_item, done_chunks, held = 0, {}, {p: [] for p in range(programs)}
    while True:
        runnable = []
        for program, items in held.items():
            if not items:
                if next_item < len(queue):
                    runnable.append(program)
                continue
            sweep, row, _ = queue[items[0]]
            if sweep != 2 or done_chunks.get(row, 0) == splits:
                runnable.append(program)
        if not runnable:
            return next_item >= len(queue) and not any(held.values())
        program = runnable[int(torch.randint(len(runnable), (), generator=generator))]
        if not held[program]:
            held[program] = list(range(next_item, min(next_item + ITEMS_PER_GRAB.value, len(queue))))
            next_item += ITEMS_PER_GRAB.value
            continue
        sweep, row, _ = queue[held[program].pop(0)]
        if sweep == 1:
            done_chunks[row] = done_chunks.get(row, 0) + 1


@pytest.mark.parametrize("rows, splits, lag, sweeps", [(5, 3, 1, 2), (7, 5, 4, 2), (4, 2, 9, 2), (6, 3, 2, 1)])
def test_split_queue_order_cannot_deadlock(rows, splits, lag, sweeps):
    # The split kernel's own decode: every chunk of every row once per sweep; sweep 2 of a row after all of its
    # sweep-1 items and lag rows of sweep 1 later; any interleaving of programs then finishes.
    queue = _decoded_queue(rows, splits, lag, sweeps)
    work = [entry for entry in queue if entry[0] != 0]
    expected = {(sweep, row, split) for sweep in range(1, sweeps + 1) for row in range(rows) for split in range(splits)}
    assert sorted(work) == sorted(expected)
    position = {entry: index for index, entry in enumerate(queue) if entry[0] != 0}
    for row, split in itertools.product(range(rows), range(splits)):
        if sweeps == 2:
            assert position[(2, row, split)] > max(position[(1, row, other)] for other in range(splits))
            later_rows = {r for (sweep, r, _), index in position.items()
                          if sweep == 1 and position[(1, row, split)] < index < position[(2, row, split)]}
            assert len(later_rows) <= lag + 1
    generator = torch.Generator().manual_seed(rows * 100 + lag)
    for programs in (1, 2, 3, 7):
        for _ in range(20):
            assert _run_schedule(queue, programs, splits, generator)


@pytest.mark.parametrize("backend", ["triton"])
def test_split_rows_with_one_target_class_twice(backend):
    # Split rows: the row's merge (by its last chunk to arrive) computes the target classes' gradients, the
    # chunk holding each stores it; y_a == y_b puts both terms on one class.
    logits, y_a, _ = sample_inputs((3, 5000), seed=4)
    y_b = y_a.clone()
    y_b[1] = (y_a[1] + 2500) % 5000  # in another chunk
    target = rk.MixedTarget(y_a, y_b, torch.tensor([0.3, 0.6, 1.0], device=DEVICE))
    grad = torch.empty_like(logits)
    loss = cross_entropy_with_grad_op(logits, grad, target.y_a, target.y_b, target.per_sample_lam(), None, -100,
                                      "mean", 0.1, 0.0, None, 3, None, backend)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target.dense(5000, 0.1, dtype=torch.float64))
    torch.testing.assert_close(loss.double(), expected_loss, **LOSS_TOLERANCE)
    torch.testing.assert_close(grad.double(), expected_grad, **GRAD_TOLERANCE[torch.float32])
