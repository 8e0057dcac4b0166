"""`quantize_model`, `quantize_apply` and `quantize_annotate_layer`: tfmot's QAT entry points
with a tfquant scheme, input checks that leave the user's model untouched, codebook
initialization from the trained weights, and one warning naming every weight-carrying layer
that stays float (and why).
"""

import warnings

import numpy as np
import tensorflow_model_optimization as tfmot

from tfquant._keras import (
    check_keras2_model,
    inbound_layer_names,
    is_annotated,
    keras,
    quantized_weights,
)
from tfquant.configs.layer import (
    SUPPORTED_LAYERS,
    SeparableQuantizeConfig,
    is_separable,
    supported_weight_attribute,
)
from tfquant.quantizers.base import TfquantQuantizer
from tfquant.schemes import BoundScheme, LearnedBasis, Scheme, separable_parts

_SUPPORTED = SUPPORTED_LAYERS


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


def _quantizable_layers(model, scheme):
    return [layer for layer in model.layers if scheme.quantizes(_unwrap(layer))]


def _kernel_names(model, scheme):
    """Names of the layers whose weights the scheme quantizes, in model order, as they are
    named in the QAT model (a SeparableConv2D is its two parts, `separable_parts`)."""
    names = []
    for layer in model.layers:
        inner = _unwrap(layer)
        if is_separable(inner) and (is_annotated(layer) or layer is inner):
            names += separable_parts(inner.name)
        elif scheme.quantizes(inner):
            names.append(inner.name)
    return names


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


def _check_importance(importance, model=None, scheme=None):
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
    for layer in _quantizable_layers(model, scheme):
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
    return _apply(model, scheme, importance)


def _apply(model, scheme, importance):
    """`quantize_apply`; warnings name the caller of the public function (stacklevel 3)."""
    check_keras2_model(model)
    _check_scheme(scheme)
    _check_graph_model(model)
    _check_finite(model)
    _check_embedding_inputs(model)
    _check_importance(importance, model, scheme)
    eight_bit = []
    if scheme.keep_first_last_8bit:
        names = _kernel_names(model, scheme)
        eight_bit = sorted({names[0], names[-1]}) if names else []
        if names and len(eight_bit) == len(names):
            warnings.warn(
                f"keep_first_last_8bit=True keeps the first and last quantized layers at "
                f"8-bit uniform weights, and this model has only {len(names)}: "
                f"{', '.join(map(repr, names))} all get 8-bit weights and none gets the "
                f"{type(scheme).__name__} quantizer. Pass keep_first_last_8bit=False to the "
                "scheme to quantize them with it"
                + (
                    " (LearnedBasis sets it by default)."
                    if isinstance(scheme, LearnedBasis)
                    else "."
                ),
                stacklevel=3,
            )
    model = _prepare_annotations(model, scheme, eight_bit)
    with tfmot.quantization.keras.quantize_scope():
        qmodel = tfmot.quantization.keras.quantize_apply(model, BoundScheme(scheme, eight_bit))
    initialize_quantizers(qmodel, importance)
    return qmodel


def quantize_model(model, scheme, importance=None):
    """Returns a quantization-aware copy of `model` that trains with `scheme`'s quantizers.

    These weights get the scheme's quantizer (whose codebook is placed from the trained
    weights now), and `tfq.export.to_tflite` stores them as exactly the trained codes:

    - Conv1D, Conv2D and DepthwiseConv2D kernels (TFLite: CONV_2D, DEPTHWISE_CONV_2D);
    - Conv2DTranspose kernels (TRANSPOSE_CONV), per output channel where the scheme is;
    - SeparableConv2D: tfmot splits it into a DepthwiseConv2D and a 1x1 Conv2D, named
      `<name>_depthwise` and `<name>_pointwise` in the QAT model, each quantized;
    - Dense kernels, on inputs of any rank (3-D inputs: FULLY_CONNECTED between reshapes,
      the bias then a separate int8 ADD);
    - Embedding tables (GATHER), under per-layer schemes only: GATHER carries one scale per
      table. The model input feeding an Embedding must be integer (`dtype="int32"`).

    Other layers are handled exactly as by tfmot's 8-bit `quantize_model` (BatchNorm
    patterns, activations, Add, pooling). One `UserWarning` names every layer with weights
    that stays float and why (recurrent layers, LayerNormalization, a nested model, an
    Embedding under a per-channel scheme, other layer types); none is emitted when every
    weight is quantized. If some layers of `model` are already annotated with
    `quantize_annotate_layer`, only those are quantized, without that warning. With
    `keep_first_last_8bit` on a model of at most two quantized layers, a warning says that
    all of them get 8-bit weights.

    Args:
      model: a built Sequential or functional `tfq.keras` model.
      scheme: a `tfq.schemes` scheme.
      importance: per-weight importance for divisions that need it ("hessian_kmeans"): a dict
        layer name -> array of the kernel's shape, e.g. `tfq.coding.hessian_diagonal(...)`.

    Returns:
      A new Keras model; `model` is not modified. Compile and `fit` it as usual.

    Raises:
      TypeError: Keras 3 model, not a model, or not a tfquant scheme.
      ValueError: unbuilt or subclassed model, no quantizable layer, non-finite weights, an
        Embedding fed by a float model input.

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
    if not _kernel_names(model, scheme):
        raise ValueError(
            f"model has no layer tfquant can quantize ({_SUPPORTED}). "
            f"Received: layers {[type(layer).__name__ for layer in model.layers]}"
        )
    already_annotated = any(is_annotated(layer) for layer in model.layers)
    annotated = model if already_annotated else _annotate_all(model, scheme)
    qmodel = _apply(annotated, scheme, importance)
    if not already_annotated:
        _warn_float_layers(qmodel, scheme)
    return qmodel


def _check_embedding_inputs(model):
    """An Embedding fed straight from a float model input would see its token ids
    fake-quantized to 8 bits in training (and need a float CAST in TFLite): refuse it."""
    inbound = inbound_layer_names(model)
    for layer in model.layers:
        if not isinstance(_unwrap(layer), keras.layers.Embedding):
            continue
        for source in inbound.get(layer.name, []):
            source = model.get_layer(source)
            if isinstance(source, keras.layers.InputLayer) and source.dtype.startswith("float"):
                raise ValueError(
                    f"the Embedding {layer.name!r} takes the float model input "
                    f"{source.name!r}: quantization would round its token ids to an 8-bit grid. "
                    "Build that input with integer ids, e.g. "
                    "tfq.keras.Input(shape, dtype='int32'). Received: input dtype "
                    f"{source.dtype}"
                )


def _annotate_all(model, scheme):
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if scheme.quantizes(layer) or is_separable(layer) or registry.supports(layer):
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        return layer

    return keras.models.clone_model(model, clone_function=annotate)


# The layer types tfmot's BatchNorm transforms fold a following BatchNormalization into.
_BATCHNORM_FOLDED_AFTER = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


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
        if is_annotated(source) and type(_unwrap(source)) in _BATCHNORM_FOLDED_AFTER:
            names.append(layer.name)
    return names


def _concatenate_feeders(model, scheme):
    """Names of the annotated layers `scheme` quantizes (SeparableConv2D included) without a
    config of their own whose output goes straight into a Concatenate: tfmot's Concatenate
    transform would give them its 8-bit config instead of the scheme's."""
    names = set()
    for name, sources in inbound_layer_names(model).items():
        if not isinstance(_unwrap(model.get_layer(name)), keras.layers.Concatenate):
            continue
        for source in sources:
            layer = model.get_layer(source)
            if (
                is_annotated(layer)
                and (scheme.quantizes(_unwrap(layer)) or is_separable(_unwrap(layer)))
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
    feeders = _concatenate_feeders(model, scheme)
    if not batchnorms and not feeders:
        return model

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if layer.name in batchnorms:
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        if layer.name in feeders:
            inner = _unwrap(layer)
            if is_separable(inner):
                parts = separable_parts(inner.name)
                config = SeparableQuantizeConfig(
                    scheme.config_for(inner, parts[0] in eight_bit).depthwise,
                    scheme.config_for(inner, parts[1] in eight_bit).pointwise,
                )
            else:
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
    """Marks one layer to be quantized with `scheme`: a Conv1D, Conv2D, Conv2DTranspose,
    DepthwiseConv2D, SeparableConv2D (its depthwise and pointwise kernels, as the layers
    `<name>_depthwise` and `<name>_pointwise` of the QAT model), Dense or Embedding (per-layer
    schemes only: TFLite's GATHER holds one scale per table).

    Use it while building a model to quantize only some layers, then call `quantize_model`
    (or `quantize_apply`) on the model.

    Args:
      layer: a `tfq.keras` layer of one of those types.
      scheme: a `tfq.schemes` scheme.

    Returns:
      The layer wrapped in tfmot's `QuantizeAnnotate` with this scheme's config.

    Raises:
      ValueError: `layer` is of a type `scheme` does not quantize (named in the message).

    Example:
      >>> import tfquant as tfq
      >>> layer = tfq.quantize_annotate_layer(
      ...     tfq.keras.layers.Conv1D(4, 3), tfq.schemes.Multivalued(bits=2))
      >>> type(layer.quantize_config).__name__
      'LayerQuantizeConfig'
    """
    _check_scheme(scheme)
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"layer must be a tfq.keras layer. Received: layer={layer!r}")
    if not (scheme.quantizes(layer) or is_separable(layer)):
        reason = ""
        if supported_weight_attribute(layer):
            reason = f" ({_float_reason(layer, scheme)})"
        raise ValueError(
            f"layer must be one of {_SUPPORTED}{reason}. Received: layer {layer.name!r} of "
            f"type {type(layer).__name__} with scheme {scheme!r}"
        )
    return tfmot.quantization.keras.quantize_annotate_layer(layer, scheme.config_for(layer))


def _float_reason(layer, scheme):
    """Why tfquant leaves `layer` (a layer with weights) float, and what export does with it;
    the export behaviour was measured on this TensorFlow (see tests/test_layer_coverage.py)."""
    kind = type(layer).__name__
    if supported_weight_attribute(layer) and not scheme.quantizes(layer):
        return (
            f"{kind} under a per-channel scheme: TFLite's GATHER carries one scale for the "
            "whole table, so per-channel codes cannot be stored exactly; it stays float and "
            "the converter rounds the table to int8 itself. A per-layer scheme (Multivalued, "
            "or per_channel=False) quantizes it"
        )
    if isinstance(layer, keras.Model):
        return (
            f"nested {kind}: tfquant does not quantize inside a model used as a layer (the "
            "converter rounds its weights to int8 itself); quantize it separately or build "
            "the outer model from its layers"
        )
    if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
        return (
            f"{kind}: recurrent kernels are not supported; they stay float (and the full-int8 "
            "export of an LSTM fails: the converter cannot lower its TensorList ops)"
        )
    if isinstance(layer, keras.layers.LayerNormalization):
        return (
            f"{kind}: gamma and beta are a per-feature scale and offset, not a kernel; they "
            "stay float in training and the converter computes the normalization with int8 "
            "MEAN, RSQRT, MUL and ADD ops"
        )
    if isinstance(layer, keras.layers.BatchNormalization):
        return (
            f"{kind}: tfmot folds a BatchNormalization into the kernel only directly after a "
            "Conv2D, DepthwiseConv2D or Dense; this one stays float in training and the file "
            "computes it as int8 MUL and ADD"
        )
    return (
        f"{kind}: neither tfquant nor tfmot quantizes this layer type; the converter rounds "
        "its weights to int8 itself, if it can"
    )


def _float_layers(qmodel, scheme):
    """`(name, reason)` for every layer of `qmodel` (quantized with `scheme`) that has weights
    and no quantizer."""
    out = []
    for layer in qmodel.layers:
        wrapped = isinstance(layer, tfmot.quantization.keras.QuantizeWrapper)
        # tfmot's QuantizeLayer (input fake quantization) holds only its range variables.
        if wrapped or not layer.weights or type(layer).__name__ == "QuantizeLayer":
            continue
        out.append((layer.name, _float_reason(layer, scheme)))
    return out


def _warn_float_layers(qmodel, scheme):
    found = _float_layers(qmodel, scheme)
    if found:
        warnings.warn(
            "tfquant leaves these layers float: "
            + ", ".join(f"{name!r} ({reason})" for name, reason in found)
            + f". tfquant quantizes {SUPPORTED_LAYERS}.",
            stacklevel=3,
        )
