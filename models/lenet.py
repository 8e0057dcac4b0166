"""LeNet networks of the compression papers (Caffe variants), logits output."""

from tfquant._keras import keras


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
