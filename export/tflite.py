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
import json
import os
import tempfile
import warnings

import numpy as np
import tensorflow_model_optimization as tfmot

from tfquant import _quiet
from tfquant._keras import (
    check_keras2_model,
    inbound_layer_names,
    is_quantize_layer,
    keras,
    quantized_activations,
    quantized_weights,
    tf,
)
from tfquant.export import flatbuffer
from tfquant.export.flatbuffer import InvalidTfliteError, read_model, validate
from tfquant.export.folding import (
    INT8_ONLY,
    batchnorm_affine,
    consumers,
    exact_kernels,
    following_batchnorm,
    layer_kind,
    tflite_layout,
)
from tfquant.export.rewrite import (
    _least_squares_factor,
    _matches,
    filters,
    hypotheses,
    segments,
    write_exact_kernels,
)
from tfquant.quantizers.base import TfquantQuantizer, check_bool, check_float

# Ops that move or reinterpret int8 data without arithmetic on floats.
_INTEGER_TYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_)
#: The metadata entry where `to_tflite` records the Keras names of the model's inputs and
#: outputs in `model.inputs` / `model.outputs` order (the file's own order can differ).
IO_METADATA = "tfquant_io"


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


def _describe(value):
    shape = getattr(value, "shape", None)
    return (
        f"{type(value).__name__} of shape {tuple(shape)}"
        if shape is not None
        else (type(value).__name__)
    )


def check_inputs(data, names, shapes, name="representative_data", against="model input"):
    """One float32 array per input, in the order of `names`, after `check_input_data` on
    each: `data` is an array (one input), a list or tuple in that order, or a dict keyed by
    `names`; every array holds the same number of samples N. Errors name the argument
    `name` and the entry (`name[1]`, `name['left']`)."""
    names, shapes = list(names), [tuple(s) for s in shapes]
    if isinstance(data, dict):
        keys = [str(k) for k in data]
        unknown = sorted(set(keys) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(
                f"{name} must be keyed by the model's input names {names}. Received: keys "
                f"{sorted(keys)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        labels = [f"{name}[{n!r}]" for n in names]
        arrays = [
            check_input_data(data[n], s, label, f"{against} {n!r}")
            for n, s, label in zip(names, shapes, labels, strict=True)
        ]
    elif len(names) == 1:
        return [check_input_data(data, shapes[0], name, f"the {against}")]
    elif isinstance(data, (list, tuple)):
        if len(data) != len(names):
            raise ValueError(
                f"{name} must hold {len(names)} arrays, one per model input {names} (a list in "
                f"model.inputs order or a dict keyed by those names). Received: {len(data)} "
                "arrays"
            )
        labels = [f"{name}[{i}]" for i in range(len(names))]
        arrays = [
            check_input_data(d, s, label, f"{against} {n!r}")
            for d, n, s, label in zip(data, names, shapes, labels, strict=True)
        ]
    else:
        raise TypeError(
            f"{name} must be a list (in model.inputs order) or a dict keyed by the input names "
            f"{names} of arrays, for a model with {len(names)} inputs. Received: "
            f"{_describe(data)}"
        )
    counts = [len(a) for a in arrays]
    if len(set(counts)) > 1:
        raise ValueError(
            f"{name} arrays must hold the same number of samples N. Received: "
            + ", ".join(f"{label} N={n}" for label, n in zip(labels, counts, strict=True))
        )
    return arrays


def _input_shapes(model):
    return [tuple(t.shape[1:]) for t in model.inputs]


def _input_dtypes(model):
    """The NumPy dtype of each of `model`'s inputs: float32, or an integer type (token ids)."""
    return [
        np.dtype(t.dtype.as_numpy_dtype) if t.dtype.is_integer else np.dtype(np.float32)
        for t in model.inputs
    ]


def _check_representative(data, model, name="representative_data"):
    """`check_inputs` against `model`'s inputs: a list of arrays in `model.inputs` order, each
    as its input's type (an integer input's values must be whole numbers: token ids)."""
    arrays = check_inputs(data, model.input_names, _input_shapes(model), name)
    for i, dtype in enumerate(_input_dtypes(model)):
        if dtype.kind in "iu":
            if not np.array_equal(arrays[i], np.round(arrays[i])):
                raise ValueError(
                    f"{name} must hold whole numbers for input {model.input_names[i]!r}: it is "
                    f"{dtype.name} (token ids). Received: fractional values"
                )
            arrays[i] = arrays[i].astype(dtype)
    return arrays


def _check_labels(labels, model, samples):
    """One integer label array (or None) per output of `model`, in `model.outputs` order."""
    names = list(model.output_names)
    if labels is None:
        return [None] * len(names)
    if isinstance(labels, dict):
        unknown = sorted(set(map(str, labels)) - set(names))
        if unknown:
            raise ValueError(
                f"labels must be keyed by the model's output names {names}. Received: unknown "
                f"keys {unknown}"
            )
        entries = [(f"labels[{n!r}]", labels.get(n)) for n in names]
    elif len(names) == 1:
        entries = [("labels", labels)]
    elif isinstance(labels, (list, tuple)) and len(labels) == len(names):
        entries = [(f"labels[{i}]", value) for i, value in enumerate(labels)]
    else:
        raise ValueError(
            f"labels must be a list of {len(names)} label arrays (or None), one per model "
            f"output {names}, or a dict keyed by those names. Received: {_describe(labels)}"
            + (f" of length {len(labels)}" if isinstance(labels, (list, tuple)) else "")
        )
    out = []
    for label, value in entries:
        if value is None:
            out.append(None)
            continue
        value = np.asarray(value).ravel()
        if value.shape != (samples,):
            raise ValueError(
                f"{label} must hold one label per sample of data ({samples}). Received: "
                f"shape {value.shape}"
            )
        out.append(value)
    return out


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


class _QuantizedOutput(keras.layers.Layer):
    """`layer` followed by one 8-bit FakeQuant over [minimum, maximum]: the export copy puts it
    after a float layer whose per-input-feature factor the converter would otherwise fold
    into the next kernel (a LayerNormalization's gamma before a Dense), which no per-channel
    int8 kernel can hold. The layer's multiply then stays in the file as an int8 op."""

    def __init__(self, layer, minimum, maximum, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(**kwargs)
        self.layer, self.minimum, self.maximum = layer, float(minimum), float(maximum)

    def call(self, inputs):
        return tf.quantization.fake_quant_with_min_max_args(
            self.layer(inputs), self.minimum, self.maximum, num_bits=8
        )

    def get_config(self):
        return {
            **super().get_config(),
            "layer": keras.layers.serialize(self.layer),
            "minimum": self.minimum,
            "maximum": self.maximum,
        }


def export_copy(qmodel, output_ranges=None):
    """The model the converter sees: a copy whose kernels hold the hard-quantized values and
    whose tfquant quantizers are in export mode (kernels pass unchanged; LQ-Nets activation
    quantizers become one FakeQuant on their grid). `output_ranges` (layer name ->
    (min, max)) puts an 8-bit FakeQuant after those layers (`_QuantizedOutput`)."""
    output_ranges = output_ranges or {}

    def clone(layer):
        copied = layer.__class__.from_config(layer.get_config())
        if layer.name in output_ranges:
            return _QuantizedOutput(copied, *output_ranges[layer.name])
        return copied

    with tfmot.quantization.keras.quantize_scope():
        copy = keras.models.clone_model(qmodel, clone_function=clone)
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
      qmodel: a model from `tfq.quantize_model` (trained or not), with one or more inputs
        and outputs.
      representative_data: float inputs, N >= 1 samples (a few hundred are plenty; the
        converter requires them for full-integer models): for a one-input model an array of
        shape (N, *input_shape); for several inputs a list of arrays in `qmodel.inputs`
        order or a dict keyed by the input layer names, all with the same N.
      int4: store kernels whose codebook lies on a 4-bit grid (ternary, uniform <= 4 bits,
        per layer or per channel, multivalued with `int4_grid=True`) as INT4, two codes per
        byte (about half the file); others stay int8 with a warning naming them. INT4 is for
        size, not speed, and not for the Edge TPU.
      int8_io: int8 model inputs and outputs, all of them (default); False keeps float32
        inputs/outputs with quantize/dequantize ops at the edges.
      batch_size: None keeps the model's batch dimension (usually dynamic: the flatbuffer's
        shape signature says -1); an integer fixes it, as the Edge TPU compiler requires
        (`batch_size=1`).

    Returns:
      The .tflite flatbuffer as bytes. Its metadata entry `IO_METADATA` records the Keras
      input and output names in model order (the file's own order can differ), which
      `run_tflite` uses.

    A Conv2D or DepthwiseConv2D (or Dense) followed by a BatchNormalization is stored as one
    op with the BatchNorm folded in: the same trained codes, per-channel scales
    `step * |gamma / sigma|`. When the converter folds into a kernel a factor per input
    feature (a LayerNormalization's gamma before a Dense), which per-channel int8 cannot
    hold, the model is converted again with an 8-bit quantization point after that float
    layer (the range its output takes on `representative_data`), so its multiply stays in
    the file as an int8 op and the kernel keeps the trained codes. A kernel the converter
    changed in a way tfquant cannot store exactly keeps the converter's int8 values, with a
    warning naming the layer; `check_tflite` then reports it.

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
    if batch_size is not None and len(data[0]) < batch_size:
        raise ValueError(
            f"representative_data must hold at least batch_size={batch_size} samples. "
            f"Received: {len(data[0])}"
        )
    step = batch_size or 1
    usable = [arr[: max(step, min(len(arr), 500) // step * step)] for arr in data]
    if not entries:
        warnings.warn(
            f"qmodel {qmodel.name!r} has no tfquant quantizer (not a model from "
            "tfq.quantize_model): it is converted with TFLite's plain post-training full-int8 "
            "quantization, so its kernels are the converter's rounding of the float weights, "
            "not a trained codebook, and int4 is ignored.",
            stacklevel=2,
        )
        tfl = _convert(qmodel, usable, batch_size, int8_io)
        return _with_io_names(tfl, qmodel)
    copy = export_copy(qmodel)
    tfl, missing, not_int4 = _write_exact(_convert(copy, usable, batch_size, int8_io), copy, int4)
    feeders = _float_feeders(copy, missing)
    if feeders:
        # The converter folded something per input feature into these kernels: convert again
        # with the feeding float layers' outputs quantized, which stops the fold.
        ranges = _output_ranges(copy, feeders, usable)
        retry_copy = export_copy(qmodel, ranges)
        retry = _write_exact(_convert(retry_copy, usable, batch_size, int8_io), retry_copy, int4)
        if len(retry[1]) < len(missing):
            tfl, missing, not_int4 = retry
    if missing:
        warnings.warn(
            f"The kernels of {missing} are stored as the converter quantized them, not as the "
            "trained codes: the converter dropped them or folded into them something tfquant "
            "cannot store exactly. check_tflite reports them as not exact.",
            stacklevel=2,
        )
    if not_int4:
        int8_only = [n for n in not_int4 if layer_kind(copy.get_layer(n)) in INT8_ONLY]
        off_grid = [n for n in not_int4 if n not in int8_only]
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
            stacklevel=2,
        )
    return _with_io_names(tfl, qmodel)


def _convert(model, data, batch_size, int8_io):
    """The converter's full-int8 flatbuffer of `model`, calibrated on `data` (one array per
    input, in `model.inputs` order)."""
    names = list(model.input_names)
    step = batch_size or 1

    def representative_dataset():
        for start in range(0, len(data[0]), step):
            yield {name: arr[start : start + step] for name, arr in zip(names, data, strict=True)}

    if batch_size is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        specs = [
            tf.TensorSpec([batch_size, *shape], tensor.dtype, name=name)
            for name, shape, tensor in zip(names, _input_shapes(model), model.inputs, strict=True)
        ]

        def call(*inputs):
            outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return dict(zip(model.output_names, outputs, strict=True))

        function = tf.function(call, input_signature=specs)
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()], model
        )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return _quiet.convert(converter)


def _with_io_names(tfl, model):
    names = {"inputs": list(model.input_names), "outputs": list(model.output_names)}
    return flatbuffer.with_metadata(tfl, IO_METADATA, json.dumps(names).encode())


def _write_exact(tfl, copy, int4):
    """`(bytes, layers whose kernel could not be written, layers not stored as INT4)`."""
    kernels, not_int4 = exact_kernels(copy, int4=int4)
    tfl, written = write_exact_kernels(tfl, kernels)
    done = {w.layer for w in written}
    return tfl, [k.layer for k in kernels if k.layer not in done], not_int4


def _float_feeders(model, layers):
    """The layers feeding any of `layers` whose output carries no quantization point (not a
    QuantizeWrapper or QuantizeLayer, not an input)."""
    inbound = inbound_layer_names(model)
    feeders = []
    for name in layers:
        for source in inbound.get(name, []):
            layer = model.get_layer(source)
            if (
                isinstance(
                    layer, (tfmot.quantization.keras.QuantizeWrapper, keras.layers.InputLayer)
                )
                or is_quantize_layer(layer)
                or source in feeders
            ):
                continue
            feeders.append(source)
    return feeders


def _output_ranges(model, names, data):
    """Layer name -> (min, max) of its output on `data`, widened to contain 0."""
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outputs = probe.predict(data if len(data) > 1 else data[0], batch_size=256, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return {
        name: (min(0.0, float(np.min(out))), max(0.0, float(np.max(out))))
        for name, out in zip(names, outputs, strict=True)
    }


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
    # "converter factor" (a per-channel factor the converter folded, e.g. a Rescaling), or
    # "input factor" (a factor per input feature, e.g. a LayerNormalization's gamma: never
    # exact in per-channel int8)
    quantizer: str = ""  # the Keras kernel's quantizer class
    # What `exact` means: "codes" (tfquant quantizers: the file's integer codes are the
    # trained codes and its scales the trained steps, to float32 precision) or "rounding"
    # (other quantizers, e.g. tfmot's 8-bit: the file's kernel is the converter's per-channel
    # int8 rounding of what the quantizer outputs, every value within half a file step).
    exactness: str = "codes"


@dataclasses.dataclass
class OutputAgreement:
    """How TFLite's predictions agree with Keras's on one model output (`check_tflite`):
    the argmax over the output's last axis, so meaningful for classification heads.

    Example:
      >>> row = OutputAgreement("head", agreement=0.99, disagreement_margin=1.0)
      >>> OutputAgreement(**row.get_config()) == row
      True
    """

    output: str  # the Keras output name (`model.output_names`)
    agreement: float
    keras_accuracy: float | None = None
    tflite_accuracy: float | None = None
    # The largest Keras top-2 margin among the samples where TFLite picks another class, in
    # steps of the file's output quantization (0 when they all agree).
    disagreement_margin: float = 0.0

    def get_config(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TfliteReport:
    """What `check_tflite` measured. `ok` is True when every check passed.

    `agreement`, `disagreement_margin` and the accuracies sum up `outputs` (one
    `OutputAgreement` per model output, in `model.outputs` order): the lowest agreement, the
    largest margin; the accuracies of a one-output model (None for several outputs: read
    them per output).
    """

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
    outputs: list = dataclasses.field(default_factory=list)

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
        for k in self.kernels:
            if k.exact:
                continue
            if k.fold == "input factor":
                out.append(
                    f"kernel of {k.layer}: the converter folded a factor per input feature "
                    "into it (e.g. the gamma of a LayerNormalization before it), which "
                    f"per-channel int8 cannot hold exactly ({k.codes} distinct codes where the "
                    f"codebook has {k.codebook_size}; max error {k.max_abs_error:.3g})"
                )
            elif k.exactness == "rounding":
                out.append(
                    f"kernel of {k.layer} ({k.quantizer}) is not the per-channel int8 rounding "
                    f"of its quantizer's values (max error {k.max_abs_error:.3g})"
                )
            else:
                out.append(
                    f"kernel of {k.layer} off its codebook (max error {k.max_abs_error:.3g})"
                )
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


def _io_names(tfl, model=None):
    """`(input names, output names)` in Keras order: from `model`, else from the file's
    `IO_METADATA` (written by `to_tflite`), else `(None, None)` (the interpreter's order)."""
    if model is not None:
        return list(model.input_names), list(model.output_names)
    recorded = flatbuffer.metadata(tfl, IO_METADATA)
    if recorded:
        try:
            names = json.loads(recorded.decode("utf-8"))
            return list(names["inputs"]), list(names["outputs"])
        except (ValueError, KeyError, TypeError):
            pass  # not ours: fall back on the interpreter's order
    return None, None


def _tensor_io_name(tensor_name):
    """The signature name in a converter's I/O tensor name: "serving_default_left:0" -> "left"."""
    name = tensor_name.split(":")[0]
    return name[len("serving_default_") :] if name.startswith("serving_default_") else name


def io_details(interpreter, kind, names=None, shapes=None):
    """The interpreter's input (`kind="inputs"`) or output (`"outputs"`) details, one per name
    of `names` in that order (None: the interpreter's own order). The TFLite file's order can
    differ from Keras's (outputs often come sorted by name), so each name is found through the
    file's signature, then through the tensor names, then by shape (`shapes`: the shape of
    each without the batch dimension, when only one of the file's tensors has it), never by
    position (except for one input or output).

    Raises:
      InvalidTfliteError: a name is not an input/output of the file.
    """
    details = (
        interpreter.get_input_details() if kind == "inputs" else interpreter.get_output_details()
    )
    if names is None:
        return details
    by_index = {d["index"]: d for d in details}
    signed = {}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        listed = runner.get_input_details() if kind == "inputs" else runner.get_output_details()
        signed = {name: d["index"] for name, d in listed.items()}
    ordered = []
    for name in names:
        index = signed.get(name)
        if index is None:
            named = [d["index"] for d in details if _tensor_io_name(d["name"]) == name]
            index = named[0] if len(named) == 1 else None
        if index is None and shapes is not None:
            shape = tuple(shapes[len(ordered)])
            shaped = [d["index"] for d in details if tuple(d["shape"][1:]) == shape]
            index = shaped[0] if len(shaped) == 1 else None
        if index is None and len(details) == len(names) == 1:
            index = details[0]["index"]
        if index not in by_index:
            raise InvalidTfliteError(
                f"tfl has no {kind[:-1]} named {name!r}: its {kind} are "
                f"{sorted(signed) or [d['name'] for d in details]}"
            )
        ordered.append(by_index[index])
    if len({d["index"] for d in ordered}) != len(ordered):
        raise InvalidTfliteError(f"tfl: two of {names} map to the same {kind[:-1]} tensor")
    return ordered


def _run(interpreter, arrays, inputs, outputs):
    """Runs `interpreter` sample by sample on `arrays` (one float array per detail of
    `inputs`); one float array per detail of `outputs`."""
    results = [[] for _ in outputs]
    for i in range(len(arrays[0])):
        for array, detail in zip(arrays, inputs, strict=True):
            value = array[i : i + 1]
            if detail["dtype"] != np.float32:
                in_scale, in_zero = detail["quantization"]
                info = np.iinfo(detail["dtype"])
                scale = in_scale or 1.0  # a zero scale: an unquantized int input
                value = np.clip(np.round(value / scale + in_zero), info.min, info.max)
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        for result, detail in zip(results, outputs, strict=True):
            value = interpreter.get_tensor(detail["index"])[0].astype(np.float32)
            if detail["dtype"] != np.float32:
                out_scale, out_zero = detail["quantization"]
                value = (value - out_zero) * out_scale
            result.append(value)
    return [np.stack(result) for result in results]


def run_tflite(tfl, inputs, interpreter=None, model=None):
    """Runs a TFLite model on float inputs sample by sample; float outputs.

    Args:
      tfl: .tflite bytes.
      inputs: for a one-input model an array (N, *input_shape); for several inputs a list of
        arrays in Keras input order or a dict keyed by the input names, all with the same N.
      interpreter: an interpreter of `tfl` to reuse (default: a new one).
      model: the Keras model `tfl` came from (optional): gives the input and output names and
        their order. Without it, the order `to_tflite` recorded in the file, else the
        interpreter's.

    Returns:
      One float array per output: the array itself for a one-output model, else a list in
      Keras output order.
    """
    interpreter = interpreter or load_interpreter(tfl)
    in_names, out_names = _io_names(tfl, model)
    with litert_errors("could not be run on the data"):
        in_details = io_details(interpreter, "inputs", in_names)
        out_details = io_details(interpreter, "outputs", out_names)
        if len(in_details) == 1 and not isinstance(inputs, dict):
            arrays = [np.asarray(inputs, np.float32)]
        else:
            names = in_names or [_tensor_io_name(d["name"]) for d in in_details]
            shapes = [tuple(d["shape"][1:]) for d in in_details]
            arrays = check_inputs(inputs, names, shapes, "inputs", "tfl input")
        outputs = _run(interpreter, arrays, in_details, out_details)
    return outputs[0] if len(outputs) == 1 else outputs


def _kernel_check(kernel, candidate, levels, quantizer=""):
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
    return _verdict(kernel.layer, kernel.values(), candidate, best, levels, quantizer, "codes")


def _verdict(layer, values, candidate, best, levels, quantizer, exactness):
    """The `KernelCheck` of the best `(exact, error, fold)` found for one kernel; a kernel that
    no fold explains is "input factor" when the converter scaled its input features."""
    exact, error, fold = best
    if not exact and _input_factor_folded(values, candidate):
        fold = "input factor"
    codes = candidate.codes if candidate.codes is not None else candidate.values
    return KernelCheck(
        layer=layer,
        tflite_tensor=candidate.name,
        shape=candidate.shape,
        codes=int(np.unique(codes).size),
        codebook_size=levels,
        max_abs_error=error,
        exact=bool(exact),
        stored_type=candidate.stored_type,
        fold=fold,
        quantizer=quantizer,
        exactness=exactness,
    )


def _input_factor_folded(values, candidate):
    """True when the file's FULLY_CONNECTED filter is `values` (the Keras kernel, [out, in])
    times one factor per input feature, within the converter's per-channel rounding: what
    the converter makes of a LayerNormalization's gamma (or a Normalization layer) before a
    Dense. Per-channel int8 cannot hold that exactly."""
    if candidate.op != "FULLY_CONNECTED" or candidate.scales is None or values.ndim != 2:
        return False
    factor = _least_squares_factor(values, candidate.values, 1)
    if not np.all(np.isfinite(factor)) or np.allclose(factor, 1.0, rtol=1e-6, atol=0.0):
        return False
    # Least squares on rounded values estimates each factor only roughly: a diagnosis, so
    # one file step per value (not half) is close enough.
    return _matches(values * factor[None, :], candidate.values, 2 * candidate.scales, 0)


@dataclasses.dataclass
class _RoundedKernel:
    """A kernel under a quantizer that is not tfquant's (tfmot's 8-bit, say): the float
    values that quantizer outputs, in TFLite's layout, which the converter re-quantizes per
    output channel (so the file holds their int8 rounding, not a trained codebook)."""

    layer: str
    quantizer: str
    values: np.ndarray
    levels: int
    channel_axis: int
    batchnorm: str | None
    batchnorm_factor: np.ndarray | None


def _rounded_kernels(qmodel):
    consumers_of = consumers(qmodel)
    kernels = []
    for wrapper, weight, quantizer, quantizer_vars in quantized_weights(qmodel):
        inner = getattr(wrapper, "layer", wrapper)
        if isinstance(quantizer, TfquantQuantizer) or not _is_kernel(inner, weight):
            continue
        values = np.asarray(quantizer(weight, training=False, weights=quantizer_vars))
        depthwise = isinstance(inner, keras.layers.DepthwiseConv2D)
        values = tflite_layout(values.astype(np.float64), depthwise)
        batchnorm = following_batchnorm(wrapper, consumers_of)
        bits = int(getattr(quantizer, "num_bits", 8))
        kernels.append(
            _RoundedKernel(
                layer=wrapper.name,
                quantizer=type(quantizer).__name__,
                values=values,
                levels=2**bits - int(bool(getattr(quantizer, "narrow_range", False))),
                channel_axis=values.ndim - 1 if depthwise else 0,
                batchnorm=None if batchnorm is None else batchnorm.name,
                batchnorm_factor=None if batchnorm is None else batchnorm_affine(batchnorm)[0],
            )
        )
    return kernels


def _is_kernel(layer, weight):
    """A Conv2D, DepthwiseConv2D or Dense kernel (the layouts `tflite_layout` knows)."""
    kernel_types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return isinstance(layer, kernel_types) and _short_name(weight) in ("kernel", "depthwise_kernel")


def _rounded_check(kernel, candidate):
    """`KernelCheck` (exactness "rounding") of a `_RoundedKernel` against one file filter."""
    axis = kernel.channel_axis
    view = [1] * kernel.values.ndim
    view[axis] = -1
    folds = []
    if kernel.batchnorm is not None:
        folds.append((f"batchnorm {kernel.batchnorm}", kernel.batchnorm_factor))
    folds.append(("none", None))
    factor = _least_squares_factor(kernel.values, candidate.values, axis)
    if np.all(np.isfinite(factor)):
        folds.append(("converter factor", factor))
    best = None
    for fold, factor in folds:
        expected = kernel.values if factor is None else kernel.values * factor.reshape(view)
        error = float(np.max(np.abs(candidate.values - expected))) if expected.size else 0.0
        exact = (
            candidate.codes is not None
            and candidate.scales is not None
            and int(np.max(np.abs(candidate.codes), initial=0)) <= 127
            and _matches(expected, candidate.values, candidate.scales, axis)
        )
        if best is None or (exact, -error) > (best[0], -best[1]):
            best = (exact, error, fold)
        if exact:
            break
    return _verdict(
        kernel.layer, kernel.values, candidate, best, kernel.levels, kernel.quantizer, "rounding"
    )


def _check_kernels(qmodel, found):
    """`(KernelCheck list, names of quantized layers whose kernel is not in the file)`: every
    tfquant kernel (exact codes) and every kernel under another quantizer, e.g. tfmot's 8-bit
    (exact rounding, `KernelCheck.exactness`)."""
    expected, _ = exact_kernels(qmodel, int4=False, fold=True)
    four_bit = {k.layer: k for k in exact_kernels(qmodel, int4=True, fold=True)[0] if k.bits == 4}
    quantizers = {w.name: type(q).__name__ for w, _, q, _ in _tfquant_weights(qmodel)}
    checks, unmatched, used = [], [], set()
    for kernel in expected + _rounded_kernels(qmodel):
        rounded = isinstance(kernel, _RoundedKernel)
        shape = kernel.values.shape if rounded else kernel.codes.shape
        levels = kernel.levels
        candidates = [
            (i, f)
            for i, f in enumerate(found)
            if i not in used and f.shape == shape and f.axis == kernel.channel_axis
        ]
        named = [(i, f) for i, f in candidates if kernel.layer in segments(f.name)]
        others = [(i, f) for i, f in candidates if kernel.layer not in segments(f.name)]
        best = None
        for i, candidate in named + others:
            if rounded:
                check = _rounded_check(kernel, candidate)
            else:
                stored_as = (
                    four_bit.get(kernel.layer, kernel)
                    if candidate.stored_type == "INT4"
                    else kernel
                )
                check = _kernel_check(stored_as, candidate, levels, quantizers[kernel.layer])
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


def _output_step(detail):
    """The quantization step of one output of the file (1.0 for a float output)."""
    scale = detail["quantization"][0]
    return float(scale) if scale else 1.0


def _disagreement_margin(keras_out, disagree, step):
    """`TfliteReport.disagreement_margin`: max top-2 margin of `keras_out` rows where
    `disagree`, in units of `step`."""
    if not np.any(disagree) or keras_out.shape[-1] < 2:
        return 0.0
    top = np.sort(keras_out[disagree].reshape(int(disagree.sum()), -1), axis=-1)
    return float(np.max(top[:, -1] - top[:, -2]) / step)


def _keras_outputs(qmodel, data):
    """`qmodel`'s outputs on `data` (one array per input) in batches: a list per output."""
    chunks = []
    for start in range(0, len(data[0]), 256):
        batch = [arr[start : start + 256] for arr in data]
        out = qmodel(batch if len(batch) > 1 else batch[0], training=False)
        chunks.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def check_tflite(tfl, qmodel, data=None, labels=None, strict=True, min_agreement=0.99):
    """Proves that `tfl` is the integer version of `qmodel`.

    Checks: (1) every op computes on integer tensors (float tensors only as constants or at
    float model edges through QUANTIZE/DEQUANTIZE); (2) every quantized kernel of `qmodel` is
    found in the flatbuffer: a tfquant kernel's integer codes are exactly the trained codes,
    with one scale per output channel equal (to float32 precision) to the grid step, times the
    factor of a BatchNormalization folded into it (`KernelCheck.fold` says which), so the
    kernel is the trained codebook, folded or not; a kernel under another quantizer (tfmot's
    8-bit, when a layer was annotated with tfmot's own config) is exact when the file holds
    the converter's per-channel int8 rounding of what that quantizer outputs (within half a
    file step per value; the converter re-quantizes per output channel, so these are not
    tfmot's per-tensor codes: `KernelCheck.exactness` is "rounding"); (3) on `data`, for
    every output of the model, TFLite's predicted classes (argmax over the last axis) agree
    with Keras on at least `min_agreement` of the samples.

    Args:
      tfl: bytes from `to_tflite`.
      qmodel: the QAT model it was exported from.
      data: optional float inputs for the agreement check: an array for a one-input model;
        for several inputs a list in `qmodel.inputs` order or a dict keyed by input names.
      labels: optional integer labels for `data` (adds accuracies to the report): an array
        for a one-output model; for several outputs a list (one array or None per output, in
        `qmodel.outputs` order) or a dict keyed by output names.
      strict: raise `ExportCheckError` on any failure (default); False only reports.
      min_agreement: required fraction of samples with the same argmax, on every output.

    Returns:
      `TfliteReport` (per-output agreement in `outputs`).

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
        labels = _check_labels(labels, qmodel, len(data[0]))
    interpreter = load_interpreter(tfl)
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
            found = filters(read_model(tfl))
        except (ValueError, IndexError, TypeError, KeyError, AttributeError) as error:
            raise InvalidTfliteError(f"tfl could not be read: {error}") from error
    kernels, unmatched = _check_kernels(qmodel, found)

    outputs, samples = [], 0
    if data is not None:
        samples = len(data[0])
        keras_outs = _keras_outputs(qmodel, data)
        with litert_errors("could not be run on the data"):
            in_details = io_details(
                interpreter, "inputs", qmodel.input_names, _input_shapes(qmodel)
            )
            out_details = io_details(
                interpreter, "outputs", qmodel.output_names, [o.shape[1:] for o in qmodel.outputs]
            )
            tflite_outs = _run(interpreter, data, in_details, out_details)
        for name, keras_out, tflite_out, detail, label in zip(
            qmodel.output_names, keras_outs, tflite_outs, out_details, labels, strict=True
        ):
            keras_pred, tflite_pred = keras_out.argmax(-1), tflite_out.argmax(-1)
            outputs.append(
                OutputAgreement(
                    output=name,
                    agreement=float(np.mean(keras_pred == tflite_pred)),
                    keras_accuracy=None if label is None else float(np.mean(keras_pred == label)),
                    tflite_accuracy=(
                        None if label is None else float(np.mean(tflite_pred == label))
                    ),
                    disagreement_margin=_disagreement_margin(
                        keras_out, keras_pred != tflite_pred, _output_step(detail)
                    ),
                )
            )
    single = outputs[0] if len(outputs) == 1 else None
    report = TfliteReport(
        ops=op_names,
        float_ops=float_ops,
        kernels=kernels,
        unmatched_layers=unmatched,
        samples=samples,
        agreement=min((o.agreement for o in outputs), default=1.0),
        keras_accuracy=single.keras_accuracy if single else None,
        tflite_accuracy=single.tflite_accuracy if single else None,
        disagreement_margin=max((o.disagreement_margin for o in outputs), default=0.0),
        outputs=outputs,
    )
    failures = report.failures()
    for output in outputs:
        if output.agreement < min_agreement:
            where = f"on output {output.output!r} " if len(outputs) > 1 else ""
            failures.append(
                f"TFLite agrees with Keras {where}on {output.agreement:.2%} < {min_agreement:.0%}"
            )
    if strict and failures:
        raise ExportCheckError("tfl is not an exact export of qmodel: " + "; ".join(failures))
    return report
