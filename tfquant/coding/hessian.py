"""Diagonal of the loss Hessian for Hessian-weighted k-means (Choi et al., seed 003), by
Hutchinson's estimator diag(H) ≈ E[v ⊙ Hv] with Rademacher vectors v."""

import numpy as np

from tfquant._keras import tf
from tfquant.configs.layer import SUPPORTED_LAYERS, supported_weight_attribute


def hessian_diagonal(model, x, y, loss, samples=4, batch_size=256, max_batches=4, seed=0):
    """Estimates the Hessian diagonal of `loss` w.r.t. every kernel tfquant quantizes (Conv1D,
    Conv2D, Conv2DTranspose, DepthwiseConv2D, Dense kernels and Embedding tables).

    Args:
      model: a float or QAT `tfq.keras` model.
      x, y: data to average over (the first `max_batches` batches of `batch_size`).
      loss: a Keras loss object or callable `loss(y_true, y_pred)`.
      samples: Rademacher probes per batch.
      batch_size, max_batches: how much data is used.
      seed: probe seed.

    Returns:
      dict mapping each layer's name (the inner layer's name for a QAT model) to an array of
      its kernel's shape: the estimated diagonal, clipped at 0 (negative curvature carries no
      importance for the distortion weighting).

    Example:
      >>> import tfquant as tfq
      >>> model = tfq.keras.Sequential([tfq.keras.Input((3,)), tfq.keras.layers.Dense(2)])
      >>> mse = tfq.keras.losses.MeanSquaredError()
      >>> h = hessian_diagonal(model, np.eye(3, dtype="float32"), np.zeros((3, 2)), mse)
      >>> h[model.layers[0].name].shape
      (3, 2)
    """
    if not callable(loss):
        raise TypeError(f"loss must be a Keras loss or a callable. Received: loss={loss!r}")
    kernels = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        attribute = supported_weight_attribute(inner)
        if attribute:
            kernels[inner.name] = getattr(inner, attribute)
    if not kernels:
        raise ValueError(
            f"model has no layer tfquant quantizes ({SUPPORTED_LAYERS}). Received: {model}"
        )
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(
            f"x and y must be non-empty and of equal length. Received: {len(x)}, {len(y)}"
        )
    names = list(kernels)
    variables = [kernels[name] for name in names]
    totals = [np.zeros(v.shape, np.float64) for v in variables]
    rng = np.random.default_rng(seed)
    probes = 0
    for start in range(0, min(len(x), batch_size * max_batches), batch_size):
        batch_x = tf.constant(x[start : start + batch_size])
        batch_y = tf.constant(y[start : start + batch_size])
        for _ in range(samples):
            vectors = [
                tf.constant(rng.choice([-1.0, 1.0], size=v.shape), v.dtype) for v in variables
            ]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner_tape:
                    value = loss(batch_y, model(batch_x, training=False))
                grads = [_dense(g) for g in inner_tape.gradient(value, variables)]
                projection = tf.add_n(
                    [tf.reduce_sum(g * v) for g, v in zip(grads, vectors, strict=True)]
                )
            products = [_dense(p) for p in outer.gradient(projection, variables)]
            for total, vector, product in zip(totals, vectors, products, strict=True):
                if product is not None:
                    total += (vector * product).numpy()
            probes += 1
    return {
        name: np.maximum(total / probes, 0.0) for name, total in zip(names, totals, strict=True)
    }


def _dense(gradient):
    """An Embedding's gradient comes as IndexedSlices (the rows looked up): make it dense."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


__all__ = ["hessian_diagonal"]
