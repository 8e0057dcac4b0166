"""tfquant.models: reference networks and offline-first dataset loaders."""

from tfquant.models import datasets
from tfquant.models.classifier import compile_classifier
from tfquant.models.digits import digits_cnn
from tfquant.models.lenet import lenet5, lenet300_100
from tfquant.models.mobilenet import mobilenet_v2, tiny_mobilenet
from tfquant.models.resnet import cifar_resnet, resnet20, resnet32


def __getattr__(name):
    # Imported on first use, so `python -m tfquant.models.baselines` runs the module once
    # (imported eagerly here, runpy warns that it was already in sys.modules).
    if name in ("BASELINES", "pretrained"):
        from tfquant.models import baselines

        return getattr(baselines, name)
    raise AttributeError(f"module 'tfquant.models' has no attribute {name!r}")


__all__ = [
    "datasets",
    "digits_cnn",
    "lenet5",
    "lenet300_100",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "tiny_mobilenet",
    "mobilenet_v2",
    "pretrained",
    "BASELINES",
    "compile_classifier",
]
