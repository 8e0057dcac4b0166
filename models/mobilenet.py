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


def mobilenet_v2(alpha=1.0, input_shape=(224, 224, 3), classes=1000, weights=None, seed=0):
    """MobileNetV2 (Sandler et al. 2018) exactly as `keras.applications.MobileNetV2` builds it,
    with a logits head (no softmax), so its published weights load and tfquant quantizes it.

    Args:
      alpha: width multiplier, a positive number (Keras publishes ImageNet weights for 0.35,
        0.5, 0.75, 1.0, 1.3 and 1.4).
      input_shape: image shape (height, width, 3), each side at least 32.
      classes: outputs of the Dense head.
      weights: None (random initialization), "imagenet" (downloads the Keras weights; needs
        classes=1000 and a square input of 96, 128, 160, 192 or 224) or a weights file path.
      seed: seeds Keras's initializers (used when `weights` is None).

    Returns:
      A functional tf_keras model: stem conv + BatchNorm + ReLU6, 17 inverted residual blocks
      (1x1 expand, 3x3 depthwise, 1x1 project, each followed by BatchNorm), a last 1x1 conv,
      global average pooling and a Dense layer that returns logits.

    Example:
      >>> model = mobilenet_v2(alpha=0.35, input_shape=(32, 32, 3), classes=10)
      >>> model.output_shape, model.count_params()
      ((None, 10), 423018)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number. Received: alpha={alpha!r}")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3). Received: input_shape={input_shape!r}"
        )
    if input_shape[-1] != 3 or min(input_shape[:2]) < 32:
        raise ValueError(
            "input_shape must be (height, width, 3) with height and width >= 32. Received: "
            f"input_shape={tuple(input_shape)!r}"
        )
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(
        input_shape=tuple(input_shape),
        alpha=alpha,
        include_top=True,
        weights=weights,
        classes=classes,
        classifier_activation=None,
    )
