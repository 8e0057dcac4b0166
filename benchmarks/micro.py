"""TensorFlow Lite Micro models that store each kernel as its trained indices (`to_micro`) on
LeNet-5 and LeNet-300-100 (MNIST): file bytes of int8 / LUT / prune / LUT+prune vs the `.tfqz`
container, bits per weight, the pruning format's floor, tensor arenas, TFLM latency
(reference kernels) and accuracy in TFLM.

Rows per net, each from the shipped float baseline (`tfq.models.pretrained`):
- "multivalued 3-bit" and "ternary": one QAT epoch on the first --train MNIST images;
- "recipe 200x": the compression benchmark's 200x row of that net, trained by that benchmark's
  own functions with its stored table's settings (`run_all.py`'s full arguments for
  `compression`: 24 epochs, cosine learning rate, `--schedule prune`, i.e. the zero intervals
  widen with `tfq.callbacks.GradualPruning` over the first 2/3 of the epochs, full MNIST,
  float16 biases): LeNet-5's hand-set "recipe 200x", LeNet-300-100's "allocate_bits 200x"
  (it has no hand-set 200x recipe). --recipe-epochs / --recipe-train shorten it; the table
  then says so.
Every TFLM file is proved by `to_micro` to give the int8 model's outputs on --proof
calibration images, and its kernels to decode to the trained codes.

Run: python benchmarks/micro.py [--models lenet5 lenet300_100] [--train 10000] [--test 2000]
       [--recipe-epochs N] [--recipe-train N] [--rounds 5] [--runs 200]
       [--json benchmarks/results/micro.json]
Targets (issue 21): 3-bit LeNet-5 TFLM file <= 0.40 x its int8 file; ternary <= 0.27 x; the
200x recipe <= 0.15 x with pruning (LUT+prune file); outputs identical in every case. Latency
ratios are reported, never asserted.
"""

import argparse
import json
import math
import os
import sys
import time
import warnings

import compression
import numpy as np
import run_all

import tfquant as tfq
from tfquant import export
from tfquant.export.micro import load_micro, run_micro
from tfquant.models import compile_classifier, datasets

keras = tfq.keras

NETS = {"lenet5": "LeNet-5", "lenet300_100": "LeNet-300-100"}
ROWS = ("multivalued 3-bit", "ternary", "recipe 200x")
#: (net, row) -> the issue's target ratio (TFLM file / int8 file); no entry: none set.
TARGETS = {
    ("lenet5", "multivalued 3-bit"): 0.40,
    ("lenet5", "ternary"): 0.27,
    ("lenet300_100", "ternary"): 0.27,
    ("lenet5", "recipe 200x"): 0.15,
    ("lenet300_100", "recipe 200x"): 0.15,
}
#: The file a row's target is checked on: the LUT file, or with pruning the LUT+prune file.
TARGET_FILE = {"multivalued 3-bit": "lut", "ternary": "lut", "recipe 200x": "smallest"}
RECIPE_RATIO = 200.0
ENCODINGS = ("lut", "prune", "smallest")  # "smallest": per kernel LUT or prune, = LUT+prune


def _log(message):
    print(message, file=sys.stderr, flush=True)


def compression_args(args):
    """The compression benchmark's settings behind its stored table (run_all's full
    arguments), for the 200x ratio only, shortened by --recipe-epochs / --recipe-train."""
    argv = [*run_all.BENCHMARKS["compression"][2], "--ratios", f"{RECIPE_RATIO:g}"]
    if args.recipe_epochs is not None:
        argv += ["--epochs", str(args.recipe_epochs)]
    if args.recipe_train is not None:
        argv += ["--limit", str(args.recipe_train)]
    return compression.build_parser().parse_args(argv)


def recipe_model(net, args):
    """`(qmodel, label, container_row, train, test)`: the compression benchmark's 200x row of
    `net`, built and fine-tuned by its functions (`evaluate_row` also rounds the biases to
    float16 and measures its containers)."""
    settings_args = compression_args(args)
    train, test = compression.load_data(net, settings_args)
    model, _ = compression.float_model(net, train, settings_args)
    float_accuracy = compression._accuracy(model, *test)
    compression.float16_biases(model, settings_args)
    hand = compression.EXTRA_RECIPES.get(net, {})
    label = f"recipe {RECIPE_RATIO:g}x"
    if label in hand:
        settings = hand[label]
    else:
        label = f"allocate_bits {RECIPE_RATIO:g}x"
        plan = compression.allocate_plans(net, model, train, settings_args).get(RECIPE_RATIO)
        if plan is None:
            raise RuntimeError(f"{net}: allocate_bits found no plan for {RECIPE_RATIO:g}x")
        settings = plan.layers
    keras.utils.set_random_seed(settings_args.seeds[0])
    qmodel = tfq.quantize_model(model, compression._scheme(settings, settings_args))
    row = compression.evaluate_row(net, label, qmodel, train, test, float_accuracy, settings_args)
    row["settings"] = {
        layer: {key: value for key, value in config.items() if key in ("levels", "sparsity")}
        for layer, config in settings.items()
    }
    return qmodel, label, row, train, test


def one_epoch_model(net, scheme, train):
    (x, y) = train
    qmodel = tfq.quantize_model(tfq.models.pretrained(f"{net}_mnist"), scheme)
    compile_classifier(qmodel, 2e-4).fit(x, y, epochs=1, batch_size=128, verbose=0)
    return qmodel


def _latency_us(files, sample, rounds, runs):
    """Median over `rounds` interleaved rounds of the mean time of one `invoke` per file, in
    microseconds (TFLM reference kernels, one thread)."""
    interpreters = {}
    for name, tfl in files.items():
        interpreter = load_micro(tfl)[0]
        run_micro(interpreter, sample[None])  # sets the input; first run outside the timing
        interpreters[name] = interpreter
    times = {name: [] for name in files}
    for _ in range(rounds):
        for name, interpreter in interpreters.items():
            start = time.perf_counter()
            for _ in range(runs):
                interpreter.invoke()
            times[name].append((time.perf_counter() - start) / runs * 1e6)
    return {name: float(np.median(values)) for name, values in times.items()}


def _tfl_accuracy(tfl, x, y):
    outputs = run_micro(load_micro(tfl)[0], x)
    return float(np.mean(outputs.argmax(-1) == y))


def _codes(qmodel):
    from tfquant.export.folding import exact_kernels
    from tfquant.export.tflite import export_copy

    return exact_kernels(export_copy(qmodel))[0]


def prune_floor(lut_bytes, lut_report):
    """`(bytes, bits per weight)`: the pruning format's floor for this model, the file with
    every tfquant kernel stored as a pruning bitmask (1 bit per weight, a 16-byte header per
    kernel) and no non-zero value left; the rest of the file (graph, biases, DECODE ops) as in
    the LUT file, where every kernel is behind a DECODE."""
    floor = lut_bytes
    kernel_bits = 0
    for kernel in lut_report.kernels:
        mask = math.ceil(kernel.weights / 8) + 16
        floor += mask - kernel.stored_bytes
        kernel_bits += 8 * mask
    return floor, kernel_bits / lut_report.kernel_weights


def measure(net, name, qmodel, calibration, test, args):
    """Every encoding of `qmodel` through `to_micro` (each proved), sizes, arenas, latency."""
    x_test, y_test = test
    int8_tfl = export.to_tflite(qmodel, calibration, batch_size=1)
    files, reports = {"int8": int8_tfl}, {}
    for encoding in ENCODINGS:
        with warnings.catch_warnings():  # dense kernels stay int8 under "prune": in the table
            warnings.simplefilter("ignore")
            files[encoding], reports[encoding] = export.to_micro(
                qmodel, calibration, encoding=encoding, int8_tflite=int8_tfl
            )
        _log(f"{net} {name}: {encoding} {len(files[encoding])} bytes, proved identical")
    latency = _latency_us(
        {"int8": int8_tfl, "lut": files["lut"], "smallest": files["smallest"]},
        x_test[0],
        args.rounds,
        args.runs,
    )
    kernels = _codes(qmodel)
    zeros = float(np.mean(np.concatenate([k.codes.reshape(-1) == 0 for k in kernels])))
    lut, smallest = reports["lut"], reports["smallest"]
    floor_bytes, floor_bits = prune_floor(len(files["lut"]), lut)
    target = TARGETS.get((net, name))
    checked = reports[TARGET_FILE[name]].ratio
    return {
        "net": net,
        "row": name,
        "quantized_layers": len(kernels),
        "kernel_weights": lut.kernel_weights,
        "zero_codes": zeros,
        "int8_bytes": len(int8_tfl),
        "lut_bytes": len(files["lut"]),
        "prune_bytes": len(files["prune"]),
        "smallest_bytes": len(files["smallest"]),
        "tfqz_bytes": len(tfq.coding.compress(qmodel).to_bytes()),
        "lut_ratio": lut.ratio,
        "prune_ratio": reports["prune"].ratio,
        "smallest_ratio": smallest.ratio,
        "prune_floor_bytes": floor_bytes,
        "prune_floor_ratio": floor_bytes / len(int8_tfl),
        "prune_floor_bits_per_weight": floor_bits,
        "target_file": TARGET_FILE[name],
        "target_ratio": target,
        "checked_ratio": checked,
        "target_met": None if target is None else bool(checked <= target),
        "lut_bits_per_weight": lut.bits_per_weight,
        "smallest_bits_per_weight": smallest.bits_per_weight,
        "int8_arena_bytes": lut.int8_arena_bytes,
        "lut_arena_bytes": lut.micro_arena_bytes,
        "lut_split_arena_bytes": lut.split_arena_bytes,
        "lut_decode_buffer_bytes": lut.decode_buffer_bytes,
        "smallest_arena_bytes": smallest.micro_arena_bytes,
        "smallest_split_arena_bytes": smallest.split_arena_bytes,
        "smallest_decode_buffer_bytes": smallest.decode_buffer_bytes,
        "latency_us": latency,
        "lut_latency_ratio": latency["lut"] / latency["int8"],
        "smallest_latency_ratio": latency["smallest"] / latency["int8"],
        "keras_accuracy": float(qmodel.evaluate(x_test, y_test, verbose=0)[1]),
        "tflm_lut_accuracy": _tfl_accuracy(files["lut"], x_test, y_test),
        "test_images": len(y_test),
        "identical_outputs": all(r.identical_outputs for r in reports.values()),
        "proof_samples": lut.samples,
        "encodings": {
            encoding: {k.layer: k.encoding for k in report.kernels}
            for encoding, report in reports.items()
        },
        "reports": {encoding: report.get_config() for encoding, report in reports.items()},
    }


def run_net(net, args):
    rows = []
    train, test = datasets.load("mnist", limit=(args.train, args.test))
    schemes = {
        "multivalued 3-bit": lambda: tfq.schemes.Multivalued(bits=3),
        "ternary": lambda: tfq.schemes.Ternary(),
    }
    for name in args.rows:
        _log(f"{net} {name}: training")
        if name == "recipe 200x":
            qmodel, label, container, recipe_train, recipe_test = recipe_model(net, args)
            row = measure(net, name, qmodel, recipe_train[0][: args.proof], recipe_test, args)
            row.update(
                recipe=label,
                recipe_epochs=compression_args(args).epochs,
                recipe_train_images=len(recipe_train[1]),
                compression_row=container,
            )
        else:
            qmodel = one_epoch_model(net, schemes[name](), train)
            row = measure(net, name, qmodel, train[0][: args.proof], test, args)
        rows.append(row)
        _log(f"{net} {name}: done")
    return rows


def _target(row):
    if row["target_ratio"] is None:
        return f"{'-':>7}{'':>7}"
    verdict = "met" if row["target_met"] else "MISSED"
    return f"{row['target_ratio']:>7.2f}{verdict:>7}"


def print_table(rows, args):
    recipe = compression_args(args)
    print(
        f"MNIST, from the shipped float baselines. 3-bit and ternary: 1 QAT epoch on "
        f"{args.train} images, accuracy on {args.test} test images. recipe 200x: "
        f"benchmarks/compression.py's 200x row run by its functions, {recipe.epochs} epochs "
        f"on {recipe.limit or 'all 60000'} images, --schedule {recipe.schedule}"
        f"{' --cosine' if recipe.cosine else ''} (GradualPruning over the first 2/3), "
        f"accuracy on {recipe.test_limit or 'all 10000'} test images"
        + (
            "; SHORTENED from compression.py's stored settings"
            if args.recipe_epochs is not None or args.recipe_train is not None
            else "; the settings of compression.py's stored table"
        )
    )
    print(
        "LUT+prune: per kernel the smaller of LUT and prune (to_micro encoding='smallest'); "
        "target checked on the LUT file (3-bit, ternary) or the LUT+prune file (recipe 200x)"
    )
    print(
        f"{'net':<14}{'row':<19}{'int8 B':>8}{'LUT B':>8}{'prune B':>8}{'LUT+pr B':>9}"
        f"{'.tfqz B':>8}{'LUT x':>7}{'L+p x':>7}{'target':>7}{'':>7}{'LUT b/w':>8}"
        f"{'L+p b/w':>8}{'zeros':>7}"
    )
    for r in rows:
        print(
            f"{NETS[r['net']]:<14}{r['row']:<19}{r['int8_bytes']:>8}{r['lut_bytes']:>8}"
            f"{r['prune_bytes']:>8}{r['smallest_bytes']:>9}{r['tfqz_bytes']:>8}"
            f"{r['lut_ratio']:>7.3f}{r['smallest_ratio']:>7.3f}{_target(r)}"
            f"{r['lut_bits_per_weight']:>8.2f}{r['smallest_bits_per_weight']:>8.2f}"
            f"{r['zero_codes']:>7.1%}"
        )
    print()
    print(
        f"{'net':<14}{'row':<19}{'arena int8':>11}{'arena LUT':>10}{'LUT split':>10}"
        f"{'+ buffer':>9}{'int8 µs':>9}{'LUT µs':>8}{'LUT/int8':>9}{'L+p µs':>8}{'L+p/int8':>9}"
        f"{'Keras':>8}{'TFLM LUT':>9}{'identical':>10}"
    )
    for r in rows:
        latency = r["latency_us"]
        print(
            f"{NETS[r['net']]:<14}{r['row']:<19}{r['int8_arena_bytes']:>11}"
            f"{r['lut_arena_bytes']:>10}{r['lut_split_arena_bytes'] or '-':>10}"
            f"{r['lut_decode_buffer_bytes']:>9}{latency['int8']:>9.0f}{latency['lut']:>8.0f}"
            f"{r['lut_latency_ratio']:>9.2f}{latency['smallest']:>8.0f}"
            f"{r['smallest_latency_ratio']:>9.2f}{r['keras_accuracy']:>8.2%}"
            f"{r['tflm_lut_accuracy']:>9.2%}{'yes' if r['identical_outputs'] else 'NO':>10}"
        )
    print()
    print(
        "Pruning format's floor (every kernel a bitmask of 1 bit per weight + a 16-byte header, "
        "no non-zero left; the rest as in the LUT file):"
    )
    floors = {r["net"]: r for r in rows}  # one per net (the same in every row, to a few bytes)
    for net, r in floors.items():
        print(
            f"  {NETS[net]}: {r['prune_floor_bytes']} bytes = {r['prune_floor_ratio']:.3f} x int8 "
            f"({r['prune_floor_bits_per_weight']:.3f} bits per kernel weight, "
            f"{r['kernel_weights']} weights)"
        )
    for r in rows:
        if "compression_row" in r:
            c = r["compression_row"]
            print(
                f"  {NETS[r['net']]} recipe 200x = compression.py's {r['recipe']!r}: "
                f"{c['sparsity']:.2%} zeros, drop {c['drop_pt']:.2f} pt, .tfqz ANS "
                f"{c['ratio_ans']:.1f}x float32 kernels; the LUT+prune file is "
                f"{r['smallest_bytes'] - r['prune_floor_bytes']} bytes above the floor"
            )
    print()
    print("Per-kernel encoding under LUT+prune:")
    for r in rows:
        encodings = ", ".join(f"{k} {v}" for k, v in r["encodings"]["smallest"].items())
        print(f"  {NETS[r['net']]} {r['row']}: {encodings}")
    print(
        "LUT split: the arena when DECODE expands kernels into a separate buffer of '+ buffer' "
        "bytes (TFLM's alt_decompression_memory); otherwise they are expanded in the arena."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(NETS), default=list(NETS))
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--train", type=int, default=10000, help="MNIST images, 1-epoch rows")
    parser.add_argument("--test", type=int, default=2000, help="MNIST test images, 1-epoch rows")
    parser.add_argument(
        "--recipe-epochs", type=int, help="recipe 200x: fewer epochs than compression.py's"
    )
    parser.add_argument(
        "--recipe-train", type=int, help="recipe 200x: fewer training images than all"
    )
    parser.add_argument("--proof", type=int, default=200, help="calibration and proof images")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--runs", type=int, default=200, help="invokes per round")
    parser.add_argument("--json", default="benchmarks/results/micro.json")
    args = parser.parse_args(argv)
    rows = []
    for net in args.models:
        rows += run_net(net, args)
    print_table(rows, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        settings = {**vars(args), "compression_settings": vars(compression_args(args))}
        with open(args.json, "w") as stream:
            json.dump({"settings": settings, "rows": rows}, stream, indent=2, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
