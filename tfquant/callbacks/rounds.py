"""Epoch-level schedules of SLQ / MLQ (Xu et al. 2018, seed 001).

`PartitionRounds` (SLQ, width level): the layer's clusters are quantized in rounds, the rest
retrained in between. `IncrementalLayers` (MLQ, depth level): whole layers are quantized one
after another while the layers not yet quantized compensate. Both only assign quantizer
variables at epoch starts and count epochs in the quantizers' `schedule_step`, so a restored
checkpoint resumes in the same round.
"""

import math

import numpy as np

from tfquant._keras import keras
from tfquant.callbacks.base import (
    AfterStep,
    FiniteGuard,
    freeze_intervals,
    hold,
    last_batch,
    layer_scalars,
    masked_multivalued_layers,
    order_by_names,
    recluster_free_weights,
    say,
)
from tfquant.coding.division import divide
from tfquant.quantizers.base import check_bool, check_int
from tfquant.quantizers.multivalued import interval_bounds, snap_centers

_ROUND_ORDERS = ("zero_first", "magnitude", "error")


class _EpochSchedule(keras.callbacks.Callback):
    """Acts at epoch starts from the epochs counted in the quantizers' `schedule_step`; counts
    an epoch after its last batch (in `on_epoch_end` only when `fit` does not know the batches
    per epoch), unless the loss or a weight is NaN or Inf (see `base.FiniteGuard`)."""

    def __init__(self, verbose, fused):
        super().__init__()
        self.verbose = check_int("verbose", verbose, 0, 2)
        self.fused = check_bool("fused", fused)
        self._layers = None
        self._guard = FiniteGuard(type(self).__name__, self.verbose)
        self._after_step = AfterStep(self.fused)
        self._epoch_counted = False

    def on_train_begin(self, logs=None):
        self._layers = self._arrange(
            masked_multivalued_layers(self.model, type(self).__name__, adopt=True)
        )
        self._guard.watch(self.model, self._layers)
        self._after_step.install(self.model, self._hold_all, ())

    def on_train_end(self, logs=None):
        self._after_step.uninstall(self.model)

    def _hold_all(self, loss):
        """Graph code after every batch: `hold` on every layer (fused into the train step, or
        called after it)."""
        del loss  # holding finite weights in place is safe; the epoch count is guarded
        for layer in self._layers:
            hold(layer.kernel, layer.state)

    def on_train_batch_end(self, batch, logs=None):
        if not self._after_step.active:
            self._after_step.run(logs)
        if last_batch(self, batch):
            self._count_epoch(logs)

    def _arrange(self, layers):
        return layers

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_counted = epoch, False
        self._guard.new_epoch()
        if self._guard.finite(None, f"at the start of epoch {epoch}"):
            self._act(int(self._layers[0].state["schedule_step"].numpy()))

    def _count_epoch(self, logs):
        self._epoch_counted = True
        if self._guard.finite(logs, f"at the end of epoch {self._epoch}"):
            for layer in self._layers:
                layer.state["schedule_step"].assign_add(1.0)

    def on_epoch_end(self, epoch, logs=None):
        if not self._epoch_counted:
            self._count_epoch(logs)
        if logs is not None:
            logs.update(layer_scalars(self._layers))

    def _act(self, epochs_done):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class PartitionRounds(_EpochSchedule):
    """SLQ: quantize each layer's clusters in `rounds` rounds, retraining the rest between.

    Round r (r = 1..rounds) freezes clusters until ceil(k·r / rounds) of the layer's k are
    done, at the start of its `epochs_per_round` epochs; the epochs retrain the free weights
    (clipped out of the finished intervals). `epochs_needed` = rounds · epochs_per_round.

    Args:
      rounds: number of rounds (default: one cluster per round).
      epochs_per_round: retraining epochs per round.
      order: which clusters go first: "zero_first" (the center nearest 0, then the largest
        |center|), "magnitude" (largest |center| first) or "error" (smallest mean distance of
        its free weights to the center first).
      recluster: re-run k-means on the free weights for the unfinished clusters before each
        round (when those are contiguous, as with "magnitude").
      verbose: 1 prints a line per round.
      fused: hold the frozen weights inside Keras' train step (see `base.AfterStep`);
        False uses the `on_train_batch_end` hook. Both give the same result.

    Example:
      >>> rounds = PartitionRounds(rounds=2, order="magnitude")
      >>> PartitionRounds.from_config(rounds.get_config()).get_config() == rounds.get_config()
      True
    """

    def __init__(
        self,
        rounds=None,
        epochs_per_round=1,
        order="zero_first",
        recluster=False,
        verbose=1,
        fused=True,
    ):
        super().__init__(verbose, fused)
        self.rounds = None if rounds is None else check_int("rounds", rounds, 1, 256)
        self.epochs_per_round = check_int("epochs_per_round", epochs_per_round, 1, 10_000)
        if order not in _ROUND_ORDERS:
            raise ValueError(f"order must be one of {_ROUND_ORDERS}. Received: order={order!r}")
        self.order = order
        self.recluster = check_bool("recluster", recluster)

    def get_config(self):
        return {
            "rounds": self.rounds,
            "epochs_per_round": self.epochs_per_round,
            "order": self.order,
            "recluster": self.recluster,
            "verbose": self.verbose,
            "fused": self.fused,
        }

    def _rounds_for(self, layer):
        return self.rounds or layer.levels

    def epochs_needed(self, model):
        """Epochs of `fit` for every layer to finish its last round."""
        layers = masked_multivalued_layers(model, type(self).__name__)
        return max(self._rounds_for(layer) for layer in layers) * self.epochs_per_round

    def _act(self, epochs_done):
        current = epochs_done // self.epochs_per_round + 1
        for layer in self._layers:
            rounds = self._rounds_for(layer)
            target = math.ceil(layer.levels * min(current, rounds) / rounds)
            done = layer.state["interval_done"].numpy() > 0.5
            missing = target - int(done.sum())
            if missing <= 0:
                continue
            if self.recluster and done.any():
                recluster_free_weights(layer)
            chosen = self._choose(layer, missing)
            freeze_intervals(layer, chosen)
            frozen = float(np.mean(layer.state["frozen_mask"].numpy()))
            say(
                f"PartitionRounds: {layer.name} round {min(current, rounds)}/{rounds}: "
                f"{target}/{layer.levels} clusters quantized, {frozen:.1%} of weights frozen.",
                self.verbose,
            )

    def _choose(self, layer, count):
        state = layer.state
        centers = state["centers"].numpy().astype(np.float64)
        open_slots = np.flatnonzero(state["interval_done"].numpy() < 0.5)
        if self.order == "error":
            bounds = state["interval_bounds"].numpy()
            kernel = layer.kernel.numpy()
            free = kernel[state["frozen_mask"].numpy() < 0.5]
            errors = []
            for slot in open_slots:
                inside = free[(free >= bounds[slot]) & (free <= bounds[slot + 1])]
                errors.append(np.abs(inside - centers[slot]).mean() if inside.size else 0.0)
            ranked = open_slots[np.argsort(errors, kind="stable")]
        else:
            ranked = open_slots[np.argsort(-np.abs(centers[open_slots]), kind="stable")]
            if self.order == "zero_first":
                nearest_zero = open_slots[np.argmin(np.abs(centers[open_slots]))]
                ranked = np.concatenate([[nearest_zero], ranked[ranked != nearest_zero]])
        return [int(slot) for slot in ranked[:count]]


class IncrementalLayers(_EpochSchedule):
    """MLQ: quantize whole layers one after another; the rest of the network compensates.

    At the start of its turn a layer's codebook is re-divided from its current weights (the
    quantizer's division method; use `Multivalued(levels=3, mode="masked")` for MLQ's ternary
    layers) and every weight is snapped and frozen; the following `epochs_per_layer` epochs
    retrain the layers not yet quantized. `epochs_needed` = layers · epochs_per_layer.

    Args:
      epochs_per_layer: compensation epochs after each layer.
      order: "sequential" (model order), "reverse", or a list of layer names (the others
        follow in model order).
      verbose: 1 prints a line per layer.
      fused: hold the frozen weights inside Keras' train step (see `base.AfterStep`);
        False uses the `on_train_batch_end` hook. Both give the same result.

    Example:
      >>> schedule = IncrementalLayers(epochs_per_layer=2, order="reverse")
      >>> IncrementalLayers.from_config(schedule.get_config()).get_config() == (
      ...     schedule.get_config())
      True
    """

    def __init__(self, epochs_per_layer=1, order="sequential", verbose=1, fused=True):
        super().__init__(verbose, fused)
        self.epochs_per_layer = check_int("epochs_per_layer", epochs_per_layer, 1, 10_000)
        if isinstance(order, str) and order not in ("sequential", "reverse"):
            raise ValueError(
                "order must be 'sequential', 'reverse' or a list of layer names. "
                f"Received: order={order!r}"
            )
        if not isinstance(order, str) and not (
            isinstance(order, (list, tuple)) and all(isinstance(n, str) for n in order)
        ):
            raise TypeError(
                "order must be 'sequential', 'reverse' or a list of layer names. "
                f"Received: order={order!r}"
            )
        self.order = order if isinstance(order, str) else list(order)

    def get_config(self):
        return {
            "epochs_per_layer": self.epochs_per_layer,
            "order": self.order,
            "verbose": self.verbose,
            "fused": self.fused,
        }

    def _arrange(self, layers):
        if self.order == "reverse":
            return layers[::-1]
        if self.order == "sequential":
            return layers
        return order_by_names(layers, self.order)

    def epochs_needed(self, model):
        """Epochs of `fit` for the last layer's compensation epochs to run."""
        return len(masked_multivalued_layers(model, type(self).__name__)) * self.epochs_per_layer

    def _act(self, epochs_done):
        turn = epochs_done // self.epochs_per_layer
        for position, layer in enumerate(self._layers[: turn + 1]):
            state = layer.state
            if np.all(state["interval_done"].numpy() > 0.5):
                continue
            kernel = layer.kernel.numpy()
            quantizer = layer.quantizer
            centers = snap_centers(
                divide(kernel, layer.levels, quantizer.division, None, quantizer.entropy_weight),
                quantizer.grid_codes,
            )
            state["centers"].assign(centers)
            state["interval_bounds"].assign(interval_bounds(centers, kernel.min(), kernel.max()))
            freeze_intervals(layer, range(layer.levels))
            say(
                f"IncrementalLayers: {layer.name} quantized ({position + 1}/"
                f"{len(self._layers)} layers).",
                self.verbose,
            )
