"""LQ-Nets learned quantizers (Zhang et al. 2018, seed 004): q = v^T b with a learned basis
v in R^K and binary encodings b ({-1, 1}^K for weights, {0, 1}^K for activations); the basis
is refit by quantization-error minimization (QEM) on every training step and smoothed by a
moving average, as in the authors' code.
"""

import numpy as np

from tfquant._keras import keras, tf
from tfquant.quantizers.base import (
    _LEVELS_IN_INT8,
    TfquantQuantizer,
    check_float,
    check_int,
    nearest_level,
    nearest_level_per_channel,
    safe_step,
    straight_through,
)

_NORM_PPF_0_75 = 0.6745  # Φ^{-1}(0.75): median of |w| for w ~ N(0, σ²) is 0.6745 σ
_QEM_EPS = 1e-4
_UINT8_CODES = 255


def encodings(bits, signed):
    """All 2**bits binary encodings as a [2**bits, bits] float32 array.

    >>> encodings(2, signed=False).tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    """
    grid = (np.arange(2**bits)[:, None] >> np.arange(bits)) & 1
    return (2 * grid - 1 if signed else grid).astype(np.float32)


def basis_levels(basis, codes):
    """Sorted levels of each column of `basis` ([K, C]) and the encodings in that order.

    Returns:
      `(levels [C, L], sorted_codes [C, L, K])`.
    """
    raw = tf.transpose(tf.matmul(codes, basis))  # [C, L]
    order = tf.argsort(raw, axis=1)
    levels = tf.gather(raw, order, batch_dims=1)
    return levels, tf.gather(codes, order)


def qem_basis(values, chosen_codes):
    """Closed-form QEM basis: argmin_v ||w - B v||² per channel (LQ-Nets Eq. 7).

    Args:
      values: [C, N] the tensor being quantized, by channel.
      chosen_codes: [C, N, K] the encoding picked for each value.

    Returns:
      [K, C] the refit basis.
    """
    gram = tf.einsum("cnk,cnj->ckj", chosen_codes, chosen_codes)
    rhs = tf.einsum("cnk,cn->ck", chosen_codes, values)
    bits = tf.shape(gram)[-1]
    gram += _QEM_EPS * tf.eye(bits, dtype=gram.dtype)
    return tf.transpose(tf.linalg.solve(gram, rhs[..., None])[..., 0])


def _snap_levels(levels, codes_in_grid, signed):
    """Keeps each channel's levels on its export grid (max level -> top code)."""
    top = tf.reduce_max(tf.abs(levels), axis=1, keepdims=True)
    step = safe_step(top / codes_in_grid)
    return tf.round(levels / step) * step, step[:, 0]


def _moving_average_update(variable, target, momentum):
    return variable.assign(momentum * variable + (1.0 - momentum) * target)


@keras.utils.register_keras_serializable(package="tfquant")
class LearnedBasisQuantizer(TfquantQuantizer):
    """LQ-Nets weight quantizer: a K-bit learned basis per output channel.

    Each channel's 2**K levels are sums of ±v_k. Training snaps weights to the nearest level
    (straight-through gradient), then refits the basis by QEM and moves it toward the fit with
    a moving average (`momentum`, 0.9 in the authors' code). Levels are kept on each channel's
    int8 grid (max level -> code 127), so the per-channel int8 export is exact.

    Initialization (paper code): v_k = 2**k · 0.6745 σ / 2**(K-1), with σ the channel's weight
    standard deviation. The paper uses the He-init σ = sqrt(2 / fan_in) because it trains from
    scratch; we start from trained weights, so we use their measured σ.

    Args:
      bits: K in [1, 4].
      per_channel: one basis per output channel (paper) or one per layer.
      momentum: moving-average factor of the QEM update, in [0, 1).

    Example:
      >>> q = LearnedBasisQuantizer(bits=2)
      >>> LearnedBasisQuantizer.from_config(q.get_config()) == q
      True
    """

    def __init__(self, bits=2, per_channel=True, momentum=0.9):
        self.bits = check_int("bits", bits, 1, 4)
        self.per_channel = bool(per_channel)
        self.momentum = check_float("momentum", momentum, 0.0, 0.999999, low_open=False)
        self._codes = encodings(self.bits, signed=True)

    @property
    def levels(self):
        """Codebook size per channel: 2**K sums of +-v_k."""
        return 2**self.bits

    def _build_vars(self, tensor_shape, name, layer):
        channels = self.num_channels if self.per_channel else 1
        base = np.array([2.0**k for k in range(self.bits)], np.float32)[:, None]
        return {
            "basis": layer.add_weight(
                f"{name}_basis",
                shape=(self.bits, channels),
                initializer=keras.initializers.Constant(np.repeat(base * 0.01, channels, 1)),
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        }

    def _view(self, kernel):
        return self.channel_view(kernel) if self.per_channel else tf.reshape(kernel, [-1, 1])

    def _from_view(self, values, kernel):
        if self.per_channel:
            return self.from_channel_view(values)
        return tf.reshape(values, tf.shape(kernel))

    def initialize(self, kernel, weights, importance=None):
        view = np.asarray(self._view(tf.constant(kernel, tf.float32)))
        sigma = view.std(axis=0) + 1e-12
        powers = 2.0 ** np.arange(self.bits)[:, None]
        weights["basis"].assign(
            (powers * _NORM_PPF_0_75 * sigma / 2 ** (self.bits - 1)).astype(np.float32)
        )

    def _levels(self, weights):
        levels, sorted_codes = basis_levels(weights["basis"], self._codes)
        levels, step = _snap_levels(levels, _LEVELS_IN_INT8, signed=True)
        return levels, sorted_codes, step

    def _quantize(self, inputs, training, weights):
        view = self._view(inputs)
        levels, sorted_codes, _ = self._levels(weights)
        quantized, index = nearest_level_per_channel(view, levels)
        output = self._from_view(straight_through(view, quantized), inputs)
        if not training:
            return output
        chosen = tf.gather(sorted_codes, tf.transpose(index), batch_dims=1)  # [C, N, K]
        fitted = qem_basis(tf.stop_gradient(tf.transpose(view)), chosen)
        update = _moving_average_update(weights["basis"], fitted, self.momentum)
        with tf.control_dependencies([update]):
            return tf.identity(output)

    def hard_quantize(self, kernel, weights):
        kernel = tf.convert_to_tensor(kernel)
        levels, _, _ = self._levels(weights)
        quantized, _ = nearest_level_per_channel(self._view(kernel), levels)
        return self._from_view(quantized, kernel)

    def grid_step(self, kernel, weights, codes=_LEVELS_IN_INT8):
        levels, _, step = self._levels(weights)
        if codes != _LEVELS_IN_INT8:
            step = safe_step(tf.reduce_max(tf.abs(levels), axis=1) / codes)
        return step if self.per_channel else step[0]

    def get_config(self):
        return {"bits": self.bits, "per_channel": self.per_channel, "momentum": self.momentum}

    def codebook_floats(self):
        return self.bits  # the basis v; the levels are its signed binary combinations


@keras.utils.register_keras_serializable(package="tfquant")
class LearnedBasisActivationQuantizer(TfquantQuantizer):
    """LQ-Nets activation quantizer: a K-bit learned basis per layer, encodings in {0, 1}^K.

    Meant for non-negative (ReLU) activations. Initialization from the authors' code:
    v_k = 2**k · 2 · 0.6745 / (2**K - 1) (levels spread over [0, 1.35]); QEM adapts the basis
    to the real activation range within a few steps. The gradient is straight-through below
    the top level and zero above it (the gradient of min(x, top level), as in the authors'
    code), so training is not pushed to grow activations the forward pass clips. Levels stay
    on the uint8 grid of the top level, so the exported int8 tensor (range [0, top level])
    holds every level exactly; TFLite itself computes activations at 8 bits, finer than the
    K-bit Keras model.

    Args:
      bits: K in [1, 8].
      momentum: moving-average factor of the QEM update, in [0, 1).

    Example:
      >>> q = LearnedBasisActivationQuantizer(bits=4)
      >>> LearnedBasisActivationQuantizer.from_config(q.get_config()) == q
      True
    """

    def __init__(self, bits=2, momentum=0.9):
        self.bits = check_int("bits", bits, 1, 8)
        self.momentum = check_float("momentum", momentum, 0.0, 0.999999, low_open=False)
        self._codes = encodings(self.bits, signed=False)

    @property
    def levels(self):
        return 2**self.bits

    def _build_vars(self, tensor_shape, name, layer):
        init = [(2.0**k) * _NORM_PPF_0_75 * 2 / (2**self.bits - 1) for k in range(self.bits)]
        return {
            "basis": layer.add_weight(
                f"{name}_basis",
                shape=(self.bits, 1),
                initializer=keras.initializers.Constant(np.array(init, np.float32)[:, None]),
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        }

    def _levels(self, weights):
        levels, sorted_codes = basis_levels(tf.abs(weights["basis"]), self._codes)
        levels, step = _snap_levels(levels, _UINT8_CODES, signed=False)
        return levels[0], sorted_codes[0], step[0]

    def _quantize(self, inputs, training, weights):
        levels, sorted_codes, _ = self._levels(weights)
        quantized, index = nearest_level(inputs, levels)
        # The authors' code: the gradient of min(x, top level), none above the top level.
        output = straight_through(tf.minimum(inputs, levels[-1]), quantized)
        if not training:
            return output
        chosen = tf.gather(sorted_codes, tf.reshape(index, [-1]))[None]  # [1, N, K]
        values = tf.stop_gradient(tf.reshape(inputs, [1, -1]))
        update = _moving_average_update(weights["basis"], qem_basis(values, chosen), self.momentum)
        with tf.control_dependencies([update]):
            return tf.identity(output)

    def prepare_export(self, kernel, weights, bits=8):
        self._export_step = np.asarray(self._levels(weights)[2])
        self._export = True

    def _export_fake_quant(self, inputs, weights):
        top = float(_UINT8_CODES * self._export_step)
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, 0.0, top, num_bits=8, narrow_range=False
        )

    def hard_quantize(self, kernel, weights):
        return nearest_level(tf.convert_to_tensor(kernel), self._levels(weights)[0])[0]

    def grid_step(self, kernel, weights, codes=_UINT8_CODES):
        return self._levels(weights)[2]

    def get_config(self):
        return {"bits": self.bits, "momentum": self.momentum}
