"""Gradual magnitude pruning through the zero interval of the multivalued quantizer.

One-shot pruning to 95-99 % (the zero interval set once by `tfq.quantize_model`) costs
accuracy that fine-tuning cannot buy back; Zhu & Gupta ("To prune, or not to prune", 2017)
prune gradually instead, along s(t) = s_f + (s_i - s_f)(1 - (t - t_0) / (t_1 - t_0))^3, while
the network trains. `GradualPruning` drives each layer's zero interval that way.
"""

import numpy as np

from tfquant._keras import consumers, following_batchnorm, keras, tf, trained_model
from tfquant.callbacks.base import AfterStep, batches_per_epoch, multivalued_layers, say
from tfquant.callbacks.base import check_steps_per_epoch as _check_steps_per_epoch
from tfquant.options import Division, Mode, Structure
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


def _redivide(layer, divided, kernel, share, threshold, start):
    """Places `layer`'s centers for a zero interval [-threshold, threshold] holding the
    `share` of the weights: the division of `divided` (Hessian k-means falls back to k-means:
    no importance here), warm-started at `start` centers; interval bounds span `kernel`."""
    quantizer, state = layer.quantizer, layer.state
    division = quantizer.division
    if division is Division.HESSIAN_KMEANS:
        division = Division.KMEANS
    centers, _ = sparse_centers(
        divided,
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

    With `structure="channel"` the schedule prunes whole output channels (Conv2D,
    DepthwiseConv2D) and units (Dense) instead, as the structured step of Wen et al. 2016
    ("Learning Structured Sparsity in Deep Neural Networks") done by magnitude, like Li et
    al. 2017 ("Pruning Filters for Efficient ConvNets", smallest L2 norm first): each layer's
    `sparsity` is then the fraction of its channels, and at every update the s(step) fraction
    of channels with the smallest L2 kernel norm (channels already all zero first) is set to
    exactly 0, and so are its bias and, where a BatchNormalization alone reads the layer's
    output (Conv2D + BatchNorm + ReLU), that channel's `gamma` and `beta` (Li et al. remove the
    filter with its bias and its BatchNorm channel): the channel's output is then exactly 0
    in training and inference, where the BatchNorm would otherwise add its offset `beta`,
    and `tfq.shrink` removes it. (Elsewhere, e.g. a layer read by a BatchNorm and by another
    layer, the BatchNorm keeps its offsets: `tfq.shrink` removes such a channel only where
    the activation maps that constant to 0.) The zero interval is [-0, 0] (t = 0): exactly
    the pruned channels' weights quantize to the zero center and get no gradient, and after
    every batch the pruned channels, biases and BatchNorm scales and offsets are set to 0
    again, so the optimizer's momentum cannot move them. The other `levels` - 1 centers are
    re-divided over the remaining weights. `tfq.shrink` then
    removes the pruned channels. A resumed run finds its pruned channels from the kernels
    (the all-zero ones).

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
      structure: "weight" (the default: magnitude pruning of single weights) or "channel"
        (whole output channels and units, see above).

    Example:
      >>> import tfquant as tfq
      >>> scheme = tfq.schemes.Multivalued(bits=3, sparsity=0.9)
      >>> qmodel = tfq.quantize_model(float_model, scheme)          # doctest: +SKIP
      >>> pruning = tfq.callbacks.GradualPruning(end_epoch=6)
      >>> qmodel.fit(x, y, epochs=10, callbacks=[pruning])           # doctest: +SKIP
      >>> tfq.callbacks.GradualPruning.from_config(pruning.get_config()).end_epoch
      6.0
      >>> tfq.callbacks.GradualPruning(end_epoch=6, structure="channel").get_config()["structure"]
      'channel'
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
        structure="weight",
    ):
        super().__init__()
        self.structure = Structure.parse(structure, "structure")
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
        self._channel_masks, self._bias_masks, self._channel_vectors = [], [], []

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
            "structure": self.structure.value,
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
        """Graph code after every batch: one more batch in every layer's `schedule_step`;
        in channel mode the pruned channels are set to 0 again (after the optimizer step)."""
        del loss
        for layer in self._layers:
            layer.state["schedule_step"].assign_add(1.0)
        for layer, keep, alive, vectors in zip(
            self._layers, self._channel_masks, self._bias_masks, self._channel_vectors, strict=False
        ):
            layer.kernel.assign(layer.kernel * tf.cast(keep, layer.kernel.dtype))
            for variable in vectors:
                variable.assign(variable * tf.cast(alive, variable.dtype))

    def _update_channels(self, layer, step, fresh):
        """Channel mode: the s(step) fraction of channels with the smallest L2 norm (the
        all-zero ones first) become exactly 0; t = 0; centers re-divided over the rest."""
        index = self._layers.index(layer)
        kernel = layer.kernel.numpy()
        view = _channel_view(layer, kernel)
        channels = view.shape[1]
        sparsity = self.sparsity_at(layer, step)
        count = min(int(round(sparsity * channels)), channels - 1)
        norms = np.sqrt(np.sum(view.astype(np.float64) ** 2, axis=0))
        dead = norms == 0
        order = np.argsort(np.where(dead, -1.0, norms), kind="stable")
        pruned = dead.copy()
        pruned[order[:count]] = True
        changed = fresh or not np.array_equal(pruned, dead)
        mask = np.broadcast_to(~pruned, view.shape)
        kernel = _from_channel_view(layer, np.where(mask, view, 0).astype(kernel.dtype), kernel)
        layer.kernel.assign(kernel)
        self._channel_masks[index].assign(_from_channel_view(layer, mask, kernel) > 0)
        self._bias_masks[index].assign(~pruned)
        for variable in self._channel_vectors[index]:
            values = variable.numpy()
            variable.assign(np.where(pruned, 0, values).astype(values.dtype))
        state, quantizer = layer.state, layer.quantizer
        if changed or (step == self._span[1] and pruned.any()):
            share = min(float(np.mean(kernel == 0)), 1.0 - 1.0 / kernel.size)
            start = None if fresh or step == self._span[1] else state["centers"].numpy()
            _redivide(layer, kernel, kernel, share, 0.0, start)
        if self.verbose > 1:
            say(
                f"GradualPruning: batch {step}: {layer.name} {int(pruned.sum())}/{channels} "
                f"channels pruned (schedule {sparsity:.1%}, target {quantizer.sparsity:.1%})",
                self.verbose,
            )

    def _update(self, step, where, fresh=False):
        """Sets every layer to s(step): threshold, pruned weights at 0, centers re-divided.
        `fresh` (the first batch of a run): the interval that `quantize_model` set to the
        target may shrink to s(0), since no weight was zeroed yet. The first and the last
        update (at `end_epoch`) divide exactly; the ones between refine the previous centers
        (see `sparse_centers`' `start`)."""
        final = step == self._span[1]
        for layer in self._layers:
            kernel = layer.kernel.numpy()
            if self.structure is Structure.CHANNEL and np.all(np.isfinite(kernel)):
                self._update_channels(layer, step, fresh)
                continue
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
                start = None if fresh or final else state["centers"].numpy()
                _redivide(layer, before, kernel, share, threshold, start)
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
        if self.structure is Structure.CHANNEL:
            # Rebuilt from the kernels (a resumed run: the all-zero channels are the pruned).
            # The variables are made once and re-assigned: the compiled per-batch update of
            # an earlier `fit` holds them.
            masks = []
            for layer in self._layers:
                view = _channel_view(layer, layer.kernel.numpy())
                keep = np.broadcast_to(np.any(view != 0, axis=0), view.shape)
                masks.append((_from_channel_view(layer, keep, view) > 0, keep[0]))
            shapes = [(m.shape, b.shape) for m, b in masks]
            if shapes != [(tuple(m.shape), tuple(b.shape)) for m, b in self._mask_pairs()]:
                self._channel_masks = [tf.Variable(m, trainable=False) for m, _ in masks]
                self._bias_masks = [tf.Variable(b, trainable=False) for _, b in masks]
            else:
                for (kernel_mask, bias_mask), variables in zip(
                    masks, self._mask_pairs(), strict=True
                ):
                    variables[0].assign(kernel_mask)
                    variables[1].assign(bias_mask)
            self._channel_vectors = _channel_vectors(trained_model(self.model), self._layers)
        self._after_step.install(self.model, self._count, (self.structure.value,))

    def _mask_pairs(self):
        return list(zip(self._channel_masks, self._bias_masks, strict=True))

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
            if self.structure is Structure.CHANNEL:
                view = _channel_view(layer, layer.kernel.numpy())
                out[f"{layer.name}/channel_sparsity"] = float(np.mean(np.all(view == 0, axis=0)))
        if logs is not None:
            logs.update(out)
        if self.verbose:
            text = ", ".join(
                f"{layer.name} {out[f'{layer.name}/sparsity']:.1%}/{layer.quantizer.sparsity:.0%}"
                for layer in self._layers
            )
            say(f"GradualPruning: epoch {epoch}: zeros (now/target) {text}", self.verbose)


def _channel_vectors(model, layers):
    """For each of `layers`, the per-channel variables that channel pruning holds at 0 on the
    pruned channels: its bias, and the `gamma` and `beta` of the BatchNormalization that
    alone reads its output (the one the export folds), so that the normalized channel is
    exactly 0, not the constant `beta`, and `tfq.shrink` can remove it. Those it has."""
    consumers_of = consumers(model)
    found = []
    for layer in layers:
        wrapper = model.get_layer(layer.name)
        norm = following_batchnorm(wrapper, consumers_of)
        candidates = (getattr(wrapper.layer, "bias", None),)
        if norm is not None:
            candidates += (norm.gamma, norm.beta)
        found.append(tuple(v for v in candidates if v is not None))
    return found


def _channel_view(layer, kernel):
    """[N, C] numpy view of `kernel` with its C output channels (depthwise: in x multiplier)."""
    return np.asarray(layer.quantizer.channel_view(np.asarray(kernel)))


def _from_channel_view(layer, view, like=None):
    """Inverse of `_channel_view`: an array of the kernel's shape."""
    del like
    return np.asarray(layer.quantizer.from_channel_view(np.asarray(view, np.float32)))


__all__ = ["GradualPruning", "pruning_sparsity", "prunable_layers"]
