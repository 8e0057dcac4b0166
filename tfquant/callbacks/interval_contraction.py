"""MVQ interval shift and contraction (seed 000) as a Keras callback.

The layer's weight range is partitioned into the codebook's intervals; each interval's center
shifts to the mean of its weights ("interval shift", once per epoch by default), and after
every batch each interval's half-widths shrink linearly to zero over the schedule ("interval
contraction") and every weight is clipped into its contracted interval. At the end the
intervals are points: every weight equals its interval's center ("weight sharing"), the
centers are put on the layer's int8 grid and all weights are frozen.

The paper does not say how fast intervals contract; a linear schedule over `epochs` is our
choice (it reaches zero width exactly at the end, which weight sharing requires).
"""

from tfquant._keras import keras, tf
from tfquant.callbacks.base import (
    AfterStep,
    FiniteGuard,
    batches_per_epoch,
    check_steps_per_epoch,
    guarded,
    held_weights,
    layer_scalars,
    masked_multivalued_layers,
    say,
    values,
)
from tfquant.quantizers.base import check_bool, check_int, nearest_level
from tfquant.quantizers.multivalued import interval_bounds, snap_centers


def _contracted(weights, centers, outer, progress, shift):
    """One contraction + clip step of one layer's weights, after an interval shift if `shift`
    (a Python bool). Returns the weights, centers and interval bounds."""
    count = centers.shape[0]
    if shift:
        _, index = nearest_level(weights, centers)
        flat, flat_index = tf.reshape(weights, [-1]), tf.reshape(index, [-1])
        # Per-interval sums and counts as one product with the one-hot membership (XLA runs
        # a matrix-vector product; a scatter-add is serial on CPU and slower than a step).
        membership = tf.one_hot(flat_index, count, dtype=flat.dtype)  # [N, count]
        sums = tf.linalg.matvec(membership, flat, transpose_a=True)
        counts = tf.reduce_sum(membership, axis=0)
        shifted = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), centers)  # the shift
        bounds = tf.concat([outer[:1], (shifted[1:] + shifted[:-1]) / 2.0, outer[-1:]], axis=0)
    else:
        shifted, bounds = centers, outer
    keep = 1.0 - progress  # interval contraction: widths shrink linearly to 0
    low = shifted - keep * tf.maximum(shifted - bounds[:-1], 0.0)
    high = shifted + keep * tf.maximum(bounds[1:] - shifted, 0.0)
    # Each weight's [low, high] by one select per interval (as in `nearest_level`): a gather
    # per weight was four times slower on CPU.
    midpoints = (centers[1:] + centers[:-1]) / 2.0
    lower = tf.zeros_like(weights) + low[0]
    upper = tf.zeros_like(weights) + high[0]
    for j in range(count - 1):
        above = weights > midpoints[j]
        lower = tf.where(above, low[j + 1], lower)
        upper = tf.where(above, high[j + 1], upper)
    return tf.clip_by_value(weights, lower, upper), shifted, bounds


@values
def _stepped(weights, mask, centers, bounds, done, step, total, every, finite):
    """One schedule step of one layer: while `step` < `total`, a contraction step (after an
    interval shift every `every` steps and at the last one), then `hold`; where `finite` is
    False, everything as it was. Returns the weights, centers, bounds and progress.

    The three cases are one XLA conditional inside this launch, not `tf.cond`s around it, for
    the reason given at `base.guarded`."""
    progress = tf.minimum(tf.cast(step + 1, tf.float32) / total, 1.0)
    shift = tf.equal(step % every, 0) | tf.equal(step + 1, total)
    case = tf.where(step >= total, 0, tf.where(shift, 2, 1))
    new_weights, new_centers, new_bounds = tf.switch_case(
        case,
        [
            lambda: (held_weights(weights, mask, centers, bounds, done), centers, bounds),
            lambda: _contracted(weights, centers, bounds, progress, False),
            lambda: _contracted(weights, centers, bounds, progress, True),
        ],
    )
    kept = guarded(finite, (new_weights, new_centers, new_bounds), (weights, centers, bounds))
    return (*kept, progress)


def _step(kernel, state, step, total, every, finite):
    """One schedule step of one layer (graph code); `step` is the schedule's step count and
    `total`, `every` Python ints."""
    weights, centers, bounds, progress = _stepped(
        tf.convert_to_tensor(kernel),
        tf.convert_to_tensor(state["frozen_mask"]),
        tf.convert_to_tensor(state["centers"]),
        tf.convert_to_tensor(state["interval_bounds"]),
        tf.convert_to_tensor(state["interval_done"]),
        step,
        total,
        every,
        finite,
    )
    kernel.assign(weights)
    state["centers"].assign(centers)
    state["interval_bounds"].assign(bounds)
    advanced = finite & (step < total)
    state["adaptation"].assign(tf.where(advanced, progress, state["adaptation"]))
    state["schedule_step"].assign_add(tf.cast(advanced, tf.float32))


class IntervalContraction(keras.callbacks.Callback):
    """MVQ: interval shift and contraction to weight sharing over `epochs` epochs.

    A NaN or Inf in the loss or in any weight holds the contraction where it is, with a
    message (`base.FiniteGuard`).

    Args:
      epochs: epochs over which the intervals contract to their centers.
      shift_every: batches between interval shifts (None: once per epoch, at its first
        batch, and at the last step). Contraction and clipping run after every batch. The
        paper only says the two alternate; a shift is a mean over every weight of the layer,
        so once per epoch keeps the callback cheap (shifting every batch made it cost more
        than a third of LeNet-5's epoch time) while the means barely move within an epoch.
      steps_per_epoch: batches per epoch when `fit` cannot know it.
      verbose: 1 prints a line when the layers are shared.
      fused: run the per-batch update inside Keras' train step (see `base.AfterStep`);
        False uses the `on_train_batch_end` hook. Both give the same result.

    Example:
      >>> schedule = IntervalContraction(epochs=4)
      >>> IntervalContraction.from_config(schedule.get_config()).get_config() == (
      ...     schedule.get_config())
      True
    """

    def __init__(self, epochs=8, shift_every=None, steps_per_epoch=None, verbose=1, fused=True):
        super().__init__()
        self.epochs = check_int("epochs", epochs, 1, 100_000)
        self.shift_every = (
            None if shift_every is None else check_int("shift_every", shift_every, 1, 10**9)
        )
        self.steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
        self.verbose = check_int("verbose", verbose, 0, 2)
        self._layers = None
        self._guard = FiniteGuard(type(self).__name__, self.verbose)
        self.fused = check_bool("fused", fused)
        self._after_step = AfterStep(self.fused)

    def get_config(self):
        return {
            "epochs": self.epochs,
            "shift_every": self.shift_every,
            "steps_per_epoch": self.steps_per_epoch,
            "verbose": self.verbose,
            "fused": self.fused,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def epochs_needed(self, model):
        """Epochs of `fit` for the intervals to contract fully."""
        masked_multivalued_layers(model, type(self).__name__)
        return self.epochs

    def on_train_begin(self, logs=None):
        self._layers = masked_multivalued_layers(self.model, type(self).__name__, adopt=True)
        self._per_epoch = batches_per_epoch(self)
        self._total = self.epochs * self._per_epoch
        self._guard.watch(self.model, self._layers)
        every = self.shift_every or self._per_epoch
        self._after_step.install(self.model, self._graph_update, (self._total, every))

    def on_train_end(self, logs=None):
        self._after_step.uninstall(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._step = int(self._layers[0].state["schedule_step"].numpy())
        self._issued = 0  # fused steps run since `_step` was read back
        self._epoch = epoch
        self._guard.new_epoch()

    def _graph_update(self, loss):
        """Graph code after every batch (fused into the train step, or called after it): if
        the loss and weights are finite, a contraction step (after an interval shift every
        `shift_every` batches and at the last step), or, once contracted, `hold`."""
        total, every = self._total, self.shift_every or self._per_epoch
        finite = self._guard.graph_finite(loss)
        step = tf.cast(self._layers[0].state["schedule_step"], tf.int32)
        for layer in self._layers:
            _step(layer.kernel, layer.state, step, total, every, finite)
        return finite

    def on_train_batch_end(self, batch, logs=None):
        if not self._after_step.active:
            self._after_step.run(logs)
            self._sync(logs, 1)
        elif self._step < self._total:
            self._issued += 1
            if self._step + self._issued >= self._total:
                self._sync(logs, self._issued)  # the contraction may have ended

    def _sync(self, logs, issued):
        """Reads the step count back (fused: only where the contraction would end and at the
        epoch's end): reports steps the graph skipped, shares the weights at the last step."""
        if self._step >= self._total:
            return
        step = int(self._layers[0].state["schedule_step"].numpy())
        if step < self._step + issued:
            where = f"at schedule step {step} (epoch {self._epoch})"
            self._guard.skipped_steps(self._step + issued - step, logs, where)
        self._step, self._issued = step, 0
        if step >= self._total:
            self._share()

    def _share(self):
        for layer in self._layers:
            state = layer.state
            kernel = layer.kernel.numpy()
            centers = snap_centers(state["centers"].numpy(), layer.quantizer.grid_codes)
            state["centers"].assign(centers)
            state["interval_bounds"].assign(interval_bounds(centers, kernel.min(), kernel.max()))
            layer.kernel.assign(nearest_level(tf.constant(kernel), tf.constant(centers))[0])
            state["frozen_mask"].assign(tf.ones_like(state["frozen_mask"]))
            state["interval_done"].assign(tf.ones_like(state["interval_done"]))
        say(
            f"IntervalContraction: {len(self._layers)} layers contracted to shared weights.",
            self.verbose,
        )

    def on_epoch_end(self, epoch, logs=None):
        if self._after_step.active:
            self._sync(logs, self._issued)
        self._guard.end_epoch(epoch)
        if logs is not None:
            logs.update(layer_scalars(self._layers))
