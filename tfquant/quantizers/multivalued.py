"""Multivalued (codebook) weight quantizer: k centers per layer, a frozen mask, and either
naive snapping of every weight or masked snapping driven by a schedule (MVQ seed 000, MPA
seed 002 Eq. 7-8). Centers are kept on the layer's int8 grid so export is lossless.
"""

import numpy as np

from tfquant._keras import keras, tf
from tfquant.coding.division import divide
from tfquant.options import Division, Mode
from tfquant.quantizers.base import (
    _LEVELS_IN_INT8,
    TfquantQuantizer,
    check_int,
    nearest_level,
    straight_through,
)


def snap_centers(centers):
    """Rounds sorted centers to the int8 grid whose step is max|center| / 127.

    >>> np.allclose(snap_centers(np.array([-1.0, 0.3337, 1.0])), [-1.0, 42 / 127, 1.0])
    True
    """
    centers = np.asarray(centers, dtype=np.float64)
    top = np.max(np.abs(centers))
    if top == 0:
        return np.sort(centers).astype(np.float32)
    step = top / _LEVELS_IN_INT8
    return np.sort(np.round(centers / step) * step).astype(np.float32)


def multivalued(kernel, centers, frozen_mask=None):
    """Snaps `kernel` to its nearest `centers` with a straight-through gradient.

    Args:
      kernel: float tensor.
      centers: sorted 1-D float tensor (the codebook).
      frozen_mask: optional tensor like `kernel`; where it is 0 the weight passes through in
        full precision (Eq. 7-8 of MPA: only the frozen set and the adaptation range snap).
        Frozen weights get no gradient (MPA Eq. 14).

    Returns:
      The quantized kernel.
    """
    snapped, _ = nearest_level(kernel, centers)
    if frozen_mask is None:
        return straight_through(kernel, snapped)
    return tf.where(frozen_mask > 0.5, tf.stop_gradient(snapped), kernel)


@keras.utils.register_keras_serializable(package="tfquant")
class MultivaluedQuantizer(TfquantQuantizer):
    """Codebook quantizer with k = 2**bits (or `levels`) centers per layer.

    Variables (created in `build`): `centers` [k] sorted, on the int8 grid of max|center|;
    `frozen_mask` (kernel shape, 1 = frozen at its center); `initialized` (0/1).
    `tfq.quantize_model` calls `initialize` with the trained kernel to place the centers by the
    division method; schedules later reassign centers and mask between batches.

    Args:
      bits: codebook size is 2**bits, in [1, 8]. Ignored when `levels` is given.
      levels: explicit codebook size in [2, 256] (e.g. 3 for a ternary-like codebook).
      division: "kmeans" (default), "linear" or "exponential".
      mode: "snap" (every weight to its nearest center; the naive baseline) or "masked"
        (only frozen weights snap; the others pass through for a schedule to adapt).

    Example:
      >>> q = MultivaluedQuantizer(bits=2, division="linear")
      >>> q.levels
      4
      >>> MultivaluedQuantizer.from_config(q.get_config()) == q
      True
    """

    def __init__(self, bits=3, levels=None, division="kmeans", mode="snap"):
        self.bits = check_int("bits", bits, 1, 8)
        self.levels = 2**self.bits if levels is None else check_int("levels", levels, 2, 256)
        self._levels_given = levels is not None
        self.division = Division.parse(division, "division")
        self.mode = Mode.parse(mode, "mode")

    def _build_vars(self, tensor_shape, name, layer):
        sync = tf.VariableAggregation.ONLY_FIRST_REPLICA
        centers = layer.add_weight(
            f"{name}_centers",
            shape=(self.levels,),
            initializer=keras.initializers.Constant(
                np.linspace(-1.0, 1.0, self.levels).astype(np.float32)
            ),
            trainable=False,
            aggregation=sync,
        )
        frozen_mask = layer.add_weight(
            f"{name}_frozen_mask",
            shape=tensor_shape,
            initializer="zeros",
            trainable=False,
            aggregation=sync,
        )
        initialized = layer.add_weight(
            f"{name}_initialized", shape=(), initializer="zeros", trainable=False, aggregation=sync
        )
        return {"centers": centers, "frozen_mask": frozen_mask, "initialized": initialized}

    def initialize(self, kernel, weights):
        centers = snap_centers(divide(kernel, self.levels, self.division))
        weights["centers"].assign(centers)
        weights["frozen_mask"].assign(tf.zeros_like(weights["frozen_mask"]))
        weights["initialized"].assign(1.0)

    def _quantize(self, inputs, training, weights):
        mask = weights["frozen_mask"] if self.mode is Mode.MASKED else None
        return multivalued(inputs, weights["centers"], mask)

    def hard_quantize(self, kernel, weights):
        return nearest_level(tf.convert_to_tensor(kernel), weights["centers"])[0]

    def grid_step(self, kernel, weights, codes=_LEVELS_IN_INT8):
        # Centers sit on the grid max|center| / 127; other code counts are exact only if the
        # codebook happens to lie on their grid too (`export_exact` tells).
        return tf.reduce_max(tf.abs(weights["centers"])) / codes

    def get_config(self):
        return {
            "bits": self.bits,
            "levels": self.levels if self._levels_given else None,
            "division": self.division.value,
            "mode": self.mode.value,
        }
