"""Cost of the schedule callbacks on LeNet-5 (masked 3-bit multivalued; GradualPruning on
7 levels in snap mode, zero intervals widening toward 90 %). Each schedule's
per-batch update runs fused inside Keras' train step (`tfquant.callbacks.base.AfterStep`), so
its cost is measured twice over: the fused train step against Keras' own train step of the same
model (blocks of 30 steps back to back, order alternating, median over the pairs), plus the
time spent in the callback's Python hooks (measured around them) during real `fit` epochs;
overhead = (extra step time + hook time per batch) / Keras' step time. Epoch times with and
without a schedule are printed too, for reference only: this 2-core machine throttles in
bursts, which moved whole epochs by 1.6x.

Run: python benchmarks/schedule_overhead.py [--steps 469] [--rounds 5] [--json ...]
Target (issue #4): <= 3 % of epoch time.
"""

import argparse
import json
import os
import time

import numpy as np

import tfquant as tfq
from tfquant._keras import keras, tf
from tfquant.models import lenet5

SCHEDULES = {
    "none": None,
    "PhaseAdaptation": lambda: tfq.callbacks.PhaseAdaptation(epochs_per_phase=100, verbose=0),
    "IntervalContraction": lambda: tfq.callbacks.IntervalContraction(epochs=100, verbose=0),
    "PartitionRounds": lambda: tfq.callbacks.PartitionRounds(epochs_per_round=100, verbose=0),
    "IncrementalLayers": lambda: tfq.callbacks.IncrementalLayers(epochs_per_layer=100, verbose=0),
    # On a snap-mode model with a zero interval per layer (target 90 %), while the intervals
    # widen: the thresholds and centers are recomputed on the host every 100 batches.
    "GradualPruning": lambda: tfq.callbacks.GradualPruning(end_epoch=100, verbose=0),
}
#: The scheme each schedule drives (default: masked 3-bit).
_SCHEMES = {"GradualPruning": lambda: tfq.schemes.Multivalued(levels=7, sparsity=0.9)}
_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_epoch_begin", "on_epoch_end")


class _Timed(keras.callbacks.Callback):
    """Wraps a schedule and adds up the time spent in its per-batch and per-epoch hooks."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.seconds = schedule, 0.0

    def set_model(self, model):
        super().set_model(model)
        self.schedule.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.schedule.set_params(params)

    def on_train_begin(self, logs=None):
        self.schedule.on_train_begin(logs)

    def on_train_end(self, logs=None):
        self.schedule.on_train_end(logs)


def _timed_hook(name):
    def hook(self, *args, **kwargs):
        start = time.perf_counter()
        getattr(self.schedule, name)(*args, **kwargs)
        self.seconds += time.perf_counter() - start

    return hook


for _name in _HOOKS:
    setattr(_Timed, _name, _timed_hook(_name))


def _block(function, iterator, steps):
    """Seconds per call of `function` over `steps` calls (after one untimed call)."""
    function(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        logs = function(iterator)
    float(logs["loss"])  # wait for the last step
    return (time.perf_counter() - start) / steps


def _paired_steps(pairs, iterator, steps, rounds):
    """For each (keras, fused) pair: per round, one block of each back to back (the order
    alternates), so that both see the same machine state (this 2-core machine throttles in
    bursts: whole epochs ran 1.6x slower at random). Returns per name the per-round
    (keras seconds, fused seconds) per step."""
    out = {name: [] for name in pairs}
    for index in range(rounds):
        for name, (keras_step, fused_step) in pairs.items():
            if index % 2:
                fused = _block(fused_step, iterator, steps)
                plain = _block(keras_step, iterator, steps)
            else:
                plain = _block(keras_step, iterator, steps)
                fused = _block(fused_step, iterator, steps)
            out[name].append((plain, fused))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--steps", type=int, default=469, help="batches per timed epoch (469: MNIST at 128)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/results/schedule_overhead.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch * args.steps, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.batch * args.steps)
    # One dataset for every fit: from numpy arrays each fit would copy and shuffle 188 MB,
    # a per-epoch cost that made the epoch times scatter by seconds between models.
    epoch_data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch)
    dataset = epoch_data.repeat()
    base = lenet5()
    runs = {}
    for name, make in SCHEDULES.items():
        scheme = _SCHEMES.get(name, lambda: tfq.schemes.Multivalued(bits=3, mode="masked"))()
        model = tfq.quantize_model(base, scheme)
        model.compile(
            keras.optimizers.SGD(0.001),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        callbacks = [_Timed(make())] if make else []
        model.fit(epoch_data, epochs=1, verbose=0, callbacks=callbacks)  # warm
        runs[name] = (model, callbacks)
    epochs = {name: [] for name in runs}
    hooks = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # rotate: no schedule always goes first
            model, callbacks = runs[name]
            for callback in callbacks:
                callback.seconds = 0.0
            start = time.perf_counter()
            model.fit(epoch_data, epochs=1, verbose=0, callbacks=callbacks)
            epochs[name].append(time.perf_counter() - start)
            hooks[name].append(sum(c.seconds for c in callbacks))
    # The fused update runs inside the train step: time the step with it against Keras' own
    # step on the same model, interleaved.
    iterator = iter(dataset)
    pairs = {}
    for name in names[1:]:
        model, (timed,) = runs[name]
        pairs[name] = (model.train_function, timed.schedule._after_step._cache[id(model)][3])
    paired = _paired_steps(pairs, iterator, 30, 4 * args.rounds)
    rows = []
    for name in names:
        epoch_s, hook_s = float(np.median(epochs[name])), float(np.median(hooks[name]))
        row = {
            "schedule": name,
            "epoch_s": epoch_s,
            "hook_s": hook_s,
            "hook_ms_per_batch": 1e3 * hook_s / args.steps,
        }
        if name == "none":
            row.update(step_ms=None, fused_ms=None, overhead=0.0)
        else:
            plain = np.array([p for p, _ in paired[name]])
            fused = np.array([f for _, f in paired[name]])
            hook_per_batch = hook_s / args.steps
            row.update(
                step_ms=1e3 * float(np.median(plain)),
                fused_ms=1e3 * float(np.median(fused - plain)),
                overhead=float(np.median((fused - plain + hook_per_batch) / plain)),
            )
        rows.append(row)
    print(
        f"LeNet-5 masked 3-bit (GradualPruning: snap, 7 levels, zero intervals widening), "
        f"{args.steps} batches of {args.batch}, {args.rounds} rounds "
        "(median); the per-batch update runs fused in the train step: 'in step' = that step "
        "minus Keras' own step on the same model (blocks of 30 steps back to back, median of "
        f"{4 * args.rounds} pairs), 'hooks' = time in the callback's Python hooks per batch "
        "during the epochs; overhead = (in step + hooks) / Keras' step. Epoch times are "
        "printed for reference only: this machine throttles in bursts"
    )
    header = (
        f"{'schedule':<22}{'epoch s':>9}{'step ms':>9}{'in step ms':>12}{'hooks ms':>10}"
        f"{'overhead':>10}{'target 3%':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["schedule"] == "none":
            print(f"{r['schedule']:<22}{r['epoch_s']:>9.3f}")
            continue
        target = "ok" if r["overhead"] <= 0.03 else "MISS"
        print(
            f"{r['schedule']:<22}{r['epoch_s']:>9.3f}{r['step_ms']:>9.2f}{r['fused_ms']:>12.3f}"
            f"{r['hook_ms_per_batch']:>10.3f}{r['overhead']:>10.1%}{target:>11}"
        )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(rows, stream, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
