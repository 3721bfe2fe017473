"""python -m recipe_kernels.demo: the lecture's training recipe on scikit-learn's digits, through the package's ops.

A small residual CNN trained with: linear warm-up then cosine learning rate; SGD with
momentum and weight decay; per-sample RandomResizedCrop (a mild scale range, 0.6 to 1 of
the 8x8 image) then CutMix/MixUp, in one nn.BatchAugment call, feeding label-smoothed
cross-entropy on MixedTarget; dropout before the classifier; stochastic depth on every
residual block with the linear drop_path_rates rule, through drop_path_residual (the branch
runs on the kept samples only; --stochastic-depth subset, the default) or drop_path_add
(--stochastic-depth mask); and ModelEMA, evaluated beside the raw weights. The data ships
with scikit-learn (nothing is downloaded) and is split once, with a fixed seed, into train,
validation and test.

--compare trains the same network with plain torch equivalents (F.dropout,
F.cross_entropy against dense mixed targets, a per-tensor EMA loop, a Python-loop
CutMix/MixUp) and prints both accuracies and the time per step; it also times a few steps
of the other --stochastic-depth variant each epoch, on a copy. --plot PATH writes the
training curves as a PNG. The last line is `test accuracy: model=0.XXXX ema=0.XXXX`.
"""
import argparse
import copy
import dataclasses
import importlib.util
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.nn.functional as F

import recipe_kernels as rk
from recipe_kernels import _backend

NUM_CLASSES = 10
LABEL_SMOOTHING = 0.1
EMA_DECAY = 0.998
# The package run crops each 8x8 digit to a random box of 0.6 to 1 of its area (aspect 3/4 to 4/3), resized back to
# 8x8, unflipped (a mirrored digit is another glyph), before CutMix/MixUp: nn.BatchAugment, one call.
DIGIT_SIDE = 8
CROP_SCALE = (0.6, 1.0)
# "mask": drop_path_add (the branch runs on every sample); "subset": drop_path_residual (on the kept ones).
STOCHASTIC_DEPTH_MODES = ("mask", "subset")
DEFAULT_STOCHASTIC_DEPTH = "subset"  # the faster on the CPU at the demo's rates (README, The demo)
# Steps of the stochastic-depth variant not trained, timed each epoch under --compare (about 20% of an epoch).
OTHER_VARIANT_STEPS = 4

Split = tuple[torch.Tensor, torch.Tensor]  # images, labels
History = dict[str, Any]  # per-epoch lists "loss", "val_model", "val_ema"; then "test_model", "test_ema",
# "ms_per_step" (the variant trained) and "ms_per_step_by_variant" (stochastic depth mode -> ms per step)

if TYPE_CHECKING:
    import matplotlib.figure


# ----------------------------------------------------------------------------- data


def load_digits_split(device: torch.device, seed: int = 0) -> tuple[Split, Split, Split]:
    """8x8 digits as (N, 1, 8, 8) float32 in [0, 1]: 1197 train, 300 validation, 300 test images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order].to(device), labels[order].to(device)
    return (images[:1197], labels[:1197]), (images[1197:1497], labels[1197:1497]), (images[1497:], labels[1497:])


# ----------------------------------------------------------------------------- model


class ResidualBlock(torch.nn.Module):
    """conv-bn-relu-conv-bn, added to the input with stochastic depth.

    stochastic_depth (package ops only): "mask" runs the branch on every sample and zeroes the
    dropped ones (drop_path_add); "subset" runs it on the kept samples only (drop_path_residual),
    so its BatchNorms see the batch statistics of those samples, as in DINOv2.
    """

    def __init__(self, channels: int, drop_path_rate: float, use_package_ops: bool, stochastic_depth: str = "mask"):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.drop_path_rate = drop_path_rate
        self.use_package_ops = use_package_ops
        self.stochastic_depth = stochastic_depth

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_package_ops:  # timm's drop_path, then the add
            out = x + _torch_drop_path(self.branch(x), self.drop_path_rate, self.training)
        elif self.stochastic_depth == "subset":
            out = rk.drop_path_residual(x, self.branch, self.drop_path_rate, self.training)
        else:
            out = rk.drop_path_add(self.branch(x), x, self.drop_path_rate, self.training)
        return F.relu(out)


def _torch_drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class DigitsNet(torch.nn.Module):
    def __init__(self, use_package_ops: bool, width: int = 32, num_blocks: int = 4, final_drop_path_rate: float = 0.1,
                 dropout: float = 0.2, stochastic_depth: str = "mask"):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1, bias=False),
                                        torch.nn.BatchNorm2d(width), torch.nn.ReLU())
        rates = rk.drop_path_rates(num_blocks, final_drop_path_rate)
        self.blocks = torch.nn.Sequential(*[ResidualBlock(width, rate, use_package_ops, stochastic_depth)
                                            for rate in rates])
        self.dropout = rk.nn.Dropout(dropout) if use_package_ops else torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(width, NUM_CLASSES)

    def set_stochastic_depth(self, mode: str) -> None:
        for block in self.blocks:
            block.stochastic_depth = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.dropout(features))


# ----------------------------------------------------------------------------- plain torch equivalents (--compare)


def torch_mix(x: torch.Tensor, target: torch.Tensor, generator: torch.Generator, mixup_alpha: float = 0.8,
              cutmix_alpha: float = 1.0, switch_prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample CutMix/MixUp as a Python loop over the batch, with dense smoothed soft targets (timm's elem mode)."""
    n, _, height, width = x.shape
    flipped = x.flip(0)
    mixed = x.clone()
    lams = []
    for i in range(n):
        if torch.rand((), generator=generator).item() < switch_prob:
            lam = torch.distributions.Beta(cutmix_alpha, cutmix_alpha).sample().item()
            cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(height, (), generator=generator)), int(torch.randint(width, (), generator=generator))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            mixed[i, :, y0:y1, x0:x1] = flipped[i, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)
        else:
            lam = torch.distributions.Beta(mixup_alpha, mixup_alpha).sample().item()
            mixed[i] = lam * x[i] + (1 - lam) * flipped[i]
        lams.append(lam)
    lam = torch.tensor(lams, device=x.device).unsqueeze(1)
    off, on = LABEL_SMOOTHING / NUM_CLASSES, 1 - LABEL_SMOOTHING + LABEL_SMOOTHING / NUM_CLASSES
    y_a = torch.full((n, NUM_CLASSES), off, device=x.device).scatter_(1, target[:, None], on)
    y_b = torch.full((n, NUM_CLASSES), off, device=x.device).scatter_(1, target.flip(0)[:, None], on)
    return mixed, lam * y_a + (1 - lam) * y_b


class TorchEMA:
    """ModelEmaV2-style: a per-tensor loop over the state dict."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, 1 - (1 + self.updates) ** (-2 / 3))
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.is_floating_point():
                ema_value.mul_(decay).add_(value, alpha=1 - decay)
            else:
                ema_value.copy_(value)


# ----------------------------------------------------------------------------- training


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = (model(images).argmax(1) == labels).float().mean().item()
    return correct


@dataclasses.dataclass
class Run:
    """What one training step touches: the model and the recipe's stateful pieces."""
    model: DigitsNet
    optimizer: torch.optim.Optimizer
    ema: "rk.ModelEMA | TorchEMA"
    use_package_ops: bool
    mixer: "rk.nn.BatchAugment | None" = None
    criterion: "rk.nn.CrossEntropyLoss | None" = None
    generator: "torch.Generator | None" = None  # the plain-torch CutMix/MixUp's

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step and EMA update on a batch; returns the loss (a tensor: no host sync)."""
        if self.use_package_ops:
            images, mixed_target = self.mixer(images, labels)
            loss = self.criterion(self.model(images), mixed_target)
        else:
            images, soft_target = torch_mix(images, labels, self.generator)
            loss = F.cross_entropy(self.model(images), soft_target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        return loss


def timed_step(run: Run, images: torch.Tensor, labels: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, float]:
    """run.step and its wall time in seconds, the GPU's work included."""
    started = time.perf_counter()
    loss = run.step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss, time.perf_counter() - started


def time_other_variant(run: Run, mode: str, batches: list[Split], device: torch.device) -> float:
    """Seconds spent on `batches` by full steps of a scratch copy of `run` with stochastic depth `mode`.

    The copy (model, optimizer state, EMA) and a forked RNG leave the training run as it was:
    a run with --compare trains exactly as one without.
    """
    scratch = copy.deepcopy(run)
    scratch.model.set_stochastic_depth(mode)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return sum(timed_step(scratch, images, labels, device)[1] for images, labels in batches)


def train(use_package_ops: bool, args: argparse.Namespace, device: torch.device, label: str) -> History:
    """Trains one network; under args.compare the package run also times the other stochastic-depth variant."""
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = load_digits_split(device)
    model = DigitsNet(use_package_ops, stochastic_depth=args.stochastic_depth).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    if use_package_ops:
        run = Run(model, optimizer, rk.ModelEMA(model, decay=EMA_DECAY, warmup=True), use_package_ops,
                  mixer=rk.nn.BatchAugment(DIGIT_SIDE, scale=CROP_SCALE, hflip=0.0, mixup_alpha=0.8, cutmix_alpha=1.0,
                                           prob=1.0, switch_prob=0.5),
                  criterion=rk.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING))
    else:
        run = Run(model, optimizer, TorchEMA(model, EMA_DECAY), use_package_ops,
                  generator=torch.Generator().manual_seed(args.seed))
    # The stochastic depth trained (plain torch: timm's mask), then, for the package run under --compare,
    # the other one, timed on a few steps an epoch.
    variants = [args.stochastic_depth] if use_package_ops else ["mask"]
    if use_package_ops and args.compare:
        variants += [mode for mode in STOCHASTIC_DEPTH_MODES if mode != args.stochastic_depth]
    steps_per_epoch = math.ceil(len(train_y) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    history = {"loss": [], "val_model": [], "val_ema": []}
    step = 0
    seconds, steps_timed = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0)
    print(f"{label}: {sum(p.numel() for p in model.parameters())} parameters, {args.epochs} epochs "
          f"of {steps_per_epoch} steps on {device}")
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_y), device=device)
        epoch_loss = 0.0
        epoch_seconds = dict.fromkeys(variants, 0.0)
        # disable=None: a bar on a terminal, nothing when stderr is redirected to a log.
        progress = tqdm(total=steps_per_epoch, desc=f"{label} epoch {epoch + 1}/{args.epochs}", leave=False,
                        disable=None, unit="step")
        probe = []  # the batches on which the other variant is timed
        for batch in range(steps_per_epoch):
            index = order[batch * args.batch_size:(batch + 1) * args.batch_size]
            images_and_labels = (train_x[index], train_y[index])
            if batch < OTHER_VARIANT_STEPS:
                probe.append(images_and_labels)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, steps_per_epoch * args.warmup_epochs, args.lr)
            loss, elapsed = timed_step(run, *images_and_labels, device)
            epoch_seconds[variants[0]] += elapsed
            epoch_loss += loss.item()
            step += 1
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            progress.update()
        progress.close()
        epoch_steps = {mode: steps_per_epoch if mode == variants[0] else len(probe) for mode in variants}
        for mode in variants[1:]:
            epoch_seconds[mode] = time_other_variant(run, mode, probe, device)
        for mode in variants:
            seconds[mode] += epoch_seconds[mode]
            steps_timed[mode] += epoch_steps[mode]
        history["loss"].append(epoch_loss / steps_per_epoch)
        history["val_model"].append(accuracy(model, val_x, val_y))
        history["val_ema"].append(accuracy(run.ema.module, val_x, val_y))
        step_times = "  ".join(f"{mode} {1000 * epoch_seconds[mode] / epoch_steps[mode]:.1f}" for mode in variants)
        print(f"{label} epoch {epoch + 1:3d}  loss {history['loss'][-1]:.4f}  "
              f"val accuracy model {history['val_model'][-1]:.4f}  ema {history['val_ema'][-1]:.4f}  "
              f"ms/step {step_times}")
    history["test_model"] = accuracy(model, test_x, test_y)
    history["test_ema"] = accuracy(run.ema.module, test_x, test_y)
    history["ms_per_step_by_variant"] = {mode: 1000 * seconds[mode] / max(1, steps_timed[mode]) for mode in variants}
    history["ms_per_step"] = history["ms_per_step_by_variant"][variants[0]]
    return history


def curves_figure(runs: dict[str, History]) -> "matplotlib.figure.Figure":
    """Training loss and validation accuracy per epoch; each run keeps one colour in both panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (label, history) in enumerate(runs.items()):
        colour = f"C{index}"
        epochs = range(1, len(history["loss"]) + 1)
        loss_axis.plot(epochs, history["loss"], color=colour, label=label)
        accuracy_axis.plot(epochs, history["val_model"], color=colour, label=f"{label}: model")
        accuracy_axis.plot(epochs, history["val_ema"], "--", color=colour, label=f"{label}: EMA")
    loss_axis.set(xlabel="epoch", ylabel="training loss (mixed targets)", title="loss")
    # No fixed lower limit: the first epochs, far below the final accuracy, stay in view.
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    loss_axis.legend(), accuracy_axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def plot(path: str, runs: dict[str, History]) -> None:
    figure = curves_figure(runs)
    figure.savefig(path, dpi=100, format="png")
    print(f"wrote {path}")


DESCRIPTION = """\
Trains a small residual CNN on scikit-learn's 8x8 digits with the lecture's recipe, through recipe_kernels:
warm-up + cosine LR, Nesterov SGD, per-sample crop + CutMix/MixUp, label-smoothed CE, dropout, drop path, EMA.
"""

EPILOG = """\
An epoch takes one to two seconds on the CPU with the default torch backend (30 epochs: about 50 s
on two cores). --backend triton on the CPU runs the Triton kernels in Triton's interpreter (set
TRITON_INTERPRET=1 first): about 85 s an epoch, so add --epochs 1.
The last line printed is `test accuracy: model=0.XXXX ema=0.XXXX`.
"""


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse's own errors (an unknown choice, a missing value) in one line too, like the demo's checks."""

    def error(self, message: str) -> NoReturn:
        _fail(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="python -m recipe_kernels.demo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the 1,197 training images (default: 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate, after warm-up (default: 0.1)")
    parser.add_argument("--warmup-epochs", type=int, default=3,
                        help="epochs of linear learning-rate warm-up before the cosine decay (default: 3)")
    parser.add_argument("--backend", choices=list(_backend.BACKENDS), default=None,
                        help="the package's backend (default: triton on a GPU, torch on the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights, batches and augmentation (default: 0)")
    parser.add_argument("--stochastic-depth", choices=STOCHASTIC_DEPTH_MODES, default=DEFAULT_STOCHASTIC_DEPTH,
                        help="how the residual blocks drop paths: mask runs each branch on every sample and zeroes "
                             "the dropped ones (drop_path_add), subset runs it on the kept samples only "
                             f"(drop_path_residual) (default: {DEFAULT_STOCHASTIC_DEPTH}, the faster on the CPU)")
    parser.add_argument("--compare", action="store_true",
                        help="also train with plain torch equivalents, time a few steps of the other "
                             "--stochastic-depth each epoch, and print the accuracies and ms per step")
    parser.add_argument("--plot", metavar="PATH", help="write the training curves to this PNG file")
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exits with one line on stderr, as argparse does for a bad value, without the usage block."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _check_writable(path: str) -> str | None:
    """Whether `path` can be written, checked by opening it; a file created for the check is removed."""
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    if not existed:
        os.remove(path)
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any training starts: a bad flag exits with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                               ("--warmup-epochs", args.warmup_epochs, 0)):
        if value < least:
            _fail(parser, f"{flag} must be at least {least}, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        _fail(parser, f"--lr must be a positive number, got {args.lr}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        _fail(parser, f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        _fail(parser, f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            _fail(parser, f"--device {args.device}: no GPU is visible to torch {torch.__version__} ({build}); "
                          "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            _fail(parser, f"--device {args.device}: only {torch.cuda.device_count()} GPU(s) are visible")
    if args.backend is not None:
        reason = _backend.why_unavailable(args.backend, device)
        if reason is not None:
            _fail(parser, f"--backend {args.backend} on {device.type}: {reason}")
    missing = [module for module in ("sklearn", "tqdm") + (("matplotlib",) if args.plot else ())
               if importlib.util.find_spec(module) is None]
    if missing:
        _fail(parser, f"the demo needs {', '.join(missing)}: pip install 'recipe_kernels[demo]'")
    if args.plot:
        reason = _check_writable(args.plot)
        if reason is not None:
            _fail(parser, f"--plot {args.plot}: cannot write there ({reason})")
    args.device = device
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.backend is not None:
        os.environ["RECIPE_KERNELS_BACKEND"] = args.backend
    device = args.device

    runs = {"recipe_kernels": train(True, args, device, "recipe_kernels")}
    if args.compare:
        runs["plain torch"] = train(False, args, device, "plain torch")
        print(f"{'':>16} {'test model':>10} {'test EMA':>9} {'ms/step':>8}")
        for label, history in runs.items():
            print(f"{label:>16} {history['test_model']:>10.4f} {history['test_ema']:>9.4f} "
                  f"{history['ms_per_step']:>8.2f}")
        trained, other = runs["recipe_kernels"]["ms_per_step_by_variant"].items()
        print(f"recipe_kernels ms/step by --stochastic-depth: {trained[0]} {trained[1]:.2f} (trained), "
              f"{other[0]} {other[1]:.2f} ({OTHER_VARIANT_STEPS} steps an epoch on a copy)")
    if args.plot:
        plot(args.plot, runs)
    ours = runs["recipe_kernels"]
    print(f"test accuracy: model={ours['test_model']:.4f} ema={ours['test_ema']:.4f}")


if __name__ == "__main__":
    main()
