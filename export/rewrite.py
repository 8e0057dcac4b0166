"""Writes the exact kernels into a converted .tflite: for every CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED and TRANSPOSE_CONV whose filter comes from a tfquant kernel, and every GATHER
whose table comes from a tfquant Embedding, the trained integer codes (int8, or INT4 packed two
per byte), one scale per output channel, and the int32 bias at the matching scale (input scale
× channel scale), through the flatbuffer schema's own object API. (A Conv1D is a CONV_2D
between reshapes; a Dense on 3-D inputs a FULLY_CONNECTED between reshapes, its bias a
separate ADD; a GATHER's output takes its table's scale.)

Why after conversion: the converter folds BatchNorm (and any per-channel constant factor such
as a Rescaling) into the kernel, but then re-quantizes the folded floats per channel at
max|w_c|/127, and the trained codebook is lost (TF issue 43882); it also has one global
per-channel switch for a whole model. Here the converter decides the graph (which ops exist,
what it folded, the activation scales), and tfquant decides the kernel bits.

Which Keras layer a filter belongs to: the layer's name in the tensor name, confirmed by the
values: the converter's dequantized filter must equal the exact kernel, folded by the
following BatchNorm or not, within the converter's own rounding; where the converter folded
a factor tfquant does not know (a Rescaling before the layer, say), the per-channel factor is
estimated from the converter's filter by least squares and must reproduce it to the same
bound. A filter that matches no hypothesis is left as the converter wrote it, and reported.
"""

import dataclasses

import numpy as np

from tfquant.export.flatbuffer import read_model

_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "GATHER")
#: Op -> (filter input, data input, bias input); None where the op has no such input.
_INPUTS = {
    "CONV_2D": (1, 0, 2),
    "DEPTHWISE_CONV_2D": (1, 0, 2),
    "FULLY_CONNECTED": (1, 0, 2),
    "TRANSPOSE_CONV": (1, 2, 3),  # (output shape, filter, input, bias)
    "GATHER": (0, None, None),  # (table, indices): the output shares the table's scale
}
#: The first op version that takes INT4 filters (read from the converter's INT4 output).
_INT4_VERSIONS = {"CONV_2D": 7, "DEPTHWISE_CONV_2D": 7, "FULLY_CONNECTED": 10}
_INT32 = np.iinfo(np.int32)


class ExportError(ValueError):
    """The exact kernels cannot be written into the file (the message says which and why)."""


@dataclasses.dataclass
class WrittenKernel:
    """What `write_exact_kernels` did to one kernel op of the file."""

    layer: str  # QuantizeWrapper name
    tensor: str  # flatbuffer tensor name of the filter
    op: str  # CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV or GATHER
    fold: str  # "none", "batchnorm <name>", or "converter factor" (estimated)
    stored_type: str  # "INT8" or "INT4"
    converter_codes: int  # distinct codes the converter had written
    codes: int  # distinct codes written now


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _op_names(schema):
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _type_names(schema):
    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def pack_int4(codes):
    """int codes in [-8, 7] -> uint8 array, two codes per byte, the first of each pair in the
    low nibble (TFLite's packed INT4 layout).

    >>> pack_int4(np.array([1, -1, 7])).tobytes().hex()
    'f107'
    """
    flat = np.asarray(codes, np.int64).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, 0)
    nibbles = (flat & 0xF).astype(np.uint8)
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(data, count):
    """Inverse of `pack_int4`: `count` signed codes.

    >>> unpack_int4(pack_int4(np.array([1, -1, 7])), 3).tolist()
    [1, -1, 7]
    """
    data = np.asarray(data, np.uint8)
    nibbles = np.empty(data.size * 2, np.int64)
    nibbles[0::2] = data & 0xF
    nibbles[1::2] = data >> 4
    nibbles = np.where(nibbles > 7, nibbles - 16, nibbles)
    return nibbles[:count]


def _codes_of(tensor, buffer, types):
    shape = tuple(int(s) for s in tensor.shape)
    count = int(np.prod(shape)) if shape else 1
    data = np.asarray(buffer.data, np.uint8)
    kind = types[tensor.type]
    if kind == "INT4":
        return unpack_int4(data, count).reshape(shape)
    if kind == "INT8":
        return data.view(np.int8).astype(np.int64).reshape(shape)
    if kind == "INT32":
        return data.view("<i4").astype(np.int64).reshape(shape)
    return None


def _scales_of(tensor, channels, axis):
    quantization = tensor.quantization
    if quantization is None or quantization.scale is None or len(quantization.scale) == 0:
        return None
    scales = np.asarray(quantization.scale, np.float64)
    if scales.size == 1:
        return np.full(channels, scales[0])
    if scales.size != channels or int(quantization.quantizedDimension) != axis:
        return None
    return scales


def _zero_points(tensor, shape, axis):
    """The tensor's zero points, shaped to broadcast along `axis` (0 where it has none)."""
    points = getattr(tensor.quantization, "zeroPoint", None)
    if points is None or len(points) == 0:
        return 0
    points = np.asarray(points, np.int64)
    if points.size == 1:
        return int(points[0])
    return points.reshape(_view(len(shape), axis)) if points.size == shape[axis] else 0


def _view(ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def segments(name):
    """The '/'- and ';'-separated parts of a converter tensor name (layer names among them)."""
    return {part for piece in name.split(";") for part in piece.split("/")}


def _least_squares_factor(kernel, converter, axis):
    """Per-channel g minimizing |converter − g · kernel| (kernel = exact unfolded values)."""
    moved_k = np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)
    moved_c = np.moveaxis(converter, axis, 0).reshape(kernel.shape[axis], -1)
    norms = np.sum(moved_k * moved_k, axis=1)
    return np.where(
        norms > 0, np.sum(moved_k * moved_c, axis=1) / np.where(norms > 0, norms, 1), 1.0
    )


def _matches(expected, converter, converter_scales, axis):
    """True when `converter` (the converter's dequantized filter) is `expected` up to the
    converter's rounding: half its step per channel (plus float32 noise)."""
    view = _view(expected.ndim, axis)
    error = np.abs(converter - expected)
    peak = np.max(np.abs(np.moveaxis(expected, axis, 0).reshape(expected.shape[axis], -1)), axis=1)
    bound = 0.5 * converter_scales * 1.001 + 1e-6 * peak + 1e-12
    return bool(np.all(error <= bound.reshape(view)))


def _candidates(kernels, name, shape):
    named = [k for k in kernels if k.layer in segments(name) and k.codes.shape == shape]
    return named or [k for k in kernels if k.codes.shape == shape]


def _buffer_users(model):
    users = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    return users


def _own_buffer(model, tensor, users, schema):
    """Gives `tensor` a buffer no other tensor uses (the converter may share constants)."""
    if users.get(tensor.buffer, 0) > 1:
        users[tensor.buffer] -= 1
        model.buffers.append(schema.BufferT())
        tensor.buffer = len(model.buffers) - 1
        users[tensor.buffer] = 1
    return model.buffers[tensor.buffer]


def _quantization(schema, scales, axis):
    params = schema.QuantizationParametersT()
    scales = np.asarray(scales, np.float32)
    if np.all(scales == scales[0]):
        scales = scales[:1]
    params.scale = scales
    params.zeroPoint = np.zeros(scales.size, np.int64)
    params.quantizedDimension = int(axis) if scales.size > 1 else 0
    return params


@dataclasses.dataclass
class Filter:
    """The constant filter (a GATHER's table) of one kernel op of a .tflite file."""

    op: str  # one of _KERNEL_OPS
    name: str  # the filter tensor's name
    shape: tuple
    axis: int  # TFLite's output-channel axis (3 for depthwise, else 0)
    stored_type: str  # the tensor type: "INT8", "INT4", "FLOAT32", ...
    codes: np.ndarray | None  # integer codes (None for a float filter)
    scales: np.ndarray | None  # one per output channel (None when not quantized)
    values: np.ndarray  # the float values it stands for
    tensor: object = dataclasses.field(repr=False, default=None)  # schema TensorT
    operator: object = dataclasses.field(repr=False, default=None)  # schema OperatorT
    subgraph: object = dataclasses.field(repr=False, default=None)  # schema SubGraphT


def filters(model):
    """Every constant filter of a CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED or
    TRANSPOSE_CONV, and every constant GATHER table, of `model` (a `ModelT` from
    `flatbuffer.read_model`), in op order."""
    schema = _schema()
    op_names, types = _op_names(schema), _type_names(schema)
    out = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            op_name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            inputs = [int(i) for i in op.inputs]
            if op_name not in _KERNEL_OPS or len(inputs) < 2:
                continue
            position = _INPUTS[op_name][0]
            if inputs[position] < 0:
                continue
            tensor = subgraph.tensors[inputs[position]]
            buffer = model.buffers[tensor.buffer]
            if buffer.data is None or len(buffer.data) == 0:
                continue  # not a constant
            axis = 3 if op_name == "DEPTHWISE_CONV_2D" else 0
            shape = tuple(int(s) for s in tensor.shape)
            kind = types.get(tensor.type, "UNKNOWN")
            codes = _codes_of(tensor, buffer, types) if kind in ("INT8", "INT4") else None
            scales = _scales_of(tensor, shape[axis], axis) if codes is not None else None
            if codes is not None and scales is not None:
                # GATHER tables come asymmetric (a zero point); kernel filters symmetric.
                values = (codes - _zero_points(tensor, shape, axis)) * scales.reshape(
                    _view(len(shape), axis)
                )
            elif kind == "FLOAT32":
                values = np.asarray(buffer.data, np.uint8).view("<f4").astype(np.float64)
                values = values.reshape(shape)
            else:
                continue
            name = tensor.name.decode("utf-8", "replace") if tensor.name else ""
            out.append(
                Filter(
                    op_name, name, shape, axis, kind, codes, scales, values, tensor, op, subgraph
                )
            )
    return out


def hypotheses(kernel, values, scales=None):
    """`(fold, factor, offset, keras bias usable)` for each way `values` (a file's filter, as
    floats) may stand for `kernel`: the following BatchNorm folded, nothing folded, or a
    per-channel factor the converter folded (estimated by least squares). With `scales` (the
    converter's per-channel steps) only those that reproduce `values` within half a step."""
    axis = kernel.channel_axis
    candidates = []
    if kernel.batchnorm is not None:
        candidates.append(
            (
                f"batchnorm {kernel.batchnorm}",
                kernel.batchnorm_factor,
                kernel.batchnorm_offset,
                True,
            )
        )
    candidates.append(("none", None, None, True))
    factor = _least_squares_factor(kernel.values(), values, axis)
    if scales is not None:
        # The converter quantizes a folded kernel per channel at max|w_c · g_c| / 127: that
        # gives |g_c| to float32 precision, where least squares on rounded values does not.
        moved = np.moveaxis(kernel.values(), axis, 0).reshape(len(factor), -1)
        peak = np.max(np.abs(moved), axis=1) if moved.size else np.zeros(len(factor))
        magnitude = np.where(peak > 0, scales * 127.0 / np.where(peak > 0, peak, 1), 0.0)
        factor = np.where(factor < 0, -magnitude, magnitude)
    if np.all(np.isfinite(factor)):
        candidates.append(("converter factor", factor, None, False))
    for candidate in candidates:
        if scales is None or _matches(kernel.values(candidate[1]), values, scales, axis):
            yield candidate


def write_exact_kernels(tfl, kernels):
    """Returns `(bytes, written)`: `tfl` with the exact kernels written in, and one
    `WrittenKernel` per kernel op that was rewritten.

    Args:
      tfl: the converter's .tflite bytes.
      kernels: `folding.ExactKernel`s of the model it was converted from.

    Raises:
      ExportError: a bias does not fit int32 at the exact scale.
    """
    import flatbuffers

    schema = _schema()
    types = _type_names(schema)
    type_codes = {name: code for code, name in types.items()}
    model = read_model(tfl)
    users = _buffer_users(model)
    written = []
    for found in filters(model):
        if found.codes is None or found.scales is None:
            continue
        choice = None
        for kernel in _candidates(kernels, found.name, found.shape):
            if kernel.channel_axis != found.axis:
                continue
            hypothesis = next(hypotheses(kernel, found.values, found.scales), None)
            if hypothesis is not None:
                choice = (kernel, *hypothesis)
                break
        if choice is None:
            continue
        kernel, fold, factor, offset, keras_bias = choice
        codes, scales, bias = kernel.stored(factor, offset)
        subgraph, inputs = found.subgraph, [int(i) for i in found.operator.inputs]
        _, data_input, bias_input = _INPUTS[found.op]
        if found.op == "GATHER":
            if not np.all(scales == scales[0]):
                continue  # GATHER carries one scale; per-channel tables are not quantized
            for output in found.operator.outputs:  # the rows keep the table's scale
                subgraph.tensors[int(output)].quantization = _quantization(schema, scales, 0)
        input_scale = None
        if data_input is not None:
            input_scale = float(
                np.asarray(subgraph.tensors[inputs[data_input]].quantization.scale)[0]
            )
        if bias_input is not None and len(inputs) > bias_input and inputs[bias_input] >= 0:
            bias_tensor = subgraph.tensors[inputs[bias_input]]
            converter_bias = _converter_bias(model, bias_tensor, types, len(scales))
            if converter_bias is not None and (
                not keras_bias or bias is None or not _close_bias(converter_bias, bias, bias_tensor)
            ):
                bias = converter_bias  # the converter folded more into it than we know
            if bias is not None:
                bias_scales = input_scale * scales
                quantized = np.round(bias / bias_scales)
                if np.any(np.abs(quantized) > _INT32.max):
                    raise ExportError(
                        f"the bias of layer {kernel.layer!r} does not fit int32 at the exact "
                        f"scale (input scale {input_scale:.3g} x kernel step): "
                        + (
                            "the input's activation range was never learned; fit the QAT "
                            "model (one epoch is enough) before exporting it."
                            if input_scale < 1e-6
                            else "its kernel steps are too small for its bias; retrain with "
                            "weight decay, or keep that BatchNorm out of the quantized model."
                        )
                    )
                bias_buffer = _own_buffer(model, bias_tensor, users, schema)
                bias_buffer.data = quantized.astype("<i4").view(np.uint8)
                bias_tensor.type = type_codes["INT32"]
                bias_tensor.quantization = _quantization(schema, bias_scales, 0)
        stored_type = "INT4" if kernel.bits == 4 else "INT8"
        filter_buffer = _own_buffer(model, found.tensor, users, schema)
        if stored_type == "INT4":
            filter_buffer.data = pack_int4(codes)
            code = model.operatorCodes[found.operator.opcodeIndex]
            code.version = max(int(code.version), _INT4_VERSIONS[found.op])
        else:
            filter_buffer.data = codes.astype(np.int8).view(np.uint8).reshape(-1)
        found.tensor.type = type_codes[stored_type]
        found.tensor.quantization = _quantization(schema, scales, found.axis)
        written.append(
            WrittenKernel(
                layer=kernel.layer,
                tensor=found.name,
                op=found.op,
                fold=fold,
                stored_type=stored_type,
                converter_codes=int(np.unique(found.codes).size),
                codes=int(np.unique(codes).size),
            )
        )
    builder = flatbuffers.Builder(len(tfl) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), written


def _converter_bias(model, tensor, types, channels):
    codes = _codes_of(tensor, model.buffers[tensor.buffer], types)
    scales = _scales_of(tensor, channels, 0)
    if codes is None or scales is None:
        return None
    return codes * scales


def _close_bias(converter_bias, bias, tensor):
    step = np.asarray(tensor.quantization.scale, np.float64)
    return bool(
        np.all(np.abs(converter_bias - bias) <= 0.5 * step * 1.001 + 1e-5 * np.abs(bias) + 1e-12)
    )
