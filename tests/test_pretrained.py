"""Shipped float baselines: load offline, verified by sha256, and score what they promise on
the full test split."""

import numpy as np
import pytest

from tfquant import models
from tfquant.models import baselines, datasets

SHIPPED = [name for name in baselines.BASELINES if baselines.BASELINES[name].accuracy > 0]


@pytest.mark.parametrize("name", SHIPPED)
def test_baseline_meets_its_target(name):
    spec = baselines.BASELINES[name]
    model = models.pretrained(name)
    _, (x_test, y_test) = datasets.load(spec.dataset)
    logits = model.predict(x_test, batch_size=1000, verbose=0)
    accuracy = float(np.mean(logits.argmax(-1) == y_test))
    assert accuracy >= spec.target_accuracy
    assert accuracy == pytest.approx(spec.accuracy, abs=5e-4)  # the recorded figure


def test_every_baseline_is_shipped():
    assert sorted(SHIPPED) == sorted(baselines.BASELINES)


def test_corrupt_or_missing_file_is_refused(tmp_path):
    name = SHIPPED[0]
    data = bytearray(open(baselines._path(name), "rb").read())
    data[len(data) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        models.pretrained(name, path=str(corrupt))
    with pytest.raises(FileNotFoundError, match="retrain"):
        models.pretrained(name, path=str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="name must be one of"):
        models.pretrained("resnet1000_imagenet")


def test_baseline_config_round_trip():
    for spec in baselines.BASELINES.values():
        assert baselines.Baseline(**spec.get_config()) == spec


def test_retraining_cli_rejects_bad_flags(capsys):
    assert baselines.main(["baselines"]) == 2
    assert "--name is required" in capsys.readouterr().err
    assert baselines.main(["baselines", "--name=lenet5_cifar"]) == 2
