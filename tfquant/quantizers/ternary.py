"""Ternary weight quantizers: TWN (Li et al. 2016: threshold 0.7 * mean|w|, scale = mean of
|w| above it) and TTQ (Zhu et al. 2017: learned positive / negative scales, threshold
t * max|w|), per layer or per output channel.
"""

import numpy as np

from tfquant._keras import keras, tf
from tfquant.options import TernaryMethod
from tfquant.quantizers.base import (
    _LEVELS_IN_INT8,
    TfquantQuantizer,
    channel_scale_view,
    check_bool,
    check_float,
    from_channel_scale_view,
    straight_through,
)


def twn(view, threshold_factor=0.7):
    """Ternary Weight Networks on a [N, C] view, statistics per column.

    Returns:
      `(quantized [N, C], scale [C])` with quantized in {-scale, 0, scale}.

    >>> q, a = twn(tf.constant([[-1.0], [0.05], [0.9], [0.1]]))
    >>> q.numpy().ravel().astype(float).round(3).tolist(), a.numpy().astype(float).round(3).tolist()
    ([-0.95, 0.0, 0.95, 0.0], [0.95])
    """
    magnitude = tf.abs(view)
    delta = threshold_factor * tf.reduce_mean(magnitude, axis=0)  # Δ = 0.7·E|w|
    above = tf.cast(magnitude > delta, view.dtype)
    scale = tf.reduce_sum(magnitude * above, axis=0) / tf.maximum(
        tf.reduce_sum(above, axis=0), 1.0
    )  # α = mean |w| over |w| > Δ
    return scale * tf.sign(view) * above, scale


@tf.custom_gradient
def ttq(view, positive_scale, negative_scale, delta):
    """Trained Ternary Quantization on a [N, C] view with scales and thresholds of shape [C].

    Forward: W_p where w > Δ, -W_n where w < -Δ, else 0. Backward (TTQ Eq. 7-8): the latent
    weights get the gradient scaled by W_p / 1 / W_n in the three regions; W_p and W_n get the
    summed gradient of their regions.
    """
    positive = tf.cast(view > delta, view.dtype)
    negative = tf.cast(view < -delta, view.dtype)
    quantized = positive_scale * positive - negative_scale * negative

    def grad(upstream):
        latent = upstream * (
            positive_scale * positive + negative_scale * negative + (1.0 - positive - negative)
        )
        return (
            latent,
            tf.reduce_sum(upstream * positive, axis=0),
            -tf.reduce_sum(upstream * negative, axis=0),
            tf.zeros_like(delta),
        )

    return quantized, grad


@keras.utils.register_keras_serializable(package="tfquant")
class TernaryQuantizer(TfquantQuantizer):
    """Ternary quantizer (TWN or TTQ), per layer or per output channel.

    TWN keeps no state: threshold and scale are recomputed from the weights at every step.
    TTQ learns a positive and a negative scale (trainable variables); both are kept on the int8
    grid of max(W_p, W_n) in the forward pass so that export is exact.

    Args:
      method: "twn" or "ttq".
      per_channel: one scale (pair) per output channel instead of per layer.
      threshold: TWN: factor of mean|w| (default 0.7); TTQ: factor t of max|w| (default 0.05).

    Example:
      >>> q = TernaryQuantizer(method="ttq", per_channel=True)
      >>> q.threshold
      0.05
      >>> TernaryQuantizer.from_config(q.get_config()) == q
      True
    """

    def __init__(self, method="twn", per_channel=False, threshold=None):
        self.method = TernaryMethod.parse(method, "method")
        self.per_channel = check_bool("per_channel", per_channel)
        default = 0.7 if self.method is TernaryMethod.TWN else 0.05
        self.threshold = default if threshold is None else check_float("threshold", threshold, 0, 1)

    @property
    def levels(self):
        """Codebook size per scale group: {-W_n, 0, W_p}."""
        return 3

    def _build_vars(self, tensor_shape, name, layer):
        if self.method is TernaryMethod.TWN:
            return {}
        channels = self.num_channels if self.per_channel else 1
        sync = tf.VariableAggregation.ONLY_FIRST_REPLICA
        return {
            scale: layer.add_weight(
                f"{name}_{scale}",
                shape=(channels,),
                initializer="ones",
                trainable=True,
                aggregation=sync,
            )
            for scale in ("positive_scale", "negative_scale")
        }

    def initialize(self, kernel, weights, importance=None):
        if self.method is TernaryMethod.TWN:
            return
        view = np.asarray(channel_scale_view(tf.constant(kernel, tf.float32), self))
        delta = self.threshold * np.abs(view).max(axis=0)
        fallback = np.abs(view).mean(axis=0) + 1e-8
        for key, region in (("positive_scale", view > delta), ("negative_scale", view < -delta)):
            total = np.where(region, np.abs(view), 0.0).sum(axis=0)
            count = region.sum(axis=0)
            weights[key].assign(np.where(count > 0, total / np.maximum(count, 1), fallback))

    def _snapped_scales(self, weights, codes=_LEVELS_IN_INT8):
        positive = tf.abs(weights["positive_scale"])
        negative = tf.abs(weights["negative_scale"])
        step = tf.maximum(positive, negative) / codes
        step = tf.where(step > 0, step, tf.ones_like(step))
        return (
            straight_through(positive, tf.round(positive / step) * step),
            straight_through(negative, tf.round(negative / step) * step),
        )

    def _ternary_view(self, kernel, weights):
        view = channel_scale_view(kernel, self)
        if self.method is TernaryMethod.TWN:
            return twn(view, self.threshold)[0]
        positive, negative = self._snapped_scales(weights)
        delta = tf.stop_gradient(self.threshold * tf.reduce_max(tf.abs(view), axis=0))
        return ttq(view, positive, negative, delta)

    def _quantize(self, inputs, training, weights):
        quantized = from_channel_scale_view(self._ternary_view(inputs, weights), inputs, self)
        if self.method is TernaryMethod.TWN:
            return straight_through(inputs, quantized)
        return quantized  # ttq carries its own gradient

    def hard_quantize(self, kernel, weights):
        kernel = tf.convert_to_tensor(kernel)
        return from_channel_scale_view(self._ternary_view(kernel, weights), kernel, self)

    def grid_step(self, kernel, weights, codes=_LEVELS_IN_INT8):
        if self.method is TernaryMethod.TWN:
            scale = twn(channel_scale_view(tf.convert_to_tensor(kernel), self), self.threshold)[1]
        else:
            positive, negative = self._snapped_scales(weights)
            scale = tf.maximum(positive, negative)
        step = scale / codes
        return step if self.per_channel else step[0]

    def get_config(self):
        return {
            "method": self.method.value,
            "per_channel": self.per_channel,
            "threshold": self.threshold,
        }

    def codebook_floats(self):
        return 1 if self.method is TernaryMethod.TWN else 2  # TWN: one scale; TTQ: Wp and Wn
