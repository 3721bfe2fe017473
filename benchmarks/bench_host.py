"""Host time per eager call, on the CPU, with no GPU: what each op costs Python and the dispatcher.

    python benchmarks/bench_host.py [--repeat N] [--only WORD ...] [--out DIR]

Every call runs the triton backend under the stand-in driver (benchmarks/standin_driver.py):
the whole host path runs (checks, seed, sampling, the op layer, Triton's launcher path) and
each kernel is compiled for sm_90 once, then its launch is a recorded no-op. Times are the low
decile of many calls, in microseconds and in u, where u is one torch.add of two 1-element CPU
tensors timed alternately with each call (so the table reads about the same on a slower or busier
machine; two runs on a quiet machine still differ by up to a third). Launches
per call come from the stand-in's records, torch ops per call from torch's profiler (aten ops
that reached the dispatcher, the launches' own tensors included).

What it does not count: the C launcher of a real driver (a few microseconds per launch with
Triton's CUDA launcher), CUDA's own launch cost, and anything the GPU does.
"""
import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# This checkout's package, not whichever one is installed.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import recipe_kernels as rk  # noqa: E402
from common import append_rows  # noqa: E402
from standin_driver import StandInDriver  # noqa: E402

COLUMNS = ["call", "us", "u", "goal_u", "launches", "torch_ops", "torch", "triton"]


UNIT_CALLS = 20  # torch.adds per u sample: one is too short for the clock


def _elapsed(fn, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def low_us_and_unit(fn, repeat):
    """fn's time and u's, in microseconds, sampled alternately, each its LOW_QUANTILE over the
    samples: on a busy machine both see the same load, and the low end is the least disturbed."""
    a, b = torch.ones(1), torch.ones(1)
    unit = lambda: torch.add(a, b)  # noqa: E731
    fn()
    times, units = [], []
    for _ in range(repeat):
        times.append(_elapsed(fn))
        units.append(_elapsed(unit, UNIT_CALLS))
    return 1e6 * _low(times), 1e6 * _low(units)


LOW_QUANTILE = 0.1


def _low(samples):
    return sorted(samples)[int(LOW_QUANTILE * len(samples))]


def calls():
    """(name, goal in u, fn): the calls of the op-layer issue's table."""
    x = torch.randn(64, 64, dtype=torch.bfloat16)

    leaf = torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True)
    residual = torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(64, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.ones(64, 64, dtype=torch.bfloat16)

    def dropout_add_fwd_bwd():
        rk.dropout_add(leaf, residual, 0.1, bias=bias, backend="triton").backward(grad)

    logits = torch.randn(64, 1000, requires_grad=True)
    target = torch.randint(0, 1000, (64,))

    def cross_entropy_fwd_bwd():
        rk.cross_entropy(logits, target, label_smoothing=0.1, backend="triton").backward()

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))

    def cutmix_or_mixup():
        rk.cutmix_or_mixup(images, labels, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), out_dtype=torch.bfloat16,
                           backend="triton")

    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(16)) for _ in range(1000)])
    averaged = rk.ModelEMA(model, decay=0.999, backend="triton")
    ema_tensors = [p.detach().clone() for p in model]
    model_tensors = [p.detach() for p in model]

    return [
        ("dropout fwd, (64, 64) bf16", 8, lambda: rk.dropout(x, 0.1, backend="triton")),
        ("dropout_add + bias, fwd+bwd", 30, dropout_add_fwd_bwd),
        ("cross_entropy fwd+bwd, (64, 1000), smoothing 0.1", 30, cross_entropy_fwd_bwd),
        ("cutmix_or_mixup per sample, uint8 -> normalised bf16", 25, cutmix_or_mixup),
        ("ModelEMA.update, 1000 parameters", 15, lambda: averaged.update(model)),
        ("ema_update_, 1000 pairs, lists reused", 40,
         lambda: rk.ema_update_(ema_tensors, model_tensors, 0.999, backend="triton")),
    ]


def _cached_launches(call):
    """The launches of call() as (run, grid of three, the call's argument list up to the kernel's
    arguments, then the kernel's arguments and constexprs), each through the compiled kernel
    rk's eager path keeps (call runs twice: the second takes the cached path)."""
    from recipe_kernels import _ops
    dropout_module = sys.modules["recipe_kernels.dropout"]  # the package's `dropout` is the function
    launches = []
    real_launch = dropout_module.launch
    dropout_module.launch = lambda kernel, grid, *args, **kwargs: launches.append((kernel, grid, args, kwargs)) or \
        real_launch(kernel, grid, *args, **kwargs)
    try:
        call()
        launches.clear()
        call()
    finally:
        dropout_module.launch = real_launch
    cached = []
    for kernel, grid, args, kwargs in launches:
        num_warps = kwargs.pop("num_warps")
        run, function, packed_metadata, constexprs, _ = _ops._COMPILED[_ops._launch_key(kernel, num_warps, kwargs,
                                                                                         args)[1]]
        cached.append((run, (*grid, 1, 1)[:3], (0, function, packed_metadata, None, None, None), args, constexprs))
    return cached


def floors():
    """(name, fn): what any eager call of these ops costs at least, for the goals' scale.
    - The three torch calls every eager dropout makes: its seed, its output, the launch of its
      compiled kernel with the arguments rk.dropout passed.
    - torch's own autograd over a two-leaf add.
    - An autograd.Function that does nothing, over dropout_add's three leaves.
    - dropout_add with nothing but its torch work: a Function (through the op layer's apply) whose
      forward draws the seed, makes the output and launches the compiled forward kernel, and whose
      backward makes grad_x and the partial sums, launches the compiled backward kernel and reduces the
      partial sums to the bias's gradient. No checks, no backend, no launch key: the goals' mechanism."""
    from recipe_kernels import _ops
    x = torch.randn(64, 64, dtype=torch.bfloat16)
    [(run, grid, launcher, args, constexprs)] = _cached_launches(lambda: rk.dropout(x, 0.1, backend="triton"))

    def dropout_torch_calls():
        torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64)
        torch.empty_like(x)
        run(*grid, *launcher, *args, *constexprs)

    leaves = [torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
    bias = torch.randn(64, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.ones(64, 64, dtype=torch.bfloat16)

    class Nothing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, c):
            return torch.empty_like(a)

        @staticmethod
        def backward(ctx, g):
            return g, g, g[0]

    forward, backward = _cached_launches(
        lambda: rk.dropout_add(leaves[0], leaves[1], 0.1, bias=bias, backend="triton").backward(grad))
    (run_forward, grid_forward, launcher_forward, (_, _, _, _, _, *forward_args), forward_constexprs) = forward
    (run_backward, grid_backward, launcher_backward, (_, _, _, partial, *backward_args), backward_constexprs) = backward

    class DropoutAddTorchWork(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, residual, bias):
            seed = torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64)
            out = torch.empty_like(x)
            run_forward(*grid_forward, *launcher_forward, x, residual, bias, seed, out, *forward_args,
                        *forward_constexprs)
            ctx.save_for_backward(seed)
            return out

        @staticmethod
        def backward(ctx, g):
            (seed,) = ctx.saved_tensors
            grad_x = torch.empty_like(g)
            partial_sums = torch.empty(partial.shape, dtype=partial.dtype)
            run_backward(*grid_backward, *launcher_backward, g, seed, grad_x, partial_sums, *backward_args,
                         *backward_constexprs)
            return grad_x, g, partial_sums.sum(0).to(bias.dtype)

    return [
        ("floor: dropout's seed + output + compiled launch", dropout_torch_calls),
        ("floor: torch (a + b).backward(g), (64, 64) bf16", lambda: (leaves[0] + leaves[1]).backward(grad)),
        ("floor: no-op autograd.Function, 3 leaves, fwd+bwd", lambda: Nothing.apply(*leaves, bias).backward(grad)),
        ("floor: dropout_add's torch work and launches, fwd+bwd",
         lambda: _ops.apply_function(DropoutAddTorchWork, *leaves, bias).backward(grad)),
    ]


def torch_ops_per_call(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()

    def outermost_aten(event):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return event.name.startswith("aten::")

    return sum(1 for event in profile.events() if outermost_aten(event))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=300, help="timed calls per op")
    parser.add_argument("--only", nargs="*", help="only the calls whose name contains one of these words")
    parser.add_argument("--out", default=None, help="also append the rows to DIR/host.csv")
    args = parser.parse_args()
    import triton
    rows = []
    with StandInDriver() as driver:
        print("u: one torch.add of two 1-element CPU tensors, timed alternately with each call")
        print(f"{'call':<55} {'us':>8} {'u':>6} {'goal':>6} {'launches':>9} {'torch ops':>10}")
        for name, goal, fn in calls() + [(name, None, fn) for name, fn in floors()]:
            if args.only and not any(word in name for word in args.only):
                continue
            fn()  # compile
            before = len(driver.records)
            fn()
            launches = len(driver.records) - before
            us, unit = low_us_and_unit(fn, args.repeat)
            ops = torch_ops_per_call(fn)
            rows.append(dict(call=name, us=us, u=us / unit, goal_u=goal, launches=launches, torch_ops=ops,
                             torch=torch.__version__, triton=triton.__version__))
            print(f"{name:<55} {us:8.1f} {us / unit:6.1f} {goal or '-':>6} {launches:9d} {ops:10d}")
    append_rows("host.csv", COLUMNS, rows, args.out)


if __name__ == "__main__":
    main()
