"""Benchmark of the multi-tensor EMA update against the torch and timm ways of doing it.

Cases: parameter lists shaped like ResNet-50 (161 tensors, 25.6M parameters) and ViT-B/16
(152 tensors, 86.6M), and 1B parameters in 300 tensors; an fp32 model with an fp32 EMA and a
bf16 model with an fp32 EMA. Minimal bytes per parameter: read p, read e, write e (12 for
fp32/fp32, 10 for bf16/fp32).

Providers:
  recipe_kernels/triton, recipe_kernels/cuda
                           one launch with a device decay, by the path ModelEMA.update takes (the
                           public ema_update_ also validates every pair on each call; its host
                           time is reported separately)
  torch                    torch._foreach_lerp_ as timm's ModelEmaV3 does; for a bf16 model with an
                           fp32 EMA (which _foreach_lerp_ refuses) _foreach_mul_ + _foreach_add_
  timm-v2-loop (restated)  timm ModelEmaV2's per-tensor loop: ema.copy_(d * ema + (1 - d) * p)
                           (both timm rules are written out here, so timm need not be installed)
  swa_utils                torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn (same dtypes only)
Also the host time of one update (launch only, no sync) for 1,000 tensors, for ema_update_ and
ModelEMA.update, as rows with pass "host".

Usage: python benchmarks/bench_ema.py [--quick] [--out DIR]
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Recorder, parse_args, require_cuda, rotating, time_rotating  # noqa: E402

DECAY = 0.9998


# ----------------------------------------------------------------------------- parameter lists


def resnet50_shapes():
    """The 161 parameter shapes of torchvision's ResNet-50 (convolutions, BatchNorm affine, fc)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            shapes += [(width, in_channels, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if block == 0:
                shapes += [(4 * width, in_channels, 1, 1), (4 * width,), (4 * width,)]
            in_channels = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def vit_b16_shapes():
    """The 152 parameter shapes of ViT-B/16 (timm's vit_base_patch16_224)."""
    dim, hidden = 768, 3072
    shapes = [(1, 1, dim), (1, 197, dim), (dim, 3, 16, 16), (dim,)]
    for _ in range(12):
        shapes += [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,), (dim,), (dim,),
                   (hidden, dim), (hidden,), (dim, hidden), (dim,)]
    return shapes + [(dim,), (dim,), (1000, dim), (1000,)]


def billion_shapes():
    """1B parameters in 300 tensors of uneven, odd sizes."""
    sizes = [3_333_333 + (i % 7) * 11 - 33 for i in range(300)]
    sizes[-1] += 1_000_000_000 - sum(sizes)
    return [(n,) for n in sizes]


def many_small_shapes(count=1000):
    """1,000 tensors (sizes 1 to 4,099): the host-overhead case."""
    return [((i * 37) % 4099 + 1,) for i in range(count)]


CASES = {"resnet50": resnet50_shapes, "vit_b16": vit_b16_shapes, "1b_300": billion_shapes}
DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]  # (model, EMA)


def make_set(shapes, model_dtype, ema_dtype):
    params = [torch.randn(shape, device="cuda", dtype=model_dtype) for shape in shapes]
    ema = [p.to(ema_dtype) for p in params]
    return ema, params


# ----------------------------------------------------------------------------- providers


def ours(backend):
    """The path ModelEMA.update takes: pairs checked once, the table found by its addresses."""
    from recipe_kernels import ema as ema_module
    decays = torch.full((1,), DECAY, device="cuda", dtype=torch.float64)  # a device scalar, as the kernels read it
    slots = {}

    def update(ema, params):
        ema_module.ema_update_op(ema, params, decays, slots.setdefault(len(ema), [ema_module.AVERAGE_SLOT] * len(ema)),
                                 backend)
    return update


def torch_foreach(ema, params):
    if ema[0].dtype == params[0].dtype:
        torch._foreach_lerp_(ema, params, 1.0 - DECAY)  # timm ModelEmaV3
    else:  # _foreach_lerp_ needs one dtype; the mixed path falls back to its per-tensor loop inside
        torch._foreach_mul_(ema, DECAY)
        torch._foreach_add_(ema, params, alpha=1.0 - DECAY)


def timm_v2_loop(ema, params):
    for e, p in zip(ema, params):
        e.copy_(DECAY * e + (1.0 - DECAY) * p)


class _ParameterHolder(torch.nn.Module):
    def __init__(self, tensors):
        super().__init__()
        self.tensors = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for t in tensors])


def swa_utils_sets(input_sets):
    """One (AveragedModel, model) per input set; None when the dtypes differ (AveragedModel copies the model's)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    if input_sets[0][0][0].dtype != input_sets[0][1][0].dtype:
        return None
    sets = []
    for ema, params in input_sets:
        model = _ParameterHolder(params)
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY), use_buffers=False)
        averaged.update_parameters(model)  # the first call copies; later calls average
        sets.append((averaged, model))
    return sets


def swa_update(averaged, model):
    averaged.update_parameters(model)


# ----------------------------------------------------------------------------- runs


def bench_case(recorder, case, shapes, model_dtype, ema_dtype, providers):
    numel = sum(torch.Size(s).numel() for s in shapes)
    element_bytes = 2 * ema_dtype.itemsize + model_dtype.itemsize
    minimal_bytes = numel * element_bytes
    input_sets = rotating(lambda: make_set(shapes, model_dtype, ema_dtype), minimal_bytes)
    dtype_name = f"{str(model_dtype).replace('torch.', '')}->{str(ema_dtype).replace('torch.', '')}"
    for name, fn in providers.items():
        ms = time_rotating(fn, input_sets)
        recorder.add(case, dtype_name, "update", name, ms, minimal_bytes)
    swa_sets = swa_utils_sets(input_sets)
    if swa_sets is None:
        print(f"{case} {dtype_name}: skipping swa_utils (AveragedModel keeps the model's dtype)")
    else:
        recorder.add(case, dtype_name, "update", "swa_utils", time_rotating(swa_update, swa_sets), minimal_bytes)
        del swa_sets
    del input_sets
    torch.cuda.empty_cache()


def host_time_ms(fn, calls=200):
    """Host milliseconds per call of fn() (launch cost; the GPU runs behind)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e3 * elapsed / calls


def bench_host_time(recorder, backends):
    import recipe_kernels as rk
    shapes = many_small_shapes()
    ema, params = make_set(shapes, torch.float32, torch.float32)
    numel = sum(torch.Size(s).numel() for s in shapes)
    decay = torch.tensor(DECAY, device="cuda")
    model = _ParameterHolder(params).cuda()
    for backend in backends:
        ms = host_time_ms(lambda: rk.ema_update_(ema, params, decay, backend=backend))
        recorder.add("1000_tensors", "float32", "host", f"recipe_kernels/{backend}+ema_update_", ms, 12 * numel)
        model_ema = rk.ModelEMA(model, decay=DECAY, warmup=True, backend=backend)
        ms = host_time_ms(lambda: model_ema.update(model))
        recorder.add("1000_tensors", "float32", "host", f"recipe_kernels/{backend}+ModelEMA.update", ms, 12 * numel)
    recorder.add("1000_tensors", "float32", "host", "torch", host_time_ms(lambda: torch_foreach(ema, params)),
                 12 * numel)


def main():
    args = parse_args(__doc__, "only the ResNet-50 case (both dtypes, all providers)")
    require_cuda()
    from recipe_kernels import _backend

    recorder = Recorder("ema")
    backends = ["triton"] + (["cuda"] if _backend._C is not None else [])
    if _backend._C is None:
        print(f"skipping recipe_kernels/cuda: {_backend.CUDA_EXTENSION_ERROR}")
    providers = {f"recipe_kernels/{backend}": ours(backend) for backend in backends}
    providers["torch"] = torch_foreach
    providers["timm-v2-loop (restated)"] = timm_v2_loop
    cases = {"resnet50": CASES["resnet50"]} if args.quick else CASES
    for case, shapes in cases.items():
        for model_dtype, ema_dtype in DTYPES:
            bench_case(recorder, case, shapes(), model_dtype, ema_dtype, providers)
    bench_host_time(recorder, backends)
    recorder.finish(args.out)


if __name__ == "__main__":
    main()
