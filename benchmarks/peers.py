"""The peers' paths the benchmarks share: tfmot's 8-bit QAT model of a float network and its
full-integer TFLite conversion (tfmot's documented recipe)."""

import tensorflow_model_optimization as tfmot

from tfquant import _quiet
from tfquant._keras import keras, tf


def tfmot_qat(model):
    """`(tfmot 8-bit QAT model, refusal)`: `quantize_model`, or, where it refuses a layer
    (ResNet-20's Subtract shortcut), every layer its registry supports annotated and
    `quantize_apply`, with the first line of the refusal (None when it did not refuse)."""
    q = tfmot.quantization.keras
    try:
        return q.quantize_model(model), None
    except (RuntimeError, ValueError) as error:
        refusal = str(error).splitlines()[0][:160]
    registry = q.default_8bit.Default8BitQuantizeRegistry()

    def annotate(layer):
        copied = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.InputLayer) or not registry.supports(layer):
            return copied
        return q.quantize_annotate_layer(copied)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    return q.quantize_apply(annotated), refusal


def tfmot_tflite(qat, calibration):
    """The full-int8 flatbuffer of a tfmot QAT model (int8 input and output)."""

    def representative():
        for sample in calibration:
            yield [sample[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return _quiet.convert(converter)
