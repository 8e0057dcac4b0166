"""Multivalued (codebook) weight quantizer: k centers per layer, a frozen mask, and either
naive snapping of every weight or masked snapping driven by a schedule (MVQ seed 000, MPA
seed 002 Eq. 7-8). Centers are kept on the layer's int8 grid (or its 4-bit grid,
`int4_grid`) so export is lossless.

With `sparsity` > 0 one center is exactly 0 and owns a zero interval [-t, t] that holds the
`sparsity` fraction of smallest-magnitude weights (magnitude pruning, Deep Compression's first
stage, as one interval of the codebook); the other centers divide the weights outside it.
"""

import numpy as np

from tfquant._keras import keras, tf
from tfquant.coding.division import divide, weighted_lloyd
from tfquant.options import Division, Mode
from tfquant.quantizers.base import (
    _LEVELS_IN_INT8,
    TfquantQuantizer,
    check_bool,
    check_float,
    check_int,
    export_codes,
    nearest_level,
    straight_through,
)

_INT4_CODES = export_codes(4)  # 4-bit codes are -7..7


def snap_centers(centers, codes=_LEVELS_IN_INT8):
    """Rounds sorted centers to the grid whose step is max|center| / `codes`: the int8 grid
    (codes -127..127) by default, the 4-bit one with `codes=7` (-7..7). On the 4-bit grid,
    centers that round to the same code move to the nearest free codes (toward 0 first), so
    a codebook of at most 15 centers keeps them all distinct.

    >>> np.allclose(snap_centers(np.array([-1.0, 0.3337, 1.0])), [-1.0, 42 / 127, 1.0])
    True
    >>> (snap_centers(np.array([-1.0, 0.02, 0.05, 1.0]), codes=7) * 7).round().tolist()
    [-7.0, 0.0, 1.0, 7.0]
    """
    centers = np.asarray(centers, dtype=np.float64)
    top = np.max(np.abs(centers))
    if top < np.finfo(np.float32).tiny * codes:
        # A grid step below the smallest normal float32: TF's CPU kernels flush such
        # subnormal values to 0 while NumPy keeps them, so the codebook is all zeros.
        return np.zeros(centers.shape, np.float32)
    step = top / codes
    scaled = centers / step
    if codes < _LEVELS_IN_INT8 and centers.size <= 2 * codes + 1:
        grid = _distinct_codes(scaled, codes)
    else:
        grid = np.round(scaled)
    return np.sort(grid * step).astype(np.float32)


def _distinct_codes(scaled, codes):
    """Rounds `scaled` (centers in units of the grid step) to distinct integers in
    [-codes, codes]: the centers nearest their code keep it, the others take the nearest
    free code.

    >>> _distinct_codes(np.array([-7.0, -0.1, 0.2, 0.3, 7.0]), 7).tolist()
    [-7.0, -1.0, 0.0, 1.0, 7.0]
    """
    scaled = np.asarray(scaled, np.float64)
    rounded = np.round(scaled)
    out = rounded.copy()
    used = set()
    for index in np.argsort(np.abs(scaled - rounded), kind="stable"):
        code = int(rounded[index])
        if code in used:
            free = [c for c in range(-codes, codes + 1) if c not in used]
            code = min(free, key=lambda c: (abs(c - scaled[index]), abs(c)))
        used.add(code)
        out[index] = code
    return np.sort(out)


def snap_with_zero_interval(kernel, centers, zero_threshold):
    """Snaps to the codebook with a zero interval: |w| <= t goes to 0, every other weight to
    its nearest non-zero center (the center closest to 0 is taken to be the zero center).

    Args:
      kernel: float tensor.
      centers: sorted 1-D float tensor holding one 0 (at least 2 entries).
      zero_threshold: t, a scalar >= 0.

    Returns:
      `(snapped, pruned)`: the quantized kernel and the boolean mask |w| <= t.

    >>> snapped, pruned = snap_with_zero_interval(
    ...     tf.constant([-0.9, -0.2, 0.05, 0.3, 0.6]), tf.constant([-1.0, 0.0, 0.5, 1.0]), 0.25)
    >>> snapped.numpy().tolist(), pruned.numpy().tolist()
    ([-1.0, 0.0, 0.0, 0.5, 0.5], [False, True, True, False, False])
    """
    centers = tf.convert_to_tensor(centers)
    count = centers.shape[0]
    zero_index = tf.argmin(tf.abs(centers), output_type=tf.int32)
    position = tf.range(count)
    # The zero center's slot repeats a neighbour: the levels stay sorted and 0 is never nearest.
    right = tf.concat([centers[1:], centers[-1:]], axis=0)
    left = tf.concat([centers[:1], centers[:-1]], axis=0)
    neighbour = tf.where(position < count - 1, right, left)
    non_zero = tf.where(position == zero_index, neighbour, centers)
    snapped, _ = nearest_level(kernel, non_zero)
    pruned = tf.abs(kernel) <= tf.cast(zero_threshold, kernel.dtype)
    return tf.where(pruned, tf.zeros_like(snapped), snapped), pruned


# Values of a quantizer's `center_tuning` variable: what the epochs after the last MPA phase
# do (`tfq.callbacks.PhaseAdaptation(finish=...)`). Code compares against the midpoints, so a
# value read back from a checkpoint compares the same.
HOLD, TUNE_CENTERS, STRAIGHT_THROUGH = 0.0, 1.0, 2.0


def finishing(center_tuning):
    """True where `center_tuning` says the frozen weights pass the gradient (tune or STE)."""
    return center_tuning > (HOLD + TUNE_CENTERS) / 2


def straight_through_finish(center_tuning):
    """True where `center_tuning` says STRAIGHT_THROUGH (weights thaw between fixed centers)."""
    return center_tuning > (TUNE_CENTERS + STRAIGHT_THROUGH) / 2


def multivalued(kernel, centers, frozen_mask=None, zero_threshold=None, center_tuning=None):
    """Snaps `kernel` to its nearest `centers` with a straight-through gradient.

    Args:
      kernel: float tensor.
      centers: sorted 1-D float tensor (the codebook).
      frozen_mask: optional tensor like `kernel`; where it is 0 the weight passes through in
        full precision (Eq. 7-8 of MPA: only the frozen set and the adaptation range snap).
        Frozen weights get no gradient (MPA Eq. 14) unless `center_tuning` is 1 or 2.
      center_tuning: optional scalar; at 1 the frozen weights pass the gradient straight
        through (their value stays the center), so that a schedule can move each center by
        the mean step of its weights (`PhaseAdaptation(finish="tune_centers")`). At 2 the
        same, except that weights in the zero interval get none (they stay pruned): with
        every weight frozen, the forward pass is each weight's nearest center with a
        straight-through gradient (`PhaseAdaptation(finish="straight_through")`).
      zero_threshold: optional t of a zero interval (see `snap_with_zero_interval`). Without
        a frozen mask, weights inside it are pruned: 0 and no gradient, so they stay pruned
        during fine-tuning (Deep Compression's fixed pruning mask).

    Returns:
      The quantized kernel.
    """
    if zero_threshold is None:
        snapped, _ = nearest_level(kernel, centers)
        pruned = None
    else:
        snapped, pruned = snap_with_zero_interval(kernel, centers, zero_threshold)
    if frozen_mask is not None:
        held = tf.stop_gradient(snapped)
        if center_tuning is not None:  # value unchanged (x - x is exactly 0); where(), not a
            # product, so that a NaN upstream gradient cannot reach frozen weights when off
            step = kernel - tf.stop_gradient(kernel)
            passes = finishing(center_tuning)
            if pruned is not None:
                passes = passes & ~(pruned & straight_through_finish(center_tuning))
            held += tf.where(passes, step, tf.zeros_like(step))
        return tf.where(frozen_mask > 0.5, held, kernel)
    quantized = straight_through(kernel, snapped)
    if pruned is None:
        return quantized
    return tf.where(pruned, tf.stop_gradient(snapped), quantized)


def zero_threshold_for(kernel, sparsity):
    """t such that the `sparsity` fraction of `kernel`'s weights (rounded to a count, ties
    included) has |w| <= t; 0 when that count is 0.

    >>> bool(zero_threshold_for(np.array([0.1, -0.2, 0.3, -0.4]), 0.5) == np.float32(0.2))
    True
    """
    magnitude = np.sort(np.abs(np.asarray(kernel, np.float32).ravel()))
    count = min(int(round(sparsity * magnitude.size)), magnitude.size - 1)
    return np.float32(magnitude[count - 1]) if count > 0 else np.float32(0.0)


def sparse_centers(
    kernel,
    levels,
    sparsity,
    division="kmeans",
    importance=None,
    entropy_weight=0.1,
    start=None,
    codes=_LEVELS_IN_INT8,
):
    """Codebook with a zero interval: 0 plus `levels` - 1 centers dividing the weights outside
    [-t, t] by `division`, on the grid max|center| / `codes` (int8 by default, 4-bit with
    `codes=7`); a non-zero center that would fall inside the interval (a linear / exponential
    grid, or a cluster straddling it) moves to the first grid point outside it.

    Args:
      kernel: the layer's weights. levels: codebook size, >= 3. sparsity: in (0, 1).
      division, importance, entropy_weight: as for `tfq.coding.divide`.
      start: optional previous codebook of this layer (`levels` sorted values, one of them
        0). With division "kmeans", Lloyd's iteration from its non-zero centers replaces the
        exact division (`tfq.coding.division.weighted_lloyd`, O(k log n) per iteration on the
        sorted weights): a local optimum next to the previous one, for callers that re-divide
        often while the weights change little (`tfq.callbacks.GradualPruning` between its
        first and last update). Other divisions ignore it.
      codes: largest grid code (`snap_centers`).

    Returns:
      `(centers, zero_threshold)`: sorted float32 [levels] with exactly one 0, and t.

    >>> w = np.linspace(-1.0, 1.0, 201)
    >>> centers, t = sparse_centers(w, 3, 0.5)
    >>> centers.tolist()[1], round(float(t), 2), int(np.sum(np.abs(w) <= t))
    (0.0, 0.5, 101)
    """
    kernel = np.asarray(kernel, np.float32)
    threshold = zero_threshold_for(kernel, sparsity)
    outside = np.abs(kernel) > threshold
    values = kernel[outside] if outside.any() else kernel.ravel()
    extra = None
    if importance is not None:
        extra = np.asarray(importance).reshape(kernel.shape)
        extra = extra[outside] if outside.any() else extra.ravel()
    previous = None if start is None else np.sort(np.asarray(start, np.float64).ravel())
    if (
        previous is not None
        and previous.size == levels
        and Division.parse(division, "division") is Division.KMEANS
    ):
        nonzero = np.delete(previous, int(np.argmin(np.abs(previous))))
        ordered = np.sort(values.astype(np.float64))
        others = weighted_lloyd(ordered, np.ones_like(ordered), nonzero)
    else:
        others = divide(values, levels - 1, division, extra, entropy_weight).astype(np.float64)
    centers = snap_centers(np.concatenate([[0.0], others]), codes)
    top = float(np.max(np.abs(centers)))
    step = top / codes if top > 0 else 1.0
    zero = int(np.argmin(np.abs(centers)))
    for index in range(centers.size):
        if index != zero and abs(centers[index]) <= threshold:
            sign = 1.0 if centers[index] > 0 or index > zero else -1.0
            code = int(np.floor(float(threshold) / step)) + 1
            while np.float32(code * step) <= threshold:
                code += 1
            centers[index] = np.float32(sign * code * step)
    return np.sort(centers).astype(np.float32), threshold


_SCHEDULE_SCALARS = {
    "initialized": 0.0,
    "adapting_interval": -1.0,
    "adaptation": 0.0,
    "pull_strength": 0.0,
    "schedule_step": 0.0,
    "center_tuning": 0.0,
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


def zero_interval_bounds(centers, low, high, zero_threshold):
    """`interval_bounds` with the zero center's interval set to [-t, t].

    >>> zero_interval_bounds(np.array([-1.0, 0.0, 1.0]), -2.0, 2.0, 0.75).tolist()
    [-2.0, -0.75, 0.75, 2.0]
    """
    bounds = interval_bounds(centers, low, high)
    zero = int(np.argmin(np.abs(centers)))
    threshold = np.float32(zero_threshold)
    bounds[zero] = min(bounds[zero], -threshold) if zero == 0 else -threshold
    last = zero + 1 == len(centers)
    bounds[zero + 1] = max(bounds[zero + 1], threshold) if last else threshold
    return bounds


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

    Variables (created in `build`): `centers` [k] sorted, on the int8 grid of max|center|
    (the 4-bit grid with `int4_grid`);
    `frozen_mask` (kernel shape, 1 = frozen at its center); `initialized` (0/1); and the
    schedule state that `tfq.callbacks` assign between batches, so that checkpoints and
    SavedModel carry it: `interval_bounds` [k+1] (MPA Eq. 1: e_0 = min w, e_k = max w, the
    rest midpoints), `interval_done` [k] (1 = interval quantized and frozen),
    `adapting_interval` (index of the interval in adaptation, -1 = none), `adaptation`
    (s of MPA Eq. 5), `pull_strength` (λ_i of MPA Eq. 12-13), `schedule_step` (batches
    the schedule has run) and `center_tuning` (what follows the last phase: 0 every weight
    held, 1 the centers tune, 2 the weights fine-tune straight-through).

    In `masked` mode and training, the layer gets the L1 pull of MPA Eq. 4 as a loss:
    λ · Σ |w - c| over the free weights inside the adapting interval [e_l, e_r].
    `tfq.quantize_model` calls `initialize` with the trained kernel to place the centers by the
    division method.

    Args:
      bits: codebook size is 2**bits, in [1, 8]. Ignored when `levels` is given.
      levels: explicit codebook size in [2, 256] (e.g. 3 for a ternary-like codebook).
      division: "kmeans" (default), "linear", "exponential", "hessian_kmeans" (needs
        `importance` at `quantize_model`) or "ecsq".
      mode: "auto" (the default: "snap" until a schedule of `tfq.callbacks` starts on the
        model, then "masked"), "snap" (every weight to its nearest center from the first step;
        the naive baseline, which schedules refuse) or "masked" (only frozen weights snap;
        the others pass through for a schedule to adapt).
      entropy_weight: λ of the "ecsq" division, in units of the weights' variance.
      sparsity: fraction of the weights in the zero interval, in [0, 1). With sparsity > 0
        (and at least 3 levels) the codebook holds an exact 0 whose interval is [-t, t], t the
        `sparsity` quantile of |w| at initialization (a variable, `zero_threshold`): those
        weights quantize to exactly 0, the rest to their nearest non-zero center, and the
        other `levels` - 1 centers divide the weights outside the interval. In "snap" mode the
        zeros get no gradient, so pruned weights stay pruned while the rest fine-tune (weights
        that drift into the interval join them). In "masked" mode the zero interval is one
        MPA interval with bounds ±t; `tfq.callbacks.PhaseAdaptation` quantizes it first by
        default (`zero_first`). The other schedules (IntervalContraction, PartitionRounds,
        IncrementalLayers) move centers by their own rules and do not keep the zero center.
      int4_grid: keep the centers on the layer's 4-bit grid (codes -7..7, step
        max|center| / 7) wherever they are placed or re-snapped (initialization, the
        division, every schedule), so that `tfq.export.to_tflite(..., int4=True)` stores the
        kernel exactly as INT4. At most 15 levels; centers that would round to the same code
        take the nearest free ones.

    Example:
      >>> q = MultivaluedQuantizer(bits=2, division="linear")
      >>> q.levels
      4
      >>> MultivaluedQuantizer.from_config(q.get_config()) == q
      True
      >>> pruned = MultivaluedQuantizer(bits=3, sparsity=0.9)
      >>> MultivaluedQuantizer.from_config(pruned.get_config()).sparsity
      0.9
      >>> four_bit = MultivaluedQuantizer(bits=3, int4_grid=True)
      >>> MultivaluedQuantizer.from_config(four_bit.get_config()).grid_codes
      7
    """

    def __init__(
        self,
        bits=3,
        levels=None,
        division="kmeans",
        mode="auto",
        entropy_weight=0.1,
        sparsity=0.0,
        int4_grid=False,
    ):
        self.bits = check_int("bits", bits, 1, 8)
        self.levels = 2**self.bits if levels is None else check_int("levels", levels, 2, 256)
        self._levels_given = levels is not None
        self.division = Division.parse(division, "division")
        self.mode = Mode.parse(mode, "mode")
        self.entropy_weight = check_float("entropy_weight", entropy_weight, 0.0, 1e6, False)
        self.sparsity = check_sparsity(sparsity, self.levels)
        self.int4_grid = check_bool("int4_grid", int4_grid)
        if self.int4_grid and self.levels > 2 * _INT4_CODES + 1:
            given = f"levels={self.levels}" if levels is not None else f"bits={self.bits}"
            raise ValueError(
                f"int4_grid=True allows at most {2 * _INT4_CODES + 1} levels (codes "
                f"-{_INT4_CODES}..{_INT4_CODES}), so bits <= 3 or levels <= "
                f"{2 * _INT4_CODES + 1}. Received: {given} with int4_grid=True"
            )

    # The schedules' progress: the MPA intervals and the pull/adaptation bookkeeping.
    training_state = (
        "interval_bounds",
        "interval_done",
        "adapting_interval",
        "adaptation",
        "pull_strength",
        "schedule_step",
    )

    @property
    def grid_codes(self):
        """Largest code of the grid the centers live on: 7 with `int4_grid`, else 127."""
        return _INT4_CODES if self.int4_grid else _LEVELS_IN_INT8

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
        if self.sparsity > 0:
            scalar("zero_threshold", 0.0)
        self._owner = layer
        return variables

    def initialize(self, kernel, weights, importance=None):
        """Divides `kernel` into the codebook (Eq. 1 and 9) and resets all schedule state."""
        kernel = np.asarray(kernel)
        if self.sparsity > 0:
            centers, threshold = sparse_centers(
                kernel,
                self.levels,
                self.sparsity,
                self.division,
                importance,
                self.entropy_weight,
                codes=self.grid_codes,
            )
            weights["zero_threshold"].assign(threshold)
            bounds = zero_interval_bounds(centers, kernel.min(), kernel.max(), threshold)
        else:
            centers = snap_centers(
                divide(kernel, self.levels, self.division, importance, self.entropy_weight),
                self.grid_codes,
            )
            bounds = interval_bounds(centers, kernel.min(), kernel.max())
        weights["centers"].assign(centers)
        weights["interval_bounds"].assign(bounds)
        weights["interval_done"].assign(np.zeros(self.levels, np.float32))
        weights["frozen_mask"].assign(tf.zeros_like(weights["frozen_mask"]))
        for key, value in _SCHEDULE_SCALARS.items():
            weights[key].assign(value)
        weights["initialized"].assign(1.0)

    def _quantize(self, inputs, training, weights):
        threshold = weights.get("zero_threshold")
        if self.mode is not Mode.MASKED:
            return multivalued(inputs, weights["centers"], None, threshold)
        # Inside the traced train step only (Keras' `fit`); an eager call has no loss to join.
        if training and tf.inside_function() and getattr(self, "_owner", None) is not None:
            self._owner.add_loss(adaptation_pull(inputs, weights))
        return multivalued(
            inputs, weights["centers"], weights["frozen_mask"], threshold, weights["center_tuning"]
        )

    def hard_quantize(self, kernel, weights):
        kernel = tf.convert_to_tensor(kernel)
        if "zero_threshold" in weights:
            return snap_with_zero_interval(kernel, weights["centers"], weights["zero_threshold"])[0]
        return nearest_level(kernel, weights["centers"])[0]

    def grid_step(self, kernel, weights, codes=_LEVELS_IN_INT8):
        # Centers sit on the grid max|center| / grid_codes. A finer export grid holds them when
        # it divides it (int4_grid: 127 // 7 = 18 int8 codes per 4-bit code); other code
        # counts are exact only if the codebook happens to lie on their grid (`export_exact`).
        top = tf.reduce_max(tf.abs(weights["centers"]))
        if self.int4_grid:
            return top / (self.grid_codes * max(codes // self.grid_codes, 1))
        return top / codes

    def get_config(self):
        return {
            "bits": self.bits,
            "levels": self.levels if self._levels_given else None,
            "division": self.division.value,
            "mode": self.mode.value,
            "entropy_weight": self.entropy_weight,
            "sparsity": self.sparsity,
            "int4_grid": self.int4_grid,
        }


def check_sparsity(sparsity, levels):
    """Validates `sparsity` in [0, 1) (and at least 3 levels when it is > 0)."""
    value = check_float("sparsity", sparsity, 0.0, 1.0, low_open=False)
    if value >= 1.0:
        raise ValueError(f"sparsity must be in [0, 1). Received: sparsity={sparsity}")
    if value > 0 and levels < 3:
        raise ValueError(
            "sparsity > 0 needs at least 3 levels (the zero center and one on each side). "
            f"Received: levels={levels} with sparsity={sparsity}"
        )
    return value
