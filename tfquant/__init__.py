"""tfquant: few-bit quantization-aware training for Keras, exported to exact integer TFLite.

Import tfquant before TensorFlow: it pins `tf.keras` to Keras 2 (tf_keras), which tfmot needs.

    import tfquant as tfq
    keras = tfq.keras
    qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
"""

from tfquant import callbacks, coding, configs, quantizers, regularizers, schemes  # noqa: E402
from tfquant._keras import keras, tf  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS)
from tfquant.allocation import BitPlan, allocate_bits  # noqa: E402
from tfquant.distillation import Distiller  # noqa: E402
from tfquant.quantize import quantize_annotate_layer, quantize_apply, quantize_model  # noqa: E402
from tfquant.saving import load_model  # noqa: E402
from tfquant.shrink import ShrinkReport, shrink  # noqa: E402
from tfquant.summary import LayerSummary, summary  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    # tfquant.export / tfquant.models are separate packages (export/, models/ in the repo);
    # they and tfquant.plots (matplotlib) are imported lazily so `import tfquant` stays light.
    if name in ("export", "models", "plots"):
        import importlib

        return importlib.import_module(f"tfquant.{name}")
    raise AttributeError(f"module 'tfquant' has no attribute {name!r}")


__all__ = [
    "keras",
    "schemes",
    "quantizers",
    "configs",
    "callbacks",
    "coding",
    "regularizers",
    "quantize_model",
    "quantize_apply",
    "quantize_annotate_layer",
    "summary",
    "LayerSummary",
    "allocate_bits",
    "BitPlan",
    "load_model",
    "shrink",
    "ShrinkReport",
    "Distiller",
]
