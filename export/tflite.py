"""Full-integer TFLite export of a tfquant QAT model, and the check that proves it exact.

Export recipe: copy the model, write every kernel's hard-quantized values into the copy,
switch the copy's tfquant quantizers to export mode (the kernel passes unchanged), convert with
a representative dataset (the converter folds each BatchNorm into the kernel before it and
quantizes activations with the ranges learned in training), then write the exact kernels into
the file: the trained integer codes, one scale per output channel (the grid step, times γ/σ
where a BatchNorm was folded) and the int32 biases at the matching scales (`export.rewrite`).
Per-layer and per-channel codebooks mix freely in one model.
"""

import contextlib
import dataclasses
import os
import tempfile
import warnings

import numpy as np
import tensorflow_model_optimization as tfmot

from tfquant import _quiet
from tfquant._keras import check_keras2_model, keras, quantized_activations, quantized_weights, tf
from tfquant.export.flatbuffer import InvalidTfliteError, validate
from tfquant.export.folding import INT8_ONLY, exact_kernels, layer_kind
from tfquant.export.rewrite import filters, hypotheses, parse, segments, write_exact_kernels
from tfquant.quantizers.base import TfquantQuantizer, check_bool, check_float

# Ops that move or reinterpret int8 data without arithmetic on floats.
_INTEGER_TYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_)


class ExportCheckError(AssertionError):
    """`check_tflite` found a float op, a kernel off the codebook, or a disagreement."""


def _tfquant_weights(model):
    return [e for e in quantized_weights(model) if isinstance(e[2], TfquantQuantizer)]


def check_input_data(data, shape, name="representative_data", against="the model input"):
    """`data` as float32 after the checks: an array (not a tf.data.Dataset), at least one
    sample, shape (N, *shape), finite. Errors name the argument `name`."""
    if isinstance(data, tf.data.Dataset):
        raise TypeError(
            f"{name} must be a NumPy array of model inputs (take a slice, e.g. "
            "x_train[:100]). Received: a tf.data.Dataset"
        )
    try:
        data = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a float array. Received: {type(data).__name__}") from error
    expected = tuple(shape)
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample. Received: shape {data.shape}")
    if tuple(data.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (N, {', '.join(map(str, expected))}) to match {against}. "
            f"Received: shape {data.shape}"
        )
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} must be finite. Received: NaN or Inf values")
    return data


def _input_dtype(model):
    """The NumPy dtype of `model`'s (first) input: float32, or an integer type for token ids."""
    dtype = model.inputs[0].dtype if getattr(model, "inputs", None) else tf.float32
    return np.dtype(dtype.as_numpy_dtype) if dtype.is_integer else np.dtype(np.float32)


def _check_representative(data, model, name="representative_data"):
    """`check_input_data`, then, for a model whose input is integer (token ids), the values
    as that integer type (they must be whole numbers)."""
    data = check_input_data(data, model.input_shape[1:], name)
    dtype = _input_dtype(model)
    if dtype.kind in "iu":
        if not np.array_equal(data, np.round(data)):
            raise ValueError(
                f"{name} must hold whole numbers: the model input is {dtype.name} (token ids). "
                "Received: fractional values"
            )
        data = data.astype(dtype)
    return data


def _check_finite_weights(qmodel):
    for variable in qmodel.weights:
        if variable.dtype.is_floating and not np.all(np.isfinite(variable.numpy())):
            raise ValueError(
                "qmodel weights must be finite (did training diverge?). Received: NaN or Inf "
                f"in {variable.name}"
            )


def _short_name(variable):
    return variable.name.split("/")[-1].split(":")[0]


def _copy_weights(source, target):
    """Copies weights layer by layer, matched by variable name (creation order can differ)."""
    for source_layer, target_layer in zip(source.layers, target.layers, strict=True):
        targets = {_short_name(v): v for v in target_layer.weights}
        for variable in source_layer.weights:
            targets[_short_name(variable)].assign(variable)


def export_copy(qmodel):
    """The model the converter sees: a copy whose kernels hold the hard-quantized values and
    whose tfquant quantizers are in export mode (kernels pass unchanged; LQ-Nets activation
    quantizers become one FakeQuant on their grid)."""
    with tfmot.quantization.keras.quantize_scope():
        copy = keras.models.clone_model(qmodel)
    _copy_weights(qmodel, copy)
    for _, weight, quantizer, quantizer_vars in _tfquant_weights(copy):
        weight.assign(quantizer.hard_quantize(weight, quantizer_vars))
        quantizer.prepare_export(weight, quantizer_vars)
    for _, quantizer, quantizer_vars in quantized_activations(copy):
        if isinstance(quantizer, TfquantQuantizer):
            quantizer.prepare_export(None, quantizer_vars)
    return copy


def to_tflite(qmodel, representative_data, int4=False, int8_io=True, batch_size=None):
    """Converts a tfquant QAT model to a full-integer TFLite flatbuffer.

    Every kernel is stored as int8 codes whose dequantized values are exactly the trained
    codebook values (check it with `check_tflite`); activations are int8 with the ranges the
    QAT model learned. `qmodel` itself is not modified.

    Args:
      qmodel: a model from `tfq.quantize_model` (trained or not).
      representative_data: float array of inputs, shape (N, *input_shape), N >= 1 (a few
        hundred samples are plenty); the converter requires it for full-integer models.
      int4: store kernels whose codebook lies on a 4-bit grid (ternary, uniform <= 4 bits,
        per layer or per channel) as INT4, two codes per byte (about half the file); others
        stay int8 with a warning naming them. INT4 is for size, not speed, and not for the
        Edge TPU.
      int8_io: int8 model input and output (default); False keeps float32 input/output with
        quantize/dequantize ops at the edges.
      batch_size: None keeps the model's batch dimension (usually dynamic: the flatbuffer's
        shape signature says -1); an integer fixes it, as the Edge TPU compiler requires
        (`batch_size=1`).

    Returns:
      The .tflite flatbuffer as bytes.

    A Conv2D or DepthwiseConv2D (or Dense) followed by a BatchNormalization is stored as one
    op with the BatchNorm folded in: the same trained codes, per-channel scales
    `step * |gamma / sigma|`. A kernel the converter changed in a way tfquant cannot store
    exactly (something other than a per-channel factor folded into it) keeps the converter's
    int8 values, with a warning naming the layer; `check_tflite` then reports it.

    A model without tfquant quantizers (a float model, or tfmot's own QAT) is converted with
    the plain full-int8 path and a warning.

    Raises:
      TypeError / ValueError: not a built tf_keras model, or bad `representative_data`.
    """
    check_keras2_model(qmodel, "qmodel")
    check_bool("int4", int4)
    check_bool("int8_io", int8_io)
    entries = _tfquant_weights(qmodel)
    _check_finite_weights(qmodel)
    data = _check_representative(representative_data, qmodel)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be None or a positive integer. Received: batch_size={batch_size!r}"
        )
    if batch_size is not None and len(data) < batch_size:
        raise ValueError(
            f"representative_data must hold at least batch_size={batch_size} samples. "
            f"Received: {len(data)}"
        )
    if entries:
        copy = export_copy(qmodel)
    else:
        warnings.warn(
            f"qmodel {qmodel.name!r} has no tfquant quantizer (not a model from "
            "tfq.quantize_model): it is converted with TFLite's plain post-training full-int8 "
            "quantization, so its kernels are the converter's rounding of the float weights, "
            "not a trained codebook, and int4 is ignored.",
            stacklevel=2,
        )
        copy = qmodel
    step = batch_size or 1

    def representative_dataset():
        usable = data[: max(step, min(len(data), 500) // step * step)]
        for start in range(0, len(usable), step):
            yield [usable[start : start + step]]

    if batch_size is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(copy)
    else:
        spec = tf.TensorSpec([batch_size, *copy.input_shape[1:]], tf.float32)
        function = tf.function(lambda inputs: copy(inputs, training=False))
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function(spec)], copy
        )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    tfl = _quiet.convert(converter)
    if not entries:
        return tfl
    return _write_exact(tfl, copy, int4)


def _write_exact(tfl, copy, int4):
    kernels, not_int4 = exact_kernels(copy, int4=int4)
    tfl, written = write_exact_kernels(tfl, kernels)
    done = {w.layer for w in written}
    missing = [k.layer for k in kernels if k.layer not in done]
    if missing:
        warnings.warn(
            f"The kernels of {missing} are stored as the converter quantized them, not as the "
            "trained codes: the converter dropped them or folded into them something other than "
            "a per-channel factor (e.g. a normalization with a factor per input feature). "
            "check_tflite reports them as not exact.",
            stacklevel=3,
        )
    int8_only = [name for name in not_int4 if layer_kind(copy.get_layer(name)) in INT8_ONLY]
    off_grid = [name for name in not_int4 if name not in int8_only]
    if not_int4:
        reasons = []
        if off_grid:
            reasons.append(f"{off_grid}: their codebooks are not on a 4-bit grid")
        if int8_only:
            reasons.append(
                f"{int8_only}: Conv2DTranspose (TRANSPOSE_CONV) and Embedding (GATHER) "
                "kernels are always stored as int8 by tfquant"
            )
        warnings.warn(
            f"Layers {'; '.join(reasons)}. They are stored as int8 (exact) instead of INT4.",
            stacklevel=3,
        )
    return tfl


def write_atomic(data, path):
    """Writes bytes to `path` through a temporary file and a rename: never half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


@dataclasses.dataclass
class KernelCheck:
    """One quantized Keras kernel matched to its TFLite tensor."""

    layer: str
    tflite_tensor: str
    shape: tuple
    codes: int  # distinct integer codes in the flatbuffer tensor
    codebook_size: int
    max_abs_error: float  # |dequantized TFLite value - trained value (folded)|, max
    exact: bool
    stored_type: str = "INT8"  # the flatbuffer's tensor type ("INT4" for packed kernels)
    fold: str = "none"  # what the file's kernel has folded in: "none", "batchnorm NAME",
    # or "converter factor" (a per-channel factor the converter folded, e.g. a Rescaling)


@dataclasses.dataclass
class TfliteReport:
    """What `check_tflite` measured. `ok` is True when every check passed."""

    ops: list
    float_ops: list
    kernels: list
    unmatched_layers: list
    samples: int
    agreement: float
    keras_accuracy: float | None
    tflite_accuracy: float | None
    # The largest Keras top-2 margin among the samples where TFLite picks another class, in
    # steps of the file's output quantization (0 when they all agree): a step or two is a
    # near-tie that integer rounding tipped the other way; more is a real difference.
    disagreement_margin: float = 0.0

    @property
    def ok(self):
        return (
            not self.float_ops and not self.unmatched_layers and all(k.exact for k in self.kernels)
        )

    def failures(self):
        out = []
        if self.float_ops:
            out.append(f"float compute ops: {self.float_ops}")
        if self.unmatched_layers:
            out.append(f"kernels not found in the flatbuffer: {self.unmatched_layers}")
        out += [
            f"kernel of {k.layer} off its codebook (max error {k.max_abs_error:.3g})"
            for k in self.kernels
            if not k.exact
        ]
        return out


@contextlib.contextmanager
def litert_errors(action):
    """Turns what the LiteRT interpreter raises while it reads or runs `tfl` (ValueError,
    RuntimeError, a tensor name that is not UTF-8, ...) into `InvalidTfliteError` naming
    `tfl` and `action`."""
    try:
        yield
    except InvalidTfliteError:
        raise
    except (ValueError, RuntimeError) as error:
        raise InvalidTfliteError(f"tfl {action}: LiteRT says: {error}") from error


def load_interpreter(tfl, allocate=True, **options):
    """A LiteRT interpreter for `tfl`, after `flatbuffer.validate` (which keeps corrupt files
    that crash the native interpreter away from it), without the default XNNPACK delegate so
    the op list is the model's own ops. Errors while loading or allocating become
    `InvalidTfliteError` (a ValueError) naming `tfl`."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    validate(tfl)
    options.setdefault(
        "experimental_op_resolver_type", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        interpreter = Interpreter(model_content=bytes(tfl), **options)
        if allocate:
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise InvalidTfliteError(f"tfl is not a valid TFLite flatbuffer: {error}") from error
    return interpreter


def _interpreter(tfl):
    return load_interpreter(tfl)


def _dequantized(interpreter, detail):
    values = interpreter.get_tensor(detail["index"]).astype(np.float64)
    params = detail["quantization_parameters"]
    scales, zeros = params["scales"], params["zero_points"]
    if scales.size == 0:
        return values, values
    axis = params["quantized_dimension"]
    shape = [1] * values.ndim
    if scales.size > 1:
        shape[axis] = -1
    codes = values - zeros.reshape(shape)
    return codes * scales.reshape(shape), codes


def run_tflite(tfl, inputs, interpreter=None):
    """Runs a single-input TFLite model on `inputs` (float) sample by sample; float outputs."""
    interpreter = interpreter or _interpreter(tfl)
    with litert_errors("could not be run on the data"):
        inputs_detail, outputs_detail = (
            interpreter.get_input_details(),
            interpreter.get_output_details(),
        )
        if len(inputs_detail) != 1 or len(outputs_detail) != 1:
            raise InvalidTfliteError(
                "tfl must have one input and one output to run here. Received: "
                f"{len(inputs_detail)} inputs, {len(outputs_detail)} outputs"
            )
        (input_detail,), (output_detail,) = inputs_detail, outputs_detail
        in_scale, in_zero = input_detail["quantization"]
        out_scale, out_zero = output_detail["quantization"]
        outputs = []
        for sample in np.asarray(inputs, np.float32):
            value = sample[None]
            if input_detail["dtype"] != np.float32:
                info = np.iinfo(input_detail["dtype"])
                scale = in_scale or 1.0  # a zero scale: an unquantized int input
                value = np.clip(np.round(value / scale + in_zero), info.min, info.max)
            interpreter.set_tensor(input_detail["index"], value.astype(input_detail["dtype"]))
            interpreter.invoke()
            result = interpreter.get_tensor(output_detail["index"])[0].astype(np.float32)
            if output_detail["dtype"] != np.float32:
                result = (result - out_zero) * out_scale
            outputs.append(result)
    return np.stack(outputs)


def _kernel_check(kernel, candidate, levels):
    """The `KernelCheck` of `kernel` (an `ExactKernel`) against one file filter: exact when
    one way of folding (`rewrite.hypotheses`) gives exactly the file's integer codes and, to
    float32 precision, its scales."""
    best = None
    for fold, factor, _, _ in hypotheses(kernel, candidate.values):
        codes, scales, _ = kernel.stored(factor)
        expected = kernel.values(factor)
        error = float(np.max(np.abs(candidate.values - expected))) if expected.size else 0.0
        exact = (
            candidate.codes is not None
            and candidate.scales is not None
            and np.array_equal(candidate.codes, codes)
            and np.allclose(candidate.scales, scales, rtol=1e-6, atol=0.0)
        )
        if best is None or (exact, -error) > (best[0], -best[1]):
            best = (exact, error, fold)
        if exact:
            break  # the first exact way, in the order tried (BatchNorm, none, estimated)
    exact, error, fold = best
    codes = candidate.codes if candidate.codes is not None else candidate.values
    return KernelCheck(
        layer=kernel.layer,
        tflite_tensor=candidate.name,
        shape=candidate.shape,
        codes=int(np.unique(codes).size),
        codebook_size=levels,
        max_abs_error=error,
        exact=bool(exact),
        stored_type=candidate.stored_type,
        fold=fold,
    )


def _check_kernels(qmodel, found):
    """`(KernelCheck list, names of tfquant layers whose kernel is not in the file)`."""
    expected, _ = exact_kernels(qmodel, int4=False, fold=True)
    four_bit = {k.layer: k for k in exact_kernels(qmodel, int4=True, fold=True)[0] if k.bits == 4}
    checks, unmatched, used = [], [], set()
    for kernel in expected:
        levels = kernel.levels
        candidates = [
            (i, f)
            for i, f in enumerate(found)
            if i not in used and f.shape == kernel.codes.shape and f.axis == kernel.channel_axis
        ]
        named = [(i, f) for i, f in candidates if kernel.layer in segments(f.name)]
        others = [(i, f) for i, f in candidates if kernel.layer not in segments(f.name)]
        best = None
        for i, candidate in named + others:
            stored_as = (
                four_bit.get(kernel.layer, kernel) if candidate.stored_type == "INT4" else kernel
            )
            check = _kernel_check(stored_as, candidate, levels)
            if best is None or (check.exact, -check.max_abs_error) > (
                best[1].exact,
                -best[1].max_abs_error,
            ):
                best = (i, check)
            if check.exact:
                break
        if best is None:
            unmatched.append(kernel.layer)
            continue
        used.add(best[0])
        checks.append(best[1])
    return checks, unmatched


def _output_step(interpreter):
    """The quantization step of the file's output (1.0 for a float output)."""
    (output,) = interpreter.get_output_details()
    scale = output["quantization"][0]
    return float(scale) if scale else 1.0


def _disagreement_margin(keras_out, disagree, step):
    """`TfliteReport.disagreement_margin`: max top-2 margin of `keras_out` rows where
    `disagree`, in units of `step`."""
    if not np.any(disagree):
        return 0.0
    top = np.sort(keras_out[disagree].reshape(int(disagree.sum()), -1), axis=-1)
    return float(np.max(top[:, -1] - top[:, -2]) / step)


def check_tflite(tfl, qmodel, data=None, labels=None, strict=True, min_agreement=0.99):
    """Proves that `tfl` is the integer version of `qmodel`.

    Checks: (1) every op computes on integer tensors (float tensors only as constants or at
    float model edges through QUANTIZE/DEQUANTIZE); (2) every tfquant kernel of `qmodel` is
    found in the flatbuffer, and its integer codes are exactly the trained codes, with one
    scale per output channel equal (to float32 precision) to the grid step, times the factor
    of a BatchNormalization folded into it (`KernelCheck.fold` says which); so the kernel is
    the trained codebook, folded or not; (3) on `data`,
    TFLite's predicted classes agree with Keras on at least `min_agreement` of the samples.

    Args:
      tfl: bytes from `to_tflite`.
      qmodel: the QAT model it was exported from.
      data: optional float inputs for the agreement check.
      labels: optional integer labels for `data` (adds both accuracies to the report).
      strict: raise `ExportCheckError` on any failure (default); False only reports.
      min_agreement: required fraction of samples with the same argmax.

    Returns:
      `TfliteReport`.

    Raises:
      TypeError / ValueError: a bad argument (named in the message).
      InvalidTfliteError (a ValueError): `tfl` is not a valid TFLite model.
      ExportCheckError: with `strict`, a check failed (the message lists each failure).
    """
    check_keras2_model(qmodel, "qmodel")
    check_bool("strict", strict)
    check_float("min_agreement", min_agreement, 0.0, 1.0, low_open=False)
    if data is not None:
        data = _check_representative(data, qmodel, "data")
        if labels is not None:
            labels = np.asarray(labels).ravel()
            if labels.shape != (len(data),):
                raise ValueError(
                    f"labels must hold one label per sample of data ({len(data)}). Received: "
                    f"labels of shape {labels.shape}"
                )
    interpreter = _interpreter(tfl)
    with litert_errors("could not be read"):
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        ops = interpreter._get_ops_details()
    op_names, float_ops = [], []
    for op in ops:
        name = op["op_name"]
        op_names.append(name)
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [i for i in op["inputs"] if i >= 0] + list(op["outputs"])
        if any(details[i]["dtype"] == np.float32 for i in tensors):
            float_ops.append(name)
    with litert_errors("could not be read"):
        try:
            found = filters(parse(tfl))
        except (ValueError, IndexError, TypeError, KeyError, AttributeError) as error:
            raise InvalidTfliteError(f"tfl could not be read: {error}") from error
    kernels, unmatched = _check_kernels(qmodel, found)

    agreement, keras_accuracy, tflite_accuracy, samples = 1.0, None, None, 0
    disagreement_margin = 0.0
    if data is not None:
        samples = len(data)
        keras_out = np.concatenate(
            [
                np.asarray(qmodel(data[i : i + 256], training=False))
                for i in range(0, len(data), 256)
            ]
        )
        tflite_out = run_tflite(tfl, data)
        keras_pred, tflite_pred = keras_out.argmax(-1), tflite_out.argmax(-1)
        agreement = float(np.mean(keras_pred == tflite_pred))
        disagreement_margin = _disagreement_margin(
            keras_out, keras_pred != tflite_pred, _output_step(interpreter)
        )
        if labels is not None:
            keras_accuracy = float(np.mean(keras_pred == labels))
            tflite_accuracy = float(np.mean(tflite_pred == labels))

    report = TfliteReport(
        ops=op_names,
        float_ops=float_ops,
        kernels=kernels,
        unmatched_layers=unmatched,
        samples=samples,
        agreement=agreement,
        keras_accuracy=keras_accuracy,
        tflite_accuracy=tflite_accuracy,
        disagreement_margin=disagreement_margin,
    )
    failures = report.failures()
    if data is not None and agreement < min_agreement:
        failures.append(f"TFLite agrees with Keras on {agreement:.2%} < {min_agreement:.0%}")
    if strict and failures:
        raise ExportCheckError("tfl is not an exact export of qmodel: " + "; ".join(failures))
    return report
