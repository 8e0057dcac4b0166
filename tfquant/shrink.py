"""`shrink`: removes the output channels and units a QAT model computes as exact zeros (or
that nothing reads), with the matching inputs of the layers after them, so that the smaller
network predicts what the pruned one does (structured pruning's last step, as in Wen et al.
2016 "Learning Structured Sparsity in Deep Neural Networks", Sec. 3).

A channel of Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D or Dense is *dead* when its
hard-quantized kernel slice is all zeros and the constant it then outputs (its bias through
the layer's activation and any BatchNormalization / activation / Dropout after it) is
exactly 0 where another layer mixes it in. A dead channel whose constant is not 0 (a bias
or a BatchNorm offset that survives the ReLU) is kept: folding that constant into the next
layer's bias would change the next layer's float sums, so the predictions would no longer
be bit-identical.
"""

import copy
import dataclasses
import warnings

import numpy as np
import tensorflow_model_optimization as tfmot

from tfquant._keras import (
    check_keras2_model,
    inbound_layer_names,
    keras,
    output_layer_names,
    quantized_weights,
    tf,
)

_PRODUCER_TYPES = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.Dense,
)
_DEPTHWISE = keras.layers.DepthwiseConv2D
_PER_CHANNEL = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.LeakyReLU,
    keras.layers.Dropout,
)
_POOLING = (
    keras.layers.MaxPooling1D,
    keras.layers.AveragePooling1D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)


@dataclasses.dataclass
class ShrinkReport:
    """What `tfq.shrink` removed: output channels (units for Dense) of every Conv1D, Conv2D,
    Conv2DTranspose, DepthwiseConv2D and Dense layer (a SeparableConv2D as its two parts)
    before and after, keyed by the QAT layer's name.

    Example:
      >>> report = ShrinkReport({"quant_conv1": (16, 9), "quant_fc1": (64, 64)})
      >>> report.removed
      {'quant_conv1': 7}
      >>> print(report)
      quant_conv1: 16 -> 9 channels
      quant_fc1: 64 -> 64 channels
      >>> ShrinkReport(**report.get_config()) == report
      True
    """

    channels: dict  # layer name -> (before, after)

    def __post_init__(self):
        self.channels = {name: (int(a), int(b)) for name, (a, b) in self.channels.items()}

    @property
    def removed(self):
        """Layer name -> number of channels removed, for the layers that lost any."""
        return {name: a - b for name, (a, b) in self.channels.items() if a != b}

    def get_config(self):
        return {"channels": {name: list(pair) for name, pair in self.channels.items()}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __str__(self):
        return "\n".join(f"{name}: {a} -> {b} channels" for name, (a, b) in self.channels.items())


def _inner(layer):
    return getattr(layer, "layer", layer)


def _elementwise(inner):
    """False for a softmax activation (it mixes the channels)."""
    return "softmax" not in str(inner.get_config().get("activation", ""))


def _is_producer(inner):
    """A Conv1D, Conv2D, Conv2DTranspose (not grouped) or Dense layer. (A SeparableConv2D is
    one too: `tfq.quantize_model` splits it into a DepthwiseConv2D and a 1x1 Conv2D.)"""
    return type(inner) in _PRODUCER_TYPES and getattr(inner, "groups", 1) == 1


def _is_transposed(inner):
    return type(inner) is keras.layers.Conv2DTranspose


def _output_axis(inner):
    """The kernel axis of a producer's output channels (Conv2DTranspose: [h, w, out, in])."""
    return -2 if _is_transposed(inner) else -1


def _io_view(inner, kernel):
    """A producer's kernel as [taps, inputs, outputs] (Conv2DTranspose stores [h, w, out, in])."""
    if _is_transposed(inner):
        kernel = np.swapaxes(kernel, -1, -2)
    return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])


def _is_depthwise(inner):
    return type(inner) is _DEPTHWISE


def _is_per_channel(inner):
    return isinstance(inner, _PER_CHANNEL) and _elementwise(inner)


def _channels(layer):
    """Length of the last axis of `layer`'s output (positions for a Flatten)."""
    shape = layer.output_shape
    if isinstance(shape, list):
        shape = shape[0]
    if isinstance(_inner(layer), keras.layers.Flatten):
        return int(np.prod(shape[1:]))
    return int(shape[-1])


def _check(qmodel):
    _check_graph(qmodel, "qmodel", "QAT model from tfq.quantize_model")
    if not any(True for _ in quantized_weights(qmodel)):
        raise ValueError(
            "qmodel must be a QAT model from tfq.quantize_model (it has no quantized "
            f"weights). Received: qmodel {qmodel.name!r}"
        )


def _hard_kernels(qmodel):
    """Wrapper name -> the kernel as its quantizer maps it (numpy)."""
    out = {}
    for wrapper, weight, quantizer, state in quantized_weights(qmodel):
        out[wrapper.name] = np.asarray(quantizer.hard_quantize(weight, state))
    for layer in qmodel.layers:
        inner = _inner(layer)
        if layer.name not in out and (_is_producer(inner) or _is_depthwise(inner)):
            kernel = inner.depthwise_kernel if _is_depthwise(inner) else inner.kernel
            out[layer.name] = kernel.numpy()
    return out


def _probe(layer, constants, zeros_input=False):
    """Runs `layer` (in inference mode) on one sample that holds `constants` per channel
    (or all zeros, `zeros_input`) and returns its output per channel (first position)."""
    shape = layer.input_shape
    shape = [1] + [1 if d is None else int(d) for d in shape[1:]]
    if zeros_input:
        sample = tf.zeros(shape)
    else:
        sample = tf.broadcast_to(tf.constant(constants, tf.float32), shape)
    out = np.asarray(layer(sample, training=False))
    return out.reshape(-1, out.shape[-1])[0]


def _values(qmodel, inbound, kernels):
    """Layer name -> per output channel: the constant it always outputs, or NaN (unknown).
    Only constants that the layers compute exactly are tracked (see module docstring)."""
    values = {}
    for layer in qmodel.layers:
        inner, sources = _inner(layer), inbound.get(layer.name, [])
        size = _channels(layer)
        value = np.full(size, np.nan, np.float32)
        inputs = [values[s] for s in sources]
        if (_is_producer(inner) or _is_depthwise(inner)) and inputs:
            kernel = kernels[layer.name]
            if _is_depthwise(inner):
                multiplier = kernel.shape[-1]
                dead = np.all(kernel.reshape(-1, size) == 0, axis=0)
                dead |= np.repeat(inputs[0] == 0, multiplier)
            else:
                dead = np.all(_io_view(inner, kernel).reshape(-1, size) == 0, axis=0)
            if dead.any() and _elementwise(inner):
                value = np.where(dead, _probe(layer, None, zeros_input=True), np.nan)
        elif _is_per_channel(inner) and inputs:
            known = ~np.isnan(inputs[0])
            if known.any():
                out = _probe(layer, np.where(known, inputs[0], 0.0))
                value = np.where(known, out, np.nan).astype(np.float32)
        elif isinstance(inner, _POOLING) and inputs:
            value = np.where(inputs[0] == 0, 0.0, np.nan).astype(np.float32)
        elif isinstance(inner, keras.layers.Flatten) and inputs:
            value = np.tile(inputs[0], size // inputs[0].size)
        elif isinstance(inner, keras.layers.Add) and inputs:
            value = np.where(np.all([v == 0 for v in inputs], axis=0), 0.0, np.nan)
        elif isinstance(inner, keras.layers.Concatenate) and _last_axis(inner) and inputs:
            value = np.concatenate(inputs)
        values[layer.name] = value.astype(np.float32)
    return values


def _last_axis(concatenate):
    return concatenate.axis in (-1, len(concatenate.input_shape[0]) - 1)


def _needed(qmodel, inbound, values, kernels):
    """Layer name -> boolean mask over its output channels that the shrunk model must keep,
    the least fixed point of the rules in `shrink`'s docstring."""
    layers = qmodel.layers
    needed = {layer.name: np.zeros(_channels(layer), bool) for layer in layers}
    for name in output_layer_names(qmodel):
        if name in needed:
            needed[name][:] = True
    for layer in layers:  # the model's inputs (and layers fed by them directly) keep every
        if not inbound.get(layer.name):  # feature: shrink never changes the input shape
            needed[layer.name][:] = True

    def grow(name, mask):
        new = needed[name] | mask
        changed = not np.array_equal(new, needed[name])
        needed[name] = new
        return changed

    changed = True
    while changed:
        changed = False
        for layer in reversed(layers):
            inner, sources = _inner(layer), inbound.get(layer.name, [])
            if not sources:
                continue
            out = needed[layer.name]
            if _is_depthwise(inner):
                groups = out.reshape(-1, kernels[layer.name].shape[-1]).any(axis=1)
                changed |= grow(sources[0], groups)
                changed |= grow(layer.name, np.repeat(needed[sources[0]], out.size // groups.size))
            elif _is_producer(inner):
                rows = _io_view(inner, kernels[layer.name])  # [taps, in, out]
                read = np.any(rows[:, :, out] != 0, axis=(0, 2))
                changed |= grow(sources[0], read & (values[sources[0]] != 0))
            elif _is_per_channel(inner) or isinstance(inner, _POOLING):
                changed |= grow(sources[0], out)
                changed |= grow(layer.name, needed[sources[0]])
            elif isinstance(inner, keras.layers.Flatten):
                channels = needed[sources[0]].size
                by_channel = out.reshape(-1, channels).any(axis=0)
                changed |= grow(sources[0], by_channel)
                changed |= grow(layer.name, np.tile(needed[sources[0]], out.size // channels))
            elif isinstance(inner, keras.layers.Add):
                union = out | np.any([needed[s] for s in sources], axis=0)
                for name in (layer.name, *sources):
                    changed |= grow(name, union)
            elif isinstance(inner, keras.layers.Concatenate) and _last_axis(inner):
                offsets = np.cumsum([0] + [needed[s].size for s in sources])
                for index, source in enumerate(sources):
                    changed |= grow(source, out[offsets[index] : offsets[index + 1]])
                changed |= grow(layer.name, np.concatenate([needed[s] for s in sources]))
            else:  # any other layer (or the model input) reads every channel it is given
                for source in sources:
                    changed |= grow(source, np.ones_like(needed[source]))
                changed |= grow(layer.name, np.ones_like(out))
    return needed


def _rebuilt(qmodel, counts):
    """A new model from `qmodel`'s config with the output channel counts `counts` (layer
    name -> filters / units of a Conv1D, Conv2D, Conv2DTranspose or Dense layer); every other
    shape follows from them. Its weights are fresh (not copied)."""
    config = copy.deepcopy(qmodel.get_config())
    for entry in config["layers"]:
        entry.pop("build_config", None)
        layer_config = entry["config"]
        inner = layer_config.get("layer", entry)
        inner.pop("build_config", None)
        name = layer_config.get("name")
        if name in counts:
            key = "units" if "units" in inner["config"] else "filters"
            inner["config"][key] = int(counts[name])
    with tfmot.quantization.keras.quantize_scope():
        if isinstance(qmodel, keras.Sequential):
            return keras.Sequential.from_config(config)
        return keras.Model.from_config(config)


def _kernel_variables(qmodel):
    """Layer name -> (kernel variable, axis of its output channels) for every layer whose
    output channel count `shrink` can change."""
    quantized = {wrapper.name: weight for wrapper, weight, _, _ in quantized_weights(qmodel)}
    out = {}
    for layer in qmodel.layers:
        inner = _inner(layer)
        if _is_producer(inner):
            kernel = quantized.get(layer.name, getattr(inner, "kernel", None))
            out[layer.name] = (kernel, _output_axis(inner))
    return out


def _shrunk_like(qmodel, kernel_shapes):
    """`qmodel`'s architecture with fewer output channels: the model `tfq.shrink` would have
    built, rebuilt from the shapes of its kernels (what `tfq.coding.decompress` does when it
    is given the unshrunk model).

    Args:
      qmodel: a Sequential or functional QAT model from `tfq.quantize_model` (not modified).
      kernel_shapes: dict, kernel variable `ref()` -> the shrunk kernel's shape, for the
        Conv1D, Conv2D, Conv2DTranspose and Dense kernels (others are ignored).

    Returns:
      `(model, report)`: a new QAT model (fresh weights, not compiled) and a `ShrinkReport`
      of the channel counts, or `(None, report)` when no count differs.

    Raises:
      ValueError: a shape whose rank differs from the model's kernel, or that has more
        output channels than the model's.
    """
    counts, channels = {}, {}
    for name, (kernel, axis) in _kernel_variables(qmodel).items():
        shape = tuple(kernel.shape)
        stored = tuple(kernel_shapes.get(kernel.ref(), shape))
        if len(stored) != len(shape) or stored[axis] > shape[axis]:
            raise ValueError(
                f"kernel_shapes[{kernel.name!r}] must be layer {name!r}'s kernel with at most "
                f"{shape[axis]} output channels (axis {axis}), as tfq.shrink leaves it. "
                f"Received: a kernel of shape {stored}, the model's is {shape}"
            )
        channels[name] = (shape[axis], stored[axis])
        if stored[axis] != shape[axis]:
            counts[name] = stored[axis]
    report = ShrinkReport(channels)
    return (_rebuilt(qmodel, counts) if counts else None), report


def _short_name(variable):
    return variable.name.split("/")[-1].split(":")[0]


def _slice_weight(array, inner, in_keep, out_keep, kernel_shape):
    """`array` (the kernel, or a kernel-shaped array) with the removed channels cut out."""
    del kernel_shape
    if _is_depthwise(inner):
        return array[:, :, in_keep, :]
    if _is_transposed(inner):
        return array[..., out_keep, :][..., in_keep]
    return array[..., in_keep, :][..., out_keep]


def _slice_vector(array, inner, in_keep, out_keep, multiplier=1):
    """A per-channel vector (bias, BatchNorm statistics, per-channel quantizer values)."""
    if _is_depthwise(inner):
        index = (np.repeat(in_keep, multiplier) * multiplier).reshape(-1, multiplier)
        return array[(index + np.arange(multiplier)).ravel()]
    if _is_producer(inner):
        return array[out_keep]
    return array[in_keep]


def shrink(qmodel):
    """Returns a smaller copy of a pruned QAT model without its dead channels and units.

    A Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D or Dense output channel (a
    SeparableConv2D's: the pointwise part's, its depthwise part's with its inputs: the QAT
    model holds it as those two layers) is removed when the model computes it
    as exactly 0 wherever it is read (its hard-quantized kernel slice is all zeros, e.g.
    after `tfq.callbacks.GradualPruning(structure="channel")`, and its bias, BatchNorm and
    activation leave the constant 0), or when no kept layer reads it (every consumer's
    hard-quantized kernel slice for it is zero). With it go the matching inputs of the layers
    that read it, through BatchNormalization, activations, Dropout and pooling (entries
    dropped), Flatten (channels-last: its positions in the flat vector), DepthwiseConv2D
    (that depthwise channel and its BatchNorm), Add (a channel stays if any branch or any
    reader of the sum needs it) and Concatenate (by offsets). Other layers keep every input
    channel. A dead channel that outputs a non-zero constant (a bias or a BatchNorm offset
    that survives its activation) is kept, not folded, so the result stays bit-identical.

    The new model keeps the quantizers and their state: codebooks, zero thresholds and
    schedule scalars copied, kernel-shaped state (`frozen_mask`) and per-channel values
    sliced like the kernel. On the same inputs it predicts what `qmodel` predicts, bit for
    bit in the tests' planted cases; a removed zero term can change the float summation
    order of the kept ones (CPU kernels block dot products by their length), which on rare
    inputs moves an activation across a rounding boundary of its 8-bit fake quantization
    (seen: 1 of 360 digits, one output step). `tfq.export.to_tflite` exports it exactly.
    `qmodel` is not modified.

    The shrunk model saves and loads like any QAT model (`tfq.load_model`), exports with
    `tfq.export.to_tflite` / `to_micro`, and `tfq.coding.compress` stores only its kept
    channels; `tfq.coding.decompress` rebuilds it from the container and the unshrunk QAT
    model (the kernels' shapes give the channel counts), or restores into a shrunk one.

    Args:
      qmodel: a Sequential or functional QAT model from `tfq.quantize_model`, each layer
        used once.

    Returns:
      `(shrunk, report)`: the new QAT model (not compiled) and a `ShrinkReport`. With
      nothing to remove, a `UserWarning` says so and `shrunk` is an equal copy.

    Raises:
      TypeError: `qmodel` is not a tf_keras model.
      ValueError: a subclassed model, a model without quantized weights, a shared layer,
        or a quantizer whose values for the kept weights change when the removed ones are
        cut out (one that derives its levels from the whole kernel, e.g. a per-layer
        ternary threshold).

    Example:
      >>> import tfquant as tfq
      >>> tfq.keras.utils.set_random_seed(0)
      >>> model = tfq.keras.Sequential([tfq.keras.Input((4,)),
      ...     tfq.keras.layers.Dense(3, activation="relu", name="hidden"),
      ...     tfq.keras.layers.Dense(2, name="out")])
      >>> kernel = model.get_layer("hidden").kernel
      >>> _ = kernel.assign(kernel * [1.0, 0.0, 1.0])  # unit 1 of "hidden" is dead
      >>> scheme = tfq.schemes.Multivalued(  # zeros quantize to 0 in "hidden"
      ...     bits=2, sparsity=0.4, layers={"out": {"sparsity": 0.0}})
      >>> shrunk, report = tfq.shrink(tfq.quantize_model(model, scheme))
      >>> report.removed
      {'quant_hidden': 1}
    """
    _check(qmodel)
    shrunk, report, _ = _shrink(qmodel)
    return shrunk, report


def _check_graph(model, argument, kind="model"):
    """A Sequential or functional tf_keras model, each layer called once."""
    check_keras2_model(model, argument)
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise ValueError(
            f"{argument} must be a Sequential or functional {kind}. "
            f"Received: {argument} of type {type(model).__name__} (a subclassed model)"
        )
    if isinstance(model, keras.Sequential):
        return
    for layer in model.get_config()["layers"]:  # this model's calls only: tfmot leaves some
        calls = len(layer["inbound_nodes"])  # layers (MaxPooling1D) shared with the float model
        if calls > 1:
            raise ValueError(
                f"{argument} uses layer {layer['config']['name']!r} {calls} times; shrink "
                "supports each layer called once. Received: a shared layer"
            )


def _keep_masks(model):
    """`(keep, inbound, kernels)`: layer name -> the output channels a shrunk `model` keeps."""
    inbound = inbound_layer_names(model)
    kernels = _hard_kernels(model)
    values = _values(model, inbound, kernels)
    return _needed(model, inbound, values, kernels), inbound, kernels


def _shrink(qmodel, warn=True):
    """`shrink` for a QAT or a float model: `(shrunk, report, keep)`, keep as `_keep_masks`."""
    keep, inbound, kernels = _keep_masks(qmodel)
    layers = {layer.name: layer for layer in qmodel.layers}

    channels = {}
    for layer in qmodel.layers:
        inner = _inner(layer)
        if _is_producer(inner) or _is_depthwise(inner):
            channels[layer.name] = (keep[layer.name].size, int(keep[layer.name].sum()))
    report = ShrinkReport(channels)
    if warn and not report.removed and all(mask.all() for mask in keep.values()):
        warnings.warn(
            f"shrink found nothing to remove in qmodel {qmodel.name!r}: no Conv1D, Conv2D, "
            "Conv2DTranspose, DepthwiseConv2D or Dense channel is exactly zero where it is "
            "read. Returning a copy.",
            stacklevel=2,
        )
    counts = {
        layer.name: after
        for layer in qmodel.layers
        if _is_producer(_inner(layer))
        for before, after in [channels[layer.name]]
        if before != after
    }
    shrunk = _rebuilt(qmodel, counts)
    _copy_sliced(qmodel, shrunk, layers, inbound, keep, kernels)
    return shrunk, report, keep


def _copy_sliced(qmodel, shrunk, layers, inbound, keep, kernels):
    """Copies every weight of `qmodel` into `shrunk`, cut to the kept channels: kernels and
    kernel-shaped quantizer state like the kernel; biases, BatchNorm vectors and per-channel
    quantizer values per channel; everything else (codebooks, thresholds, ranges) as it is."""
    states = {w.name: (q, s) for w, _, q, s in quantized_weights(qmodel)}
    for target in shrunk.layers:
        source = layers[target.name]
        inner = _inner(source)
        sources = inbound.get(source.name, [])
        in_keep = np.flatnonzero(keep[sources[0]]) if sources else None
        out_keep = np.flatnonzero(keep[source.name])
        kernel = getattr(inner, "depthwise_kernel", getattr(inner, "kernel", None))
        shape = tuple(kernel.shape) if kernel is not None else None
        multiplier = shape[-1] if _is_depthwise(inner) else 1
        quantizer, state = states.get(source.name, (None, {}))
        per_channel = (
            {id(v) for v in state.values()} if getattr(quantizer, "per_channel", 0) else ()
        )
        vectors = {id(v) for v in inner.weights if v.shape.rank == 1}
        channels = _channels(source)
        targets = {_short_name(v): v for v in target.weights}
        for variable in source.weights:
            array = variable.numpy()
            if in_keep is None or array.ndim == 0:
                pass
            elif shape is not None and array.shape == shape:
                array = _slice_weight(array, inner, in_keep, out_keep, shape)
            elif (id(variable) in vectors or id(variable) in per_channel) and (
                array.shape[0] == channels
            ):
                array = _slice_vector(array, inner, in_keep, out_keep, multiplier)
            destination = targets[_short_name(variable)]
            if tuple(destination.shape) != array.shape:
                raise ValueError(
                    f"shrink cannot cut weight {variable.name!r} of layer {source.name!r} to "
                    f"shape {tuple(destination.shape)} (got {array.shape}); layer type "
                    f"{type(inner).__name__} is not supported there"
                )
            destination.assign(array)
    _check_quantizers(shrunk, inbound, keep, kernels)


def _check_quantizers(shrunk, inbound, keep, kernels):
    """Every shrunk kernel must quantize to the kept part of the original hard kernel."""
    for wrapper, weight, quantizer, state in quantized_weights(shrunk):
        inner = _inner(wrapper)
        source = inbound.get(wrapper.name, [None])[0]
        in_keep = np.flatnonzero(keep[source])
        expected = _slice_weight(
            kernels[wrapper.name],
            inner,
            in_keep,
            np.flatnonzero(keep[wrapper.name]),
            kernels[wrapper.name].shape,
        )
        got = np.asarray(quantizer.hard_quantize(weight, state))
        if not np.array_equal(got, expected):
            raise ValueError(
                f"qmodel's layer {wrapper.name!r} has a {type(quantizer).__name__} whose "
                "values depend on the whole kernel (its levels are computed from all of "
                "its weights), so cutting channels out would change the kept ones. Shrink "
                "supports quantizers that keep their levels in variables (Multivalued) or "
                f"per channel. Received: quantizer {quantizer.get_config()}"
            )


__all__ = ["shrink", "ShrinkReport"]
