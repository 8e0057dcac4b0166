"""BatchNorm networks exported to int8 TFLite: ResNet-20 and MobileNetV2 on CIFAR-10, tfquant's
folding export against tfmot's 8-bit QAT export of the same float network, in the same run.

Run: python benchmarks/real_networks.py [--networks resnet20 mobilenet_v2] [--qat-train 10000]
       [--test 10000] [--mobilenet-epochs 30] [--mobilenet-size 64] [--threads 1 2]
       [--rounds 5] [--runs 100]
       [--json benchmarks/results/real_networks.json]

Every row starts from the same float network: ResNet-20 from the shipped `resnet20_cifar10`
baseline; MobileNetV2 alpha=0.35 (Keras applications architecture) on CIFAR-10 images resized
bilinearly to `--mobilenet-size` (64x64 by default: at 32x32 its stride of 32 leaves one pixel
per channel and 30 epochs reached 56.3 %), trained here from scratch for `--mobilenet-epochs`
(cached in the tfquant cache folder by epochs and size, so a rerun skips it). Each quantized
row then trains the same QAT epochs on the same first `--qat-train` training images in the
same order (SGD, momentum 0.9, learning rate 1e-3), is exported, checked with `check_tflite`
on the test images and timed on this host with 1 and 2 threads (median of interleaved rounds).

Targets (issue 20): no BatchNorm residue (tfquant's op list no longer than tfmot's export of the
same net); latency <= 1.0x tfmot int8 in the same run (also reported against float TFLite);
agreement >= 99.5 % on ResNet-20 and >= 99 % on MobileNetV2; every kernel exact per channel;
Uniform(8) bytes <= tfmot's.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import OpResolverType

import tfquant as tfq
from tfquant import _quiet, export
from tfquant._keras import keras, tf
from tfquant.export.tflite import load_interpreter, run_tflite
from tfquant.models import datasets, mobilenet_v2, pretrained
from tfquant.models.augment import shifted_and_flipped

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import tfmot_qat, tfmot_tflite  # noqa: E402

SCHEMES = {
    "Uniform(8)": lambda: tfq.schemes.Uniform(bits=8),
    "Multivalued(4)": lambda: tfq.schemes.Multivalued(bits=4),
    "Multivalued(3)": lambda: tfq.schemes.Multivalued(bits=3),
    "Ternary": lambda: tfq.schemes.Ternary(),
}
TARGET_AGREEMENT = {"resnet20": 0.995, "mobilenet_v2": 0.99}


def _compile(model, learning_rate):
    model.compile(
        keras.optimizers.SGD(learning_rate, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _resized(images, size):
    if images.shape[1] == size:
        return images
    return np.concatenate(
        [
            tf.image.resize(images[i : i + 2000], (size, size)).numpy()
            for i in range(0, len(images), 2000)
        ]
    )


def _mobilenet(x, y, x_test, y_test, epochs, log):
    """MobileNetV2 alpha=0.35 at the size of `x` trained from scratch; weights cached by epochs
    and input size."""
    size = x.shape[1]
    model = mobilenet_v2(alpha=0.35, input_shape=(size, size, 3), classes=10)
    name = f"mobilenet_v2_035_cifar10_{epochs}ep" + ("" if size == 32 else f"_{size}px")
    cache = datasets.cache_dir() / "benchmarks" / f"{name}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            model.set_weights([stored[key] for key in sorted(stored.files)])
        log(f"mobilenet_v2: float weights from the cache ({epochs} epochs)")
        return model, None
    start = time.time()
    steps = epochs * int(np.ceil(len(x) / 128))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - 391, warmup_target=0.05, warmup_steps=391
    )
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    padding = 4 * size // 32  # the standard 4-pixel shift at 32x32, scaled with the input
    model.fit(shifted_and_flipped(x, y, 128, seed=0, padding=padding), epochs=epochs, verbose=0)
    minutes = (time.time() - start) / 60
    accuracy = float(model.evaluate(x_test, y_test, batch_size=500, verbose=0)[1])
    log(f"mobilenet_v2: trained {epochs} epochs in {minutes:.1f} min, test accuracy {accuracy:.4f}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        str(cache) + ".partial.npz", **{f"{i:04d}": w for i, w in enumerate(model.get_weights())}
    )
    os.replace(str(cache) + ".partial.npz", cache)
    return model, minutes


def _float_tflite(model):
    return _quiet.convert(tf.lite.TFLiteConverter.from_keras_model(model))


def _ops(tfl):
    interpreter = load_interpreter(tfl)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def _keras_logits(model, x):
    return np.concatenate(
        [np.asarray(model(x[i : i + 500], training=False)) for i in range(0, len(x), 500)]
    )


def _rows_for(network, float_model, x, y, x_test, y_test, args, log):
    calibration = x[:200]
    rows = []

    def add(name, tfl, keras_model=None, minutes=None, note=None, report=None):
        tflite_logits = run_tflite(tfl, x_test)
        xnnpack = load_interpreter(tfl, experimental_op_resolver_type=OpResolverType.AUTO)
        xnnpack_logits = run_tflite(tfl, x_test, interpreter=xnnpack)
        row = {
            "network": network,
            "model": name,
            "bytes": len(tfl),
            "ops": _ops(tfl),
            "tflite_accuracy": float(np.mean(tflite_logits.argmax(-1) == y_test)),
            # the same file on LiteRT's XNNPACK kernels vs its built-in kernels: how far two
            # integer runtimes' rounding alone moves the predictions
            "runtime_agreement": float(
                np.mean(tflite_logits.argmax(-1) == xnnpack_logits.argmax(-1))
            ),
            "qat_minutes": minutes,
        }
        if keras_model is not None:
            keras_logits = _keras_logits(keras_model, x_test)
            row["keras_accuracy"] = float(np.mean(keras_logits.argmax(-1) == y_test))
            row["agreement"] = float(np.mean(keras_logits.argmax(-1) == tflite_logits.argmax(-1)))
        if report is not None:
            row["kernels_exact"] = sum(k.exact for k in report.kernels)
            row["kernels"] = len(report.kernels)
            row["disagreement_margin"] = report.disagreement_margin
            row["float_ops"] = report.float_ops
        if note:
            row["note"] = note
        rows.append((row, tfl))
        log(f"{network} {name}: {json.dumps({k: v for k, v in row.items() if k != 'ops'})}")

    add("float32 (TFLite)", _float_tflite(float_model), float_model)
    order = np.random.default_rng(0).permutation(args.qat_train)
    x_qat, y_qat = x[: args.qat_train][order], y[: args.qat_train][order]

    start = time.time()
    qat, refusal = tfmot_qat(float_model)
    _compile(qat, 1e-3).fit(x_qat, y_qat, batch_size=128, epochs=args.qat_epochs, verbose=0)
    note = f"quantize_model refused ({refusal}); supported layers annotated" if refusal else None
    add("tfmot QAT int8", tfmot_tflite(qat, calibration), qat, (time.time() - start) / 60, note)

    for name, scheme in SCHEMES.items():
        if args.schemes and name not in args.schemes:
            continue
        start = time.time()
        qmodel = _compile(tfq.quantize_model(float_model, scheme()), 1e-3)
        qmodel.fit(x_qat, y_qat, batch_size=128, epochs=args.qat_epochs, verbose=0)
        minutes = (time.time() - start) / 60
        tfl = export.to_tflite(qmodel, calibration)
        report = export.check_tflite(tfl, qmodel, x_test[:1000], strict=False)
        add(f"tfquant {name}", tfl, qmodel, minutes, report=report)
    return rows


def _time_rows(rows, args):
    timings = collections.defaultdict(list)
    for _ in range(args.rounds):
        for threads in args.threads:
            for row, tfl in rows:
                result = export.benchmark(tfl, runs=args.runs, warmup=20, threads=threads)
                timings[(row["model"], threads)].append(result["median_us"])
    for row, _ in rows:
        for threads in args.threads:
            row[f"median_us_{threads}t"] = float(np.median(timings[(row["model"], threads)]))


def _print_table(network, rows, args, header_note):
    by_name = {row["model"]: row for row, _ in rows}
    tfmot_row, float_row = by_name["tfmot QAT int8"], by_name["float32 (TFLite)"]
    print(f"\n{network}: {header_note}")
    columns = (
        f"{'model':<24}{'Keras':>7}{'TFLite':>8}{'agree':>8}{'rt':>8}{'ops':>5}{'MUL':>5}"
        f"{'ADD':>5}"
        f"{'bytes':>10}{'vs tfmot':>9}"
        + "".join(f"{f'µs {t}t':>9}{'/tfmot':>7}{'/float':>7}" for t in args.threads)
    )
    print(columns)
    print("-" * len(columns))
    for row, _ in rows:
        counts = collections.Counter(row["ops"])
        row["bytes_vs_tfmot"] = row["bytes"] / tfmot_row["bytes"]
        line = (
            f"{row['model']:<24}{row.get('keras_accuracy', float('nan')):>7.2%}"
            f"{row['tflite_accuracy']:>8.2%}{row.get('agreement', float('nan')):>8.2%}"
            f"{row['runtime_agreement']:>8.2%}"
            f"{len(row['ops']):>5}{counts['MUL']:>5}{counts['ADD']:>5}{row['bytes']:>10,}"
            f"{row['bytes_vs_tfmot']:>9.3f}"
        )
        for t in args.threads:
            us = row[f"median_us_{t}t"]
            row[f"latency_vs_tfmot_{t}t"] = us / tfmot_row[f"median_us_{t}t"]
            row[f"latency_vs_float_{t}t"] = us / float_row[f"median_us_{t}t"]
            line += (
                f"{us:>9.0f}{row[f'latency_vs_tfmot_{t}t']:>7.2f}"
                f"{row[f'latency_vs_float_{t}t']:>7.2f}"
            )
        print(line)
    for row, _ in rows:
        if row.get("note"):
            print(f"  {row['model']}: {row['note']}")
        if "kernels" in row:
            print(
                f"  {row['model']}: {row['kernels_exact']}/{row['kernels']} kernels exact per "
                f"channel, float ops {row['float_ops'] or 'none'}, largest disagreement "
                f"margin {row['disagreement_margin']:.1f} output steps"
            )
    print(
        "  agree: Keras vs the file on LiteRT's built-in kernels; rt: the same file on XNNPACK "
        "vs the built-in kernels (argmax agreement, test images)"
    )
    target = TARGET_AGREEMENT[network]
    ours = [row for row, _ in rows if row["model"].startswith("tfquant")]
    verdicts = {
        f"agreement >= {target:.1%}": all(row["agreement"] >= target for row in ours),
        "every kernel exact": all(row["kernels_exact"] == row["kernels"] for row in ours),
        "ops <= tfmot's": all(len(row["ops"]) <= len(tfmot_row["ops"]) for row in ours),
        "Uniform(8) bytes <= tfmot": by_name.get("tfquant Uniform(8)", {}).get("bytes", 0)
        <= tfmot_row["bytes"],
        **{
            f"latency <= tfmot ({t}t)": all(row[f"latency_vs_tfmot_{t}t"] <= 1.0 for row in ours)
            for t in args.threads
        },
    }
    print("  targets: " + ", ".join(f"{k} {'MET' if v else 'MISS'}" for k, v in verdicts.items()))
    return verdicts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet20", "mobilenet_v2"])
    parser.add_argument(
        "--schemes", nargs="*", default=None, help="subset of " + str(list(SCHEMES))
    )
    parser.add_argument("--qat-train", type=int, default=10000, help="training images for QAT")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--test", type=int, default=10000, help="test images")
    parser.add_argument("--mobilenet-epochs", type=int, default=30)
    parser.add_argument(
        "--mobilenet-size", type=int, default=64, help="MobileNetV2 input side in pixels (>= 32)"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", default="benchmarks/results/real_networks.json")
    args = parser.parse_args(argv)
    if args.mobilenet_size < 32:
        parser.error(f"--mobilenet-size: got {args.mobilenet_size}; MobileNetV2 needs >= 32")

    def log(message):
        print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    (x, y), (x_test, y_test) = datasets.load("cifar10", limit=(None, args.test))
    results = {"args": vars(args), "machine": platform.processor() or platform.machine()}
    results["date"] = datetime.date.today().isoformat()
    for network in args.networks:
        net_x, net_x_test = x, x_test
        if network == "resnet20":
            float_model = pretrained("resnet20_cifar10")
            note = "shipped float baseline resnet20_cifar10"
        elif network == "mobilenet_v2":
            size = args.mobilenet_size
            net_x, net_x_test = _resized(x, size), _resized(x_test, size)
            float_model, minutes = _mobilenet(
                net_x, y, net_x_test, y_test, args.mobilenet_epochs, log
            )
            note = (
                f"MobileNetV2 alpha=0.35, CIFAR-10 resized to {size}x{size}, "
                f"{args.mobilenet_epochs} float epochs"
            )
        else:
            parser.error(f"--networks: unknown network {network!r}")
        rows = _rows_for(network, float_model, net_x, y, net_x_test, y_test, args, log)
        _time_rows(rows, args)
        header = (
            f"{note}; {args.qat_epochs} QAT epoch(s) on {args.qat_train} images; accuracy and "
            f"agreement on {len(x_test)} test images; host latency median of {args.rounds} "
            f"interleaved rounds x {args.runs} runs"
        )
        verdicts = _print_table(network, rows, args, header)
        results[network] = {
            "note": header,
            "rows": [row for row, _ in rows],
            "targets": verdicts,
        }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(results, stream, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
