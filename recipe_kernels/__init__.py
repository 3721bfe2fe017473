"""recipe_kernels: fused GPU kernels for the regularization side of training recipes."""
from recipe_kernels.dropout import dropout, dropout_add, drop_path, drop_path_add, drop_path_rates
from recipe_kernels.drop_path_residual import drop_path_residual
from recipe_kernels.cross_entropy import cross_entropy
from recipe_kernels.targets import MixedTarget
from recipe_kernels.mixing import MixMode, composite_batch, cutmix, cutmix_or_mixup, mixup, random_erasing
from recipe_kernels.ema import ema_update_
from recipe_kernels.augment import random_resized_crop, resized_crop
from recipe_kernels.model_ema import ModelEMA
from recipe_kernels import nn

__version__ = "0.1.0"
__all__ = ["dropout", "dropout_add", "drop_path", "drop_path_add", "drop_path_rates", "drop_path_residual",
           "cross_entropy", "MixedTarget",
           "MixMode", "composite_batch", "cutmix", "cutmix_or_mixup", "mixup", "random_erasing", "nn",
           "ema_update_", "ModelEMA", "resized_crop", "random_resized_crop"]
