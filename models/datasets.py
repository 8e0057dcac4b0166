"""Offline-first dataset loaders: scikit-learn digits (embedded), MNIST and Fashion-MNIST from
the original IDX files (checked by sha256), CIFAR-10 from the original binary batches or the
project's JPEG copy, falling back to tensorflow-datasets.

Where the files are looked for, in order: the `data_dir` argument, `$TFQUANT_DATA`, a
`shared/data` folder next to this checkout (the project's development layout), and for
Fashion-MNIST the Debian package `dataset-fashion-mnist`'s folder. Each may hold the files
directly or in a `mnist/` / `fashion-mnist/` / `cifar10/` subfolder (IDX files gzipped or not).

CIFAR-10, in each of those folders: first the original `cifar-10-batches-bin/` (or its six
`.bin` files directly), then `cifar10-jpeg.tar.gz` (a JPEG q75 re-encoding, read straight out
of the tarball; its decoded arrays are cached as an .npz in `$TFQUANT_CACHE`, default
`~/.cache/tfquant`, keyed by the tarball's sha256).
"""

import gzip
import hashlib
import os
import pathlib
import re
import tarfile
import tempfile
import warnings
import zlib

import numpy as np

_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10")
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
_SUBFOLDERS = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "cifar10": ("cifar10", "cifar-10"),
}
_DEBIAN = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
# The project's development layout: ../shared/data next to the checkout.
_CHECKOUT_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: CIFAR-10 class names; a label is the index of its class in this tuple.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR_BINARY_FOLDER = "cifar-10-batches-bin"
_CIFAR_BINARY_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR_PIXELS = 32 * 32 * 3
_CIFAR_RECORD = 1 + _CIFAR_PIXELS  # label byte, then 1024 R, 1024 G, 1024 B bytes (rows)
_CIFAR_RECORDS_PER_FILE = 10_000
_CIFAR_TARBALL = "cifar10-jpeg.tar.gz"
# sha256 of the whole tarball (shared/data/SHA256SUMS).
_CIFAR_TARBALL_SHA256 = "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968"
_CIFAR_MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+\.jpe?g)$")


class DatasetError(ValueError):
    """A dataset could not be found or a file of it is corrupt."""


def load(name, data_dir=None, test_fraction=0.2, seed=0, verify=True, limit=None, cache=True):
    """Returns `(x_train, y_train), (x_test, y_test)`: float32 images in [0, 1], int64 labels.

    Args:
      name: "digits" (1,797 8x8 images embedded in scikit-learn, split by `test_fraction`),
        "mnist" or "fashion_mnist" (60,000 + 10,000 images, shape (N, 28, 28, 1)), or
        "cifar10" (50,000 + 10,000 RGB images, shape (N, 32, 32, 3), classes in the order of
        `CIFAR10_CLASSES`).
      data_dir: folder with the data files (see the module docstring for the search order).
      test_fraction, seed: the digits split (stratified).
      verify: check each IDX file and the CIFAR-10 JPEG tarball against its known sha256, and
        each CIFAR-10 binary batch for the original 10,000 records.
      limit: None (everything), or at most this many images per split: an int for both
        splits or a `(train, test)` pair (None in the pair: the whole split). The first images
        are taken; from the CIFAR-10 tarball only those are decoded (a few seconds instead of
        a full decode), in an order that cycles through the ten classes, so any prefix is
        class-balanced.
      cache: CIFAR-10 tarball only: read and write the decoded arrays in the cache folder
        (`$TFQUANT_CACHE`, default `~/.cache/tfquant`). A full decode is written; a
        `limit`ed read uses a cached full decode when there is one.

    Raises:
      DatasetError: no copy found (the message lists every place tried) or a corrupt file.

    Example:
      >>> (x, y), (xt, yt) = load("digits")
      >>> x.shape, xt.shape, x.dtype.name, int(y.max())
      ((1437, 8, 8, 1), (360, 8, 8, 1), 'float32', 9)
      >>> (x, y), (xt, yt) = load("digits", limit=(100, 20))
      >>> x.shape, xt.shape
      ((100, 8, 8, 1), (20, 8, 8, 1))
      >>> (x, y), (xt, yt) = load("cifar10", limit=100)  # doctest: +SKIP
      >>> x.shape, x.dtype.name, np.bincount(y).tolist()  # doctest: +SKIP
      ((100, 32, 32, 3), 'float32', [10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    """
    if name not in _NAMES:
        raise ValueError(f"name must be one of {_NAMES}. Received: name={name!r}")
    limits = check_limit(limit)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(
            f"test_fraction must be a number. Received: test_fraction={test_fraction!r}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer >= 0. Received: seed={seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be an integer >= 0. Received: seed={seed}")
    if name == "digits":
        return _take(_digits(test_fraction, seed), limits)
    if name == "cifar10":
        return _take(_cifar10(data_dir, limits, verify, cache), limits)
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
        return _take((arrays["train"], arrays["test"]), limits)
    return _take(_from_tfds(name, tried, "the IDX files"), limits)


def check_limit(limit):
    """Validates `load`'s `limit`; returns `{"train": n or None, "test": n or None}`.

    >>> check_limit(500), check_limit((500, None))
    ({'train': 500, 'test': 500}, {'train': 500, 'test': None})
    """
    pair = limit if isinstance(limit, (tuple, list)) else (limit, limit)
    valid = len(pair) == 2 and all(
        n is None or (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1)
        for n in pair
    )
    if not valid:
        raise ValueError(
            "limit must be None, a positive int, or a (train, test) pair of positive ints or "
            f"None. Received: limit={limit!r}"
        )
    return {"train": pair[0], "test": pair[1]}


def _take(splits, limits):
    """The first `limits[split]` samples of each `(images, labels)` split."""
    out = []
    for split, (images, labels) in zip(("train", "test"), splits, strict=True):
        limit = limits[split]
        if limit is not None and limit < len(images):  # copy: free the rest
            images, labels = images[:limit].copy(), labels[:limit].copy()
        out.append((images, labels))
    return tuple(out)


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
    roots.append(_CHECKOUT_DATA)
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


def _from_tfds(name, tried, looked_for):
    try:
        import tensorflow_datasets as tfds

        splits = tfds.as_numpy(
            tfds.load(
                name, split=["train", "test"], batch_size=-1, as_supervised=True, download=False
            )
        )
    except Exception as error:  # tfds raises many types when offline / not prepared
        raise DatasetError(
            f"{name} was not found. Tried {looked_for} in: {tried}; then tensorflow-datasets "
            f"(not installed or no prepared copy: {type(error).__name__}). Put the files in one "
            "of those folders or set TFQUANT_DATA, or run tfds.load(name) once online."
        ) from error
    if name == "cifar10":  # uint8 (N, 32, 32, 3) already
        return tuple((_rgb_images(images), labels.astype(np.int64)) for images, labels in splits)
    return tuple((_images(images[..., 0]), labels.astype(np.int64)) for images, labels in splits)


# -- CIFAR-10 -----------------------------------------------------------------------------------


def _rgb_images(raw):
    """uint8 (N, 32, 32, 3) -> float32 in [0, 1], C-contiguous."""
    return np.ascontiguousarray(raw).astype(np.float32) / 255.0


def _cifar10(data_dir, limits, verify, cache):
    tried = []
    for folder in _candidate_folders("cifar10", data_dir):
        binary = _find_cifar_binary(folder)
        if binary is not None:
            splits = _read_cifar_binary(binary, limits, verify)
        elif (folder / _CIFAR_TARBALL).is_file():
            splits = _read_cifar_tarball(folder / _CIFAR_TARBALL, limits, verify, cache)
        else:
            tried.append(str(folder))
            continue
        return tuple((_rgb_images(images), labels.astype(np.int64)) for images, labels in splits)
    looked_for = f"{_CIFAR_BINARY_FOLDER}/ and {_CIFAR_TARBALL}"
    return _from_tfds("cifar10", tried, looked_for)


def _find_cifar_binary(folder):
    """The folder holding the six CIFAR-10 .bin files (`folder` or its `cifar-10-batches-bin/`),
    or None when neither holds any of them.

    Raises:
      DatasetError: some of the six files are there and some are missing.
    """
    names = [name for files in _CIFAR_BINARY_FILES.values() for name in files]
    for candidate in (folder / _CIFAR_BINARY_FOLDER, folder):
        present = [name for name in names if (candidate / name).is_file()]
        if not present:
            continue
        missing = [name for name in names if name not in present]
        if missing:
            raise DatasetError(
                f"{candidate} holds an incomplete CIFAR-10 binary copy: {missing} missing"
            )
        return candidate
    return None


def read_cifar10_batch(path, verify=True, count=None):
    """Reads one binary CIFAR-10 batch (`data_batch_N.bin`, `test_batch.bin`).

    Each record is 3,073 bytes: the label (0-9), then the 32x32 red, green and blue planes,
    row by row.

    Args:
      path: the .bin file.
      verify: require the original 10,000 records (30,730,000 bytes).
      count: read only the first `count` records (None: all).

    Returns:
      `(images, labels)`: uint8 of shape (N, 32, 32, 3) and uint8 of shape (N,).

    Raises:
      DatasetError: the file is unreadable, truncated (not a whole number of records), has a
        label above 9, or (with `verify`) does not hold 10,000 records.

    Example:
      >>> import tempfile
      >>> record = bytes([7]) + bytes(1024) + bytes([255] * 1024) + bytes(1024)  # green
      >>> with tempfile.TemporaryDirectory() as folder:
      ...     path = pathlib.Path(folder, "test_batch.bin")
      ...     _ = path.write_bytes(record * 2)
      ...     images, labels = read_cifar10_batch(path, verify=False)
      >>> images.shape, labels.tolist(), images[0, 0, 0].tolist()
      ((2, 32, 32, 3), [7, 7], [0, 255, 0])
    """
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DatasetError(f"{path} is not a readable CIFAR-10 batch: {error}") from error
    records, extra = divmod(size, _CIFAR_RECORD)
    if extra or not records:
        raise DatasetError(
            f"{path} is truncated or not a CIFAR-10 binary batch: {size} bytes is not a whole "
            f"number of {_CIFAR_RECORD}-byte records (1 label byte + {_CIFAR_PIXELS} pixel bytes)"
        )
    if verify and records != _CIFAR_RECORDS_PER_FILE:
        raise DatasetError(
            f"{path} holds {records} records; an original CIFAR-10 batch holds "
            f"{_CIFAR_RECORDS_PER_FILE} ({_CIFAR_RECORDS_PER_FILE * _CIFAR_RECORD} bytes). "
            "load(..., verify=False) accepts other record counts"
        )
    count = records if count is None else min(count, records)
    try:
        data = np.fromfile(path, np.uint8, count=count * _CIFAR_RECORD)
    except OSError as error:
        raise DatasetError(f"{path} is not a readable CIFAR-10 batch: {error}") from error
    data = data.reshape(count, _CIFAR_RECORD)
    labels = data[:, 0].copy()
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DatasetError(
            f"{path} is corrupt or not a CIFAR-10 batch: record {int(bad[0])} has label "
            f"{int(labels[bad[0]])} (CIFAR-10 labels are 0-9)"
        )
    images = data[:, 1:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_cifar_binary(folder, limits, verify):
    splits = []
    for split, names in _CIFAR_BINARY_FILES.items():
        images, labels = [], []
        remaining = limits[split]
        for name in names:
            # Every file is checked even when the limit is reached.
            batch = read_cifar10_batch(folder / name, verify, count=remaining)
            if remaining is not None:
                remaining -= len(batch[1])
            images.append(batch[0])
            labels.append(batch[1])
        splits.append((np.concatenate(images), np.concatenate(labels)))
    return tuple(splits)


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir():
    """Where decoded datasets are cached: `$TFQUANT_CACHE`, else `$XDG_CACHE_HOME/tfquant`,
    else `~/.cache/tfquant`."""
    if os.environ.get("TFQUANT_CACHE"):
        return pathlib.Path(os.environ["TFQUANT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "tfquant"


def _read_cifar_tarball(path, limits, verify, cache):
    try:
        digest = _sha256_file(path)
    except OSError as error:
        raise DatasetError(f"{path} is not readable: {error}") from error
    if verify and digest != _CIFAR_TARBALL_SHA256:
        raise DatasetError(
            f"{path} is corrupt or not the project's CIFAR-10 JPEG copy: sha256 {digest}, "
            f"expected {_CIFAR_TARBALL_SHA256} (load(..., verify=False) skips this check)"
        )
    cached = cache_dir() / f"cifar10-jpeg-{digest[:16]}.npz"
    if cache:
        splits = _read_cache(cached)
        if splits is not None:
            return splits
    full = limits["train"] is None and limits["test"] is None
    splits = _decode_tarball(path, limits)
    if cache and full:
        _write_cache(cached, splits)
    return splits


def _tarball_members(path):
    """`{split: [(file name, label, jpeg bytes), ...]}` in the order of `_decode_tarball`."""
    members = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                match = _CIFAR_MEMBER.search(member.name)
                if not member.isfile() or match is None:
                    continue
                split, class_name, file_name = match.groups()
                if class_name not in CIFAR10_CLASSES:
                    raise DatasetError(
                        f"{path}: {member.name} is in an unknown class folder {class_name!r}; "
                        f"expected one of {CIFAR10_CLASSES}"
                    )
                label = CIFAR10_CLASSES.index(class_name)
                members[split].append((file_name, label, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DatasetError(f"{path} is corrupt or truncated: {error}") from error
    for split, found in members.items():
        if not found:
            raise DatasetError(
                f"{path} has no {split}/<class>/*.jpg images; expected the layout "
                "cifar10-jpeg/{train,test}/<class name>/NNNN.jpg"
            )
        # By file name, then class: airplane 0000, automobile 0000, ..., truck 0000,
        # airplane 0001, ...: deterministic, and every prefix is class-balanced.
        found.sort(key=lambda item: (item[0], item[1]))
    return members


def _decode_tarball(path, limits):
    from tfquant._keras import tf

    splits = []
    for split, found in _tarball_members(path).items():
        found = found[: limits[split]]
        images = np.empty((len(found), 32, 32, 3), np.uint8)
        for i, (file_name, label, data) in enumerate(found):
            where = f"{split}/{CIFAR10_CLASSES[label]}/{file_name}"
            try:
                image = tf.io.decode_jpeg(data, channels=3).numpy()
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
                raise DatasetError(f"{path}: {where} is not a valid JPEG: {error}") from error
            if image.shape != (32, 32, 3):
                raise DatasetError(
                    f"{path}: {where} is {image.shape[1]}x{image.shape[0]}, expected 32x32"
                )
            images[i] = image
        labels = np.array([label for _, label, _ in found], np.uint8)
        splits.append((images, labels))
    return tuple(splits)


def _read_cache(path):
    """The cached `((x_train, y_train), (x_test, y_test))` uint8 arrays, or None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            splits = tuple((data[f"x_{s}"], data[f"y_{s}"]) for s in ("train", "test"))
    except (OSError, ValueError, KeyError, zlib.error, EOFError):
        return None  # unreadable: decode again and overwrite it
    for images, labels in splits:
        if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
            return None
        if len(labels) != len(images):
            return None
    return splits


def _write_cache(path, splits):
    ((x_train, y_train), (x_test, y_test)) = splits
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
    except OSError as error:
        warnings.warn(
            f"Could not cache the decoded CIFAR-10 arrays in {path}: {error}. Set TFQUANT_CACHE "
            "to a writable folder to avoid decoding again.",
            stacklevel=4,
        )
