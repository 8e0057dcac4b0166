"""Gradual magnitude pruning through the zero interval of the multivalued quantizer.

One-shot pruning to 95-99 % (the zero interval set once by `tfq.quantize_model`) costs
accuracy that fine-tuning cannot buy back; Zhu & Gupta ("To prune, or not to prune", 2017)
prune gradually instead, along s(t) = s_f + (s_i - s_f)(1 - (t - t_0) / (t_1 - t_0))^3, while
the network trains. `GradualPruning` drives each layer's zero interval that way.
"""

import numpy as np

from tfquant._keras import keras
from tfquant.callbacks.base import AfterStep, batches_per_epoch, multivalued_layers, say
from tfquant.callbacks.base import check_steps_per_epoch as _check_steps_per_epoch
from tfquant.options import Division, Mode
from tfquant.quantizers.base import check_bool, check_float, check_int
from tfquant.quantizers.multivalued import sparse_centers, zero_interval_bounds


def pruning_sparsity(step, target, initial, begin, end, power):
    """The sparsity s(t) of Zhu & Gupta's polynomial schedule at batch `step`.

    `initial` up to `begin`, `target` from `end` on, and in between
    target + (initial - target) * (1 - (step - begin) / (end - begin)) ** power.

    >>> [round(pruning_sparsity(t, 0.9, 0.0, 0, 10, 3), 3) for t in (0, 5, 10, 20)]
    [0.0, 0.787, 0.9, 0.9]
    """
    if step <= begin:
        return float(initial)
    if step >= end:
        return float(target)
    left = 1.0 - (step - begin) / (end - begin)
    return float(target + (initial - target) * left**power)


def prunable_layers(model, schedule):
    """The model's multivalued quantizers with a zero interval (`sparsity` > 0) in snap or
    auto mode.

    Raises:
      TypeError: not a tf_keras model.
      ValueError: the model has none (the message says how to get them).
    """
    layers, others = multivalued_layers(
        model, lambda q: q.sparsity > 0 and q.mode is not Mode.MASKED
    )
    if not layers:
        raise ValueError(
            f"{schedule} needs a model with tfquant multivalued quantizers in 'snap' mode (or "
            "'auto', the default) with "
            "sparsity > 0 (the zero interval it widens): quantize with e.g. "
            "tfq.schemes.Multivalued(bits=3, sparsity=0.9). In 'masked' mode "
            "tfq.callbacks.PhaseAdaptation quantizes the zero interval instead. "
            f"Received: model {model.name!r} with quantized layers {[n for n, _ in others]}"
        )
    return layers


class GradualPruning(keras.callbacks.Callback):
    """Gradual magnitude pruning (Zhu & Gupta 2017) through the multivalued zero interval.

    For every `tfq.schemes.Multivalued(..., sparsity=s_f)` layer in snap mode, the fraction of
    weights in the zero interval [-t, t] rises from `initial_sparsity` to the layer's own
    `sparsity` s_f along

        s(step) = s_f + (s_i - s_f) * (1 - (step - begin) / (end - begin)) ** power

    between `begin_epoch` and `end_epoch` (counted in batches, as `fit` runs them), and stays
    at s_f afterwards. Every `frequency` batches (and at `end_epoch`) each layer's threshold t
    becomes the s(step) quantile of |w| (never lower: a pruned weight stays pruned), the
    pruned float weights are set to exactly 0 (so that the optimizer's momentum cannot carry
    them back out of the interval), and while t rises the other `levels` - 1 centers are
    re-divided over the weights outside [-t, t] by the layer's division ("hessian_kmeans"
    re-divides by "kmeans": the callback has no Hessian). The pruned weights get no gradient
    (snap mode), the others train straight through to their nearest center.

    State: each quantizer's `schedule_step` (batches run), `zero_threshold` and `centers`, so
    a checkpoint or `keras.callbacks.BackupAndRestore` resumes on the same schedule. Calling
    `fit` again continues it (a `fit` that ends before `end_epoch` says how far each layer
    got); `tfq.quantize_model` starts a fresh one.

    Cost: the per-batch count runs inside Keras' train step; each update reads the kernels
    to the host for the quantile and, while t rises, re-divides the centers: exactly (the
    layer's division) at the first update and at `end_epoch`, and in between by Lloyd's
    iteration from the previous centers, which moved little since (k-means only; a few ms
    per 400k weights, against about 0.1 s for the exact division). Keep `frequency` near
    100 batches.

    Args:
      end_epoch: epoch (a float is fine) at which the target sparsity is reached, > 0.
      begin_epoch: epoch at which pruning starts, in [0, end_epoch). Before it the layers
        hold `initial_sparsity`.
      initial_sparsity: s_i, in [0, 1); a layer whose target is lower uses its target.
      power: exponent of the schedule (3 in Zhu & Gupta), > 0.
      frequency: batches between updates, >= 1.
      steps_per_epoch: batches per epoch when `fit` does not know it (a generator).
      verbose: 0 silent, 1 one line per epoch, 2 also one per update.
      fused: count batches inside the train step (see `tfq.callbacks.PhaseAdaptation`).

    Example:
      >>> import tfquant as tfq
      >>> scheme = tfq.schemes.Multivalued(bits=3, sparsity=0.9)
      >>> qmodel = tfq.quantize_model(float_model, scheme)          # doctest: +SKIP
      >>> pruning = tfq.callbacks.GradualPruning(end_epoch=6)
      >>> qmodel.fit(x, y, epochs=10, callbacks=[pruning])           # doctest: +SKIP
      >>> tfq.callbacks.GradualPruning.from_config(pruning.get_config()).end_epoch
      6.0
    """

    def __init__(
        self,
        end_epoch,
        begin_epoch=0.0,
        initial_sparsity=0.0,
        power=3.0,
        frequency=100,
        steps_per_epoch=None,
        verbose=1,
        fused=True,
    ):
        super().__init__()
        self.end_epoch = check_float("end_epoch", end_epoch, 0.0, 1e6)
        self.begin_epoch = check_float("begin_epoch", begin_epoch, 0.0, 1e6, low_open=False)
        if self.begin_epoch >= self.end_epoch:
            raise ValueError(
                "begin_epoch must be below end_epoch. Received: "
                f"begin_epoch={begin_epoch}, end_epoch={end_epoch}"
            )
        self.initial_sparsity = check_float(
            "initial_sparsity", initial_sparsity, 0.0, 1.0, low_open=False
        )
        if self.initial_sparsity >= 1.0:
            raise ValueError(
                f"initial_sparsity must be in [0, 1). Received: initial_sparsity={initial_sparsity}"
            )
        self.power = check_float("power", power, 0.0, 100.0)
        self.frequency = check_int("frequency", frequency, 1, 10**9)
        self.steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
        self.verbose = check_int("verbose", verbose, 0, 2)
        self.fused = check_bool("fused", fused)
        self._layers = None
        self._after_step = AfterStep(self.fused)
        self._step = None
        self._span = (0, 1)

    def get_config(self):
        return {
            "end_epoch": self.end_epoch,
            "begin_epoch": self.begin_epoch,
            "initial_sparsity": self.initial_sparsity,
            "power": self.power,
            "frequency": self.frequency,
            "steps_per_epoch": self.steps_per_epoch,
            "verbose": self.verbose,
            "fused": self.fused,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # --- the schedule -------------------------------------------------------------------
    def _bounds(self):
        per_epoch = batches_per_epoch(self)
        begin = int(round(self.begin_epoch * per_epoch))
        return begin, max(begin + 1, int(round(self.end_epoch * per_epoch)))

    def sparsity_at(self, layer, step):
        """The sparsity `layer` is pruned to at batch `step` (during `fit`)."""
        target = float(layer.quantizer.sparsity)
        begin, end = self._span
        initial = min(self.initial_sparsity, target)
        return pruning_sparsity(step, target, initial, begin, end, self.power)

    def _count(self, loss):
        """Graph code after every batch: one more batch in every layer's `schedule_step`."""
        del loss
        for layer in self._layers:
            layer.state["schedule_step"].assign_add(1.0)

    def _update(self, step, where, fresh=False):
        """Sets every layer to s(step): threshold, pruned weights at 0, centers re-divided.
        `fresh` (the first batch of a run): the interval that `quantize_model` set to the
        target may shrink to s(0), since no weight was zeroed yet. The first and the last
        update (at `end_epoch`) divide exactly; the ones between refine the previous centers
        (see `sparse_centers`' `start`)."""
        final = step == self._span[1]
        for layer in self._layers:
            kernel = layer.kernel.numpy()
            if not np.all(np.isfinite(kernel)):
                say(
                    f"GradualPruning: {layer.name}'s kernel holds NaN or Inf {where}; its zero "
                    "interval stays as it was (restore the last good weights, e.g. with "
                    "keras.callbacks.BackupAndRestore, or lower the learning rate).",
                    self.verbose,
                )
                continue
            state, quantizer = layer.state, layer.quantizer
            magnitude = np.abs(kernel)
            sparsity = self.sparsity_at(layer, step)
            count = min(int(round(sparsity * kernel.size)), kernel.size - 1)
            old = np.float32(-1.0 if fresh else state["zero_threshold"].numpy())
            new = np.float32(np.partition(magnitude.ravel(), count - 1)[count - 1]) if count else 0
            threshold = max(old, np.float32(new))
            pruned = magnitude <= threshold
            share = float(np.mean(pruned))
            before = kernel  # the division sees the new threshold as the largest pruned |w|
            if threshold > old or not np.all(kernel[pruned] == 0):
                kernel = np.where(pruned, np.float32(0), kernel).astype(kernel.dtype)
                layer.kernel.assign(kernel)
            if threshold > old or (final and threshold > 0):
                division = quantizer.division
                if division is Division.HESSIAN_KMEANS:
                    division = Division.KMEANS
                start = None if fresh or final else state["centers"].numpy()
                centers, _ = sparse_centers(
                    before,
                    quantizer.levels,
                    share,
                    division,
                    None,
                    quantizer.entropy_weight,
                    start=start,
                    codes=quantizer.grid_codes,
                )
                state["centers"].assign(centers)
                state["zero_threshold"].assign(threshold)
                bounds = zero_interval_bounds(centers, kernel.min(), kernel.max(), threshold)
                state["interval_bounds"].assign(bounds)
            if self.verbose > 1:
                say(
                    f"GradualPruning: batch {step}: {layer.name} {share:.1%} zeros "
                    f"(schedule {sparsity:.1%}, target {quantizer.sparsity:.1%}), "
                    f"t={threshold:.3g}",
                    self.verbose,
                )

    # --- Keras hooks --------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._layers = prunable_layers(self.model, "GradualPruning")
        self._span = self._bounds()  # fails now, not mid-epoch, without the batches per epoch
        self._after_step.install(self.model, self._count, ())

    def on_train_end(self, logs=None):
        self._after_step.uninstall(self.model)
        if self._step is not None and self._step < self._span[1]:
            shares = ", ".join(
                f"{layer.name} {self.sparsity_at(layer, self._step):.1%}"
                f"/{layer.quantizer.sparsity:.0%}"
                for layer in self._layers
            )
            say(
                f"GradualPruning: training ended at batch {self._step}, before end_epoch "
                f"(batch {self._span[1]}): the layers are pruned to {shares} (now/target). "
                "Call fit again to go on (the schedule resumes), or lower end_epoch.",
                self.verbose,
            )

    def on_epoch_begin(self, epoch, logs=None):
        # After every on_train_begin: BackupAndRestore has put the saved state back by now.
        self._step = int(self._layers[0].state["schedule_step"].numpy())
        if self._step == 0:
            self._update(0, "at the start of training", fresh=True)

    def on_train_batch_end(self, batch, logs=None):
        if not self._after_step.active:
            self._after_step.run(logs)
        self._step += 1
        if self._step % self.frequency == 0 or self._step == self._span[1]:
            self._update(self._step, f"at batch {self._step}")

    def on_epoch_end(self, epoch, logs=None):
        out = {}
        for layer in self._layers:
            threshold = float(layer.state["zero_threshold"].numpy())
            out[f"{layer.name}/sparsity"] = float(
                np.mean(np.abs(layer.kernel.numpy()) <= threshold)
            )
            out[f"{layer.name}/zero_threshold"] = threshold
        if logs is not None:
            logs.update(out)
        if self.verbose:
            text = ", ".join(
                f"{layer.name} {out[f'{layer.name}/sparsity']:.1%}/{layer.quantizer.sparsity:.0%}"
                for layer in self._layers
            )
            say(f"GradualPruning: epoch {epoch}: zeros (now/target) {text}", self.verbose)


__all__ = ["GradualPruning", "pruning_sparsity", "prunable_layers"]
