"""`quantize_model`, `quantize_apply` and `quantize_annotate_layer`: tfmot's QAT entry points
with a tfquant scheme, input checks that leave the user's model untouched, and codebook
initialization from the trained weights.
"""

import numpy as np
import tensorflow_model_optimization as tfmot

from tfquant._keras import (
    check_keras2_model,
    inbound_layer_names,
    is_annotated,
    keras,
    quantized_weights,
)
from tfquant.configs.layer import supported_weight_attribute
from tfquant.quantizers.base import TfquantQuantizer
from tfquant.schemes import BoundScheme, Scheme

_SUPPORTED = "Conv2D, DepthwiseConv2D, Dense"


def _check_scheme(scheme):
    if not isinstance(scheme, Scheme):
        raise TypeError(
            "scheme must be a tfquant scheme: tfq.schemes.Multivalued, Ternary, LearnedBasis "
            f"or Uniform. Received: scheme={scheme!r}"
        )


def _check_finite(model):
    for layer in model.layers:
        for weight in layer.weights:
            if weight.dtype.is_floating and not np.all(np.isfinite(weight.numpy())):
                raise ValueError(
                    f"model weights must be finite; layer {layer.name!r} has NaN or Inf in "
                    f"{weight.name!r}. Received: non-finite weights"
                )


def _unwrap(layer):
    return getattr(layer, "layer", layer)


def _quantizable_layers(model):
    return [layer for layer in model.layers if supported_weight_attribute(_unwrap(layer))]


def _check_graph_model(model):
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise ValueError(
            "model must be a Sequential or functional Keras model (tfmot cannot quantize "
            f"subclassed models). Received: model of type {type(model).__name__}"
        )


def initialize_quantizers(qmodel, importance=None):
    """Places every tfquant quantizer's codebook from its layer's current kernel.

    Args:
      qmodel: a QAT model. importance: optional dict layer name -> per-weight importance.
    """
    importance = importance or {}
    for wrapper, weight, quantizer, quantizer_vars in quantized_weights(qmodel):
        if isinstance(quantizer, TfquantQuantizer):
            extra = importance.get(_unwrap(wrapper).name)
            quantizer.initialize(weight.numpy(), quantizer_vars, importance=extra)


def _check_importance(importance, model=None):
    """`importance` must be None or a dict naming quantizable layers of `model`, each with a
    finite array of that layer's kernel shape."""
    if importance is None:
        return
    if not isinstance(importance, dict):
        raise TypeError(
            "importance must be a dict of layer name -> per-weight array, as returned by "
            "tfq.coding.hessian_diagonal. Received: importance of type "
            f"{type(importance).__name__}"
        )
    if model is None:
        return
    kernels = {}
    for layer in _quantizable_layers(model):
        inner = _unwrap(layer)
        kernels[inner.name] = tuple(getattr(inner, supported_weight_attribute(inner)).shape)
    for name, values in importance.items():
        if name not in kernels:
            raise ValueError(
                f"importance names layers the model does not quantize. Allowed: "
                f"{sorted(kernels)}. Received: importance[{name!r}]"
            )
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"importance[{name!r}] must be an array of numbers. Received: "
                f"{type(values).__name__}"
            ) from error
        if values.shape != kernels[name] or not np.all(np.isfinite(values)):
            raise ValueError(
                f"importance[{name!r}] must be a finite array of the kernel's shape "
                f"{kernels[name]}. Received: shape {values.shape}"
                + ("" if np.all(np.isfinite(values)) else " with NaN or Inf")
            )


def quantize_apply(model, scheme, importance=None):
    """Quantizes the annotated layers of `model` (see `quantize_annotate_layer`) with `scheme`.

    Args:
      model: a Keras 2 model whose layers to quantize are wrapped by
        `quantize_annotate_layer` (or tfmot's `quantize_annotate_layer`/`_model`).
      scheme: a `tfq.schemes` scheme; it also quantizes annotated layers that carry no config.
      importance: see `quantize_model`.

    Returns:
      A new QAT model; `model` is not modified.
    """
    check_keras2_model(model)
    _check_scheme(scheme)
    _check_graph_model(model)
    _check_finite(model)
    _check_importance(importance, model)
    eight_bit = []
    if scheme.keep_first_last_8bit:
        layers = _quantizable_layers(model)
        eight_bit = sorted({_unwrap(layers[0]).name, _unwrap(layers[-1]).name}) if layers else []
    model = _prepare_annotations(model, scheme, eight_bit)
    with tfmot.quantization.keras.quantize_scope():
        qmodel = tfmot.quantization.keras.quantize_apply(model, BoundScheme(scheme, eight_bit))
    initialize_quantizers(qmodel, importance)
    return qmodel


def quantize_model(model, scheme, importance=None):
    """Returns a quantization-aware copy of `model` that trains with `scheme`'s quantizers.

    Every Conv2D, DepthwiseConv2D and Dense kernel gets the scheme's quantizer (whose codebook
    is placed from the trained weights now); other layers are handled exactly as by tfmot's
    8-bit `quantize_model` (BatchNorm patterns, activations, Add, pooling). If some layers of
    `model` are already annotated with `quantize_annotate_layer`, only those are quantized.

    Args:
      model: a built Sequential or functional `tfq.keras` model.
      scheme: a `tfq.schemes` scheme.
      importance: per-weight importance for divisions that need it ("hessian_kmeans"): a dict
        layer name -> array of the kernel's shape, e.g. `tfq.coding.hessian_diagonal(...)`.

    Returns:
      A new Keras model; `model` is not modified. Compile and `fit` it as usual.

    Raises:
      TypeError: Keras 3 model, not a model, or not a tfquant scheme.
      ValueError: unbuilt or subclassed model, no quantizable layer, non-finite weights.

    Example:
      >>> import tfquant as tfq
      >>> model = tfq.keras.Sequential([tfq.keras.Input((4,)), tfq.keras.layers.Dense(3)])
      >>> qmodel = tfq.quantize_model(model, tfq.schemes.Ternary())
      >>> [type(layer).__name__ for layer in qmodel.layers]
      ['QuantizeLayer', 'QuantizeWrapperV2']
    """
    check_keras2_model(model)
    _check_scheme(scheme)
    _check_graph_model(model)
    wrapped = [
        layer.name
        for layer in model.layers
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper)
    ]
    if wrapped:
        raise ValueError(
            "model must be a float model: it is already quantized (its layers "
            f"{wrapped[:3]} are tfmot QuantizeWrappers). Received: model {model.name!r}"
        )
    if not _quantizable_layers(model):
        raise ValueError(
            f"model has no layer tfquant can quantize ({_SUPPORTED}). "
            f"Received: layers {[type(layer).__name__ for layer in model.layers]}"
        )
    already_annotated = any(is_annotated(layer) for layer in model.layers)
    annotated = model if already_annotated else _annotate_all(model)
    return quantize_apply(annotated, scheme, importance)


def _annotate_all(model):
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if supported_weight_attribute(layer) or registry.supports(layer):
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        return layer

    return keras.models.clone_model(model, clone_function=annotate)


def _folded_batchnorms(model):
    """Names of the BatchNormalization layers that directly follow an annotated Conv2D,
    DepthwiseConv2D or Dense layer (their one input) and are not annotated themselves."""
    inbound = inbound_layer_names(model)
    names = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        sources = inbound.get(layer.name, [])
        if len(sources) != 1:
            continue
        source = model.get_layer(sources[0])
        if is_annotated(source) and supported_weight_attribute(_unwrap(source)):
            names.append(layer.name)
    return names


def _concatenate_feeders(model):
    """Names of the annotated Conv2D, DepthwiseConv2D and Dense layers without a config of
    their own whose output goes straight into a Concatenate: tfmot's Concatenate transform
    would give them its 8-bit config instead of the scheme's."""
    names = set()
    for name, sources in inbound_layer_names(model).items():
        if not isinstance(_unwrap(model.get_layer(name)), keras.layers.Concatenate):
            continue
        for source in sources:
            layer = model.get_layer(source)
            if (
                is_annotated(layer)
                and supported_weight_attribute(_unwrap(layer))
                and getattr(layer, "quantize_config", None) is None
            ):
                names.add(source)
    return names


def _prepare_annotations(model, scheme, eight_bit):
    """A copy of `model` annotated the way tfmot's transforms need to give every kernel the
    scheme's quantizer and fold every BatchNorm (`model` itself if nothing changes):

    - a BatchNormalization after an annotated kernel layer is annotated too, so tfmot's
      Conv2D + BatchNorm (+ ReLU) transforms see the pattern and put no fake quantization
      between them, as at inference once the export folds the BatchNorm in
      (`tfquant.export.folding`);
    - a kernel layer that feeds a Concatenate gets the scheme's config explicitly.
    """
    batchnorms = set(_folded_batchnorms(model))
    feeders = _concatenate_feeders(model)
    if not batchnorms and not feeders:
        return model

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if layer.name in batchnorms:
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        if layer.name in feeders:
            inner = _unwrap(layer)
            config = scheme.config_for(inner, inner.name in eight_bit)
            return tfmot.quantization.keras.quantize_annotate_layer(
                inner.__class__.from_config(inner.get_config()), quantize_config=config
            )
        return layer.__class__.from_config(layer.get_config())

    with tfmot.quantization.keras.quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    return annotated


def quantize_annotate_layer(layer, scheme):
    """Marks one Conv2D, DepthwiseConv2D or Dense layer to be quantized with `scheme`.

    Use it while building a model to quantize only some layers, then call `quantize_model`
    (or `quantize_apply`) on the model.

    Args:
      layer: a `tfq.keras` Conv2D, DepthwiseConv2D or Dense layer.
      scheme: a `tfq.schemes` scheme.

    Returns:
      The layer wrapped in tfmot's `QuantizeAnnotate` with this scheme's config.

    Raises:
      ValueError: `layer` is of a type tfquant does not quantize (named in the message).
    """
    _check_scheme(scheme)
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"layer must be a tfq.keras layer. Received: layer={layer!r}")
    if supported_weight_attribute(layer) is None:
        raise ValueError(
            f"layer must be one of {_SUPPORTED}. Received: layer {layer.name!r} of type "
            f"{type(layer).__name__}"
        )
    return tfmot.quantization.keras.quantize_annotate_layer(layer, scheme.config_for(layer))
