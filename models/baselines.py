"""Shipped float baselines: small weight files in `models/pretrained/`, each checked against
its sha256 on load, and the script that trained them (rerun it to reproduce them).

    model = tfq.models.pretrained("lenet5_mnist")      # offline, verified

    python -m tfquant.models.baselines --name=lenet5_mnist   # retrain; prints the new sha256

The files are `.npz` archives of the model's weights in `model.weights` order (keys
`0000`, `0001`, ...), read with `allow_pickle=False`.
"""

import dataclasses
import hashlib
import os
import sys

import numpy as np

from tfquant._keras import keras
from tfquant.models import datasets
from tfquant.models.classifier import compile_classifier
from tfquant.models.lenet import lenet5, lenet300_100

_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One shipped float model: how it was trained and what it scores.

    Example:
      >>> spec = BASELINES["lenet5_mnist"]
      >>> Baseline(**spec.get_config()) == spec
      True
    """

    architecture: str
    dataset: str
    epochs: int
    learning_rate: float
    target_accuracy: float  # what the issue asks of it; training fails below this
    accuracy: float  # measured on the test split when the file was made
    sha256: str

    def get_config(self):
        return dataclasses.asdict(self)


_ARCHITECTURES = {"lenet5": lenet5, "lenet300_100": lenet300_100}

BASELINES = {
    "lenet300_100_mnist": Baseline(
        architecture="lenet300_100",
        dataset="mnist",
        epochs=20,
        learning_rate=1e-3,
        target_accuracy=0.982,
        accuracy=0.9830,
        sha256="dd3c5e21e758cb7b5540df9326b22329b0a280fd5c42e4357cc6d36ff6a7be7e",
    ),
    "lenet5_mnist": Baseline(
        architecture="lenet5",
        dataset="mnist",
        epochs=15,
        learning_rate=1e-3,
        target_accuracy=0.992,
        accuracy=0.9930,
        sha256="ccb5280b873ccc3a831c93b86bf7f1ff50db427c7ffdb3cb01d7f7e3f4e749c5",
    ),
    "lenet5_fashion_mnist": Baseline(
        architecture="lenet5",
        dataset="fashion_mnist",
        epochs=15,
        learning_rate=1e-3,
        target_accuracy=0.90,
        accuracy=0.9182,
        sha256="8a49efc806dc28076d59bbdda297968062dd06784b8ed0841927162c2477c433",
    ),
}


def _path(name):
    return os.path.join(_FOLDER, f"{name}.npz")


def _check_name(name):
    if name not in BASELINES:
        raise ValueError(f"name must be one of {sorted(BASELINES)}. Received: name={name!r}")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained(name, path=None):
    """A shipped float baseline: the architecture with its trained weights (not compiled).

    Args:
      name: one of `BASELINES` ("lenet300_100_mnist", "lenet5_mnist",
        "lenet5_fashion_mnist").
      path: another copy of the weight file (default: the one installed with tfquant).

    Raises:
      ValueError: unknown name, or the file's sha256 is not the recorded one (a corrupt or
        different file; nothing is loaded).
      FileNotFoundError: the weight file is missing.
    """
    _check_name(name)
    spec = BASELINES[name]
    path = path or _path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The weights of {name!r} are not at {path!r}; retrain them with "
            f"`python -m tfquant.models.baselines --name={name}`."
        )
    digest = _sha256(path)
    if digest != spec.sha256:
        raise ValueError(
            f"{path!r} is not the shipped {name!r}: its sha256 is {digest}, expected "
            f"{spec.sha256}. Reinstall tfquant or retrain it."
        )
    model = _ARCHITECTURES[spec.architecture]()
    with np.load(path, allow_pickle=False) as archive:
        values = [archive[f"{i:04d}"] for i in range(len(archive.files))]
    model.set_weights(values)
    return model


def train_baseline(name, data_dir=None, out=None, verbose=2):
    """Trains baseline `name` from its recorded recipe and writes its weight file.

    Returns:
      `(test accuracy, sha256 of the written file)`.

    Raises:
      RuntimeError: the test accuracy is below the baseline's `target_accuracy`.
    """
    _check_name(name)
    spec = BASELINES[name]
    (x, y), (x_test, y_test) = datasets.load(spec.dataset, data_dir=data_dir)
    model = _ARCHITECTURES[spec.architecture]()
    steps = spec.epochs * int(np.ceil(len(x) / 128))
    schedule = keras.optimizers.schedules.CosineDecay(spec.learning_rate, steps)
    compile_classifier(model, schedule)
    model.fit(x, y, epochs=spec.epochs, batch_size=128, verbose=verbose)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=1000)[1])
    if accuracy < spec.target_accuracy:
        raise RuntimeError(
            f"{name}: test accuracy {accuracy:.4f} is below the target {spec.target_accuracy}"
        )
    out = out or _path(name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    arrays = {f"{i:04d}": w for i, w in enumerate(model.get_weights())}
    temporary = out + ".partial.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, out)
    return accuracy, _sha256(out)


def main(argv=None):
    """`python -m tfquant.models.baselines --name=NAME [--data_dir=DIR] [--out=FILE]`."""
    from absl import flags

    values = flags.FlagValues()
    flags.DEFINE_enum("name", None, sorted(BASELINES), "Baseline to train.", flag_values=values)
    flags.DEFINE_string("data_dir", None, "Dataset folder (see datasets.load).", flag_values=values)
    flags.DEFINE_string(
        "out", None, "Weight file to write (default: the shipped one).", flag_values=values
    )
    try:
        values(list(sys.argv if argv is None else argv))
        if values.name is None:
            raise flags.Error("--name is required")
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    accuracy, digest = train_baseline(values.name, values.data_dir, values.out)
    print(f"{values.name}: test accuracy {accuracy:.4f}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
