"""The compressed-model container: `tfq.coding.compress(qmodel)` stores every quantized kernel
as a codebook plus entropy-coded indices (Huffman or ANS) and every other model variable
exactly; `tfq.coding.decompress(data, model)` writes them back bit for bit.

Binary layout, version 3 (versions 1 and 2 are read too: version 2 has no float16-stored
float32 variables, version 1 neither nor coder 2). Integers are little-endian; varint =
unsigned LEB128.

    header, 28 bytes, struct "<8sHHIQI":
      8s   magic b"\\x89TFQ\\r\\n\\x1a\\n"
      u16  version = 3
      u16  flags: 0, or 1 = without training state (version 3; any other bit is rejected)
      u32  record count
      u64  body length: the bytes after the header, exactly
      u32  CRC-32 of the body
    body: one record per variable of the model, in `model.weights` order; with flag 1, none
      for the variables that only steer training (tfmot's `optimizer_step` counters, the
      quantizers' `training_state`: the schedules' intervals and progress)
      u8      kind: 1 = quantized kernel, 2 = other coded tensor, 3 = raw tensor
      u8      rank (at most 8), then one varint per dimension
      kind 1: varint length + UTF-8 variable name, varint length + UTF-8 quantizer class
      kind 1 and 2:
        varint  channels C: the codebook is per channel, channel of flat element i = i % C
        codebook: table or grid, see `tfquant.coding.codebook`
        u8      coder: 0 = Huffman, 1 = ANS, 2 = ANS without dead rows/columns (kind 1, rank
                >= 2, one codebook: the [fan-in, outputs] view; `tfquant.coding.masked`)
        varint  length of the coder stream, then the stream (`huffman` / `ans` / `masked`)
      kind 3:
        u8      dtype: 1 float32, 2 float64, 3 float16, 4 int8, 5 uint8, 6 int16, 7 int32,
                8 int64, 9 bool
        the elements, C order. A float32 variable whose every value is exactly a float16
        value (e.g. after `round_to_float16`) is stored as float16 and widened exactly on
        restore (version 3).

Records are matched to a model by position, shape and kind (names are only stored for the
quantized kernels, for the report); a version 1 or 2 container may lack the multivalued
quantizers' `center_tuning` variables (added later), which then keep the model's value. Every
length, count and index is checked against the
remaining bytes and against limits before anything is allocated; a corrupt, truncated or
hostile file raises `CompressedFormatError`.
"""

import contextlib
import dataclasses
import math
import os
import struct
import tempfile
import warnings
import zlib

import numpy as np

from tfquant._keras import check_keras2_model, quantized_weights
from tfquant.coding import ans, huffman, masked, stream
from tfquant.coding.codebook import Codebook, codebooks
from tfquant.coding.entropy import entropy_bits
from tfquant.coding.stream import CompressedFormatError, Reader
from tfquant.options import Mode, TernaryMethod, _Option
from tfquant.quantizers.base import TfquantQuantizer
from tfquant.quantizers.ternary import TernaryQuantizer
from tfquant.shrink import _shrunk_like

MAGIC = b"\x89TFQ\r\n\x1a\n"
VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
HEADER = struct.Struct("<8sHHIQI")
#: Default limit on the elements of one tensor for `Compressed.from_bytes` (decoding allocates
#: per element); `decompress` uses the model's largest variable instead.
MAX_ELEMENTS = 1 << 24
_MAX_RECORDS = 1 << 20
_MAX_RANK = 8
_MAX_NAME_BYTES = 4096
_QUANTIZED, _CODED, _RAW = 1, 2, 3
_WITHOUT_TRAINING_STATE = 1  # header flag
# Other float32 variables with at most this many distinct values (the schedules' frozen
# masks) are coded like kernels when that is smaller than storing them raw.
_CODED_MAX_DISTINCT = 256
_DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<f2"),
    4: np.dtype("i1"),
    5: np.dtype("u1"),
    6: np.dtype("<i2"),
    7: np.dtype("<i4"),
    8: np.dtype("<i8"),
    9: np.dtype("?"),
}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}


class Coder(_Option):
    """Entropy coder of the codebook indices: `huffman` (canonical Huffman per tensor) or `ans`
    (asymmetric numeral systems, within bytes of the entropy bound).

    Example:
      >>> Coder.parse("ANS", "coder")
      <Coder.ANS: 'ans'>
    """

    HUFFMAN = "huffman"
    ANS = "ans"


_CODER_MODULES = {Coder.HUFFMAN: huffman, Coder.ANS: ans}
_CODER_IDS = {Coder.HUFFMAN: 0, Coder.ANS: 1}
_CODERS_BY_ID = {number: coder for coder, number in _CODER_IDS.items()}
_MASKED_ANS = 2  # ANS with dead rows and columns taken out (version 2)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Size statistics of one quantized kernel in a `Compressed` container.

    Attributes:
      name: the kernel variable's name ("conv1/kernel").
      shape: kernel shape.
      channels: 1 for one codebook per layer, else the number of per-channel codebooks.
      levels: distinct values in the codebook (per-channel codebooks: the most in any channel).
      entropy_bits: empirical entropy of the coded indices, bits per weight (the bound).
      coded_bits: size of the coded indices (coder header included), bits per weight.
      sparsity: fraction of weights that are exactly zero.
      nbytes: bytes of the whole record: shape, name, codebook and coded indices.
      coder: "huffman", "ans", or "ans-masked" (ANS without the dead rows and columns, chosen
        by `compress` where that is smaller).

    Example:
      >>> stats = LayerStats("fc/kernel", (4, 2), 1, 2, 1.0, 1.5, 0.5, 30, "ans")
      >>> stats.coded_bits - stats.entropy_bits
      0.5
    """

    name: str
    shape: tuple
    channels: int
    levels: int
    entropy_bits: float
    coded_bits: float
    sparsity: float
    nbytes: int
    coder: str


@dataclasses.dataclass(eq=False)
class _Record:
    """One model variable in the container (see the module docstring for the layout)."""

    kind: int
    shape: tuple
    name: str = ""
    quantizer: str = ""
    channels: int = 1
    codebook: Codebook = None
    coder: Coder = None
    stream: bytes = b""
    dtype: np.dtype = None
    raw: bytes = b""
    masked: bool = False
    _symbols: np.ndarray = None
    _values: np.ndarray = None

    @property
    def elements(self):
        return math.prod(self.shape)

    def to_bytes(self):
        parts = [bytes([self.kind, len(self.shape)])]
        parts += [stream.varint(d) for d in self.shape]
        if self.kind == _QUANTIZED:
            parts += [stream.string(self.name), stream.string(self.quantizer)]
        if self.kind == _RAW:
            parts += [bytes([_DTYPE_CODES[self.dtype]]), self.raw]
        else:
            parts += [
                stream.varint(self.channels),
                self.codebook.to_bytes(),
                bytes([_MASKED_ANS if self.masked else _CODER_IDS[self.coder]]),
                stream.varint(len(self.stream)),
                self.stream,
            ]
        return b"".join(parts)

    @classmethod
    def read(cls, reader, max_elements, version=VERSION):
        kind, rank = reader.unpack("<BB", "record kind and rank")
        if kind not in (_QUANTIZED, _CODED, _RAW):
            reader.fail(f"unknown record kind {kind}")
        if rank > _MAX_RANK:
            reader.fail(f"rank {rank} exceeds {_MAX_RANK}")
        shape = tuple(reader.varint("dimension", max_elements) for _ in range(rank))
        if math.prod(shape) > max_elements:
            reader.fail(
                f"a tensor of shape {shape} exceeds the limit of {max_elements} elements "
                "(max_elements)"
            )
        record = cls(kind, shape)
        if kind == _QUANTIZED:
            record.name = reader.string("variable name", _MAX_NAME_BYTES)
            record.quantizer = reader.string("quantizer name", _MAX_NAME_BYTES)
        if kind == _RAW:
            (code,) = reader.unpack("<B", "dtype")
            if code not in _DTYPES:
                reader.fail(f"unknown dtype code {code}")
            record.dtype = _DTYPES[code]
            record.raw = bytes(reader.take(record.elements * record.dtype.itemsize, "tensor"))
            return record
        elements = record.elements
        record.channels = reader.varint("channels", max(elements, 1))
        if record.channels < 1 or elements % record.channels:
            reader.fail(f"{record.channels} channels do not divide {elements} elements")
        record.codebook = Codebook.read(reader, record.channels, elements)
        (coder,) = reader.unpack("<B", "coder")
        if coder == _MASKED_ANS and version >= 2:
            if kind != _QUANTIZED or rank < 2 or record.channels != 1:
                reader.fail("coder 2 (masked ANS) needs a quantized kernel of rank >= 2")
            record.masked, coder = True, _CODER_IDS[Coder.ANS]
        if coder not in _CODERS_BY_ID:
            reader.fail(f"unknown coder {coder}")
        record.coder = _CODERS_BY_ID[coder]
        length = reader.varint("stream length", reader.remaining)
        record.stream = bytes(reader.take(length, "coder stream"))
        return record

    def symbols(self):
        """The decoded codebook indices (flat); decoding is checked, lazily done once."""
        if self._symbols is None:
            if self.masked:
                columns = self.shape[-1]
                symbols = masked.decode(self.stream, self.elements // max(columns, 1), columns)
            else:
                symbols = _CODER_MODULES[self.coder].decode(self.stream, self.elements)
            if symbols.size != self.elements:
                raise CompressedFormatError(
                    f"container: {symbols.size} coded values for a tensor of shape {self.shape}"
                )
            self._symbols = symbols
        return self._symbols

    def values(self):
        """The tensor as a numpy array of its shape."""
        if self._values is None:
            if self.kind == _RAW:
                flat = np.frombuffer(self.raw, self.dtype)
                self._values = flat.astype(self.dtype.newbyteorder("=")).reshape(self.shape)
            else:
                try:
                    flat = self.codebook.values(self.symbols())
                except ValueError as error:
                    if isinstance(error, CompressedFormatError):
                        raise
                    raise CompressedFormatError(f"container: {error}") from None
                self._values = flat.reshape(self.shape)
        return self._values

    def stats(self):
        symbols = self.symbols()
        values = self.values()
        channel_symbols = symbols.reshape(-1, self.channels)
        channel = np.broadcast_to(np.arange(self.channels), channel_symbols.shape)
        span = int(symbols.max(initial=0)) + 1
        distinct = np.unique(channel.ravel() * span + channel_symbols.ravel())
        levels = np.bincount(distinct // span, minlength=1).max() if distinct.size else 0
        count = max(self.elements, 1)
        return LayerStats(
            name=self.name.removesuffix(":0"),
            shape=self.shape,
            channels=self.channels,
            levels=int(levels),
            entropy_bits=entropy_bits(symbols),
            coded_bits=8 * len(self.stream) / count,
            sparsity=float(np.count_nonzero(values == 0) / count),
            nbytes=len(self.to_bytes()),
            coder="ans-masked" if self.masked else self.coder.value,
        )


@dataclasses.dataclass
class _Slot:
    """A model variable and, for a tfquant-quantized kernel, its quantizer."""

    variable: object
    quantizer: TfquantQuantizer = None
    quantizer_vars: dict = None

    @property
    def channels(self):
        return self.quantizer.num_channels if self.quantizer.per_channel else 1


def _slots(model, training_state=True):
    """One `_Slot` per variable of `model` that a container stores, in `model.weights` order:
    every variable, or with `training_state=False` all but `_training_only(model)`."""
    kernels = {}
    for _, weight, quantizer, quantizer_vars in quantized_weights(model):
        if isinstance(quantizer, TfquantQuantizer):
            kernels[weight.ref()] = (quantizer, quantizer_vars)
    slots, seen = [], set() if training_state else _training_only(model)
    for variable in model.weights:
        if variable.ref() in seen:
            continue
        seen.add(variable.ref())
        slots.append(_Slot(variable, *kernels.get(variable.ref(), (None, None))))
    return slots


def _training_only(model):
    """Refs of the variables of `model` that only steer training: the counters of tfmot's
    wrappers and input layers (`optimizer_step`, which no forward pass reads) and each tfquant
    quantizer's `training_state` variables."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
        QuantizeLayer,
    )

    refs = set()
    for layer in model.submodules:
        if isinstance(layer, (tfmot.quantization.keras.QuantizeWrapper, QuantizeLayer)):
            step = getattr(layer, "optimizer_step", None)
            if step is not None:
                refs.add(step.ref())
    for _, _, quantizer, quantizer_vars in quantized_weights(model):
        if isinstance(quantizer, TfquantQuantizer):
            refs.update(quantizer_vars[key].ref() for key in quantizer.training_state)
    return refs


def _hard_values(slot, kernel):
    """The kernel's hard-quantized values, float32, with -0.0 stored as 0.0."""
    hard = np.asarray(slot.quantizer.hard_quantize(kernel, slot.quantizer_vars), np.float32)
    return hard + np.float32(0.0)


def _coded_record(kind, shape, values, channels, coder):
    """The smallest coded record over the exact codebooks of `values` (and, for an ANS-coded
    kernel with zeros, with or without its dead rows and columns)."""
    best = None
    flat = values.ravel()
    zeros = np.flatnonzero(flat == 0)
    for book, symbols in codebooks(flat, channels):
        streams = [(_CODER_MODULES[coder].encode(symbols), False)]
        if kind == _QUANTIZED and coder is Coder.ANS and len(shape) >= 2 and channels == 1:
            if zeros.size and flat.size:
                columns = shape[-1]
                rows = flat.size // columns
                zero = int(symbols[zeros[0]])
                streams.append((masked.encode(symbols, rows, columns, zero), True))
        for data, is_masked in streams:
            record = _Record(
                kind, shape, channels=channels, codebook=book, coder=coder, stream=data
            )
            record.masked = is_masked
            record._symbols, record._values = symbols, values
            if best is None or len(record.to_bytes()) < len(best.to_bytes()):
                best = record
    return best


def _raw_record(name, values):
    dtype = values.dtype.newbyteorder("<")
    if dtype not in _DTYPE_CODES:
        raise ValueError(
            f"compress stores variables of dtype float16/32/64, int8/16/32/64, uint8 or bool. "
            f"Received: {name} of dtype {values.dtype}"
        )
    record = _Record(_RAW, values.shape, dtype=dtype, raw=values.astype(dtype).tobytes())
    record._values = values
    return record


def _record_for(slot, coder):
    variable = slot.variable
    values = variable.numpy()
    shape = tuple(values.shape)
    if slot.quantizer is None:
        return _other_record(variable.name, values, coder)
    hard = _hard_values(slot, values)
    if not np.all(np.isfinite(hard)):
        raise ValueError(f"{variable.name}: the hard-quantized kernel holds NaN or Inf")
    _warn_if_partly_frozen(slot)
    record = _coded_record(_QUANTIZED, shape, hard, slot.channels, coder)
    record.name, record.quantizer = variable.name, type(slot.quantizer).__name__
    return record


def _exact_float16(values):
    """`values` as float16 when that is exact (every float32 value, -0.0 included, comes
    back bit for bit), else None."""
    if values.dtype != np.float32 or not np.all(np.isfinite(values)):
        return None
    narrow = values.astype(np.float16)
    if not np.array_equal(narrow.astype(np.float32).view(np.uint32), values.view(np.uint32)):
        return None
    return narrow


def round_to_float16(model):
    """Rounds every trainable float32 variable of `model` that is not a quantized kernel
    (biases, batch-norm scales and offsets) to its nearest float16 value, in place, so that
    `compress` stores it in 2 bytes instead of 4, exactly.

    This is a lossy step of your choosing, like quantizing: call it after fine-tuning (and
    measure the accuracy after it), before `compress`. Values beyond float16's range (65504)
    are left as they are. At high compression ratios the float32 biases are a large share of
    the container (LeNet-5: 580 biases = 2,320 bytes against 8,610 bytes at 200x).

    Args:
      model: a quantized tf_keras model.

    Returns:
      The largest absolute change made to any value.

    Example:
      >>> import tfquant as tfq
      >>> qmodel = tfq.quantize_model(float_model, scheme)  # doctest: +SKIP
      >>> round_to_float16(qmodel)                         # doctest: +SKIP
      0.000244140625
    """
    check_keras2_model(model)
    trainable = {v.ref() for v in model.trainable_weights}
    largest = 0.0
    for slot in _slots(model):
        variable = slot.variable
        if slot.quantizer is not None or variable.ref() not in trainable:
            continue
        if variable.dtype != np.float32:
            continue
        values = variable.numpy()
        rounded = values.astype(np.float16).astype(np.float32)
        rounded = np.where(np.isfinite(rounded), rounded, values)  # beyond float16: unchanged
        if not np.array_equal(rounded.view(np.uint32), values.view(np.uint32)):
            largest = max(largest, float(np.max(np.abs(rounded - values))))
            variable.assign(rounded)
    return largest


def _other_record(name, values, coder):
    """The record of a variable that is not a quantized kernel: raw (float16 when exact), or
    coded when smaller."""
    shape = tuple(values.shape)
    values = values.reshape(shape)
    narrow = _exact_float16(values)
    raw = _raw_record(name, values if narrow is None else narrow)
    if narrow is not None:
        raw._values = values  # what restore writes: the float32 values
    if (
        values.dtype == np.float32
        and values.size >= 16
        and np.all(np.isfinite(values))
        and np.unique(values.view(np.uint32)).size <= _CODED_MAX_DISTINCT
    ):
        coded = _coded_record(_CODED, shape, values, 1, coder)
        if len(coded.to_bytes()) < len(raw.to_bytes()):
            return coded
    return raw


def variable_nbytes(values, coder="ans"):
    """Bytes of the record `compress` writes for a variable (not a quantized kernel) holding
    `values` (used by `tfq.allocate_bits` to count quantizer state).

    >>> variable_nbytes(np.full(3, 0.1, np.float32))  # kind, rank, dim, dtype, 3 float32
    16
    >>> variable_nbytes(np.full(3, 0.5, np.float32))  # exactly float16: 3 x 2 bytes
    10
    """
    values = np.asarray(values)
    return len(_other_record("values", values, Coder.parse(coder, "coder")).to_bytes())


def kernel_record_overhead(name, shape, quantizer):
    """Bytes of a quantized kernel's record before its codebook: kind, rank, dimensions,
    variable and quantizer names, channel count (1), plus the coder id byte."""
    return (
        2
        + sum(len(stream.varint(int(d))) for d in shape)
        + len(stream.string(name))
        + len(stream.string(quantizer))
        + len(stream.varint(1))
    )


def _warn_if_partly_frozen(slot):
    if getattr(slot.quantizer, "mode", None) is not Mode.MASKED:
        return
    frozen = float(np.mean(slot.quantizer_vars["frozen_mask"].numpy()))
    if frozen < 1.0:
        warnings.warn(
            f"{slot.variable.name}: only {frozen:.1%} of the weights are frozen; the container "
            "stores every weight hard-quantized, so the restored model computes with all of "
            "them on the codebook (as the exported model does), not with the free weights.",
            UserWarning,
            stacklevel=4,
        )


def _twn_latent(values, channels):
    """A kernel whose TWN quantization is exactly `values` ({-a, 0, a} per channel).

    TWN recomputes its scale a as mean |w| over the weights above the threshold, in float32;
    writing the values themselves back can move a by one ulp. Here every nonzero weight gets a
    magnitude that is an integer multiple of g = ulp(S), for a float32 sum S with
    float32(S / count) == a: all partial sums are then exact in any order, so TensorFlow's
    reduction returns S and the division returns a.
    """
    view = values.reshape(-1, channels).copy()
    for channel in range(channels):
        column = view[:, channel]
        nonzero = column != 0
        count = int(np.count_nonzero(nonzero))
        magnitudes = np.unique(np.abs(column[nonzero]))
        if count == 0 or magnitudes.size != 1:
            continue
        scale = magnitudes[0]
        target = np.float32(np.float64(scale) * count)
        candidates = [target]
        for direction in (np.inf, 0.0):
            step = target
            for _ in range(3):
                step = np.nextafter(step, np.float32(direction))
                candidates.append(step)
        total = next((s for s in candidates if s / np.float32(count) == scale), None)
        if total is None:
            continue
        unit = np.spacing(total)  # g
        units = int(np.rint(np.float64(total) / np.float64(unit)))
        quotient, remainder = divmod(units, count)
        shares = np.full(count, quotient, np.float64)
        shares[:remainder] += 1
        column[nonzero] = np.sign(column[nonzero]) * (shares * np.float64(unit)).astype(np.float32)
    return view.reshape(values.shape)


class Compressed:
    """A quantized model, compressed: codebooks plus entropy-coded indices per quantized kernel,
    every other variable (biases, BatchNorm statistics, quantizer state) stored exactly --
    except, with `compress(..., include_training_state=False)`, the ones that only steer
    training.

    Made by `tfq.coding.compress(qmodel)` or read back by `Compressed.from_bytes`.

    Size accounting follows Deep Compression (Han et al.) and Choi et al. (seed 003): `nbytes`
    counts everything needed to rebuild the weights -- the header, shapes, codebooks, coder
    headers (code lengths / symbol counts), the coded indices, and the other variables as they
    are stored (float32 for float32 ones) -- and `ratio` is the float32 size of the quantized
    kernels divided by `nbytes`. The other variables are in the denominator but not in the
    numerator, so the ratio slightly understates the weights-only ratio.

    Attributes:
      coder: "huffman" or "ans".
      nbytes: size of the container in bytes.
      float_bytes: 4 bytes per quantized weight.
      ratio: float_bytes / nbytes.
      entropy_bytes: `nbytes` with every kernel's coded indices at the entropy bound instead.
      layers: one `LayerStats` per quantized kernel.

    Example:
      >>> import tfquant as tfq
      >>> keras = tfq.keras
      >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64)])
      >>> scheme = tfq.schemes.Multivalued(bits=2)
      >>> qmodel = tfq.quantize_model(model, scheme)
      >>> blob = tfq.coding.compress(qmodel, coder="huffman")
      >>> blob  # doctest: +ELLIPSIS
      Compressed(coder='huffman', layers=1, weights=2048, nbytes=..., ratio=...)
      >>> blob.ratio == blob.float_bytes / blob.nbytes
      True
      >>> restored = tfq.quantize_model(keras.models.clone_model(model), scheme)
      >>> restored = tfq.coding.decompress(blob.to_bytes(), restored)
      >>> x = np.ones((1, 32), np.float32)
      >>> bool(np.array_equal(restored(x).numpy(), qmodel(x).numpy()))
      True
      >>> lean = tfq.coding.compress(qmodel, include_training_state=False)  # for shipping
      >>> lean.include_training_state, lean.nbytes < tfq.coding.compress(qmodel).nbytes
      (False, True)
    """

    def __init__(self, records, data=None, version=VERSION, include_training_state=True):
        self._records = list(records)
        self._data = data
        self._version = version
        self._training_state = bool(include_training_state)
        self._layers = None

    @property
    def include_training_state(self):
        """False if the container leaves out the variables that only steer training (see
        `compress`): it restores a model that predicts and exports the same, but whose
        schedules start afresh."""
        return self._training_state

    # -- reading -------------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data, max_elements=MAX_ELEMENTS):
        """Parses a container (coded indices are decoded lazily, when needed).

        Args:
          data: bytes-like, as written by `to_bytes` or `save`.
          max_elements: refuse tensors with more elements than this.

        Raises:
          CompressedFormatError: not a valid container of this version.
        """
        try:
            data = bytes(data)
        except TypeError:
            raise TypeError(
                f"data must be bytes-like. Received: data of type {type(data).__name__}"
            ) from None
        if len(data) < HEADER.size:
            raise CompressedFormatError(
                f"container: {len(data)} bytes is too short for the {HEADER.size}-byte header"
            )
        magic, version, flags, count, length, checksum = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CompressedFormatError("container: not a tfquant compressed model (bad magic)")
        if version not in _READABLE_VERSIONS:
            raise CompressedFormatError(
                f"container: version {version} is not supported (this tfquant reads versions "
                f"{', '.join(map(str, _READABLE_VERSIONS))})"
            )
        known = _WITHOUT_TRAINING_STATE if version >= 3 else 0
        if flags & ~known:
            raise CompressedFormatError(f"container: unknown flags {flags:#06x}")
        body = memoryview(data)[HEADER.size :]
        if length != len(body):
            raise CompressedFormatError(
                f"container: header announces {length} body bytes, {len(body)} present"
            )
        if zlib.crc32(body) != checksum:
            raise CompressedFormatError("container: checksum mismatch (the data is corrupt)")
        if count > min(_MAX_RECORDS, len(body) // 3):
            raise CompressedFormatError(f"container: {count} records cannot fit the body")
        reader = Reader(body, "container")
        records = [_Record.read(reader, max_elements, version) for _ in range(count)]
        reader.expect_end()
        return cls(records, data, version, not flags & _WITHOUT_TRAINING_STATE)

    # -- writing -------------------------------------------------------------------------------
    def to_bytes(self):
        """The container as bytes (the layout in the module docstring)."""
        if self._data is None:
            body = b"".join(record.to_bytes() for record in self._records)
            flags = 0 if self._training_state else _WITHOUT_TRAINING_STATE
            checksum = zlib.crc32(body)
            header = HEADER.pack(MAGIC, VERSION, flags, len(self._records), len(body), checksum)
            self._data = header + body
        return self._data

    def save(self, path):
        """Writes the container to `path` atomically (a temporary file, then a rename)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(prefix=".tfquant-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(self.to_bytes())
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def _kernels(self):
        return [r for r in self._records if r.kind == _QUANTIZED]

    @property
    def coder(self):
        coders = {r.coder.value for r in self._kernels}
        return coders.pop() if len(coders) == 1 else ("mixed" if coders else "none")

    @property
    def nbytes(self):
        return len(self.to_bytes())

    @property
    def float_bytes(self):
        return 4 * sum(r.elements for r in self._kernels)

    @property
    def ratio(self):
        return self.float_bytes / self.nbytes

    @property
    def entropy_bytes(self):
        bound = sum(math.ceil(r.elements * s.entropy_bits / 8) for r, s in self._with_stats())
        return self.nbytes - sum(len(r.stream) for r in self._kernels) + bound

    @property
    def layers(self):
        return [stats for _, stats in self._with_stats()]

    def variable_nbytes(self):
        """Bytes of each record (one per model variable, in `model.weights` order)."""
        return [len(record.to_bytes()) for record in self._records]

    def _with_stats(self):
        if self._layers is None:
            self._layers = [r.stats() for r in self._kernels]
        return list(zip(self._kernels, self._layers, strict=True))

    def __repr__(self):
        return (
            f"Compressed(coder={self.coder!r}, layers={len(self._kernels)}, "
            f"weights={self.float_bytes // 4}, nbytes={self.nbytes}, ratio={self.ratio:.2f}"
            + ("" if self._training_state else ", include_training_state=False")
            + ")"
        )

    # -- restoring -----------------------------------------------------------------------------
    def restore(self, model):
        """Writes the stored values into `model`, a quantized model of the same architecture
        (from `tfq.quantize_model` with the same scheme), and returns it; or, for a container
        of a `tfq.shrink` result and the unshrunk `model`, into a new model of the shrunk
        architecture, which it returns. See `decompress`."""
        check_keras2_model(model)
        slots = _slots(model, self._training_state)
        if len(slots) != len(self._records) and self._version < 3:
            slots = _without_center_tuning(model, slots, len(self._records))
        if len(slots) != len(self._records):
            raise CompressedFormatError(
                f"the container holds {len(self._records)} variables, the model has "
                f"{len(slots)}: not the same architecture"
            )
        if any(
            tuple(s.variable.shape) != r.shape for s, r in zip(slots, self._records, strict=True)
        ):
            model, slots = _shrunk_model(model, slots, self._records, self._training_state)
        for index, (slot, record) in enumerate(zip(slots, self._records, strict=True)):
            _check_fits(index, slot, record)
        values = [record.values() for record in self._records]
        snapshot = [slot.variable.numpy() for slot in slots]
        try:
            for slot, value in zip(slots, values, strict=True):
                if slot.quantizer is None:
                    slot.variable.assign(value.astype(slot.variable.dtype.as_numpy_dtype))
            for slot, value in zip(slots, values, strict=True):
                if slot.quantizer is not None:
                    _restore_kernel(slot, value)
        except BaseException:
            for slot, old in zip(slots, snapshot, strict=True):
                slot.variable.assign(old)
            raise
        return model


def _without_center_tuning(model, slots, count):
    """`slots` without the multivalued quantizers' `center_tuning` variables when that makes
    `count` records fit: every version 1 container and the version 2 ones written before that
    variable existed hold no record for it. Those variables keep the model's value (0, hold:
    what the quantizer did before it existed)."""
    later = {
        state["center_tuning"].ref()
        for _, _, _, state in quantized_weights(model)
        if "center_tuning" in state
    }
    kept = [slot for slot in slots if slot.variable.ref() not in later]
    return kept if len(kept) == count else slots


def _shrunk_model(model, slots, records, training_state=True):
    """`model` rebuilt with the output channel counts of the container's kernels when it
    holds a `tfq.shrink` result of `model`'s architecture (a new model; `model` is not
    modified), with its slots; else `model` and `slots` unchanged (`_check_fits` then says
    which record does not fit)."""
    shapes = {
        slot.variable.ref(): record.shape for slot, record in zip(slots, records, strict=True)
    }
    try:
        shrunk, _ = _shrunk_like(model, shapes)
    except ValueError:
        return model, slots
    if shrunk is None:
        return model, slots
    rebuilt = _slots(shrunk, training_state)
    if len(rebuilt) != len(records):
        return model, slots
    return shrunk, rebuilt


def _check_fits(index, slot, record):
    variable = slot.variable
    where = f"record {index} ({variable.name})"
    if tuple(variable.shape) != record.shape:
        raise CompressedFormatError(
            f"{where}: the container holds shape {record.shape}, the model "
            f"{tuple(variable.shape)}: not the same architecture. Pass a quantized model of "
            "the architecture that was compressed (same scheme); for a container of a "
            "tfq.shrink result, the shrunk model or the model it was shrunk from"
        )
    if slot.quantizer is not None:
        if record.kind != _QUANTIZED or record.quantizer != type(slot.quantizer).__name__:
            raise CompressedFormatError(
                f"{where}: the model quantizes it with {type(slot.quantizer).__name__}, the "
                f"container holds {record.quantizer or 'an unquantized tensor'}"
            )
        return
    if record.kind == _QUANTIZED:
        raise CompressedFormatError(f"{where}: a quantized kernel where the model has none")
    dtype = np.dtype(variable.dtype.as_numpy_dtype)
    expected = np.dtype(np.float32) if record.kind == _CODED else record.dtype.newbyteorder("=")
    if expected == np.float16 and dtype == np.float32:
        return  # stored narrow, widened exactly on restore
    if dtype != expected:
        raise CompressedFormatError(f"{where}: dtype {expected} in the container, {dtype} in model")


def _restore_kernel(slot, values):
    quantizer = slot.quantizer
    latent = values
    if isinstance(quantizer, TernaryQuantizer) and quantizer.method is TernaryMethod.TWN:
        latent = _twn_latent(values, slot.channels)
    slot.variable.assign(latent)
    reproduced = _hard_values(slot, slot.variable.value())
    if not np.array_equal(reproduced.view(np.uint32), values.view(np.uint32)):
        raise CompressedFormatError(
            f"{slot.variable.name}: the model's {type(quantizer).__name__} does not reproduce "
            "the stored values (a different scheme, or a corrupt container)"
        )


def compress(qmodel, coder="ans", include_training_state=True):
    """Compresses a quantized model: per kernel, a codebook and entropy-coded indices.

    Each tfquant-quantized kernel is hard-quantized (`quantizer.hard_quantize`) and stored as
    its distinct float32 values -- per layer, or per output channel for per-channel quantizers
    (ternary / uniform / LQ-Nets per channel), as a table of values or a per-channel grid
    step, whichever is smaller -- plus the index of every weight, entropy-coded with `coder`.
    Every other variable of the model is stored exactly. See `Compressed` for the size
    accounting and the module docstring for the binary layout.

    For a `mode="masked"` multivalued quantizer whose schedule has not frozen every weight yet,
    the free weights are stored hard-quantized too (with a warning).

    A model from `tfq.shrink` is stored as it is: no weight, bias or position of a removed
    channel, so fewer bytes than the pruned model it came from. `ratio` is then relative to
    the shrunk kernels' float32 size; against the original network divide that model's
    `compress(...).float_bytes` (or 4 bytes per original weight) by `nbytes`.

    With `include_training_state=False` (like Keras' `save(..., include_optimizer=False)`)
    the container leaves out what only steers training: tfmot's `optimizer_step` counters and
    each quantizer's `training_state` (the multivalued schedules' intervals, adaptation and
    step counters). What every forward pass and the export read is kept -- kernels, codebook
    centers, zero thresholds, frozen masks, TTQ scales, LQ-Nets bases, biases, BatchNorm
    statistics, activation ranges -- so the restored model predicts, exports and
    re-compresses exactly as `qmodel` does; the left-out variables keep the values of the model
    you restore into (a fresh `tfq.quantize_model`: no schedule in progress). Use it for
    shipping weights; keep the default to resume a schedule where it stopped. On LeNet-5 with
    four multivalued layers it saves a few hundred bytes.

    Args:
      qmodel: a model returned by `tfq.quantize_model`.
      coder: "ans" (default; near the entropy bound) or "huffman".
      include_training_state: False to leave out the variables that only steer training
        (see above).

    Returns:
      A `Compressed`.

    Raises:
      ValueError: `qmodel` has no tfquant quantizer, or an unknown `coder`.
    """
    check_keras2_model(qmodel, "qmodel")
    coder = Coder.parse(coder, "coder")
    if not isinstance(include_training_state, (bool, np.bool_)):
        raise TypeError(
            "include_training_state must be True or False. Received: "
            f"include_training_state={include_training_state!r}"
        )
    slots = _slots(qmodel, include_training_state)
    if not any(slot.quantizer is not None for slot in slots):
        raise ValueError(
            "qmodel must be a model returned by tfq.quantize_model. Received: a model with no "
            "tfquant quantizer"
        )
    for slot in slots:  # a NaN kernel weight would otherwise be stored as its nearest center
        values = slot.variable.numpy()
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ValueError(
                "qmodel weights must be finite (did training diverge?). Received: NaN or Inf "
                f"in {slot.variable.name}"
            )
    records = [_record_for(slot, coder) for slot in slots]
    return Compressed(records, include_training_state=include_training_state)


def decompress(path_or_bytes, model, max_elements=None):
    """Restores a container into `model` and returns `model` (or, for a shrunk model, a new
    model of the shrunk architecture).

    `model` must be a quantized model of the same architecture and scheme (e.g. a fresh
    `tfq.quantize_model(keras_model, scheme)`). Its quantized kernels get the stored
    hard-quantized values (bit for bit; -0.0 comes back as 0.0), every other variable the
    stored value, so the model's quantizers reproduce the stored values exactly and the model
    computes what the compressed one did. A container written with
    `include_training_state=False` holds no training-only variables: those keep `model`'s
    values (`Compressed.include_training_state` says which kind a container is). Nothing is
    written unless everything fits.

    A container of a `tfq.shrink` result stores only the kept channels, and no architecture
    beyond its tensors' shapes: those shapes give every Conv1D / Conv2D / Conv2DTranspose /
    Dense layer's output channel count, and every other shape follows. So `model` may be
    either the shrunk model (or one of its architecture, e.g. loaded with `tfq.load_model`),
    restored in place, or the QAT model of the architecture it was shrunk from (the same
    `tfq.quantize_model(keras_model, scheme)` as for an unshrunk container): then a new model
    with those channel counts is built from `model`'s config, restored and returned (not
    compiled), and `model` is not modified. Any other mismatch raises an error that names
    the record and both shapes.

    Args:
      path_or_bytes: a file path, or the bytes of `Compressed.to_bytes()`.
      model: the quantized model to write into, or for a shrunk container the unshrunk
        QAT model it was shrunk from (see above).
      max_elements: refuse tensors with more elements than this; default: the size of the
        model's largest variable (a file cannot make decoding allocate more than the model).

    Returns:
      `model`, or a new model of the shrunk architecture (see above).

    Raises:
      CompressedFormatError: the data is not a valid container, or does not fit `model`
        (neither its architecture nor a `tfq.shrink` result of it).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = path_or_bytes
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        with open(path_or_bytes, "rb") as file:
            data = file.read()
    else:
        raise TypeError(
            "path_or_bytes must be a path or bytes. Received: "
            f"path_or_bytes of type {type(path_or_bytes).__name__}"
        )
    if max_elements is None:
        check_keras2_model(model)
        max_elements = max([math.prod(v.shape) for v in model.weights] + [1])
    return Compressed.from_bytes(data, max_elements).restore(model)
