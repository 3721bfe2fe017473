"""Dropout family benchmark: dropout, dropout_add (bias + residual), drop_path_add.

Minimal bytes per element (s = element size): dropout fwd 2s, bwd 2s; dropout_add fwd
3s, bwd 2s; drop_path_add fwd (3 - p)s and bwd (2 - p)s, since a dropped sample reads
no x (forward) and no gradient (backward).

Why the Philox cost stays under the memory time: one Philox4x32-7 call serves four
elements, and the kernels use all four words. scripts/triton_codegen_check.py compiles the
Triton kernels for sm_90 and counts, per element: 3.25 mul.hi and about 25 PTX instructions
for bf16 dropout (39 for dropout_add with bias; 16-byte loads and stores throughout). An
H100 SXM issues about 132 SMs x 4 schedulers x 32 lanes x 1.75 GHz = 30 T thread-instructions/s;
bf16 dropout at 3 TB/s (4 bytes per element) streams 750 G elements/s and so needs about
18 T/s (60% of the issue rate), dropout_add about 19 T/s (500 G elements/s x 39): memory-bound,
with a margin that only a GPU run can confirm (PTX counts are not SASS counts).

Usage: python benchmarks/bench_dropout.py [--quick] [--out DIR]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Recorder, optional_peer, parse_args, require_cuda, rotating, time_rotating  # noqa: E402

CASES = [(8192, 8192), (4096, 16384)]
DTYPES = [torch.bfloat16, torch.float32]
P = 0.1


def timm_style_drop_path(x, p, training=True):
    """timm's drop_path, restated (used when timm is not installed): per-sample bernoulli, divide, multiply."""
    keep = 1 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep)
    return x * random_tensor.div_(keep)


def providers(op, timm):
    """name -> function(x, residual, bias) for each provider of `op`."""
    import recipe_kernels as rk
    calls = {
        "dropout": (lambda x, r, b, be: rk.dropout(x, P, backend=be), lambda x, r, b: F.dropout(x, P)),
        "dropout_add": (lambda x, r, b, be: rk.dropout_add(x, r, P, bias=b, backend=be),
                        lambda x, r, b: r + F.dropout(x + b, P)),
        "drop_path_add": (lambda x, r, b, be: rk.drop_path_add(x, r, P, backend=be),
                          lambda x, r, b: r + timm_style_drop_path(x, P)),
    }
    ours, eager = calls[op]
    result = {f"recipe_kernels/{be}": (lambda x, r, b, be=be: ours(x, r, b, be)) for be in ("triton", "cuda")}
    result.update({"torch": eager, "torch.compile": torch.compile(eager)})
    if op == "drop_path_add" and timm is not None:
        result["timm"] = lambda x, r, b: r + timm.layers.drop_path(x, P, True)
    return result


def gradients(out, x, r, b, grad):
    """All input gradients, without accumulating into .grad (that would add a pass)."""
    return torch.autograd.grad(out, (x, r, b), grad, retain_graph=True, allow_unused=True)


def minimal_bytes(op, numel, element_size, pass_name):
    per_element = {"dropout": (2, 2), "dropout_add": (3, 2), "drop_path_add": (3 - P, 2 - P)}[op]
    forward, backward = per_element
    return numel * element_size * {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[pass_name]


def run(quick, out_dir):
    require_cuda()
    from recipe_kernels import _backend
    timm = optional_peer("timm")
    cases = CASES[:1] if quick else CASES
    for op in ("dropout", "dropout_add", "drop_path_add"):
        recorder = Recorder(op)
        for rows, cols in cases:
            for dtype in DTYPES:
                def make_inputs():
                    x = torch.randn(rows, cols, device="cuda", dtype=dtype, requires_grad=True)
                    residual = torch.randn(rows, cols, device="cuda", dtype=dtype, requires_grad=True)
                    bias = torch.randn(cols, device="cuda", dtype=dtype, requires_grad=True)
                    return x, residual, bias, torch.randn(rows, cols, device="cuda", dtype=dtype)

                sets = rotating(make_inputs, 4 * rows * cols * dtype.itemsize)
                case = f"{rows}x{cols}"
                for name, fn in providers(op, timm).items():
                    if name == "recipe_kernels/cuda" and _backend._C is None:
                        print(f"skipping {name}: {_backend.CUDA_EXTENSION_ERROR}")
                        continue
                    with torch.no_grad():
                        ms = time_rotating(lambda x, r, b, g: fn(x, r, b), sets)
                    recorder.add(case, dtype, "fwd", name, ms, minimal_bytes(op, rows * cols, dtype.itemsize, "fwd"))
                    outputs = [(fn(*inputs[:3]),) + inputs for inputs in sets]
                    ms = time_rotating(gradients, outputs)
                    recorder.add(case, dtype, "bwd", name, ms, minimal_bytes(op, rows * cols, dtype.itemsize, "bwd"))
                    del outputs
                    ms = time_rotating(lambda x, r, b, g: gradients(fn(x, r, b), x, r, b, g), sets)
                    recorder.add(case, dtype, "fwd+bwd", name, ms,
                                 minimal_bytes(op, rows * cols, dtype.itemsize, "fwd+bwd"))
                del sets
        recorder.finish(out_dir)


if __name__ == "__main__":
    args = parse_args(__doc__, "one shape per op, for scripts/gpu_check.sh")
    run(args.quick, args.out)
