"""Shared pieces of the schedules: finding the quantizers a schedule drives."""

import dataclasses
import logging

import numpy as np

from tfquant._keras import check_keras2_model, quantized_weights, tf
from tfquant.coding.division import divide
from tfquant.options import Mode
from tfquant.quantizers.base import _LEVELS_IN_INT8, check_int, nearest_level
from tfquant.quantizers.multivalued import MultivaluedQuantizer, interval_bounds

logger = logging.getLogger("tfquant")


def say(message, verbose):
    """Logs a schedule message; prints it too when `verbose`."""
    logger.info(message)
    if verbose:
        print(message)


@dataclasses.dataclass
class ScheduledLayer:
    """One kernel a schedule drives: its wrapper name, kernel variable and quantizer state."""

    name: str
    kernel: object
    quantizer: MultivaluedQuantizer
    state: dict

    @property
    def levels(self):
        return self.quantizer.levels


def masked_multivalued_layers(model, schedule):
    """The model's multivalued quantizers in `masked` mode, in layer order.

    Raises:
      TypeError: not a tf_keras model (e.g. a Keras 3 one).
      ValueError: the model has none (with the fix in the message).
    """
    check_keras2_model(model)
    layers, snapping = [], []
    for wrapper, weight, quantizer, state in quantized_weights(model):
        if isinstance(quantizer, MultivaluedQuantizer):
            if quantizer.mode is Mode.MASKED:
                layers.append(ScheduledLayer(wrapper.name, weight, quantizer, state))
            else:
                snapping.append(wrapper.name)
    if not layers:
        hint = (
            f" Its multivalued layers {snapping} snap every weight already: quantize with "
            "tfq.schemes.Multivalued(..., mode='masked') for a schedule."
            if snapping
            else " Quantize it with tfq.schemes.Multivalued(..., mode='masked') first."
        )
        raise ValueError(
            f"{schedule} needs a model with tfquant multivalued quantizers in 'masked' mode."
            f"{hint} Received: model {model.name!r}"
        )
    return layers


def order_by_names(layers, names):
    """`layers` with the named ones first, in the order of `names`; the rest keep model order.

    Raises:
      ValueError: a name is not one of the scheduled layers.
    """
    known = [layer.name for layer in layers]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"order names layers that have no masked multivalued quantizer: {unknown}. "
            f"Allowed: {known}. Received: order={names!r}"
        )
    rank = {name: i for i, name in enumerate(names)}
    return sorted(layers, key=lambda layer: rank.get(layer.name, len(rank)))


class FiniteGuard:
    """Keeps a schedule from advancing when the loss or a weight of the model holds NaN or Inf,
    and says so once per epoch.

    A NaN or Inf in a batch (bad input data) or a diverging step poisons the weights; advancing
    then would freeze NaN weights, or snap them to an arbitrary center and call that quantized.
    The loss alone does not tell: under QAT the FakeQuant ops clamp what flows forward, so a NaN
    input batch made the input quantizer's range and the first kernel NaN while the loss stayed
    finite (seen on the digits CNN: loss 2.30, conv1's kernel all NaN; with conv1 frozen, only
    its bias and the input range). So the guard checks the loss and every float variable.
    The schedule skips the step, its state (centers, masks, phase) stays what it was before the
    bad batch, and a restore from a backup resumes cleanly.
    """

    def __init__(self, schedule, verbose):
        self.schedule = schedule
        self.verbose = verbose
        self.skipped = 0
        self._variables = []

    def watch(self, model, layers):
        """Checks `model`'s float variables from now on (call in `on_train_begin`), except the
        schedule state of `layers`, which only the schedule writes (about half the cost: the
        frozen masks are as large as the kernels; 0.35 ms a batch on LeNet-5 here)."""
        own = {id(v) for layer in layers for v in layer.state.values()}
        self._variables = [v for v in model.weights if v.dtype.is_floating and id(v) not in own]
        self._check = compiled(self._all_finite, model)

    def _all_finite(self):
        return tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in self._variables])

    def new_epoch(self):
        self.skipped = 0

    def finite(self, logs, where):
        """True when the loss in `logs` (if any) and every watched kernel are finite; else
        counts the skip and, the first time in the epoch, says why."""
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            reason = f"loss is {float(loss)}"
        else:
            finite = self._check().numpy() if self._variables else []
            bad = [v.name for v, ok in zip(self._variables, finite, strict=True) if not ok]
            if not bad:
                return True
            reason = f"the weights {bad[:4]}{' ...' if len(bad) > 4 else ''} hold NaN or Inf"
        self.skipped += 1
        if self.skipped == 1:
            say(
                f"{self.schedule}: {reason} {where}; the schedule does not advance and its "
                "centers, masks and phase stay as they were. A batch held NaN or Inf (check the "
                "input data: under QAT a NaN input can reach the weights without making the loss "
                "NaN) or training diverged (lower the learning rate); restore the last good "
                "weights (e.g. keras.callbacks.BackupAndRestore) and train on.",
                self.verbose,
            )
        return False

    def end_epoch(self, epoch):
        if self.skipped > 1:
            say(
                f"{self.schedule}: {self.skipped} steps of epoch {epoch} had a non-finite loss or "
                "kernel; the schedule did not advance on any of them.",
                self.verbose,
            )


def last_batch(callback, batch):
    """True at the epoch's last batch when `fit` knows the batches per epoch. Schedules close
    an epoch there rather than in `on_epoch_end`, so that their state is final before any
    callback's `on_epoch_end` runs (BackupAndRestore saves there, before or after us depending
    on the order of the callback list)."""
    steps = (callback.params or {}).get("steps")
    return bool(steps) and batch + 1 >= steps


def check_steps_per_epoch(value):
    """Validates an optional `steps_per_epoch` argument."""
    if value is None:
        return None
    return check_int("steps_per_epoch", value, 1, 10**9)


def batches_per_epoch(callback):
    """Batches per epoch for a batch-level schedule: its own setting, else what `fit` knows."""
    steps = callback.steps_per_epoch or (callback.params or {}).get("steps")
    if not steps:
        name = type(callback).__name__
        raise ValueError(
            f"{name} needs the number of batches per epoch: pass steps_per_epoch to fit() or "
            f"to {name}. Received: steps_per_epoch=None"
        )
    return int(steps)


def compiled(function, model):
    """`tf.function` for a schedule's per-batch update: XLA-fused on one device; plain under a
    multi-replica strategy (XLA cannot touch the replicas' variables on other devices).

    `function` is a bound method of the callback; the compiled function is kept on the
    callback per model, so calling `fit` again (e.g. one epoch at a time) does not trace and
    XLA-compile it again (that cost seconds per `fit`).
    """
    owner, name = function.__self__, function.__name__
    cache = owner.__dict__.setdefault("_compiled_functions", {})
    key = (name, id(model))
    if key not in cache or cache[key][0] is not model:
        replicas = model.distribute_strategy.num_replicas_in_sync
        cache[key] = (model, tf.function(function, jit_compile=replicas == 1))
    return cache[key][1]


def recluster_free_weights(layer):
    """k-means on the free weights for the unfinished intervals; finished ones stay (MPA,
    end of "Fine-tuning"; SLQ's re-clustering between rounds). New centers stay on the
    layer's int8 grid, fixed by its largest |center|."""
    state = layer.state
    centers = state["centers"].numpy().astype(np.float64)
    bounds = state["interval_bounds"].numpy().astype(np.float64)
    done = state["interval_done"].numpy() > 0.5
    free = layer.kernel.numpy()[state["frozen_mask"].numpy() < 0.5]
    open_slots = np.flatnonzero(~done)
    contiguous = open_slots.size and np.all(np.diff(open_slots) == 1)
    if not contiguous or free.size < open_slots.size:
        return
    step = np.abs(centers).max() / _LEVELS_IN_INT8
    fresh = np.round(divide(free, open_slots.size, "kmeans") / step) * step
    centers[open_slots] = np.sort(fresh)
    first, last = open_slots[0], open_slots[-1]
    bounds[first : last + 2] = interval_bounds(
        centers[first : last + 1], bounds[first], bounds[last + 1]
    )
    state["centers"].assign(centers.astype(np.float32))
    state["interval_bounds"].assign(bounds.astype(np.float32))


def freeze_intervals(layer, intervals):
    """Snaps and freezes every free weight inside the given intervals, marks them done, and
    clips the remaining free weights into the span of the unfinished intervals (MPA Eq. 15).
    When every interval is done, every weight is snapped and frozen."""
    state = layer.state
    centers = state["centers"].numpy()
    bounds = state["interval_bounds"].numpy()
    done = state["interval_done"].numpy() > 0.5
    kernel = layer.kernel.numpy()
    frozen = state["frozen_mask"].numpy() > 0.5
    for interval in intervals:
        inside = ~frozen & (kernel >= bounds[interval]) & (kernel <= bounds[interval + 1])
        kernel = np.where(inside, centers[interval], kernel)
        frozen |= inside
        done[interval] = True
    if done.all():
        kernel = np.asarray(nearest_level(tf.constant(kernel), tf.constant(centers))[0])
        frozen[...] = True
    else:
        low, high = bounds[:-1][~done].min(), bounds[1:][~done].max()
        kernel = np.where(frozen, kernel, np.clip(kernel, low, high))
    layer.kernel.assign(kernel)
    state["frozen_mask"].assign(frozen.astype(np.float32))
    state["interval_done"].assign(done.astype(np.float32))


def hold(kernel, state):
    """Graph code run after every batch: frozen weights back on their centers (momentum may
    have moved them), free weights clipped into the span of the unfinished intervals (Eq. 15).
    """
    weights = tf.convert_to_tensor(kernel)
    frozen = state["frozen_mask"] > 0.5
    snapped = nearest_level(weights, state["centers"])[0]
    unfinished = state["interval_done"] < 0.5
    kernel.assign(
        clip_free(tf.where(frozen, snapped, weights), frozen, state["interval_bounds"], unfinished)
    )


def clip_free(weights, frozen, bounds, unfinished):
    """MPA Eq. 15: free weights clipped to [min, max] of the unfinished intervals' span."""
    low = tf.reduce_min(tf.where(unfinished, bounds[:-1], np.inf))
    high = tf.reduce_max(tf.where(unfinished, bounds[1:], -np.inf))
    clipped = tf.clip_by_value(weights, tf.minimum(low, high), tf.maximum(low, high))
    return tf.where(frozen | ~tf.reduce_any(unfinished), weights, clipped)


def layer_scalars(layers):
    """Per-layer schedule scalars for epoch logs / TensorBoard."""
    out = {}
    for layer in layers or []:
        state = layer.state
        kernel = tf.convert_to_tensor(layer.kernel)
        error = tf.reduce_mean(tf.abs(kernel - nearest_level(kernel, state["centers"])[0]))
        out[f"{layer.name}/frozen_fraction"] = float(np.mean(state["frozen_mask"].numpy()))
        out[f"{layer.name}/adaptation"] = float(state["adaptation"].numpy())
        out[f"{layer.name}/pull_strength"] = float(state["pull_strength"].numpy())
        out[f"{layer.name}/quantization_error"] = float(error.numpy())
    return out
