"""Dataset loaders. `digits` (scikit-learn's embedded 8x8 digits) needs no files at all."""

import numpy as np

_NAMES = ("digits",)


def load(name, test_fraction=0.2, seed=0):
    """Returns `(x_train, y_train), (x_test, y_test)` as float32 images in [0, 1], int labels.

    Args:
      name: "digits" (1,797 8x8 images from scikit-learn, shape (N, 8, 8, 1)).
      test_fraction: share of samples held out, stratified by class.
      seed: split seed.

    Example:
      >>> (x, y), (xt, yt) = load("digits")
      >>> x.shape, xt.shape, x.dtype.name, int(y.max())
      ((1437, 8, 8, 1), (360, 8, 8, 1), 'float32', 9)
    """
    if name not in _NAMES:
        raise ValueError(f"name must be one of {_NAMES}. Received: name={name!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (x_train, y_train), (x_test, y_test)
