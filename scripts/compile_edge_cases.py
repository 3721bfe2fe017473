"""Compiles every op's Triton kernels for sm_90 at the edge cases the interpreter cannot judge, without a GPU.

    python scripts/compile_edge_cases.py      # one line per case; exit status 1 if any failed

The interpreter runs a kernel as Python, so code that the compiler refuses passes the CPU tests:
- Triton passes an integer argument equal to 1 as a Python int (a constant), not a tensor, so
  `size.to(...)` on it fails to compile (a grey image, a width of 1, one class);
- code after an early `return` inside an `if` on a constexpr is compiled too, so an fp32-only call
  there fails for float64 (cross-entropy's fp64 path did).

Each case calls the public API on small CPU tensors under the stand-in driver
(benchmarks/standin_driver.py): the whole host path runs and every kernel it launches is compiled
for sm_90, its launch a no-op. Any exception fails the case. It runs under whichever Triton is
installed (the GPU machines' 3.6 too).
"""
import os
import sys
import traceback

os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402

import recipe_kernels as rk  # noqa: E402
from standin_driver import StandInDriver  # noqa: E402

BACKEND = "triton"


def _leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


def _images(n, c, h, w, dtype=torch.uint8):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8).to(dtype)


def _dropout_cases():
    def dropout_add(dtype, shape, bias_shape):
        x, residual = _leaf(*shape, dtype=dtype), _leaf(*shape, dtype=dtype)
        bias = _leaf(*bias_shape, dtype=dtype)
        rk.dropout_add(x, residual, 0.1, bias=bias, backend=BACKEND).sum().backward()

    def drop_path_residual(n):
        x = torch.randn(n, 3, 4)
        rk.drop_path_residual(x, lambda part: part * 2.0, 0.5, backend=BACKEND)

    return {
        "dropout float64, one element": lambda: rk.dropout(_leaf(1, dtype=torch.float64), 0.5, backend=BACKEND)
        .sum().backward(),
        "dropout bf16 in place": lambda: rk.dropout(torch.randn(3, 5, dtype=torch.bfloat16), 0.5, inplace=True,
                                                    backend=BACKEND),
        "dropout_add + bias float64, bias of one element": lambda: dropout_add(torch.float64, (2, 1), (1,)),
        "dropout_add + bias bf16, shape (1, 1)": lambda: dropout_add(torch.bfloat16, (1, 1), (1,)),
        "drop_path_add float64, one sample": lambda: rk.drop_path_add(_leaf(1, 3, dtype=torch.float64),
                                                                      _leaf(1, 3, dtype=torch.float64), 0.5,
                                                                      backend=BACKEND).sum().backward(),
        "drop_path float16, one sample": lambda: rk.drop_path(_leaf(1, 1, 2, dtype=torch.float16), 0.5,
                                                              backend=BACKEND).sum().backward(),
        "drop_path_residual, one sample": lambda: drop_path_residual(1),
    }


def _cross_entropy_cases():
    def loss(logits, target, **options):
        rk.cross_entropy(logits, target, backend=BACKEND, **options).sum().backward()

    def index(n, c, dtype=torch.float32):
        return _leaf(n, c, dtype=dtype), torch.randint(0, c, (n,))

    def mixed(n, c, dtype):
        logits, y_a = index(n, c, dtype)
        return logits, rk.MixedTarget(y_a, y_a.flip(0), torch.full((n,), 0.3, dtype=dtype))

    return {
        "float64, index target, mean": lambda: loss(*index(4, 7, torch.float64), label_smoothing=0.1),
        "float64, index target, weights, sum": lambda: loss(*index(4, 7, torch.float64), reduction="sum",
                                                            weight=torch.rand(7, dtype=torch.float64)),
        "float64, probability target": lambda: loss(_leaf(3, 5, dtype=torch.float64),
                                                    torch.softmax(torch.randn(3, 5, dtype=torch.float64), 1)),
        "float64, mixed target, z-loss": lambda: loss(*mixed(4, 6, torch.float64), z_loss=1e-4),
        "float64, (N, C, d), none": lambda: loss(_leaf(2, 5, 3, dtype=torch.float64), torch.randint(0, 5, (2, 3)),
                                                 reduction="none"),
        "one class, label smoothing": lambda: loss(*index(3, 1), label_smoothing=1.0),
        "one class, mixed target": lambda: loss(*mixed(2, 1, torch.float32), label_smoothing=0.5),
        "one row, bf16": lambda: loss(*index(1, 9, torch.bfloat16), label_smoothing=0.1),
        "float16, gradient written in backward": lambda: loss(*index(3, 8, torch.float16)),
        "split kernel (long rows), float64": lambda: loss(*index(1, 70000, torch.float64), label_smoothing=0.1),
        "float64, ignored rows, lse returned": lambda: rk.cross_entropy(
            _leaf(3, 4, dtype=torch.float64), torch.tensor([0, -100, 3]), return_lse=True, backend=BACKEND)[0]
        .backward(),
        "one class, gradient over the logits (inplace_backward)": lambda: loss(
            _leaf(2, 1) * 1.0, torch.zeros(2, dtype=torch.int64), inplace_backward=True, label_smoothing=0.2),
    }


def _mixing_cases():
    cases = {}
    for c, h, w in ((1, 6, 5), (3, 1, 7), (3, 6, 1), (1, 1, 1)):
        for dtype in (torch.uint8, torch.float32):
            name = f"{c} x {h} x {w} {str(dtype).split('.')[-1]}"
            cases[f"cutmix_or_mixup {name}"] = (lambda c=c, h=h, w=w, dtype=dtype: rk.cutmix_or_mixup(
                _images(4, c, h, w, dtype), torch.arange(4), mean=(0.5,) * c, std=(0.25,) * c,
                out_dtype=torch.bfloat16, backend=BACKEND))
            cases[f"random_erasing {name}"] = (lambda c=c, h=h, w=w, dtype=dtype: rk.random_erasing(
                _images(2, c, h, w, dtype), p=1.0, backend=BACKEND))
    cases["cutmix channels_last, grey"] = lambda: rk.cutmix(
        _images(2, 1, 4, 4).contiguous(memory_format=torch.channels_last), torch.arange(2), backend=BACKEND)
    cases["mixup float64, one sample"] = lambda: rk.mixup(_images(1, 3, 2, 2, torch.float64), torch.arange(1),
                                                          backend=BACKEND)
    cases["random_erasing with noise, grey, one pixel high"] = lambda: rk.random_erasing(
        _images(2, 1, 1, 5, torch.float32), p=1.0, value="random", backend=BACKEND)
    cases["composite_batch, every mode, grey, normalised"] = lambda: rk.composite_batch(
        _images(4, 1, 3, 3), torch.tensor([[0, 0, 2, 2]] * 4, dtype=torch.int32), torch.full((4,), 0.5),
        torch.tensor([3, 2, 1, 0], dtype=torch.int32), torch.arange(4, dtype=torch.int32), fill=7.0, mean=0.5,
        std=0.25, out_dtype=torch.float32, backend=BACKEND)
    return cases


def _augment_cases():
    def crop(size, c=3, side=6, antialias=True, n=2):
        images = _images(n, c, side, side)
        boxes = torch.tensor([[0, 0, side, side]] * n, dtype=torch.int32)
        rk.resized_crop(images, boxes, size, flip=torch.ones(n, dtype=torch.bool), antialias=antialias,
                        mean=(0.5,) * c, std=(0.25,) * c, out_dtype=torch.bfloat16, backend=BACKEND)

    return {
        "resized_crop to 1 x 1": lambda: crop((1, 1)),
        "resized_crop to 5 x 1, no antialias": lambda: crop((5, 1), antialias=False),
        "resized_crop to 1 x 5, grey": lambda: crop((1, 5), c=1),
        "resized_crop from 1 x 1 images": lambda: crop((3, 3), side=1, antialias=False),
        "random_resized_crop, one sample": lambda: rk.random_resized_crop(_images(1, 3, 5, 7), 4, backend=BACKEND),
        "batch_augment to 1 x 1, grey": lambda: rk.augment.batch_augment(
            [_images(1, 1, 5, 4)[0], _images(1, 1, 3, 6)[0]], torch.arange(2), (1, 1), erase_p=1.0,
            backend=BACKEND),
        "batch_augment, one sample": lambda: rk.augment.batch_augment(_images(1, 3, 6, 6), torch.arange(1), 4,
                                                                      backend=BACKEND),
        "batch_augment, rolled partners, bilinear, width 1": lambda: rk.augment.batch_augment(
            _images(3, 3, 6, 6), torch.arange(3), (4, 1), antialias=False, partner="roll", erase_p=0.5,
            backend=BACKEND),
    }


def _ema_cases():
    def update(dtypes):
        ema = [torch.zeros(1, dtype=e) for e, _ in dtypes]
        model = [torch.ones(1, dtype=p) for _, p in dtypes]
        rk.ema_update_(ema, model, 0.9, backend=BACKEND)

    return {
        "ema_update_, one element of each pairing": lambda: update(
            [(torch.float32, torch.bfloat16), (torch.float64, torch.float64), (torch.float16, torch.float32)]),
        "ModelEMA, a one-weight model": lambda: rk.ModelEMA(torch.nn.Linear(1, 1), decay=0.9,
                                                            backend=BACKEND).update(torch.nn.Linear(1, 1)),
    }


def cases():
    return {f"{family}: {name}": fn for family, group in (
        ("dropout", _dropout_cases()), ("cross_entropy", _cross_entropy_cases()), ("mixing", _mixing_cases()),
        ("augment", _augment_cases()), ("ema", _ema_cases())) for name, fn in group.items()}


def main():
    failed = 0
    with StandInDriver() as driver:  # sm_90, an H100's or H200's 132 SMs
        for name, fn in cases().items():
            before = len(driver.launches)
            try:
                fn()
            except Exception as error:  # noqa: BLE001 (each case reports whatever stopped it)
                failed += 1
                last = traceback.format_exception_only(type(error), error)[-1].strip()
                print(f"FAILED {name}: {type(error).__name__}: {last[:300]}")
                continue
            print(f"ok     {name}: {len(driver.launches) - before} launches")
    print(f"triton {triton.__version__}: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
