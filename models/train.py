"""`python -m tfquant.models.train`: pretrain a float model (or load its weights), quantize it
with a scheme, fine-tune it under a schedule (MPA, MVQ, SLQ or MLQ), evaluate, optionally export
exact integer TFLite, and print one result line.

    python -m tfquant.models.train --model=digits_cnn --dataset=digits --scheme=multivalued \\
        --bits=3 --schedule=mpa --float_epochs=20 --epochs=8 --tflite_out=digits.tflite

`train(...)` does the same from Python and returns the result as a dict.
"""

import logging
import math
import os
import sys
import time

from absl import flags

import tfquant as tfq
from tfquant import _cli
from tfquant._keras import keras
from tfquant.models import datasets
from tfquant.models.classifier import compile_classifier
from tfquant.models.digits import digits_cnn
from tfquant.models.lenet import lenet5, lenet300_100
from tfquant.models.mobilenet import mobilenet_v2, tiny_mobilenet
from tfquant.models.resnet import resnet20, resnet32

logger = logging.getLogger("tfquant")

MODELS = (
    "digits_cnn",
    "lenet5",
    "lenet300_100",
    "resnet20",
    "resnet32",
    "tiny_mobilenet",
    "mobilenet_v2",
)
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
SCHEMES = ("multivalued", "ternary", "lqnets", "uniform", "none")
#: "none" and "naive" both fine-tune with every weight snapped from the first step.
SCHEDULES = ("none", "naive", "mpa", "mvq", "slq", "mlq")
_MASKED_SCHEDULES = ("mpa", "mvq", "slq", "mlq")
_INPUT_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
# scheme -> (default bits, lowest, highest). Ternary: 3 levels stored in 2 bits.
_BITS = {"multivalued": (3, 1, 8), "ternary": (2, 2, 2), "lqnets": (2, 1, 4), "uniform": (8, 2, 8)}
_PROGRAM = "python -m tfquant.models.train"


class UsageError(ValueError):
    """A bad argument (flag) value; `flag` names it."""

    def __init__(self, flag, message):
        super().__init__(message)
        self.flag = flag


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise UsageError(name, f"{name} must be one of {allowed}. Received: {name}={value!r}")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(name, f"{name} must be an integer >= {low}. Received: {name}={value!r}")


def _check_arguments(args):
    """Validates every argument of `train` before anything slow happens; returns bits."""
    _check_choice("model", args["model"], MODELS)
    _check_choice("dataset", args["dataset"], DATASETS)
    _check_choice("scheme", args["scheme"], SCHEMES)
    _check_choice("schedule", args["schedule"], SCHEDULES)
    for name in ("float_epochs", "epochs"):
        _check_int(name, args[name], 0)
    _check_int("batch_size", args["batch_size"], 1)
    _check_int("seed", args["seed"], 0)
    try:
        datasets.check_limit(args["limit"])
    except ValueError as error:
        raise UsageError("limit", str(error)) from error
    for name in ("learning_rate", "qat_learning_rate"):
        value = args[name]
        if value is None and name == "qat_learning_rate":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UsageError(name, f"{name} must be a number > 0. Received: {name}={value!r}")
    scheme, schedule, bits = args["scheme"], args["schedule"], args["bits"]
    if args["model"] == "digits_cnn" and args["dataset"] != "digits":
        raise UsageError(
            "model",
            "model 'digits_cnn' takes the 8x8 digits only; use dataset='digits' or another "
            f"model. Received: model='digits_cnn', dataset={args['dataset']!r}",
        )
    if scheme == "none":
        if schedule not in ("none", "naive"):
            raise UsageError(
                "schedule",
                "a schedule needs a quantization scheme (multivalued or ternary). "
                f"Received: schedule={schedule!r}, scheme='none'",
            )
        if args["tflite_out"]:
            raise UsageError(
                "tflite_out",
                "tflite_out exports a quantized model; choose a scheme other than 'none'. "
                f"Received: tflite_out={args['tflite_out']!r}, scheme='none'",
            )
        return 32
    if schedule in _MASKED_SCHEDULES:
        if scheme not in ("multivalued", "ternary"):
            raise UsageError(
                "schedule",
                f"schedule {schedule!r} drives masked codebooks: use scheme='multivalued' or "
                f"'ternary' (or schedule='none'). Received: schedule={schedule!r}, "
                f"scheme={scheme!r}",
            )
        if args["epochs"] < 1:
            raise UsageError(
                "epochs",
                f"schedule {schedule!r} needs at least one epoch. Received: epochs=0",
            )
    default, low, high = _BITS[scheme]
    if bits is None:
        bits = default
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        allowed = f"{low}" if low == high else f"in [{low}, {high}]"
        raise UsageError(
            "bits", f"bits must be {allowed} for scheme {scheme!r}. Received: bits={bits!r}"
        )
    activation_bits = args["activation_bits"]
    if activation_bits is not None:
        if scheme != "lqnets":
            raise UsageError(
                "activation_bits",
                "activation_bits is for scheme='lqnets' only. "
                f"Received: activation_bits={activation_bits!r}, scheme={scheme!r}",
            )
        _check_int("activation_bits", activation_bits, 1)
        if activation_bits > 8:
            raise UsageError(
                "activation_bits",
                f"activation_bits must be in [1, 8]. Received: activation_bits={activation_bits}",
            )
    return bits


def build_model(name, input_shape, classes=10, seed=0):
    """A float model of `name` (one of `MODELS`) for inputs of `input_shape`, logits output.

    Raises:
      UsageError: the model cannot take inputs of that shape.
    """
    _check_choice("model", name, MODELS)
    input_shape = tuple(input_shape)
    if name == "digits_cnn":
        if input_shape != (8, 8, 1):
            raise UsageError(
                "model", f"model 'digits_cnn' takes 8x8x1 inputs. Received: {input_shape}"
            )
        return digits_cnn(seed)
    builders = {
        "lenet5": lenet5,
        "lenet300_100": lenet300_100,
        "resnet20": resnet20,
        "resnet32": resnet32,
        "tiny_mobilenet": lambda **kw: tiny_mobilenet(batch_size=None, **kw),
        "mobilenet_v2": lambda **kw: mobilenet_v2(alpha=0.35, **kw),
    }
    try:
        return builders[name](input_shape=input_shape, classes=classes, seed=seed)
    except ValueError as error:
        raise UsageError(
            "model", f"model {name!r} cannot take inputs of shape {input_shape}: {error}"
        ) from error


def make_scheme(scheme, bits, schedule, activation_bits=None):
    """The `tfq.schemes` object for a scheme name, or None for "none".

    Schedules need masked multivalued quantizers; with one, "ternary" is a 3-level masked
    codebook (MLQ's ternary layers) instead of TWN.
    """
    masked = schedule in _MASKED_SCHEDULES
    if scheme == "multivalued":
        return tfq.schemes.Multivalued(bits=bits, mode="masked" if masked else "snap")
    if scheme == "ternary":
        if masked:
            return tfq.schemes.Multivalued(levels=3, mode="masked")
        return tfq.schemes.Ternary(method="twn")
    if scheme == "lqnets":
        return tfq.schemes.LearnedBasis(weight_bits=bits, activation_bits=activation_bits)
    if scheme == "uniform":
        return tfq.schemes.Uniform(bits=bits)
    return None


def make_schedule(schedule, qmodel, epochs, batches_per_epoch, verbose=0):
    """The schedule callback sized to finish within `epochs` (when it can), and the epochs of
    `fit` it needs: `(callback or None, fit_epochs)`.

    MPA: every phase gets an equal share of the batches. MVQ: the intervals contract over all
    epochs. SLQ: one round per cluster (fewer if there are fewer epochs), equal epochs each.
    MLQ: equal epochs per layer, at least one (so at least one epoch per layer).
    """
    if schedule not in _MASKED_SCHEDULES:
        return None, epochs
    callbacks = tfq.callbacks
    if schedule == "mpa":
        levels = callbacks.PhaseAdaptation(epochs_per_phase=1).epochs_needed(qmodel)
        units = max(1, epochs * batches_per_epoch // levels)  # batches per phase
        callback = callbacks.PhaseAdaptation(
            epochs_per_phase=units / batches_per_epoch, verbose=verbose
        )
        return callback, max(epochs, math.ceil(levels * units / batches_per_epoch))
    if schedule == "mvq":
        return callbacks.IntervalContraction(epochs=epochs, verbose=verbose), epochs
    if schedule == "slq":
        levels = callbacks.PartitionRounds(epochs_per_round=1).epochs_needed(qmodel)
        rounds = min(levels, epochs)
        callback = callbacks.PartitionRounds(
            rounds=rounds, epochs_per_round=epochs // rounds, verbose=verbose
        )
        return callback, max(epochs, callback.epochs_needed(qmodel))
    layers = callbacks.IncrementalLayers(epochs_per_layer=1).epochs_needed(qmodel)
    callback = callbacks.IncrementalLayers(
        epochs_per_layer=max(1, epochs // layers), verbose=verbose
    )
    return callback, max(epochs, callback.epochs_needed(qmodel))


def _accuracy(model, x, y, batch_size):
    return float(model.evaluate(x, y, batch_size=max(batch_size, 256), verbose=0)[1])


def _note(message, verbose):
    logger.info(message)
    if verbose:
        print(message, file=sys.stderr)


def train(
    model="digits_cnn",
    dataset="digits",
    scheme="multivalued",
    bits=None,
    schedule="none",
    float_epochs=10,
    epochs=8,
    batch_size=32,
    learning_rate=1e-3,
    qat_learning_rate=None,
    limit=None,
    float_weights=None,
    save_float_weights=None,
    tflite_out=None,
    tensorboard_dir=None,
    activation_bits=None,
    data_dir=None,
    plot_dir=None,
    seed=0,
    verbose=True,
):
    """Pretrains (or loads) a float model, quantizes, fine-tunes, evaluates, exports.

    Args:
      model: one of `MODELS`. dataset: one of `DATASETS` (see `datasets.load`).
      scheme: "multivalued", "ternary" (TWN; a 3-level masked codebook under a schedule),
        "lqnets", "uniform" or "none" (float only).
      bits: weight bits; default 3 (multivalued), 2 (ternary, the only value), 2 (lqnets,
        1-4), 8 (uniform, 2-8).
      schedule: "none"/"naive" (weights snap from the first step), "mpa" (PhaseAdaptation),
        "mvq" (IntervalContraction), "slq" (PartitionRounds) or "mlq" (IncrementalLayers);
        the four schedules need scheme "multivalued" or "ternary". A schedule is sized to
        finish within `epochs`; where it cannot (MLQ with fewer epochs than layers), `fit`
        runs the epochs it needs.
      float_epochs: float pretraining epochs (ignored with `float_weights`).
      epochs: quantization-aware fine-tuning epochs.
      batch_size, learning_rate: float training; `qat_learning_rate` (default: half of
        `learning_rate`) for fine-tuning.
      limit: train/test samples: an int for both or a `(train, test)` pair (quick runs).
      float_weights: weights of a trained float model (`model.save_weights` format) to load
        instead of pretraining. save_float_weights: where to save the float weights.
      tflite_out: write the exported int8 .tflite here and check it with `check_tflite`.
      tensorboard_dir: TensorBoard logs in its `float/` and `quantized/` subfolders.
      plot_dir: write `weights.png` (per-layer weight histograms with the codebook and the
        frozen/free split, `tfquant.plots.weight_histogram`) and, when a schedule ran,
        `phases.png` (`tfquant.plots.phase_timeline`) to this folder; `result["plots"]` lists
        them.
      activation_bits: lqnets only: activation bits in [1, 8] (None: 8-bit activations).
      data_dir: where the dataset files are (see `datasets.load`).
      seed: random seed of the weights and the data order.
      verbose: Keras progress bars and the schedules' messages.

    Returns:
      dict with model, dataset, scheme, bits, schedule, float_accuracy, quantized_accuracy,
      tflite_accuracy (None unless exported), tflite_agreement, tflite_ok, tflite_bytes,
      size_bytes (quantized kernels at fixed-length codes plus their codebooks, every other
      parameter float32), float_bytes (every parameter float32), frozen (smallest fraction of
      frozen weights over the layers), epochs (fine-tuning epochs run), train_samples,
      test_samples and seconds.

    Raises:
      UsageError: a bad argument value (its `flag` attribute names the argument).
    """
    args = dict(locals())
    bits = _check_arguments(args)
    start = time.perf_counter()
    keras_verbose = 1 if verbose else 0
    keras.utils.set_random_seed(seed)
    float_model = build_model(model, _INPUT_SHAPES[dataset], seed=seed)
    (x, y), (x_test, y_test) = datasets.load(dataset, data_dir=data_dir, limit=limit)

    def tensorboard(name):
        if not tensorboard_dir:
            return []
        return [keras.callbacks.TensorBoard(log_dir=os.path.join(tensorboard_dir, name))]

    if float_weights:  # before compiling: a saved optimizer state is not wanted
        try:
            float_model.load_weights(float_weights)
        except Exception as error:  # Keras raises OSError, ValueError, NotFoundError, ...
            raise UsageError(
                "float_weights",
                f"float_weights could not be loaded into model {model!r}: {error}. "
                f"Received: float_weights={float_weights!r}",
            ) from error
    compile_classifier(float_model, learning_rate)
    if not float_weights and float_epochs:
        float_model.fit(
            x,
            y,
            epochs=float_epochs,
            batch_size=batch_size,
            verbose=keras_verbose,
            callbacks=tensorboard("float"),
        )
    if save_float_weights:
        float_model.save_weights(save_float_weights)
    float_accuracy = _accuracy(float_model, x_test, y_test, batch_size)
    float_bytes = 4 * float_model.count_params()
    result = {
        "model": model,
        "dataset": dataset,
        "scheme": scheme,
        "bits": bits,
        "schedule": schedule,
        "float_accuracy": float_accuracy,
        "quantized_accuracy": float_accuracy,
        "tflite_accuracy": None,
        "tflite_agreement": None,
        "tflite_ok": None,
        "tflite_bytes": None,
        "size_bytes": float_bytes,
        "float_bytes": float_bytes,
        "frozen": None,
        "epochs": 0,
        "train_samples": len(x),
        "test_samples": len(x_test),
    }
    if scheme != "none":
        quantization = make_scheme(scheme, bits, schedule, activation_bits)
        qmodel = tfq.quantize_model(float_model, quantization)
        compile_classifier(qmodel, qat_learning_rate or learning_rate / 2)
        batches = math.ceil(len(x) / batch_size)
        callback, fit_epochs = make_schedule(schedule, qmodel, epochs, batches, keras_verbose)
        if fit_epochs > epochs:
            _note(
                f"schedule {schedule!r} needs {fit_epochs} epochs on this model; training "
                f"{fit_epochs} instead of {epochs}.",
                verbose,
            )
        history = None
        if fit_epochs:
            history = qmodel.fit(
                x,
                y,
                epochs=fit_epochs,
                batch_size=batch_size,
                verbose=keras_verbose,
                callbacks=([callback] if callback else []) + tensorboard("quantized"),
            )
        rows = tfq.summary(qmodel, print_fn=None)
        quantized_weights = sum(row.weights for row in rows)
        result.update(
            quantized_accuracy=_accuracy(qmodel, x_test, y_test, batch_size),
            size_bytes=sum(row.fixed_bytes for row in rows)
            + 4 * (float_model.count_params() - quantized_weights),
            frozen=min(row.frozen for row in rows),
            epochs=fit_epochs,
        )
        if tflite_out:
            result.update(_export(qmodel, x, x_test, y_test, tflite_out))
        if plot_dir:
            result["plots"] = _plots(qmodel, history if callback else None, plot_dir)
    result["seconds"] = time.perf_counter() - start
    return result


def _plots(qmodel, history, folder):
    from tfquant import plots

    os.makedirs(folder, exist_ok=True)
    figures = {"weights.png": plots.weight_histogram(qmodel)}
    if history is not None and history.history:
        figures["phases.png"] = plots.phase_timeline(history)
    written = []
    for name, figure in figures.items():
        path = os.path.join(folder, name)
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def _export(qmodel, x, x_test, y_test, path):
    from tfquant.export import check_tflite, to_tflite
    from tfquant.export.tflite import write_atomic

    tfl = to_tflite(qmodel, representative_data=x[:200])
    write_atomic(tfl, path)
    report = check_tflite(tfl, qmodel, x_test, y_test, strict=False)
    for failure in report.failures():
        print(f"{_PROGRAM}: TFLite check failed: {failure}", file=sys.stderr)
    return {
        "tflite_accuracy": report.tflite_accuracy,
        "tflite_agreement": report.agreement,
        "tflite_ok": report.ok,
        "tflite_bytes": len(tfl),
    }


def format_result(result):
    """The one-line summary `main` prints (key=value, accuracies in %).

    >>> print(format_result({"model": "lenet5", "dataset": "mnist", "scheme": "ternary",
    ...     "bits": 2, "schedule": "mlq", "float_accuracy": 0.99, "quantized_accuracy": 0.985,
    ...     "tflite_accuracy": None, "size_bytes": 27000, "float_bytes": 1724320}))
    ... # doctest: +NORMALIZE_WHITESPACE
    RESULT model=lenet5 dataset=mnist scheme=ternary bits=2 schedule=mlq float_acc=99.00%
      quant_acc=98.50% size_bytes=27000 float_bytes=1724320
    """
    fields = [
        f"model={result['model']}",
        f"dataset={result['dataset']}",
        f"scheme={result['scheme']}",
        f"bits={result['bits']}",
        f"schedule={result['schedule']}",
        f"float_acc={result['float_accuracy']:.2%}",
        f"quant_acc={result['quantized_accuracy']:.2%}",
    ]
    if result.get("tflite_accuracy") is not None:
        fields.append(f"tflite_acc={result['tflite_accuracy']:.2%}")
    fields.append(f"size_bytes={result['size_bytes']}")
    fields.append(f"float_bytes={result['float_bytes']}")
    if result.get("tflite_bytes") is not None:
        fields.append(f"tflite_bytes={result['tflite_bytes']}")
    return "RESULT " + " ".join(fields)


def define_flags(flag_values):
    """Defines the CLI's flags on `flag_values` (a fresh `absl.flags.FlagValues`)."""
    f = flags
    fv = {"flag_values": flag_values}
    f.DEFINE_enum("model", "digits_cnn", MODELS, "Network to train.", **fv)
    f.DEFINE_enum("dataset", "digits", DATASETS, "Dataset (see tfquant.models.datasets).", **fv)
    f.DEFINE_enum("scheme", "multivalued", SCHEMES, "Weight quantization scheme.", **fv)
    f.DEFINE_integer(
        "bits",
        None,
        "Weight bits. Default: multivalued 3 (1-8), ternary 2 (only), lqnets 2 (1-4), "
        "uniform 8 (2-8).",
        **fv,
    )
    f.DEFINE_enum(
        "schedule",
        "none",
        SCHEDULES,
        "Fine-tuning schedule: none/naive (snap every weight), mpa (PhaseAdaptation), mvq "
        "(IntervalContraction), slq (PartitionRounds), mlq (IncrementalLayers); the last four "
        "need --scheme=multivalued or ternary.",
        **fv,
    )
    f.DEFINE_integer("float_epochs", 10, "Float pretraining epochs.", lower_bound=0, **fv)
    f.DEFINE_integer("epochs", 8, "Quantization-aware fine-tuning epochs.", lower_bound=0, **fv)
    f.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1, **fv)
    f.DEFINE_float("learning_rate", 1e-3, "Adam learning rate of float training.", **fv)
    f.DEFINE_float(
        "qat_learning_rate", None, "Fine-tuning learning rate (default: learning_rate / 2).", **fv
    )
    f.DEFINE_list("limit", None, "Samples for quick runs: N (train and test) or TRAIN,TEST.", **fv)
    f.DEFINE_string("float_weights", None, "Load these float weights instead of pretraining.", **fv)
    f.DEFINE_string("save_float_weights", None, "Save the float weights here.", **fv)
    f.DEFINE_string(
        "tflite_out", None, "Export the quantized model as int8 TFLite here and check it.", **fv
    )
    f.DEFINE_string("tensorboard_dir", None, "Write TensorBoard logs here.", **fv)
    f.DEFINE_integer("activation_bits", None, "lqnets: activation bits 1-8 (default: 8-bit).", **fv)
    f.DEFINE_string("data_dir", None, "Folder with the dataset files.", **fv)
    f.DEFINE_string(
        "plot_dir", None, "Write weights.png (and phases.png with a schedule) here.", **fv
    )
    f.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0, **fv)
    f.DEFINE_boolean("verbose", True, "Keras progress bars (--noverbose: quiet).", **fv)
    return flag_values


_FLAG_NAMES = (
    "model",
    "dataset",
    "scheme",
    "bits",
    "schedule",
    "float_epochs",
    "epochs",
    "batch_size",
    "learning_rate",
    "qat_learning_rate",
    "limit",
    "float_weights",
    "save_float_weights",
    "tflite_out",
    "tensorboard_dir",
    "activation_bits",
    "data_dir",
    "plot_dir",
    "seed",
    "verbose",
)


def _parse_limit(values):
    """`["500"]` -> 500, `["500", "100"]` -> (500, 100)."""
    if values is None:
        return None
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise UsageError(
            "limit",
            "limit must be N or TRAIN,TEST (positive integers). "
            f"Received: limit={','.join(values)!r}",
        )
    return numbers[0] if len(numbers) == 1 else tuple(numbers)


def main(argv=None):
    """Runs the CLI on `argv` (the arguments without the program name; default
    `sys.argv[1:]`). Prints the result line; returns the exit status: 0 ok, 1 the dataset was
    not found or is corrupt, or the exported TFLite failed its check, 2 bad flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flag_values = define_flags(flags.FlagValues())
    try:
        _cli.parse(flag_values, argv, _PROGRAM, __doc__)
        options = {name: flag_values[name].value for name in _FLAG_NAMES}
        options["limit"] = _parse_limit(options["limit"])
        result = train(**options)
    except _cli.HelpRequested:
        return 0
    except flags.Error as error:
        return _cli.error(_PROGRAM, error)
    except UsageError as error:
        value = flag_values[error.flag].value
        if isinstance(value, list):
            value = ",".join(value)
        print(f"{_PROGRAM}: error: flag --{error.flag}={value}: {error}", file=sys.stderr)
        return 2
    except datasets.DatasetError as error:
        print(f"{_PROGRAM}: error: {error}", file=sys.stderr)
        return 1
    print(format_result(result))
    return 1 if result["tflite_ok"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
