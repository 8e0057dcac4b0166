"""The one place tfquant touches Keras internals: pins tf.keras to Keras 2 (tf_keras).

tfmot's quantization API only works with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow resolves ``tf.keras``. Importing tfquant first does that; if TensorFlow
already resolved Keras 3, we stop with an error that says how to fix it.
"""

import os

_FIX = (
    "tfquant needs Keras 2 (the tf_keras package), which TensorFlow only uses when the "
    "environment variable TF_USE_LEGACY_KERAS=1 is set before TensorFlow is first imported. "
    "Fix: `import tfquant` before `import tensorflow` (or set os.environ['TF_USE_LEGACY_KERAS'] "
    "= '1' at the very top of your script / first Colab cell), then restart the runtime."
)

if os.environ.get("TF_USE_LEGACY_KERAS", "1").strip().lower() not in ("1", "true", "yes"):
    raise ImportError(f"{_FIX} Received: TF_USE_LEGACY_KERAS={os.environ['TF_USE_LEGACY_KERAS']!r}")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from tfquant import _quiet  # noqa: E402

# In tfquant's own command lines only: TensorFlow's C++ start-up lines stay off stderr.
with _quiet.startup() as quiet:
    import tensorflow as tf
    import tf_keras as keras

    if quiet:
        tf.config.list_physical_devices()  # the CUDA driver lookup logs here, inside the filter

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(f"{_FIX} Received: tf.keras is {tf.keras.__name__} (Keras 3).")


def check_keras2_model(model, argument="model"):
    """Raises a clear error unless `model` is a built tf_keras (Keras 2) model.

    Args:
      model: the object a user passed.
      argument: the argument name to mention in the error.

    Raises:
      TypeError: `model` is a Keras 3 model or not a Keras model at all.
      ValueError: `model` has not been built (it has no weights yet).
    """
    if isinstance(model, keras.Model):
        if not model.built:
            raise ValueError(
                f"{argument} must be a built model: call it on data or give it an Input "
                f"first. Received: unbuilt {type(model).__name__} {model.name!r}"
            )
        return
    module = type(model).__module__
    if module.startswith("keras"):
        raise TypeError(
            f"{argument} is a Keras 3 model ({type(model).__name__} from {module}); "
            f"tfquant works on Keras 2 models built with `tfq.keras` (tf_keras). "
            f"Rebuild it with `keras = tfquant.keras`, or save it and reload it with "
            f"tfquant.keras.models.load_model. Received: {argument}={type(model)}"
        )
    raise TypeError(
        f"{argument} must be a tf_keras Model (use `tfquant.keras`). "
        f"Received: {argument} of type {type(model).__name__}"
    )


__all__ = ["keras", "tf", "check_keras2_model"]


def quantized_weights(model):
    """Yields `(wrapper, weight, quantizer, quantizer_vars)` for every quantized weight.

    Reads tfmot's `QuantizeWrapperV2._weight_vars`, the one private attribute tfquant relies
    on; keeping it here means a tfmot change breaks one function.
    """
    import tensorflow_model_optimization as tfmot

    for layer in model.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            for weight, quantizer, quantizer_vars in layer._weight_vars:
                yield layer, weight, quantizer, quantizer_vars


def quantized_activations(model):
    """Yields `(wrapper, quantizer, quantizer_vars)` for every activation quantizer of a QAT
    model (the variables of the post-activation quantization point)."""
    import tensorflow_model_optimization as tfmot

    for layer in model.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            for activation in layer._quantize_activations:
                variables = getattr(activation, "_post_activation_vars", None)
                if variables is not None:
                    yield layer, activation.quantizer, variables


def is_annotated(layer):
    """True if `layer` is wrapped by tfmot's QuantizeAnnotate (a private tfmot class)."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import (
        QuantizeAnnotate,
    )

    return isinstance(layer, QuantizeAnnotate)


def inbound_layer_names(model):
    """Layer name -> names of the layers feeding it, from the functional model's config (a
    layer shared with another model has nodes there too: its own node lists miss that)."""
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        return {name: names[i - 1 : i] for i, name in enumerate(names)}
    inbound = {}
    for layer in model.get_config()["layers"]:
        sources = []
        for node in layer["inbound_nodes"]:
            node = node["args"] if isinstance(node, dict) else node
            sources += [item[0] for item in node if isinstance(item, (list, tuple))]
        inbound[layer["config"]["name"]] = sources
    return inbound


def tfmot_layout_transforms():
    """`(default_8bit_transforms module, ModelTransformer class)`: tfmot's private layout
    transforms, which `tfquant.schemes` reuses (one of them renamed)."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_transforms,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: E501
        model_transformer,
    )

    return default_8bit_transforms, model_transformer.ModelTransformer
