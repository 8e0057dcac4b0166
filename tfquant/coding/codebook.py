"""Codebooks of the compressed-model container: how a tensor's float32 values become small
integer symbols for the entropy coders, per layer or per output channel, bit-exactly.

Channel c of a tensor with C channels holds the flat elements i with i % C == c (channels last:
the quantizers' channel view; C = 1 for a per-layer codebook). Two forms; the container keeps
whichever codes smaller:

- table: each channel's distinct values, sorted; a weight's symbol is the position of its
  value in its channel's table. One shared symbol stream, so "the lowest level of its channel"
  is one symbol whatever the channel (ternary, LQ-Nets per channel).
- grid: every value is the float32 product k * step_c of an integer k and a per-channel step;
  the symbol is k - k_low and the codebook is one float32 per channel (uniform per channel,
  ternary with symmetric scales).

Serialized (after the channel count, which the container stores):

    u8          form: 0 = table, 1 = grid
    table:      C varints (entries per channel), then every entry as a little-endian float32
    grid:       zigzag varint k_low, then C little-endian float32 steps
"""

import dataclasses

import numpy as np

from tfquant.coding import stream
from tfquant.coding.huffman import MAX_ALPHABET

TABLE = 0
GRID = 1
_MAX_GRID_CODE = 1 << 24  # |k| below this is exact in float32
_SIGN = np.uint32(0x80000000)


def _sortable(bits):
    """Maps float32 bit patterns to uint32 keys in the order of the float values."""
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _unsortable(keys):
    return np.where(keys & _SIGN, keys & ~_SIGN, ~keys).astype(np.uint32)


def _channel_of(size, channels):
    return np.broadcast_to(np.arange(channels), (size // channels, channels)).ravel()


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """The values of one coded tensor: a per-channel table or a per-channel grid.

    Attributes:
      form: `TABLE` or `GRID`.
      channels: C.
      sizes: table only: entries per channel, int64 [C].
      table: table only: the channels' sorted entries, concatenated, float32.
      steps: grid only: float32 [C].
      low: grid only: the smallest integer code k.

    Example:
      >>> values = np.array([0.5, -1.0, 0.5, 0.0], np.float32)
      >>> book, symbols = table_codebook(values, channels=1)
      >>> book.table.tolist(), symbols.tolist()
      ([-1.0, 0.0, 0.5], [2, 0, 2, 1])
      >>> book.values(symbols).tolist()
      [0.5, -1.0, 0.5, 0.0]
    """

    form: int
    channels: int
    sizes: np.ndarray = None
    table: np.ndarray = None
    steps: np.ndarray = None
    low: int = 0

    def values(self, symbols):
        """float32 values (flat) of a flat symbol array; raises ValueError on a symbol outside
        its channel's codebook."""
        symbols = np.asarray(symbols, np.int64).reshape(-1, self.channels)
        if self.form == TABLE:
            if np.any(symbols >= self.sizes[None, :]):
                raise ValueError("a symbol is past the end of its channel's table")
            offsets = np.cumsum(self.sizes) - self.sizes
            return self.table[offsets[None, :] + symbols].ravel()
        codes = symbols + self.low
        if np.any(np.abs(codes) >= _MAX_GRID_CODE):
            raise ValueError("a grid code is out of range")
        return (codes.astype(np.float32) * self.steps[None, :]).ravel()

    def to_bytes(self):
        if self.form == TABLE:
            counts = b"".join(stream.varint(int(s)) for s in self.sizes)
            return bytes([TABLE]) + counts + self.table.astype("<f4").tobytes()
        return bytes([GRID]) + stream.signed_varint(self.low) + self.steps.astype("<f4").tobytes()

    @classmethod
    def read(cls, reader, channels, elements):
        """Reads a codebook for a tensor of `elements` values in `channels` channels."""
        (form,) = reader.unpack("<B", "codebook form")
        if form == TABLE:
            sizes = np.array(
                [reader.varint("codebook size", MAX_ALPHABET) for _ in range(channels)], np.int64
            )
            if int(sizes.sum()) > max(elements, 1) or (elements and np.any(sizes == 0)):
                reader.fail("codebook sizes do not fit the tensor")
            table = np.frombuffer(reader.take(4 * int(sizes.sum()), "codebook"), "<f4")
            if not np.all(np.isfinite(table)):
                reader.fail("codebook holds NaN or Inf")
            return cls(TABLE, channels, sizes=sizes, table=table.astype(np.float32))
        if form == GRID:
            low = reader.signed_varint("grid low code", _MAX_GRID_CODE)
            steps = np.frombuffer(reader.take(4 * channels, "grid steps"), "<f4")
            if not np.all(np.isfinite(steps)):
                reader.fail("grid steps hold NaN or Inf")
            return cls(GRID, channels, steps=steps.astype(np.float32), low=low)
        reader.fail(f"unknown codebook form {form}")


def table_codebook(values, channels):
    """The table codebook of flat float32 `values` and the symbol of each value.

    Values are told apart by their bit patterns, so the table is exact (-0.0 and 0.0 are two
    entries: normalize first if that matters).
    """
    values = np.ascontiguousarray(values, np.float32).ravel()
    channel = _channel_of(values.size, channels).astype(np.uint64)
    keys = (channel << np.uint64(32)) | _sortable(values.view(np.uint32)).astype(np.uint64)
    unique, inverse = np.unique(keys, return_inverse=True)
    sizes = np.bincount((unique >> np.uint64(32)).astype(np.int64), minlength=channels)
    offsets = np.cumsum(sizes) - sizes
    symbols = inverse.ravel() - offsets[channel.astype(np.int64)]
    table = _unsortable((unique & np.uint64(0xFFFFFFFF)).astype(np.uint32)).view(np.float32)
    return Codebook(TABLE, channels, sizes=sizes, table=table), symbols


def _grid_step(distinct):
    """A float32 step s with every value in `distinct` exactly float32(k) * s, or None."""
    magnitude = np.abs(distinct.astype(np.float64))
    nonzero = magnitude[magnitude > 0]
    if nonzero.size == 0:
        return np.float32(1.0)
    base = nonzero.min()
    if distinct.size > 1:
        gaps = np.diff(np.sort(distinct.astype(np.float64)))
        base = min(base, gaps[gaps > 0].min())
    top = nonzero.max()
    for divisor in (1, 2, 3, 4):
        top_code = np.rint(top * divisor / base)
        if top_code >= _MAX_GRID_CODE:
            return None
        guess = np.float32(top / top_code)
        for candidate in (
            guess,
            np.nextafter(guess, np.float32(np.inf)),
            np.nextafter(guess, np.float32(0)),
        ):
            if not candidate > 0:
                continue
            codes = np.rint(distinct.astype(np.float64) / np.float64(candidate))
            if np.all(np.abs(codes) < _MAX_GRID_CODE) and np.array_equal(
                (codes.astype(np.float32) * candidate).view(np.uint32), distinct.view(np.uint32)
            ):
                return candidate
    return None


def grid_codebook(values, channels, table=None):
    """The grid codebook of flat float32 `values` and their symbols, or None if some channel's
    values are not exactly k * step in float32 (or the codes span more than 65536)."""
    values = np.ascontiguousarray(values, np.float32).ravel()
    if table is None:
        table, _ = table_codebook(values, channels)
    offsets = np.cumsum(table.sizes) - table.sizes
    steps = np.empty(channels, np.float32)
    for channel in range(channels):
        step = _grid_step(table.table[offsets[channel] : offsets[channel] + table.sizes[channel]])
        if step is None:
            return None
        steps[channel] = step
    view = values.reshape(-1, channels)
    codes = np.rint(view.astype(np.float64) / steps[None, :].astype(np.float64)).astype(np.int64)
    if codes.size == 0:
        return Codebook(GRID, channels, steps=steps, low=0), codes.ravel()
    low = int(codes.min())
    if int(codes.max()) - low >= MAX_ALPHABET:
        return None
    book = Codebook(GRID, channels, steps=steps, low=low)
    if not np.array_equal(book.values(codes - low).view(np.uint32), values.view(np.uint32)):
        return None
    return book, (codes - low).ravel()


def codebooks(values, channels):
    """Every codebook that represents `values` exactly: the table, and the grid if it fits."""
    table, symbols = table_codebook(values, channels)
    options = [(table, symbols)]
    grid = grid_codebook(values, channels, table)
    if grid is not None:
        options.append(grid)
    return options
