"""Division methods (and, later, entropy coders) for tfquant codebooks."""

from tfquant.coding.division import divide, ecsq
from tfquant.coding.hessian import hessian_diagonal

__all__ = ["divide", "ecsq", "hessian_diagonal"]
