"""TFLite Micro models that store each trained kernel as its codebook indices: the int8
export of `to_tflite`, rewritten by the `tflite-micro` compression tool so that every tfquant
kernel is a bit-packed look-up table (LUT) index tensor, or a pruning bitmask plus its
non-zero values, which TFLM's DECODE operator expands before the layer runs.

What TFLM stores (its `decode_state_lut` / `decode_state_prune` kernels): a LUT holds values
in the tensor's own type, so here the int8 codes; one table for the tensor, or one per output
channel. Its runtime reads a single table correctly only for a tensor with one scale (a
per-layer codebook); a tensor with per-channel scales (per-channel codebooks, and
BatchNorm-folded convs, whose codes are the same in every channel) gets one table per channel,
all as long as the longest (shorter ones padded with 0; the header's stride says how long), so
a channel using fewer values than others decodes correctly.
The pruning format is one bit per weight (1: the value follows, 0: the zero point),
most significant bit first, then the non-zero values in order: about 1 bit per weight plus
8 per non-zero, so it beats a 2-bit LUT only below 1/8 density.
"""

import contextlib
import dataclasses
import importlib
import io
import math
import warnings

import numpy as np

from tfquant.export.flatbuffer import read_model, validate
from tfquant.export.micro import load_micro, run_micro

#: What `to_micro` may store a kernel as.
ENCODINGS = ("lut", "prune", "smallest")
#: The widest LUT index TFLM's DECODE reads (bits); a kernel needing more stays int8.
MAX_INDEX_BITS = 7
_DECODE_OP = "TFLM_DECODE"
_DCM_BYTES = 16  # DECODE Common Metadata header in front of every ancillary tensor
_LUT, _PRUNE = 0, 2  # DCM decode types
_PER_TENSOR_AXIS = 0xF
_PRUNE_VERSION = 1  # DCM byte 4 of a pruning table: its format version
_INT8 = 9  # TensorType.INT8 in the TFLite schema


class MicroCompressionError(AssertionError):
    """The compressed model does not compute what the int8 model computes, or its kernels
    do not decode to the trained codes (the message says which)."""


@dataclasses.dataclass
class CompressedKernel:
    """How one tfquant kernel is stored in the TFLM file."""

    layer: str  # the QuantizeWrapper's name
    tensor: str  # the kernel tensor's name in the int8 file
    encoding: str  # "lut per tensor", "lut per channel", "prune" or "int8"
    weights: int
    levels: int  # values the codebook allows
    index_bits: int | None  # LUT index width; None for prune / int8
    stored_bytes: int  # encoded tensor + ancillary (DCM, tables or values); int8: weights
    table_values: list | None = None  # sorted distinct values of the LUT tables read back
    codes_read_back: bool = False  # the file's kernel decodes to the int8 export's codes

    def get_config(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class MicroCompressionReport:
    """What `to_micro` wrote and proved.

    Example:
      >>> report = MicroCompressionReport(int8_bytes=22560, micro_bytes=11792,
      ...     kernel_weights=38016, kernel_bytes=14352, int8_arena_bytes=5488,
      ...     micro_arena_bytes=5600, samples=100, identical_outputs=True)
      >>> round(report.ratio, 3), round(report.bits_per_weight, 2)
      (0.523, 3.02)
      >>> MicroCompressionReport(**report.get_config()) == report
      True
    """

    int8_bytes: int  # the int8 .tflite file
    micro_bytes: int  # the compressed TFLM file
    kernel_weights: int  # weights of the tfquant kernels
    kernel_bytes: int  # what they take in the compressed file (indices/mask + tables)
    int8_arena_bytes: int
    micro_arena_bytes: int  # TFLM's arena, the expanded kernels in it (TFLM's default)
    samples: int  # inputs run in both models
    identical_outputs: bool
    decode_buffer_bytes: int = 0  # the largest set of kernels one DECODE expands
    split_arena_bytes: int | None = None  # the arena when DECODE expands into its own buffer
    kernels: list = dataclasses.field(default_factory=list)  # CompressedKernel configs
    uncompressed: list = dataclasses.field(default_factory=list)  # layers left int8

    def __post_init__(self):
        self.kernels = [
            k if isinstance(k, CompressedKernel) else CompressedKernel(**k) for k in self.kernels
        ]

    @property
    def ratio(self):
        """Compressed file bytes / int8 file bytes."""
        return self.micro_bytes / self.int8_bytes

    @property
    def bits_per_weight(self):
        """Bits the tfquant kernels take per weight in the compressed file."""
        return 8.0 * self.kernel_bytes / max(1, self.kernel_weights)

    def get_config(self):
        config = dataclasses.asdict(self)
        config["kernels"] = [
            k.get_config() if isinstance(k, CompressedKernel) else dict(k) for k in self.kernels
        ]
        return config


def _compression():
    """The `tflite-micro` compression package's modules (its package attribute `compress` is
    the function, so the module is imported by name)."""
    from tfquant.export.micro import _runtime

    _runtime()  # a clear TargetUnavailableError when tflite-micro is missing
    root = "tflite_micro.tensorflow.lite.micro.compression."
    return {
        name: importlib.import_module(root + name)
        for name in ("compress", "compressor", "decode", "spec", "spec_builder")
    }


def index_bits(levels):
    """LUT index bits for a codebook of `levels` values: ceil(log2(levels)), at least 1.

    >>> [index_bits(n) for n in (2, 3, 8, 9, 128)]
    [1, 2, 3, 4, 7]
    """
    return max(1, math.ceil(math.log2(max(1, levels))))


def prune_encode(values, zero_points=0, axis=0):
    """`(mask, nonzero)`: the TFLM pruning encoding of an integer tensor: one bit per element
    in row-major order, most significant bit of each byte first, 1 where the element differs
    from its channel's zero point; and those elements' values in the same order.

    Args:
      values: the tensor (its dtype is kept for the values).
      zero_points: one zero point, or one per channel along `axis`.
      axis: the channel axis of `zero_points` (0 or the last).

    >>> mask, nonzero = prune_encode(np.array([[0, 3, 0, 0], [0, 0, -1, 0]], np.int8))
    >>> mask.hex(), nonzero.tolist()
    ('42', [3, -1])
    """
    values = np.asarray(values)
    zero_points = np.asarray(zero_points, values.dtype).reshape(-1)
    if zero_points.size > 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        zero_points = zero_points.reshape(shape)
    present = values != zero_points
    return np.packbits(present.reshape(-1)).tobytes(), values[present]


def prune_decode(mask, nonzero, shape, zero_points=0, axis=0):
    """The tensor of shape `shape` that `prune_encode` encoded (the inverse; what TFLM's
    DECODE computes).

    >>> prune_decode(bytes([0x42]), np.array([3, -1], np.int8), (2, 4)).tolist()
    [[0, 3, 0, 0], [0, 0, -1, 0]]
    """
    nonzero = np.asarray(nonzero)
    count = int(np.prod(shape))
    present = np.unpackbits(np.frombuffer(bytes(mask), np.uint8))[:count].astype(bool)
    if present.sum() != nonzero.size:
        raise ValueError(
            f"the pruning mask marks {int(present.sum())} values but {nonzero.size} follow"
        )
    zero_points = np.asarray(zero_points, nonzero.dtype).reshape(-1)
    out = np.empty(shape, nonzero.dtype)
    if zero_points.size > 1:
        view = [1] * len(shape)
        view[axis] = -1
        out[...] = zero_points.reshape(view)
    else:
        out[...] = zero_points[0] if zero_points.size else 0
    flat = out.reshape(-1)
    flat[present] = nonzero
    return flat.reshape(shape)


class PruneEncoder:
    """TFLM's pruning encoder as a plugin of the `tflite-micro` compression tool (its own is a
    stub): the encoded tensor is `prune_encode`'s bitmask, the ancillary tensor a 16-byte
    DECODE header (type 2, version 1; byte 4: the pruning format's version, 1) followed by
    the non-zero values in the tensor's type.
    Zero points come from the tensor's quantization (per channel along its quantized axis)."""

    def __init__(self, modules):
        self._modules = modules

    @property
    def decode_type(self):
        return self._modules["decode"].DecodeType.PRUNING

    def compress(self, tensor, method):
        compressor = self._modules["compressor"]
        if tensor.array is None:
            raise compressor.CompressionError("Tensor has no data to compress")
        quantization = tensor.quantization
        zero_points = 0 if quantization is None else quantization.zero_points
        axis = 0 if quantization is None or quantization.axis is None else quantization.axis
        mask, nonzero = prune_encode(tensor.array, zero_points, axis)
        header = self._modules["decode"].DecodeCommonMetadata(
            decode_type=self.decode_type, user_data=bytes([_PRUNE_VERSION]) + bytes(11)
        )
        return compressor.CompressionResult(
            encoded_data=mask, ancillary_data=header.to_bytes() + nonzero.tobytes()
        )


@contextlib.contextmanager
def _prune_encoder(modules):
    """Registers `PruneEncoder` in the compression tool's plugin table for one call."""
    table = modules["compress"]._COMPRESSORS
    method = modules["spec"].PruningCompression
    saved = table.get(method)
    table[method] = PruneEncoder(modules)
    try:
        yield
    finally:
        table[method] = saved


def _lut_bytes(weights, bits, tables, table_length):
    return math.ceil(weights * bits / 8) + _DCM_BYTES + tables * table_length


def _prune_bytes(codes):
    return math.ceil(codes.size / 8) + _DCM_BYTES + int(np.count_nonzero(codes))


def _matched(found, kernels):
    """The `ExactKernel` whose codes the file's filter holds (per channel, or negated where a
    BatchNorm factor is negative), or None."""
    from tfquant.export.rewrite import _candidates

    if found.codes is None:
        return None
    stored = np.moveaxis(np.asarray(found.codes, np.int64), found.axis, 0)
    stored = stored.reshape(len(stored), -1)
    for kernel in _candidates(kernels, found.name, found.shape):
        if kernel.channel_axis != found.axis:
            continue
        trained = np.moveaxis(kernel.codes, kernel.channel_axis, 0).reshape(len(stored), -1)
        same = np.all(stored == trained, axis=1) | np.all(stored == -trained, axis=1)
        if np.all(same):
            return kernel
    return None


def _plan(model, kernels, encoding):
    """`(specs, plans, uncompressed)`: per tfquant kernel of the int8 `model` (a `ModelT`),
    the compression tool's spec entry and what is expected of it."""
    from tfquant.export.rewrite import filters

    modules = _compression()
    spec = modules["spec"]
    builder = modules["spec_builder"].SpecBuilder()
    prune_specs, plans, uncompressed, collapse = [], [], [], []
    for found in filters(model):
        kernel = _matched(found, kernels)
        if kernel is None or found.stored_type != "INT8":
            continue
        graph = model.subgraphs.index(found.subgraph)
        index = found.subgraph.tensors.index(found.tensor)
        codes = np.asarray(found.codes, np.int64)
        plan = CompressedKernel(
            layer=kernel.layer,
            tensor=found.name,
            encoding="int8",
            weights=int(codes.size),
            levels=int(kernel.levels),
            index_bits=None,
            stored_bytes=int(codes.size),
        )
        plans.append((plan, found, codes))
        candidates = []
        if encoding in ("lut", "smallest") and kernel.levels <= 2**MAX_INDEX_BITS:
            bits = index_bits(kernel.levels)
            channels = np.moveaxis(codes, found.axis, 0).reshape(codes.shape[found.axis], -1)
            # TFLM decodes a per-channel-quantized tensor (several scales) with one table per
            # channel: a single table over such a tensor runs, but computes other outputs
            # (seen in the pinned runtime; the proof below catches it).
            scales = np.asarray([] if found.scales is None else found.scales)
            per_channel = scales.size > 1 and not np.all(scales == scales[0])
            if scales.size > 1 and not per_channel:
                collapse.append((graph, index))  # one scale in all channels: store it once
            if not per_channel and np.unique(codes).size <= 2**bits:
                size = _lut_bytes(codes.size, bits, 1, np.unique(codes).size)
                candidates.append((size, "lut per tensor", bits, spec.PerTensor()))
            elif max(np.unique(row).size for row in channels) <= 2**bits:
                length = max(np.unique(row).size for row in channels)
                size = _lut_bytes(codes.size, bits, len(channels), length)
                candidates.append((size, "lut per channel", bits, spec.PerChannel(found.axis)))
        if encoding in ("prune", "smallest") and _prune_bytes(codes) < codes.size:
            candidates.append((_prune_bytes(codes), "prune", None, None))
        if not candidates:
            if encoding != "prune" and kernel.levels > 2**MAX_INDEX_BITS:
                reason = f"its codebook has {kernel.levels} values (a LUT addresses 128 at most)"
            else:
                reason = "it is too dense for pruning to save bytes"
            uncompressed.append(f"{kernel.layer} ({reason})")
            continue
        size, plan.encoding, plan.index_bits, mode = min(candidates, key=lambda c: c[0])
        if plan.encoding == "prune":
            prune_specs.append(spec.Tensor(graph, index, [spec.PruningCompression()]))
        else:
            builder.add_tensor(subgraph=graph, tensor=index).with_lut(plan.index_bits, mode)
    return builder.build() + prune_specs, plans, uncompressed, collapse


def _compress(tfl, specs, collapse=()):
    """The compression tool's output for `specs`, with the prune encoder registered and its
    chatter (a print when a LUT index is wider than needed, size warnings) kept quiet."""
    modules = _compression()
    with (
        _prune_encoder(modules),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        if collapse:
            tfl = _one_scale(modules, tfl, collapse)
        compressed = modules["compress"].compress(bytes(tfl), specs)
        return _without_stale_quantization(modules, compressed)


def _one_scale(modules, tfl, tensors):
    """`tfl` with each of `tensors` ((subgraph, tensor) indices), whose per-channel scales
    are all equal, quantized per tensor: TFLM's LUT decoder takes one table per scale."""
    editor = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.model_editor")
    model = editor.read(bytes(tfl))
    for graph, index in tensors:
        tensor = model.subgraphs[graph].tensors[index]
        scale = float(np.asarray(tensor._fb.quantization.scale)[0])
        tensor.quantization = editor.Quantization(scales=scale, zero_points=0)
        tensor._fb.quantization.scale = [scale]
        tensor._fb.quantization.zeroPoint = [0]
        tensor._fb.quantization.quantizedDimension = 0
    return bytes(modules["compress"]._apply_flatbuffer_alignment(model.build()))


def _without_stale_quantization(modules, tfl):
    """The compression tool leaves a per-channel kernel's scales on its encoded UINT8 index
    tensor (a vector of another length), which `flatbuffer.validate` rightly rejects: they
    are dropped here, and the file re-aligned by the tool's own step."""
    editor = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.model_editor")
    model = editor.read(bytes(tfl))
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if getattr(op, "custom_code", None) != _DECODE_OP:
                continue
            for encoded in op.inputs[0::2]:
                if encoded._fb.quantization is not None or encoded.quantization is not None:
                    encoded.quantization = None
                    encoded._fb.quantization = None
                    changed = True
    if not changed:
        return bytes(tfl)
    return bytes(modules["compress"]._apply_flatbuffer_alignment(model.build()))


def has_decode_ops(tfl):
    """True when the .tflite bytes `tfl` hold TFLM DECODE operators (a `to_micro` model)."""
    model = read_model(tfl)
    return any(_custom_name(code) == _DECODE_OP for code in model.operatorCodes or ())


def _custom_name(code):
    name = code.customCode
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else (name or "")


def _int8_buffer(model, tensor):
    data = model.buffers[tensor.buffer].data
    return np.asarray([] if data is None else data, np.uint8)


def unpack_indices(data, bits, count):
    """`count` unsigned `bits`-wide indices packed most significant bit first (the LUT
    encoding TFLM reads).

    >>> unpack_indices(bytes([0b00101001, 0b11000000]), 3, 4).tolist()
    [1, 2, 3, 4]
    """
    bits, count = int(bits), int(count)
    bitstream = np.unpackbits(np.frombuffer(bytes(data), np.uint8))[: count * bits]
    if bitstream.size < count * bits:
        raise ValueError(f"{count} indices of {bits} bits need {count * bits} bits")
    weights = 1 << np.arange(bits - 1, -1, -1)
    return bitstream.reshape(count, bits) @ weights


def decoded_kernels(micro_tfl):
    """What TFLM's DECODE operators of `micro_tfl` expand each compressed tensor to:
    `{decoded tensor name: (values, tables or None)}`, decoded here from the file's encoded
    and ancillary buffers (LUT and pruning, int8), with the LUT tables as int8 arrays.

    Raises:
      InvalidTfliteError: `micro_tfl` is not a valid flatbuffer. ValueError: a DECODE's
        inputs or ancillary data are not a LUT or pruning table tfquant wrote, or do not fit
        the tensor they decode to (the message names `micro_tfl` and the tensor).
    """
    model = read_model(micro_tfl)
    out = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _custom_name(model.operatorCodes[op.opcodeIndex]) != _DECODE_OP:
                continue
            inputs = [] if op.inputs is None else [int(i) for i in op.inputs]
            outputs = [] if op.outputs is None else [int(i) for i in op.outputs]
            if len(inputs) != 2 * len(outputs):
                raise ValueError(
                    f"micro_tfl: a DECODE has {len(inputs)} inputs for {len(outputs)} outputs "
                    "(an encoded and an ancillary tensor per output)"
                )
            for position, output in enumerate(outputs):
                encoded = subgraph.tensors[inputs[2 * position]]
                ancillary = _int8_buffer(model, subgraph.tensors[inputs[2 * position + 1]])
                target = subgraph.tensors[output]
                name = target.name.decode("utf-8", "replace") if target.name else ""
                shape = tuple(int(s) for s in ([] if target.shape is None else target.shape))
                data = _int8_buffer(model, encoded).tobytes()
                try:
                    out[name] = _decode(ancillary, data, shape, target)
                except ValueError as error:
                    raise ValueError(f"micro_tfl: DECODE of {name!r}: {error}") from error
    return out


def _decode(ancillary, data, shape, target):
    if target.type != _INT8:
        raise ValueError(f"decodes to tensor type {target.type}, not INT8")
    if ancillary.size < _DCM_BYTES or ancillary[1] != 1:
        raise ValueError("no version-1 DECODE header")
    count = int(np.prod(shape))
    quantization = target.quantization
    zero_points = np.asarray(
        [0] if quantization is None or quantization.zeroPoint is None else quantization.zeroPoint
    )
    axis = 0 if quantization is None else int(quantization.quantizedDimension)
    if zero_points.size > 1 and not (0 <= axis < len(shape) and shape[axis] == zero_points.size):
        raise ValueError(f"{zero_points.size} zero points along axis {axis} of shape {shape}")
    if ancillary[0] == _PRUNE:
        if ancillary[4] != _PRUNE_VERSION:
            raise ValueError(f"pruning format version {int(ancillary[4])}")
        if len(data) < math.ceil(count / 8):
            raise ValueError(f"a pruning mask of {len(data)} bytes for {count} values")
        values = ancillary[_DCM_BYTES:].view(np.int8)
        return prune_decode(data, values, shape, zero_points, axis), None
    if ancillary[0] != _LUT:
        raise ValueError(f"decode type {int(ancillary[0])} is not LUT/prune")
    params = int(ancillary[5])
    bits, table_axis, stride = params & 0x7, params >> 4, int(ancillary[6])
    tables = ancillary[_DCM_BYTES:].view(np.int8)
    if not 1 <= bits <= MAX_INDEX_BITS or stride < 1 or tables.size % stride:
        raise ValueError(
            f"a LUT of {bits}-bit indices, stride {stride} and {tables.size} table bytes"
        )
    tables = tables.reshape(-1, stride)
    if table_axis == _PER_TENSOR_AXIS:
        channels = 1
    elif table_axis < len(shape):
        channels = shape[table_axis]
    else:
        raise ValueError(f"LUT axis {table_axis} of a tensor of shape {shape}")
    if len(tables) < channels:
        raise ValueError(f"{len(tables)} LUTs for {channels} channels")
    indices = unpack_indices(data, bits, count).reshape(shape)
    if indices.size and indices.max() >= stride:
        raise ValueError(f"an index {int(indices.max())} past a table of {stride} values")
    if table_axis == _PER_TENSOR_AXIS:
        return tables[0][indices], tables
    moved = np.moveaxis(indices, table_axis, 0)
    values = np.stack([tables[c][row] for c, row in enumerate(moved)])
    return np.moveaxis(values, 0, table_axis), tables


def _check_arguments(encoding, int8_tflite, arena_size):
    if encoding not in ENCODINGS:
        raise ValueError(
            f"encoding must be one of {list(ENCODINGS)}. Received: encoding={encoding!r}"
        )
    if int8_tflite is not None and not isinstance(int8_tflite, (bytes, bytearray)):
        raise TypeError(
            "int8_tflite must be None or the bytes of to_tflite's output for qmodel. Received: "
            f"{type(int8_tflite).__name__}"
        )
    if arena_size is not None and (
        isinstance(arena_size, bool) or not isinstance(arena_size, int) or arena_size < 1024
    ):
        raise ValueError(
            f"arena_size must be None or an integer >= 1024. Received: arena_size={arena_size!r}"
        )


def to_micro(qmodel, representative_data, encoding="lut", int8_tflite=None, arena_size=None):
    """A TensorFlow Lite Micro model of `qmodel` whose tfquant kernels are stored as their
    trained codebook indices, proved on `representative_data` to compute exactly what the
    int8 model computes.

    Each tfquant kernel of the int8 export (`to_tflite`, batch 1) becomes, with
    `encoding="lut"`, a LUT of ceil(log2(levels)) bits per weight: one table over the int8
    codes for a kernel with one scale (a per-layer codebook), one table per output channel
    for a kernel with per-channel scales (per-channel codebooks, BatchNorm-folded convs).
    `"prune"` stores a bitmask and the non-zero codes (about 1 bit per weight plus 8 per
    non-zero; for sparse kernels), `"smallest"` whichever of the two is smaller per kernel.
    (TFLM's DECODE takes constant inputs only, so LUT and pruning do not chain on one
    tensor.) A kernel whose codebook has more than 128 values stays int8, with a warning.
    TFLM's DECODE operator expands each kernel just before its layer runs. `qmodel` is not
    modified.

    Then, every time: both models are run in the TFLM interpreter on `representative_data`
    (up to 200 samples) and must give identical int8 outputs, and every compressed kernel,
    decoded from the file's own buffers, must equal the int8 export's codes.

    Args:
      qmodel: a one-input model from `tfq.quantize_model`.
      representative_data: float inputs (N, *input_shape), N >= 1: the converter's
        calibration data (as in `to_tflite`) and the proof's inputs.
      encoding: "lut" (default), "prune" or "smallest".
      int8_tflite: `to_tflite(qmodel, ..., batch_size=1)` bytes if you already have them
        (saves a conversion); its tfquant kernels are found by their trained codes.
      arena_size: TFLM arena bytes (see `micro_report`).

    Returns:
      `(micro_tfl, report)`: the compressed flatbuffer bytes and a `MicroCompressionReport`.

    Raises:
      TypeError / ValueError: a bad argument (named in the message).
      TargetUnavailableError: `tflite-micro` is not installed.
      MicroCompressionError: the compressed model's outputs or kernels differ.

    Example:
      >>> import tfquant as tfq
      >>> from tfquant.models.datasets import load
      >>> (x, _), _ = load("digits", limit=(64, 8))
      >>> layers = tfq.keras.layers
      >>> model = tfq.keras.Sequential([layers.Flatten(input_shape=(8, 8, 1)), layers.Dense(10)])
      >>> qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
      >>> micro_tfl, report = tfq.export.to_micro(qmodel, x[:16])
      >>> report.identical_outputs, [(k.encoding, k.index_bits) for k in report.kernels]
      (True, [('lut per tensor', 3)])
    """
    from tfquant._keras import check_keras2_model
    from tfquant.export.folding import exact_kernels
    from tfquant.export.tflite import _check_representative, export_copy, to_tflite

    check_keras2_model(qmodel, "qmodel")
    _check_arguments(encoding, int8_tflite, arena_size)
    if len(qmodel.inputs) != 1:
        raise ValueError(
            "to_micro takes one-input models (TFLite Micro is run here on one input). "
            f"Received: qmodel with {len(qmodel.inputs)} inputs"
        )
    data = _check_representative(representative_data, qmodel)[0]
    if int8_tflite is None:
        int8_tflite = to_tflite(qmodel, data, batch_size=1)
    int8_tflite = bytes(int8_tflite)
    kernels, _ = exact_kernels(export_copy(qmodel))
    specs, plans, uncompressed, collapse = _plan(read_model(int8_tflite), kernels, encoding)
    if not plans:
        raise ValueError(
            "int8_tflite holds none of qmodel's tfquant kernels as their trained int8 codes "
            "(not to_tflite's output for this model, or a model without tfquant quantizers)"
        )
    if uncompressed:
        warnings.warn(
            f"These kernels stay int8 in the TFLite Micro model: {'; '.join(uncompressed)}.",
            stacklevel=2,
        )
    micro_tfl = _compress(int8_tflite, specs, collapse) if specs else int8_tflite
    validate(micro_tfl)
    decode_buffer = _read_back(micro_tfl, plans)
    samples = data[:200]
    int8_interpreter, int8_arena = load_micro(int8_tflite, arena_size)
    micro_interpreter, micro_arena = load_micro(micro_tfl, arena_size)
    expected = run_micro(int8_interpreter, samples)
    got = run_micro(micro_interpreter, samples)
    if not np.array_equal(expected, got):
        differ = int(np.sum(np.any(expected != got, axis=1)))
        raise MicroCompressionError(
            f"the compressed TFLite Micro model's int8 outputs differ from the int8 model's on "
            f"{differ} of {len(samples)} samples (largest difference "
            f"{int(np.max(np.abs(expected - got)))} steps)"
        )
    weights = sum(plan.weights for plan, _, _ in plans)
    report = MicroCompressionReport(
        int8_bytes=len(int8_tflite),
        micro_bytes=len(micro_tfl),
        kernel_weights=weights,
        kernel_bytes=sum(plan.stored_bytes for plan, _, _ in plans),
        int8_arena_bytes=int8_arena.arena_bytes,
        micro_arena_bytes=micro_arena.arena_bytes,
        samples=len(samples),
        identical_outputs=True,
        kernels=[plan for plan, _, _ in plans],
        uncompressed=uncompressed,
        decode_buffer_bytes=decode_buffer,
    )
    if decode_buffer:
        # The arena without the expanded kernels: DECODE writes into separate memory (on a
        # device, any RAM that is free while the model runs), as `alt_decompression_memory`.
        try:
            report.split_arena_bytes = load_micro(micro_tfl, arena_size, decode_buffer)[
                1
            ].arena_bytes
        except ValueError:
            report.split_arena_bytes = None
    return micro_tfl, report


def _read_back(micro_tfl, plans):
    """Decodes every compressed kernel from `micro_tfl` and requires the int8 export's codes;
    fills each plan's stored bytes and table values. Returns the bytes the largest DECODE
    expands (each output rounded up to 16 bytes, TFLM's alignment)."""
    decoded = decoded_kernels(micro_tfl)
    model = read_model(micro_tfl)
    sizes, largest = {}, 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _custom_name(model.operatorCodes[op.opcodeIndex]) != _DECODE_OP:
                continue
            inputs = [int(i) for i in op.inputs]
            expanded = 0
            for position, output in enumerate(op.outputs):
                target = subgraph.tensors[int(output)]
                expanded += -(-int(np.prod(target.shape)) // 16) * 16
                name = target.name.decode("utf-8", "replace")
                sizes[name] = sum(
                    _int8_buffer(model, subgraph.tensors[inputs[2 * position + k]]).size
                    for k in (0, 1)
                )
            largest = max(largest, expanded)
    for plan, found, codes in plans:
        if plan.encoding == "int8":
            continue
        name = f"{plan.tensor}_decoded"
        if name not in decoded:
            raise MicroCompressionError(
                f"the kernel of layer {plan.layer!r} ({plan.tensor!r}) has no DECODE in the "
                "compressed model"
            )
        values, tables = decoded[name]
        if values.shape != codes.shape or not np.array_equal(values, codes):
            raise MicroCompressionError(
                f"the kernel of layer {plan.layer!r} decodes to other values than its trained "
                "codes in the compressed model"
            )
        plan.codes_read_back = True
        plan.stored_bytes = int(sizes[name])
        if tables is not None:
            plan.table_values = sorted(int(v) for v in np.unique(tables))
            moved = np.moveaxis(codes, found.axis, 0).reshape(codes.shape[found.axis], -1)
            rows = [codes.reshape(-1)] if len(tables) == 1 else list(moved)
            for table, row in zip(tables, rows, strict=True):
                used = np.unique(row)
                if not np.array_equal(np.sort(table[: used.size]), used):
                    raise MicroCompressionError(
                        f"a LUT of layer {plan.layer!r} read back from the compressed model "
                        f"holds {table.tolist()}, not its trained codes {used.tolist()}"
                    )
    return largest
