"""Per-layer coding report: bits per weight of the entropy bound, Huffman and ANS for every
quantized kernel of a model, measured on the codebooks and indices the container stores."""

import dataclasses
import math

from tfquant.coding.container import compress


@dataclasses.dataclass(frozen=True)
class LayerCoding:
    """Bits per weight of one quantized kernel under each coder.

    Attributes:
      layer: the kernel variable's name. weights: number of weights. levels: distinct values
      (per-channel codebooks: the most in any channel).
      entropy_bits: empirical entropy of the indices (the bound).
      huffman_bits, ans_bits: coded size, coder header included.
      sparsity: fraction of the weights that are exactly zero (a zero interval / pruning).

    Example:
      >>> row = LayerCoding("fc/kernel", 1000, 8, 2.1, 2.15, 2.11)
      >>> row.huffman_bits > row.ans_bits > row.entropy_bits
      True
    """

    layer: str
    weights: int
    levels: int
    entropy_bits: float
    huffman_bits: float
    ans_bits: float
    sparsity: float = 0.0


def report(qmodel, print_fn=print):
    """Codes `qmodel` with Huffman and with ANS and reports bits per weight per layer.

    Args:
      qmodel: a model returned by `tfq.quantize_model`.
      print_fn: called with each line of the table (and a totals line); None prints nothing.

    Returns:
      list of `LayerCoding`.
    """
    by_huffman = compress(qmodel, coder="huffman")
    by_ans = compress(qmodel, coder="ans")
    rows = [
        LayerCoding(
            layer=a.name,
            weights=math.prod(a.shape),
            levels=a.levels,
            entropy_bits=a.entropy_bits,
            huffman_bits=h.coded_bits,
            ans_bits=a.coded_bits,
            sparsity=a.sparsity,
        )
        for h, a in zip(by_huffman.layers, by_ans.layers, strict=True)
    ]
    if print_fn is not None:
        header = (
            f"{'layer':<28}{'weights':>9}{'levels':>7}{'zeros':>8}{'entropy':>9}{'huffman':>9}"
            f"{'ans':>9}"
        )
        print_fn(header)
        print_fn("-" * len(header))
        for r in rows:
            print_fn(
                f"{r.layer:<28}{r.weights:>9}{r.levels:>7}{r.sparsity:>8.1%}{r.entropy_bits:>9.3f}"
                f"{r.huffman_bits:>9.3f}{r.ans_bits:>9.3f}"
            )
        print_fn(
            f"container: huffman {by_huffman.nbytes} B (ratio {by_huffman.ratio:.2f}), "
            f"ans {by_ans.nbytes} B (ratio {by_ans.ratio:.2f}), "
            f"float32 kernels {by_ans.float_bytes} B"
        )
    return rows
