"""Loading a saved tfquant QAT model from any of tf_keras's formats: a SavedModel directory, a
`.keras` file or an `.h5` file, with tfmot's and tfquant's classes in scope.

`import tfquant` makes all three formats round-trip (see `tfquant._keras`), so files written by
`qmodel.save(...)` or `keras.callbacks.ModelCheckpoint` load back with their quantizers.
"""

import os
import zipfile

import tensorflow_model_optimization as tfmot

from tfquant._keras import keras, tf
from tfquant.quantizers.base import check_bool

_FORMATS = "a SavedModel directory, a .keras file or an .h5 file"
_H5_SUFFIXES = (".h5", ".hdf5")


def _weights_only_advice(path):
    return (
        f"path holds weights only (written by save_weights or ModelCheckpoint(..., "
        "save_weights_only=True)), not a model: build the model again with "
        "qmodel = tfq.quantize_model(model, scheme) and call qmodel.load_weights(path). "
        f"Received: path={path!r}"
    )


def _check_file(path):
    """Raises ValueError unless the file `path` is a `.keras` zip or an HDF5 model file."""
    import h5py

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as file:
                has_model = "model_config" in file.attrs
        except OSError as error:
            raise ValueError(
                f"path is not a readable .h5 file: {error}. Received: path={path!r}"
            ) from error
        if not has_model:
            raise ValueError(_weights_only_advice(path))
        return
    if path.endswith(".keras") and zipfile.is_zipfile(path):
        return
    if path.endswith(".keras") or path.lower().endswith(_H5_SUFFIXES):
        raise ValueError(
            f"path is not a readable {os.path.splitext(path)[1]} file (neither a zip archive "
            f"nor HDF5: truncated or not written by Keras). Received: path={path!r}"
        )
    raise ValueError(
        f"path must be {_FORMATS} (written by qmodel.save(path)). Received: path={path!r}"
    )


def load_model(path, compile=False):
    """Loads a tfquant QAT model written by `qmodel.save(path)` or `ModelCheckpoint`.

    Every tf_keras format works: a SavedModel directory (`qmodel.save("dir")`), a `.keras`
    file and an `.h5` file. The model comes back with its tfquant quantizers and their state
    (codebooks, frozen masks, schedule progress), the same predictions and the same
    `tfq.export.to_tflite` output as the model that was saved.

    After `import tfquant`, plain `tfq.keras.models.load_model(path)` loads these files the
    same way (tfquant registers tfmot's quantization classes with Keras); this function adds
    the checks and the error messages.

    Args:
      path: the SavedModel directory, `.keras` file or `.h5` file.
      compile: also restore the optimizer and loss (default False: for export and inference).

    Returns:
      The tf_keras model, with its tfquant quantizers and their state.

    Raises:
      TypeError: `path` is not a path, or `compile` not a bool.
      FileNotFoundError: `path` does not exist (a weights checkpoint prefix gets a hint).
      ValueError: `path` is neither format, holds weights only (`save_weights`), or is a
        corrupt or incomplete file or directory (the message has TensorFlow's reason).

    Example:
      >>> load_model("no/such/qmodel")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      FileNotFoundError: path must be a SavedModel directory, a .keras file or an .h5 file. ...
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be {_FORMATS} (a str or path). Received: path={path!r}")
    check_bool("compile", compile)
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.isfile(path + ".index"):
            raise FileNotFoundError(_weights_only_advice(path))
        raise FileNotFoundError(
            f"path must be {_FORMATS}. Received: path={path!r} (does not exist)"
        )
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"path must be {_FORMATS}; this directory is not a SavedModel. Received: "
                f"path={path!r} (no saved_model.pb in it)"
            )
    else:
        _check_file(path)
    # Registers tfquant's serializable classes before Keras resolves them.
    import tfquant.configs  # noqa: F401
    import tfquant.quantizers  # noqa: F401

    try:
        with tfmot.quantization.keras.quantize_scope():
            return keras.models.load_model(path, compile=compile)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, tf.errors.OpError) as error:
        # A truncated saved_model.pb, missing or corrupt variables (checksummed), ...
        reason = str(error).strip().splitlines()[0][:500] if str(error).strip() else ""
        raise ValueError(
            f"path is not a readable saved model: {type(error).__name__}: {reason}. "
            f"Received: path={path!r}"
        ) from error
