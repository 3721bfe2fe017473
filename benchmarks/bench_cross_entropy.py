"""Cross-entropy benchmark: label smoothing 0.1 over index targets and over MixedTarget.

Minimal bytes (s = element size of the logits, N x C logits): forward alone reads the
logits once, N C s; forward + backward reads them once and writes the gradient once,
2 N C s (the targets, 8 or 20 bytes a row, are counted too). recipe_kernels does exactly
that when grad_output is 1 (here: loss.backward() on the mean): its forward writes the
gradient in the same pass and its backward then moves nothing. Rows of up to about
256 Ki classes re-read in a second sweep from L2; see recipe_kernels/cross_entropy.py.

Providers, all on the same inputs in the same process:
  recipe_kernels/{triton,cuda}          cross_entropy(logits, target, label_smoothing=0.1)
  recipe_kernels/triton+inplace         the two ops inplace_backward=True runs (gradient over the logits)
  torch, torch.compile                  F.cross_entropy(label_smoothing=0.1)
  liger                                 LigerCrossEntropyLoss(label_smoothing=0.1), when importable
Cases "<N>x<C>-mixed" compare MixedTarget against timm-style dense targets (one-hot
mix with smoothing, then soft-target CE), eager and compiled.

Peak memory: for each case and provider, the bytes allocated above the inputs during one
forward + backward (torch.cuda.max_memory_allocated), as a fraction of N C s; written to
DIR/cross_entropy_peak_memory.csv and benchmarks/results/cross_entropy_peak_memory.csv
(results.csv has no column for it).

Usage: python benchmarks/bench_cross_entropy.py [--quick] [--out DIR]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Recorder, append_rows, optional_peer, parse_args, require_cuda, rotating, time_rotating  # noqa: E402

CASES = [(8192, 32000), (8192, 131072), (4096, 262144), (65536, 1000), (1024, 21841), (256, 1000)]
QUICK_CASES = [(8192, 32000), (256, 1000)]
MIXED_CASES = [(8192, 32000), (65536, 1000), (1024, 21841)]
DTYPES = [torch.bfloat16, torch.float32]
SMOOTHING = 0.1
MEMORY_CSV = "cross_entropy_peak_memory.csv"


# ----------------------------------------------------------------------------- providers
# Each provider is loss(logits, target) -> scalar; target is an index tensor or a MixedTarget.


def index_providers(liger):
    import recipe_kernels as rk
    from recipe_kernels import _backend

    def eager(logits, target):
        return F.cross_entropy(logits, target, label_smoothing=SMOOTHING)

    result = {"recipe_kernels/triton": lambda x, t: rk.cross_entropy(x, t, label_smoothing=SMOOTHING,
                                                                      backend="triton")}
    if _backend._C is not None:
        result["recipe_kernels/cuda"] = lambda x, t: rk.cross_entropy(x, t, label_smoothing=SMOOTHING, backend="cuda")
    else:
        print(f"skipping recipe_kernels/cuda: {_backend.CUDA_EXTENSION_ERROR}")
    result.update({"torch": eager, "torch.compile": torch.compile(eager)})
    if liger is not None:
        from liger_kernel.transformers import LigerCrossEntropyLoss
        liger_loss = LigerCrossEntropyLoss(label_smoothing=SMOOTHING)
        result["liger"] = lambda x, t: liger_loss(x, t)
    return result


def timm_dense_mixup_loss(logits, target):
    """timm's path: mixup_target (two smoothed one-hots, mixed) then SoftTargetCrossEntropy."""
    num_classes = logits.shape[1]
    off, on = SMOOTHING / num_classes, 1.0 - SMOOTHING + SMOOTHING / num_classes
    lam = target.lam if isinstance(target.lam, float) else target.lam[:, None]

    def smoothed(y):
        return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], on)

    dense = smoothed(target.y_a) * lam + smoothed(target.y_b) * (1.0 - lam)
    return torch.sum(-dense * F.log_softmax(logits, dim=-1), dim=-1).mean()


def mixed_providers():
    import recipe_kernels as rk
    from recipe_kernels import _backend
    result = {"recipe_kernels/triton": lambda x, t: rk.cross_entropy(x, t, label_smoothing=SMOOTHING,
                                                                      backend="triton")}
    if _backend._C is not None:
        result["recipe_kernels/cuda"] = lambda x, t: rk.cross_entropy(x, t, label_smoothing=SMOOTHING, backend="cuda")
    # The Recorder's speedup column is against the provider named "torch": here the dense eager path.
    result.update({"torch": timm_dense_mixup_loss, "torch.compile": torch.compile(timm_dense_mixup_loss)})
    return result


def inplace_ops_step(logits, target):
    """What rk.cross_entropy(..., inplace_backward=True) runs for forward + backward, without the autograd
    graph (in-place writes into a leaf are refused, and a copy to make a non-leaf would add a pass)."""
    from recipe_kernels.cross_entropy import cross_entropy_inplace_op, scale_grad_op
    loss = cross_entropy_inplace_op(logits.detach(), target, None, None, None, -100, "mean", SMOOTHING, "triton")
    scale_grad_op(logits.detach(), torch.ones((), device=logits.device), "triton")
    return loss


# ----------------------------------------------------------------------------- measurement


def make_inputs_factory(rows, num_classes, dtype, mixed):
    import recipe_kernels as rk

    def make_inputs():
        logits = torch.randn(rows, num_classes, device="cuda", dtype=dtype, requires_grad=True)
        y_a = torch.randint(0, num_classes, (rows,), device="cuda")
        if not mixed:
            return logits, y_a
        y_b = torch.randint(0, num_classes, (rows,), device="cuda")
        return logits, rk.MixedTarget(y_a, y_b, torch.rand(rows, device="cuda"))

    return make_inputs


def forward_backward(fn, logits, target):
    loss = fn(logits, target)
    if loss.requires_grad:
        torch.autograd.grad(loss, logits)  # no accumulation into .grad: that would add a pass


def peak_extra_bytes(step, inputs):
    """Bytes allocated above what exists before the step, at the step's peak."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(*inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def minimal_bytes(rows, num_classes, dtype, pass_name, mixed):
    target_bytes = rows * (20 if mixed else 8)
    logits_bytes = rows * num_classes * dtype.itemsize
    return target_bytes + logits_bytes * (1 if pass_name == "fwd" else 2)


def bench_case(recorder, memory_rows, rows, num_classes, dtype, providers, mixed):
    case = f"{rows}x{num_classes}" + ("-mixed" if mixed else "")
    logits_bytes = rows * num_classes * dtype.itemsize
    sets = rotating(make_inputs_factory(rows, num_classes, dtype, mixed), logits_bytes)
    for name, fn in providers.items():
        try:
            if not name.endswith("+inplace"):  # its forward alone is recipe_kernels/triton's
                with torch.no_grad():
                    ms = time_rotating(fn, sets)
                recorder.add(case, dtype, "fwd", name, ms, minimal_bytes(rows, num_classes, dtype, "fwd", mixed))
            step = inplace_ops_step if name.endswith("+inplace") else (
                lambda x, t, fn=fn: forward_backward(fn, x, t))
            ms = time_rotating(step, sets)
            recorder.add(case, dtype, "fwd+bwd", name, ms, minimal_bytes(rows, num_classes, dtype, "fwd+bwd", mixed))
            extra = peak_extra_bytes(step, sets[0])
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # a peer that cannot run this case
            print(f"{case} {dtype} {name}: skipped ({str(exc).splitlines()[0]})")
            torch.cuda.empty_cache()
            continue
        memory_rows.append(dict(case=case, dtype=str(dtype).replace("torch.", ""), provider=name,
                                extra_peak_bytes=extra, logits_bytes=logits_bytes,
                                extra_over_logits=extra / logits_bytes,
                                extra_beyond_gradient_over_logits=(extra - logits_bytes) / logits_bytes))
    del sets
    torch.cuda.empty_cache()


def write_memory_rows(memory_rows, out_dir):
    columns = ["case", "dtype", "provider", "extra_peak_bytes", "logits_bytes", "extra_over_logits",
               "extra_beyond_gradient_over_logits"]
    append_rows(MEMORY_CSV, columns, memory_rows, out_dir)
    for row in memory_rows:
        print(f"{row['case']:>16} {row['dtype']:>8} {row['provider']:>30} extra peak "
              f"{row['extra_peak_bytes'] / 2**20:9.1f} MiB = {row['extra_over_logits']:.3f} x logits")


def run(quick, out_dir):
    require_cuda()
    liger = optional_peer("liger_kernel")
    recorder = Recorder("cross_entropy")
    memory_rows = []
    index = index_providers(liger)
    index["recipe_kernels/triton+inplace"] = inplace_ops_step
    for rows, num_classes in (QUICK_CASES if quick else CASES):
        for dtype in DTYPES:
            bench_case(recorder, memory_rows, rows, num_classes, dtype, index, mixed=False)
    for rows, num_classes in (MIXED_CASES[:1] if quick else MIXED_CASES):
        for dtype in DTYPES:
            bench_case(recorder, memory_rows, rows, num_classes, dtype, mixed_providers(), mixed=True)
    recorder.finish(out_dir)
    write_memory_rows(memory_rows, out_dir)


if __name__ == "__main__":
    args = parse_args(__doc__, "two shapes and one mixed shape, for scripts/gpu_check.sh")
    run(args.quick, args.out)
