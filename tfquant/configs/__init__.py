"""QuantizeConfigs: which weights and activations of a layer get which quantizer."""

from tfquant.configs.layer import (
    LayerQuantizeConfig,
    SeparableQuantizeConfig,
    supported_weight_attribute,
)

__all__ = ["LayerQuantizeConfig", "SeparableQuantizeConfig", "supported_weight_attribute"]
