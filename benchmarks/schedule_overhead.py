"""Cost of the schedule callbacks: epoch time of LeNet-5 (masked 3-bit multivalued) trained
with each schedule vs the same model with no callback, interleaved rounds, same run.

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
}


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
        callbacks = [make()] if make else []
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=callbacks)  # warm
        runs[name] = (model, callbacks)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, callbacks) in runs.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=callbacks)
            times[name].append(time.perf_counter() - start)
    base_s = float(np.median(times["none"]))
    rows = [
        {
            "schedule": n,
            "epoch_s": float(np.median(t)),
            "overhead": float(np.median(t)) / base_s - 1.0,
        }
        for n, t in times.items()
    ]
    print(f"LeNet-5 masked 3-bit, {args.steps} batches of {args.batch}, {args.rounds} rounds")
    print(f"{'schedule':<22}{'epoch s':>9}{'overhead':>10}")
    for r in rows:
        print(f"{r['schedule']:<22}{r['epoch_s']:>9.3f}{r['overhead']:>10.1%}")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(rows, stream, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
