"""The one place tfquant touches Keras internals: pins tf.keras to Keras 2 (tf_keras).

tfmot's quantization API only works with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow resolves ``tf.keras``. Importing tfquant first does that; if TensorFlow
already resolved Keras 3, we stop with an error that says how to fix it.

Importing tfquant also makes saved QAT models loadable (`_make_quantized_models_loadable`): it
registers tfmot's quantization classes with Keras and fixes two tfmot build bugs that made
`.keras` and `.h5` files of QAT models unreadable.
"""

import functools
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


def check_keras2_model(model, argument="model", distiller=False):
    """Raises a clear error unless `model` is a built tf_keras (Keras 2) model.

    Args:
      model: the object a user passed.
      argument: the argument name to mention in the error.
      distiller: whether a `tfq.Distiller` is accepted (schedules and summaries act on its
        student); elsewhere (export, compress, shrink, quantize) it is refused with the fix,
        pass its student.

    Raises:
      TypeError: `model` is a Keras 3 model or not a Keras model at all.
      ValueError: `model` has not been built (it has no weights yet), or is a `tfq.Distiller`
        where one is not accepted.
    """
    if isinstance(model, keras.Model):
        if not distiller and trained_model(model) is not model:
            raise ValueError(
                f"{argument} is a tfq.Distiller, which holds a teacher as well: pass its "
                f"student ({argument}.student), the quantized model it trains. Received: "
                f"{type(model).__name__} {model.name!r}"
            )
        if not model.built:
            raise ValueError(
                f"{argument} must be a built model: call it on data or give it an Input "
                f"first. Received: unbuilt {type(model).__name__} {model.name!r}"
            )
        _check_not_revived(model, argument)
        return
    module = type(model).__module__
    if module.startswith("keras"):
        raise TypeError(
            f"{argument} is a Keras 3 model ({type(model).__name__} from {module}); "
            f"tfquant works on Keras 2 models built with `tfq.keras` (tf_keras), and tf_keras "
            f"cannot read Keras 3 files. Fix: build the same architecture with "
            f"`keras = tfquant.keras` and copy the weights over, "
            f"`keras2_model.set_weights({argument}.get_weights())` (same layers in the same "
            f"order), or train it with tfquant.keras from the start. "
            f"Received: {argument}={type(model)}"
        )
    raise TypeError(
        f"{argument} must be a tf_keras Model (use `tfquant.keras`). "
        f"Received: {argument} of type {type(model).__name__}"
    )


def _check_not_revived(model, argument):
    """Raises ValueError if `model` holds Keras's generic stand-ins for tfmot's layers.

    `keras.models.load_model(dir)` on a SavedModel revives a layer whose class it cannot find
    as a generic layer of the same name: it still predicts, but its quantizers are gone, and an
    export would silently fall back to plain int8.
    """
    from tf_keras.src.saving.legacy.saved_model.load import RevivedLayer

    def layers(model):
        for layer in model.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers(layer)

    names = _quantization_objects()
    revived = [
        layer.name
        for layer in layers(model)
        if isinstance(layer, RevivedLayer) and type(layer).__name__ in names
    ]
    if revived:
        raise ValueError(
            f"{argument} was loaded without tfmot's and tfquant's classes: its layers "
            f"{revived[:3]} are Keras's generic revived copies of tfmot layers, whose quantizers "
            "are lost. Fix: load it with tfq.load_model(path) (or `import tfquant` before "
            "loading it with keras.models.load_model). "
            f"Received: {argument} {model.name!r} with revived layers"
        )


__all__ = ["keras", "tf", "check_keras2_model"]


@functools.cache
def _quantization_objects():
    """tfmot's quantization classes by the names its `quantize_scope` gives them."""
    import tensorflow_model_optimization as tfmot

    objects = {}
    for scope_objects in tfmot.quantization.keras.quantize_scope().custom_objects:
        objects.update(scope_objects)
    return objects


def _make_quantized_models_loadable():
    """Lets every Keras 2 format load a QAT model back; runs once, when tfquant is imported.

    Three changes, each to tfmot or to Keras's registry of custom objects (not to Keras code):

    - tfmot's quantization classes (`QuantizeWrapperV2`, `QuantizeLayer`, its quantizers and
      configs) are registered with Keras under the names `quantize_scope` gives them, unless a
      class is already registered under that name. Without this, `keras.models.load_model`
      outside `quantize_scope()` fails on `.keras` / `.h5` files and, worse, turns a SavedModel's
      wrappers into generic revived layers whose quantizers are None.
    - `QuantizeLayer.build_from_config` marks the layer built. tfmot's `QuantizeLayer.build` does
      not, so the `.keras` loader built it twice (once from the saved build config, once when
      the functional model called it) and then refused the file: "expected 5 variables, but
      received 3".
    - `QuantizeWrapperV2.build` builds the wrapped layer first. tfmot's collects the wrapped
      layer's weights before building it, so a wrapper rebuilt from its config (any loaded
      model) listed a trainable quantizer variable (TTQ scales, LQ-Nets bases) before the
      kernel: `.h5` and `.keras` files, which store weights by position, then failed to load
      ("Cannot assign value to variable ... kernel_positive_scale: Shape mismatch").
    """
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_layer,
        quantize_wrapper,
    )

    custom_objects = keras.utils.get_custom_objects()
    for name, cls in _quantization_objects().items():
        custom_objects.setdefault(name, cls)

    layer_class = quantize_layer.QuantizeLayer
    if not getattr(layer_class.build_from_config, "_tfquant", False):

        def build_from_config(self, config):
            if not self.built and config.get("input_shape") is not None:
                self.build(tf.TensorShape(config["input_shape"]))
                self.built = True

        build_from_config._tfquant = True
        layer_class.build_from_config = build_from_config

    wrapper_class = quantize_wrapper.QuantizeWrapperV2
    if not getattr(wrapper_class.build, "_tfquant", False):
        tfmot_build = wrapper_class.build

        def build(self, input_shape):
            if not self.layer.built:
                self.layer.build(input_shape)
                self.layer.built = True
            tfmot_build(self, input_shape)

        build._tfquant = True
        wrapper_class.build = build


_make_quantized_models_loadable()


def trained_model(model):
    """The model whose quantizers `fit` on `model` trains: `model` itself, or the student of a
    `tfq.Distiller` (so that schedules and summaries given the distiller act on the student)."""
    student = getattr(model, "_tfquant_student", None)
    return model if student is None else student


def quantized_weights(model):
    """Yields `(wrapper, weight, quantizer, quantizer_vars)` for every quantized weight.

    Reads tfmot's `QuantizeWrapperV2._weight_vars`, the one private attribute tfquant relies
    on; keeping it here means a tfmot change breaks one function.
    """
    import tensorflow_model_optimization as tfmot

    for layer in trained_model(model).layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            for weight, quantizer, quantizer_vars in layer._weight_vars:
                yield layer, weight, quantizer, quantizer_vars


def quantized_activations(model):
    """Yields `(wrapper, quantizer, quantizer_vars)` for every activation quantizer of a QAT
    model (the variables of the post-activation quantization point), every output quantizer
    (the layer's output quantization point) and the quantizer of every QuantizeLayer (the
    model's inputs, and the K-bit inputs a scheme gives layers that read a residual stream).
    """
    import tensorflow_model_optimization as tfmot

    for layer in trained_model(model).layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            for activation in layer._quantize_activations:
                variables = getattr(activation, "_post_activation_vars", None)
                if variables is not None:
                    yield layer, activation.quantizer, variables
            outputs = getattr(layer, "_output_quantizers", None)
            if outputs:  # a weightless layer's output (`OutputQuantizeConfig`)
                yield layer, outputs[0], layer._output_quantizer_vars
        elif is_quantize_layer(layer) and getattr(layer, "quantizer", None) is not None:
            yield layer, layer.quantizer, layer.quantizer_vars


def is_annotated(layer):
    """True if `layer` is wrapped by tfmot's QuantizeAnnotate (a private tfmot class)."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import (
        QuantizeAnnotate,
    )

    return isinstance(layer, QuantizeAnnotate)


def quantize_layer(quantizer, name):
    """A tfmot QuantizeLayer (private in tfmot) applying `quantizer` to its input."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
        QuantizeLayer,
    )

    return QuantizeLayer(quantizer, name=name)


def is_quantize_layer(layer):
    """True if `layer` is tfmot's QuantizeLayer (the input quantization point; private)."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
        QuantizeLayer,
    )

    return isinstance(layer, QuantizeLayer)


def inbound_edges(model):
    """`(reader, source, node index, tensor index)` for every input of every layer call of the
    functional or Sequential `model`, by layer name and numbered as in the model's config (a
    layer shared with another model has nodes there too: its own node lists miss that)."""
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        return [(reader, source, 0, 0) for source, reader in zip(names, names[1:], strict=False)]
    edges = []
    for layer in model.get_config()["layers"]:
        for node in layer["inbound_nodes"]:
            node = node["args"] if isinstance(node, dict) else node
            for item in node:
                if isinstance(item, (list, tuple)):
                    edges.append((layer["config"]["name"], item[0], item[1], item[2]))
    return edges


def output_layer_names(model):
    """Names of the layers whose outputs are `model`'s outputs, from its config."""
    if isinstance(model, keras.Sequential):
        return {model.layers[-1].name}

    def names(entry):
        if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
            return {entry[0]}
        items = entry.values() if isinstance(entry, dict) else entry
        return set().union(*(names(item) for item in items))

    return names(model.get_config()["output_layers"])


def inbound_layer_names(model):
    """Layer name -> names of the layers feeding it, in order (see `inbound_edges`)."""
    inbound = {layer.name: [] for layer in model.layers}
    for reader, source, _, _ in inbound_edges(model):
        inbound[reader].append(source)
    return inbound


def consumers(model):
    """Layer name -> the layers of `model` that take its output."""
    out = {}
    for name, sources in inbound_layer_names(model).items():
        for source in sources:
            out.setdefault(source, []).append(model.get_layer(name))
    return out


def following_batchnorm(wrapper, consumers_of):
    """The BatchNormalization (possibly inside a QuantizeWrapper) that alone consumes the
    output of `wrapper`'s layer, with no activation in between; else None. `consumers_of` is
    `consumers(model)`."""
    inner = getattr(wrapper, "layer", wrapper)
    activation = getattr(inner, "activation", None)
    activation = getattr(activation, "activation", activation)  # tfmot's QuantizeAwareActivation
    name = getattr(activation, "__name__", type(activation).__name__)
    if activation is not None and name not in ("linear", "NoOpActivation"):
        return None
    taking = consumers_of.get(wrapper.name, [])
    if len(taking) != 1:
        return None
    batchnorm = getattr(taking[0], "layer", taking[0])
    if not isinstance(batchnorm, keras.layers.BatchNormalization):
        return None
    axis = batchnorm.axis if isinstance(batchnorm.axis, (list, tuple)) else [batchnorm.axis]
    if list(axis) not in ([-1], [len(wrapper.output_shape) - 1]):
        return None
    return batchnorm


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
