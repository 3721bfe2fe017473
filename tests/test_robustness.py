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
    case(name, "int64 input", TypeError, "float32, float16 or bfloat16")(
        lambda b, call=call: call(torch.arange(4, device=DEVICE), 0.5, b))
    case(name, "float64 input", TypeError, "float32, float16 or bfloat16")(
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
case("dropout_add", "residual shape differs", ValueError, r"residual has shape \(4, 5\) but x has \(4, 6\)")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 5), 0.5, backend=b))
case("dropout_add", "bias not a trailing shape", ValueError, "bias has shape")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 6), 0.5, bias=t(4), backend=b))
case("dropout_add", "residual on another device (meta)", ValueError, "residual is on meta")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 6, device="meta"), 0.5, backend=b))
case("dropout_add", "residual of another dtype", TypeError, "residual has dtype torch.float16")(
    lambda b: rk.dropout_add(t(4, 6), t(4, 6, dtype=torch.float16), 0.5, backend=b))
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
    case(name, "float64 x", TypeError, "float32, float16, bfloat16 or uint8")(
        lambda b, call=call: call(images(dtype=torch.float64), labels(), b))
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


# ----------------------------------------------------------------------------- mixing (more)


# ----------------------------------------------------------------------------- EMA


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
             "| all CUDA kernels | out-of-bounds reads or writes | none | scripts/gpu_check.sh --sanitize "
             "(compute-sanitizer memcheck; not run yet: no GPU lent) |", ""]
    with open(DOC, "w") as f:
        f.write("\n".join(rows))
    print(f"wrote {DOC}: {len(CASES)} cases")


if __name__ == "__main__":
    write_doc()
