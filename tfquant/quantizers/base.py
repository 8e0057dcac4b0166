"""Shared machinery of tfquant quantizers: the tfmot `Quantizer` contract, straight-through
rounding helpers, per-channel views and the export path (kernel constant -> one FakeQuant).

A tfquant quantizer keeps all of its state in variables created in `build` and computes its
output as a pure function of them. For export, `tfquant.export.to_tflite` copies the model,
writes the hard-quantized values into the copy's kernels and switches the copy's quantizers to
`export` mode, where the output is the kernel itself; after conversion the exact integer codes
on the grid of `grid_step` are written into the file.
"""

import numpy as np
import tensorflow_model_optimization as tfmot

from tfquant import _quiet
from tfquant._keras import keras, tf

_LEVELS_IN_INT8 = 127  # narrow-range int8 codes are -127..127


def export_codes(bits):
    """Largest narrow-range integer code for a `bits`-bit export (8 -> 127, 4 -> 7)."""
    return 2 ** (bits - 1) - 1


def channel_scale_view(kernel, quantizer):
    """[N, C] view of `kernel`, C = output channels if per-channel, else 1."""
    if quantizer.per_channel:
        return quantizer.channel_view(kernel)
    return tf.reshape(kernel, [-1, 1])


def from_channel_scale_view(values, kernel, quantizer):
    """Inverse of `channel_scale_view`: `values` back in `kernel`'s shape."""
    if quantizer.per_channel:
        return quantizer.from_channel_view(values)
    return tf.reshape(values, tf.shape(kernel))


def straight_through(inputs, quantized):
    """Returns `quantized` exactly in the forward pass and the identity gradient to `inputs`.

    (`inputs + stop_gradient(quantized - inputs)` would be off the codebook by rounding.)
    """
    return tf.stop_gradient(quantized) + (inputs - tf.stop_gradient(inputs))


_UNROLLED_MAX_LEVELS = 16


def _nearest_unrolled(values, levels):
    """Nearest level by one select per midpoint; `levels[..., j]` broadcasts against `values`.

    Selecting (not summing level differences) keeps every output exactly a level.
    """
    count = levels.shape[-1]
    quantized = tf.zeros_like(values) + levels[..., 0]
    index = tf.zeros_like(values, dtype=tf.int32)
    for j in range(count - 1):
        above = values > (levels[..., j] + levels[..., j + 1]) / 2.0
        quantized = tf.where(above, levels[..., j + 1] + tf.zeros_like(values), quantized)
        index += tf.cast(above, tf.int32)
    return quantized, index


# XLA fuses the unrolled selects into one pass over the weights: ~5x faster than
# searchsorted + gather on CPU for up to 16 levels (benchmarks/qat_overhead.py).
_nearest_unrolled_xla = tf.function(_nearest_unrolled, jit_compile=True)
# One trace per kernel shape is by design: keep TensorFlow's retracing warning about it quiet.
_quiet.hide_retracing_warnings("_nearest_unrolled")


def warm_up():
    """Compiles the search once on a tiny input with XLA's one-time log lines kept quiet
    (every quantizer's `build` calls it; see `_quiet.warm_up_xla`)."""
    _quiet.warm_up_xla(_nearest_unrolled_xla, tf.zeros([2]), tf.constant([0.0, 1.0]))


def nearest_level(values, levels):
    """Maps every entry of `values` to the nearest entry of the sorted 1-D `levels`.

    Ties go to the lower level (like `searchsorted(..., side="left")` on the midpoints).

    Args:
      values: float tensor of any shape.
      levels: sorted 1-D float tensor.

    Returns:
      `(quantized, index)`: the nearest levels (same shape as `values`) and their indices.
    """
    if levels.shape[-1] is not None and levels.shape[-1] <= _UNROLLED_MAX_LEVELS:
        return _nearest_unrolled_xla(values, levels)
    flat = tf.reshape(values, [-1])
    midpoints = (levels[1:] + levels[:-1]) / 2.0
    index = tf.searchsorted(midpoints, flat, side="left")
    return tf.reshape(tf.gather(levels, index), tf.shape(values)), tf.reshape(
        index, tf.shape(values)
    )


def nearest_level_per_channel(channel_values, levels):
    """Per-channel `nearest_level`: `channel_values` is [N, C], `levels` is sorted [C, L].

    Returns:
      `(quantized [N, C], index [N, C])`.
    """
    if levels.shape[-1] is not None and levels.shape[-1] <= _UNROLLED_MAX_LEVELS:
        return _nearest_unrolled_xla(channel_values, levels)
    by_channel = tf.transpose(channel_values)  # [C, N]
    midpoints = (levels[:, 1:] + levels[:, :-1]) / 2.0
    index = tf.searchsorted(midpoints, by_channel, side="left")
    quantized = tf.gather(levels, index, batch_dims=1)
    return tf.transpose(quantized), tf.transpose(index)


def snap_to_grid(values, step):
    """Rounds `values` to integer multiples of `step` (broadcasting), the int8 export grid."""
    return tf.round(values / step) * step


def safe_step(step):
    """Replaces a zero grid step (an all-zero tensor or channel) by 1 so FakeQuant stays valid."""
    return tf.where(step > 0, step, tf.ones_like(step))


class TfquantQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Base class of tfquant weight quantizers (not used directly).

    Subclasses implement `_build_vars`, `_quantize` (the training/inference forward with a
    straight-through gradient), `hard_quantize` (every value on the codebook), `grid_step`
    (the int8 export grid) and, if they need real weights to start from, `initialize`.
    """

    #: True if codebook and grid are per output channel.
    per_channel = False
    #: Allowed values per codebook (per channel for per-channel quantizers).
    levels = None
    #: Keys of the quantizer's variables that only steer training (schedule progress and
    #: bookkeeping): no forward pass, `hard_quantize`, `grid_step` or export reads them, so
    #: `tfq.coding.compress(..., include_training_state=False)` leaves them out.
    training_state = ()

    def build(self, tensor_shape, name, layer):
        with tf.init_scope():  # every route to a QAT model builds here (quantize, load, ...)
            warm_up()  # XLA's one-time notices now, quietly, not in the middle of a fit
        inner = getattr(layer, "layer", layer)
        self._depthwise = isinstance(inner, keras.layers.DepthwiseConv2D)
        # Conv2DTranspose kernels are [h, w, out, in]: output channels on the second-last axis.
        self._transposed = isinstance(inner, keras.layers.Conv2DTranspose)
        self._shape = tuple(tensor_shape) if tensor_shape is not None else None
        self._export = False
        return self._build_vars(tensor_shape, name, layer)

    # -- shape helpers ---------------------------------------------------------------------
    @property
    def num_channels(self):
        """Number of output channels of the kernel (depthwise: in_channels * multiplier;
        Conv2DTranspose: the second-last axis)."""
        if self._depthwise:
            return int(self._shape[-2] * self._shape[-1])
        if getattr(self, "_transposed", False):
            return int(self._shape[-2])
        return int(self._shape[-1])

    def channel_view(self, kernel):
        """Reshapes a kernel (tensor or array) to [N, C] with C output channels (TFLite's
        channel order)."""
        if getattr(self, "_transposed", False):
            kernel = tf.experimental.numpy.swapaxes(kernel, -1, -2)
        return tf.reshape(kernel, [-1, self.num_channels])

    def from_channel_view(self, values):
        """Inverse of `channel_view`: [N, C] back to the kernel's shape."""
        if getattr(self, "_transposed", False):
            swapped = (*self._shape[:-2], self._shape[-1], self._shape[-2])
            return tf.experimental.numpy.swapaxes(tf.reshape(values, swapped), -1, -2)
        return tf.reshape(values, self._shape)

    # -- contract ----------------------------------------------------------------------------
    def __call__(self, inputs, training, weights, **kwargs):
        if getattr(self, "_export", False):
            return self._export_fake_quant(inputs, weights)
        return self._quantize(inputs, training, weights)

    def prepare_export(self, kernel, weights, bits=8):
        """Switches this quantizer to export mode: its output is the kernel itself.

        The export copy's kernels already hold the hard-quantized values; the converter
        quantizes them (folding a following BatchNorm first) and `tfquant.export` then writes
        the exact codes, scales and biases into the file (`export.rewrite`). No FakeQuant is
        left on the kernel, so nothing stops the converter's folding.
        """
        del kernel, weights, bits
        self._export = True

    def _export_fake_quant(self, inputs, weights):
        del weights
        return inputs

    def codebook_floats(self):
        """Floats that describe one codebook (one per channel for per-channel quantizers):
        the centers themselves by default; a scale or a basis where the values follow from it.
        `tfq.summary` counts 4 bytes for each."""
        return int(self.levels)

    def initialize(self, kernel, weights, importance=None):
        """Sets the quantizer's state from the layer's current (float) kernel. Default: none.

        `importance` (per-weight, like the kernel) is for divisions that weight the weights.
        """
        del kernel, weights, importance

    def hard_quantize(self, kernel, weights):
        """Returns the kernel with every value replaced by its codebook value."""
        raise NotImplementedError

    def grid_step(self, kernel, weights, codes=_LEVELS_IN_INT8):
        """The export grid step (scalar, or [C] if `per_channel`) for codes in [-codes, codes].

        For `codes=127` (int8) every value `hard_quantize` produces is an integer multiple of
        the step with |multiple| <= 127; `export_exact` tells whether that holds for fewer codes.
        """
        raise NotImplementedError

    def codebook(self, kernel, weights):
        """The allowed values: a sorted 1-D array, or a list of them (one per channel)."""
        quantized = np.asarray(self.hard_quantize(tf.convert_to_tensor(kernel), weights))
        if self.per_channel:
            view = np.asarray(self.channel_view(quantized))
            return [np.unique(view[:, c]) for c in range(view.shape[1])]
        return np.unique(quantized)

    def export_exact(self, kernel, weights, bits=8):
        """True if the hard-quantized kernel lies exactly on the `bits`-bit export grid."""
        codes = export_codes(bits)
        step = np.asarray(safe_step(self.grid_step(kernel, weights, codes)), dtype=np.float64)
        quantized = np.asarray(self.hard_quantize(kernel, weights), dtype=np.float64)
        if self.per_channel:
            quantized = np.asarray(self.channel_view(quantized))
        scaled = quantized / step
        on_grid = np.abs(scaled - np.round(scaled)) <= 1e-3
        return bool(np.all(on_grid) and np.all(np.abs(np.round(scaled)) <= codes))

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    # Unhashable, like tfmot's quantizers: Keras' shared-object tracking during SavedModel
    # save keys objects by hash, and equal configs must not merge two layers' quantizers.
    __hash__ = None

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def check_int(name, value, low, high):
    """Validates an integer argument in [low, high] with a Keras-style message."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in [{low}, {high}]. Received: {name}={value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]. Received: {name}={value}")
    return int(value)


def check_float(name, value, low, high, low_open=True):
    """Validates a float argument in (low, high] (or [low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number. Received: {name}={value!r}")
    value = float(value)
    ok = (low < value if low_open else low <= value) and value <= high and np.isfinite(value)
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}]. Received: {name}={value}")
    return value


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False. Received: {name}={value!r}")
    return bool(value)
