"""Quantization schemes: tfmot `QuantizeScheme`s whose registry puts a tfquant quantizer on
every Conv2D, DepthwiseConv2D and Dense kernel and leaves every other layer (BatchNorm
patterns, Add, pooling, ...) to tfmot's default 8-bit registry and layout transforms.
"""

import tensorflow_model_optimization as tfmot

from tfquant._keras import keras
from tfquant.configs.layer import LayerQuantizeConfig, supported_weight_attribute
from tfquant.quantizers import (
    LearnedBasisActivationQuantizer,
    LearnedBasisQuantizer,
    MultivaluedQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from tfquant.quantizers.base import check_bool, check_int

_default_8bit = tfmot.quantization.keras.default_8bit
_NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6")


class Scheme(tfmot.quantization.keras.QuantizeScheme):
    """Base class of tfquant schemes; use `Multivalued`, `Ternary`, `LearnedBasis`, `Uniform`.

    Args:
      keep_first_last_8bit: quantize the first and last Conv/Dense layer of the model with
        8-bit uniform weights instead (the LQ-Nets / TWN convention).
    """

    #: Export granularity of the weight quantizers (and of the 8-bit first/last layers).
    per_channel = False

    def __init__(self, keep_first_last_8bit=False):
        self.keep_first_last_8bit = check_bool("keep_first_last_8bit", keep_first_last_8bit)

    def weight_quantizer(self):
        """A new weight quantizer for one layer."""
        raise NotImplementedError

    def activation_quantizer(self, layer):
        """The activation quantizer for `layer`, or None for tfmot's 8-bit one."""
        del layer
        return None

    def config_for(self, layer, eight_bit=False):
        """The `LayerQuantizeConfig` this scheme gives `layer` (a supported layer)."""
        attribute = supported_weight_attribute(layer)
        if eight_bit:
            return LayerQuantizeConfig(attribute, UniformQuantizer(8, self.per_channel))
        return LayerQuantizeConfig(
            attribute, self.weight_quantizer(), self.activation_quantizer(layer)
        )

    def get_layout_transformer(self):
        return _default_8bit.Default8BitQuantizeLayoutTransform()

    def get_quantize_registry(self):
        return _Registry(self, eight_bit_layers=())

    def get_config(self):
        return {"keep_first_last_8bit": self.keep_first_last_8bit}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _Registry(_default_8bit.Default8BitQuantizeRegistry):
    """tfmot's 8-bit registry with tfquant configs for Conv2D, DepthwiseConv2D and Dense."""

    def __init__(self, scheme, eight_bit_layers):
        super().__init__(disable_per_axis=not scheme.per_channel)
        self._scheme = scheme
        self._eight_bit_layers = frozenset(eight_bit_layers)

    def supports(self, layer):
        return supported_weight_attribute(layer) is not None or super().supports(layer)

    def get_quantize_config(self, layer):
        if supported_weight_attribute(layer) is not None:
            return self._scheme.config_for(layer, layer.name in self._eight_bit_layers)
        return super().get_quantize_config(layer)


class BoundScheme(tfmot.quantization.keras.QuantizeScheme):
    """A scheme applied to one model: knows which layers are kept at 8 bits."""

    def __init__(self, scheme, eight_bit_layers):
        self.scheme = scheme
        self.eight_bit_layers = tuple(eight_bit_layers)

    def get_layout_transformer(self):
        return self.scheme.get_layout_transformer()

    def get_quantize_registry(self):
        return _Registry(self.scheme, self.eight_bit_layers)


class Multivalued(Scheme):
    """Multivalued (codebook) weights: 2**bits centers per layer (MVQ / MPA).

    Args:
      bits: codebook size 2**bits, in [1, 8].
      levels: explicit codebook size in [2, 256]; overrides `bits`.
      division: "kmeans", "linear", "exponential", "hessian_kmeans" (pass `importance` to
        `quantize_model`) or "ecsq" (entropy-constrained, rate weight `entropy_weight`).
      mode: "snap" (naive: all weights snap now) or "masked" (a schedule freezes weights
        gradually; see `tfq.callbacks`).
      keep_first_last_8bit: see `Scheme`.
      entropy_weight: λ of the "ecsq" division, in units of each layer's weight variance.

    Example:
      >>> scheme = Multivalued(bits=3, division="linear")
      >>> Multivalued.from_config(scheme.get_config()) == scheme
      True
    """

    def __init__(
        self,
        bits=3,
        levels=None,
        division="kmeans",
        mode="snap",
        keep_first_last_8bit=False,
        entropy_weight=0.1,
    ):
        super().__init__(keep_first_last_8bit)
        self._template = MultivaluedQuantizer(bits, levels, division, mode, entropy_weight)

    def weight_quantizer(self):
        return MultivaluedQuantizer.from_config(self._template.get_config())

    def get_config(self):
        return {**self._template.get_config(), **super().get_config()}


class Ternary(Scheme):
    """Ternary weights {-a, 0, +b}: TWN or TTQ, per layer or per output channel.

    Example:
      >>> scheme = Ternary(method="ttq")
      >>> Ternary.from_config(scheme.get_config()) == scheme
      True
    """

    def __init__(self, method="twn", per_channel=False, threshold=None, keep_first_last_8bit=False):
        super().__init__(keep_first_last_8bit)
        self._template = TernaryQuantizer(method, per_channel, threshold)
        self.per_channel = self._template.per_channel

    def weight_quantizer(self):
        return TernaryQuantizer.from_config(self._template.get_config())

    def get_config(self):
        return {**self._template.get_config(), **super().get_config()}


class LearnedBasis(Scheme):
    """LQ-Nets: learned K-bit bases for weights (per channel) and activations (per layer).

    Activations are quantized with a learned basis where the layer's own activation is ReLU
    (or ReLU6); other activations keep tfmot's 8-bit quantizer.

    Args:
      weight_bits: K for weights, in [1, 4].
      activation_bits: K for activations in [1, 8], or None for 8-bit activations.
      keep_first_last_8bit: keep the first and last layer at 8 bits (LQ-Nets default: True).

    Example:
      >>> scheme = LearnedBasis(weight_bits=2, activation_bits=4)
      >>> LearnedBasis.from_config(scheme.get_config()) == scheme
      True
    """

    per_channel = True

    def __init__(self, weight_bits=2, activation_bits=2, keep_first_last_8bit=True):
        super().__init__(keep_first_last_8bit)
        self.weight_bits = check_int("weight_bits", weight_bits, 1, 4)
        self.activation_bits = (
            None if activation_bits is None else check_int("activation_bits", activation_bits, 1, 8)
        )

    def weight_quantizer(self):
        return LearnedBasisQuantizer(self.weight_bits, per_channel=True)

    def activation_quantizer(self, layer):
        activation = keras.activations.serialize(layer.activation)
        if self.activation_bits is None or activation not in _NON_NEGATIVE_ACTIVATIONS:
            return None
        return LearnedBasisActivationQuantizer(self.activation_bits)

    def get_config(self):
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            **super().get_config(),
        }


class Uniform(Scheme):
    """Symmetric uniform b-bit weights (the tfmot-style baseline, at 2-8 bits).

    Example:
      >>> scheme = Uniform(bits=4, per_channel=False)
      >>> Uniform.from_config(scheme.get_config()) == scheme
      True
    """

    def __init__(self, bits=8, per_channel=True, keep_first_last_8bit=False):
        super().__init__(keep_first_last_8bit)
        self._template = UniformQuantizer(bits, per_channel)
        self.per_channel = self._template.per_channel

    def weight_quantizer(self):
        return UniformQuantizer.from_config(self._template.get_config())

    def get_config(self):
        return {**self._template.get_config(), **super().get_config()}


__all__ = ["Scheme", "Multivalued", "Ternary", "LearnedBasis", "Uniform"]
