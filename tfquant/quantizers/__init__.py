"""tfquant quantizers: tfmot `Quantizer`s whose state lives in variables created in `build`."""

from tfquant.quantizers.base import TfquantQuantizer
from tfquant.quantizers.learned_basis import (
    LearnedBasisActivationQuantizer,
    LearnedBasisQuantizer,
)
from tfquant.quantizers.multivalued import MultivaluedQuantizer
from tfquant.quantizers.ternary import TernaryQuantizer
from tfquant.quantizers.uniform import UniformQuantizer

__all__ = [
    "TfquantQuantizer",
    "MultivaluedQuantizer",
    "TernaryQuantizer",
    "UniformQuantizer",
    "LearnedBasisQuantizer",
    "LearnedBasisActivationQuantizer",
]
