"""`LayerQuantizeConfig`: puts a tfquant weight quantizer on the kernel of a Conv1D, Conv2D,
Conv2DTranspose, DepthwiseConv2D or Dense layer (or the table of an Embedding) and an
activation quantizer on its activation, the same split as tfmot's `Default8BitQuantizeConfig`.
SeparableConv2D is quantized as the DepthwiseConv2D + Conv2D pair tfmot splits it into.
"""

import tensorflow_model_optimization as tfmot

from tfquant._keras import keras

_WEIGHT_ATTRIBUTE = {
    keras.layers.Conv1D: "kernel",
    keras.layers.Conv2D: "kernel",
    keras.layers.Conv2DTranspose: "kernel",
    keras.layers.DepthwiseConv2D: "depthwise_kernel",
    keras.layers.Dense: "kernel",
    keras.layers.Embedding: "embeddings",
}

#: The layer types whose weights tfquant quantizes, as the docs and errors name them.
SUPPORTED_LAYERS = (
    "Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D (as its depthwise and "
    "pointwise kernels), Dense (on inputs of any rank) and Embedding"
)


def supported_weight_attribute(layer):
    """The quantized weight attribute of `layer`, or None if tfquant does not quantize it.

    Exact types only: other subclasses (Conv1DTranspose, Conv3D, ...) are not supported.
    SeparableConv2D has none: tfmot's layout transform splits it into a DepthwiseConv2D and a
    1x1 Conv2D first (`is_separable`).
    """
    return _WEIGHT_ATTRIBUTE.get(type(layer))


def is_separable(layer):
    """True for a SeparableConv2D, which is quantized as a DepthwiseConv2D + Conv2D pair."""
    return type(layer) is keras.layers.SeparableConv2D


def default_activation_quantizer():
    """tfmot's 8-bit moving-average activation quantizer (asymmetric, per tensor)."""
    return tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False
    )


@keras.utils.register_keras_serializable(package="tfquant")
class LayerQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes one weight of a layer with `weight_quantizer` and its activation.

    Args:
      weight_attribute: the layer attribute holding the kernel ("kernel",
        "depthwise_kernel" or, for an Embedding, "embeddings").
      weight_quantizer: a tfmot `Quantizer` (usually a tfquant one).
      activation_quantizer: quantizer for the layer's activation output, or None for tfmot's
        8-bit moving-average quantizer.

    Example:
      >>> from tfquant.quantizers import UniformQuantizer
      >>> config = LayerQuantizeConfig("kernel", UniformQuantizer(bits=4))
      >>> LayerQuantizeConfig.from_config(config.get_config()) == config
      True
    """

    def __init__(self, weight_attribute, weight_quantizer, activation_quantizer=None):
        self.weight_attribute = weight_attribute
        self.weight_quantizer = weight_quantizer
        self.activation_quantizer = activation_quantizer or default_activation_quantizer()

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, self.weight_attribute), self.weight_quantizer)]

    def get_activations_and_quantizers(self, layer):
        if not hasattr(layer, "activation"):
            return []  # Embedding: its output is rows of the quantized table
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        (weight,) = quantize_weights
        setattr(layer, self.weight_attribute, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        if not quantize_activations:
            return
        (activation,) = quantize_activations
        layer.activation = activation

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        # The format tfmot's QuantizeWrapper uses for this config itself (Keras's legacy
        # `{"class_name": "tfquant>...", "config": ...}`): SavedModel, `.h5` and `.keras`
        # loading all read it back, whereas the newer format written by
        # `keras.utils.serialize_keras_object` is not understood by the `.h5` loader.
        serialize = keras.utils.legacy.serialize_keras_object
        return {
            "weight_attribute": self.weight_attribute,
            "weight_quantizer": serialize(self.weight_quantizer),
            "activation_quantizer": serialize(self.activation_quantizer),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        with tfmot.quantization.keras.quantize_scope():
            for key in ("weight_quantizer", "activation_quantizer"):
                config[key] = _deserialize_quantizer(config[key])
        return cls(**config)

    def __eq__(self, other):
        return (
            isinstance(other, LayerQuantizeConfig)
            and self.weight_attribute == other.weight_attribute
            and self.weight_quantizer == other.weight_quantizer
            and self.activation_quantizer == other.activation_quantizer
        )

    def __ne__(self, other):
        return not self.__eq__(other)


def _deserialize_quantizer(config):
    """A quantizer from its serialized config, in the legacy format `get_config` writes or the
    newer one (`module`, `registered_name`) that tfquant wrote before."""
    if isinstance(config, dict) and "registered_name" in config:
        name = config.get("registered_name") or config["class_name"]
        config = {"class_name": name, "config": config.get("config", {})}
    return keras.utils.legacy.deserialize_keras_object(config)


@keras.utils.register_keras_serializable(package="tfquant")
class SeparableQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """The configs of the two layers a SeparableConv2D becomes: tfmot's layout transform
    splits it into a DepthwiseConv2D (its depthwise kernel) and a 1x1 Conv2D (its pointwise
    kernel and bias), and `tfquant.schemes` gives each part its own config from this one.
    `tfq.quantize_annotate_layer` builds it; it is never applied to an unsplit layer.

    Args:
      depthwise: `LayerQuantizeConfig` of the depthwise part ("depthwise_kernel").
      pointwise: `LayerQuantizeConfig` of the pointwise part ("kernel").

    Example:
      >>> from tfquant.quantizers import UniformQuantizer
      >>> config = SeparableQuantizeConfig(
      ...     LayerQuantizeConfig("depthwise_kernel", UniformQuantizer(bits=4)),
      ...     LayerQuantizeConfig("kernel", UniformQuantizer(bits=4)))
      >>> SeparableQuantizeConfig.from_config(config.get_config()) == config
      True
    """

    def __init__(self, depthwise, pointwise):
        self.depthwise = depthwise
        self.pointwise = pointwise

    def _unsplit(self, layer):
        raise ValueError(
            "SeparableQuantizeConfig applies to a SeparableConv2D that tfquant's scheme splits "
            "into DepthwiseConv2D + Conv2D; quantize the model with tfq.quantize_model or "
            f"tfq.quantize_apply. Received: layer {layer.name!r} of type {type(layer).__name__}"
        )

    def get_weights_and_quantizers(self, layer):
        self._unsplit(layer)

    def get_activations_and_quantizers(self, layer):
        self._unsplit(layer)

    def set_quantize_weights(self, layer, quantize_weights):
        self._unsplit(layer)

    def set_quantize_activations(self, layer, quantize_activations):
        self._unsplit(layer)

    def get_output_quantizers(self, layer):
        self._unsplit(layer)

    def get_config(self):
        # The legacy format, as `LayerQuantizeConfig.get_config` (every loader reads it).
        serialize = keras.utils.legacy.serialize_keras_object
        return {"depthwise": serialize(self.depthwise), "pointwise": serialize(self.pointwise)}

    @classmethod
    def from_config(cls, config):
        with tfmot.quantization.keras.quantize_scope():
            return cls(
                _deserialize_quantizer(config["depthwise"]),
                _deserialize_quantizer(config["pointwise"]),
            )

    def __eq__(self, other):
        return (
            isinstance(other, SeparableQuantizeConfig)
            and self.depthwise == other.depthwise
            and self.pointwise == other.pointwise
        )

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="tfquant")
class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes the output of a weightless layer (a standalone ReLU) with `quantizer`: how a
    scheme with its own activation quantizer (`LearnedBasis(activation_bits=K)`) reaches the
    ReLU layers of Conv -> BatchNorm -> ReLU blocks, where tfmot would put its 8-bit one.

    Args:
      quantizer: a tfmot `Quantizer` for the layer's output.

    Example:
      >>> from tfquant.quantizers import LearnedBasisActivationQuantizer
      >>> config = OutputQuantizeConfig(LearnedBasisActivationQuantizer(bits=2))
      >>> OutputQuantizeConfig.from_config(config.get_config()) == config
      True
    """

    def __init__(self, quantizer):
        self.quantizer = quantizer

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.quantizer]

    def get_config(self):
        return {"quantizer": keras.utils.legacy.serialize_keras_object(self.quantizer)}

    @classmethod
    def from_config(cls, config):
        with tfmot.quantization.keras.quantize_scope():
            return cls(_deserialize_quantizer(config["quantizer"]))

    def __eq__(self, other):
        return isinstance(other, OutputQuantizeConfig) and self.quantizer == other.quantizer

    def __ne__(self, other):
        return not self.__eq__(other)
