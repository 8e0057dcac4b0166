"""benchmarks/cifar10.py --quick: rows from the shipped ResNet-20 baseline are measured,
stored as they finish, and accumulate over runs (a rerun of other rows keeps the stored ones)."""

import importlib.util
import json
import os
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cifar10():
    """benchmarks/cifar10.py as a module: run in this process, the runs share one TensorFlow
    start-up and the traced baseline."""
    spec = importlib.util.spec_from_file_location(
        "cifar10_benchmark", os.path.join(ROOT, "benchmarks", "cifar10.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(cifar10, capsys):
    def _run(rows, path, *flags):
        capsys.readouterr()
        with warnings.catch_warnings():
            # One quick epoch ends MPA mid-schedule: compressing it warns that the container
            # stores the free weights hard-quantized (as the script run shows on stderr).
            warnings.filterwarnings("ignore", "conv.*of the weights are frozen", UserWarning)
            cifar10.main(
                ["--quick", "--json", str(path), *flags] + (["--rows", *rows] if rows else [])
            )
        return capsys.readouterr().out

    return _run


def test_quick_rows_accumulate(tmp_path, run):
    path = tmp_path / "cifar10.json"
    run(["float", "MPA 2-bit"], path)
    stored = {r["row"]: r for r in json.loads(path.read_text())["rows"]}
    assert sorted(stored) == ["MPA 2-bit", "float"]
    mpa = stored["MPA 2-bit"]
    assert mpa["settings"] == stored["float"]["settings"]
    assert mpa["settings"]["epochs"] == 1
    assert 0.0 <= mpa["keras_accuracy"] <= 1.0 and 0.0 <= mpa["tflite_accuracy"] <= 1.0
    # 2-bit codebooks (first conv and last Dense at 8 bits) and a real ANS container
    assert max(mpa["distinct_per_layer"][1:-1]) <= 4
    assert mpa["coded_bytes"] > 0 and mpa["ratio"] > 8
    assert "tflite_accuracy" not in stored["float"]

    table = run(["naive 2-bit"], path)
    stored = {r["row"]: r for r in json.loads(path.read_text())["rows"]}
    assert sorted(stored) == ["MPA 2-bit", "float", "naive 2-bit"]
    lines = [line.split()[0:2] for line in table.splitlines()]
    for name in ("float", "naive 2-bit", "MPA 2-bit"):
        assert name.split() in [line[: len(name.split())] for line in lines], table
    assert "rows not measured yet" in table
    # the targets, checked on the stored rows
    assert "targets (Keras accuracy, points):" in table
    target = next(line for line in table.splitlines() if "MPA 2-bit >= naive 2-bit +0.5" in line)
    assert target.rstrip().endswith(("(met)", "(MISSED)")), target
    assert "MPA 3-bit >= float -0.5: not measured yet" in table

    # --table: the same table from the JSON, nothing trained or stored
    before = path.read_text()
    assert run([], path, "--table") == table.replace(f"wrote {path}\n", "")
    assert path.read_text() == before


def test_quick_channel_rows(tmp_path, run, cifar10):
    path = tmp_path / "cifar10.json"
    table = run(["float", "channels 3-bit KD"], path)
    row = next(r for r in json.loads(path.read_text())["rows"] if r["row"] == "channels 3-bit KD")
    # every block's first conv (every other conv after the stem) lost CHANNEL_FRACTION of its
    # filters and nothing else was cut
    convs = [name for name in row["channels"] if "conv" in name]
    assert len(convs) == 19
    changed = {name: tuple(kept) for name, kept in row["channels"].items() if kept[0] != kept[1]}
    assert sorted(changed) == sorted(convs[1::2])
    for before, after in changed.values():
        assert after == before - round(cifar10.CHANNEL_FRACTION * before)
    assert 0.5 < row["flops_removed"] < 0.6
    assert row["macs_shrunk"] < row["macs_full"]
    assert row["tflite_bytes_shrunk"] < row["tflite_bytes_full"]
    assert row["latency_us_shrunk"] > 0 and row["distillation"] is True
    assert 0.0 <= row["tflite_accuracy"] <= 1.0
    assert "channels 3-bit KD: inner channels kept" in table
    assert "target >= 50 % FLOPs removed at <= 1 pt drop" in table


def test_multiply_accumulates(cifar10):
    keras = cifar10.keras
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 64 * 4 * 27
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 16 * 4 * 9
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))  # 4 * 10
    assert cifar10.multiply_accumulates(model) == 64 * 4 * 27 + 16 * 4 * 9 + 40
