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
    FiniteGuard,
    batches_per_epoch,
    check_steps_per_epoch,
    clip_free,
    compiled,
    last_batch,
    layer_scalars,
    masked_multivalued_layers,
    order_by_names,
    recluster_free_weights,
    say,
)
from tfquant.quantizers.base import (
    check_bool,
    check_float,
    check_int,
    nearest_level,
)

_ORDERS = ("parallel", "sequential")
_UPDATES = ("batch", "epoch")


def _adapt(kernel, state, interval, adaptation):
    """One MPA update of one layer (graph code). `interval` < 0: no adapting interval."""
    centers, bounds = state["centers"], state["interval_bounds"]
    count = centers.shape[0]
    active = interval >= 0
    index = tf.clip_by_value(interval, 0, count - 1)
    center = tf.gather(centers, index)
    left = center - adaptation * tf.abs(center - tf.gather(bounds, index))  # Eq. 5-6
    right = center + adaptation * tf.abs(tf.gather(bounds, index + 1) - center)
    weights = tf.convert_to_tensor(kernel)
    frozen = state["frozen_mask"] > 0.5
    newly = active & ~frozen & (weights >= left) & (weights <= right)  # Eq. 8
    snapped, _ = nearest_level(weights, centers)
    weights = tf.where(frozen, snapped, tf.where(newly, center, weights))  # Eq. 7
    frozen = frozen | newly
    finishing = active & (tf.range(count) == index) & (adaptation >= 1.0)
    unfinished = ~((state["interval_done"] > 0.5) | finishing)
    weights = clip_free(weights, frozen, bounds, unfinished)  # Eq. 15
    kernel.assign(weights)
    state["frozen_mask"].assign(tf.cast(frozen, state["frozen_mask"].dtype))
    state["adaptation"].assign(tf.where(active, adaptation, 0.0))
    state["schedule_step"].assign_add(1.0)


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

    Example:
      >>> schedule = PhaseAdaptation(epochs_per_phase=1, recluster=True)
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
        self._layers = None
        self._guard = FiniteGuard(type(self).__name__, self.verbose)

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
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- timeline ----------------------------------------------------------------------------
    def _ordered(self, model):
        layers = masked_multivalued_layers(model, type(self).__name__)
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
        self._layers = self._ordered(self.model)
        self._offset = self._offsets(self._layers)
        self._per_phase = self._units_per_phase()
        self._step_fn = compiled(self._apply, self.model)
        self._guard.watch(self.model, self._layers)

    def on_epoch_begin(self, epoch, logs=None):
        # Python mirrors of two variables, read back at every epoch start (after
        # BackupAndRestore or a checkpoint restored them) and kept in step afterwards, so
        # batches need no device sync.
        self._schedule_step = int(self._layers[0].state["schedule_step"].numpy())
        self._adapting = [int(layer.state["adapting_interval"].numpy()) for layer in self._layers]
        self._epoch, self._advanced_this_epoch = epoch, False
        self._guard.new_epoch()

    def on_train_batch_end(self, batch, logs=None):
        # update="epoch" advances after the epoch's last batch, before any on_epoch_end (where
        # BackupAndRestore saves); in on_epoch_end only when fit does not know the batch count.
        if self.update == "batch" or last_batch(self, batch):
            self._advance(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.update == "epoch" and not self._advanced_this_epoch:
            self._advance(logs)
        self._guard.end_epoch(epoch)
        if logs is not None:
            logs.update(self.scalars())

    # -- the schedule ------------------------------------------------------------------------
    def _advance(self, logs):
        self._advanced_this_epoch = True
        where = f"at schedule step {self._schedule_step} (epoch {self._epoch})"
        if not self._guard.finite(logs, where):
            return
        step = self._schedule_step
        phase, within = divmod(step, self._per_phase)
        adaptation = (within + 1) / self._per_phase
        plan = []
        for position, layer in enumerate(self._layers):
            layer_phase = phase - self._offset[position]
            if 0 <= layer_phase < layer.levels:
                interval = self._adapting_interval(layer, position)
                plan.append((interval, adaptation))
            else:
                plan.append((-1, 0.0))
        self._step_fn(
            tf.constant([i for i, _ in plan], tf.int32),
            tf.constant([s for _, s in plan], tf.float32),
        )
        self._schedule_step += 1
        for position, (layer, (interval, adaptation)) in enumerate(
            zip(self._layers, plan, strict=True)
        ):
            if interval >= 0 and adaptation >= 1.0:
                self._finish_interval(layer, interval)
                self._adapting[position] = -1

    def _apply(self, intervals, adaptations):
        for position, layer in enumerate(self._layers):
            _adapt(layer.kernel, layer.state, intervals[position], adaptations[position])

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
