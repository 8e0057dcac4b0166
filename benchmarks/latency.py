"""Host latency and file size of LeNet-5 exports: our int8 / INT4 files vs tfmot's 8-bit QAT
export of the same architecture, timed in the same run (interleaved rounds).

Run: python benchmarks/latency.py [--train 10000] [--rounds 5] [--runs 300] [--threads 1]
       [--json benchmarks/results/latency.json]
Targets (exporter issue): our int8 latency / tfmot int8 latency <= 1.0 (same graph, same
speed); INT4 file <= 0.55 x the int8 file of the same QAT model.
"""

import argparse
import json
import os
import sys

import numpy as np
import tensorflow_model_optimization as tfmot

import tfquant as tfq
from tfquant import export
from tfquant._keras import tf
from tfquant.export import flatbuffer
from tfquant.export.tflite import run_tflite
from tfquant.models import compile_classifier, datasets, lenet5

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import tfmot_tflite  # noqa: E402
from timing import interleaved_median_us  # noqa: E402


def _tfmot_int8(float_model, x, y, calibration):
    qat = compile_classifier(tfmot.quantization.keras.quantize_model(float_model), 2e-4)
    qat.fit(x, y, epochs=1, batch_size=128, verbose=0)
    return tfmot_tflite(qat, calibration)


#: Bytes of the int8 file of the same QAT model, by INT4 row name (filled by `_ours`).
_SAME_MODEL_INT8_BYTES = {}


def _ours(float_model, scheme, x, y, calibration, int4=False, name=None):
    qmodel = compile_classifier(tfq.quantize_model(float_model, scheme), 2e-4)
    qmodel.fit(x, y, epochs=1, batch_size=128, verbose=0)
    tfl = export.to_tflite(qmodel, calibration, int4=int4)
    export.check_tflite(tfl, qmodel)  # raises unless every kernel is exact and integer
    if int4:
        _SAME_MODEL_INT8_BYTES[name] = len(export.to_tflite(qmodel, calibration))
    return tfl


def _ops(tfl):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=tfl,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return [op["op_name"] for op in interpreter._get_ops_details()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000, help="MNIST training samples")
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/latency.json")
    args = parser.parse_args(argv)
    (x, y), (x_test, y_test) = datasets.load("mnist", limit=(args.train, args.test))
    calibration = x[:200]
    float_model = compile_classifier(lenet5())
    float_model.fit(x, y, epochs=2, batch_size=128, verbose=0)

    float_tfl = tf.lite.TFLiteConverter.from_keras_model(float_model).convert()
    models = {
        "float32 (TFLite)": float_tfl,
        "tfmot QAT int8": _tfmot_int8(float_model, x, y, calibration),
        "tfquant uniform 8-bit": _ours(float_model, tfq.schemes.Uniform(bits=8), x, y, calibration),
        "tfquant multivalued 3-bit": _ours(
            float_model, tfq.schemes.Multivalued(bits=3), x, y, calibration
        ),
        "tfquant multivalued 3-bit INT4": _ours(
            float_model,
            tfq.schemes.Multivalued(bits=3, int4_grid=True),
            x,
            y,
            calibration,
            int4=True,
            name="tfquant multivalued 3-bit INT4",
        ),
        "tfquant ternary int8": _ours(float_model, tfq.schemes.Ternary(), x, y, calibration),
        "tfquant ternary INT4": _ours(
            float_model,
            tfq.schemes.Ternary(),
            x,
            y,
            calibration,
            int4=True,
            name="tfquant ternary INT4",
        ),
        "tfquant uniform 4-bit INT4": _ours(
            float_model,
            tfq.schemes.Uniform(bits=4),
            x,
            y,
            calibration,
            int4=True,
            name="tfquant uniform 4-bit INT4",
        ),
        "tfquant uniform 4-bit/layer INT4": _ours(
            float_model,
            tfq.schemes.Uniform(bits=4, per_channel=False),
            x,
            y,
            calibration,
            int4=True,
            name="tfquant uniform 4-bit/layer INT4",
        ),
    }
    medians = interleaved_median_us(models, args.rounds, args.runs, 30, args.threads)
    reference = "tfmot QAT int8"
    rows = []
    for name, tfl in models.items():
        accuracy = float(np.mean(run_tflite(tfl, x_test).argmax(-1) == y_test))
        rows.append(
            {
                "model": name,
                "bytes": len(tfl),
                "int4_fraction": flatbuffer.int4_fraction(tfl),
                "int8_file_bytes": _SAME_MODEL_INT8_BYTES.get(name),
                "median_us": medians[name],
                "accuracy": accuracy,
                "ops": _ops(tfl),
            }
        )
    base = {r["model"]: r for r in rows}[reference]
    print(
        f"LeNet-5 MNIST ({args.train} train / {args.test} test), host, {args.threads} thread(s),"
        f" median of {args.rounds} interleaved rounds x {args.runs} runs"
    )
    header = (
        f"{'model':<34}{'bytes':>9}{'vs tfmot':>9}{'median µs':>11}{'vs tfmot':>9}"
        f"{'accuracy':>10}{'INT4':>6}  ops"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        r["size_vs_tfmot"] = r["bytes"] / base["bytes"]
        r["latency_vs_tfmot"] = r["median_us"] / base["median_us"]
        print(
            f"{r['model']:<34}{r['bytes']:>9}{r['size_vs_tfmot']:>9.3f}{r['median_us']:>11.1f}"
            f"{r['latency_vs_tfmot']:>9.3f}{r['accuracy']:>10.2%}{r['int4_fraction']:>6.0%}"
            f"  {len(r['ops'])}"
        )
    print("INT4 file / int8 file of the same QAT model (target <= 0.55):")
    for r in rows:
        if r["int8_file_bytes"]:
            r["int4_vs_int8_file"] = r["bytes"] / r["int8_file_bytes"]
            verdict = "met" if r["int4_vs_int8_file"] <= 0.55 else "MISS"
            print(
                f"  {r['model']}: {r['bytes']} / {r['int8_file_bytes']} bytes ="
                f" {r['int4_vs_int8_file']:.3f} ({verdict}), {r['int4_fraction']:.0%} of"
                " weights stored INT4"
            )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump({"args": vars(args), "rows": rows}, stream, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
