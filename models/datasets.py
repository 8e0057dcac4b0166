"""Offline-first dataset loaders: scikit-learn digits (embedded), MNIST and Fashion-MNIST from
the original IDX files (checked by sha256), falling back to tensorflow-datasets.

Where the IDX files are looked for, in order: the `data_dir` argument, `$TFQUANT_DATA`, a
`shared/data` folder next to this checkout (the project's development layout), and for
Fashion-MNIST the Debian package `dataset-fashion-mnist`'s folder. Each may hold the files
directly or in a `mnist/` / `fashion-mnist/` subfolder, gzipped or not.
"""

import gzip
import hashlib
import os
import pathlib

import numpy as np

_NAMES = ("digits", "mnist", "fashion_mnist")
_SPLITS = {"train": "train", "test": "t10k"}
# sha256 of the *uncompressed* IDX files (so gzip settings do not matter).
_SHA256 = {
    "mnist": {
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    "fashion_mnist": {
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
}
_SUBFOLDERS = {"mnist": ("mnist",), "fashion_mnist": ("fashion-mnist", "fashion_mnist")}
_DEBIAN = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}


class DatasetError(ValueError):
    """A dataset could not be found or a file of it is corrupt."""


def load(name, data_dir=None, test_fraction=0.2, seed=0, verify=True):
    """Returns `(x_train, y_train), (x_test, y_test)`: float32 images in [0, 1], int64 labels.

    Args:
      name: "digits" (1,797 8x8 images embedded in scikit-learn, split by `test_fraction`),
        "mnist" or "fashion_mnist" (60,000 + 10,000 images, shape (N, 28, 28, 1)).
      data_dir: folder with the IDX files (see the module docstring for the search order).
      test_fraction, seed: the digits split (stratified).
      verify: check each IDX file against its known sha256.

    Raises:
      DatasetError: no copy found (the message lists every place tried) or a corrupt file.

    Example:
      >>> (x, y), (xt, yt) = load("digits")
      >>> x.shape, xt.shape, x.dtype.name, int(y.max())
      ((1437, 8, 8, 1), (360, 8, 8, 1), 'float32', 9)
    """
    if name not in _NAMES:
        raise ValueError(f"name must be one of {_NAMES}. Received: name={name!r}")
    if name == "digits":
        return _digits(test_fraction, seed)
    tried = []
    for folder in _candidate_folders(name, data_dir):
        found = _find_idx(folder)
        if found is None:
            tried.append(str(folder))
            continue
        arrays = {}
        for split, prefix in _SPLITS.items():
            images = _read_idx(found[f"{prefix}-images-idx3-ubyte"], name, verify)
            labels = _read_idx(found[f"{prefix}-labels-idx1-ubyte"], name, verify)
            arrays[split] = (_images(images), labels.astype(np.int64))
        return arrays["train"], arrays["test"]
    return _from_tfds(name, tried)


def _digits(test_fraction, seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (x_train, y_train), (x_test, y_test)


def _images(raw):
    return (raw.astype(np.float32) / 255.0)[..., None]


def _candidate_folders(name, data_dir):
    roots = []
    if data_dir is not None:
        roots.append(pathlib.Path(data_dir))
    if os.environ.get("TFQUANT_DATA"):
        roots.append(pathlib.Path(os.environ["TFQUANT_DATA"]))
    checkout = pathlib.Path(__file__).resolve().parents[1]
    roots.append(checkout.parent / "shared" / "data")
    folders = []
    for root in roots:
        folders += [root / sub for sub in _SUBFOLDERS[name]] + [root]
    if name in _DEBIAN:
        folders.append(pathlib.Path(_DEBIAN[name]))
    return folders


def _find_idx(folder):
    """Maps each IDX stem to its file in `folder` (.gz or plain), or None if any is missing."""
    found = {}
    for prefix in _SPLITS.values():
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            stem = f"{prefix}-{kind}"
            for candidate in (folder / f"{stem}.gz", folder / stem):
                if candidate.is_file():
                    found[stem] = candidate
                    break
            else:
                return None
    return found


def _read_idx(path, name, verify):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path} is not a readable IDX file: {error}") from error
    stem = path.name.removesuffix(".gz")
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != _SHA256[name][stem]:
            raise DatasetError(
                f"{path} is corrupt or not the original {name} file: sha256 {digest}, expected "
                f"{_SHA256[name][stem]} (load(..., verify=False) skips this check)"
            )
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def _from_tfds(name, tried):
    try:
        import tensorflow_datasets as tfds

        splits = tfds.as_numpy(
            tfds.load(
                name, split=["train", "test"], batch_size=-1, as_supervised=True, download=False
            )
        )
    except Exception as error:  # tfds raises many types when offline / not prepared
        raise DatasetError(
            f"{name} was not found. Tried the IDX files in: {tried}; then tensorflow-datasets "
            f"(no prepared copy: {type(error).__name__}). Put the four IDX files in one of those "
            "folders or set TFQUANT_DATA, or run tfds.load(name) once online."
        ) from error
    return tuple((_images(images[..., 0]), labels.astype(np.int64)) for images, labels in splits)
