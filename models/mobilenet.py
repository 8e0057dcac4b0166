"""A tiny MobileNet (depthwise-separable convolutions, Howard et al. 2017) with a static
batch-1 input, meant to fit the Edge TPU's constraints (full int8, static shapes, ReLU6)."""

from tfquant._keras import keras


def tiny_mobilenet(input_shape=(32, 32, 3), classes=10, width=16, batch_size=1, seed=0):
    """Conv, four depthwise-separable blocks (two with stride 2), global pooling, logits.

    Args:
      input_shape: image shape. classes: outputs. width: filters of the first conv.
      batch_size: static batch dimension of the input (1 for the Edge TPU; None for training
        with any batch size).

    Example:
      >>> tiny_mobilenet().input_shape
      (1, 32, 32, 3)
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input(input_shape, batch_size=batch_size)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    for filters, stride in ((width * 2, 1), (width * 4, 2), (width * 4, 1), (width * 8, 2)):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name="tiny_mobilenet")
