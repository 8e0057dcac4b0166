"""Canonical Huffman coding of codebook indices, one code per tensor (Choi et al., seed 003,
Sec. 5; the third stage of Deep Compression). Code lengths come from the symbol counts, codes
are canonical, so the stream stores only the lengths.

Stream layout (varints are unsigned LEB128):

    varint  alphabet size K, 1..65536
    varint  symbol count n
    K bytes code length of each symbol: 0 = unused, else 1..MAX_CODE_LENGTH
    varint  the only symbol -- present only when every length is 0 and n > 0 (a 1-symbol
            alphabet costs no bits per symbol)
    rest    the codes, most significant bit first, zero-padded to a whole byte
"""

import heapq

import numpy as np

from tfquant.coding import stream
from tfquant.coding.stream import CompressedFormatError, Reader

MAX_ALPHABET = 65536
#: Longest code (bounds the decode table at 2**20 entries).
MAX_CODE_LENGTH = 20
#: Default limit on the symbols one stream may declare (decode allocates per symbol).
MAX_SYMBOLS = 1 << 26


def _huffman_lengths(counts):
    """Optimal (unlimited) prefix-code lengths; 0 for unused symbols, 0 for a lone symbol."""
    lengths = np.zeros(counts.size, np.int64)
    used = np.flatnonzero(counts)
    if used.size <= 1:
        return lengths
    # Leaves are nodes 0..m-1, merged nodes follow; ties broken by node id (deterministic).
    parent = np.zeros(2 * used.size - 1, np.int64)
    heap = [(int(counts[s]), node) for node, s in enumerate(used)]
    heapq.heapify(heap)
    next_node = used.size
    while len(heap) > 1:
        first_count, first = heapq.heappop(heap)
        second_count, second = heapq.heappop(heap)
        parent[first] = parent[second] = next_node
        heapq.heappush(heap, (first_count + second_count, next_node))
        next_node += 1
    depth = np.zeros(2 * used.size - 1, np.int64)
    for node in range(2 * used.size - 3, -1, -1):  # parents have larger ids: top-down
        depth[node] = depth[parent[node]] + 1
    lengths[used] = depth[: used.size]
    return lengths


def _package_merge(counts, max_length):
    """Optimal lengths with none above `max_length` (Larmore & Hirschberg's package-merge).

    Level lists hold the leaves (sorted counts) merged with packages (sums of consecutive
    pairs of the level below). The 2m - 2 cheapest items of the top list are selected; the
    selected items of every level are a prefix, and a leaf's code length is the number of
    levels whose selected prefix holds it.
    """
    used = np.flatnonzero(counts)
    order = used[np.argsort(counts[used], kind="stable")]
    weights = counts[order]
    leaf_flags = []  # per level, deepest first: which items of the merged list are leaves
    current = weights
    leaf_flags.append(np.ones(weights.size, bool))
    for _ in range(max_length - 1):
        pairs = current.size // 2
        packages = current[0 : 2 * pairs : 2] + current[1 : 2 * pairs : 2]
        merged = np.concatenate([weights, packages])
        is_leaf = np.concatenate([np.ones(weights.size, bool), np.zeros(pairs, bool)])
        order_in_level = np.argsort(merged, kind="stable")  # ties: leaves first
        current = merged[order_in_level]
        leaf_flags.append(is_leaf[order_in_level])
    sorted_lengths = np.zeros(weights.size, np.int64)
    take = 2 * weights.size - 2
    for flags in reversed(leaf_flags):
        leaves = int(np.count_nonzero(flags[:take]))
        sorted_lengths[:leaves] += 1
        take = 2 * (take - leaves)
    lengths = np.zeros(counts.size, np.int64)
    lengths[order] = sorted_lengths
    return lengths


def code_lengths(counts, max_length=MAX_CODE_LENGTH):
    """Huffman code lengths for symbols with the given counts.

    The lengths minimize the expected code length (sum of count * length) over all prefix
    codes with no code longer than `max_length`: Huffman's algorithm, or package-merge when
    the Huffman code would exceed the limit (only with symbols of probability below about
    1e-4).

    Args:
      counts: non-negative integer count per symbol.
      max_length: longest allowed code, in [1, 64].

    Returns:
      int array of code lengths, 0 for symbols with count 0 (and for the one symbol of a
      1-symbol alphabet, which needs no bits).

    >>> code_lengths([5, 1, 1, 2]).tolist()
    [1, 3, 3, 2]
    """
    counts = np.asarray(counts, np.int64).ravel()
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative. Received: a negative count")
    if np.count_nonzero(counts) > 2**max_length:
        raise ValueError(f"max_length={max_length} cannot code {np.count_nonzero(counts)} symbols")
    lengths = _huffman_lengths(counts)
    if lengths.max(initial=0) > max_length:
        lengths = _package_merge(counts, max_length)
    return lengths


def canonical_codes(lengths):
    """Canonical codes for the given lengths: shorter codes first, then by symbol.

    >>> [format(int(c), "b") for c in canonical_codes(np.array([1, 3, 3, 2]))]
    ['0', '110', '111', '10']
    """
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.int64)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    sorted_lengths = lengths[order]
    code = 0
    previous = sorted_lengths[0]
    out = np.empty(order.size, np.int64)
    for position, length in enumerate(sorted_lengths.tolist()):
        if position:
            code = (code + 1) << (length - previous)
        out[position] = code
        previous = length
    codes[order] = out
    return codes


def _check_indices(indices, alphabet_size):
    indices = np.asarray(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"indices must be integers. Received: dtype={indices.dtype}")
    indices = indices.ravel().astype(np.int64)
    top = int(indices.max()) + 1 if indices.size else 1
    if indices.size and indices.min() < 0:
        raise ValueError(f"indices must be non-negative. Received: {int(indices.min())}")
    if alphabet_size is None:
        alphabet_size = top
    if not top <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(
            f"alphabet_size must be in [{top}, {MAX_ALPHABET}] (above the largest index). "
            f"Received: alphabet_size={alphabet_size}"
        )
    return indices, int(alphabet_size)


def encode(indices, alphabet_size=None):
    """Huffman-codes an array of symbols in [0, alphabet_size).

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
    lengths = code_lengths(counts)
    header = (
        stream.varint(alphabet_size)
        + stream.varint(indices.size)
        + lengths.astype(np.uint8).tobytes()
    )
    used = np.flatnonzero(counts)
    if used.size == 1:
        return header + stream.varint(int(used[0]))
    if used.size == 0:
        return header
    symbol_lengths = lengths[indices]
    symbol_codes = canonical_codes(lengths)[indices]
    starts = np.cumsum(symbol_lengths) - symbol_lengths
    bits = np.zeros(int(symbol_lengths.sum()), np.uint8)
    for bit in range(int(lengths.max())):
        has_bit = symbol_lengths > bit
        shift = symbol_lengths[has_bit] - 1 - bit
        bits[starts[has_bit] + bit] = (symbol_codes[has_bit] >> shift) & 1
    return header + np.packbits(bits).tobytes()


def decode(data, max_symbols=MAX_SYMBOLS):
    """Decodes a stream written by `encode`.

    Args:
      data: bytes-like.
      max_symbols: refuse streams that declare more symbols than this.

    Returns:
      int64 array of the symbols.

    Raises:
      CompressedFormatError: the bytes are not a valid stream (truncated, trailing bytes,
        lengths that are not a complete prefix code, too many symbols, ...).
    """
    reader = Reader(data, "Huffman stream")
    alphabet_size = reader.varint("alphabet size", MAX_ALPHABET)
    if alphabet_size < 1:
        reader.fail("alphabet size must be at least 1")
    count = reader.varint("symbol count", max_symbols)
    lengths = np.frombuffer(reader.take(alphabet_size, "code lengths"), np.uint8).astype(np.int64)
    if lengths.max() > MAX_CODE_LENGTH:
        reader.fail(f"code length {int(lengths.max())} exceeds {MAX_CODE_LENGTH}")
    used = np.flatnonzero(lengths)
    if used.size == 0:
        if count == 0:
            reader.expect_end()
            return np.zeros(0, np.int64)
        symbol = reader.varint("single symbol", alphabet_size - 1)
        reader.expect_end()
        return np.full(count, symbol, np.int64)
    width = int(lengths.max())  # W: every code fits a W-bit window
    if int(np.sum(np.left_shift(1, width - lengths[used]))) != 1 << width:
        reader.fail("code lengths do not form a complete prefix code")
    payload = np.frombuffer(reader.take(reader.remaining, "payload"), np.uint8)
    if count == 0:
        if payload.size:
            reader.fail("payload present for 0 symbols")
        return np.zeros(0, np.int64)
    total_bits = 8 * payload.size
    if count > total_bits:
        reader.fail(f"{count} symbols need at least {count} bits, the payload has {total_bits}")
    if total_bits > count * width + 7:
        reader.fail("payload longer than the declared symbols can use")
    return _decode_payload(reader, payload, lengths, used, width, count)


def _decode_payload(reader, payload, lengths, used, width, count):
    """Table decode of every bit position at once, then pointer doubling to follow the chain
    of code starts from bit 0 (all numpy, no per-symbol Python loop)."""
    total_bits = 8 * payload.size
    bits = np.concatenate([np.unpackbits(payload), np.zeros(width, np.uint8)])
    windows = np.zeros(total_bits, np.int64)  # the W bits starting at each position
    for bit in range(width):
        windows = (windows << 1) | bits[bit : bit + total_bits]
    order = used[np.lexsort((used, lengths[used]))]  # canonical order tiles [0, 2**W)
    repeats = np.left_shift(1, width - lengths[order])
    table_symbol = np.repeat(order, repeats)
    table_length = np.repeat(lengths[order], repeats)
    step = table_length[windows]
    jump = np.minimum(np.arange(total_bits) + step, total_bits)
    jump = np.append(jump, total_bits)  # position total_bits: past the end, stays there
    starts = np.zeros(1, np.int64)
    while starts.size < count:
        starts = np.concatenate([starts, jump[starts[: count - starts.size]]])
        if starts.size < count:
            jump = jump[jump]
    last = int(starts[-1])
    if last >= total_bits or last + int(step[last]) > total_bits:
        reader.fail("truncated payload")
    end = last + int(step[last])
    if (end + 7) // 8 != payload.size or np.any(bits[end:total_bits]):
        reader.fail("bytes or nonzero padding after the last code")
    return table_symbol[windows[starts]].astype(np.int64)


def bits_per_weight(indices, alphabet_size=None):
    """Size of `encode(indices)` in bits per symbol, code lengths header included.

    >>> bits_per_weight(np.array([0, 1] * 500))
    1.04
    """
    indices = np.asarray(indices)
    return 8 * len(encode(indices, alphabet_size)) / max(indices.size, 1)


__all__ = [
    "CompressedFormatError",
    "bits_per_weight",
    "canonical_codes",
    "code_lengths",
    "decode",
    "encode",
]
