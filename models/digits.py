"""A small CNN for scikit-learn's 8x8 digits: the network of the demo and the quick tests."""

from tfquant._keras import keras


def digits_cnn(seed=0):
    """Conv(16) -> Conv(32) -> Dense(64) -> Dense(10) on (8, 8, 1) inputs, logits output.

    Example:
      >>> digits_cnn().count_params()
      38282
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="fc1"),
            layers.Dense(10, name="logits"),
        ],
        name="digits_cnn",
    )
