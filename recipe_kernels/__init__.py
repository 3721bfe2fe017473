"""recipe_kernels: fused GPU kernels for the regularization side of training recipes."""
from recipe_kernels.dropout import dropout, dropout_add, drop_path, drop_path_add, drop_path_rates
# cross_entropy exports
# mixing exports
# ema exports
from recipe_kernels import nn

__version__ = "0.1.0"
__all__ = ["dropout", "dropout_add", "drop_path", "drop_path_add", "drop_path_rates", "nn"]
