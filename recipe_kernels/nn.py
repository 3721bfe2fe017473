"""Modules over the package's functions: drop-in replacements for torch and timm modules."""
from typing import Optional, Sequence, Tuple, Union

import torch

from recipe_kernels import _checks
from recipe_kernels.dropout import dropout, drop_path
from recipe_kernels.drop_path_residual import drop_path_residual
from recipe_kernels.targets import MixedTarget

__all__ = ["Dropout", "DropPath", "DropPathResidual", "CrossEntropyLoss", "CutMixUp", "replace_modules",
           "RandomResizedCrop", "BatchAugment"]


class Dropout(torch.nn.Module):
    """Drop-in for torch.nn.Dropout(p, inplace): with inplace=True, training overwrites x and returns it."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class DropPath(torch.nn.Module):
    """Drop-in for timm's DropPath(drop_prob): x * keep[sample] / (1 - p) in training, identity in eval."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob has to be between 0 and 1, but got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class DropPathResidual(torch.nn.Module):
    """x + branch(x) with stochastic depth that runs `branch` only on the kept samples.

    forward(x) = drop_path_residual(x, self.branch, self.p, self.training): in training, branch
    sees a random subset of k = max(1, int(N (1 - p))) samples and its output is scaled by N/k
    (DINOv2's drop_add_residual_stochastic_depth); in eval, x + branch(x). replace_modules does
    not create it: it needs the branch as a module, which a DropPath inside a block does not know.
    """

    def __init__(self, branch: torch.nn.Module, p: float = 0.1):
        super().__init__()
        if not callable(branch):
            raise TypeError(f"branch must be callable, got {type(branch).__name__}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p has to be between 0 and 1, but got {p}")
        self.branch = branch
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path_residual(x, self.branch, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_modules(model: torch.nn.Module) -> int:
    """Swaps torch.nn.Dropout and timm-style DropPath modules inside `model` for this package's.

    A timm-style DropPath is any module class named DropPath with a `drop_prob` attribute
    (timm.layers.DropPath and its copies) that scales by keep (scale_by_keep is True or
    absent). Returns how many modules were replaced.
    """
    replaced = 0
    for name, child in model.named_children():
        if type(child) is torch.nn.Dropout:
            setattr(model, name, Dropout(child.p, child.inplace))
        elif (type(child).__name__ == "DropPath" and not isinstance(child, DropPath)
              and hasattr(child, "drop_prob") and getattr(child, "scale_by_keep", True)):
            setattr(model, name, DropPath(child.drop_prob))
        else:
            replaced += replace_modules(child)
            continue
        getattr(model, name).train(child.training)
        replaced += 1
    return replaced


# ----------------------------------------------------------------------------- cross-entropy modules


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for torch.nn.CrossEntropyLoss that also takes a MixedTarget (CutMix/MixUp) as target.

    Takes torch's arguments, positionally and by keyword (the legacy size_average and reduce by
    torch's rules, with its warning); z_loss (PaLM's z_loss * lse^2 per counted row, see
    recipe_kernels.cross_entropy) and inplace_backward are keyword-only. `weight` is a buffer, as
    in torch. The loss is float32 (float64 for float64 logits).
    """

    def __init__(self, weight: torch.Tensor | None = None, size_average: bool | None = None,
                 ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0, inplace_backward: bool = False):
        super().__init__()
        from recipe_kernels import _checks
        from recipe_kernels.cross_entropy import REDUCTIONS
        if size_average is not None or reduce is not None:
            reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)  # warns as torch does
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        label_smoothing = _checks.probability(label_smoothing, "label_smoothing")  # NaN refused
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = _checks.positive(z_loss, "z_loss", allow_zero=True)
        self.inplace_backward = inplace_backward

    def forward(self, input: torch.Tensor, target: "torch.Tensor | MixedTarget") -> torch.Tensor:
        from recipe_kernels.cross_entropy import cross_entropy
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                             inplace_backward=self.inplace_backward)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}")


# ----------------------------------------------------------------------------- mixing modules


class CutMixUp(torch.nn.Module):
    """Like timm's Mixup: CutMix or MixUp per sample (or per batch), returning (x, MixedTarget).

    In per-sample mode each sample is mixed with probability prob, then chooses CutMix
    (probability switch_prob, lambda ~ Beta(cutmix_alpha)) or MixUp (lambda ~ Beta(mixup_alpha))
    with its own lambda and box, all in one kernel launch; unmixed samples get lam = 1.
    Partner "flip" pairs sample i with N-1-i as in timm. mean/std/out_dtype normalize in the
    same pass. Identity (with lam = 1, still normalizing) in eval mode, where it draws no random
    numbers: no generator's state changes, so evaluation does not shift the training stream.
    The target is a MixedTarget of class indices, not timm's dense soft targets:
    recipe_kernels' cross-entropy consumes it directly.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, per_sample: bool = True, correct_lam: bool = True, *,
                 partner: str = "flip", mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, out_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        from recipe_kernels import _checks, mixing
        _checks.positive(mixup_alpha, "mixup_alpha", allow_zero=True)
        _checks.positive(cutmix_alpha, "cutmix_alpha", allow_zero=True)
        if mixup_alpha == 0.0 and cutmix_alpha == 0.0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing to mix")
        _checks.probability(prob, "prob")
        _checks.probability(switch_prob, "switch_prob")
        mixing._check_partner(partner)
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.per_sample, self.correct_lam, self.partner = per_sample, correct_lam, partner
        self.mean, self.std, self.out_dtype = mean, std, out_dtype

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> "tuple[torch.Tensor, MixedTarget]":
        from recipe_kernels import mixing
        prob = self.prob if self.training else 0.0  # eval: keep (and still normalize)
        return mixing.cutmix_or_mixup(
            x, target, mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha, prob=prob,
            switch_prob=self.switch_prob, per_sample=self.per_sample, correct_lam=self.correct_lam,
            partner=self.partner, mean=self.mean, std=self.std, out_dtype=self.out_dtype)

    def extra_repr(self) -> str:
        return (f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, per_sample={self.per_sample}, correct_lam={self.correct_lam}")


# ----------------------------------------------------------------------------- augment modules


class RandomResizedCrop(torch.nn.Module):
    """torchvision's RandomResizedCrop + RandomHorizontalFlip over a batch, per sample (torchvision's
    own, on a batched tensor, crops every sample alike), optionally normalising and casting.

    forward(images) takes an (N, C, H, W) tensor or a list of (C, H_i, W_i) tensors; see
    recipe_kernels.random_resized_crop. The parameters are drawn on the device from torch's
    generator, in eval mode too (torchvision's transform does not look at training either).
    """

    def __init__(self, size: Union[int, Tuple[int, int]], scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, antialias: bool = True,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 out_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        from recipe_kernels import augment
        self.size = augment._check_size(size)
        self.scale, self.ratio = augment._check_range("scale", scale, upper=1.0), augment._check_range("ratio", ratio)
        self.hflip, self.antialias = hflip, antialias
        self.mean, self.std, self.out_dtype = mean, std, out_dtype

    def forward(self, images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        from recipe_kernels.augment import random_resized_crop
        return random_resized_crop(images, self.size, scale=self.scale, ratio=self.ratio, hflip=self.hflip,
                                   antialias=self.antialias, mean=self.mean, std=self.std, out_dtype=self.out_dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, antialias={self.antialias}"


class BatchAugment(torch.nn.Module):
    """The lecture's augmentation recipe over a batch in one compositing launch: per-sample
    RandomResizedCrop + flip, then CutMix/MixUp with the partner's crop, random erasing,
    normalisation and the cast (recipe_kernels.augment.batch_augment), straight from uint8.

    forward(images, target) -> (x, MixedTarget) in training. In eval mode: the centre crop of
    timm's eval transform (0.875 of the image, the output's aspect) resized to `size` and
    normalised, with the target returned unchanged; nothing random is drawn.
    """

    def __init__(self, size: Union[int, Tuple[int, int]], *, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5, erase_p: float = 0.0,
                 erase_value: float = 0.0, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, out_dtype: Optional[torch.dtype] = None,
                 antialias: bool = True, partner: str = "flip") -> None:
        super().__init__()
        from recipe_kernels import augment, mixing
        self.size = augment._check_size(size)
        self.scale, self.ratio = augment._check_range("scale", scale, upper=1.0), augment._check_range("ratio", ratio)
        for name, value in (("hflip", hflip), ("prob", prob), ("switch_prob", switch_prob), ("erase_p", erase_p)):
            _checks.probability(value, name)
        mixing._check_alpha(mixup_alpha, "mixup_alpha", allow_zero=True)
        mixing._check_alpha(cutmix_alpha, "cutmix_alpha", allow_zero=True)
        mixing._check_partner(partner)
        self.hflip, self.mixup_alpha, self.cutmix_alpha = hflip, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.erase_p, self.erase_value = prob, switch_prob, erase_p, erase_value
        self.mean, self.std, self.out_dtype, self.antialias, self.partner = mean, std, out_dtype, antialias, partner

    def forward(self, images: Union[torch.Tensor, Sequence[torch.Tensor]],
                target: torch.Tensor) -> "tuple[torch.Tensor, Union[MixedTarget, torch.Tensor]]":
        from recipe_kernels import augment
        if not self.training:
            batch = augment._check_images(images)
            boxes = augment.centre_boxes(augment.image_sizes(batch, batch[0].device), *self.size)
            x = augment.resized_crop(images, boxes, self.size, antialias=self.antialias, mean=self.mean, std=self.std,
                                     out_dtype=self.out_dtype or torch.float32)
            return x, target
        return augment.batch_augment(
            images, target, self.size, scale=self.scale, ratio=self.ratio, hflip=self.hflip,
            mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha, prob=self.prob,
            switch_prob=self.switch_prob, erase_p=self.erase_p, erase_value=self.erase_value, mean=self.mean,
            std=self.std, out_dtype=self.out_dtype, antialias=self.antialias, partner=self.partner)

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
                f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, erase_p={self.erase_p}")
