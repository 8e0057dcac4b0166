"""LeNet networks of the compression papers (Caffe variants), logits output."""

from tfquant._keras import keras


def lenet300_100(input_shape=(28, 28, 1), classes=10, seed=0):
    """LeNet-300-100: fully connected 784-300-100-10 (Deep Compression's LeNet-300-100).

    Example:
      >>> lenet300_100().count_params()
      266610
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Flatten(name="flatten"),
            layers.Dense(300, activation="relu", name="fc1"),
            layers.Dense(100, activation="relu", name="fc2"),
            layers.Dense(classes, name="fc3"),
        ],
        name="lenet300_100",
    )


def lenet5(input_shape=(28, 28, 1), classes=10, seed=0):
    """LeNet-5 as in Caffe / Deep Compression: conv20 5x5, pool, conv50 5x5, pool, fc500, fc.

    Example:
      >>> lenet5().count_params()
      431080
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(20, 5, activation="relu", name="conv1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(50, 5, activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(500, activation="relu", name="fc1"),
            layers.Dense(classes, name="fc2"),
        ],
        name="lenet5",
    )
