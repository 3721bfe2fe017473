"""Bad input, on purpose: every public function against wrong dtypes, devices and shapes,
out-of-range hyperparameters (NaN among them), empty tensors, odd layouts and NaN/inf data.

Each case states what must happen: a ValueError or TypeError (with a phrase of its
message), or a result that passes a check. The same table, with the behaviour seen, is
docs/robustness.md; regenerate it with `python tests/test_robustness.py` after adding cases
(a test checks that every case has its row).
"""
import math
import os
import re
import sys

if __name__ == "__main__":  # writing the doc: run the Triton backend through the interpreter too
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import recipe_kernels as rk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import BACKENDS, DEVICE  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "robustness.md")
CASES = []


def case(function, description, raises=None, match="", check=None, check_text=""):
    """Registers fn(backend) as a case: it must raise `raises` (message matching `match`),
    or return a value for which check(value) is true (`check_text` says what is checked)."""
    def register(fn):
        CASES.append(dict(id=f"{function}: {description}", function=function, description=description, fn=fn,
                          raises=raises, match=match, check=check, check_text=check_text))
        return fn
    return register


def t(*shape, dtype=torch.float32, device=None):
    return torch.randn(shape, device=device or DEVICE).to(dtype)


def images(n=4, dtype=torch.float32, channels_last=False):
    x = (torch.rand(n, 3, 8, 8, device=DEVICE) * 255).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


labels = lambda n=4: torch.arange(n, device=DEVICE) % 3  # noqa: E731


# ----------------------------------------------------------------------------- dropout family

for name, call in [("dropout", lambda x, p, b: rk.dropout(x, p, backend=b)),
                   ("dropout_add", lambda x, p, b: rk.dropout_add(x, x, p, backend=b)),
                   ("drop_path_add", lambda x, p, b: rk.drop_path_add(x, x, p, backend=b))]:
    case(name, "p = -0.1", ValueError, "must be in \\[0, 1\\]")(lambda b, call=call: call(t(4), -0.1, b))
    case(name, "p = 1.5", ValueError, "must be in \\[0, 1\\]")(lambda b, call=call: call(t(4), 1.5, b))
    case(name, "p = NaN", ValueError, "must be in \\[0, 1\\]")(lambda b, call=call: call(t(4), math.nan, b))
    case(name, "p given as a tensor", TypeError, "Python float")(lambda b, call=call: call(t(4), torch.tensor(0.5), b))
    case(name, "int64 input", TypeError, "float32, float16, bfloat16, float64")(
        lambda b, call=call: call(torch.arange(4, device=DEVICE), 0.5, b))
    case(name, "float64 input", check=lambda y: y.dtype == torch.float64, check_text="a float64 result (fp64 math)")(
        lambda b, call=call: call(t(4, dtype=torch.float64), 0.5, b))
    case(name, "empty tensor (0, 5)", check=lambda y: y.shape == (0, 5), check_text="empty result of the same shape")(
        lambda b, call=call: call(t(0, 5), 0.5, b))
    case(name, "NaN and inf in x", check=lambda y: bool(torch.isnan(y[:, 0]).all() & torch.isfinite(y[:, 2]).all()),
         check_text="NaN stays NaN (as in torch); finite values stay finite")(
        lambda b, call=call: call(torch.tensor([[math.nan, math.inf, 1.0]] * 4, device=DEVICE), 0.5, b))
    case(name, "non-contiguous (transposed) x", check=lambda y: y.is_contiguous() and y.shape == (6, 4),
         check_text="contiguous result; mask by logical index")(lambda b, call=call: call(t(4, 6).t(), 0.5, b))
    case(name, "expanded (stride 0) x", check=lambda y: y.shape == (5, 6),
         check_text="read as its logical values")(lambda b, call=call: call(t(1, 6).expand(5, 6), 0.5, b))
    case(name, "channels_last x", check=lambda y: y.shape == (2, 3, 4, 4),
         check_text="contiguous result of the same logical values")(
        lambda b, call=call: call(t(2, 3, 4, 4).contiguous(memory_format=torch.channels_last), 0.5, b))

case("dropout", "p = 1", check=lambda y: bool((y == 0).all()), check_text="all zeros, no NaN")(
    lambda b: rk.dropout(t(5, 5), 1.0, backend=b))
case("dropout", "not a tensor", TypeError, "must be a torch.Tensor")(lambda b: rk.dropout([1.0, 2.0], 0.5, backend=b))
case("dropout", "unknown backend", ValueError, "unknown backend")(lambda b: rk.dropout(t(4), 0.5, backend="tpu"))
case("dropout", "inplace on a leaf that requires grad", RuntimeError, "leaf Variable that requires grad")(
    lambda b: rk.dropout(t(4, 6).requires_grad_(), 0.5, inplace=True, backend=b))
case("dropout", "inplace on an expanded (stride 0) x", RuntimeError, "more than one element of the written-to")(
    lambda b: rk.dropout(t(1, 6).expand(5, 6), 0.5, inplace=True, backend=b))
case("dropout", "inplace on a transposed x", check=lambda y: y.stride() == (1, 4), check_text="x itself, its layout kept")(
    lambda b: rk.dropout(t(6, 4).t(), 0.5, inplace=True, backend=b))
case("dropout_add", "residual shape differs", ValueError, r"residual has shape \(4, 5\) but x has \(4, 6\)")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 5), 0.5, backend=b))
case("dropout_add", "bias not a trailing shape", ValueError, "bias has shape")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 6), 0.5, bias=t(4), backend=b))
case("dropout_add", "residual on another device (meta)", ValueError, "residual is on meta")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 6, device="meta"), 0.5, backend=b))
case("dropout_add", "residual of another dtype (fp32 x, fp16 residual)", check=lambda y: y.dtype == torch.float32,
     check_text="torch's promoted dtype, float32")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 6, dtype=torch.float16), 0.5, backend=b))
case("drop_path_add", "residual of another dtype (bf16 x, fp32 residual)", check=lambda y: y.dtype == torch.float32,
     check_text="torch's promoted dtype, float32")(
    lambda b: rk.drop_path_add(t(4, 6, dtype=torch.bfloat16), t(4, 6), 0.5, backend=b))
case("drop_path_add", "0-d x", ValueError, "at least one dimension")(
    lambda b: rk.drop_path_add(t(), t(), 0.5, backend=b))
case("drop_path_add", "zero-batch x (0, 3)", check=lambda y: y.shape == (0, 3), check_text="empty result")(
    lambda b: rk.drop_path_add(t(0, 3), t(0, 3), 0.5, backend=b))
case("drop_path_rates", "final_rate = NaN", ValueError, "must be in \\[0, 1\\]")(
    lambda b: rk.drop_path_rates(4, math.nan))
case("drop_path_rates", "num_blocks = -1", ValueError, "non-negative int")(lambda b: rk.drop_path_rates(-1, 0.1))


# ----------------------------------------------------------------------------- mixing


def mixers():
    return [("cutmix", lambda x, y, b, **kw: rk.cutmix(x, y, backend=b, **kw)),
            ("mixup", lambda x, y, b, **kw: rk.mixup(x, y, backend=b, **kw))]


for name, call in mixers():
    case(name, "3-D x", ValueError, "must be 4-D")(lambda b, call=call: call(t(3, 8, 8), labels(3), b))
    case(name, "target length differs from N", ValueError, "first dimension must match")(
        lambda b, call=call: call(images(4), labels(3), b))
    case(name, "alpha = 0", ValueError, "> 0")(lambda b, call=call: call(images(), labels(), b, alpha=0.0))
    case(name, "alpha = NaN", ValueError, "> 0")(lambda b, call=call: call(images(), labels(), b, alpha=math.nan))
    case(name, "float64 x", check=lambda r: r[0].dtype == torch.float64, check_text="a float64 result")(
        lambda b, call=call: call(images(dtype=torch.float64), labels(), b))
    case(name, "int32 x", TypeError, "float32, float16, bfloat16, uint8 or float64")(
        lambda b, call=call: call(images(dtype=torch.int32), labels(), b))
    case(name, "float targets", TypeError, "int64 class indices")(
        lambda b, call=call: call(images(), labels().float(), b))
    case(name, "mean of the wrong length", ValueError, "mean")(
        lambda b, call=call: call(images(), labels(), b, mean=[0.5, 0.5], std=[0.2, 0.2]))
    case(name, "zero-batch x", check=lambda r: r[0].shape == (0, 3, 8, 8), check_text="empty result")(
        lambda b, call=call: call(images(0), labels(0), b))
    case(name, "channels_last uint8 x", check=lambda r: r[0].is_contiguous(memory_format=torch.channels_last),
         check_text="channels_last result")(lambda b, call=call: call(images(dtype=torch.uint8, channels_last=True),
                                                                      labels(), b))
    case(name, "NaN in x", check=lambda r: r[0].shape == (4, 3, 8, 8), check_text="NaN stays where it is mixed in")(
        lambda b, call=call: call(images().index_fill_(2, torch.tensor([0], device=DEVICE), math.nan), labels(), b))
    case(name, "inplace with per-sample boxes", ValueError, "inplace=True")(
        lambda b, call=call: call(images(), labels(), b, per_sample=True, inplace=True))
    case(name, "partner 'random'", ValueError, "partner must be")(
        lambda b, call=call: call(images(), labels(), b, partner="random"))

case("random_erasing", "p = 2", ValueError, "p must be in")(lambda b: rk.random_erasing(images(), p=2.0, backend=b))
case("random_erasing", "scale (0.5, 0.1)", ValueError, "scale")(
    lambda b: rk.random_erasing(images(), scale=(0.5, 0.1), backend=b))
case("random_erasing", "ratio (0, 1)", ValueError, "ratio")(
    lambda b: rk.random_erasing(images(), ratio=(0.0, 1.0), backend=b))
case("random_erasing", "value of the wrong length", ValueError, "value")(
    lambda b: rk.random_erasing(images(), value=[1.0, 2.0], backend=b))
case("random_erasing", "'random' value on uint8", ValueError, "uint8")(
    lambda b: rk.random_erasing(images(dtype=torch.uint8), p=1.0, value="random", backend=b))
case("random_erasing", "2-D x", ValueError, "must be 4-D")(lambda b: rk.random_erasing(t(8, 8), backend=b))


# ----------------------------------------------------------------------------- cross-entropy and MixedTarget

import torch.nn.functional as F  # noqa: E402


def ce_logits(*shape, dtype=torch.float32, device=None):
    """Logits with a fixed seed, so that a case draws the same values on every backend."""
    generator = torch.Generator().manual_seed(sum(shape) + 1)
    return (3 * torch.randn(shape, generator=generator)).to(device or DEVICE, dtype)


def ce_labels(*values):
    return torch.tensor(values, device=DEVICE)


def ce_module(backend, logits, target, **options):
    """rk.nn.CrossEntropyLoss(**options)(logits, target) with `backend` chosen through the environment."""
    old = os.environ.get("RECIPE_KERNELS_BACKEND")
    os.environ["RECIPE_KERNELS_BACKEND"] = backend
    try:
        return rk.nn.CrossEntropyLoss(**options)(logits, target)
    finally:
        os.environ.pop("RECIPE_KERNELS_BACKEND") if old is None else os.environ.update(RECIPE_KERNELS_BACKEND=old)


def ce_compare(backend, base, target, view=lambda x: x, torch_target=None, **options):
    """Our loss and gradient (with respect to `base`, the logits being view(base)) next to
    F.cross_entropy's in float64: (loss, grad, expected loss, expected grad)."""
    leaf = base.detach().clone().requires_grad_()
    loss = rk.cross_entropy(view(leaf * 1.0), target, backend=backend, **options)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    reference = base.detach().double().requires_grad_()
    torch_options = {key: value.double() if isinstance(value, torch.Tensor) else value
                     for key, value in options.items() if key not in ("inplace_backward", "validate")}
    if isinstance(target, rk.MixedTarget):
        torch_options["label_smoothing"] = 0.0  # torch_target = target.dense(C, label_smoothing) is smoothed
    expected = F.cross_entropy(view(reference), target if torch_target is None else torch_target, **torch_options)
    (expected_grad,) = torch.autograd.grad(expected.sum(), reference)
    return loss.detach(), grad, expected.detach(), expected_grad


def ce_target_gradients(backend, logits, probabilities, **options):
    """d loss / d target of a probability target: ours and F.cross_entropy's in float64."""
    ours = probabilities.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(rk.cross_entropy(logits, ours, backend=backend, **options), ours)
    theirs = probabilities.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(F.cross_entropy(logits.double(), theirs, **options), theirs)
    return grad, expected


def ce_matches(result, rtol=1e-5, atol=1e-5):
    loss, grad, expected, expected_grad = result
    return (torch.allclose(loss.double(), expected, rtol=rtol, atol=atol, equal_nan=True)
            and torch.allclose(grad.double(), expected_grad, rtol=rtol, atol=atol, equal_nan=True))


def ce_out_of_range(backend, target, module=False, **options):
    """Row 1 holds a bad class index: 'raised' where the torch backend raises (as torch does),
    else the per-row losses (the kernels: NaN for row 1 only)."""
    try:
        if module:
            return ce_module(backend, ce_logits(4, 5), target, reduction="none", **options)
        return rk.cross_entropy(ce_logits(4, 5), target, reduction="none", backend=backend, **options)
    except (IndexError, RuntimeError):
        if backend != "torch":
            raise
        return "raised"


def ce_nan_row_only(result):
    if isinstance(result, str):
        return result == "raised"
    return bool(torch.isnan(result[1])) and not bool(torch.isnan(result[[0, 2, 3]]).any())


CE_MATCHES_TORCH = "loss and gradient equal F.cross_entropy's (float64)"
CE_OUT_OF_RANGE = "torch backend raises as torch does; kernels give NaN for that row only"

# Wrong dtypes.
case("cross_entropy", "int64 logits", TypeError, "float32, float16, bfloat16, float64")(
    lambda b: rk.cross_entropy(torch.ones(4, 5, dtype=torch.int64, device=DEVICE), labels(), backend=b))
case("cross_entropy", "float64 logits", check=lambda r: ce_matches(r, 1e-12, 1e-12) and r[0].dtype == torch.float64,
     check_text="fp64 math: a float64 loss and gradient equal to F.cross_entropy's")(
    lambda b: ce_compare(b, ce_logits(4, 5, dtype=torch.float64), labels(), label_smoothing=0.1))
case("cross_entropy", "float class indices (N,)", ValueError, r"target has shape \(4,\) but logits \(4, 5\)")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels().float(), backend=b))
case("cross_entropy", "bool target", TypeError, "integer tensor")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels() > 0, backend=b))
case("cross_entropy", "float64 probability target", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5), torch.softmax(ce_logits(5, 4), 0).t().double(), label_smoothing=0.1))
case("cross_entropy", "int32 class indices", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5), labels().int(), torch_target=labels(), label_smoothing=0.1))
case("cross_entropy", "target a list", TypeError, "tensor or a MixedTarget")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), [0, 1, 2, 0], backend=b))
case("cross_entropy", "bfloat16 logits, float32 probability target", check=lambda r: ce_matches(r, 1e-2, 1e-3),
     check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5, dtype=torch.bfloat16), torch.softmax(ce_logits(4, 5), 1),
                         label_smoothing=0.1))
case("MixedTarget", "float y_a", TypeError, "int64 class indices")(
    lambda b: rk.MixedTarget(labels().float(), labels(), 0.5))
case("MixedTarget", "int32 y_b", TypeError, "int64 class indices")(
    lambda b: rk.MixedTarget(labels(), labels().int(), 0.5))
case("MixedTarget", "integer lam tensor", TypeError, "lam must be a floating tensor")(
    lambda b: rk.MixedTarget(labels(), labels(), torch.ones(4, dtype=torch.int64, device=DEVICE)))
case("MixedTarget", "lam a string", TypeError, "lam must be a float or a tensor")(
    lambda b: rk.MixedTarget(labels(), labels(), "0.5"))
case("MixedTarget", "lam a bool", TypeError, "lam must be a float or a tensor")(
    lambda b: rk.MixedTarget(labels(), labels(), True))
case("nn.CrossEntropyLoss", "float64 logits", check=lambda r: r.dtype == torch.float64 and torch.allclose(
    r, torch.nn.CrossEntropyLoss()(ce_logits(4, 5, dtype=torch.float64), labels()), rtol=1e-12, atol=1e-12),
     check_text="a float64 loss equal to torch.nn.CrossEntropyLoss's")(
    lambda b: ce_module(b, ce_logits(4, 5, dtype=torch.float64), labels()))

# Tensors on different devices.
case("cross_entropy", "target on another device (meta)", ValueError, "target is on meta")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels().to("meta"), backend=b))
case("cross_entropy", "probability target on another device (meta)", ValueError, "target is on meta")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), ce_logits(4, 5, device="meta"), backend=b))
case("cross_entropy", "weight on another device (meta)", ValueError, "weight is on meta")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), weight=torch.ones(5, device="meta"), backend=b))
case("cross_entropy", "MixedTarget on another device (meta)", ValueError, "MixedTarget is on meta")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), rk.MixedTarget(labels().to("meta"), labels().to("meta"), 0.5),
                               backend=b))
case("MixedTarget", "y_b on another device (meta)", ValueError, "y_b is on meta")(
    lambda b: rk.MixedTarget(labels(), labels().to("meta"), 0.5))
case("MixedTarget", "lam on another device (meta)", ValueError, "lam is on meta")(
    lambda b: rk.MixedTarget(labels(), labels(), torch.rand(4, device="meta")))
case("nn.CrossEntropyLoss", "weight buffer on another device (meta)", ValueError, "weight is on meta")(
    lambda b: ce_module(b, ce_logits(4, 5), labels(), weight=torch.ones(5, device="meta")))

# Shapes that don't fit.
case("cross_entropy", "1-D logits", ValueError, "logits must have shape")(
    lambda b: rk.cross_entropy(ce_logits(5), ce_labels(1), backend=b))
case("cross_entropy", "0-d logits", ValueError, "logits must have shape")(
    lambda b: rk.cross_entropy(ce_logits(), ce_labels(0), backend=b))
case("cross_entropy", "no classes: logits (4, 0)", ValueError, "no classes")(
    lambda b: rk.cross_entropy(ce_logits(4, 0), labels(), backend=b))
case("cross_entropy", "target batch differs from N", ValueError, r"target has shape \(3,\)")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(3), backend=b))
case("cross_entropy", "target spatial dims differ", ValueError, r"need class indices of shape \(2, 3\)")(
    lambda b: rk.cross_entropy(ce_logits(2, 5, 3), torch.zeros(2, 4, dtype=torch.int64, device=DEVICE), backend=b))
case("cross_entropy", "probability target with another C", ValueError, "has 6 classes but logits have 5")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), torch.rand(4, 6, device=DEVICE), backend=b))
case("cross_entropy", "weight of the wrong length", ValueError, "weight must be a 1-D tensor of 5 class weights")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), weight=torch.ones(4, device=DEVICE), backend=b))
case("cross_entropy", "2-D weight", ValueError, "weight must be a 1-D tensor")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), weight=torch.ones(1, 5, device=DEVICE), backend=b))
case("cross_entropy", "weight a list", ValueError, "weight must be a 1-D tensor")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), weight=[1.0] * 5, backend=b))
case("cross_entropy", "MixedTarget of another batch size", ValueError, r"MixedTarget has shape \(3,\)")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), rk.MixedTarget(labels(3), labels(3), 0.5), backend=b))
case("cross_entropy", "MixedTarget without the spatial dims", ValueError, r"need \(2, 3\)")(
    lambda b: rk.cross_entropy(ce_logits(2, 5, 3), rk.MixedTarget(labels(2), labels(2), 0.5), backend=b))
case("MixedTarget", "y_a and y_b shapes differ", ValueError, r"y_a has shape \(4,\) but y_b has \(3,\)")(
    lambda b: rk.MixedTarget(labels(4), labels(3), 0.5))
case("MixedTarget", "0-d y_a", ValueError, "sample dimension")(
    lambda b: rk.MixedTarget(ce_labels(1)[0], ce_labels(1)[0], 0.5))
case("MixedTarget", "lam of the wrong length", ValueError, r"lam must be 0-d or have shape \(4,\)")(
    lambda b: rk.MixedTarget(labels(), labels(), torch.rand(3, device=DEVICE)))
case("MixedTarget", "lam of shape (N, 1)", ValueError, r"lam must be 0-d or have shape \(4,\)")(
    lambda b: rk.MixedTarget(labels(), labels(), torch.rand(4, 1, device=DEVICE)))
case("MixedTarget", "dense() with num_classes = 0", ValueError, "num_classes must be a positive int")(
    lambda b: rk.MixedTarget(labels(), labels(), 0.5).dense(0))
case("nn.CrossEntropyLoss", "target of the wrong shape", ValueError, r"target has shape \(3,\)")(
    lambda b: ce_module(b, ce_logits(4, 5), labels(3)))
case("nn.CrossEntropyLoss", "weight of the wrong length", ValueError, "weight must be a 1-D tensor of 5")(
    lambda b: ce_module(b, ce_logits(4, 5), labels(), weight=torch.ones(3, device=DEVICE)))

# Out-of-range hyperparameters, NaN among them.
for value in (-0.1, 1.5, math.nan, math.inf):
    case("cross_entropy", f"label_smoothing = {value}", ValueError, r"label_smoothing must be in \[0, 1\]")(
        lambda b, value=value: rk.cross_entropy(ce_logits(4, 5), labels(), label_smoothing=value, backend=b))
    case("nn.CrossEntropyLoss", f"label_smoothing = {value}", ValueError, r"label_smoothing must be in \[0, 1\]")(
        lambda b, value=value: rk.nn.CrossEntropyLoss(label_smoothing=value))
case("cross_entropy", "label_smoothing given as a tensor", TypeError, "Python float")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), label_smoothing=torch.tensor(0.1), backend=b))
case("nn.CrossEntropyLoss", "label_smoothing given as a tensor", TypeError, "Python float")(
    lambda b: rk.nn.CrossEntropyLoss(label_smoothing=torch.tensor(0.1)))
case("cross_entropy", "label_smoothing = 1", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5), labels(), label_smoothing=1.0))
case("cross_entropy", "label_smoothing = 1e-100 (below fp32's range)", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5), labels(), label_smoothing=1e-100))
case("cross_entropy", "reduction 'avg'", ValueError, "reduction must be one of")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), reduction="avg", backend=b))
case("cross_entropy", "reduction None", ValueError, "reduction must be one of")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), reduction=None, backend=b))
case("cross_entropy", "ignore_index = 1.5", TypeError, "ignore_index must be an int")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), ignore_index=1.5, backend=b))
case("cross_entropy", "ignore_index = 2**70", ValueError, "ignore_index must fit in int64")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), labels(), ignore_index=2**70, backend=b))
case("cross_entropy", "ignore_index inside [0, C)", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(6, 5), labels(6), ignore_index=2, weight=torch.rand(5, device=DEVICE) + 0.5,
                         label_smoothing=0.1))
case("cross_entropy", "weight that requires grad", ValueError, r"weight.detach\(\)")(
    lambda b: rk.cross_entropy(ce_logits(4, 5).requires_grad_(), labels(),
                               weight=torch.ones(5, device=DEVICE, requires_grad=True), backend=b))
case("cross_entropy", "probability target that requires grad",
     check=lambda r: torch.allclose(r[0].double(), r[1], rtol=1e-5, atol=1e-6),
     check_text="its gradient, -(1-ε)·w·log p reduced like the loss, equals F.cross_entropy's (float64)")(
    lambda b: ce_target_gradients(b, ce_logits(4, 5), torch.softmax(ce_logits(5, 4), 0).t(), label_smoothing=0.1))
case("cross_entropy", "all class weights zero", check=ce_matches,
     check_text="NaN mean and NaN gradient, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5), labels(), weight=torch.zeros(5, device=DEVICE), label_smoothing=0.1))
case("cross_entropy", "every target ignored", check=ce_matches,
     check_text="NaN mean and zero gradient, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5), torch.full((4,), -100, device=DEVICE), label_smoothing=0.1))
case("cross_entropy", "NaN class weight", check=lambda r: torch.isnan(r[0]).tolist() == [True, False, False, True],
     check_text="NaN for the rows of that class only (reduction='none'), as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5), labels(), reduction="none",
                         weight=torch.tensor([math.nan, 1, 1, 1, 1], device=DEVICE)))
for value in (1.5, -0.5, math.nan):
    case("MixedTarget", f"lam = {value}", ValueError, r"lam must be in \[0, 1\]")(
        lambda b, value=value: rk.MixedTarget(labels(), labels(), value))
case("cross_entropy", "tensor lam outside [0, 1], validate=True", ValueError, r"lam holds 1.5, outside \[0, 1\]")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), rk.MixedTarget(labels(), labels(), torch.tensor(1.5, device=DEVICE)),
                               validate=True, backend=b))
case("cross_entropy", "tensor lam NaN, validate=True", ValueError, r"lam holds nan, outside \[0, 1\]")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), rk.MixedTarget(labels(), labels(), torch.tensor(
        [0.5, math.nan, 0.5, 0.5], device=DEVICE)), validate=True, backend=b))
case("cross_entropy", "tensor lam outside [0, 1] without validate",
     check=lambda r: torch.allclose(r[0], r[1], rtol=1e-5, atol=1e-5),
     check_text="used as given (no sync): equal to CE against target.dense()")(
    lambda b: (lambda mixed: (rk.cross_entropy(ce_logits(4, 5), mixed, backend=b),
                              rk.cross_entropy(ce_logits(4, 5), mixed.dense(5), backend=b)))(
        rk.MixedTarget(labels(), labels().flip(0), torch.tensor(1.5, device=DEVICE))))
case("cross_entropy", "tensor lam NaN without validate", check=lambda r: bool(torch.isnan(r).tolist() ==
                                                                            [False, True, False, False]),
     check_text="NaN for that sample's row only")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), rk.MixedTarget(labels(), labels().flip(0), torch.tensor(
        [0.5, math.nan, 0.5, 0.5], device=DEVICE)), reduction="none", backend=b))
case("MixedTarget", "dense() with label_smoothing = NaN", ValueError, r"label_smoothing must be in \[0, 1\]")(
    lambda b: rk.MixedTarget(labels(), labels(), 0.5).dense(5, math.nan))
case("nn.CrossEntropyLoss", "reduction 'avg'", ValueError, "reduction must be one of")(
    lambda b: rk.nn.CrossEntropyLoss(reduction="avg"))

# Empty and zero-batch inputs.
case("cross_entropy", "zero batch (0, 5), mean", check=ce_matches, check_text="NaN, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(0, 5), labels(0)))
case("cross_entropy", "zero batch (0, 5), sum", check=lambda r: ce_matches(r) and r[0].item() == 0.0,
     check_text="0, as F.cross_entropy")(lambda b: ce_compare(b, ce_logits(0, 5), labels(0), reduction="sum"))
case("cross_entropy", "zero batch (0, 5), none", check=lambda r: ce_matches(r) and r[0].shape == (0,),
     check_text="an empty (0,) loss")(lambda b: ce_compare(b, ce_logits(0, 5), labels(0), reduction="none"))
case("cross_entropy", "empty spatial dim (2, 5, 0)", check=lambda r: ce_matches(r) and r[0].shape == (2, 0),
     check_text="an empty (2, 0) loss")(
    lambda b: ce_compare(b, ce_logits(2, 5, 0), torch.zeros(2, 0, dtype=torch.int64, device=DEVICE),
                         reduction="none"))
case("cross_entropy", "zero-batch MixedTarget", check=lambda r: bool(torch.isnan(r)),
     check_text="NaN mean over no rows, as CE against dense()")(
    lambda b: rk.cross_entropy(ce_logits(0, 5), rk.MixedTarget(labels(0), labels(0), torch.rand(0, device=DEVICE)),
                               backend=b))
case("cross_entropy", "zero-batch probability target", check=lambda r: r.item() == 0.0, check_text="sum 0")(
    lambda b: rk.cross_entropy(ce_logits(0, 5), ce_logits(0, 5), reduction="sum", backend=b))
case("nn.CrossEntropyLoss", "zero batch (0, 5)", check=lambda r: bool(torch.isnan(r)), check_text="NaN, as torch")(
    lambda b: ce_module(b, ce_logits(0, 5), labels(0)))

# Non-contiguous, expanded (stride 0) and channels_last inputs.
case("cross_entropy", "non-contiguous (transposed) logits", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(5, 4), labels(), view=lambda x: x.t(), label_smoothing=0.1))
case("cross_entropy", "expanded (stride 0) logits", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(1, 5), labels(), view=lambda x: x.expand(4, 5), label_smoothing=0.1))
case("cross_entropy", "channels_last (N, C, H, W) logits", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(2, 5, 3, 3).contiguous(memory_format=torch.channels_last),
                         torch.arange(18, device=DEVICE).reshape(2, 3, 3) % 5, label_smoothing=0.1))
case("cross_entropy", "channels_last logits, inplace_backward", check=ce_matches,
     check_text=CE_MATCHES_TORCH + " (falls back to a gradient buffer)")(
    lambda b: ce_compare(b, ce_logits(2, 5, 3, 3).contiguous(memory_format=torch.channels_last),
                         torch.arange(18, device=DEVICE).reshape(2, 3, 3) % 5, inplace_backward=True))
case("cross_entropy", "expanded (stride 0) target and weight", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5), ce_labels(3).expand(4), weight=torch.ones(1, device=DEVICE).expand(5),
                         label_smoothing=0.1))
case("cross_entropy", "non-contiguous probability target", check=ce_matches, check_text=CE_MATCHES_TORCH)(
    lambda b: ce_compare(b, ce_logits(4, 5), torch.softmax(ce_logits(5, 4), 0).t(), label_smoothing=0.1))
case("cross_entropy", "expanded (stride 0) lam", check=ce_matches, check_text=CE_MATCHES_TORCH + " on dense()")(
    lambda b: (lambda mixed: ce_compare(b, ce_logits(4, 5), mixed, torch_target=mixed.dense(5, 0.1, torch.float64),
                                        label_smoothing=0.1))(
        rk.MixedTarget(labels(), labels().flip(0), torch.tensor([0.3], device=DEVICE).expand(4))))
case("cross_entropy", "inplace_backward on a view (logits.view(-1, C))", check=ce_matches,
     check_text=CE_MATCHES_TORCH + ", written into the view's storage")(
    lambda b: ce_compare(b, ce_logits(2, 3, 5), torch.arange(6, device=DEVICE) % 5, view=lambda x: x.view(-1, 5),
                         inplace_backward=True, label_smoothing=0.1))
case("cross_entropy", "inplace_backward on a leaf", ValueError, "would overwrite a leaf tensor")(
    lambda b: rk.cross_entropy(ce_logits(4, 5).requires_grad_(), labels(), inplace_backward=True, backend=b))
case("cross_entropy", "inplace_backward on a view of a leaf", ValueError, "would overwrite a leaf tensor")(
    lambda b: rk.cross_entropy(ce_logits(2, 2, 5).requires_grad_().view(4, 5), labels(), inplace_backward=True,
                               backend=b))

# NaN and inf in the data: propagated as torch does.
case("cross_entropy", "NaN in one row of logits", check=ce_matches,
     check_text="that row's loss and gradient NaN, the others equal F.cross_entropy's")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(0, ce_labels(1), math.nan), labels(), reduction="none",
                         label_smoothing=0.1))
case("cross_entropy", "+inf logit", check=ce_matches, check_text="NaN for the rows holding it, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(1, ce_labels(2), math.inf), labels(), reduction="none"))
case("cross_entropy", "-inf logit of another class", check=ce_matches,
     check_text="finite without smoothing (a masked class), as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(1, ce_labels(4), -math.inf), labels(), reduction="none"))
case("cross_entropy", "-inf logit with label smoothing", check=ce_matches, check_text="inf loss, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(1, ce_labels(4), -math.inf), labels(), reduction="none",
                         label_smoothing=0.1))
case("cross_entropy", "-inf logit of the target class", check=ce_matches, check_text="inf, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(1, ce_labels(0), -math.inf), labels(), reduction="none"))
case("cross_entropy", "row of all -inf", check=ce_matches, check_text="NaN for that row, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(0, ce_labels(2), -math.inf), labels(), reduction="none"))
case("cross_entropy", "logits of 1e30", check=ce_matches, check_text="finite, equal to F.cross_entropy's")(
    lambda b: ce_compare(b, ce_logits(4, 5) * 1e29, labels(), label_smoothing=0.1))
case("cross_entropy", "NaN logits in an ignored row",
     check=lambda r: ce_matches((r[0], r[1][[0, 2, 3]], r[2], r[3][[0, 2, 3]])) and bool((r[1][1] == 0).all()),
     check_text="loss equal to F.cross_entropy's; that row's gradient exactly 0 (torch: NaN)")(
    lambda b: ce_compare(b, ce_logits(4, 5).index_fill_(0, ce_labels(1), math.nan), ce_labels(0, -100, 2, 3),
                         label_smoothing=0.1))
case("cross_entropy", "NaN in a probability target", check=ce_matches,
     check_text="NaN for that row, as F.cross_entropy")(
    lambda b: ce_compare(b, ce_logits(4, 5), torch.softmax(ce_logits(4, 5), 1).index_fill_(0, ce_labels(3), math.nan),
                         reduction="none"))

# Class indices out of range.
case("cross_entropy", "class index = C", check=ce_nan_row_only, check_text=CE_OUT_OF_RANGE)(
    lambda b: ce_out_of_range(b, ce_labels(0, 5, 2, 3)))
case("cross_entropy", "class index -1 (not ignore_index)", check=ce_nan_row_only, check_text=CE_OUT_OF_RANGE)(
    lambda b: ce_out_of_range(b, ce_labels(0, -1, 2, 3), weight=torch.ones(5, device=DEVICE)))
case("cross_entropy", "class index 2**40", check=ce_nan_row_only, check_text=CE_OUT_OF_RANGE)(
    lambda b: ce_out_of_range(b, ce_labels(0, 2**40, 2, 3), label_smoothing=0.1))
case("cross_entropy", "class index out of range, validate=True", ValueError, r"class index 5, outside \[0, 5\)")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), ce_labels(0, 5, 2, 3), validate=True, backend=b))
case("cross_entropy", "ignore_index target, validate=True", check=lambda r: bool(torch.isfinite(r)),
     check_text="a finite loss: ignore_index is allowed")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), ce_labels(0, -100, 2, 3), validate=True, backend=b))
case("cross_entropy", "MixedTarget y_b = C", check=ce_nan_row_only, check_text=CE_OUT_OF_RANGE)(
    lambda b: ce_out_of_range(b, rk.MixedTarget(labels(), ce_labels(0, 5, 2, 3), 0.5)))
case("cross_entropy", "MixedTarget y_a = -100 (no ignore_index for mixed targets)", check=ce_nan_row_only,
     check_text=CE_OUT_OF_RANGE)(lambda b: ce_out_of_range(b, rk.MixedTarget(ce_labels(0, -100, 2, 3), labels(), 0.5)))
case("cross_entropy", "MixedTarget index out of range, validate=True", ValueError, r"class index -100, outside")(
    lambda b: rk.cross_entropy(ce_logits(4, 5), rk.MixedTarget(ce_labels(0, -100, 2, 3), labels(), 0.5),
                               validate=True, backend=b))
case("nn.CrossEntropyLoss", "class index = C", check=ce_nan_row_only, check_text=CE_OUT_OF_RANGE)(
    lambda b: ce_out_of_range(b, ce_labels(0, 5, 2, 3), module=True))
case("nn.CrossEntropyLoss", "MixedTarget", check=lambda r: torch.allclose(r[0], r[1], rtol=1e-5, atol=1e-5),
     check_text="equal to CE against target.dense(C, label_smoothing)")(
    lambda b: (lambda mixed: (ce_module(b, ce_logits(4, 5), mixed, label_smoothing=0.1),
                              F.cross_entropy(ce_logits(4, 5), mixed.dense(5, 0.1))))(
        rk.MixedTarget(labels(), labels().flip(0), torch.rand(4, device=DEVICE))))


# ----------------------------------------------------------------------------- mixing (more)


def _mx_params(n=4, mode=rk.MixMode.CUTMIX, box=(2, 2, 6, 6), lam=0.5, partner=None, box_dtype=torch.int32):
    """Explicit composite_batch parameters on DEVICE: one box, lam and mode for every sample, flip partners."""
    box = torch.tensor([list(box)] * n, dtype=box_dtype, device=DEVICE)
    lam = torch.full((n,), lam, device=DEVICE)
    partner = torch.arange(n, device=DEVICE).flip(0) if partner is None else \
        torch.as_tensor(partner, device=DEVICE).expand(n).clone()
    mode = torch.as_tensor(mode, device=DEVICE).expand(n).clone()
    return box, lam, partner, mode


def _mx_composite(b, x=None, **kw):
    """composite_batch on images() (or x) with _mx_params, any of them overridden by keyword."""
    x = images() if x is None else x
    scalars = {k: kw.pop(k) for k in ("lam", "mode") if k in kw and not isinstance(kw[k], torch.Tensor)}
    box, lam, partner, mode = _mx_params(x.shape[0], **scalars)
    given = dict(box=box, lam=lam, partner=partner, mode=mode)
    given.update({k: kw.pop(k) for k in list(kw) if k in given})
    return rk.composite_batch(x, given["box"], given["lam"], given["partner"], given["mode"], backend=b, **kw)


def _mx_pair(fn, x):
    """(fn(x), x): a result with the input it came from (images() draws new values on every call)."""
    return fn(x), x


def _mx_own_or_partner(out, x):
    """Every element of out is the same element of its own sample or of its flip partner (NaN equal to NaN)."""
    same = lambda a, b: (a == b) | (a.isnan() & b.isnan())  # noqa: E731
    return bool((same(out, x) | same(out, x.flip(0))).all())


def _mx_expected(x, **kw):
    """The float32 reference of _mx_composite, rounded to x's dtype."""
    box, lam, partner, mode = _mx_params(x.shape[0])
    given = dict(box=box, lam=lam, partner=partner, mode=mode)
    given.update(kw)
    return rk.reference.composite_batch(x, given["box"], given["lam"], given["partner"], given["mode"]).to(x.dtype)


def _mx_box_filled(out, value, box=(2, 2, 6, 6)):
    """True when `out` is `value` inside the box and unchanged outside it (images() start finite)."""
    x0, y0, x1, y1 = box
    inside = torch.zeros(out.shape[-2:], dtype=torch.bool, device=out.device)
    inside[y0:y1, x0:x1] = True
    got = out[:, :, inside]
    fill_ok = bool(got.isnan().all()) if isinstance(value, float) and math.isnan(value) else bool((got == value).all())
    return fill_ok and bool(out[:, :, ~inside].isfinite().all())


def _mx_extremes(n=4):
    """uint8 images: even samples all 0, odd samples all 255 (flip partners pair 0 with 255 when n is even)."""
    x = torch.zeros(n, 3, 8, 8, dtype=torch.uint8, device=DEVICE)
    x[1::2] = 255
    return x


def _mx_special(n=4):
    """float32 images with NaN in sample 0, +inf in sample 1 and -inf in sample 2 (row 0 of every channel)."""
    x = images(n)
    x[0, :, 0], x[1, :, 0], x[2, :, 0] = math.nan, math.inf, -math.inf
    return x


_MX_ERASE = dict(mode=rk.MixMode.ERASE)
_MX_BIG = 2**32

# composite_batch: parameters of wrong shapes, dtypes and devices.
case("composite_batch", "box of shape (4, 3)", ValueError, r"box must be a tensor of shape \(4, 4\)")(
    lambda b: _mx_composite(b, box=torch.zeros(4, 3, dtype=torch.int32, device=DEVICE)))
case("composite_batch", "lam of shape (3,)", ValueError, r"lam must be a tensor of shape \(4,\)")(
    lambda b: _mx_composite(b, lam=torch.ones(3, device=DEVICE)))
case("composite_batch", "partner given as a list", ValueError, "partner must be a tensor")(
    lambda b: _mx_composite(b, partner=[3, 2, 1, 0]))
case("composite_batch", "mode of shape (4, 1)", ValueError, "mode must be a tensor of shape")(
    lambda b: _mx_composite(b, mode=torch.zeros(4, 1, dtype=torch.int32, device=DEVICE)))
case("composite_batch", "float box", TypeError, "box must be an integer tensor")(
    lambda b: _mx_composite(b, box=torch.full((4, 4), 2.7, device=DEVICE)))
case("composite_batch", "bool mode", TypeError, "mode must be an integer tensor")(
    lambda b: _mx_composite(b, mode=torch.ones(4, dtype=torch.bool, device=DEVICE)))
case("composite_batch", "float partner", TypeError, "partner must be an integer tensor")(
    lambda b: _mx_composite(b, partner=torch.zeros(4, device=DEVICE)))
case("composite_batch", "int64 lam", TypeError, "lam must be a floating tensor")(
    lambda b: _mx_composite(b, lam=torch.ones(4, dtype=torch.int64, device=DEVICE)))
case("composite_batch", "box on another device (meta)", ValueError, "box is on meta")(
    lambda b: _mx_composite(b, box=torch.zeros(4, 4, dtype=torch.int32, device="meta")))
case("composite_batch", "mode on another device (meta)", ValueError, "mode is on meta")(
    lambda b: _mx_composite(b, mode=torch.zeros(4, dtype=torch.int32, device="meta")))
case("composite_batch", "noise_seed of shape (2,)", ValueError, "noise_seed must be a tensor with one element")(
    lambda b: _mx_composite(b, noise_seed=torch.tensor([1, 2], device=DEVICE), **_MX_ERASE))
case("composite_batch", "noise_seed as a Python int", ValueError, "noise_seed must be a tensor")(
    lambda b: _mx_composite(b, noise_seed=7, **_MX_ERASE))
case("composite_batch", "float noise_seed", TypeError, "noise_seed must be an integer tensor")(
    lambda b: _mx_composite(b, noise_seed=torch.tensor([1.5], device=DEVICE), **_MX_ERASE))
case("composite_batch", "noise_seed on another device (meta)", ValueError, "noise_seed is on meta")(
    lambda b: _mx_composite(b, noise_seed=torch.tensor([1], device="meta"), **_MX_ERASE))
case("composite_batch", "fill tensor on another device (meta)", ValueError, "fill is on meta")(
    lambda b: _mx_composite(b, fill=torch.zeros(3, device="meta"), **_MX_ERASE))
case("composite_batch", "mean tensor on another device (meta)", ValueError, "mean is on meta")(
    lambda b: _mx_composite(b, mean=torch.zeros(3, device="meta"), std=torch.ones(3, device=DEVICE)))
case("composite_batch", "fill of shape (2, 3)", ValueError, "fill must have 1 or 3 values")(
    lambda b: _mx_composite(b, fill=torch.zeros(2, 3, device=DEVICE), **_MX_ERASE))
case("composite_batch", "std = 0", ValueError, "std must not contain zeros")(
    lambda b: _mx_composite(b, mean=0.5, std=0.0))
case("composite_batch", "mean = NaN", ValueError, "mean must be finite")(
    lambda b: _mx_composite(b, mean=math.nan, std=1.0))
case("composite_batch", "std = inf", ValueError, "std must be finite")(
    lambda b: _mx_composite(b, mean=0.0, std=[1.0, math.inf, 1.0]))
case("composite_batch", "out_dtype float64", check=lambda r: r.dtype == torch.float64, check_text="a float64 result")(
    lambda b: _mx_composite(b, out_dtype=torch.float64))
case("composite_batch", "out_dtype int32", TypeError, "out_dtype must be")(
    lambda b: _mx_composite(b, out_dtype=torch.int32))
case("composite_batch", "out_dtype uint8 from a float x", ValueError, "out_dtype=torch.uint8 needs a uint8 x")(
    lambda b: _mx_composite(b, out_dtype=torch.uint8))
case("composite_batch", "noise_seed with a uint8 x", ValueError, "needs a floating x")(
    lambda b: _mx_composite(b, x=images(dtype=torch.uint8), noise_seed=torch.tensor([1], device=DEVICE), **_MX_ERASE))

# composite_batch: parameter values out of range (not checked on the host; their documented meaning holds).
case("composite_batch", "int64 box beyond int32 (2^32 + 4)",
     check=lambda r: torch.equal(r[0], r[1].flip(0)), check_text="clamped, not wrapped: the whole image is pasted")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, box=torch.tensor([[0, 0, _MX_BIG + 4, _MX_BIG + 4]] * 4,
                                                                         device=DEVICE)), images()))
case("composite_batch", "int64 partner 2^32", check=lambda r: torch.equal(r[0], r[1][[3, 3, 3, 3]]),
     check_text="clamped to N-1, not wrapped to 0")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, box=torch.tensor([[0, 0, 8, 8]] * 4, device=DEVICE),
                                               partner=torch.full((4,), _MX_BIG, device=DEVICE)), images()))
case("composite_batch", "int64 mode 2^32 + 2", check=lambda r: torch.equal(r[0], r[1]),
     check_text="an invalid code keeps the sample (not wrapped to CUTMIX)")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, mode=torch.full((4,), _MX_BIG + 2, device=DEVICE)), images()))
case("composite_batch", "mode codes -1 and 7", check=lambda r: torch.equal(r[0], r[1]),
     check_text="invalid codes keep the sample")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, mode=torch.tensor([-1, 7, -1, 7], dtype=torch.int32,
                                                                          device=DEVICE)), images()))
case("composite_batch", "partners -5 and 99", check=lambda r: torch.equal(r[0], _mx_expected(
    r[1], box=torch.tensor([[0, 0, 8, 8]] * 4, dtype=torch.int32, device=DEVICE),
    partner=torch.tensor([0, 3, 0, 3], device=DEVICE))),
     check_text="clamped to [0, N): CutMix of the whole image takes sample 0 or N-1")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, box=torch.tensor([[0, 0, 8, 8]] * 4, dtype=torch.int32,
                                                                         device=DEVICE),
                                               partner=torch.tensor([-5, 99, -5, 99], device=DEVICE)), images()))
case("composite_batch", "box partly outside the image (-3, -3, 4, 20)",
     check=lambda r: torch.equal(r[0], _mx_expected(r[1], box=torch.tensor([[0, 0, 4, 8]] * 4, device=DEVICE))),
     check_text="only the part inside is pasted")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, box=torch.tensor([[-3, -3, 4, 20]] * 4, dtype=torch.int32,
                                                                         device=DEVICE)), images()))
case("composite_batch", "empty boxes (x0 > x1) and boxes wholly outside", check=lambda r: torch.equal(r[0], r[1]),
     check_text="the sample is unchanged")(
    lambda b: _mx_pair(lambda x: _mx_composite(b, x=x, box=torch.tensor(
        [[5, 1, 2, 7], [8, 0, 12, 8], [0, -9, 8, 0], [3, 3, 3, 3]], dtype=torch.int32, device=DEVICE)), images()))
case("composite_batch", "lam = 1.5 and -0.5 on uint8 0/255 (MixUp)",
     check=lambda r: r.tolist() == [255, 0, 0, 255], check_text="extrapolates, then saturates to [0, 255]")(
    lambda b: _mx_composite(b, x=_mx_extremes(), mode=rk.MixMode.MIXUP,
                            lam=torch.tensor([-0.5, -0.5, 1.5, 1.5], device=DEVICE))[:, 0, 0, 0])
case("composite_batch", "uint8 0/255 with MixUp", check=lambda r: torch.equal(r[0], _mx_expected(
    r[1], mode=torch.full((4,), int(rk.MixMode.MIXUP), device=DEVICE), lam=torch.full((4,), 0.3, device=DEVICE))) and
    r[0][0, 0, 0, 0].item() == 179, check_text="0.3 * 0 + 0.7 * 255 = 178.5 rounds half up to 179")(
    lambda b: (_mx_composite(b, x=_mx_extremes(), mode=rk.MixMode.MIXUP, lam=torch.full((4,), 0.3, device=DEVICE)),
               _mx_extremes()))
case("composite_batch", "uint8 fill 300 / -5 / 127.5 per channel",
     check=lambda r: r[:, :, 3, 3].tolist() == [[255, 0, 128]] * 4,
     check_text="rounds half up and saturates to [0, 255]")(
    lambda b: _mx_composite(b, x=images(dtype=torch.uint8), fill=[300.0, -5.0, 127.5], **_MX_ERASE))
case("composite_batch", "uint8 fill NaN (a number)", ValueError, "fill must be a number, not NaN")(
    lambda b: _mx_composite(b, x=images(dtype=torch.uint8), fill=math.nan, **_MX_ERASE))
case("composite_batch", "uint8 fill NaN (a tensor)", check=lambda r: _mx_box_filled(r, 0),
     check_text="the box becomes 0 on every backend (no undefined NaN-to-uint8 cast)")(
    lambda b: _mx_composite(b, x=images(dtype=torch.uint8), fill=torch.tensor(math.nan, device=DEVICE), **_MX_ERASE))
case("composite_batch", "float32 fill NaN", check=lambda r: _mx_box_filled(r, math.nan),
     check_text="the box is NaN, the rest unchanged")(
    lambda b: _mx_composite(b, fill=math.nan, **_MX_ERASE))
case("composite_batch", "NaN and inf in x with MixUp", check=lambda r: torch.equal(r.isnan(), torch.tensor(
    [True, True, True, True], device=DEVICE)), check_text="NaN (sample 0 and its partner 3) and inf - inf "
    "(samples 1 and 2) give NaN, as torch's lam * a + (1 - lam) * b")(
    lambda b: _mx_composite(b, x=_mx_special(), mode=rk.MixMode.MIXUP)[:, 0, 0, 0])
case("composite_batch", "NaN and inf in x with CutMix outside the box",
     check=lambda r: r[0].isnan().tolist() == [True, False, False, False] and r[1].tolist() == [math.inf, -math.inf],
     check_text="copied unchanged: NaN and inf stay where they are, nothing else becomes NaN")(
    lambda b: (lambda out: (out[:, 0, 0, 0], out[1:3, 0, 0, 0]))(_mx_composite(b, x=_mx_special())))
case("composite_batch", "expanded (stride 0) x", check=lambda r: torch.equal(r[0], _mx_expected(r[1].contiguous())),
     check_text="read as its logical values")(
    lambda b: (lambda x: (_mx_composite(b, x=x), x))(images(1).expand(4, 3, 8, 8)))
case("composite_batch", "empty H (4, 3, 0, 8)", check=lambda r: r.shape == (4, 3, 0, 8), check_text="empty result")(
    lambda b: _mx_composite(b, x=t(4, 3, 0, 8)))
case("composite_batch", "zero channels with mean=[] std=[]", check=lambda r: r.shape == (4, 0, 8, 8) and
     r.dtype == torch.float32, check_text="empty result")(
    lambda b: _mx_composite(b, x=t(4, 0, 8, 8), mean=[], std=[]))

# cutmix, mixup: layouts, empty images, special values, targets.
for _name, _call in mixers():
    case(_name, "expanded (stride 0) x", check=lambda r: torch.allclose(r[0], r[1]),
         check_text="every sample is the same image: the result is that image")(
        lambda b, call=_call: _mx_pair(lambda x: call(x, labels(), b, per_sample=True)[0],
                                       images(1).expand(4, 3, 8, 8)))
    case(_name, "int32 targets", TypeError, "int64 class indices")(
        lambda b, call=_call: call(images(), labels().int(), b))
    case(_name, "0-d target", ValueError, "first dimension must match")(
        lambda b, call=_call: call(images(), torch.tensor(1, device=DEVICE), b))
    case(_name, "target on another device (meta)", ValueError, "target is on meta")(
        lambda b, call=_call: call(images(), labels().to("meta"), b))
    case(_name, "alpha = inf", ValueError, "finite")(lambda b, call=_call: call(images(), labels(), b, alpha=math.inf))
    case(_name, "alpha given as a tensor", TypeError, "Python float")(
        lambda b, call=_call: call(images(), labels(), b, alpha=torch.tensor(1.0)))
    case(_name, "std = NaN", ValueError, "std must be finite")(
        lambda b, call=_call: call(images(), labels(), b, mean=0.5, std=math.nan))
    case(_name, "out_dtype uint8 from a float x", ValueError, "needs a uint8 x")(
        lambda b, call=_call: call(images(), labels(), b, out_dtype=torch.uint8))
    case(_name, "one sample (its own partner)", check=lambda r: torch.allclose(r[0][0], r[1]) and
         0.0 <= float(r[0][1].lam) <= 1.0, check_text="the image itself; lam in [0, 1]")(
        lambda b, call=_call: (lambda x: (call(x, labels(1), b, per_sample=True), x))(images(1)))

case("cutmix", "empty H (4, 3, 0, 8)", check=lambda r: r[0].shape == (4, 3, 0, 8) and bool((r[1].lam == 1).all()),
     check_text="empty result; lam = 1 (nothing pasted), not inf or NaN")(
    lambda b: rk.cutmix(t(4, 3, 0, 8), labels(), per_sample=True, backend=b))
case("cutmix", "empty W (4, 3, 8, 0)", check=lambda r: r[0].shape == (4, 3, 8, 0) and float(r[1].lam) == 1.0,
     check_text="empty result; lam = 1")(lambda b: rk.cutmix(t(4, 3, 8, 0), labels(), backend=b))
case("mixup", "empty H (4, 3, 0, 8)", check=lambda r: r[0].shape == (4, 3, 0, 8) and
     bool(((r[1].lam > 0) & (r[1].lam < 1)).all()), check_text="empty result; lam drawn as usual")(
    lambda b: rk.mixup(t(4, 3, 0, 8), labels(), per_sample=True, backend=b))
case("cutmix", "inplace on an expanded x", ValueError, "needs a contiguous or channels_last x")(
    lambda b: rk.cutmix(images(1).expand(4, 3, 8, 8), labels(), inplace=True, backend=b))
case("cutmix", "inplace with normalization", ValueError, "cannot normalize")(
    lambda b: rk.cutmix(images(), labels(), inplace=True, mean=0.5, std=0.2, backend=b))
case("cutmix", "NaN and inf in x", check=lambda r: _mx_own_or_partner(*r),
     check_text="pixels are moved, not mixed: each is its own or its partner's (NaN and inf included), no new NaN")(
    lambda b: _mx_pair(lambda x: rk.cutmix(x, labels(), per_sample=True, backend=b)[0], _mx_special()))
case("mixup", "NaN and inf in x", check=lambda r: torch.equal(r.isnan(), torch.tensor(
    [True, True, True, True], device=DEVICE)), check_text="NaN where a NaN or inf - inf is mixed in, as in torch")(
    lambda b: rk.mixup(_mx_special(), labels(), backend=b)[0][:, 0, 0, 0])
case("mixup", "uint8 0 and 255", check=lambda r: torch.equal(r[0], _mx_expected(
    _mx_extremes(), mode=torch.full((4,), int(rk.MixMode.MIXUP), device=DEVICE), lam=r[1].expand(4))),
     check_text="lam 0 + (1 - lam) 255 in fp32, rounded half up: within [0, 255], equal to the reference")(
    lambda b: (lambda r: (r[0], r[1].lam))(rk.mixup(_mx_extremes(), labels(), alpha=1.0, backend=b)))

# cutmix_or_mixup: hyperparameters, targets, layouts.
_cmm = lambda b, x=None, y=None, **kw: rk.cutmix_or_mixup(images() if x is None else x,  # noqa: E731
                                                         labels() if y is None else y, backend=b, **kw)
case("cutmix_or_mixup", "prob = NaN", ValueError, r"prob must be in \[0, 1\]")(lambda b: _cmm(b, prob=math.nan))
case("cutmix_or_mixup", "prob = -0.1", ValueError, r"prob must be in \[0, 1\]")(lambda b: _cmm(b, prob=-0.1))
case("cutmix_or_mixup", "switch_prob = NaN", ValueError, r"switch_prob must be in \[0, 1\]")(
    lambda b: _cmm(b, switch_prob=math.nan))
case("cutmix_or_mixup", "switch_prob = 2", ValueError, r"switch_prob must be in \[0, 1\]")(
    lambda b: _cmm(b, switch_prob=2.0))
case("cutmix_or_mixup", "prob given as a tensor", TypeError, "Python float")(
    lambda b: _cmm(b, prob=torch.tensor(0.5)))
case("cutmix_or_mixup", "mixup_alpha = -1", ValueError, "mixup_alpha must be a finite number >= 0")(
    lambda b: _cmm(b, mixup_alpha=-1.0))
case("cutmix_or_mixup", "cutmix_alpha = NaN", ValueError, "cutmix_alpha must be a finite number >= 0")(
    lambda b: _cmm(b, cutmix_alpha=math.nan))
case("cutmix_or_mixup", "mixup_alpha = inf", ValueError, "finite")(lambda b: _cmm(b, mixup_alpha=math.inf))
case("cutmix_or_mixup", "both alphas 0", ValueError, "both 0")(lambda b: _cmm(b, mixup_alpha=0.0, cutmix_alpha=0.0))
case("cutmix_or_mixup", "int32 targets", TypeError, "int64 class indices")(lambda b: _cmm(b, y=labels().int()))
case("cutmix_or_mixup", "target length differs from N", ValueError, "first dimension must match")(
    lambda b: _cmm(b, y=labels(5)))
case("cutmix_or_mixup", "target on another device (meta)", ValueError, "target is on meta")(
    lambda b: _cmm(b, y=labels().to("meta")))
case("cutmix_or_mixup", "3-D x", ValueError, "must be 4-D")(lambda b: _cmm(b, x=t(3, 8, 8), y=labels(3)))
case("cutmix_or_mixup", "float64 x", check=lambda r: r[0].dtype == torch.float64, check_text="a float64 result")(
    lambda b: _cmm(b, x=images(dtype=torch.float64)))
case("cutmix_or_mixup", "int32 x", TypeError, "float32, float16, bfloat16, uint8 or float64")(
    lambda b: _cmm(b, x=images(dtype=torch.int32)))
case("cutmix_or_mixup", "prob = 0", check=lambda r: torch.equal(r[0][0], r[1]) and bool((r[0][1].lam == 1).all()),
     check_text="the batch unchanged, lam = 1")(lambda b: _mx_pair(lambda x: _cmm(b, x=x, prob=0.0), images()))
case("cutmix_or_mixup", "zero-batch x", check=lambda r: r[0].shape == (0, 3, 8, 8) and r[1].lam.shape == (0,),
     check_text="empty result, empty lam")(lambda b: _cmm(b, x=images(0), y=labels(0)))
case("cutmix_or_mixup", "empty W (4, 3, 8, 0), CutMix only", check=lambda r: r[0].shape == (4, 3, 8, 0) and
     bool((r[1].lam == 1).all()), check_text="empty result; lam = 1, not inf")(
    lambda b: _cmm(b, x=t(4, 3, 8, 0), mixup_alpha=0.0))
case("cutmix_or_mixup", "expanded (stride 0) x", check=lambda r: torch.allclose(r[0], r[1]),
     check_text="every sample is the same image: the result is that image")(
    lambda b: _mx_pair(lambda x: _cmm(b, x=x)[0], images(1).expand(4, 3, 8, 8)))
case("cutmix_or_mixup", "uint8 0/255 to normalized bfloat16", check=lambda r: r.dtype == torch.bfloat16 and
     bool(((r >= -1.0) & (r <= 1.0)).all()), check_text="values of (v - 127.5) / 127.5 for v in [0, 255]")(
    lambda b: _cmm(b, x=_mx_extremes(), mean=127.5, std=127.5, out_dtype=torch.bfloat16)[0])

# nn.CutMixUp: constructor and forward.
case("nn.CutMixUp", "prob = NaN", ValueError, r"prob must be in \[0, 1\]")(lambda b: rk.nn.CutMixUp(prob=math.nan))
case("nn.CutMixUp", "switch_prob = NaN", ValueError, r"switch_prob must be in \[0, 1\]")(
    lambda b: rk.nn.CutMixUp(switch_prob=math.nan))
case("nn.CutMixUp", "cutmix_alpha = -0.5", ValueError, "cutmix_alpha must be a finite number >= 0")(
    lambda b: rk.nn.CutMixUp(cutmix_alpha=-0.5))
case("nn.CutMixUp", "mixup_alpha = NaN", ValueError, "mixup_alpha must be a finite number >= 0")(
    lambda b: rk.nn.CutMixUp(mixup_alpha=math.nan))
case("nn.CutMixUp", "mixup_alpha given as a string", TypeError, "Python float")(
    lambda b: rk.nn.CutMixUp(mixup_alpha="0.8"))
case("nn.CutMixUp", "both alphas 0", ValueError, "both 0")(lambda b: rk.nn.CutMixUp(mixup_alpha=0.0, cutmix_alpha=0.0))
case("nn.CutMixUp", "partner 'shuffle'", ValueError, "partner must be")(lambda b: rk.nn.CutMixUp(partner="shuffle"))
case("nn.CutMixUp", "prob set to 2 after construction", ValueError, r"prob must be in \[0, 1\]")(
    lambda b: (lambda m: (setattr(m, "prob", 2.0), m(images(), labels())))(rk.nn.CutMixUp()))
case("nn.CutMixUp", "float targets", TypeError, "int64 class indices")(
    lambda b: rk.nn.CutMixUp()(images(), labels().float()))
case("nn.CutMixUp", "target length differs from N", ValueError, "first dimension must match")(
    lambda b: rk.nn.CutMixUp()(images(), labels(3)))
case("nn.CutMixUp", "mean of the wrong length (checked at call)", ValueError, "mean has 2 values")(
    lambda b: rk.nn.CutMixUp(mean=(0.5, 0.5), std=(1.0, 1.0))(images(), labels()))
case("nn.CutMixUp", "eval mode", check=lambda r: torch.equal(r[0][0], r[1]) and bool((r[0][1].lam == 1).all()),
     check_text="the batch unchanged, lam = 1")(
    lambda b: _mx_pair(lambda x: rk.nn.CutMixUp().eval()(x, labels()), images()))

# random_erasing: values, layouts, empty and special inputs.
case("random_erasing", "p = NaN", ValueError, "p must be in")(
    lambda b: rk.random_erasing(images(), p=math.nan, backend=b))
case("random_erasing", "scale (NaN, 0.3)", ValueError, "scale")(
    lambda b: rk.random_erasing(images(), scale=(math.nan, 0.3), backend=b))
case("random_erasing", "ratio (0.3, inf)", ValueError, "ratio")(
    lambda b: rk.random_erasing(images(), ratio=(0.3, math.inf), backend=b))
case("random_erasing", "value 'noise'", ValueError, "value must be")(
    lambda b: rk.random_erasing(images(), value="noise", backend=b))
case("random_erasing", "value NaN on uint8", ValueError, "value must be a number, not NaN")(
    lambda b: rk.random_erasing(images(dtype=torch.uint8), value=math.nan, backend=b))
case("random_erasing", "value tensor on another device (meta)", ValueError, "value is on meta")(
    lambda b: rk.random_erasing(images(), value=torch.zeros(3, device="meta"), backend=b))
case("random_erasing", "uint8 value 300 / -5", check=lambda r: set(r[0][r[0] != r[1]].tolist()) <= {0, 255} and
     bool((r[0] != r[1]).any()), check_text="saturates to 255 and 0")(
    lambda b: (lambda x: (rk.random_erasing(x, p=1.0, value=[300.0, -5.0, 300.0], backend=b), x))(
        (images(dtype=torch.uint8) // 2 + 1)))
case("random_erasing", "value NaN on float32", check=lambda r: bool(r[0].isnan().any()) and
     bool((r[0].isnan() | (r[0] == r[1])).all()), check_text="NaN inside the box, the rest unchanged")(
    lambda b: _mx_pair(lambda x: rk.random_erasing(x, p=1.0, value=math.nan, backend=b), images()))
case("random_erasing", "NaN in x", check=lambda r: not bool((r[0].isnan() & ~r[1].isnan()).any()),
     check_text="erased pixels replace NaN; no new NaN")(
    lambda b: _mx_pair(lambda x: rk.random_erasing(x, p=1.0, backend=b), _mx_special()))
case("random_erasing", "expanded (stride 0) x", check=lambda r: r.shape == (4, 3, 8, 8) and r.is_contiguous(),
     check_text="contiguous result, read as its logical values")(
    lambda b: rk.random_erasing(images(1).expand(4, 3, 8, 8), p=1.0, backend=b))
case("random_erasing", "channels_last x", check=lambda r: r.is_contiguous(memory_format=torch.channels_last),
     check_text="channels_last result")(
    lambda b: rk.random_erasing(images(channels_last=True), p=1.0, value="random", backend=b))
case("random_erasing", "empty H (4, 3, 0, 8)", check=lambda r: r.shape == (4, 3, 0, 8), check_text="empty result")(
    lambda b: rk.random_erasing(t(4, 3, 0, 8), p=1.0, backend=b))
case("random_erasing", "zero-batch x", check=lambda r: r.shape == (0, 3, 8, 8), check_text="empty result")(
    lambda b: rk.random_erasing(images(0), p=1.0, backend=b))
case("random_erasing", "1 x 1 images", check=lambda r: torch.equal(r[0], r[1]),
     check_text="no box fits strictly inside: unchanged")(
    lambda b: (lambda x: (rk.random_erasing(x, p=1.0, backend=b), x))(t(4, 3, 1, 1)))


# ----------------------------------------------------------------------------- EMA


def _ema_net():
    """Linear + BatchNorm1d: parameters, floating buffers and an integer buffer."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(DEVICE)


def _ema_blend(e, p, decay):
    """The float64 formula, for checks: d*e + (1-d)*p."""
    return decay * e.double() + (1 - decay) * p.double()


def _ema_pair(*shape, e_dtype=torch.float32, p_dtype=torch.float32):
    return [t(*shape, dtype=e_dtype)], [t(*shape, dtype=p_dtype)]


def _ema_update_checked(ema, params, decay, b):
    """ema_update_ on (ema, params); returns (ema after, the float64 formula on the inputs before)."""
    expected = [_ema_blend(e, p, float(decay)) for e, p in zip(ema, params)]
    rk.ema_update_(ema, params, decay, backend=b)
    return ema, expected


def _ema_call(ema, params, decay, b):
    rk.ema_update_(ema, params, decay, backend=b)
    return ema


def _ema_close(result):
    ema, expected = result
    return all(torch.allclose(e.double(), x, rtol=1e-2 if e.element_size() == 2 else 1e-6, atol=1e-5)
               for e, x in zip(ema, expected))


case("ema_update_", "lists of different lengths", ValueError, "ema_tensors has 2 tensors but model_tensors has 1")(
    lambda b: rk.ema_update_([t(4), t(4)], [t(4)], 0.5, backend=b))
case("ema_update_", "shapes differ within a pair (4,) vs (2, 2)", ValueError,
     r"pair 0: ema tensor has shape \(4,\) but model tensor has \(2, 2\)")(
    lambda b: rk.ema_update_([t(4)], [t(2, 2)], 0.5, backend=b))
case("ema_update_", "a tensor instead of a list", TypeError, "must be a list or tuple")(
    lambda b: rk.ema_update_(t(4), t(4), 0.5, backend=b))
case("ema_update_", "None in the list", TypeError, r"model_tensors\[0\] must be a torch.Tensor")(
    lambda b: rk.ema_update_([t(4)], [None], 0.5, backend=b))
for _decay in (-0.1, 1.5, math.nan, math.inf):
    case("ema_update_", f"decay = {_decay}", ValueError, r"decay must be in \[0, 1\]")(
        lambda b, decay=_decay: rk.ema_update_(*_ema_pair(4), decay, backend=b))
case("ema_update_", "decay = True (a bool)", TypeError, "decay must be a Python float")(
    lambda b: rk.ema_update_(*_ema_pair(4), True, backend=b))
case("ema_update_", "decay = '0.9' (a string)", TypeError, "decay must be a Python float")(
    lambda b: rk.ema_update_(*_ema_pair(4), "0.9", backend=b))
case("ema_update_", "decay tensor of shape (2,)", ValueError, "a decay tensor must be a 0-d floating tensor")(
    lambda b: rk.ema_update_(*_ema_pair(4), torch.tensor([0.5, 0.5], device=DEVICE), backend=b))
case("ema_update_", "decay tensor of shape (0,)", ValueError, "a decay tensor must be a 0-d floating tensor")(
    lambda b: rk.ema_update_(*_ema_pair(4), torch.zeros(0, device=DEVICE), backend=b))
case("ema_update_", "decay tensor of dtype int64", ValueError, "a decay tensor must be a 0-d floating tensor")(
    lambda b: rk.ema_update_(*_ema_pair(4), torch.tensor(0, device=DEVICE), backend=b))
case("ema_update_", "decay tensor on another device (meta)", ValueError, "decay is on meta")(
    lambda b: rk.ema_update_(*_ema_pair(4), torch.tensor(0.5, device="meta"), backend=b))
case("ema_update_", "decay tensor of shape (1, 1), float64", check=_ema_close,
     check_text="its one value is the decay (rounded to fp32)")(
    lambda b: _ema_update_checked(*_ema_pair(5), torch.tensor([[0.25]], dtype=torch.float64, device=DEVICE), b))
case("ema_update_", "decay tensor = 1.5 (range not checked: that would sync the host)", check=_ema_close,
     check_text="the formula with d = 1.5, as documented")(
    lambda b: _ema_update_checked(*_ema_pair(5), torch.tensor(1.5, device=DEVICE), b))
case("ema_update_", "decay tensor = NaN", check=lambda r: bool(r[0][0].isnan().all()),
     check_text="every EMA element NaN (the formula; the range is not checked)")(
    lambda b: _ema_update_checked(*_ema_pair(5), torch.tensor(math.nan, device=DEVICE), b))
case("ema_update_", "model tensor on another device (meta)", ValueError, "all tensors must be on one device")(
    lambda b: rk.ema_update_([t(4)], [t(4, device="meta")], 0.5, backend=b))
case("ema_update_", "second pair on another device (meta)", ValueError, "pair 1: tensors on meta and meta")(
    lambda b: rk.ema_update_([t(4), t(4, device="meta")], [t(4), t(4, device="meta")], 0.5, backend=b))
case("ema_update_", "int64 model tensor", ValueError, r"model_tensors\[0\] has dtype torch.int64")(
    lambda b: rk.ema_update_([t(4)], [torch.arange(4, device=DEVICE)], 0.5, backend=b))
case("ema_update_", "int32 EMA tensor", ValueError, r"ema_tensors\[0\] has dtype torch.int32")(
    lambda b: rk.ema_update_([torch.zeros(4, dtype=torch.int32, device=DEVICE)], [t(4)], 0.5, backend=b))
case("ema_update_", "bool model tensor", ValueError, r"model_tensors\[0\] has dtype torch.bool")(
    lambda b: rk.ema_update_([t(4)], [torch.ones(4, dtype=torch.bool, device=DEVICE)], 0.5, backend=b))
case("ema_update_", "complex64 pair", ValueError, r"ema_tensors\[0\] has dtype torch.complex64")(
    lambda b: rk.ema_update_([t(4, dtype=torch.complex64)], [t(4, dtype=torch.complex64)], 0.5, backend=b))
case("ema_update_", "empty lists", check=lambda r: r is None, check_text="nothing to do, returns None")(
    lambda b: rk.ema_update_([], [], 0.5, backend=b))
case("ema_update_", "empty lists with a bad decay", ValueError, r"decay must be in \[0, 1\]")(
    lambda b: rk.ema_update_([], [], 2.0, backend=b))
case("ema_update_", "empty tensors (0,) and (3, 0) beside a (5,) pair", check=_ema_close,
     check_text="the (5,) pair updated, the empty ones untouched")(
    lambda b: _ema_update_checked([t(0), t(3, 0), t(5)], [t(0), t(3, 0), t(5)], 0.5, b))
case("ema_update_", "0-d pair", check=_ema_close, check_text="updated like any other")(
    lambda b: _ema_update_checked(*_ema_pair(), 0.5, b))
case("ema_update_", "expanded (stride 0) EMA tensor", ValueError, "the ema tensor must be dense")(
    lambda b: rk.ema_update_([t(1).expand(6)], [t(6)], 0.5, backend=b))
case("ema_update_", "expanded (stride 0) EMA and model tensors of equal strides", ValueError,
     "the ema tensor must be dense")(lambda b: rk.ema_update_([t(1, 4).expand(3, 4)], [t(1, 4).expand(3, 4)], 0.5,
                                                           backend=b))
case("ema_update_", "sliced (every other element) EMA tensor", ValueError, "the ema tensor must be dense")(
    lambda b: rk.ema_update_([t(8)[::2]], [t(4)], 0.5, backend=b))
case("ema_update_", "expanded (stride 0) model tensor", check=_ema_close,
     check_text="read as its logical values")(lambda b: _ema_update_checked([t(3, 4)], [t(1, 4).expand(3, 4)], 0.5, b))
case("ema_update_", "transposed model tensor", check=_ema_close, check_text="read as its logical values")(
    lambda b: _ema_update_checked([t(3, 4)], [t(4, 3).t()], 0.5, b))
case("ema_update_", "transposed EMA and model tensors", check=_ema_close,
     check_text="updated in place in their own layout")(
    lambda b: _ema_update_checked([t(4, 3).t()], [t(4, 3).t()], 0.5, b))
case("ema_update_", "channels_last EMA, contiguous bf16 model tensor", check=_ema_close,
     check_text="updated in place, logical values matched")(
    lambda b: _ema_update_checked([t(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)],
                                  [t(2, 3, 4, 5, dtype=torch.bfloat16)], 0.5, b))
case("ema_update_", "the same EMA tensor twice", ValueError, r"ema_tensors\[0\] and ema_tensors\[1\] overlap")(
    lambda b: (lambda x: rk.ema_update_([x, x], [t(6), t(6)], 0.5, backend=b))(t(6)))
case("ema_update_", "overlapping EMA views of one buffer", ValueError, "overlap in memory")(
    lambda b: (lambda x: rk.ema_update_([x[:6], x[4:]], [t(6), t(6)], 0.5, backend=b))(t(10)))
case("ema_update_", "a model tensor that is another pair's EMA tensor", ValueError,
     r"model_tensors\[0\] overlaps ema_tensors\[1\]")(
    lambda b: (lambda x, y: rk.ema_update_([x, y], [y, x], 0.5, backend=b))(t(6), t(6)))
case("ema_update_", "EMA views of one buffer that do not overlap", check=_ema_close,
     check_text="both updated")(lambda b: (lambda x: _ema_update_checked([x[:4], x[4:]], [t(4), t(6)], 0.5, b))(t(10)))
case("ema_update_", "a pair whose model tensor is its EMA tensor (e is p)",
     check=lambda r: torch.equal(r[0][0], r[1][0].float()), check_text="unchanged, exactly")(
    lambda b: (lambda x: _ema_update_checked([x], [x], 0.5, b))(t(6)))
for _decay in (0.75, 0.5):
    case("ema_update_", f"NaN and inf in the model tensor, decay {_decay}",
         check=lambda r: torch.equal(r[0][0].isnan(), r[1].isnan()) and torch.equal(r[0][0].nan_to_num(),
                                                                                  r[1].nan_to_num()),
         check_text="torch.lerp(e, p, 1 - decay)'s NaN and inf: [NaN, inf, -inf, NaN] at 0.75, all NaN at 0.5 "
                    "(p - (p - e)/2 is inf - inf)")(
        lambda b, decay=_decay: (lambda e, p: (_ema_call([e.clone()], [p], decay, b), torch.lerp(e, p, 1 - decay)))(
            torch.tensor([0.0, 0.0, 0.0, math.inf], device=DEVICE),
            torch.tensor([math.nan, math.inf, -math.inf, -math.inf], device=DEVICE)))
case("ema_update_", "NaN in the EMA, decay 0", check=lambda e: torch.equal(e[0], torch.ones(3, device=DEVICE)),
     check_text="the model's values exactly: decay 0 copies")(
    lambda b: _ema_call([torch.full((3,), math.nan, device=DEVICE)], [torch.ones(3, device=DEVICE)], 0.0, b))
case("ema_update_", "NaN in the model, decay 1", check=lambda e: torch.equal(e[0], torch.ones(3, device=DEVICE)),
     check_text="the EMA exactly: decay 1 reads nothing")(
    lambda b: _ema_call([torch.ones(3, device=DEVICE)], [torch.full((3,), math.nan, device=DEVICE)], 1.0, b))
case("ema_update_", "fp64 model value beyond the fp32 range", check=lambda e: e[0].item() == math.inf,
     check_text="inf: the math is fp64 (a pair with an fp64 side), 5e299 rounds to inf in the fp32 EMA")(
    lambda b: _ema_call([torch.zeros(1, device=DEVICE)], [torch.full((1,), 1e300, dtype=torch.float64,
                                                                     device=DEVICE)], 0.5, b))


def _ema_model_case(description, raises=None, match="", **kwargs):
    case("ModelEMA", description, raises, match)(lambda b: rk.ModelEMA(_ema_net(), backend=b, **kwargs))


_ema_model_case("update_every = 0", ValueError, "update_every must be an int >= 1", update_every=0)
_ema_model_case("update_every = 2.0 (a float)", ValueError, "update_every must be an int >= 1", update_every=2.0)
_ema_model_case("update_after_step = -1", ValueError, "update_after_step must be an int >= 0", update_after_step=-1)
_ema_model_case("buffers = 'mean'", ValueError, "buffers must be one of", buffers="mean")
_ema_model_case("ema_dtype = torch.int32", ValueError, "ema_dtype must be a floating dtype", ema_dtype=torch.int32)
_ema_model_case("ema_dtype = torch.complex64", ValueError, "ema_dtype must be a floating dtype",
                ema_dtype=torch.complex64)
_ema_model_case("decay = NaN", ValueError, r"decay must be in \[0, 1\]", decay=math.nan)
_ema_model_case("decay = 1.5", ValueError, r"decay must be in \[0, 1\]", decay=1.5)
_ema_model_case("decay given as a tensor", TypeError, "decay must be a Python float", decay=torch.tensor(0.9))
_ema_model_case("min_decay = NaN", ValueError, r"min_decay must be in \[0, 1\]", min_decay=math.nan)
_ema_model_case("warmup_gamma = 0", ValueError, "warmup_gamma must be a positive finite number", warmup_gamma=0.0)
_ema_model_case("warmup_power = NaN", ValueError, "warmup_power must be a positive finite number",
                warmup_power=math.nan)


def _ema_update_from(model, b, ema_model=None, **kwargs):
    """Makes a ModelEMA of ema_model (default: model), updates it from model once, returns it."""
    ema = rk.ModelEMA(model if ema_model is None else ema_model, backend=b, **kwargs)
    ema.update(model)
    return ema


def _ema_moved(b, move, **kwargs):
    """A ModelEMA updated once, then `move(model)` applied, then updated again."""
    model = _ema_net()
    ema = _ema_update_from(model, b, **kwargs)
    move(model)
    ema.update(model)
    return ema, model


def _ema_reshape_weight(model):
    model[0].weight.data = torch.ones(1, 3, device=DEVICE)


def _ema_fill(model, value):
    with torch.no_grad():
        for tensor in list(model.parameters()) + [model[1].running_mean]:
            tensor.fill_(value)


case("ModelEMA", "update from a model with other parameters", ValueError, "do not match")(
    lambda b: _ema_update_from(torch.nn.Linear(3, 4).to(DEVICE), b, ema_model=_ema_net()))
case("ModelEMA", "update from a model on another device (meta)", ValueError, "must be on one device")(
    lambda b: _ema_update_from(_ema_net().to("meta"), b, ema_model=_ema_net()))
case("ModelEMA", "model moved to meta after an update", ValueError, "one device")(
    lambda b: _ema_moved(b, lambda m: m.to("meta")))
case("ModelEMA", "model cast to float64 after an update (new buffer objects)",
     check=lambda r: torch.equal(r[0].module[1].running_mean, torch.full((4,), 5.0, device=DEVICE)),
     check_text="the new buffers are followed (here copied, decay 0)")(
    lambda b: _ema_moved(b, lambda m: (m.to(torch.float64), _ema_fill(m, 5.0)), decay=0.0))
case("ModelEMA", "a weight re-allocated with another shape (.data) after an update", ValueError,
     r"ema tensor has shape \(4, 3\) but model tensor has \(1, 3\)")(lambda b: _ema_moved(b, _ema_reshape_weight))
case("ModelEMA", "a weight replaced by a smaller view at the same address (.data) after an update", ValueError,
     r"ema tensor has shape \(4, 3\) but model tensor has \(2, 3\)")(
    lambda b: _ema_moved(b, lambda m: setattr(m[0].weight, "data", m[0].weight.data[:2])))


@case("ModelEMA", "model made channels_last after the EMA", ValueError, "memory layout changed")
def _(b):
    model = torch.nn.Conv2d(3, 4, 3).to(DEVICE)
    ema = rk.ModelEMA(model, backend=b)
    model.to(memory_format=torch.channels_last)
    ema.update(model)


@case("ModelEMA", "NaN in a model parameter", check=lambda e: bool(e.module[0].weight[0, 0].isnan())
      and not bool(e.module[0].weight[0, 1:].isnan().any()), check_text="NaN where the model has it, nowhere else")
def _(b):
    model = _ema_net()
    model[0].weight.data[0, 0] = math.nan
    return _ema_update_from(model, b, ema_model=_ema_net())


@case("ModelEMA", "an integer parameter", check=lambda e: torch.equal(e.module.steps, torch.arange(3, device=DEVICE)),
      check_text="copied, like integer buffers")
def _(b):
    model = _ema_net()
    model.register_parameter("steps", torch.nn.Parameter(torch.zeros(3, dtype=torch.int64, device=DEVICE), False))
    ema = rk.ModelEMA(model, backend=b)
    model.steps.data.copy_(torch.arange(3))
    ema.update(model)
    return ema


case("ModelEMA", "a complex parameter", ValueError, "the EMA cannot follow a model tensor of torch.complex64")(
    lambda b: _ema_update_from(torch.nn.Linear(3, 4, dtype=torch.complex64).to(DEVICE), b))
case("ModelEMA", "a model without parameters or buffers", check=lambda e: e.num_updates.item() == 1,
     check_text="updates count, nothing else happens (on the CPU: the model has no device)")(
    lambda b: (lambda ema: (ema.update(torch.nn.ReLU()), ema)[1])(rk.ModelEMA(torch.nn.ReLU())))
case("ModelEMA", "an empty (0, 3) parameter", check=lambda e: e.module[0].weight.shape == (0, 3),
     check_text="updated with the rest")(
    lambda b: _ema_update_from(torch.nn.Sequential(torch.nn.Linear(3, 0), torch.nn.Linear(0, 2)).to(DEVICE), b))
case("ModelEMA", "load_state_dict without the update counter", ValueError, "no '_ema_num_updates'")(
    lambda b: rk.ModelEMA(_ema_net(), backend=b).load_state_dict(_ema_net().state_dict()))
case("ModelEMA", "copy_to a model with other parameters", ValueError, "the model has tensors that the EMA does not")(
    lambda b: rk.ModelEMA(_ema_net(), backend=b).copy_to(torch.nn.Linear(4, 4).to(DEVICE)))


# ----------------------------------------------------------------------------- running the cases


def run_case(entry, backend):
    """What the case does on `backend`: ('raised', exception) or ('returned', value)."""
    try:
        return "returned", entry["fn"](backend)
    except Exception as error:  # noqa: BLE001  (recording the behaviour is the point)
        return "raised", error


@pytest.mark.parametrize("entry", CASES, ids=[entry["id"] for entry in CASES])
def test_case(entry, backend):
    outcome, value = run_case(entry, backend)
    if entry["raises"] is not None:
        assert outcome == "raised", f"expected {entry['raises'].__name__}, got a result"
        assert isinstance(value, entry["raises"]), f"expected {entry['raises'].__name__}, got {value!r}"
        assert re.search(entry["match"], str(value)), f"message {str(value)!r} lacks {entry['match']!r}"
    else:
        assert outcome == "returned", f"expected a result, got {value!r}"
        assert entry["check"](value), entry["check_text"]


def test_every_case_has_a_row_in_docs_robustness_md():
    with open(DOC) as f:
        doc = f.read()
    missing = [entry["id"] for entry in CASES if f"| {entry['function']} | {entry['description']} |" not in doc]
    assert not missing, f"regenerate docs/robustness.md (python tests/test_robustness.py); missing: {missing}"


def write_doc():
    rows = ["# Robustness: bad input on purpose", "",
            "Generated by `python tests/test_robustness.py` from the cases in tests/test_robustness.py, run on the",
            "CPU over the backends listed; the test suite asserts each expected behaviour on every backend",
            "(the cuda backend joins on a GPU). Cases that need a GPU are listed at the end.", "",
            "| function | case | expected | behaviour seen (" + ", ".join(BACKENDS) + ") |", "|---|---|---|---|"]
    for entry in CASES:
        expected = (f"{entry['raises'].__name__}" if entry["raises"] else f"result: {entry['check_text']}")
        seen = []
        for backend in BACKENDS:
            outcome, value = run_case(entry, backend)
            seen.append(f"{type(value).__name__}: {str(value).splitlines()[0][:90]}" if outcome == "raised"
                        else "result, check " + ("passed" if entry["check"] and entry["check"](value) else "FAILED"))
        seen = seen[0] if len(set(seen)) == 1 else "; ".join(f"{b}: {s}" for b, s in zip(BACKENDS, seen))
        rows.append(f"| {entry['function']} | {entry['description']} | {expected} | {seen.replace('|', '/')} |")
    rows += ["", "## Cases that need a GPU", "",
             "| function | case | expected | where it is checked |", "|---|---|---|---|",
             "| dropout | more than 2^31 elements | the mask of the elements past 2^31 equals the reference's "
             "| tests/test_dropout.py::test_more_than_2_to_31_elements (not run yet: no GPU lent) |",
             "| cross_entropy | more than 2^31 logits (16386 x 131072 bf16) | rows equal the reference's "
             "| tests/test_cross_entropy.py::test_more_than_2_to_31_logits |",
             "| cross_entropy | more than 2^31 elements in one sample (segmentation) | the per-row scaling stays "
             "64-bit | tests/test_cross_entropy.py::test_more_than_2_to_31_elements_in_one_sample |",
             "| composite_batch, cutmix, mixup | more than 2^31 elements (uint8 batch) | samples equal the "
             "reference's | tests/test_mixing.py::test_more_than_2_to_31_elements_uint8 |",
             "| random_erasing | noise at logical indices past 2^31 | equals the reference's "
             "| tests/test_mixing.py::test_more_than_2_to_31_elements_erase_noise |",
             "| ema_update_ | a pair of 2^31 + 8 elements (bf16 model, fp32 EMA) | slices equal the formula "
             "| tests/test_ema.py::test_more_than_2_to_31_elements |",
             "| every op | CUDA-graph capture and replay | fresh masks and boxes per replay, EMA equal to eager "
             "| test_cuda_graph_* tests in each op's test file; tests/test_training_step.py |",
             "| every op | no host sync | none under torch.cuda.set_sync_debug_mode('error') "
             "| the set_sync_debug_mode tests in each op's test file |",
             "| all CUDA kernels | out-of-bounds reads or writes | none | scripts/gpu_check.sh --sanitize "
             "(compute-sanitizer memcheck) |", "",
             "None of the GPU cases has run yet: no GPU has been lent to this project so far.", ""]
    with open(DOC, "w") as f:
        f.write("\n".join(rows))
    print(f"wrote {DOC}: {len(CASES)} cases")


if __name__ == "__main__":
    write_doc()
