"""Schedules on LeNet-5: float vs naive snap-and-finetune vs MPA (PhaseAdaptation), same
float start and the same number of quantization epochs for every row.

Run: python benchmarks/schedules.py [--datasets mnist fashion_mnist] [--epochs 8]
       [--float-epochs 8] [--bits 4 3 2] [--json benchmarks/results/schedules.json]
Rows per dataset: float (after the float epochs, and after as many more epochs as every
quantized row gets: the reference for "drop"); for each bit width and for ternary (3 levels):
naive (every weight snapped to its k-means center from the start, then fine-tuned), MVQ
(IntervalContraction over all epochs), SLQ (PartitionRounds, zero cluster first), MLQ
(IncrementalLayers, ternary only), MPA (PhaseAdaptation with epochs_per_phase = epochs / levels)
MPA+tune (the phases in 3/4 of the epochs, then finish="tune_centers": the shared values
train) and MPA+STE (the phases in half the epochs, then finish="straight_through": the weights
fine-tune between fixed centers with straight-through gradients, as naive does); the peer,
ternary only: QKeras (QKeras 0.9's `ternary(alpha="auto")` on every kernel, a benchmark extra
installed with `pip install --no-deps qkeras==0.9.0 pyparsing networkx`; without it the row is
skipped with that hint). Every row starts from the same seed, so rows see the same shuffling
order.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import tfquant as tfq
from tfquant.models import compile_classifier, datasets, lenet5

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

TERNARY_ONLY = ("MLQ", "QKeras")


def _accuracy(model, x, y):
    return float(model.evaluate(x, y, verbose=0, batch_size=1000)[1])


def _schedule(method, levels, epochs):
    """The schedule of one row, fitted into `epochs` epochs."""
    if method == "MPA":
        return tfq.callbacks.PhaseAdaptation(epochs_per_phase=epochs / levels, verbose=0)
    if method == "MPA+tune":  # phases in 3/4 of the epochs, center tuning in the rest
        return tfq.callbacks.PhaseAdaptation(
            epochs_per_phase=0.75 * epochs / levels, finish="tune_centers", verbose=0
        )
    if method == "MPA+STE":  # phases in half the epochs, straight-through fine-tuning after
        return tfq.callbacks.PhaseAdaptation(
            epochs_per_phase=0.5 * epochs / levels, finish="straight_through", verbose=0
        )
    if method == "MVQ":
        return tfq.callbacks.IntervalContraction(epochs=epochs, verbose=0)
    if method == "SLQ":
        rounds = min(levels, epochs)
        return tfq.callbacks.PartitionRounds(
            rounds=rounds, epochs_per_round=epochs // rounds, order="zero_first", verbose=0
        )
    if method == "MLQ":  # LeNet-5 has 4 quantized layers
        return tfq.callbacks.IncrementalLayers(epochs_per_layer=max(1, epochs // 4), verbose=0)
    raise ValueError(f"unknown method {method!r}")


def run_dataset(name, args):
    tfq.keras.utils.set_random_seed(args.seed)  # initialization and fit's shuffling
    (x, y), (x_test, y_test) = datasets.load(name)
    float_model = compile_classifier(lenet5(seed=args.seed), 1e-3)
    start = time.perf_counter()
    float_model.fit(x, y, epochs=args.float_epochs, batch_size=args.batch, verbose=0)
    rows = [
        {
            "dataset": name,
            "method": "float",
            "levels": None,
            "epochs": args.float_epochs,
            "accuracy": _accuracy(float_model, x_test, y_test),
            "seconds": time.perf_counter() - start,
        }
    ]
    _progress(f"{name} (seed {args.seed}): float {rows[0]['accuracy']:.4f}")
    # The reference: the same float start trained for the same extra epochs at the
    # quantization learning rate, so every row has the same total epochs.
    start = time.perf_counter()
    tuned = compile_classifier(tfq.keras.models.clone_model(float_model), args.learning_rate)
    tuned.set_weights(float_model.get_weights())
    tuned.fit(x, y, epochs=args.epochs, batch_size=args.batch, verbose=0)
    rows.append(
        {
            "dataset": name,
            "method": "float",
            "levels": None,
            "epochs": args.float_epochs + args.epochs,
            "accuracy": _accuracy(tuned, x_test, y_test),
            "seconds": time.perf_counter() - start,
        }
    )
    reference = rows[-1]["accuracy"]
    total = args.float_epochs + args.epochs
    _progress(f"{name} (seed {args.seed}): float after {total} epochs {reference:.4f}")
    widths = [(2**b, f"{b}-bit") for b in args.bits] + [(3, "ternary")]
    for levels, label in widths:
        for method in [m for m in args.methods if m not in TERNARY_ONLY or levels == 3]:
            start = time.perf_counter()
            tfq.keras.utils.set_random_seed(args.seed)  # the same shuffling order in every row
            if method == "QKeras":
                row = _qkeras_row(float_model, (x, y), (x_test, y_test), args)
                if row is None:
                    continue
                row = {"dataset": name, "method": method, "bits": label, "levels": levels, **row}
                row["seconds"] = time.perf_counter() - start
                row["drop_pt"] = 100 * (reference - row["accuracy"])
                rows.append(row)
                _progress(
                    f"{name} (seed {args.seed}): {method} {label} {row['accuracy']:.4f} "
                    f"(drop {row['drop_pt']:+.2f} pt, {row['seconds']:.0f} s)"
                )
                continue
            mode = "snap" if method == "naive" else "masked"
            scheme = tfq.schemes.Multivalued(levels=levels, mode=mode)
            qmodel = compile_classifier(tfq.quantize_model(float_model, scheme), args.learning_rate)
            callbacks = [] if method == "naive" else [_schedule(method, levels, args.epochs)]
            if callbacks and callbacks[0].epochs_needed(qmodel) > args.epochs:
                _progress(f"  skip {method} {label}: needs more than {args.epochs} epochs")
                continue
            qmodel.fit(
                x, y, epochs=args.epochs, batch_size=args.batch, verbose=0, callbacks=callbacks
            )
            distinct = [r.distinct for r in tfq.summary(qmodel, print_fn=None)]
            row = {
                "dataset": name,
                "method": method,
                "bits": label,
                "levels": levels,
                "epochs": args.epochs,
                "accuracy": _accuracy(qmodel, x_test, y_test),
                "distinct_per_layer": distinct,
                "seconds": time.perf_counter() - start,
            }
            row["drop_pt"] = 100 * (reference - row["accuracy"])
            rows.append(row)
            _progress(
                f"{name} (seed {args.seed}): {method} {label} {row['accuracy']:.4f} "
                f"(drop {row['drop_pt']:+.2f} pt, {row['seconds']:.0f} s)"
            )
    return rows


def _qkeras_row(float_model, train, test, args):
    """The QKeras ternary peer from the same float start, the same epochs, batch and learning
    rate; None (with the install hint on stderr) when QKeras is not installed."""
    missing = peers.qkeras_missing()
    if missing:
        _progress(f"  skip QKeras ternary: {missing}")
        return None
    model = compile_classifier(peers.qkeras_ternary(float_model), args.learning_rate)
    model.fit(*train, epochs=args.epochs, batch_size=args.batch, verbose=0)
    return {
        "epochs": args.epochs,
        "accuracy": _accuracy(model, *test),
        "distinct_per_layer": peers.qkeras_distinct(model),
    }


def _progress(line):
    """A row as soon as it is measured, on stderr: standard output holds only the table (what
    run_all stores and the README shows); every row is also in the JSON."""
    print(line, file=sys.stderr, flush=True)


def print_table(rows):
    """One line per dataset, method and width: accuracy and drop (mean +- std over seeds)."""
    groups = {}
    for r in rows:
        bits = r.get("bits") or f"32 {r['epochs']}ep"
        groups.setdefault((r["dataset"], r["method"], bits), []).append(r)
    seeds = max(len(g) for g in groups.values())
    spread = seeds > 1
    header = (
        f"{'dataset':<14}{'method':<10}{'bits':<9}{'accuracy':>9}"
        + (f"{'std':>8}" if spread else "")
        + f"{'drop pt':>9}{'distinct':>18}"
    )
    print(header if not spread else f"{header}   (mean over {seeds} seeds)")
    print("-" * len(header))
    for (dataset, method, bits), group in groups.items():
        accuracy = np.array([r["accuracy"] for r in group])
        drop = "" if method == "float" else f"{np.mean([r['drop_pt'] for r in group]):+.2f}"
        distinct = "/".join(map(str, group[-1].get("distinct_per_layer", [])))
        std = f"{accuracy.std(ddof=1) if len(group) > 1 else 0.0:>8.4f}" if spread else ""
        print(
            f"{dataset:<14}{method:<10}{bits:<9}{accuracy.mean():>9.4f}{std}{drop:>9}{distinct:>18}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument(
        "--bits", nargs="*", type=int, default=[4, 3, 2], help="widths besides ternary"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["naive", "MVQ", "SLQ", "MLQ", "MPA", "MPA+tune", "MPA+STE"],
        help="rows per width: naive MVQ SLQ MLQ MPA MPA+tune MPA+STE QKeras (MLQ and the "
        "QKeras peer: ternary only)",
    )
    parser.add_argument("--epochs", type=int, default=8, help="quantization epochs per row")
    parser.add_argument("--float-epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="several seeds: the table gives mean and std"
    )
    parser.add_argument("--json", default="benchmarks/results/schedules.json")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds or [args.seed]:
        for name in args.datasets:
            for row in run_dataset(name, argparse.Namespace(**{**vars(args), "seed": seed})):
                rows.append({**row, "seed": seed})
    print_table(rows)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump({"args": vars(args), "rows": rows}, stream, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
