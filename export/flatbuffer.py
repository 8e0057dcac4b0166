"""Reads what the LiteRT interpreter does not tell: the stored type of every tensor (INT4
kernels are reported as int8 by the interpreter), straight from the .tflite flatbuffer through
the schema module that ships with ai-edge-litert.
"""

import dataclasses

import numpy as np

_IDENTIFIER = b"TFL3"  # flatbuffer file identifier of TFLite models, at bytes 4..8


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


def stored_tensors(tfl):
    """The tensors of the model's main subgraph with their stored types.

    Args:
      tfl: .tflite bytes.

    Returns:
      list of `StoredTensor`, in tensor-index order (the interpreter's indices).

    Raises:
      TypeError: `tfl` is not bytes. ValueError: not a TFLite flatbuffer.

    Example:
      >>> stored_tensors(b"not a model")
      Traceback (most recent call last):
      ...
      ValueError: tfl is not a TFLite flatbuffer: the file identifier is b'a mo', not b'TFL3'
    """
    if not isinstance(tfl, (bytes, bytearray, memoryview)):
        raise TypeError(f"tfl must be the bytes of a .tflite model. Received: {type(tfl).__name__}")
    data = bytes(tfl)
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise ValueError(
            f"tfl is not a TFLite flatbuffer: the file identifier is {data[4:8]!r}, not "
            f"{_IDENTIFIER!r}"
        )
    from ai_edge_litert import schema_py_generated as schema

    names = _type_names()
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("the model has no subgraph")
        graph = model.Subgraphs(0)
        out = []
        for index in range(graph.TensorsLength()):
            tensor = graph.Tensors(index)
            buffer = tensor.Buffer()
            constant = 0
            if 0 < buffer < model.BuffersLength():
                record = model.Buffers(buffer)
                constant = record.DataLength() or int(record.Size())
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            signature = (
                tuple(int(d) for d in tensor.ShapeSignatureAsNumpy())
                if tensor.ShapeSignatureLength()
                else shape
            )
            out.append(
                StoredTensor(
                    index=index,
                    name=(tensor.Name() or b"").decode("utf-8", "replace"),
                    type=names.get(tensor.Type(), f"UNKNOWN({tensor.Type()})"),
                    shape=shape,
                    shape_signature=signature,
                    constant_bytes=int(constant),
                )
            )
    except (IndexError, ValueError, TypeError, UnicodeError) as error:  # truncated / corrupt
        raise ValueError(f"tfl is not a valid TFLite flatbuffer: {error}") from error
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
