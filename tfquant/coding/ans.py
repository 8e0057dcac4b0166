"""Asymmetric numeral systems (ANS, Duda 2013) coding of codebook indices with the stack coder
of the `constriction` package (Bamler 2022) and a static categorical model: within a few bytes
of the empirical entropy bound, where Huffman loses up to 1 bit per symbol.

The model is the exact symbol counts, stored in the stream; encoder and decoder turn them into
the same probabilities `counts / n`, which constriction quantizes (deterministically) to its
fixed-point model.

Stream layout (varints are unsigned LEB128):

    varint    alphabet size K, 1..65536
    K varints count of each symbol; their sum is the symbol count n
    rest      constriction's compressed uint32 words, little-endian; none when at most one
              symbol occurs (a 1-symbol alphabet costs no bits per symbol)
"""

import constriction
import numpy as np

from tfquant.coding import stream
from tfquant.coding.entropy import entropy_of_counts
from tfquant.coding.huffman import MAX_ALPHABET, MAX_SYMBOLS, _check_indices
from tfquant.coding.stream import CompressedFormatError, Reader

#: Bits an ANS stream can hold beyond the information content of its symbols (the coder's
#: state is 64 bits; twice that for margin). A declared symbol distribution needing more bits
#: than the payload plus this slack is rejected before decoding.
_STATE_BITS = 128


def _model(counts):
    probabilities = counts.astype(np.float64) / counts.sum()
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def encode(indices, alphabet_size=None):
    """ANS-codes an array of symbols in [0, alphabet_size) with their own counts as the model.

    Args:
      indices: integer array (any shape; coded flattened).
      alphabet_size: number of symbols, at most 65536; default largest index + 1.

    Returns:
      bytes, self-describing (see the module docstring); `decode` inverts it.

    >>> data = encode(np.array([0, 0, 0, 1, 2, 0]))
    >>> decode(data).tolist()
    [0, 0, 0, 1, 2, 0]
    """
    indices, alphabet_size = _check_indices(indices, alphabet_size)
    counts = np.bincount(indices, minlength=alphabet_size)
    header = stream.varint(alphabet_size) + b"".join(stream.varint(int(c)) for c in counts)
    if np.count_nonzero(counts) <= 1:
        return header
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(indices.astype(np.int32), _model(counts))
    return header + coder.get_compressed().astype("<u4").tobytes()


def decode(data, max_symbols=MAX_SYMBOLS):
    """Decodes a stream written by `encode`.

    Args:
      data: bytes-like.
      max_symbols: refuse streams that declare more symbols than this.

    Returns:
      int64 array of the symbols.

    Raises:
      CompressedFormatError: the bytes are not a valid stream (truncated, trailing words,
        decoded symbols that disagree with the stored counts, too many symbols, ...).
    """
    reader = Reader(data, "ANS stream")
    alphabet_size = reader.varint("alphabet size", MAX_ALPHABET)
    if alphabet_size < 1:
        reader.fail("alphabet size must be at least 1")
    counts = np.zeros(alphabet_size, np.int64)
    total = 0
    for symbol in range(alphabet_size):
        counts[symbol] = reader.varint("symbol count", max_symbols - total)
        total += int(counts[symbol])
    payload = reader.take(reader.remaining, "payload")
    used = np.flatnonzero(counts)
    if used.size <= 1:
        if len(payload):
            reader.fail("payload present for a 1-symbol alphabet")
        return np.full(total, used[0] if used.size else 0, np.int64)
    if len(payload) % 4:
        reader.fail(f"payload of {len(payload)} bytes is not whole 32-bit words")
    if total * entropy_of_counts(counts) > 8 * len(payload) + _STATE_BITS:
        reader.fail("payload too short for the declared symbol counts")
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = np.asarray(coder.decode(_model(counts), total), np.int64)
        empty = coder.is_empty()
    except Exception as error:  # constriction reports bad words as ValueError
        raise CompressedFormatError(f"ANS stream: corrupt payload ({error})") from None
    if not empty:
        reader.fail("words left over after the declared symbols")
    if not np.array_equal(np.bincount(symbols, minlength=alphabet_size), counts):
        reader.fail("decoded symbols disagree with the stored counts")
    return symbols


def bits_per_weight(indices, alphabet_size=None):
    """Size of `encode(indices)` in bits per symbol, counts header included.

    >>> round(bits_per_weight(np.array([0] * 900 + [1] * 100)), 3)
    0.544
    """
    indices = np.asarray(indices)
    return 8 * len(encode(indices, alphabet_size)) / max(indices.size, 1)


__all__ = ["CompressedFormatError", "bits_per_weight", "decode", "encode"]
