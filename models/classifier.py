"""The compile step every network here shares: Adam on a sparse softmax cross-entropy over
logits, with accuracy."""

from tfquant._keras import keras


def compile_classifier(model, learning_rate=1e-3):
    """Compiles `model` (logits output, integer labels) with Adam and accuracy; returns it.

    Args:
      model: a tf_keras model whose output is logits.
      learning_rate: a float or a `keras.optimizers.schedules` schedule.

    Example:
      >>> from tfquant.models import lenet5
      >>> compile_classifier(lenet5(), 1e-3).metrics_names
      []
    """
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
