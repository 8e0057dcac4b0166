"""CIFAR-10 ResNet-20: every method from the same float start, with the same epochs, batch,
optimizer and data order; rows accumulate over several runs in one JSON file.

Run: python benchmarks/cifar10.py [--rows "MPA 3-bit" "naive 3-bit" ...] [--epochs 4]
       [--train 50000] [--test 10000] [--json benchmarks/results/cifar10.json] [--quick]
       [--list]

Start: the shipped float baseline `resnet20_cifar10` (`tfquant.models.pretrained`). Every row
then trains `--epochs` epochs on the first `--train` training images (random crop + flip, the
same order in every row: one seed), SGD with momentum 0.9, learning rate `--learning-rate`
decayed to 0 by a cosine, batch 128; the "float" row is the same fine-tuning without
quantization and is the reference for "drop". Columns: Keras test accuracy, the exported
full-integer TFLite model's test accuracy (tfquant's BatchNorm-folding export; tfmot's own
converter path for its rows), drop vs float, the ANS container's bytes and ratio to float32
(tfquant rows), epochs and minutes. The first conv and the last Dense stay 8-bit in every
quantized row (`keep_first_last_8bit`, as TTQ, LQ-Nets and APoT keep them at full precision).
"MPA n-bit" rows spread PhaseAdaptation's phases over every epoch; "MPA n-bit ST" rows run
them in the first half and then fine-tune with every weight snapped and a straight-through
gradient (`finish="straight_through"`, as the "MPA ternary" row does). The tfmot clustering
rows cluster the same layers (first and last float) at a hundredth of the learning rate, as
tfmot's guide asks for a low one: its centroids take the summed gradient of every weight in
their cluster, and at the shared rate they collapse ("tfmot cluster 4 lr.01": tfmot's
`cluster_weights` on the whole model as documented, 1-3 distinct values left per layer and
chance accuracy), still at a tenth of it ("tfmot cluster 4 lr.001").

The "channels" rows (issue 22's stretch) remove `CHANNEL_FRACTION` of every residual
block's inner channels by L2 norm (`GradualPruning(structure="channel")` over the first 2/3
of the epochs, 3-bit snapped weights elsewhere as "naive 3-bit"; "KD": fine-tuned by
`tfq.Distiller` from the float baseline), then `tfq.shrink`; their Keras and TFLite columns
are the shrunk model's, and a second table gives the channels kept, the multiply-accumulates
per image, and both int8 files' bytes and host latency (1 thread).

A run measures the rows not yet stored for its settings (`--rows` names rows to measure again,
`--rerun` measures every row) and stores each record in the JSON as soon as it finishes (with
the date, settings and machine); the table printed at the end holds every stored row measured
with the same settings, then the issue's targets checked on them. `--table` prints that table
from the JSON without training. `--quick` (a slice, one epoch, its own JSON) is what the test
suite runs. The data is the offline JPEG (q75) copy of CIFAR-10, so the published figures
printed beside ours are context, not the same experiment.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time

import numpy as np

# tfquant first: it pins tf.keras to Keras 2 before tfmot (and QKeras, in peers) import it.
import tfquant as tfq

# isort: split
import tensorflow_model_optimization as tfmot

from tfquant import export
from tfquant._keras import keras
from tfquant.export.tflite import run_tflite
from tfquant.models import datasets, pretrained
from tfquant.models.augment import shifted_and_flipped

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from peers import tfmot_qat, tfmot_tflite  # noqa: E402
from timing import interleaved_median_us  # noqa: E402

BATCH = 128

# Published (float -> quantized, %), context only: other data (PNG CIFAR-10), other recipes.
PUBLISHED = {
    "TTQ": "TTQ ResNet-20 91.77 -> 91.13 (ternary)",
    "MPA ternary": "TTQ ResNet-20 91.77 -> 91.13 (ternary)",
    "LQ-Nets W2": "LQ-Nets ResNet-20 92.1 -> 91.8 (W2)",
    "LQ-Nets W2A2": "LQ-Nets 92.1 -> 90.2; APoT 92.96 -> 90.96 (W2A2)",
    "MPA 4-bit": "MPA ResNet-18 93.11 -> 93.4 (4-bit, 16 epochs)",
    "MPA 3-bit": "MPA ResNet-18 93.11 -> 93.1 (3-bit); naive 91.6",
    "naive 3-bit": "MPA paper's naive 3-bit ResNet-18: 91.6",
}


def _multivalued(bits=None, levels=None, mode="auto"):
    return tfq.schemes.Multivalued(bits=bits or 3, levels=levels, mode=mode)


def _mpa(levels, finish=None):
    def schedule(epochs):
        if finish == "straight_through":
            return tfq.callbacks.PhaseAdaptation(
                epochs_per_phase=0.5 * epochs / levels, finish=finish, verbose=0
            )
        return tfq.callbacks.PhaseAdaptation(epochs_per_phase=epochs / levels, verbose=0)

    return schedule


# name: (kind, scheme factory or peer option, schedule factory(epochs) or None)
ROWS = {
    "float": ("float", None, None),
    "tfmot 8-bit QAT": ("tfmot_qat", None, None),
    # (clusters, every layer?, learning-rate factor)
    "tfmot cluster 8": ("tfmot_cluster", (8, False, 0.01), None),
    "tfmot cluster 4": ("tfmot_cluster", (4, False, 0.01), None),
    "tfmot cluster 4 lr.001": ("tfmot_cluster", (4, False, 0.1), None),
    "tfmot cluster 4 lr.01": ("tfmot_cluster", (4, True, 1.0), None),
    "QKeras ternary": ("qkeras", None, None),
    "naive 3-bit": ("tfquant", lambda: _multivalued(3, mode="snap"), None),
    "naive 2-bit": ("tfquant", lambda: _multivalued(2, mode="snap"), None),
    "MPA 4-bit": ("tfquant", lambda: _multivalued(4), _mpa(16)),
    "MPA 3-bit": ("tfquant", lambda: _multivalued(3), _mpa(8)),
    "MPA 2-bit": ("tfquant", lambda: _multivalued(2), _mpa(4)),
    # The phases in the first half, then every weight snapped with a straight-through
    # gradient (what the ternary row uses): the epochs the plain schedule spends on its last
    # phases go to fine-tuning the fully quantized net, as naive snapping does throughout.
    "MPA 3-bit ST": ("tfquant", lambda: _multivalued(3), _mpa(8, "straight_through")),
    "MPA 2-bit ST": ("tfquant", lambda: _multivalued(2), _mpa(4, "straight_through")),
    "TTQ": ("tfquant", lambda: tfq.schemes.Ternary(method="ttq"), None),
    "MPA ternary": ("tfquant", lambda: _multivalued(levels=3), _mpa(3, "straight_through")),
    "LQ-Nets W2": (
        "tfquant",
        lambda: tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=None),
        None,
    ),
    "LQ-Nets W2A2": (
        "tfquant",
        lambda: tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=2),
        None,
    ),
    # Structured pruning (issue 22's stretch: half the FLOPs at <= 1 pt): CHANNEL_FRACTION of
    # the inner channels of every residual block (the first conv's filters, its BatchNorm
    # channels and the second conv's inputs) removed by L2 norm with
    # GradualPruning(structure="channel") while 3-bit snapped weights train, then tfq.shrink;
    # "KD" rows fine-tune with tfq.Distiller from the float baseline.
    "channels 3-bit": ("tfquant_channels", False, None),
    "channels 3-bit KD": ("tfquant_channels", True, None),
}

#: The fraction of each residual block's inner channels the "channels" rows remove: the
#: blocks hold all but ~1 % of ResNet-20's multiply-accumulates and both of a block's convs
#: scale with its inner width, so 0.55 (16 -> 7, 32 -> 14, 64 -> 29 channels) removes 55 %.
CHANNEL_FRACTION = 0.55


def _progress(line):
    """Progress on stderr: standard output holds only the table (what run_all stores)."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {line}", file=sys.stderr, flush=True)


def _compile(model, args, steps, lr_factor=1.0):
    schedule = keras.optimizers.schedules.CosineDecay(lr_factor * args.learning_rate, steps)
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _fit(model, x, y, args, callbacks=(), lr_factor=1.0):
    steps = args.epochs * int(np.ceil(len(x) / BATCH))
    _compile(model, args, steps, lr_factor)
    keras.utils.set_random_seed(args.seed)
    data = shifted_and_flipped(x, y, BATCH, seed=args.seed)
    model.fit(data, epochs=args.epochs, verbose=0, callbacks=list(callbacks))
    return model


def _keras_accuracy(model, x, y):
    logits = np.concatenate(
        [np.asarray(model(x[i : i + 500], training=False)) for i in range(0, len(x), 500)]
    )
    return float(np.mean(logits.argmax(-1) == y))


def _with_keep(scheme):
    config = scheme.get_config()
    config["keep_first_last_8bit"] = True
    return type(scheme).from_config(config)


class _RunningClock:
    """Wall-clock seconds while the process runs: a thread ticks every half second and a gap
    of more than 5 s between ticks (the process was stopped, e.g. paused with SIGSTOP while
    another job had the cores, or the machine slept) is left out of the row's minutes."""

    def __init__(self):
        self._seconds, self._last, self._done = 0.0, time.monotonic(), threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _tick(self):
        while not self._done.wait(0.5):
            self._add()

    def _add(self):
        now = time.monotonic()
        gap, self._last = now - self._last, now
        if gap < 5.0:
            self._seconds += gap

    def minutes(self):
        """Stops the clock; the running minutes so far."""
        self._done.set()
        self._thread.join()
        self._add()
        return self._seconds / 60


def multiply_accumulates(model):
    """Multiply-accumulates of one image through `model`'s Conv2D, DepthwiseConv2D and Dense
    layers (QAT wrappers included), from their configs and output shapes."""
    total = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if not isinstance(
            inner, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
        ):
            continue
        out = layer.output_shape
        cin = layer.input_shape[-1]
        if isinstance(inner, keras.layers.Dense):
            total += cin * out[-1]
            continue
        window = int(np.prod(inner.kernel_size))
        per_output = window if isinstance(inner, keras.layers.DepthwiseConv2D) else window * cin
        total += int(np.prod(out[1:])) * per_output
    return total


def _inner_convs(float_model):
    """The first conv of every residual block of the zoo's ResNet-20: the convs after the
    stem, every other one (their outputs feed only the block's second conv)."""
    convs = [layer.name for layer in float_model.layers if type(layer) is keras.layers.Conv2D]
    return convs[1::2]


def _container_fields(model, float_model):
    """The ANS container's bytes and ratio to the float net's float32 weights, and the
    distinct values per quantized layer, of the QAT `model`."""
    coded = tfq.coding.compress(model).to_bytes()
    float_bytes = 4 * sum(int(np.prod(w.shape)) for w in float_model.weights)
    return {
        "coded_bytes": len(coded),
        "ratio": float_bytes / len(coded),
        "distinct_per_layer": [r.distinct for r in tfq.summary(model, print_fn=None)],
    }


def _channels_row(float_model, distill, data, args, record):
    """The "channels" rows: prune, shrink, export both int8 files, count and time them."""
    (x, y), (x_test, y_test) = data
    pruned = {name: {"sparsity": CHANNEL_FRACTION} for name in _inner_convs(float_model)}
    scheme = tfq.schemes.Multivalued(bits=3, mode="snap", keep_first_last_8bit=True, layers=pruned)
    model = tfq.quantize_model(float_model, scheme)
    pruning = tfq.callbacks.GradualPruning(
        end_epoch=2.0 * args.epochs / 3.0, frequency=100, verbose=0, structure="channel"
    )
    trainer = tfq.Distiller(model, float_model) if distill else model
    _fit(trainer, x, y, args, [pruning])
    shrunk, report = tfq.shrink(model)
    calibration = x[:200]
    files = {
        "full": export.to_tflite(model, calibration),
        "shrunk": export.to_tflite(shrunk, calibration),
    }
    latency = interleaved_median_us(files, rounds=5, runs=100, warmup=20)
    before, after = multiply_accumulates(model), multiply_accumulates(shrunk)
    record.update(_container_fields(shrunk, float_model))
    record.update(
        channel_fraction=CHANNEL_FRACTION,
        distillation=distill,
        channels=report.get_config()["channels"],
        macs_full=before,
        macs_shrunk=after,
        flops_removed=1.0 - after / before,
        pruned_keras_accuracy=_keras_accuracy(model, x_test, y_test),
        tflite_bytes_full=len(files["full"]),
        tflite_bytes_shrunk=len(files["shrunk"]),
        latency_us_full=latency["full"],
        latency_us_shrunk=latency["shrunk"],
        latency_ratio=latency["shrunk"] / latency["full"],
    )
    return shrunk, files["shrunk"]


def _run_row(name, float_model, data, args):
    kind, option, schedule = ROWS[name]
    (x, y), (x_test, y_test) = data
    calibration = x[:200]
    clock = _RunningClock()
    record = {"row": name}
    if kind == "float":
        model = keras.models.clone_model(float_model)
        model.set_weights(float_model.get_weights())
        _fit(model, x, y, args)
        tfl = None
    elif kind == "tfmot_qat":
        model = _fit(tfmot_qat(float_model)[0], x, y, args)
        tfl = tfmot_tflite(model, calibration)
    elif kind == "tfmot_cluster":
        clusters, every_layer, lr_factor = option
        clustered = peers.tfmot_cluster(float_model, clusters, every_layer)
        _fit(clustered, x, y, args, lr_factor=lr_factor)
        model = tfmot.clustering.keras.strip_clustering(clustered)
        record["distinct_per_layer"] = [
            int(np.unique(layer.get_weights()[0]).size)
            for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        ]
        tfl = None
    elif kind == "tfquant_channels":
        model, tfl = _channels_row(float_model, option, data, args, record)
    elif kind == "qkeras":
        record["skipped"] = peers.qkeras_missing()
        if record["skipped"]:
            return record
        del record["skipped"]
        model = _fit(peers.qkeras_ternary(float_model), x, y, args)
        record["distinct_per_layer"] = peers.qkeras_distinct(model)
        tfl = None
    else:
        scheme = _with_keep(option())
        model = tfq.quantize_model(float_model, scheme)
        callbacks = [schedule(args.epochs)] if schedule else []
        if callbacks and callbacks[0].epochs_needed(model) > args.epochs:
            record["skipped"] = f"the schedule needs more than {args.epochs} epochs"
            return record
        _fit(model, x, y, args, callbacks)
        tfl = export.to_tflite(model, calibration)
        record.update(_container_fields(model, float_model))
    record["minutes"] = clock.minutes()
    record["keras_accuracy"] = _keras_accuracy(model, x_test, y_test)
    if tfl is not None:
        record["tflite_accuracy"] = float(np.mean(run_tflite(tfl, x_test).argmax(-1) == y_test))
    return record


def _settings(args):
    return {"epochs": args.epochs, "train": args.train, "test": args.test, "lr": args.learning_rate}


def _print_table(records, settings):
    rows = [r for r in records.values() if r.get("settings") == settings and "skipped" not in r]
    reference = next((r["keras_accuracy"] for r in rows if r["row"] == "float"), None)
    print(
        f"ResNet-20 CIFAR-10 (JPEG q75): from the shipped float baseline, {settings['epochs']} "
        f"epochs on {settings['train']} images, SGD momentum 0.9, lr {settings['lr']} cosine, "
        f"batch {BATCH}; accuracy on {settings['test']} test images"
    )
    header = (
        f"{'row':<22}{'Keras':>8}{'TFLite':>8}{'drop pt':>9}{'coded B':>10}{'ratio':>7}"
        f"{'min':>6}  {'date':<11}published (context)"
    )
    print(header)
    print("-" * len(header))
    for name in ROWS:
        record = next((r for r in rows if r["row"] == name), None)
        if record is None:
            continue
        tflite = record.get("tflite_accuracy")
        drop = "" if reference is None else f"{100 * (reference - record['keras_accuracy']):+.2f}"
        coded = record.get("coded_bytes")
        tflite = "-" if tflite is None else f"{tflite:.2%}"
        ratio = f"{record['ratio']:.1f}x" if coded else "-"
        coded = f"{coded:,}" if coded else "-"
        print(
            f"{name:<22}{record['keras_accuracy']:>8.2%}{tflite:>8}{drop:>9}{coded:>10}"
            f"{ratio:>7}{record['minutes']:>6.0f}  {record['date']:<11}{PUBLISHED.get(name, '')}"
        )
    skipped = [r for r in records.values() if r.get("settings") == settings and "skipped" in r]
    for record in skipped:
        print(f"{record['row']}: not measured: {record['skipped']}")
    _print_channels([r for r in rows if "flops_removed" in r], reference)
    missing = [n for n in ROWS if not any(r["row"] == n for r in rows)]
    if missing:
        print(f"rows not measured yet with these settings: {', '.join(missing)}")
    if reference is not None:
        _print_targets({r["row"]: r["keras_accuracy"] for r in rows}, reference)


def _print_channels(rows, reference):
    """The structured rows: channels kept, FLOPs, both int8 files' bytes and host latency,
    and issue 22's stretch target (>= 50 % of the FLOPs removed at <= 1 pt drop)."""
    if not rows:
        return
    print(
        "structured rows (tfq.shrink of the pruned QAT model; Keras and TFLite columns above "
        "are the shrunk model's): block inner channels kept, multiply-accumulates per image, "
        "int8 .tflite bytes and host latency (1 thread, median of 5 interleaved rounds) of the "
        "full and the shrunk file"
    )
    for r in rows:
        kept = [after for before, after in r["channels"].values() if before != after]
        drop = None if reference is None else 100 * (reference - r["keras_accuracy"])
        print(
            f"  {r['row']}: inner channels kept {kept}; MACs {r['macs_full']:,} -> "
            f"{r['macs_shrunk']:,} ({r['flops_removed']:.1%} removed); pruned Keras "
            f"{r['pruned_keras_accuracy']:.2%}; .tflite {r['tflite_bytes_full']:,} -> "
            f"{r['tflite_bytes_shrunk']:,} B; latency {r['latency_us_full']:.0f} -> "
            f"{r['latency_us_shrunk']:.0f} us ({r['latency_ratio']:.2f}x)"
        )
        if drop is not None:
            met = r["flops_removed"] >= 0.5 and drop <= 1.0
            print(
                f"    target >= 50 % FLOPs removed at <= 1 pt drop: {r['flops_removed']:.1%} at "
                f"{drop:.2f} pt ({'met' if met else 'MISSED'})"
            )


# The targets on Keras accuracy: (row, the row it is compared with or None for float,
# the least margin in points over it; a negative margin is the drop allowed below float).
TARGETS = [
    ("MPA 4-bit", None, -0.2),
    ("MPA 3-bit", None, -0.5),
    ("MPA 3-bit", "naive 3-bit", 0.5),
    ("MPA 2-bit", "naive 2-bit", 0.5),
    ("MPA 3-bit ST", "naive 3-bit", 0.5),
    ("MPA 2-bit ST", "naive 2-bit", 0.5),
    ("MPA ternary", None, -0.5),
    ("MPA ternary", "tfmot cluster 4", 0.0),
    ("LQ-Nets W2A2", None, -1.5),
]


def _print_targets(accuracy, reference):
    """One line per target: met, missed (with the gap) or not measured yet."""
    print("targets (Keras accuracy, points):")
    for row, other, margin in TARGETS:
        base = reference if other is None else accuracy.get(other)
        against = "float" if other is None else other
        goal = f"{row} >= {against} {margin:+.1f}"
        if row not in accuracy or base is None:
            print(f"  {goal}: not measured yet")
            continue
        gap = 100 * (accuracy[row] - base)
        verdict = "met" if gap >= margin - 1e-9 else "MISSED"
        print(f"  {goal}: {gap:+.2f} ({verdict})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), metavar="ROW")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/cifar10.json")
    parser.add_argument("--quick", action="store_true", help="a slice, 1 epoch (the tests)")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    parser.add_argument("--rerun", action="store_true", help="measure stored rows again")
    parser.add_argument(
        "--table", action="store_true", help="print the stored table (no training) and exit"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(ROWS))
        return
    if args.quick:
        args.epochs, args.train, args.test = 1, min(args.train, 256), min(args.test, 200)
    records = {}
    if os.path.exists(args.json):
        with open(args.json) as stream:
            records = {r["row"] + json.dumps(r["settings"]): r for r in json.load(stream)["rows"]}
    settings = _settings(args)
    if args.rows:
        todo = args.rows
    else:
        todo = [n for n in ROWS if args.rerun or n + json.dumps(settings) not in records]
    if args.table:
        todo = []
    if todo:
        data = datasets.load("cifar10", limit=(args.train, args.test))
        float_model = pretrained("resnet20_cifar10")
    for name in todo:
        _progress(f"{name}: start")
        record = _run_row(name, float_model, data, args)
        record.update(
            settings=settings,
            date=datetime.date.today().isoformat(),
            machine=f"{os.cpu_count()} CPU cores, {platform.machine()}",
        )
        records[name + json.dumps(settings)] = record
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        partial = args.json + ".partial"
        with open(partial, "w") as stream:  # stored as soon as it finishes
            json.dump({"rows": list(records.values())}, stream, indent=2)
        os.replace(partial, args.json)
        _progress(f"{name}: {json.dumps(record)}")
    _print_table(records, settings)
    if todo:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
