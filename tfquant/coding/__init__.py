"""Division methods (and, later, entropy coders) for tfquant codebooks."""

from tfquant.coding.division import divide

__all__ = ["divide"]
