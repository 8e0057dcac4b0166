"""QuantizeConfigs: which weights and activations of a layer get which quantizer."""

from tfquant.configs.layer import LayerQuantizeConfig, supported_weight_attribute

__all__ = ["LayerQuantizeConfig", "supported_weight_attribute"]
