"""The peers' paths the benchmarks share: tfmot's 8-bit QAT model of a float network and its
full-integer TFLite conversion (tfmot's documented recipe), and QKeras's ternary model."""

import numpy as np

# tfquant first: it pins tf.keras to Keras 2 before tfmot and QKeras import it.
from tfquant import _quiet
from tfquant._keras import keras, tf

# isort: split
import tensorflow_model_optimization as tfmot


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


def tfmot_cluster(model, clusters, every_layer=False):
    """tfmot's weight clustering (k-means++ centroids) of a float model: `cluster_weights` on
    the whole model when `every_layer`, else on every Conv2D / Dense kernel but the first and
    the last (left float, as tfquant's rows keep them 8-bit); the float weights copied."""
    cluster = tfmot.clustering.keras
    options = dict(
        number_of_clusters=clusters,
        cluster_centroids_init=cluster.CentroidInitialization.KMEANS_PLUS_PLUS,
    )
    if every_layer:
        return cluster.cluster_weights(model, **options)
    kernels = [
        layer.name
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    middle = set(kernels[1:-1])

    def clone(layer):
        copied = layer.__class__.from_config(layer.get_config())
        if layer.name not in middle:
            return copied
        copied.build(layer.input_shape)
        copied.set_weights(layer.get_weights())  # the centroids start from the float kernel
        return cluster.cluster_weights(copied, **options)

    clustered = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:  # the unclustered layers' weights (BatchNorm statistics too)
        if layer.name not in middle:
            clustered.get_layer(layer.name).set_weights(layer.get_weights())
    return clustered


QKERAS_INSTALL = "pip install --no-deps qkeras==0.9.0 pyparsing networkx"


def qkeras_missing():
    """Why the QKeras rows cannot run here (None when QKeras imports): QKeras is a benchmark
    extra, never a runtime dependency, and installs beside tf_keras only without its pins."""
    try:
        import qkeras  # noqa: F401
    except ImportError as error:
        return f"QKeras is not installed ({error}); a benchmark extra: {QKERAS_INSTALL}"
    return None


def qkeras_ternary(float_model):
    """QKeras 0.9's `ternary(alpha="auto")` on every Conv2D and Dense kernel (first and last
    layers too: QKeras has no keep-first-last option), `quantized_bits(8)` biases, activations
    float as in our weight-only rows; the same topology with the float weights copied."""
    import qkeras

    if not issubclass(qkeras.QConv2D, keras.layers.Conv2D):
        raise RuntimeError(
            "QKeras was imported with Keras 3 (tensorflow_model_optimization or tensorflow "
            "was imported before tfquant); import tfquant first so tf.keras is Keras 2"
        )
    swaps = {keras.layers.Conv2D: qkeras.QConv2D, keras.layers.Dense: qkeras.QDense}

    def clone(layer):
        quantized = swaps.get(type(layer))
        if quantized is None:
            return layer.__class__.from_config(layer.get_config())
        return quantized(
            kernel_quantizer=qkeras.ternary(alpha="auto"),
            bias_quantizer=qkeras.quantized_bits(8) if layer.use_bias else None,
            **layer.get_config(),
        )

    model = keras.models.clone_model(float_model, clone_function=clone)
    model.set_weights(float_model.get_weights())
    return model


def qkeras_distinct(model):
    """Distinct quantized kernel values per QConv2D / QDense layer of a QKeras model
    (`ternary(alpha="auto")` learns its scales per output channel, so a layer holds many
    more than 3 values, unlike a per-layer ternary codebook)."""
    counts = []
    for layer in model.layers:
        quantizer = getattr(layer, "kernel_quantizer_internal", None)
        if quantizer is not None:
            counts.append(int(np.unique(np.asarray(quantizer(layer.kernel))).size))
    return counts
