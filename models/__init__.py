"""tfquant.models: small reference networks and offline-first dataset loaders."""

from tfquant.models import datasets
from tfquant.models.digits import digits_cnn

__all__ = ["datasets", "digits_cnn"]
