"""Shared pieces of the schedules: finding the quantizers a schedule drives."""

import dataclasses
import logging

import numpy as np

from tfquant._keras import check_keras2_model, quantized_weights, tf
from tfquant.coding.division import divide
from tfquant.options import Mode
from tfquant.quantizers.base import check_int, nearest_level
from tfquant.quantizers.multivalued import (
    MultivaluedQuantizer,
    interval_bounds,
    snap_centers,
)

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


def multivalued_layers(model, keep):
    """The model's multivalued quantizers that `keep(quantizer)` selects, in layer order, as
    `ScheduledLayer`s, and `(wrapper name, quantizer)` of every other quantized weight (for
    the error message of a schedule that found none).

    Raises:
      TypeError: not a tf_keras model (e.g. a Keras 3 one).
    """
    check_keras2_model(model, distiller=True)
    layers, others = [], []
    for wrapper, weight, quantizer, state in quantized_weights(model):
        if isinstance(quantizer, MultivaluedQuantizer) and keep(quantizer):
            layers.append(ScheduledLayer(wrapper.name, weight, quantizer, state))
        else:
            others.append((wrapper.name, quantizer))
    return layers, others


def masked_multivalued_layers(model, schedule, adopt=False):
    """The model's multivalued quantizers a schedule can run, in layer order: those in
    `masked` mode and those in `auto` mode (the default).

    With `adopt` (a schedule starting in `on_train_begin`), the `auto` ones turn `masked` and
    the model's train, test and predict functions are rebuilt, so the steps of this `fit`
    compute with the new mode (they would keep the mode they were traced with).

    Raises:
      TypeError: not a tf_keras model (e.g. a Keras 3 one).
      ValueError: the model has none (with the fix in the message).
    """
    layers, others = multivalued_layers(model, lambda q: q.mode is not Mode.SNAP)
    if not layers:
        snapping = [name for name, q in others if isinstance(q, MultivaluedQuantizer)]
        hint = (
            f" Its multivalued layers {snapping} were quantized with mode='snap' (every "
            "weight snaps from the first step, the naive baseline): quantize with "
            "tfq.schemes.Multivalued(...) (mode 'auto', the default) or mode='masked' for a "
            "schedule."
            if snapping
            else " Quantize it with tfq.schemes.Multivalued(...) first."
        )
        raise ValueError(
            f"{schedule} needs a model with tfquant multivalued quantizers in 'auto' or "
            f"'masked' mode.{hint} Received: model {model.name!r}"
        )
    if adopt:
        adopted = [layer for layer in layers if layer.quantizer.mode is Mode.AUTO]
        for layer in adopted:
            layer.quantizer.mode = Mode.MASKED
        if adopted:
            model.train_function = model.make_train_function(force=True)
            model.test_function = model.predict_function = None
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


def values(function):
    """XLA-compiles a schedule's pure per-layer arithmetic (tensors in, tensors out).

    The schedules read their variables, call such a function and assign its results outside
    it: XLA fuses the element-wise work into one pass over the kernel, and the new buffers go
    straight into the variables. With the assignments compiled too (resource updates inside
    XLA), the MPA update added 0.23-0.29 ms to a LeNet-5 train step; this way no extra time was
    measurable (interleaved blocks; the noise here is about 0.15 ms)."""
    return tf.function(function, jit_compile=True, reduce_retracing=False)


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
        kernels = {id(layer.kernel) for layer in layers}
        self._small = [v for v in self._variables if id(v) not in kernels]
        self._check = compiled(self._all_finite, model)

    def _all_finite(self):
        return tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in self._variables])

    def graph_finite(self, loss):
        """Graph code run after every step: True when `loss` and the watched variables other
        than the scheduled kernels are finite.

        The scheduled kernels are left to the host-side `finite` (at phase ends and epoch
        ends): scanning them every step cost as much as the schedule's own update (0.3-0.5 ms
        on LeNet-5), and a NaN cannot reach a kernel alone: a NaN gradient of a kernel comes
        with NaN output gradients, which make the layer's bias (or the following batch norm)
        NaN too, and a NaN input makes the input quantizer's range NaN (both are checked here).
        Until the host sees it, a NaN free weight is never frozen (every range test is false
        for it), so the schedule cannot bake it into a center.
        """
        return _finite(tf.cast(loss, tf.float32), [tf.convert_to_tensor(v) for v in self._small])

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

    def skipped_steps(self, count, logs, where):
        """Counts `count` steps the graph-side check (`graph_finite`) skipped and, the first
        time in the epoch, says why."""
        if self.finite(logs, where):  # the host no longer sees it (a transient NaN loss)
            self.skipped += 1
            if self.skipped == 1:
                say(
                    f"{self.schedule}: a loss or weight was NaN or Inf before {where}; the "
                    "schedule does not advance on such steps.",
                    self.verbose,
                )
        self.skipped += count - 1

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
    """Batch-hook calls per epoch for a batch-level schedule: its own `steps_per_epoch`,
    else what `fit` knows, divided by the model's `steps_per_execution` (`fit` calls the batch
    hooks once per execution)."""
    steps = callback.steps_per_epoch or (callback.params or {}).get("steps")
    if not steps:
        name = type(callback).__name__
        raise ValueError(
            f"{name} needs the number of batches per epoch: pass steps_per_epoch to fit() or "
            f"to {name}. Received: steps_per_epoch=None"
        )
    execution = getattr(callback.model, "_steps_per_execution", None)
    per_call = int(execution.numpy()) if execution is not None else 1
    return max(1, -(-int(steps) // max(per_call, 1)))


def compiled(function, model, key=()):
    """`tf.function` for a schedule's per-batch update (graph code that reads variables, calls
    `values` functions and assigns the results; works under any strategy).

    `function` is a bound method of the callback; the compiled function is kept on the
    callback per model and `key` (the Python values it bakes into its graph), so calling
    `fit` again (e.g. one epoch at a time) does not trace it again.
    """
    owner, name = function.__self__, function.__name__
    cache = owner.__dict__.setdefault("_compiled_functions", {})
    key = (name, id(model), key)
    if key not in cache or cache[key][0] is not model:
        cache[key] = (model, tf.function(function))
    return cache[key][1]


@values
def _finite(loss, tensors):
    """One XLA launch for the guard (as separate TF ops, 18 small reductions on LeNet-5 cost
    0.2 ms a step)."""
    total = loss
    for tensor in tensors:
        # v * 0 is 0 where v is finite and NaN where not; a sum of zeros cannot overflow.
        total += tf.reduce_sum(tf.cast(tensor, tf.float32) * 0.0)
    return tf.math.is_finite(total)


class AfterStep:
    """Runs a schedule's per-batch graph update right after each training step.

    Fused (the default): `install` gives the model a train function that runs Keras'
    `train_step` and then `update(loss)` in the same `tf.function`, so the update costs only
    its own arithmetic (about 0.3 ms on LeNet-5 here); called from `on_train_batch_end` it
    cost a dispatch, the guard's own launch and host syncs on top (2.3 ms, 14 % of a LeNet-5
    step). The model's own train function is back in place after `fit` (`uninstall`).

    Not fused (the schedule then calls `run` from `on_train_batch_end`) when the model runs
    on several replicas (a replica cannot assign mirrored variables), eagerly, with
    `steps_per_execution` > 1 (several steps per call would pass phase boundaries that need
    Python), on a parameter-server coordinator, when another schedule's update is fused
    already, or when the schedule was built with `fused=False`.
    """

    def __init__(self, fused):
        self.fused = fused
        self.active = False
        self._cache = {}
        self._original = None

    def install(self, model, update, key, fuse=True):
        """Fuses `update` (graph code taking the step's loss) into `model`'s train function
        unless `fuse` is False or the model cannot take it; `key` holds every Python value
        `update` bakes into its graph (a new key traces again). Returns whether it is fused;
        if not, the schedule calls `run` after its batches."""
        self._update = compiled(update, model, key)
        original = getattr(model, "train_function", None)
        spe = getattr(model, "_steps_per_execution", None)
        self.active = bool(
            self.fused
            and fuse
            and original is not None
            and not getattr(original, "_tfquant_fused", False)
            and model.distribute_strategy.num_replicas_in_sync == 1
            and not model.run_eagerly
            and getattr(model, "_cluster_coordinator", None) is None
            and not getattr(model, "_autotune_steps_per_execution", False)
            and (spe is None or int(spe.numpy()) == 1)
        )
        if not self.active:
            return False
        entry = self._cache.get(id(model))
        if entry is None or entry[0] is not model or entry[1] is not original or entry[2] != key:
            entry = (model, original, key, self._fused_function(model))
            self._cache[id(model)] = entry
        self._original = (original, getattr(model, "train_tf_function", None))
        model.train_function = model.train_tf_function = entry[3]  # TensorBoard reads the latter
        return True

    def _fused_function(self, model):
        update = self._update

        def run_step(data):
            logs = model.train_step(data)
            # Stateful ops run in program order in a tf.function: after the optimizer step.
            loss = logs.get("loss", 0.0) if isinstance(logs, dict) else 0.0
            with tf.control_dependencies(tf.nest.flatten(logs)):
                model._train_counter.assign_add(1)
                update(tf.convert_to_tensor(loss, tf.float32))
            return logs

        if model.jit_compile:
            run_step = tf.function(run_step, jit_compile=True, reduce_retracing=True)

        def train_function(iterator):
            return run_step(next(iterator))

        function = tf.function(train_function, reduce_retracing=True)
        function._tfquant_fused = True
        return function

    def run(self, logs):
        """The update for one finished batch, when not fused."""
        loss = (logs or {}).get("loss")
        self._update(tf.constant(0.0 if loss is None else float(loss), tf.float32))

    def uninstall(self, model):
        """Gives `model` its own train function back (after `fit`)."""
        if (
            self.active
            and getattr(model, "train_function", None) is self._cache.get(id(model), (None,) * 4)[3]
        ):
            model.train_function, model.train_tf_function = self._original
        self.active = False


def recluster_free_weights(layer):
    """k-means on the free weights for the unfinished intervals; finished ones stay (MPA,
    end of "Fine-tuning"; SLQ's re-clustering between rounds). New centers stay on the
    layer's int8 grid (4-bit with `int4_grid`), fixed by its largest |center|."""
    state = layer.state
    centers = state["centers"].numpy().astype(np.float64)
    bounds = state["interval_bounds"].numpy().astype(np.float64)
    done = state["interval_done"].numpy() > 0.5
    free = layer.kernel.numpy()[state["frozen_mask"].numpy() < 0.5]
    open_slots = np.flatnonzero(~done)
    contiguous = open_slots.size and np.all(np.diff(open_slots) == 1)
    if not contiguous or free.size < open_slots.size:
        return
    codes = layer.quantizer.grid_codes
    step = np.abs(centers).max() / codes
    fresh = np.clip(np.round(divide(free, open_slots.size, "kmeans") / step), -codes, codes) * step
    centers[open_slots] = np.sort(fresh)
    first, last = open_slots[0], open_slots[-1]
    bounds[first : last + 2] = interval_bounds(
        centers[first : last + 1], bounds[first], bounds[last + 1]
    )
    state["centers"].assign(centers.astype(np.float32))
    state["interval_bounds"].assign(bounds.astype(np.float32))


def settle_centers(layer):
    """Puts a layer's centers back on their grid (max|center| / 127, or / 7 with `int4_grid`)
    and every weight on its nearest center, after the centers moved off it (center tuning)."""
    state = layer.state
    centers = snap_centers(state["centers"].numpy(), layer.quantizer.grid_codes)
    kernel = layer.kernel.numpy()
    state["centers"].assign(centers)
    state["interval_bounds"].assign(interval_bounds(centers, kernel.min(), kernel.max()))
    layer.kernel.assign(nearest_level(tf.constant(kernel), tf.constant(centers))[0])


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


def held_weights(weights, mask, centers, bounds, done):
    """`hold`'s arithmetic (tensors in and out): frozen weights on their nearest centers, free
    ones clipped into the span of the unfinished intervals (Eq. 15)."""
    frozen = mask > 0.5
    snapped = nearest_level(weights, centers)[0]
    return clip_free(tf.where(frozen, snapped, weights), frozen, bounds, done < 0.5)


_held = values(held_weights)


def hold(kernel, state):
    """Graph code run after every batch: frozen weights back on their centers (momentum may
    have moved them), free weights clipped into the span of the unfinished intervals (Eq. 15).
    """
    kernel.assign(
        _held(
            tf.convert_to_tensor(kernel),
            tf.convert_to_tensor(state["frozen_mask"]),
            tf.convert_to_tensor(state["centers"]),
            tf.convert_to_tensor(state["interval_bounds"]),
            tf.convert_to_tensor(state["interval_done"]),
        )
    )


def guarded(finite, new, old):
    """Inside a schedule's XLA update: the tuple `new` where the guard's scalar `finite` is
    True, else `old` (the values as they were). The guard's answer enters the update as a
    tensor instead of a `tf.cond` around it: a TensorFlow branch is a function call of its own
    in which the new kernels were copied into the variables instead of handed over (on LeNet-5
    here PhaseAdaptation's update went from 0.55 to about 0.47 ms a step, IntervalContraction's
    from 0.65 to 0.34-0.46 ms)."""
    return tuple(tf.where(finite, n, o) for n, o in zip(new, old, strict=True))


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
