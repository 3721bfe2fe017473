"""Host time per eager call: what each op costs Python, the dispatcher and the launch.

    python benchmarks/bench_host.py [--repeat N] [--quick] [--only WORD ...] [--device auto|cpu|cuda] [--out DIR]

On the CPU (no GPU; --device cpu, or auto without one) every call runs the triton backend under
the stand-in driver (benchmarks/standin_driver.py): the whole host path runs (checks, seed,
sampling, the op layer, Triton's launcher path) and each kernel is compiled for sm_90 once, then
its launch is a recorded no-op. On a GPU (--device cuda, or auto with one) the same calls run on
CUDA tensors through the real launchers, on the triton backend and, when _C is built, the cuda
backend: the time is still the host's (the GPU finishes these small kernels long before the host
makes the next call).

Times are the low decile of many calls, in microseconds and in u, where u is one torch.add of
two 1-element tensors on the same device, timed alternately with each call (so the table reads
about the same on a slower or busier machine; two runs on a quiet machine still differ by up to a
third; u on a GPU is a CUDA torch.add, several times the CPU's). Launches per call come from the
stand-in's records on the CPU and from the profiler's device events (kernels, memsets, copies) on
a GPU; torch ops per call from torch's profiler (aten ops that reached the dispatcher, the
launches' own tensors included). Rows go to benchmarks/results/host.csv (and DIR/host.csv).

Beside the goals' calls it times floors (what any eager call of these ops costs at least) and torch's
own eager ops for the same math with their autograd (torch_eager: on the CPU at 8 elements, where
torch's arithmetic costs next to nothing and its host path is what is left).

What the CPU rows do not count: the C launcher of a real driver (a few microseconds per launch
with Triton's CUDA launcher), CUDA's own launch cost, and anything the GPU does.
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

COLUMNS = ["call", "device", "backend", "us", "u", "goal_u", "launches", "torch_ops", "torch", "triton"]
STAND_IN = "cpu, stand-in sm_90"  # the device column of CPU rows
QUICK_REPEAT = 100  # calls per row with --quick (scripts/gpu_check.sh's budget)
EMA_PAIRS = 1000  # parameters of the EMA rows' model
NAME_WIDTH = 62  # the printed table's first column


UNIT_CALLS = 20  # torch.adds per u sample: one is too short for the clock


def _elapsed(fn, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def low_us_and_unit(fn, repeat, device="cpu"):
    """fn's time and u's, in microseconds, sampled alternately, each its LOW_QUANTILE over the
    samples: on a busy machine both see the same load, and the low end is the least disturbed."""
    a, b = torch.ones(1, device=device), torch.ones(1, device=device)
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


def training_step(forward, leaves, gradient=None):
    """A call that clears the leaves' gradients, as optimizer.zero_grad() leaves them, then runs
    forward().backward(gradient): autograd then hands each leaf its gradient rather than adding it to
    the last one (arithmetic that a GPU does off the host's clock, and the CPU on it)."""
    def step():
        for leaf in leaves:
            leaf.grad = None
        forward().backward(gradient)
    return step


def calls(device="cpu", backend="triton"):
    """(name, goal in u, fn): the calls of the op-layer issue's table, on `device` through `backend`."""
    x = torch.randn(64, 64, dtype=torch.bfloat16, device=device)

    leaf = torch.randn(64, 64, dtype=torch.bfloat16, device=device, requires_grad=True)
    residual = torch.randn(64, 64, dtype=torch.bfloat16, device=device, requires_grad=True)
    bias = torch.randn(64, dtype=torch.bfloat16, device=device, requires_grad=True)
    grad = torch.ones(64, 64, dtype=torch.bfloat16, device=device)

    dropout_add_fwd_bwd = training_step(lambda: rk.dropout_add(leaf, residual, 0.1, bias=bias, backend=backend),
                                        (leaf, residual, bias), grad)

    logits = torch.randn(64, 1000, device=device, requires_grad=True)
    target = torch.randint(0, 1000, (64,), device=device)

    cross_entropy_fwd_bwd = training_step(lambda: rk.cross_entropy(logits, target, label_smoothing=0.1,
                                                                   backend=backend), (logits,))

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (64,), device=device)

    def cutmix_or_mixup():
        rk.cutmix_or_mixup(images, labels, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), out_dtype=torch.bfloat16,
                           backend=backend)

    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(16, device=device)) for _ in range(EMA_PAIRS)])
    averaged = rk.ModelEMA(model, decay=0.999, backend=backend)
    ema_tensors = [p.detach().clone() for p in model]
    model_tensors = [p.detach() for p in model]

    return [
        ("dropout fwd, (64, 64) bf16", 8, lambda: rk.dropout(x, 0.1, backend=backend)),
        ("dropout_add + bias, fwd+bwd", 30, dropout_add_fwd_bwd),
        ("cross_entropy fwd+bwd, (64, 1000), smoothing 0.1", 30, cross_entropy_fwd_bwd),
        ("cutmix_or_mixup per sample, uint8 -> normalised bf16", 25, cutmix_or_mixup),
        (f"ModelEMA.update, {EMA_PAIRS} parameters", 15, lambda: averaged.update(model)),
        (f"ema_update_, {EMA_PAIRS} pairs, lists reused", 40,
         lambda: rk.ema_update_(ema_tensors, model_tensors, 0.999, backend=backend)),
    ]


def _cached_launches(call):
    """dropout's launches in call(), each as (run, grid of three, the launcher's arguments before the
    kernel's: stream 0, function, metadata, no hooks; the kernel's arguments; its constexprs), from
    the compiled kernels rk's eager path keeps (call runs twice: the second takes the cached path)."""
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


def floors(device="cpu"):
    """(name, fn): what any eager call of these ops costs at least, for the goals' scale.
    - The three torch calls every eager dropout makes: its seed, its output, the launch of its
      compiled kernel with the arguments rk.dropout passed.
    - torch's own autograd over a two-leaf add.
    - An autograd.Function that does nothing, over dropout_add's three leaves.
    - dropout_add with nothing but its torch work: a Function (through the op layer's apply) whose
      forward draws the seed, makes the output and launches the compiled forward kernel, and whose
      backward makes grad_x and the partial sums, launches the compiled backward kernel and reduces the
      partial sums to the bias's gradient. No checks, no backend, no launch key: the goals' mechanism.
    - The EMA's check, on every call, that the tensors of EMA_PAIRS pairs are the ones its table was built
      for (ema._ListsMemo.matches: type, device, dtype, shape and strides in C++, then the addresses)."""
    from recipe_kernels import _ops
    x = torch.randn(64, 64, dtype=torch.bfloat16, device=device)
    [(run, grid, launcher, args, constexprs)] = _cached_launches(lambda: rk.dropout(x, 0.1, backend="triton"))

    def dropout_torch_calls():
        torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, device=device)
        torch.empty_like(x)
        run(*grid, *launcher, *args, *constexprs)

    leaves = [torch.randn(64, 64, dtype=torch.bfloat16, device=device, requires_grad=True) for _ in range(2)]
    bias = torch.randn(64, dtype=torch.bfloat16, device=device, requires_grad=True)
    grad = torch.ones(64, 64, dtype=torch.bfloat16, device=device)

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
            seed = torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, device=device)
            out = torch.empty_like(x)
            run_forward(*grid_forward, *launcher_forward, x, residual, bias, seed, out, *forward_args,
                        *forward_constexprs)
            ctx.save_for_backward(seed)
            return out

        @staticmethod
        def backward(ctx, g):
            (seed,) = ctx.saved_tensors
            grad_x = torch.empty_like(g)
            partial_sums = torch.empty(partial.shape, dtype=partial.dtype, device=device)
            run_backward(*grid_backward, *launcher_backward, g, seed, grad_x, partial_sums, *backward_args,
                         *backward_constexprs)
            return grad_x, g, partial_sums.sum(0).to(bias.dtype)

    from recipe_kernels import ema
    pair_tensors = [torch.randn(16, device=device) for _ in range(2 * EMA_PAIRS)]
    slots = [ema.AVERAGE_SLOT] * EMA_PAIRS
    memo = ema._ListsMemo(pair_tensors, slots)

    return [
        ("floor: dropout's seed + output + compiled launch", dropout_torch_calls),
        ("floor: torch (a + b).backward(g), (64, 64) bf16",
         training_step(lambda: leaves[0] + leaves[1], leaves, grad)),
        ("floor: no-op autograd.Function, 3 leaves, fwd+bwd",
         training_step(lambda: Nothing.apply(*leaves, bias), (*leaves, bias), grad)),
        ("floor: dropout_add's torch work and launches, fwd+bwd",
         training_step(lambda: _ops.apply_function(DropoutAddTorchWork, *leaves, bias), (*leaves, bias), grad)),
        (f"floor: the EMA's check that {EMA_PAIRS} pairs are unchanged", lambda: memo.matches(pair_tensors, slots)),
    ]


# torch eager's calls run at these sizes: on the CPU few enough elements that its arithmetic costs next
# to nothing (what is left is its host path); on a GPU the sizes of our calls.
TORCH_EAGER_SIZES = {"cpu": dict(rows=1, columns=8, classes=8), "cuda": dict(rows=64, columns=64, classes=1000)}


def torch_eager(device="cpu"):
    """(name, fn): torch's own eager ops for the math of the goals' calls, with their autograd (the
    goals' scale: what a user's unfused code costs the host)."""
    sizes = TORCH_EAGER_SIZES[device]
    rows, columns = sizes["rows"], sizes["columns"]
    x = torch.randn(rows, columns, dtype=torch.bfloat16, device=device)
    leaf, residual = (torch.randn(rows, columns, dtype=torch.bfloat16, device=device, requires_grad=True)
                      for _ in range(2))
    bias = torch.randn(columns, dtype=torch.bfloat16, device=device, requires_grad=True)
    grad = torch.ones(rows, columns, dtype=torch.bfloat16, device=device)
    logits = torch.randn(rows, sizes["classes"], device=device, requires_grad=True)
    target = torch.randint(0, sizes["classes"], (rows,), device=device)
    shape = f"({rows}, {columns})"
    return [
        (f"torch eager: F.dropout fwd, {shape} bf16", lambda: torch.nn.functional.dropout(x, 0.1)),
        (f"torch eager: residual + F.dropout(x + b) fwd+bwd, {shape} bf16",
         training_step(lambda: residual + torch.nn.functional.dropout(leaf + bias, 0.1), (leaf, residual, bias),
                       grad)),
        (f"torch eager: F.cross_entropy fwd+bwd, ({rows}, {sizes['classes']}), smoothing 0.1",
         training_step(lambda: torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1), (logits,))),
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


def device_launches_per_call(fn):
    """Kernels, memsets and copies one call of fn puts on the GPU, as the profiler sees them; -1 where
    the profiler cannot see the device (the time is still measured)."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    try:
        with torch.profiler.profile(activities=activities) as profile:
            fn()
            torch.cuda.synchronize()
        return sum(1 for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    except RuntimeError as error:
        print(f"launches not counted: {error}")
        return -1


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=300, help="timed calls per op")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEAT} calls per op (run_all.py --quick)")
    parser.add_argument("--only", nargs="*", help="only the calls whose name contains one of these words")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cpu: the stand-in driver; cuda: the real launchers (auto: cuda when a GPU is visible)")
    parser.add_argument("--out", default=None, help="also append the rows to DIR/host.csv")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = QUICK_REPEAT
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def measure(args, device_name, device, backend, count_launches):
    """The rows of every selected call (and, on the triton backend, the floors and torch eager's calls), timed."""
    import triton
    rows = []
    named_calls = [(name, goal, fn, backend) for name, goal, fn in calls(device, backend)]
    if backend == "triton":
        named_calls += [(name, None, fn, backend) for name, fn in floors(device)]
        named_calls += [(name, None, fn, "torch") for name, fn in torch_eager(device)]
    for name, goal, fn, row_backend in named_calls:
        if args.only and not any(word in name for word in args.only):
            continue
        fn()  # compile
        launches = count_launches(fn)
        us, unit = low_us_and_unit(fn, args.repeat, device)
        ops = torch_ops_per_call(fn)
        rows.append(dict(call=name, device=device_name, backend=row_backend, us=us, u=us / unit, goal_u=goal,
                         launches=launches, torch_ops=ops, torch=torch.__version__, triton=triton.__version__))
        print(f"{name:<{NAME_WIDTH}} {row_backend:>7} {us:8.1f} {us / unit:6.1f} {goal or '-':>6} {launches:9d} "
              f"{ops:10d}")
    return rows


def main(argv=None):
    args = parse_arguments(argv)
    print(f"u: one torch.add of two 1-element tensors on {args.device}, timed alternately with each call")
    print(f"{'call':<{NAME_WIDTH}} {'backend':>7} {'us':>8} {'u':>6} {'goal':>6} {'launches':>9} {'torch ops':>10}")
    if args.device == "cpu":
        with StandInDriver() as driver:
            def recorded_launches(fn):
                before = len(driver.records)
                fn()
                return len(driver.records) - before

            append_rows("host.csv", COLUMNS, measure(args, STAND_IN, "cpu", "triton", recorded_launches), args.out)
        return
    from recipe_kernels import _backend
    for backend in ["triton"] + (["cuda"] if _backend._C is not None else []):
        # Written per backend: run_all.py --quick may stop the script.
        rows = measure(args, torch.cuda.get_device_name(), "cuda", backend, device_launches_per_call)
        append_rows("host.csv", COLUMNS, rows, args.out)


if __name__ == "__main__":
    main()
