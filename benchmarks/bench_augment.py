"""Benchmark: per-sample RandomResizedCrop + flip (+ CutMix/MixUp) from uint8 to normalised bf16 at 224 x 224.

Workload (issue 14): N = 256 uint8 images, as a list of random sizes between 300 x 300 and
500 x 500 ("list") and as one 3 x 480 x 480 batch ("batch"), to 224 x 224 bf16, normalised,
flipped with probability 0.5; the *_mix cases add CutMix/MixUp (nn.BatchAugment).
Minimal bytes: each output's crop source pixels read once (sum over samples of C * box area,
from the returned boxes) plus the bf16 output written once.
Providers:
  recipe_kernels/triton            random_resized_crop (sampling on the device + one launch)
  recipe_kernels/triton+kernel     resized_crop alone on fixed boxes: the kernel's bandwidth (antialias on and off)
  recipe_kernels/triton+mix        nn.BatchAugment: crop, resize, flip, CutMix/MixUp, normalise in one launch
  torchvision/loop                 v2 RandomResizedCrop + RandomHorizontalFlip + ToDtype + Normalize per image
  torchvision/batch                the same transform on the batch (one crop shared by all: for reference)
  kornia                           kornia.augmentation RandomResizedCrop + flip + Normalize, if installed
  torchvision+timm                 torchvision's loop, then timm's Mixup, if timm is installed
  triton-augment                   TritonFusedAugment: a per-sample bilinear zoom of 0.5-1.5 (an affine scale, no
                                   antialias, square), a 224 crop, flip and normalise in one kernel, from float
                                   input in [0, 1] (the uint8 batch converted first, as it requires), if installed

Usage: python benchmarks/bench_augment.py [--quick] [--out DIR]   (needs a GPU; exits 0 with a message without one)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Recorder, do_bench_ms, optional_peer, parse_args  # noqa: E402

N, SIZE = 256, 224
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def make_inputs(kind, n, generator):
    if kind == "batch":
        return torch.randint(0, 256, (n, 3, 480, 480), dtype=torch.uint8, device="cuda", generator=generator)
    sides = torch.randint(300, 501, (n, 2), generator=torch.Generator().manual_seed(0)).tolist()
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device="cuda", generator=generator) for h, w in sides]


def add_peer(recorder, case, provider, fn, minimal):
    """A peer's row; a peer that fails (another version's API, say) is skipped with a line, and the
    rows already taken are kept."""
    try:
        recorder.add(case, torch.uint8, "fwd", provider, do_bench_ms(fn), minimal)
    except Exception as error:  # noqa: BLE001  (any failure of a peer's own code)
        print(f"skipping peer {provider} on {case}: {type(error).__name__}: {error}")


def main():
    args = parse_args(__doc__, "N = 32 instead of 256")
    if not torch.cuda.is_available():
        print("bench_augment: needs a CUDA GPU; none is visible here, nothing measured")
        return 0
    import recipe_kernels as rk
    tv = optional_peer("torchvision")
    kornia = optional_peer("kornia")
    timm = optional_peer("timm")
    os.environ.setdefault("TRITON_AUGMENT_SUPPRESS_FIRST_RUN_MESSAGE", "1")
    triton_augment = optional_peer("triton_augment")
    n = 32 if args.quick else N
    recorder = Recorder("augment")
    generator = torch.Generator(device="cuda").manual_seed(0)
    target = torch.randint(0, 1000, (n,), device="cuda")
    for kind in ("list", "batch"):
        images = make_inputs(kind, n, generator)
        _, boxes, flip = rk.random_resized_crop(images, SIZE, mean=MEAN, std=STD, out_dtype=torch.bfloat16,
                                                return_params=True)
        minimal = int((boxes[:, 2] * boxes[:, 3]).sum()) * 3 + n * 3 * SIZE * SIZE * 2
        case = f"{kind}{n}->224"
        recorder.add(case, torch.uint8, "fwd", "recipe_kernels/triton", do_bench_ms(
            lambda: rk.random_resized_crop(images, SIZE, mean=MEAN, std=STD, out_dtype=torch.bfloat16)), minimal)
        for antialias in (True, False):
            recorder.add(case, torch.uint8, "fwd", f"recipe_kernels/triton+kernel{'' if antialias else '-noaa'}",
                         do_bench_ms(lambda: rk.resized_crop(images, boxes, SIZE, flip=flip, antialias=antialias,
                                                             mean=MEAN, std=STD, out_dtype=torch.bfloat16)), minimal)
        augment = rk.nn.BatchAugment(SIZE, mean=MEAN, std=STD, out_dtype=torch.bfloat16)
        recorder.add(case + "_mix", torch.uint8, "fwd", "recipe_kernels/triton+mix",
                     do_bench_ms(lambda: augment(images, target)), minimal)
        if tv is not None:
            from torchvision.transforms import v2
            transform = v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip(),
                                    v2.ToDtype(torch.float32), v2.Normalize(MEAN, STD), v2.ToDtype(torch.bfloat16)])
            loop = lambda: torch.stack([transform(image) for image in images])  # noqa: E731
            recorder.add(case, torch.uint8, "fwd", "torchvision/loop", do_bench_ms(loop), minimal)
            if kind == "batch":
                recorder.add(case, torch.uint8, "fwd", "torchvision/batch", do_bench_ms(lambda: transform(images)),
                             minimal)
            if timm is not None:
                from timm.data import Mixup
                mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=1000)
                recorder.add(case + "_mix", torch.uint8, "fwd", "torchvision+timm",
                             do_bench_ms(lambda: mixup(loop().float(), target)), minimal)
        if kornia is not None and kind == "batch":
            import kornia.augmentation as K
            pipeline = torch.nn.Sequential(K.RandomResizedCrop((SIZE, SIZE)), K.RandomHorizontalFlip(),
                                           K.Normalize(torch.tensor(MEAN) / 255, torch.tensor(STD) / 255))
            add_peer(recorder, case, "kornia", lambda: pipeline(images.float() / 255).to(torch.bfloat16), minimal)
        if triton_augment is not None and kind == "batch":
            fused = triton_augment.TritonFusedAugment(
                crop_size=SIZE, horizontal_flip_p=0.5, scale=(0.5, 1.5),
                interpolation=triton_augment.InterpolationMode.BILINEAR,
                mean=tuple(value / 255 for value in MEAN), std=tuple(value / 255 for value in STD))
            add_peer(recorder, case, "triton-augment", lambda: fused(images.float() / 255).to(torch.bfloat16), minimal)
    recorder.finish(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
