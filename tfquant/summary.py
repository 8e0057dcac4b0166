"""`tfq.summary(qmodel)`: per quantized weight, the codebook size, the distinct values the
weights actually take, the frozen fraction, the sparsity (exact zeros), the entropy of the
value distribution and sizes. Weights under a quantizer that is not tfquant's (tfmot's 8-bit,
on a layer annotated with tfmot's own config) are listed too.
"""

import dataclasses
import math

import numpy as np

from tfquant._keras import check_keras2_model, quantized_weights
from tfquant.quantizers.base import TfquantQuantizer


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One quantized weight tensor of a QAT model.

    Attributes:
      layer: layer name. quantizer: quantizer class name. weights: number of weights.
      levels: allowed values per codebook (per channel for per-channel quantizers).
      distinct: distinct values present in the hard-quantized weights (per-channel
        quantizers: the most in any one channel).
      frozen: fraction of weights frozen by a schedule (1.0 when every weight snaps).
      entropy_bits: empirical entropy of the quantized values, bits per weight (per channel
        codebooks: of the per-channel code indices, averaged).
      fixed_bytes: size with fixed-length codes, ceil(log2(levels)) bits per weight, plus the
        float32 numbers that define the codebook(s): the centers, or a scale (uniform, TWN),
        two scales (TTQ) or a basis (LQ-Nets) per codebook.
      entropy_bytes: the entropy bound of the codes plus the codebook(s).
      sparsity: fraction of the hard-quantized weights that are exactly 0 (pruned).
      bits: bits per weight with fixed-length codes (a tfmot quantizer's `num_bits`).
    """

    layer: str
    quantizer: str
    weights: int
    levels: int
    distinct: int
    frozen: float
    entropy_bits: float
    fixed_bytes: int
    entropy_bytes: int
    sparsity: float = 0.0
    bits: int = 0  # bits per weight of fixed-length codes: ceil(log2(levels)), 8 for tfmot's


def entropy_bits(values):
    """Empirical entropy (bits per symbol) of the values in `values`.

    >>> entropy_bits(np.array([0.0, 0.0, 1.0, 1.0]))
    1.0
    """
    _, counts = np.unique(np.asarray(values).ravel(), return_counts=True)
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _distinct_and_entropy(quantized, view=None):
    """Distinct values and entropy (bits per weight) of a quantized kernel: over the whole
    kernel, or with `view` ([N, C], per-channel codebooks) the largest per-channel count and
    the mean per-channel entropy."""
    if view is None:
        return int(np.unique(quantized).size), entropy_bits(quantized)
    distinct = max(np.unique(view[:, c]).size for c in range(view.shape[1]))
    entropy = float(np.mean([entropy_bits(view[:, c]) for c in range(view.shape[1])]))
    return int(distinct), entropy


def _summarize_other(wrapper, weight, quantizer, quantizer_vars):
    """A weight under a quantizer that is not tfquant's (tfmot's `LastValueQuantizer`, ...):
    its values as that quantizer outputs them, `num_bits` per weight, one float32 scale per
    channel (per-axis) or per tensor."""
    kernel = weight.numpy()
    quantized = np.asarray(quantizer(weight, training=False, weights=quantizer_vars))
    bits = int(getattr(quantizer, "num_bits", 8))
    levels = 2**bits - int(bool(getattr(quantizer, "narrow_range", False)))
    per_axis = bool(getattr(quantizer, "per_axis", False))
    view = quantized.reshape(-1, quantized.shape[-1]) if per_axis else None
    distinct, entropy = _distinct_and_entropy(quantized, view)
    scales = view.shape[1] if per_axis else 1
    return LayerSummary(
        layer=wrapper.name,
        quantizer=type(quantizer).__name__,
        weights=int(kernel.size),
        levels=levels,
        distinct=int(distinct),
        frozen=1.0,
        entropy_bits=entropy,
        fixed_bytes=math.ceil(kernel.size * bits / 8) + 4 * scales,
        entropy_bytes=math.ceil(kernel.size * entropy / 8) + 4 * scales,
        sparsity=float(np.count_nonzero(quantized == 0) / max(quantized.size, 1)),
        bits=bits,
    )


def _summarize(wrapper, weight, quantizer, quantizer_vars):
    if not isinstance(quantizer, TfquantQuantizer):
        return _summarize_other(wrapper, weight, quantizer, quantizer_vars)
    kernel = weight.numpy()
    quantized = np.asarray(quantizer.hard_quantize(kernel, quantizer_vars))
    levels = int(quantizer.levels)
    view = np.asarray(quantizer.channel_view(quantized)) if quantizer.per_channel else None
    distinct, entropy = _distinct_and_entropy(quantized, view)
    channels = view.shape[1] if quantizer.per_channel else 1
    codebook_floats = channels * quantizer.codebook_floats()
    frozen = 1.0
    if "frozen_mask" in quantizer_vars and getattr(quantizer, "mode", None) == "masked":
        frozen = float(np.mean(quantizer_vars["frozen_mask"].numpy()))
    index_bits = max(1, math.ceil(math.log2(max(levels, 2))))
    return LayerSummary(
        layer=wrapper.name,
        quantizer=type(quantizer).__name__,
        weights=int(kernel.size),
        levels=levels,
        distinct=int(distinct),
        frozen=frozen,
        entropy_bits=entropy,
        fixed_bytes=math.ceil(kernel.size * index_bits / 8) + 4 * codebook_floats,
        entropy_bytes=math.ceil(kernel.size * entropy / 8) + 4 * codebook_floats,
        sparsity=float(np.count_nonzero(quantized == 0) / max(quantized.size, 1)),
        bits=index_bits,
    )


def summary(qmodel, print_fn=print):
    """Prints and returns one `LayerSummary` per quantized weight of `qmodel`: every weight
    under a tfquant quantizer, and every weight under another quantizer (tfmot's 8-bit one
    on a layer annotated with tfmot's own config, say), whose row names that quantizer.

    Args:
      qmodel: a model returned by `tfq.quantize_model`.
      print_fn: called with each line of the table; None prints nothing.

    Returns:
      list of `LayerSummary`.

    Raises:
      TypeError: `qmodel` is not a tf_keras model, or `print_fn` is not callable.
      ValueError: `qmodel` is unbuilt or has no tfquant quantizer.
    """
    check_keras2_model(qmodel, "qmodel", distiller=True)
    if print_fn is not None and not callable(print_fn):
        raise TypeError(
            f"print_fn must be a function of one string, or None. Received: print_fn={print_fn!r}"
        )
    entries = list(quantized_weights(qmodel))
    rows = [_summarize(*entry) for entry in entries]
    if not any(isinstance(entry[2], TfquantQuantizer) for entry in entries):
        raise ValueError(
            "qmodel must be a model returned by tfq.quantize_model. Received: a model with no "
            "tfquant quantizer"
        )
    if print_fn is not None:
        header = (
            f"{'layer':<24}{'quantizer':<24}{'weights':>9}{'bits':>5}{'levels':>7}{'distinct':>9}"
            f"{'frozen':>8}{'zeros':>8}{'bits/w':>8}{'bytes':>9}{'entropy B':>10}"
        )
        print_fn(header)
        print_fn("-" * len(header))
        for r in rows:
            print_fn(
                f"{r.layer:<24}{r.quantizer:<24}{r.weights:>9}{r.bits:>5}{r.levels:>7}{r.distinct:>9}"
                f"{r.frozen:>8.1%}{r.sparsity:>8.1%}{r.entropy_bits:>8.3f}{r.fixed_bytes:>9}"
                f"{r.entropy_bytes:>10}"
            )
    return rows
