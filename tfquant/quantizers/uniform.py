"""Symmetric uniform b-bit weight quantizer (per output channel or per layer): the baseline
that tfmot's 8-bit QAT implements, here at any width from 2 to 8 bits.
"""

from tfquant._keras import keras, tf
from tfquant.quantizers.base import (
    _LEVELS_IN_INT8,
    TfquantQuantizer,
    channel_scale_view,
    check_bool,
    check_int,
    from_channel_scale_view,
    safe_step,
    straight_through,
)


def uniform(view, bits):
    """Symmetric uniform quantization of a [N, C] view with one scale per column.

    The scale is max|w| / (2**(bits-1) - 1), so levels are k * scale, |k| <= 2**(bits-1) - 1.

    Returns:
      `(quantized [N, C], scale [C])`.

    >>> q, s = uniform(tf.constant([[-1.0], [0.2], [0.6]]), bits=2)
    >>> q.numpy().ravel().tolist(), s.numpy().tolist()
    ([-1.0, 0.0, 1.0], [1.0])
    """
    top_code = 2 ** (bits - 1) - 1
    scale = safe_step(tf.reduce_max(tf.abs(view), axis=0) / top_code)
    return tf.clip_by_value(tf.round(view / scale), -top_code, top_code) * scale, scale


@keras.utils.register_keras_serializable(package="tfquant")
class UniformQuantizer(TfquantQuantizer):
    """Symmetric uniform quantizer with 2**(bits-1) - 1 positive levels.

    Levels are k * max|w| / (2**(bits-1) - 1) (max over the output channel if per-channel),
    for every layer type: the exporter writes the codes and scales into the file itself
    (`tfquant.export`), so at 4 bits or fewer every kernel is stored exactly as INT4 with
    `int4=True`.

    Args:
      bits: width in [2, 8].
      per_channel: one scale per output channel (default) or one per layer.

    Example:
      >>> q = UniformQuantizer(bits=4)
      >>> UniformQuantizer.from_config(q.get_config()) == q
      True
    """

    def __init__(self, bits=8, per_channel=True):
        self.bits = check_int("bits", bits, 2, 8)
        self.per_channel = check_bool("per_channel", per_channel)

    @property
    def levels(self):
        """Codebook size per scale group: k * scale for |k| <= 2**(bits-1) - 1."""
        return 2**self.bits - 1

    def _build_vars(self, tensor_shape, name, layer):
        return {}

    def _quantize(self, inputs, training, weights):
        return straight_through(inputs, self.hard_quantize(inputs, weights))

    def hard_quantize(self, kernel, weights):
        kernel = tf.convert_to_tensor(kernel)
        view = channel_scale_view(kernel, self)
        quantized, _ = uniform(view, self.bits)
        return from_channel_scale_view(quantized, kernel, self)

    def grid_step(self, kernel, weights, codes=_LEVELS_IN_INT8):
        view = channel_scale_view(tf.convert_to_tensor(kernel), self)
        _, scale = uniform(view, self.bits)
        top_code = 2 ** (self.bits - 1) - 1
        # The finest grid that still holds every level k*scale: scale / floor(codes / top).
        step = scale / max(codes // top_code, 1)
        return step if self.per_channel else step[0]

    def get_config(self):
        return {"bits": self.bits, "per_channel": self.per_channel}

    def codebook_floats(self):
        return 1  # the scale: level i is i * scale
