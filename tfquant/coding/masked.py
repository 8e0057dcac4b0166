"""ANS coding of a pruned kernel's indices with its dead rows and columns taken out: a flag per
row and per column of the [fan-in, outputs] view (does it hold a non-zero weight?), then the
indices of the live rows x live columns. Magnitude pruning at 95 %+ leaves whole inputs and
output neurons at zero (LeNet: 10-30 % of the rows or columns); the flags cost ~1 bit per row
and column at most, where coding those zeros one by one costs -log2 p(0) bits each.

Stream layout (varints are unsigned LEB128; the three parts are `tfquant.coding.ans` streams):

    varint  the zero symbol z (dead rows and columns are all z)
    varint  length of the row-flag stream, then it: R symbols in {0, 1}, 1 = live
    varint  length of the column-flag stream, then it: C symbols in {0, 1}
    rest    the indices of the live rows x live columns, row-major
"""

import numpy as np

from tfquant.coding import ans, stream
from tfquant.coding.huffman import MAX_ALPHABET
from tfquant.coding.stream import CompressedFormatError, Reader


def encode(symbols, rows, columns, zero):
    """Codes `symbols` (rows * columns of them, row-major) with dead rows/columns of `zero`.

    >>> view = np.zeros((4, 3), np.int64); view[1, 2] = 5
    >>> data = encode(view.ravel(), 4, 3, zero=0)
    >>> decode(data, 4, 3).reshape(4, 3).tolist() == view.tolist()
    True
    """
    view = np.asarray(symbols, np.int64).reshape(rows, columns)
    live = view != zero
    live_rows, live_columns = live.any(axis=1), live.any(axis=0)
    parts = [stream.varint(int(zero))]
    for flags in (live_rows, live_columns):
        data = ans.encode(flags.astype(np.int64), alphabet_size=2)
        parts += [stream.varint(len(data)), data]
    inner = view[live_rows][:, live_columns].ravel()
    parts.append(ans.encode(inner, alphabet_size=max(int(inner.max(initial=zero)), zero) + 1))
    return b"".join(parts)


def decode(data, rows, columns):
    """Decodes a stream written by `encode` for a rows x columns view (flat int64 symbols).

    Raises:
      CompressedFormatError: the bytes are not a valid stream for that shape.
    """
    reader = Reader(data, "masked ANS stream")
    zero = reader.varint("zero symbol", MAX_ALPHABET - 1)
    flags = []
    for what, count in (("row flags", rows), ("column flags", columns)):
        length = reader.varint(f"{what} length", reader.remaining)
        decoded = ans.decode(reader.take(length, what), max_symbols=count)
        if decoded.size != count or np.any(decoded > 1):
            reader.fail(f"{what}: {decoded.size} flags for {count} {what.split()[0]}s")
        flags.append(decoded.astype(bool))
    live_rows, live_columns = flags
    expected = int(live_rows.sum()) * int(live_columns.sum())
    inner = ans.decode(reader.take(reader.remaining, "indices"), max_symbols=expected)
    if inner.size != expected:
        reader.fail(f"{inner.size} indices for {expected} live weights")
    view = np.full((rows, columns), zero, np.int64)
    view[np.ix_(live_rows, live_columns)] = inner.reshape(live_rows.sum(), live_columns.sum())
    return view.ravel()


__all__ = ["CompressedFormatError", "decode", "encode"]
