"""Loading a saved tfquant QAT model: the SavedModel format with tfmot's and tfquant's custom
objects in scope (`.h5` and the tf_keras `.keras` format cannot hold QAT models)."""

import os

import tensorflow_model_optimization as tfmot

from tfquant._keras import keras, tf
from tfquant.quantizers.base import check_bool


def load_model(path, compile=False):
    """Loads a model saved with `qmodel.save(path, save_format="tf")`.

    Args:
      path: the SavedModel directory.
      compile: also restore the optimizer and loss (default False: for export and inference).

    Returns:
      The tf_keras model, with its tfquant quantizers and their state.

    Raises:
      TypeError: `path` is not a path, or `compile` not a bool.
      FileNotFoundError: `path` does not exist.
      ValueError: `path` is not a SavedModel directory (e.g. an `.h5` or `.keras` file), or a
        corrupt or incomplete one (the message has TensorFlow's reason).

    Example:
      >>> load_model("no/such/qmodel")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      FileNotFoundError: path must be a SavedModel directory. Received: ...
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a SavedModel directory (a str or path). Received: path={path!r}"
        )
    check_bool("compile", compile)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"path must be a SavedModel directory. Received: path={path!r} (does not exist)"
        )
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(
            "path must be a SavedModel directory (saved with qmodel.save(path, "
            "save_format='tf'); .h5 and .keras files cannot hold QAT models). Received: "
            f"path={path!r} (no saved_model.pb in it)"
        )
    # Registers tfquant's serializable classes before Keras resolves them.
    import tfquant.configs  # noqa: F401
    import tfquant.quantizers  # noqa: F401

    try:
        with tfmot.quantization.keras.quantize_scope():
            return keras.models.load_model(path, compile=compile)
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        # A truncated saved_model.pb, missing or corrupt variables (checksummed), ...
        reason = str(error).strip().splitlines()[0][:500] if str(error).strip() else ""
        raise ValueError(
            f"path is not a readable SavedModel: {type(error).__name__}: {reason}. "
            f"Received: path={path!r}"
        ) from error
