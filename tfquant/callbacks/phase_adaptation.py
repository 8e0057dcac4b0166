"""MPA (Multiple Phase Adaptations, seed 002) as a Keras callback.

Per layer, intervals are processed one phase each by descending |center| (Eq. 11). During a
phase the adaptation coefficient s rises from 0 to 1 (Eq. 5-6); weights inside
A_r = [c - s|c - e_l|, c + s|c - e_r|] are snapped to c and frozen (Eq. 7-8); the free weights
of the interval are pulled toward c by λ_i · L1 (Eq. 4, 12-13, the quantizer adds the loss);
free weights are clipped into the span of the unfinished intervals (Eq. 15). The callback only
assigns quantizer variables; all its state lives in them, so it resumes from checkpoints.
"""

import numpy as np

from tfquant._keras import keras, tf
from tfquant.callbacks.base import (
    AfterStep,
    FiniteGuard,
    batches_per_epoch,
    check_steps_per_epoch,
    clip_free,
    guarded,
    last_batch,
    layer_scalars,
    masked_multivalued_layers,
    order_by_names,
    recluster_free_weights,
    say,
    settle_centers,
    values,
)
from tfquant.quantizers.base import (
    check_bool,
    check_float,
    check_int,
    nearest_level,
)
from tfquant.quantizers.multivalued import (
    HOLD,
    STRAIGHT_THROUGH,
    TUNE_CENTERS,
    finishing,
    straight_through_finish,
)

_ORDERS = ("parallel", "sequential")
_UPDATES = ("batch", "epoch")
# What follows the last phase, and the value of the quantizer's `center_tuning` variable then.
_FINISHES = {"hold": HOLD, "tune_centers": TUNE_CENTERS, "straight_through": STRAIGHT_THROUGH}


@values
def _adapted(weights, mask, centers, bounds, done, interval, adaptation, finite):
    """One MPA update of one layer's weights and frozen mask (`interval` < 0: none adapts);
    where `finite` is False (the guard saw NaN or Inf), the weights and mask as they were."""
    count = centers.shape[0]
    active = interval >= 0
    index = tf.clip_by_value(interval, 0, count - 1)
    center = tf.gather(centers, index)
    left = center - adaptation * tf.abs(center - tf.gather(bounds, index))  # Eq. 5-6
    right = center + adaptation * tf.abs(tf.gather(bounds, index + 1) - center)
    frozen = mask > 0.5
    newly = active & ~frozen & (weights >= left) & (weights <= right)  # Eq. 8
    snapped, _ = nearest_level(weights, centers)
    adapted = tf.where(frozen, snapped, tf.where(newly, center, weights))  # Eq. 7
    frozen = frozen | newly
    finishing = active & (tf.range(count) == index) & (adaptation >= 1.0)
    unfinished = ~((done > 0.5) | finishing)
    adapted = clip_free(adapted, frozen, bounds, unfinished)  # Eq. 15
    return guarded(finite, (adapted, tf.cast(frozen, mask.dtype)), (weights, mask))


def _adapt(kernel, state, interval, adaptation, finite):
    """One MPA update of one layer (graph code); nothing changes where `finite` is False."""
    weights, frozen = _adapted(
        tf.convert_to_tensor(kernel),
        tf.convert_to_tensor(state["frozen_mask"]),
        tf.convert_to_tensor(state["centers"]),
        tf.convert_to_tensor(state["interval_bounds"]),
        tf.convert_to_tensor(state["interval_done"]),
        interval,
        adaptation,
        finite,
    )
    kernel.assign(weights)
    state["frozen_mask"].assign(frozen)
    adapted = tf.where(interval >= 0, adaptation, 0.0)
    state["adaptation"].assign(tf.where(finite, adapted, state["adaptation"]))
    state["schedule_step"].assign_add(tf.cast(finite, tf.float32))


@values
def _recentered(weights, centers, keep_zero, finite):
    """Center tuning of one fully quantized layer: the optimizer has just moved its weights
    (straight-through gradients while `center_tuning` is 1); each center moves to the mean of
    its weights and the weights go back onto their centers, so the codebook takes the mean
    step of its members (Deep Compression's centroid update). `keep_zero` (a Python bool):
    the zero center of a sparse layer stays 0, so its pruned weights stay 0."""
    _, index = nearest_level(weights, centers)  # steps are far smaller than the gaps
    moved = []
    for j in range(centers.shape[0]):
        member = tf.equal(index, j)
        count = tf.reduce_sum(tf.cast(member, weights.dtype))
        total = tf.reduce_sum(tf.where(member, weights, tf.zeros_like(weights)))
        moved.append(tf.where(count > 0, total / tf.maximum(count, 1.0), centers[j]))
    moved = tf.stack(moved)
    if keep_zero:
        zero = tf.range(centers.shape[0]) == tf.cast(tf.argmin(tf.abs(centers)), tf.int32)
        moved = tf.where(zero, 0.0, moved)
    return guarded(finite, (tf.gather(moved, index), tf.sort(moved)), (weights, centers))


def _recenter(kernel, state, keep_zero, finite):
    """One center-tuning step of one layer (graph code); nothing changes where `finite` is
    False."""
    weights, centers = _recentered(
        tf.convert_to_tensor(kernel), tf.convert_to_tensor(state["centers"]), keep_zero, finite
    )
    kernel.assign(weights)
    state["centers"].assign(centers)
    state["schedule_step"].assign_add(tf.cast(finite, tf.float32))


class PhaseAdaptation(keras.callbacks.Callback):
    """MPA schedule: turns `masked` multivalued layers into exact codebooks during `fit`.

    Every layer needs k phases (k = its levels) of `epochs_per_phase` epochs each in
    `parallel` order, or one layer after another in `sequential` order; `epochs_needed(model)`
    tells how many. After the last phase every weight of every scheduled layer is exactly a
    center. A NaN or Inf in the loss or in any weight holds the schedule where it is, with a
    message (`base.FiniteGuard`). Put this callback before a TensorBoard callback: it adds
    per-layer scalars (`<layer>/frozen_fraction`, `/adaptation`, `/pull_strength`,
    `/quantization_error`) to the epoch logs.

    Args:
      epochs_per_phase: epochs over which s goes from 0 to 1 (paper: about 2); a fraction
        such as 0.5 is allowed with update="batch".
      pull_strength: λ0 of Eq. 13 (paper: 0.01).
      pull_decay: d0 of Eq. 13, λ_i = λ0 · d0^i for the i-th scheduled layer (paper: 0.95).
      recluster: re-run k-means on the still-free weights before each new phase, moving the
        unfinished centers (paper, end of "Fine-tuning").
      order: "parallel" (all layers together), "sequential" (model order), or a list of
        layer names (sequential in that order; layers not listed follow in model order).
      update: "batch" (s grows every batch, the paper's iterations) or "epoch".
      steps_per_epoch: batches per epoch, when `fit` cannot know it (an infinite dataset).
      verbose: 1 prints one line per finished interval; 0 only logs them.
      zero_first: in layers quantized with `sparsity` > 0, quantize the zero interval first
        (prune, then quantize the rest while the network recovers, as in Deep Compression)
        instead of last by |center|; layers without a zero interval are not affected.
        Re-clustering never moves the zero center.
      fused: with update="batch", run the per-batch update inside Keras' train step (same
        `tf.function`, no extra dispatch; see `base.AfterStep` for when it falls back to a
        hook). False always uses the `on_train_batch_end` hook; both give the same result.
      finish: what the epochs after a layer's last phase do (give the schedule more epochs
        than `epochs_needed` for it to act).
        "hold" (the paper: MPA ends with every weight frozen; only the unquantized
        parameters, such as biases, train on).
        "tune_centers" (Deep Compression's centroid fine-tuning): every weight keeps its
        center, each center moves by the mean step of its weights, and at the end of `fit`
        the centers go back onto the int8 grid. Costs a few per-center sums per batch.
        "straight_through": the weights thaw with the centers fixed; the forward pass uses
        each weight's nearest center and the gradient passes straight through, as in naive
        snap-and-finetune, so a weight may move to another center; pruned weights (a zero
        interval) get no gradient and stay pruned. At the end of `fit` every weight goes onto
        its nearest center. Not in the paper, whose frozen weights cannot correct an early
        assignment. Ternary LeNet-5 on Fashion-MNIST (`benchmarks/schedules.py`, row
        MPA+STE, 3 seeds): phases in half the epochs, then this finish, gained 0.79 pt over
        naive fine-tuning where plain MPA gained 0.18. Costs nothing per batch.
      tune_centers: True is the older spelling of finish="tune_centers".

    Example:
      >>> schedule = PhaseAdaptation(epochs_per_phase=1, recluster=True, finish="straight_through")
      >>> PhaseAdaptation.from_config(schedule.get_config()).get_config() == schedule.get_config()
      True
    """

    def __init__(
        self,
        epochs_per_phase=2,
        pull_strength=0.01,
        pull_decay=0.95,
        recluster=False,
        order="parallel",
        update="batch",
        steps_per_epoch=None,
        verbose=1,
        zero_first=True,
        fused=True,
        finish="hold",
        tune_centers=False,
    ):
        super().__init__()
        self.epochs_per_phase = check_float("epochs_per_phase", epochs_per_phase, 0.0, 10_000.0)
        if update == "epoch" and self.epochs_per_phase != int(self.epochs_per_phase):
            raise ValueError(
                "epochs_per_phase must be a whole number with update='epoch'. "
                f"Received: epochs_per_phase={epochs_per_phase}"
            )
        self.pull_strength = check_float("pull_strength", pull_strength, 0.0, 1e6, low_open=False)
        self.pull_decay = check_float("pull_decay", pull_decay, 0.0, 1.0)
        self.recluster = check_bool("recluster", recluster)
        if isinstance(order, str):
            if order not in _ORDERS:
                raise ValueError(
                    f"order must be one of {_ORDERS} or a list of layer names. "
                    f"Received: order={order!r}"
                )
        elif not (isinstance(order, (list, tuple)) and all(isinstance(n, str) for n in order)):
            raise TypeError(
                f"order must be one of {_ORDERS} or a list of layer names. "
                f"Received: order={order!r}"
            )
        self.order = order if isinstance(order, str) else list(order)
        if update not in _UPDATES:
            raise ValueError(f"update must be one of {_UPDATES}. Received: update={update!r}")
        self.update = update
        self.steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
        self.verbose = check_int("verbose", verbose, 0, 2)
        self.zero_first = check_bool("zero_first", zero_first)
        self.fused = check_bool("fused", fused)
        if finish not in _FINISHES:
            raise ValueError(
                f"finish must be one of {tuple(_FINISHES)}. Received: finish={finish!r}"
            )
        if check_bool("tune_centers", tune_centers):
            if finish != "hold":
                raise ValueError(
                    "tune_centers=True is finish='tune_centers'; give one of them. "
                    f"Received: finish={finish!r}, tune_centers=True"
                )
            finish = "tune_centers"
        self.finish = finish
        self._layers = None
        self._guard = FiniteGuard(type(self).__name__, self.verbose)
        self._after_step = AfterStep(self.fused)

    # -- configuration -----------------------------------------------------------------------
    def get_config(self):
        return {
            "epochs_per_phase": self.epochs_per_phase,
            "pull_strength": self.pull_strength,
            "pull_decay": self.pull_decay,
            "recluster": self.recluster,
            "order": self.order,
            "update": self.update,
            "steps_per_epoch": self.steps_per_epoch,
            "verbose": self.verbose,
            "zero_first": self.zero_first,
            "fused": self.fused,
            "finish": self.finish,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- timeline ----------------------------------------------------------------------------
    def _ordered(self, model, adopt=False):
        layers = masked_multivalued_layers(model, type(self).__name__, adopt)
        if isinstance(self.order, list):
            layers = order_by_names(layers, self.order)
        return layers

    def _offsets(self, layers):
        """First phase of each layer on the schedule's timeline."""
        if self.order == "parallel":
            return [0] * len(layers)
        return list(np.cumsum([0] + [layer.levels for layer in layers[:-1]]))

    def epochs_needed(self, model):
        """Epochs of `fit` this schedule needs on `model` to quantize every layer."""
        layers = self._ordered(model)
        offsets = self._offsets(layers)
        phases = max(o + layer.levels for o, layer in zip(offsets, layers, strict=True))
        return int(np.ceil(phases * self.epochs_per_phase))

    def _units_per_phase(self):
        if self.update == "epoch":
            return int(self.epochs_per_phase)
        return max(1, round(self.epochs_per_phase * batches_per_epoch(self)))

    # -- Keras hooks -------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._layers = self._ordered(self.model, adopt=True)
        self._offset = self._offsets(self._layers)
        self._per_phase = self._units_per_phase()
        self._guard.watch(self.model, self._layers)
        self._after_step.install(
            self.model, self._graph_update, (self._per_phase,), fuse=self.update == "batch"
        )

    def on_train_end(self, logs=None):
        self._after_step.uninstall(self.model)
        for layer in self._layers or []:
            mode = layer.state["center_tuning"].numpy()
            if straight_through_finish(mode):  # every weight onto its (fixed) center
                layer.kernel.assign(layer.quantizer.hard_quantize(layer.kernel, layer.state))
            elif finishing(mode):
                settle_centers(layer)  # tuned centers back on the int8 grid (exact export)

    def on_epoch_begin(self, epoch, logs=None):
        # Python mirrors of two variables, read back at every epoch start (after
        # BackupAndRestore or a checkpoint restored them) and kept in step afterwards.
        self._schedule_step = int(self._layers[0].state["schedule_step"].numpy())
        self._adapting = [int(layer.state["adapting_interval"].numpy()) for layer in self._layers]
        self._issued = 0  # steps run since the mirror was last read back
        self._epoch, self._advanced_this_epoch = epoch, False
        self._guard.new_epoch()

    def on_train_batch_begin(self, batch, logs=None):
        # Before the step, fused or not: the interval's pull (Eq. 12) acts from a phase's
        # first batch on.
        self._prepare()

    def on_train_batch_end(self, batch, logs=None):
        # update="epoch" advances after the epoch's last batch, before any on_epoch_end (where
        # BackupAndRestore saves); in on_epoch_end only when fit does not know the batch count.
        if self._after_step.active:
            self._issued += 1
            if (self._schedule_step + self._issued) % self._per_phase == 0:
                self._sync(logs)  # a phase may have ended
        elif self.update == "batch" or last_batch(self, batch):
            self._advance(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.update == "epoch" and not self._advanced_this_epoch:
            self._advance(logs)
        if self._after_step.active:
            self._sync(logs)
        self._guard.end_epoch(epoch)
        if logs is not None:
            logs.update(self.scalars())

    # -- the schedule ------------------------------------------------------------------------
    def _graph_update(self, loss):
        """Graph code, one schedule step (fused into the train step, or called after it): if
        the loss and the weights are finite, s = (step mod units + 1) / units on every layer
        with an adapting interval (chosen beforehand by `_prepare`), then Eq. 5-8 and 15.

        The guard's answer goes into the update as a tensor (see `base.guarded`)."""
        finite = self._guard.graph_finite(loss)
        step = tf.cast(self._layers[0].state["schedule_step"], tf.int32)
        adaptation = tf.cast(step % self._per_phase + 1, tf.float32) / self._per_phase
        for layer in self._layers:
            state = layer.state
            interval = tf.cast(state["adapting_interval"], tf.int32)
            if self.finish == "hold":
                _adapt(layer.kernel, state, interval, adaptation, finite)
                continue
            sparse = "zero_threshold" in state

            def adapt(layer=layer, interval=interval):
                _adapt(layer.kernel, layer.state, interval, adaptation, finite)
                return tf.constant(True)

            def finish(layer=layer, sparse=sparse):
                if self.finish == "tune_centers":
                    _recenter(layer.kernel, layer.state, sparse, finite)
                else:  # straight-through: the optimizer alone moves the weights
                    layer.state["schedule_step"].assign_add(tf.cast(finite, tf.float32))
                return tf.constant(True)

            tf.cond(finishing(state["center_tuning"]), finish, adapt)
        return finite

    def _prepare(self):
        """At a phase start, picks each layer's next interval (Python: Eq. 11, re-clustering)."""
        if -1 not in self._adapting:
            return
        phase = (self._schedule_step + self._issued) // self._per_phase
        for position, layer in enumerate(self._layers):
            if self._adapting[position] < 0 and 0 <= phase - self._offset[position] < layer.levels:
                self._adapting_interval(layer, position)

    def _sync(self, logs):
        """Reads the step count back: reports steps the graph skipped (non-finite loss or
        weights), and finishes the intervals when a phase's last step ran. Fused, this runs
        only where a phase would end and at the epoch's end (a read is a host sync)."""
        step = int(self._layers[0].state["schedule_step"].numpy())
        expected = self._schedule_step + self._issued
        if step < expected:
            where = f"at schedule step {step} (epoch {self._epoch})"
            self._guard.skipped_steps(expected - step, logs, where)
        finished = step > self._schedule_step and step % self._per_phase == 0
        self._schedule_step, self._issued = step, 0
        if finished and not self._guard.finite(logs, f"at the end of phase (epoch {self._epoch})"):
            return  # kernels hold NaN: the intervals stay open, their phase runs again
        if finished:
            for position, layer in enumerate(self._layers):
                if self._adapting[position] >= 0:
                    self._finish_interval(layer, self._adapting[position])
                    self._adapting[position] = -1

    def _advance(self, logs):
        """One schedule step from a hook (not fused)."""
        self._advanced_this_epoch = True
        self._prepare()
        self._after_step.run(logs)
        self._issued += 1
        self._sync(logs)

    def _adapting_interval(self, layer, position):
        """The layer's adapting interval; at a phase start picks the next one (Eq. 11)."""
        current = self._adapting[position]
        if current >= 0:
            return current
        state = layer.state
        done = state["interval_done"].numpy() > 0.5
        zero = int(np.argmin(np.abs(state["centers"].numpy())))
        sparse = getattr(layer.quantizer, "sparsity", 0.0) > 0
        if self.recluster and done.any() and not (sparse and not done[zero]):
            recluster_free_weights(layer)
        centers = state["centers"].numpy()
        magnitude = np.where(done, -np.inf, np.abs(centers))
        interval = int(np.argmax(magnitude))  # largest |center| still unquantized
        if sparse and self.zero_first and not done[zero]:
            interval = zero  # the zero interval (pruning) first
        state["adapting_interval"].assign(float(interval))
        state["pull_strength"].assign(self.pull_strength * self.pull_decay**position)
        self._adapting[position] = interval
        return interval

    def _finish_interval(self, layer, interval):
        state = layer.state
        done = state["interval_done"].numpy()
        done[interval] = 1.0
        state["interval_done"].assign(done)
        state["adapting_interval"].assign(-1.0)
        state["adaptation"].assign(0.0)
        state["pull_strength"].assign(0.0)
        if done.all():  # every weight exactly a center, even any left outside the intervals
            layer.kernel.assign(nearest_level(layer.kernel, state["centers"])[0])
            state["frozen_mask"].assign(tf.ones_like(state["frozen_mask"]))
            state["center_tuning"].assign(_FINISHES[self.finish])
        frozen = float(np.mean(state["frozen_mask"].numpy()))
        center = float(state["centers"].numpy()[interval])
        self._say(
            f"PhaseAdaptation: {layer.name} interval {int(done.sum())}/{layer.levels} "
            f"(center {center:+.5f}) quantized; {frozen:.1%} of its weights frozen."
        )

    def scalars(self):
        """Per-layer schedule scalars for logs / TensorBoard."""
        return layer_scalars(self._layers)

    def _say(self, message):
        say(message, self.verbose)
