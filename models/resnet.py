"""CIFAR ResNets (He et al. 2016, Sec. 4.2): 6n+2 layers, 16/32/64 filters, option A
(parameter-free) shortcuts, BatchNorm after every convolution, logits output.

Option A shortcut without custom layers (tfmot quantizes only standard Keras layers):
subsampling is a 1x1 max-pool with stride 2, and the new channels are zeros made by
`Subtract()([x, x])` and concatenated, so the shortcut stays exact in int8 TFLite.
"""

from tfquant._keras import keras


def _shortcut(x, filters, stride):
    layers = keras.layers
    if stride == 1 and x.shape[-1] == filters:
        return x
    if stride > 1:
        x = layers.MaxPooling2D(1, strides=stride)(x)
    missing = filters - x.shape[-1]
    if missing:
        zeros = layers.Subtract()([x, x])
        parts = [x] + [zeros] * (missing // x.shape[-1])
        x = layers.Concatenate()(parts)
    return x


def _block(x, filters, stride, weight_decay):
    layers = keras.layers
    regularizer = keras.regularizers.l2(weight_decay) if weight_decay else None
    y = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=regularizer
    )(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizer)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Add()([y, _shortcut(x, filters, stride)])
    return layers.ReLU()(y)


def cifar_resnet(depth=20, input_shape=(32, 32, 3), classes=10, weight_decay=1e-4, seed=0):
    """ResNet-20/32/44/56 for CIFAR (depth = 6n + 2).

    `weight_decay` is the Keras L2 factor of every kernel (loss += weight_decay * sum(w^2));
    0 builds the network without regularizers.

    Example:
      >>> cifar_resnet(20).count_params()
      271098
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, ...). Received: depth={depth}")
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    blocks = (depth - 2) // 6
    regularizer = keras.regularizers.l2(weight_decay) if weight_decay else None
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_regularizer=regularizer)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _block(x, filters, stride, weight_decay)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def resnet20(**kwargs):
    """ResNet-20 for CIFAR-10 (see `cifar_resnet`)."""
    return cifar_resnet(20, **kwargs)


def resnet32(**kwargs):
    """ResNet-32 for CIFAR-10 (see `cifar_resnet`)."""
    return cifar_resnet(32, **kwargs)
