"""Shared pieces of the schedules: finding the quantizers a schedule drives."""

import dataclasses

from tfquant._keras import quantized_weights
from tfquant.options import Mode
from tfquant.quantizers.multivalued import MultivaluedQuantizer


@dataclasses.dataclass
class ScheduledLayer:
    """One kernel a schedule drives: its wrapper name, kernel variable and quantizer state."""

    name: str
    kernel: object
    quantizer: MultivaluedQuantizer
    state: dict

    @property
    def levels(self):
        return self.quantizer.levels


def masked_multivalued_layers(model, schedule):
    """The model's multivalued quantizers in `masked` mode, in layer order.

    Raises:
      ValueError: the model has none (with the fix in the message).
    """
    layers, snapping = [], []
    for wrapper, weight, quantizer, state in quantized_weights(model):
        if isinstance(quantizer, MultivaluedQuantizer):
            if quantizer.mode is Mode.MASKED:
                layers.append(ScheduledLayer(wrapper.name, weight, quantizer, state))
            else:
                snapping.append(wrapper.name)
    if not layers:
        hint = (
            f" Its multivalued layers {snapping} snap every weight already: quantize with "
            "tfq.schemes.Multivalued(..., mode='masked') for a schedule."
            if snapping
            else " Quantize it with tfq.schemes.Multivalued(..., mode='masked') first."
        )
        raise ValueError(
            f"{schedule} needs a model with tfquant multivalued quantizers in 'masked' mode."
            f"{hint} Received: model {model.name!r}"
        )
    return layers
