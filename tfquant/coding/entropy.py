"""Empirical entropy of symbol streams: the lower bound (bits per symbol) that the Huffman and
ANS coders of `tfq.coding` are measured against (Choi et al., seed 003, Sec. 4)."""

import numpy as np


def entropy_of_counts(counts):
    """Entropy in bits per symbol of the distribution `counts / sum(counts)`.

    >>> entropy_of_counts([2, 1, 1])
    1.5
    """
    counts = np.asarray(counts, np.float64).ravel()
    counts = counts[counts > 0]
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_bits(indices):
    """Empirical entropy (bits per symbol) of an array of non-negative integer symbols: no
    coder that codes each symbol with a fixed model beats it on average.

    >>> entropy_bits(np.array([0, 0, 1, 2]))
    1.5
    """
    indices = np.asarray(indices).ravel()
    if indices.size == 0:
        return 0.0
    return entropy_of_counts(np.bincount(indices.astype(np.int64)))
