"""tfquant.models: reference networks and offline-first dataset loaders."""

from tfquant.models import datasets
from tfquant.models.baselines import BASELINES, pretrained
from tfquant.models.classifier import compile_classifier
from tfquant.models.digits import digits_cnn
from tfquant.models.lenet import lenet5, lenet300_100
from tfquant.models.mobilenet import tiny_mobilenet
from tfquant.models.resnet import cifar_resnet, resnet20, resnet32

__all__ = [
    "datasets",
    "digits_cnn",
    "lenet5",
    "lenet300_100",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "tiny_mobilenet",
    "pretrained",
    "BASELINES",
    "compile_classifier",
]
