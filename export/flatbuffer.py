"""Reads what the LiteRT interpreter does not tell: the stored type of every tensor (INT4
kernels are reported as int8 by the interpreter), straight from the .tflite flatbuffer through
the schema module that ships with ai-edge-litert; and `validate`, which every inspection path
runs before a .tflite reaches a native interpreter.

Why `validate`: LiteRT's interpreter runs the flatbuffers Verifier (offsets, vtables, vector
and string bounds), but a structurally valid file can still crash it, and TFLite Micro runs no
Verifier at all. Found by fuzzing (tests/test_fuzz_tflite.py): a .tflite whose root table lost
its `subgraphs` and `operator_codes` fields (two bytes of its vtable zeroed) segfaults the
LiteRT 2.3 Python interpreter's constructor; an operator input index of 16646147 in an
8-tensor model segfaults TFLite Micro's `Interpreter.from_bytes` (LiteRT rejects that one).
`validate` checks the model's meaning in pure Python, where a bad offset can only raise (see its
docstring for the list), and the callers then let LiteRT's Verifier see the file before TFLM.
"""

import dataclasses
import struct

import numpy as np

_IDENTIFIER = b"TFL3"  # flatbuffer file identifier of TFLite models, at bytes 4..8
#: Largest total size of all tensors of a model (constants and activations, counted without
#: the arena's reuse) that `validate` accepts: the bound on what loading a .tflite may
#: allocate. A few-bit model for an edge device needs a tiny fraction of it.
MAX_TENSOR_BYTES = 1 << 31
_MAX_RANK = 16
# Bits per element of each TensorType; None: variable size (strings, resources, variants).
_TYPE_BITS = {
    "FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "STRING": None,
    "BOOL": 8, "INT16": 16, "COMPLEX64": 64, "INT8": 8, "FLOAT64": 64, "COMPLEX128": 128,
    "UINT64": 64, "RESOURCE": None, "VARIANT": None, "UINT32": 32, "UINT16": 16, "INT4": 4,
    "BFLOAT16": 16, "INT2": 2, "UINT4": 4, "FLOAT8_E4M3FN": 8, "FLOAT8_E5M2": 8,
}  # fmt: skip


class InvalidTfliteError(ValueError):
    """The bytes are not a TFLite model that tfquant can inspect: not a flatbuffer, a corrupt
    or truncated one, or one whose contents contradict each other (an index out of range, a
    constant shorter than its shape, ...). The message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of the main subgraph as the flatbuffer stores it."""

    index: int
    name: str
    type: str  # schema TensorType name: "INT8", "INT4", "FLOAT32", ...
    shape: tuple
    shape_signature: tuple  # -1 marks a dynamic dimension
    constant_bytes: int  # bytes of constant data in the file (0 for activations)


def _type_names():
    from ai_edge_litert import schema_py_generated as schema

    return {
        value: name
        for name, value in vars(schema.TensorType).items()
        if not name.startswith("_") and isinstance(value, int)
    }


# What reading a corrupt flatbuffer through the generated schema code can raise.
_READ_ERRORS = (struct.error, IndexError, ValueError, TypeError, UnicodeError, OverflowError)


def _fail(reason):
    raise InvalidTfliteError(f"tfl is not a valid TFLite flatbuffer: {reason}")


def model_bytes(tfl):
    """`tfl` as bytes, after the checks every reader needs: bytes-like, long enough, the TFLite
    file identifier, a root offset inside the data."""
    if not isinstance(tfl, (bytes, bytearray, memoryview)):
        raise TypeError(f"tfl must be the bytes of a .tflite model. Received: {type(tfl).__name__}")
    data = bytes(tfl)
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        _fail(f"the file identifier is {data[4:8]!r}, not {_IDENTIFIER!r}")
    root = struct.unpack_from("<I", data, 0)[0]
    if not 8 <= root <= len(data) - 4:
        _fail(f"the root table offset {root} is outside the {len(data)}-byte file")
    return data


def _count(length, what, size, element_bytes=4):
    if length < 0 or length * element_bytes > size:
        _fail(f"{what} claims {length} entries, more than the {size}-byte file holds")
    return length


def _indices(values, low, high, what):
    bad = [int(v) for v in values if not low <= int(v) < high]
    if bad:
        _fail(f"{what} {bad[:5]} out of range [{low}, {high})")


def _text(value, what):
    """Flatbuffer strings reach Python through LiteRT's bindings, which need UTF-8."""
    try:
        return (value or b"").decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"{what} {value[:40]!r} is not UTF-8")


def _element_bytes(type_name, shape):
    bits = _TYPE_BITS.get(type_name)
    elements = 1
    for dimension in shape:
        elements *= int(dimension)
    if bits is None:
        return 0
    return (elements * bits + 7) // 8


def _subgraph_indices(options):
    """Every `...SubgraphIndex` field of an unpacked options object (IF, WHILE, CALL_ONCE,
    StableHLO regions)."""
    if options is None:
        return []
    return [
        (name, int(value))
        for name, value in vars(options).items()
        if name.endswith("SubgraphIndex") and isinstance(value, (int, np.integer))
    ]


def _check_operator(schema, op, where, tensors, codes, subgraphs, size):
    index = op.OpcodeIndex()
    if not 0 <= index < codes:
        _fail(f"{where} uses operator code {index}; the model has {codes}")
    for name in ("Inputs", "Outputs", "Intermediates"):
        _count(getattr(op, f"{name}Length")(), f"{where} {name.lower()}", size)
        values = getattr(op, f"{name}AsNumpy")() if getattr(op, f"{name}Length")() else []
        _indices(values, -1, tensors, f"{where} {name.lower()}: tensor indices")
    _count(op.CustomOptionsLength(), f"{where} custom options", size, 1)
    option_types = (
        (op.BuiltinOptionsType(), schema.BuiltinOptionsCreator, op.BuiltinOptions),
        (op.BuiltinOptions2Type(), schema.BuiltinOptions2Creator, op.BuiltinOptions2),
    )
    for union_type, creator, table in option_types:
        if union_type:
            options = creator(union_type, table())
            for name, value in _subgraph_indices(options):
                if not 0 <= value < subgraphs:
                    _fail(f"{where} options {name}={value}; the model has {subgraphs} subgraphs")


def _check_tensor(tensor, where, model, buffers, size, names):
    _text(tensor.Name(), f"{where} name")
    type_name = names.get(tensor.Type())
    if type_name is None:
        _fail(f"{where} has unknown type {tensor.Type()}")
    rank = _count(tensor.ShapeLength(), f"{where} shape", size)
    if rank > _MAX_RANK:
        _fail(f"{where} has rank {rank} > {_MAX_RANK}")
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if rank else []
    if any(d < 0 for d in shape):
        _fail(f"{where} has a negative dimension in its shape {shape}")
    signature = tensor.ShapeSignatureLength()
    _count(signature, f"{where} shape signature", size)
    if signature and signature != rank:
        _fail(f"{where} has shape {shape} but a shape signature of rank {signature}")
    nbytes = _element_bytes(type_name, shape)
    buffer = tensor.Buffer()
    if not 0 <= buffer < buffers:
        _fail(f"{where} uses buffer {buffer}; the model has {buffers}")
    if buffer > 0 and nbytes:
        record = model.Buffers(buffer)
        stored = _count(record.DataLength(), f"buffer {buffer}", size, 1)
        if record.Offset() > 1:
            if record.Offset() + record.Size() > size:
                _fail(f"buffer {buffer} points outside the file")
            stored = record.Size()
        if stored and stored < nbytes:
            _fail(f"{where} (shape {shape}, {type_name}) needs {nbytes} bytes; buffer {buffer} "
                  f"holds {stored}")  # fmt: skip
    quantization = tensor.Quantization()
    if quantization is not None:
        scales = _count(quantization.ScaleLength(), f"{where} scales", size)
        zeros = _count(quantization.ZeroPointLength(), f"{where} zero points", size, 8)
        _count(quantization.MinLength(), f"{where} min", size)
        _count(quantization.MaxLength(), f"{where} max", size)
        if scales and zeros and scales != zeros:
            _fail(f"{where} has {scales} scales but {zeros} zero points")
        axis = quantization.QuantizedDimension()
        if scales > 1 and not (0 <= axis < rank and shape[axis] == scales):
            _fail(f"{where} has {scales} scales for quantized dimension {axis} of shape {shape}")
    if tensor.Sparsity() is not None:
        _fail(f"{where} is a sparse tensor (TFLite sparsity), which tfquant does not inspect")
    if tensor.ExternalBuffer():
        _fail(f"{where} keeps its data in an external buffer, which tfquant does not inspect")
    _count(tensor.VariantTensorsLength(), f"{where} variant tensors", size)
    return nbytes


def validate(tfl, max_tensor_bytes=MAX_TENSOR_BYTES):
    """Checks that `tfl` is a TFLite model whose contents agree with each other, before any
    native interpreter (LiteRT, TFLite Micro) reads it.

    Checked, in pure Python (a corrupt offset raises here, it cannot crash the process): the
    file identifier and root offset; at least one subgraph and one buffer; every vector
    length against the file size; every operator code known (or a named custom op); in every
    subgraph, the input, output and operator tensor indices, operator code indices and the
    subgraph indices of control-flow options in range; every tensor of a known type with
    rank <= 16, no negative dimension, a shape signature of its rank, a buffer index in range
    and a constant buffer at least as long as its shape needs (a buffer stored after the
    flatbuffer, by offset: inside the file), one zero point per scale and per-channel scales
    matching the quantized dimension; no sparse tensors or external buffers (tfquant never
    writes them); signature tensors in range; tensor, subgraph, signature, metadata and
    custom-op names in UTF-8 (LiteRT's Python bindings decode them); the tensors together at
    most `max_tensor_bytes`. LiteRT then runs the flatbuffers Verifier (offsets, vtables,
    vector and string bounds) when it loads the model.

    Args:
      tfl: .tflite bytes.
      max_tensor_bytes: the largest total size of all tensors accepted (default 2 GiB).

    Returns:
      The model's root table (`schema_py_generated.Model`).

    Raises:
      TypeError: `tfl` is not bytes. InvalidTfliteError (a ValueError): what is wrong.
    """
    from ai_edge_litert import schema_py_generated as schema

    data = model_bytes(tfl)
    size = len(data)
    names = _type_names()
    known_ops = {
        value for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")
    }
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        codes = _count(model.OperatorCodesLength(), "operator codes", size)
        for i in range(codes):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin not in known_ops:
                _fail(f"operator code {i} has unknown builtin code {builtin}")
            if builtin == schema.BuiltinOperator.CUSTOM and not code.CustomCode():
                _fail(f"operator code {i} is a custom op without a name")
            _text(code.CustomCode(), f"operator code {i} custom name")
        buffers = _count(model.BuffersLength(), "buffers", size)
        if buffers < 1:
            _fail("the model has no buffers (buffer 0 is always present)")
        subgraphs = _count(model.SubgraphsLength(), "subgraphs", size)
        if subgraphs < 1:
            _fail("the model has no subgraph")
        total = 0
        tensor_counts = []
        for g in range(subgraphs):
            graph = model.Subgraphs(g)
            _text(graph.Name(), f"subgraph {g} name")
            tensors = _count(graph.TensorsLength(), f"subgraph {g} tensors", size)
            tensor_counts.append(tensors)
            for t in range(tensors):
                where = f"subgraph {g} tensor {t}"
                total += _check_tensor(graph.Tensors(t), where, model, buffers, size, names)
                if total > max_tensor_bytes:
                    _fail(f"its tensors need more than {max_tensor_bytes} bytes")
            for name in ("Inputs", "Outputs"):
                length = _count(getattr(graph, f"{name}Length")(), f"subgraph {g} {name}", size)
                values = getattr(graph, f"{name}AsNumpy")() if length else []
                _indices(values, 0, tensors, f"subgraph {g} {name.lower()}: tensor indices")
            for o in range(_count(graph.OperatorsLength(), f"subgraph {g} operators", size)):
                op = graph.Operators(o)
                _check_operator(schema, op, f"subgraph {g} op {o}", tensors, codes, subgraphs, size)
        for s in range(_count(model.SignatureDefsLength(), "signatures", size)):
            signature = model.SignatureDefs(s)
            _text(signature.SignatureKey(), f"signature {s} key")
            g = signature.SubgraphIndex()
            if not 0 <= g < subgraphs:
                _fail(f"signature {s} names subgraph {g}; the model has {subgraphs}")
            for name in ("Inputs", "Outputs"):
                for m in range(_count(getattr(signature, f"{name}Length")(), "signature", size)):
                    entry = getattr(signature, name)(m)
                    _text(entry.Name(), f"signature {s} {name.lower()} name")
                    index = entry.TensorIndex()
                    _indices([index], 0, tensor_counts[g], f"signature {s} {name.lower()}")
        for m in range(_count(model.MetadataLength(), "metadata", size)):
            _text(model.Metadata(m).Name(), f"metadata {m} name")
            _indices([model.Metadata(m).Buffer()], 0, buffers, "metadata buffer")
        if model.MetadataBufferLength():
            _count(model.MetadataBufferLength(), "metadata buffers", size)
            _indices(model.MetadataBufferAsNumpy(), 0, buffers, "metadata buffer")
        if model.ExternalBuffersLength() or model.ExternalBufferGroupsLength():
            _fail("it refers to external buffers, which tfquant does not inspect")
    except InvalidTfliteError:
        raise
    except _READ_ERRORS as error:
        _fail(f"unreadable ({type(error).__name__}: {error})")
    return model


def read_model(tfl):
    """The schema object tree (`ModelT`) of `tfl`, after `validate`: the one reader of the
    whole flatbuffer (`stored_tensors` and `export.rewrite` read through it).

    Raises:
      TypeError: `tfl` is not bytes. InvalidTfliteError (a ValueError): see `validate`.
    """
    from ai_edge_litert import schema_py_generated as schema

    validate(tfl)
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(model_bytes(tfl)), 0)
    except _READ_ERRORS as error:  # truncated / corrupt
        raise InvalidTfliteError(f"tfl is not a valid TFLite flatbuffer: {error}") from error


def stored_tensors(tfl):
    """The tensors of the model's main subgraph with their stored types.

    Args:
      tfl: .tflite bytes.

    Returns:
      list of `StoredTensor`, in tensor-index order (the interpreter's indices).

    Raises:
      TypeError: `tfl` is not bytes. InvalidTfliteError (a ValueError): see `validate`.

    Example:
      >>> try:
      ...     stored_tensors(b"not a model")
      ... except InvalidTfliteError as error:
      ...     print(error)
      tfl is not a valid TFLite flatbuffer: the file identifier is b'a mo', not b'TFL3'
    """
    model = read_model(tfl)
    names = _type_names()
    out = []
    for index, tensor in enumerate(model.subgraphs[0].tensors or []):
        constant = 0
        if 0 < tensor.buffer < len(model.buffers):
            record = model.buffers[tensor.buffer]
            stored = 0 if record.data is None else len(record.data)
            constant = stored or int(record.size)
        shape = tuple(int(d) for d in tensor.shape) if tensor.shape is not None else ()
        signature = (
            tuple(int(d) for d in tensor.shapeSignature)
            if tensor.shapeSignature is not None and len(tensor.shapeSignature)
            else shape
        )
        out.append(
            StoredTensor(
                index=index,
                name=(tensor.name or b"").decode("utf-8", "replace"),
                type=names.get(tensor.type, f"UNKNOWN({tensor.type})"),
                shape=shape,
                shape_signature=signature,
                constant_bytes=int(constant),
            )
        )
    return out


def constant_bytes_by_type(tfl):
    """Bytes of constant tensor data per stored type, e.g. {"INT8": 43000, "INT32": 120}."""
    totals = {}
    for tensor in stored_tensors(tfl):
        if tensor.constant_bytes:
            totals[tensor.type] = totals.get(tensor.type, 0) + tensor.constant_bytes
    return dict(sorted(totals.items()))


def int4_fraction(tfl):
    """Fraction of the constant weight elements stored as INT4 (0 for an int8 model)."""
    elements = {"INT4": 0, "other": 0}
    for tensor in stored_tensors(tfl):
        if tensor.constant_bytes and tensor.type in ("INT4", "INT8"):
            key = "INT4" if tensor.type == "INT4" else "other"
            elements[key] += int(np.prod(tensor.shape)) if tensor.shape else 1
    total = elements["INT4"] + elements["other"]
    return elements["INT4"] / total if total else 0.0


def with_metadata(tfl, name, data):
    """`tfl` with a metadata entry `name` holding `data` (bytes), replacing one of that name.

    Example:
      >>> try:
      ...     with_metadata(b"not a model", "tfquant_io", b"{}")
      ... except InvalidTfliteError as error:
      ...     print(error)
      tfl is not a valid TFLite flatbuffer: the file identifier is b'a mo', not b'TFL3'
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = read_model(tfl)
    key = name.encode("utf-8")
    entries = [m for m in (model.metadata or []) if m.name != key]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(data), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = key
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*entries, entry]
    builder = flatbuffers.Builder(len(tfl) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output())


def metadata(tfl, name):
    """The bytes of the metadata entry `name` of `tfl`, or None when it has none."""
    model = read_model(tfl)
    key = name.encode("utf-8")
    for entry in model.metadata or []:
        if entry.name == key and 0 <= entry.buffer < len(model.buffers):
            data = model.buffers[entry.buffer].data
            return b"" if data is None else bytes(np.asarray(data, np.uint8))
    return None
