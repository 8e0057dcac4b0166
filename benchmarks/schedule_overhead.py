"""Cost of the schedule callbacks on LeNet-5 (masked 3-bit multivalued): the time spent inside
each schedule's Keras hooks, measured around the hooks themselves, as a fraction of the rest of
the epoch; plus epoch times with and without the schedule (interleaved rounds, rotating order,
same run), which a busy machine makes noisier than the hook timing.

Run: python benchmarks/schedule_overhead.py [--steps 100] [--rounds 5] [--json ...]
Target (issue #4): <= 3 % of epoch time.
"""

import argparse
import json
import os
import time

import numpy as np

import tfquant as tfq
from tfquant._keras import keras
from tfquant.models import lenet5

SCHEDULES = {
    "none": None,
    "PhaseAdaptation": lambda: tfq.callbacks.PhaseAdaptation(epochs_per_phase=100, verbose=0),
    "IntervalContraction": lambda: tfq.callbacks.IntervalContraction(epochs=100, verbose=0),
    "PartitionRounds": lambda: tfq.callbacks.PartitionRounds(epochs_per_round=100, verbose=0),
    "IncrementalLayers": lambda: tfq.callbacks.IncrementalLayers(epochs_per_layer=100, verbose=0),
}
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="batches per timed epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/results/schedule_overhead.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch * args.steps, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.batch * args.steps)
    base = lenet5()
    runs = {}
    for name, make in SCHEDULES.items():
        model = tfq.quantize_model(base, tfq.schemes.Multivalued(bits=3, mode="masked"))
        model.compile(
            keras.optimizers.SGD(0.001),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        callbacks = [_Timed(make())] if make else []
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=callbacks)  # warm
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
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=callbacks)
            epochs[name].append(time.perf_counter() - start)
            hooks[name].append(sum(c.seconds for c in callbacks))
    base_s = float(np.median(epochs["none"]))
    rows = []
    for name in names:
        epoch_s, hook_s = float(np.median(epochs[name])), float(np.median(hooks[name]))
        rows.append(
            {
                "schedule": name,
                "epoch_s": epoch_s,
                "hook_s": hook_s,
                "hook_ms_per_batch": 1e3 * hook_s / args.steps,
                "hook_overhead": hook_s / (epoch_s - hook_s),
                "epoch_vs_none": epoch_s / base_s - 1.0,
            }
        )
    print(
        f"LeNet-5 masked 3-bit, {args.steps} batches of {args.batch}, {args.rounds} rounds "
        "(median), hook time measured around the schedule's hooks"
    )
    header = (
        f"{'schedule':<22}{'epoch s':>9}{'hooks ms/batch':>16}{'hooks/rest':>12}"
        f"{'epoch vs none':>15}{'target 3%':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        target = "" if r["schedule"] == "none" else ("ok" if r["hook_overhead"] <= 0.03 else "MISS")
        print(
            f"{r['schedule']:<22}{r['epoch_s']:>9.3f}{r['hook_ms_per_batch']:>16.2f}"
            f"{r['hook_overhead']:>12.1%}{r['epoch_vs_none']:>15.1%}{target:>11}"
        )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(rows, stream, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
