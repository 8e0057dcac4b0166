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
    FiniteGuard,
    batches_per_epoch,
    check_steps_per_epoch,
    compiled,
    hold,
    layer_scalars,
    masked_multivalued_layers,
    say,
)
from tfquant.quantizers.base import check_int, nearest_level
from tfquant.quantizers.multivalued import interval_bounds, snap_centers


def _contract(kernel, state, progress, shift):
    """One contraction + clip step of one layer (graph code), after an interval shift if
    `shift` (a Python bool: two traces)."""
    centers = state["centers"]
    count = centers.shape[0]
    weights = tf.convert_to_tensor(kernel)
    _, index = nearest_level(weights, centers)
    outer = state["interval_bounds"]
    if shift:
        flat, flat_index = tf.reshape(weights, [-1]), tf.reshape(index, [-1])
        # Per-interval sums and counts as one product with the one-hot membership (XLA runs
        # a matrix-vector product; a scatter-add is serial on CPU and slower than a step).
        membership = tf.one_hot(flat_index, count, dtype=flat.dtype)  # [N, count]
        sums = tf.linalg.matvec(membership, flat, transpose_a=True)
        counts = tf.reduce_sum(membership, axis=0)
        shifted = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), centers)  # the shift
        bounds = tf.concat([outer[:1], (shifted[1:] + shifted[:-1]) / 2.0, outer[-1:]], axis=0)
    else:
        shifted, bounds = tf.convert_to_tensor(centers), tf.convert_to_tensor(outer)
    keep = 1.0 - progress  # interval contraction: widths shrink linearly to 0
    left = keep * tf.maximum(shifted - bounds[:-1], 0.0)
    right = keep * tf.maximum(bounds[1:] - shifted, 0.0)
    center = tf.gather(shifted, index)
    weights = tf.clip_by_value(
        weights, center - tf.gather(left, index), center + tf.gather(right, index)
    )
    kernel.assign(weights)
    centers.assign(shifted)
    state["interval_bounds"].assign(bounds)
    state["adaptation"].assign(progress)
    state["schedule_step"].assign_add(1.0)


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

    Example:
      >>> schedule = IntervalContraction(epochs=4)
      >>> IntervalContraction.from_config(schedule.get_config()).get_config() == (
      ...     schedule.get_config())
      True
    """

    def __init__(self, epochs=8, shift_every=None, steps_per_epoch=None, verbose=1):
        super().__init__()
        self.epochs = check_int("epochs", epochs, 1, 100_000)
        self.shift_every = (
            None if shift_every is None else check_int("shift_every", shift_every, 1, 10**9)
        )
        self.steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
        self.verbose = check_int("verbose", verbose, 0, 2)
        self._layers = None
        self._guard = FiniteGuard(type(self).__name__, self.verbose)

    def get_config(self):
        return {
            "epochs": self.epochs,
            "shift_every": self.shift_every,
            "steps_per_epoch": self.steps_per_epoch,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def epochs_needed(self, model):
        """Epochs of `fit` for the intervals to contract fully."""
        masked_multivalued_layers(model, type(self).__name__)
        return self.epochs

    def on_train_begin(self, logs=None):
        self._layers = masked_multivalued_layers(self.model, type(self).__name__)
        self._per_epoch = batches_per_epoch(self)
        self._total = self.epochs * self._per_epoch
        self._step_fn = compiled(self._apply, self.model)
        self._hold_fn = compiled(self._hold_all, self.model)
        self._guard.watch(self.model, self._layers)

    def _hold_all(self):
        for layer in self._layers:
            hold(layer.kernel, layer.state)

    def on_epoch_begin(self, epoch, logs=None):
        self._step = int(self._layers[0].state["schedule_step"].numpy())
        self._epoch = epoch
        self._guard.new_epoch()

    def _apply(self, progress, shift):
        for layer in self._layers:
            _contract(layer.kernel, layer.state, progress, shift)

    def on_train_batch_end(self, batch, logs=None):
        if not self._guard.finite(logs, f"at schedule step {self._step} (epoch {self._epoch})"):
            return
        if self._step >= self._total:
            self._hold_fn()  # shared weights stay on their centers
            return
        every = self.shift_every or self._per_epoch
        shift = (self._step % every == 0) or self._step + 1 == self._total
        self._step += 1
        progress = min(self._step / self._total, 1.0)
        self._step_fn(tf.constant(progress, tf.float32), shift)
        if self._step == self._total:
            self._share()

    def _share(self):
        for layer in self._layers:
            state = layer.state
            kernel = layer.kernel.numpy()
            centers = snap_centers(state["centers"].numpy())
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
        self._guard.end_epoch(epoch)
        if logs is not None:
            logs.update(layer_scalars(self._layers))
