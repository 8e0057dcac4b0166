"""Division methods: the codebook centers a layer's weights are divided around.

MPA (seed 002, Eq. 9 and Sec. "Division"): k-means, linear and exponential division.
k-means is the exact optimum of Eq. 9 in 1-D, computed by dynamic programming (`kmeans1d`).
"""

import kmeans1d
import numpy as np

from tfquant.options import Division


def divide(weights, levels, division="kmeans"):
    """Returns `levels` sorted centers for `weights` by the given division method.

    Args:
      weights: array of any shape (flattened).
      levels: number of centers, >= 2.
      division: a `Division` name: "kmeans", "linear" or "exponential".

    Returns:
      float32 array of shape [levels], sorted ascending. Entries may repeat when the weights
      have fewer distinct values than `levels`.

    Example:
      >>> divide(np.array([-1.0, -0.9, 0.0, 0.1, 1.0, 1.1]), 3).astype(float).round(2).tolist()
      [-0.95, 0.05, 1.05]
    """
    division = Division.parse(division, "division")
    values = np.asarray(weights, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("weights must not be empty. Received: an array of size 0")
    if not np.all(np.isfinite(values)):
        raise ValueError("weights must be finite. Received: NaN or Inf among the weights")
    if division is Division.KMEANS:
        centers = _kmeans(values, levels)
    else:
        centers = _symmetric(values, levels, division)
    return np.sort(np.asarray(centers, dtype=np.float32))


def _kmeans(values, levels):
    distinct = np.unique(values)
    if distinct.size <= levels:
        return np.concatenate([distinct, np.full(levels - distinct.size, distinct[-1])])
    _, centroids = kmeans1d.cluster(values, levels)
    return np.asarray(centroids)


def _symmetric(values, levels, division):
    """Linear / exponential centers, mirrored around zero (zero included for odd `levels`)."""
    top = (abs(values.min()) + abs(values.max())) / 2.0  # "average of |min| and |max|"
    half = levels // 2
    if division is Division.LINEAR:
        positive = top * np.arange(1, half + 1) / half
    else:
        positive = top / 2.0 ** np.arange(half)[::-1]
    middle = [0.0] if levels % 2 else []
    return np.concatenate([-positive[::-1], middle, positive])
