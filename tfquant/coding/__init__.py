"""Division methods, entropy coders and the compressed-model container of tfquant.

`divide` / `ecsq` / `hessian_diagonal` place codebook centers; `huffman` and `ans` code the
codebook indices; `compress` / `decompress` store a quantized model with its codebooks and
coded indices (`round_to_float16` first makes the biases storable in 2 bytes); `report`
gives bits per weight of the entropy bound, Huffman and ANS per layer.
"""

from tfquant.coding import ans, huffman
from tfquant.coding.container import (
    Coder,
    Compressed,
    LayerStats,
    compress,
    decompress,
    round_to_float16,
)
from tfquant.coding.division import divide, ecsq
from tfquant.coding.entropy import entropy_bits
from tfquant.coding.hessian import hessian_diagonal
from tfquant.coding.report import LayerCoding, report
from tfquant.coding.stream import CompressedFormatError

__all__ = [
    "divide",
    "ecsq",
    "hessian_diagonal",
    "huffman",
    "ans",
    "entropy_bits",
    "Coder",
    "Compressed",
    "CompressedFormatError",
    "LayerStats",
    "LayerCoding",
    "compress",
    "decompress",
    "round_to_float16",
    "report",
]
