"""TensorFlow Lite Micro models that store each kernel as its trained indices (`to_micro`) on
LeNet-5 MNIST: file bytes of int8 / LUT / prune / smallest vs the `.tfqz` container, bits per
weight, tensor arenas, TFLM latency (reference kernels) and accuracy in TFLM.

Every row starts from the shipped float baseline (`tfq.models.pretrained("lenet5_mnist")`) and
trains one QAT epoch on the first --train MNIST images; every TFLM file is proved by `to_micro`
to give the int8 model's outputs on --proof calibration images, and its kernels to decode to
the trained codes. The sparse row uses the layer settings of the compression benchmark's
"recipe 200x" (levels and zero-interval fraction per layer) trained one-shot for that one epoch,
not that benchmark's 24-epoch pruning schedule, so its sparsity and accuracy are not those of
the compression table.

Run: python benchmarks/micro.py [--train 10000] [--test 2000] [--rounds 5] [--runs 200]
       [--json benchmarks/results/micro.json]
Targets (issue 21): 3-bit TFLM file <= 0.40 x its int8 file; ternary <= 0.27 x; the sparse
recipe <= 0.15 x with pruning; outputs identical in every case. Latency ratios are reported,
never asserted.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

import tfquant as tfq
from tfquant import export
from tfquant.export.micro import load_micro, run_micro
from tfquant.models import compile_classifier, datasets

#: The compression benchmark's "recipe 200x" for LeNet-5 (benchmarks/compression.py).
RECIPE_200X = {
    "conv1": {"levels": 8, "sparsity": 0.5},
    "conv2": {"levels": 5, "sparsity": 0.92},
    "fc1": {"levels": 3, "sparsity": 0.992},
    "fc2": {"levels": 5, "sparsity": 0.9},
}
TARGETS = {"multivalued 3-bit": 0.40, "ternary": 0.27, "recipe 200x one-shot": 0.15}
ENCODINGS = ("lut", "prune", "smallest")


def _schemes():
    return {
        "multivalued 3-bit": tfq.schemes.Multivalued(bits=3),
        "ternary": tfq.schemes.Ternary(),
        "recipe 200x one-shot": tfq.schemes.Multivalued(mode="snap", layers=RECIPE_200X),
    }


def _log(message):
    print(message, file=sys.stderr, flush=True)


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


def run_row(name, scheme, float_model, train, test, args):
    (x, y), (x_test, y_test) = train, test
    qmodel = compile_classifier(tfq.quantize_model(float_model, scheme), 2e-4)
    qmodel.fit(x, y, epochs=1, batch_size=128, verbose=0)
    calibration = x[: args.proof]
    int8_tfl = export.to_tflite(qmodel, calibration, batch_size=1)
    files, reports = {"int8": int8_tfl}, {}
    for encoding in ENCODINGS:
        with warnings.catch_warnings():  # dense kernels stay int8 under "prune": in the table
            warnings.simplefilter("ignore")
            files[encoding], reports[encoding] = export.to_micro(
                qmodel, calibration, encoding=encoding, int8_tflite=int8_tfl
            )
        _log(f"{name}: {encoding} {len(files[encoding])} bytes, proved identical")
    latency = _latency_us(
        {"int8": int8_tfl, "lut": files["lut"], "smallest": files["smallest"]},
        x_test[0],
        args.rounds,
        args.runs,
    )
    kernels = _codes(qmodel)
    zeros = float(np.mean(np.concatenate([k.codes.reshape(-1) == 0 for k in kernels])))
    lut, smallest = reports["lut"], reports["smallest"]
    row = {
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
        "smallest_ratio": smallest.ratio,
        "target_ratio": TARGETS[name],
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
        "identical_outputs": all(r.identical_outputs for r in reports.values()),
        "proof_samples": lut.samples,
        "encodings": {
            encoding: {k.layer: k.encoding for k in report.kernels}
            for encoding, report in reports.items()
        },
        "reports": {encoding: report.get_config() for encoding, report in reports.items()},
    }
    _log(f"{name}: done")
    return row


def _codes(qmodel):
    from tfquant.export.folding import exact_kernels
    from tfquant.export.tflite import export_copy

    return exact_kernels(export_copy(qmodel))[0]


def print_table(rows, args):
    print(
        f"LeNet-5 MNIST from the shipped float baseline, 1 QAT epoch on {args.train} images; "
        f"accuracy on {args.test} test images; TFLM reference kernels, 1 thread"
    )
    print(
        f"{'row':<22}{'int8 B':>8}{'LUT B':>8}{'prune B':>8}{'small B':>8}{'.tfqz B':>8}"
        f"{'LUT x':>7}{'small x':>8}{'target':>7}{'LUT b/w':>8}{'sm b/w':>7}{'zeros':>7}"
    )
    for r in rows:
        print(
            f"{r['row']:<22}{r['int8_bytes']:>8}{r['lut_bytes']:>8}{r['prune_bytes']:>8}"
            f"{r['smallest_bytes']:>8}{r['tfqz_bytes']:>8}{r['lut_ratio']:>7.3f}"
            f"{r['smallest_ratio']:>8.3f}{r['target_ratio']:>7.2f}"
            f"{r['lut_bits_per_weight']:>8.2f}{r['smallest_bits_per_weight']:>7.2f}"
            f"{r['zero_codes']:>7.1%}"
        )
    print()
    print(
        f"{'row':<22}{'arena int8':>11}{'arena LUT':>10}{'LUT split':>10}{'+ buffer':>9}"
        f"{'int8 µs':>9}{'LUT µs':>8}{'LUT/int8':>9}{'small µs':>9}{'sm/int8':>8}"
        f"{'Keras':>8}{'TFLM LUT':>9}{'identical':>10}"
    )
    for r in rows:
        latency = r["latency_us"]
        print(
            f"{r['row']:<22}{r['int8_arena_bytes']:>11}{r['lut_arena_bytes']:>10}"
            f"{r['lut_split_arena_bytes'] or '-':>10}{r['lut_decode_buffer_bytes']:>9}"
            f"{latency['int8']:>9.0f}{latency['lut']:>8.0f}{r['lut_latency_ratio']:>9.2f}"
            f"{latency['smallest']:>9.0f}{r['smallest_latency_ratio']:>8.2f}"
            f"{r['keras_accuracy']:>8.2%}{r['tflm_lut_accuracy']:>9.2%}"
            f"{'yes' if r['identical_outputs'] else 'NO':>10}"
        )
    print()
    print("Per-kernel encoding under 'smallest':")
    for r in rows:
        encodings = ", ".join(f"{k} {v}" for k, v in r["encodings"]["smallest"].items())
        print(f"  {r['row']}: {encodings}")
    print(
        "LUT split: the arena when DECODE expands kernels into a separate buffer of '+ buffer' "
        "bytes (TFLM's alt_decompression_memory); otherwise they are expanded in the arena."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000, help="MNIST training images")
    parser.add_argument("--test", type=int, default=2000, help="MNIST test images")
    parser.add_argument("--proof", type=int, default=200, help="calibration and proof images")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--runs", type=int, default=200, help="invokes per round")
    parser.add_argument("--rows", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    parser.add_argument("--json", default="benchmarks/results/micro.json")
    args = parser.parse_args(argv)
    train, test = datasets.load("mnist", limit=(args.train, args.test))
    float_model = tfq.models.pretrained("lenet5_mnist")
    schemes = _schemes()
    rows = []
    for name in args.rows:
        _log(f"{name}: QAT epoch on {args.train} images")
        rows.append(run_row(name, schemes[name], float_model, train, test, args))
    print_table(rows, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as stream:
            json.dump({"settings": vars(args), "rows": rows}, stream, indent=2, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
