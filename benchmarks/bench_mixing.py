"""Benchmark: CutMix, MixUp and CutMix-or-MixUp on a 256 x 3 x 224 x 224 batch against timm, torchvision and torch.

Cases (each in uint8, bf16 and fp32; see benchmarks/common.py for the method):
  cutmix_batch, cutmix_sample, mixup_batch, mixup_sample, cutmixup_sample: one read and
      one write of the batch are the minimal bytes (MixUp's second read is of a partner that
      its own program reads too, so it is not counted).
  cutmix_norm: uint8/bf16/fp32 -> CutMix -> (x - mean) / std as bf16; minimal bytes are one
      read of x and one bf16 write.
  cutmix_inplace: the in-place box swap with a fixed box of half the image; minimal bytes are
      a read and a write of the box of every sample.
Providers (B = triton, and cuda when the extension is built):
  torch                       the package's pure-PyTorch reference (backend="torch"), the speedup
                              baseline; for cutmix_norm, the reference CutMix then separate torch ops
  recipe_kernels/B            the public function: device-side sampling (about 15 small torch
                              kernels) + one launch
  recipe_kernels/B+graph      the same call captured in a CUDA graph (sampling is launch-bound)
  recipe_kernels/B+kernel     composite_batch alone on fixed parameters: the kernel's bandwidth
  timm                        timm.data.Mixup, mode="batch" in the *_batch cases and "elem" in the
                              *_sample cases, float inputs only
  torchvision                 torchvision.transforms.v2.CutMix / MixUp

Usage: python benchmarks/bench_mixing.py [--quick] [--out DIR]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Recorder, optional_peer, parse_args, require_cuda, rotating, time_rotating  # noqa: E402

NUM_CLASSES = 1000
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def make_batch(shape, dtype):
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device="cuda")
    else:
        x = torch.rand(shape, device="cuda").to(dtype)
    return x, torch.randint(0, NUM_CLASSES, (shape[0],), device="cuda")


def graphed(fn, input_sets):
    """One CUDA graph per input set, each replaying fn on its set; warm-up on a side stream first."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for inputs in input_sets:
            for _ in range(2):
                fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for inputs in input_sets:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*inputs)
        graphs.append((graph,))
    return graphs


class Bench:
    """Times the providers of one dtype and records them; a provider that fails is skipped with its reason."""

    def __init__(self, recorder, dtype, batch):
        import recipe_kernels as rk
        from recipe_kernels import _backend
        from recipe_kernels.mixing import MixMode
        self.rk, self.MixMode = rk, MixMode
        self.backends = ["triton"] + (["cuda"] if _backend._C is not None else [])
        self.recorder, self.dtype = recorder, dtype
        self.shape = (batch, 3, 224, 224)
        element_size = torch.empty((), dtype=dtype).element_size()
        self.numel = batch * 3 * 224 * 224
        self.batch_bytes = self.numel * element_size
        self.sets = rotating(lambda: make_batch(self.shape, dtype), self.batch_bytes)

    def run(self, case, provider, fn, minimal_bytes, graph=False):
        try:
            if graph:
                ms = time_rotating(lambda graph_: graph_.replay(), graphed(fn, self.sets))
            else:
                ms = time_rotating(fn, self.sets)
        except Exception as exc:  # a peer that does not take this dtype, or an out-of-memory
            print(f"skipping {provider} on {case} {self.dtype}: {type(exc).__name__}: {str(exc)[:120]}")
            return
        self.recorder.add(case, self.dtype, "fwd", provider, ms, minimal_bytes)

    def fixed_params(self, mode, box_fraction=0.5):
        """Parameters of composite_batch: every sample in `mode`, flip partner, a centred box of box_fraction."""
        n, _, h, w = self.shape
        side_h, side_w = int(h * box_fraction ** 0.5), int(w * box_fraction ** 0.5)
        y0, x0 = (h - side_h) // 2, (w - side_w) // 2
        box = torch.tensor([x0, y0, x0 + side_w, y0 + side_h], dtype=torch.int32, device="cuda").expand(n, 4)
        lam = torch.full((n,), 0.7, device="cuda")
        partner = torch.arange(n, device="cuda", dtype=torch.int32).flip(0)
        mode = torch.full((n,), int(mode), dtype=torch.int32, device="cuda")
        return box.contiguous(), lam, partner, mode, side_h * side_w

    def mixing_cases(self, timm, torchvision_v2):
        rk, MixMode, copy_bytes = self.rk, self.MixMode, 2 * self.batch_bytes
        floating = self.dtype != torch.uint8
        for method in ("cutmix", "mixup"):
            fn = getattr(rk, method)
            for per_sample in (False, True):
                case = f"{method}_{'sample' if per_sample else 'batch'}"
                self.run(case, "torch", lambda x, y: fn(x, y, per_sample=per_sample, backend="torch"), copy_bytes)
                for backend in self.backends:
                    ours = lambda x, y, b=backend: fn(x, y, per_sample=per_sample, backend=b)  # noqa: E731
                    self.run(case, f"recipe_kernels/{backend}", ours, copy_bytes)
                    self.run(case, f"recipe_kernels/{backend}+graph", ours, copy_bytes, graph=True)
                    if not per_sample:
                        fixed_mode = MixMode.CUTMIX if method == "cutmix" else MixMode.MIXUP
                        box, lam, partner, mode, _ = self.fixed_params(fixed_mode)
                        kernel = lambda x, y, b=backend: rk.composite_batch(  # noqa: E731
                            x, box, lam, partner, mode, flip_pairs_hint=True, backend=b)
                        self.run(case, f"recipe_kernels/{backend}+kernel", kernel, copy_bytes)
                if timm is not None and floating:
                    alphas = dict(mixup_alpha=0.0, cutmix_alpha=1.0) if method == "cutmix" else \
                        dict(mixup_alpha=0.2, cutmix_alpha=0.0)
                    peer = timm.data.Mixup(**alphas, mode="elem" if per_sample else "batch", num_classes=NUM_CLASSES)
                    self.run(case, "timm", peer, copy_bytes)
                if torchvision_v2 is not None and not per_sample:
                    peer = (torchvision_v2.CutMix if method == "cutmix" else torchvision_v2.MixUp)(
                        num_classes=NUM_CLASSES)
                    self.run(case, "torchvision", peer, copy_bytes)
        # timm's Mixup defaults (elem mode): each sample CutMix or MixUp.
        case = "cutmixup_sample"
        self.run(case, "torch", lambda x, y: rk.cutmix_or_mixup(x, y, backend="torch"), copy_bytes)
        for backend in self.backends:
            ours = lambda x, y, b=backend: rk.cutmix_or_mixup(x, y, backend=b)  # noqa: E731  (nn.CutMixUp's call)
            self.run(case, f"recipe_kernels/{backend}", ours, copy_bytes)
            self.run(case, f"recipe_kernels/{backend}+graph", ours, copy_bytes, graph=True)
        if timm is not None and floating:
            self.run(case, "timm", timm.data.Mixup(mode="elem", num_classes=NUM_CLASSES), copy_bytes)

    def normalization_case(self):
        """x -> CutMix per sample -> (x - mean) / std in bf16: fused against separate torch ops."""
        rk = self.rk
        case, norm_bytes = "cutmix_norm", self.batch_bytes + 2 * self.numel
        mean = torch.tensor(MEAN, device="cuda").reshape(1, 3, 1, 1)
        std = torch.tensor(STD, device="cuda").reshape(1, 3, 1, 1)

        def separate(x, y):
            mixed, target = rk.cutmix(x, y, per_sample=True, backend="torch")
            return ((mixed.float() - mean) / std).to(torch.bfloat16), target

        self.run(case, "torch", separate, norm_bytes)
        for backend in self.backends:
            def fused(x, y, backend=backend):
                return rk.cutmix(x, y, per_sample=True, mean=MEAN, std=STD, out_dtype=torch.bfloat16, backend=backend)

            self.run(case, f"recipe_kernels/{backend}", fused, norm_bytes)
            self.run(case, f"recipe_kernels/{backend}+graph", fused, norm_bytes, graph=True)

    def inplace_case(self):
        """The in-place box swap on a fixed box of half the image (bytes depend on the box, so it is fixed)."""
        from recipe_kernels.mixing import cutmix_swap_op
        box, _, _, _, area = self.fixed_params(self.MixMode.CUTMIX)
        element_size = self.batch_bytes // self.numel
        box_bytes = 2 * self.shape[0] * self.shape[1] * area * element_size
        self.run("cutmix_inplace", "torch", lambda x, y: cutmix_swap_op(x, box, "torch"), box_bytes)
        for backend in self.backends:
            self.run("cutmix_inplace", f"recipe_kernels/{backend}+kernel",
                     lambda x, y, b=backend: cutmix_swap_op(x, box, b), box_bytes)


def main():
    args = parse_args(__doc__, "batch 64, uint8 and bf16 only")
    require_cuda()
    timm = optional_peer("timm")
    if timm is not None:
        import timm.data  # noqa: F401  (Mixup lives there)
    torchvision = optional_peer("torchvision")
    torchvision_v2 = None
    if torchvision is not None:
        from torchvision.transforms import v2 as torchvision_v2
    recorder = Recorder("mixing")
    dtypes = [torch.uint8, torch.bfloat16] if args.quick else [torch.uint8, torch.bfloat16, torch.float32]
    for dtype in dtypes:
        bench = Bench(recorder, dtype, batch=64 if args.quick else 256)
        bench.mixing_cases(timm, torchvision_v2)
        bench.normalization_case()
        bench.inplace_case()
        del bench
        torch.cuda.empty_cache()
    recorder.finish(args.out)


if __name__ == "__main__":
    main()
