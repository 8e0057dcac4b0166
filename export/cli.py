"""`python -m tfquant.export`: a saved tfquant QAT model -> checked integer .tflite and
a JSON model card (sizes, ops, codebooks, exactness, agreement, latency).

    python -m tfquant.export --model=qmodel_savedmodel --out=model.tflite \\
        --representative=mnist [--int4] [--benchmark=host] [--micro] [--report=card.json] \\
        [--micro_compress[=lut|prune|smallest]]

--micro_compress also writes a TensorFlow Lite Micro model whose tfquant kernels are stored as
their trained codebook indices (`tfq.export.to_micro`) next to --out, as <out stem>.micro.tflite,
after proving it computes exactly what the int8 model computes; `--micro_compress` alone means
`--micro_compress=lut`. Nothing is overwritten without --overwrite; files are written atomically.
"""

import collections
import dataclasses
import json
import os
import sys
import warnings

import numpy as np
from absl import flags

from tfquant import _cli

_PROGRAM = "python -m tfquant.export"
_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
_TARGETS = ("host", "android", "edgetpu")
_MICRO_ENCODINGS = ("lut", "prune", "smallest")  # tfquant.export.micro_compress.ENCODINGS

# A private flag set: importing this module never touches absl's global FLAGS.
FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "model",
    None,
    "A saved tfquant QAT model: SavedModel directory, .keras or .h5 file.",
    flag_values=FLAGS,
)
flags.DEFINE_string("out", None, "Path of the .tflite file to write.", flag_values=FLAGS)
flags.DEFINE_bool(
    "int4", False, "Store 4-bit-grid kernels as INT4 (size, not speed).", flag_values=FLAGS
)
flags.DEFINE_string(
    "representative",
    "digits",
    "Calibration and check data: one of digits, mnist, fashion_mnist, cifar10, or an .npz "
    "file with an array `x` (inputs) and optionally `y` (integer labels). A model with "
    "several inputs needs an .npz file with one array per input, named by the input layer "
    "names (optional labels per output: `y_<output name>`).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "samples", 500, "Samples for calibration and for the check.", flag_values=FLAGS
)
flags.DEFINE_string(
    "benchmark", None, "Latency target: host, android or edgetpu.", flag_values=FLAGS
)
flags.DEFINE_integer("threads", 1, "Interpreter threads for --benchmark.", flag_values=FLAGS)
flags.DEFINE_integer("runs", 200, "Timed runs for --benchmark.", flag_values=FLAGS)
flags.DEFINE_string(
    "serial", None, "adb serial of the Android device (--benchmark=android).", flag_values=FLAGS
)
flags.DEFINE_string(
    "benchmark_binary",
    None,
    "Path of TFLite's benchmark_model binary for the phone (--benchmark=android).",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "micro", False, "Run the model in TFLite Micro and report its tensor arena.", flag_values=FLAGS
)
flags.DEFINE_enum(
    "micro_compress",
    None,
    _MICRO_ENCODINGS,
    "Also write a TFLite Micro model next to --out (<out stem>.micro.tflite) whose tfquant "
    "kernels are stored as their codebook indices: lut (a look-up table per tensor or per "
    "channel; the default when the flag is given without a value), prune (bitmask + non-zero "
    "codes) or smallest (per kernel). Its outputs are proved identical to the int8 model's in "
    "TFLite Micro; its sizes and arenas go into the --report card.",
    flag_values=FLAGS,
)
flags.DEFINE_string("report", None, "Path of the JSON model card to write.", flag_values=FLAGS)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace existing --out / --report / --micro_compress files.",
    flag_values=FLAGS,
)


class UsageError(ValueError):
    """A flag value the CLI cannot use; the message names the flag."""


def _check_flags(values):
    if not values.model:
        raise UsageError(
            "--model is required: a saved QAT model (SavedModel directory, .keras or .h5 file)."
        )
    if not values.out:
        raise UsageError("--out is required: the path of the .tflite file to write.")
    for name in ("out", "report"):
        path = getattr(values, name)
        if path and os.path.exists(path) and not values.overwrite:
            raise UsageError(
                f"--{name}={path} exists; pass --overwrite to replace it (nothing was written)."
            )
    if values.micro_compress and os.path.exists(micro_path(values.out)) and not values.overwrite:
        raise UsageError(
            f"--micro_compress writes {micro_path(values.out)}, which exists; pass --overwrite "
            "to replace it (nothing was written)."
        )
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"--{name}={path}: its folder does not exist.")
    if values.benchmark is not None and values.benchmark not in _TARGETS:
        raise UsageError(
            f"--benchmark must be one of {', '.join(_TARGETS)}. Received: "
            f"--benchmark={values.benchmark}"
        )
    if values.samples < 1:
        raise UsageError(f"--samples must be >= 1. Received: --samples={values.samples}")
    rep = values.representative
    if rep not in _DATASETS and not rep.endswith(".npz"):
        raise UsageError(
            f"--representative must be one of {', '.join(_DATASETS)} or an .npz file. "
            f"Received: --representative={rep}"
        )


def micro_path(out):
    """Where --micro_compress writes the TFLite Micro model: next to `out`, its stem plus
    `.micro.tflite`.

    >>> micro_path("models/lenet.tflite")
    'models/lenet.micro.tflite'
    """
    stem, extension = os.path.splitext(out)
    return (stem if extension == ".tflite" else out) + ".micro.tflite"


def with_bare_micro_compress(args):
    """`args` with a bare `--micro_compress` (before any `--`) spelled `--micro_compress=lut`:
    absl would otherwise take the next argument as the flag's value.

    >>> with_bare_micro_compress(["--micro_compress", "--out=m.tflite", "--", "--micro_compress"])
    ['--micro_compress=lut', '--out=m.tflite', '--', '--micro_compress']
    """
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    bare = ("--micro_compress", "-micro_compress")
    return [f"{a}=lut" if a in bare and i < end else a for i, a in enumerate(args)]


def representative_data(spec, samples, input_shape, input_names=None, output_names=None):
    """`(calibration inputs, check inputs, check labels or None)` for a --representative spec.

    Calibration data come from the training split and the check data from the test split of a
    named dataset; an .npz file's `x` serves both (and its `y`, if present, as labels).

    A model with several inputs (`input_shape` a list, `input_names` their names) takes an
    .npz file with one array per input named by its input name; the inputs are then dicts
    keyed by those names, and the labels (arrays `y_<output name>`, optional) a dict keyed by
    `output_names`.
    """
    if isinstance(input_shape, list):
        return _multi_input_data(spec, samples, input_shape, input_names, output_names or [])
    if spec.endswith(".npz"):
        if not os.path.isfile(spec):
            raise UsageError(f"--representative={spec}: no such file.")
        with np.load(spec, allow_pickle=False) as archive:
            if "x" not in archive:
                raise UsageError(
                    f"--representative={spec} must hold an array named 'x'. Received arrays: "
                    f"{sorted(archive.files)}"
                )
            x = np.asarray(archive["x"], np.float32)[:samples]
            y = np.asarray(archive["y"])[:samples] if "y" in archive else None
        calibration, check, labels = x, x, y
    else:
        from tfquant.models import datasets

        (x_train, _), (x_test, y_test) = datasets.load(spec)
        calibration, check, labels = x_train[:samples], x_test[:samples], y_test[:samples]
    if tuple(calibration.shape[1:]) != tuple(input_shape):
        raise UsageError(
            f"--representative={spec} has inputs of shape {tuple(calibration.shape[1:])}, but "
            f"the model takes {tuple(input_shape)}."
        )
    return calibration, check, labels


def _multi_input_data(spec, samples, input_shapes, input_names, output_names):
    if not spec.endswith(".npz"):
        raise UsageError(
            f"--representative={spec}: the model has {len(input_names)} inputs {input_names}; "
            "pass an .npz file with one array per input, named by the input names."
        )
    if not os.path.isfile(spec):
        raise UsageError(f"--representative={spec}: no such file.")
    with np.load(spec, allow_pickle=False) as archive:
        missing = [name for name in input_names if name not in archive]
        if missing:
            raise UsageError(
                f"--representative={spec} must hold one array per model input, named "
                f"{input_names}. Received arrays: {sorted(archive.files)} (missing {missing})"
            )
        inputs = {name: np.asarray(archive[name], np.float32)[:samples] for name in input_names}
        labels = {
            name: np.asarray(archive[f"y_{name}"])[:samples]
            for name in output_names
            if f"y_{name}" in archive
        }
    for name, shape in zip(input_names, input_shapes, strict=True):
        if tuple(inputs[name].shape[1:]) != tuple(shape):
            raise UsageError(
                f"--representative={spec} has input {name!r} of shape "
                f"{tuple(inputs[name].shape[1:])}, but the model takes {tuple(shape)}."
            )
    if len(output_names) == 1:
        labels = labels.get(output_names[0])
    return inputs, inputs, labels or None


def _codebooks(report, qmodel):
    from tfquant._keras import quantized_weights

    books = {}
    for wrapper, weight, quantizer, quantizer_vars in quantized_weights(qmodel):
        if not hasattr(quantizer, "codebook"):
            continue
        book = quantizer.codebook(weight, quantizer_vars)
        if isinstance(book, list):  # per channel: the channel sizes only
            books[wrapper.name] = {"per_channel": True, "levels": [int(b.size) for b in book]}
        else:
            books[wrapper.name] = {"per_channel": False, "values": [float(v) for v in book]}
    return books


def export_model(values, print_fn=print):
    """Runs the export described by parsed flag `values`; returns the model card (a dict)."""
    import tfquant as tfq
    from tfquant import export
    from tfquant.export import flatbuffer
    from tfquant.export.tflite import write_atomic

    _check_flags(values)
    qmodel = tfq.load_model(values.model)
    shapes = [tuple(t.shape[1:]) for t in qmodel.inputs]
    calibration, check, labels = representative_data(
        values.representative,
        values.samples,
        shapes if len(shapes) > 1 else shapes[0],
        list(qmodel.input_names),
        list(qmodel.output_names),
    )
    for name in ("micro", "micro_compress"):
        if getattr(values, name) and len(shapes) > 1:
            raise UsageError(
                f"--{name} runs one-input models; the model has {len(shapes)} inputs "
                f"{list(qmodel.input_names)}."
            )
    tfl = export.to_tflite(qmodel, representative_data=calibration, int4=values.int4)
    report = export.check_tflite(tfl, qmodel, check, labels, strict=False)
    card = {
        "model": os.path.basename(os.path.normpath(values.model)),
        "tflite": os.path.basename(values.out),
        "tflite_bytes": len(tfl),
        "constant_bytes_by_type": flatbuffer.constant_bytes_by_type(tfl),
        "int4_fraction": flatbuffer.int4_fraction(tfl),
        "ops": dict(collections.Counter(report.ops)),
        "float_ops": report.float_ops,
        "kernels": [
            {
                "layer": k.layer,
                "stored_type": k.stored_type,
                "shape": list(k.shape),
                "codes": k.codes,
                "codebook_size": k.codebook_size,
                "exact": k.exact,
                "max_abs_error": k.max_abs_error,
            }
            for k in report.kernels
        ],
        "codebooks": _codebooks(report, qmodel),
        "check_samples": report.samples,
        "agreement": report.agreement,
        "outputs": [dataclasses.asdict(o) for o in report.outputs],
        "keras_accuracy": report.keras_accuracy,
        "tflite_accuracy": report.tflite_accuracy,
        "exact": report.ok,
        "failures": report.failures(),
    }
    write_atomic(tfl, values.out)
    print_fn(
        f"wrote {values.out}: {len(tfl)} bytes, {len(report.kernels)} kernels "
        f"({'all exact' if report.ok else 'NOT exact: ' + '; '.join(report.failures())}), "
        f"agreement {report.agreement:.2%} on {report.samples} samples"
        + (
            f", accuracy Keras {report.keras_accuracy:.2%} / TFLite {report.tflite_accuracy:.2%}"
            if report.keras_accuracy is not None
            else ""
        )
    )
    if values.benchmark:
        card["latency"] = _latency(tfl, values, print_fn)
    if values.micro:
        card["micro"] = _micro(tfl, check, print_fn)
    if values.micro_compress:
        card["micro_compress"] = _micro_compress(qmodel, calibration, values, print_fn)
    if values.report:
        text = json.dumps(card, indent=2, sort_keys=True, default=str).encode()
        write_atomic(text, values.report)
        print_fn(f"wrote {values.report}")
    return card


def _latency(tfl, values, print_fn):
    from tfquant import export

    kwargs = {"target": values.benchmark, "threads": values.threads, "runs": values.runs}
    if values.benchmark == "android":
        kwargs.update(serial=values.serial, benchmark_binary=values.benchmark_binary)
    unavailable = getattr(export, "TargetUnavailableError", RuntimeError)
    try:
        result = export.benchmark(tfl, **kwargs)
    except unavailable as error:
        print_fn(f"latency on {values.benchmark} not measured: {error}")
        return {"target": values.benchmark, "error": str(error)}
    mean = result.get("median_us") or result.get("mean_us")
    if mean is not None:
        print_fn(f"latency on {values.benchmark}: {mean:.1f} µs")
    return result


def _micro(tfl, check, print_fn):
    from tfquant import export

    try:
        report = export.micro_report(tfl, check[:100])
    except export.TargetUnavailableError as error:
        print_fn(f"TFLite Micro not run: {error}")
        return {"error": str(error)}
    print_fn(
        f"TFLite Micro: arena {report.arena_bytes} bytes, agreement with LiteRT "
        f"{report.agreement:.2%} on {report.samples} samples"
    )
    return report.get_config()


def _micro_compress(qmodel, calibration, values, print_fn):
    """Writes the `to_micro` model next to --out; returns its card entry (sizes, arenas, the
    encoding of every kernel), or `{"encoding", "error"}` when it cannot be made or proved."""
    from tfquant import export
    from tfquant.export.tflite import write_atomic

    path, encoding = micro_path(values.out), values.micro_compress
    try:
        with warnings.catch_warnings():  # kernels left int8 are printed from the report
            warnings.simplefilter("ignore")
            micro_tfl, report = export.to_micro(qmodel, calibration, encoding=encoding)
    except (export.TargetUnavailableError, export.MicroCompressionError) as error:
        print_fn(f"TFLite Micro model (--micro_compress={encoding}) not written: {error}")
        return {"encoding": encoding, "error": str(error)}
    if report.uncompressed:
        print_fn(f"--micro_compress: these kernels stay int8: {'; '.join(report.uncompressed)}")
    write_atomic(micro_tfl, path)
    card = {"file": os.path.basename(path), "encoding": encoding, **report.get_config()}
    card.update(ratio=report.ratio, bits_per_weight=report.bits_per_weight)
    print_fn(
        f"wrote {path}: {report.micro_bytes} bytes ({report.ratio:.2f} x the int8 file's "
        f"{report.int8_bytes}), {report.bits_per_weight:.2f} bits per kernel weight, outputs "
        f"identical to the int8 model in TFLite Micro on {report.samples} samples, arena "
        f"{report.micro_arena_bytes} bytes (int8: {report.int8_arena_bytes})"
    )
    return card


def main(argv=None):
    """Entry point; returns the process exit status (0 ok or --help, 1 check failed, 2 usage
    error). `argv` includes the program name (default `sys.argv`)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        _cli.parse(FLAGS, with_bare_micro_compress(argv[1:]), _PROGRAM, __doc__)
        card = export_model(FLAGS)
    except _cli.HelpRequested:
        return 0
    except flags.Error as error:
        return _cli.error(_PROGRAM, error)
    except (UsageError, OSError, ValueError, TypeError) as error:
        print(f"{_PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    finally:
        FLAGS.unparse_flags()
    if not card["exact"] or any(
        card.get(k, {}).get("error") for k in ("latency", "micro", "micro_compress")
    ):
        return 1
    return 0
