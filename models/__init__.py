"""tfquant.models: reference networks and offline-first dataset loaders."""

from tfquant.models import datasets
from tfquant.models.digits import digits_cnn
from tfquant.models.lenet import lenet5

__all__ = ["datasets", "digits_cnn", "lenet5"]
