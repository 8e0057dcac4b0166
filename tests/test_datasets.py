"""Dataset loaders: CIFAR-10 from the JPEG tarball (sliced, class-balanced), the binary batch
reader on a synthetic `cifar-10-batches-bin`, checksum and corruption errors, the cache, and
the error that lists every place tried."""

import io
import sys
import tarfile

import numpy as np
import pytest

from tfquant._keras import tf
from tfquant.models import datasets

SHARED_TARBALL = datasets._CHECKOUT_DATA / "cifar10" / datasets._CIFAR_TARBALL


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test caches in its own folder and sees no $TFQUANT_DATA."""
    monkeypatch.setenv("TFQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TFQUANT_DATA", raising=False)


@pytest.fixture
def no_fallbacks(monkeypatch, tmp_path):
    """No shared/data next to the checkout and no tensorflow-datasets."""
    monkeypatch.setattr(datasets, "_CHECKOUT_DATA", tmp_path / "no-shared-data")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails


def _check_cifar_arrays(splits, sizes):
    for (images, labels), size in zip(splits, sizes, strict=True):
        assert images.shape == (size, 32, 32, 3) and images.dtype == np.float32
        assert images.flags.c_contiguous
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert labels.shape == (size,) and labels.dtype == np.int64
        assert labels.min() >= 0 and labels.max() <= 9


# -- the project's JPEG tarball -----------------------------------------------------------------


def test_cifar10_tarball_sliced_and_class_balanced():
    # The project's data folder (shared/data next to the checkout) is part of the test setup.
    assert SHARED_TARBALL.is_file(), f"the CIFAR-10 tarball is missing: {SHARED_TARBALL}"
    (x, y), (x_test, y_test) = datasets.load("cifar10", limit=(100, 30))
    _check_cifar_arrays(((x, y), (x_test, y_test)), (100, 30))
    assert np.bincount(y, minlength=10).tolist() == [10] * 10  # any prefix cycles the classes
    assert np.bincount(y_test, minlength=10).tolist() == [3] * 10
    assert y[:10].tolist() == list(range(10))
    assert x.std() > 0.1  # real pictures, not blank
    assert not list(datasets.cache_dir().glob("*.npz"))  # a sliced read writes no cache


def _jpeg(color):
    image = np.zeros((32, 32, 3), np.uint8) + np.array(color, np.uint8)
    return tf.io.encode_jpeg(image, quality=95).numpy()


def _fake_tarball(path, per_class=2, test_per_class=1, corrupt=None):
    """A tarball with the project's layout: cifar10-jpeg/{train,test}/<class>/NNNN.jpg."""
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("test", test_per_class), ("train", per_class)):
            for label, name in enumerate(datasets.CIFAR10_CLASSES):
                for number in range(count):
                    member = f"cifar10-jpeg/{split}/{name}/{number:04d}.jpg"
                    data = b"not a jpeg" if member == corrupt else _jpeg([label * 25, number, 0])
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


def test_tarball_checksum_mismatch(tmp_path):
    _fake_tarball(tmp_path / datasets._CIFAR_TARBALL)
    with pytest.raises(datasets.DatasetError, match="sha256") as info:
        datasets.load("cifar10", data_dir=tmp_path)
    assert datasets._CIFAR_TARBALL in str(info.value)
    assert datasets._CIFAR_TARBALL_SHA256 in str(info.value)


def test_tarball_order_labels_and_cache(tmp_path):
    _fake_tarball(tmp_path / datasets._CIFAR_TARBALL, per_class=3, test_per_class=2)
    (x, y), (x_test, y_test) = datasets.load("cifar10", data_dir=tmp_path, verify=False)
    _check_cifar_arrays(((x, y), (x_test, y_test)), (30, 20))
    # file number first, then class: 0000 of every class, then 0001, ...
    assert y.tolist() == list(range(10)) * 3
    red = np.round(x[..., 0].mean(axis=(1, 2)) * 255 / 25)
    assert red.tolist() == y.tolist()  # each image came from its class folder
    (cached,) = datasets.cache_dir().glob("cifar10-jpeg-*.npz")
    again = datasets.load("cifar10", data_dir=tmp_path, verify=False)
    sliced = datasets.load("cifar10", data_dir=tmp_path, verify=False, limit=(12, None))
    fresh = datasets.load("cifar10", data_dir=tmp_path, verify=False, limit=12, cache=False)
    assert np.array_equal(again[0][0], x) and np.array_equal(again[1][1], y_test)
    assert np.array_equal(sliced[0][0], x[:12]) and len(sliced[1][0]) == 20
    assert np.array_equal(fresh[0][0], x[:12]) and np.array_equal(fresh[1][0], x_test[:12])
    cached.write_bytes(b"garbage")  # a broken cache is decoded again, not an error
    assert np.array_equal(datasets.load("cifar10", data_dir=tmp_path, verify=False)[0][0], x)


def test_tarball_corrupt_member_and_truncated_file(tmp_path):
    bad = "cifar10-jpeg/train/cat/0001.jpg"
    _fake_tarball(tmp_path / datasets._CIFAR_TARBALL, corrupt=bad)
    with pytest.raises(datasets.DatasetError, match="train/cat/0001.jpg"):
        datasets.load("cifar10", data_dir=tmp_path, verify=False)
    path = _fake_tarball(tmp_path / "whole.tar.gz")
    truncated = tmp_path / "cut" / datasets._CIFAR_TARBALL
    truncated.parent.mkdir()
    truncated.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(datasets.DatasetError, match="corrupt or truncated"):
        datasets.load("cifar10", data_dir=truncated.parent, verify=False)


# -- the original binary batches ----------------------------------------------------------------


def _binary_folder(root, records=4, seed=0):
    """A synthetic cifar-10-batches-bin; returns the uint8 images and labels per split."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    arrays = {}
    for split, names in datasets._CIFAR_BINARY_FILES.items():
        images = rng.integers(0, 256, (records * len(names), 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, records * len(names), dtype=np.uint8)
        for i, name in enumerate(names):
            part = slice(i * records, (i + 1) * records)
            planes = images[part].transpose(0, 3, 1, 2).reshape(records, -1)  # CHW
            (folder / name).write_bytes(np.hstack([labels[part, None], planes]).tobytes())
        arrays[split] = (images, labels)
    return folder, arrays


def test_binary_batches(tmp_path):
    _, arrays = _binary_folder(tmp_path / "cifar10")
    (x, y), (x_test, y_test) = datasets.load("cifar10", data_dir=tmp_path, verify=False)
    _check_cifar_arrays(((x, y), (x_test, y_test)), (20, 4))
    assert np.array_equal(np.round(x * 255).astype(np.uint8), arrays["train"][0])
    assert np.array_equal(y, arrays["train"][1]) and np.array_equal(y_test, arrays["test"][1])
    assert np.array_equal(np.round(x_test * 255).astype(np.uint8), arrays["test"][0])
    # limits cross file boundaries: 4 records per file, 6 train images span two files
    (x6, y6), (x1, _) = datasets.load("cifar10", data_dir=tmp_path, verify=False, limit=(6, 1))
    assert np.array_equal(x6, x[:6]) and np.array_equal(y6, y[:6]) and len(x1) == 1


def test_binary_verify_wants_original_record_count(tmp_path):
    _binary_folder(tmp_path)
    with pytest.raises(datasets.DatasetError, match="holds 4 records") as info:
        datasets.load("cifar10", data_dir=tmp_path)
    assert "data_batch_1.bin" in str(info.value) and "verify=False" in str(info.value)


def test_binary_truncated_bad_label_and_incomplete(tmp_path):
    folder, _ = _binary_folder(tmp_path)
    batch = folder / "data_batch_3.bin"
    whole = batch.read_bytes()
    batch.write_bytes(whole[:-10])
    with pytest.raises(datasets.DatasetError, match="data_batch_3.bin is truncated"):
        datasets.load("cifar10", data_dir=tmp_path, verify=False)
    label = 2 * datasets._CIFAR_RECORD  # the label byte of record 2
    batch.write_bytes(whole[:label] + bytes([12]) + whole[label + 1 :])
    with pytest.raises(datasets.DatasetError, match="record 2 has label 12"):
        datasets.load("cifar10", data_dir=tmp_path, verify=False)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(datasets.DatasetError, match=r"incomplete.*test_batch.bin"):
        datasets.load("cifar10", data_dir=tmp_path, verify=False)


# -- nothing found, bad arguments, the other loaders' limit ------------------------------------


def test_missing_cifar10_lists_every_place_tried(tmp_path, monkeypatch, no_fallbacks):
    monkeypatch.setenv("TFQUANT_DATA", str(tmp_path / "env"))
    with pytest.raises(datasets.DatasetError) as info:
        datasets.load("cifar10", data_dir=tmp_path / "given")
    message = str(info.value)
    for folder in ("given", "given/cifar10", "env", "env/cifar-10", "no-shared-data"):
        assert str(tmp_path / folder) in message
    assert "cifar-10-batches-bin" in message and "cifar10-jpeg.tar.gz" in message
    assert "tensorflow-datasets" in message


def test_missing_mnist_lists_every_place_tried(tmp_path, no_fallbacks):
    with pytest.raises(datasets.DatasetError) as info:
        datasets.load("mnist", data_dir=tmp_path / "given")
    assert str(tmp_path / "given" / "mnist") in str(info.value)


@pytest.mark.parametrize("limit", [0, -3, 2.5, (1, 2, 3), "10", True])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit must be"):
        datasets.load("digits", limit=limit)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name must be one of .*cifar10.*name='cifar100'"):
        datasets.load("cifar100")


def test_mnist_limit():
    (x, y), (x_test, y_test) = datasets.load("mnist", limit=(50, None))
    assert x.shape == (50, 28, 28, 1) and len(y) == 50
    assert x_test.shape == (10_000, 28, 28, 1) and y_test.dtype == np.int64
