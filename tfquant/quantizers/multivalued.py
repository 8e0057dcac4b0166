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
    check_float,
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


_SCHEDULE_SCALARS = {
    "initialized": 0.0,
    "adapting_interval": -1.0,
    "adaptation": 0.0,
    "pull_strength": 0.0,
    "schedule_step": 0.0,
}


def interval_bounds(centers, low, high):
    """MPA Eq. 1: e_0 = min(w), e_k = max(w), e_j = (c_j + c_{j+1}) / 2 in between.

    >>> interval_bounds(np.array([-1.0, 0.0, 2.0]), -3.0, 4.0).tolist()
    [-3.0, -0.5, 1.0, 4.0]
    """
    centers = np.asarray(centers, np.float64)
    inner = (centers[1:] + centers[:-1]) / 2.0
    low = min(float(low), float(centers[0]))
    high = max(float(high), float(centers[-1]))
    return np.concatenate([[low], inner, [high]]).astype(np.float32)


def adaptation_pull(kernel, weights):
    """MPA Eq. 4 times λ: L1 distance of the free weights in the adapting interval to its center."""
    count = weights["centers"].shape[0]
    index = tf.cast(tf.clip_by_value(weights["adapting_interval"], 0, count - 1), tf.int32)
    center = tf.gather(weights["centers"], index)
    low = tf.gather(weights["interval_bounds"], index)
    high = tf.gather(weights["interval_bounds"], index + 1)
    inside = (kernel >= low) & (kernel <= high) & (weights["frozen_mask"] < 0.5)
    distance = tf.reduce_sum(tf.where(inside, tf.abs(kernel - center), tf.zeros_like(kernel)))
    active = tf.cast(weights["adapting_interval"] >= 0, kernel.dtype)
    return active * weights["pull_strength"] * distance


@keras.utils.register_keras_serializable(package="tfquant")
class MultivaluedQuantizer(TfquantQuantizer):
    """Codebook quantizer with k = 2**bits (or `levels`) centers per layer.

    Variables (created in `build`): `centers` [k] sorted, on the int8 grid of max|center|;
    `frozen_mask` (kernel shape, 1 = frozen at its center); `initialized` (0/1); and the
    schedule state that `tfq.callbacks` assign between batches, so that checkpoints and
    SavedModel carry it: `interval_bounds` [k+1] (MPA Eq. 1: e_0 = min w, e_k = max w, the
    rest midpoints), `interval_done` [k] (1 = interval quantized and frozen),
    `adapting_interval` (index of the interval in adaptation, -1 = none), `adaptation`
    (s of MPA Eq. 5), `pull_strength` (λ_i of MPA Eq. 12-13) and `schedule_step` (batches
    the schedule has run).

    In `masked` mode and training, the layer gets the L1 pull of MPA Eq. 4 as a loss:
    λ · Σ |w - c| over the free weights inside the adapting interval [e_l, e_r].
    `tfq.quantize_model` calls `initialize` with the trained kernel to place the centers by the
    division method.

    Args:
      bits: codebook size is 2**bits, in [1, 8]. Ignored when `levels` is given.
      levels: explicit codebook size in [2, 256] (e.g. 3 for a ternary-like codebook).
      division: "kmeans" (default), "linear", "exponential", "hessian_kmeans" (needs
        `importance` at `quantize_model`) or "ecsq".
      mode: "snap" (every weight to its nearest center; the naive baseline) or "masked"
        (only frozen weights snap; the others pass through for a schedule to adapt).
      entropy_weight: λ of the "ecsq" division, in units of the weights' variance.

    Example:
      >>> q = MultivaluedQuantizer(bits=2, division="linear")
      >>> q.levels
      4
      >>> MultivaluedQuantizer.from_config(q.get_config()) == q
      True
    """

    def __init__(self, bits=3, levels=None, division="kmeans", mode="snap", entropy_weight=0.1):
        self.bits = check_int("bits", bits, 1, 8)
        self.levels = 2**self.bits if levels is None else check_int("levels", levels, 2, 256)
        self._levels_given = levels is not None
        self.division = Division.parse(division, "division")
        self.mode = Mode.parse(mode, "mode")
        self.entropy_weight = check_float("entropy_weight", entropy_weight, 0.0, 1e6, False)

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
        variables = {"centers": centers, "frozen_mask": frozen_mask}

        def scalar(key, value):
            variables[key] = layer.add_weight(
                f"{name}_{key}",
                shape=(),
                initializer=keras.initializers.Constant(value),
                trainable=False,
                aggregation=sync,
            )

        for key, value in _SCHEDULE_SCALARS.items():
            scalar(key, value)
        variables["interval_bounds"] = layer.add_weight(
            f"{name}_interval_bounds",
            shape=(self.levels + 1,),
            initializer="zeros",
            trainable=False,
            aggregation=sync,
        )
        variables["interval_done"] = layer.add_weight(
            f"{name}_interval_done",
            shape=(self.levels,),
            initializer="zeros",
            trainable=False,
            aggregation=sync,
        )
        self._owner = layer
        return variables

    def initialize(self, kernel, weights, importance=None):
        """Divides `kernel` into the codebook (Eq. 1 and 9) and resets all schedule state."""
        kernel = np.asarray(kernel)
        centers = snap_centers(
            divide(kernel, self.levels, self.division, importance, self.entropy_weight)
        )
        weights["centers"].assign(centers)
        weights["interval_bounds"].assign(interval_bounds(centers, kernel.min(), kernel.max()))
        weights["interval_done"].assign(np.zeros(self.levels, np.float32))
        weights["frozen_mask"].assign(tf.zeros_like(weights["frozen_mask"]))
        for key, value in _SCHEDULE_SCALARS.items():
            weights[key].assign(value)
        weights["initialized"].assign(1.0)

    def _quantize(self, inputs, training, weights):
        if self.mode is not Mode.MASKED:
            return multivalued(inputs, weights["centers"], None)
        # Inside the traced train step only (Keras' `fit`); an eager call has no loss to join.
        if training and tf.inside_function() and getattr(self, "_owner", None) is not None:
            self._owner.add_loss(adaptation_pull(inputs, weights))
        return multivalued(inputs, weights["centers"], weights["frozen_mask"])

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
            "entropy_weight": self.entropy_weight,
        }
