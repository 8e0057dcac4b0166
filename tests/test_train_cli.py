"""`python -m tfquant.models.train` on digits with tiny epochs: schedules finish (every weight
frozen on its codebook), the TFLite export is checked, the CLI prints one result line, and
bad flag values fail with the flag, the value and what is allowed."""

import os
import subprocess
import sys

import pytest

from tfquant.models import train as cli

QUICK = {"limit": (256, 128), "verbose": False}


@pytest.fixture(scope="module")
def float_weights(float_model, tmp_path_factory):
    """The session's trained digits CNN, saved as the CLI's --float_weights."""
    path = tmp_path_factory.mktemp("float") / "digits.weights.h5"
    float_model.save_weights(str(path))
    return str(path)


def test_cli_subprocess_ternary_mlq(float_weights, tmp_path):
    command = [
        sys.executable,
        "-m",
        "tfquant.models.train",
        "--scheme=ternary",
        "--schedule=mlq",
        f"--float_weights={float_weights}",
        "--epochs=4",
        "--limit=256,128",
        "--noverbose",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout  # exactly one line on stdout with --noverbose
    fields = dict(field.split("=") for field in lines[0].split()[1:])
    assert lines[0].startswith("RESULT ")
    assert fields["model"] == "digits_cnn" and fields["dataset"] == "digits"
    assert (fields["scheme"], fields["bits"], fields["schedule"]) == ("ternary", "2", "mlq")
    assert float(fields["quant_acc"].rstrip("%")) > 50
    assert int(fields["size_bytes"]) < int(fields["float_bytes"]) / 10


def test_multivalued_mpa_with_tflite(float_weights, tmp_path):
    out = tmp_path / "digits.tflite"
    result = cli.train(
        scheme="multivalued",
        bits=2,
        schedule="mpa",
        epochs=2,
        float_weights=float_weights,
        tflite_out=str(out),
        plot_dir=str(tmp_path / "plots"),
        **QUICK,
    )
    assert result["frozen"] == 1.0  # MPA finished within the two epochs
    assert sorted(os.path.basename(p) for p in result["plots"]) == ["phases.png", "weights.png"]
    for path in result["plots"]:
        with open(path, "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    assert result["epochs"] == 2 and result["bits"] == 2
    assert result["float_accuracy"] > 0.8 and result["quantized_accuracy"] > 0.5
    assert result["tflite_ok"] and result["tflite_agreement"] >= 0.95
    assert result["tflite_bytes"] == out.stat().st_size > 0
    assert result["train_samples"] == 256 and result["test_samples"] == 128
    line = cli.format_result(result)
    assert "schedule=mpa" in line and "tflite_acc=" in line


@pytest.mark.parametrize(
    "scheme, schedule, epochs, expected_epochs",
    [
        ("multivalued", "mvq", 1, 1),
        ("multivalued", "slq", 2, 2),
        ("ternary", "mlq", 1, 4),  # one epoch per layer at least: 4 layers
        ("ternary", "none", 1, 1),
    ],
)
def test_schedules_finish(float_weights, scheme, schedule, epochs, expected_epochs):
    result = cli.train(
        scheme=scheme, schedule=schedule, epochs=epochs, float_weights=float_weights, **QUICK
    )
    assert result["frozen"] == 1.0
    assert result["epochs"] == expected_epochs


def test_float_only_pretrains_saves_and_logs(tmp_path):
    saved = tmp_path / "float.weights.h5"
    result = cli.train(
        scheme="none",
        float_epochs=1,
        save_float_weights=str(saved),
        tensorboard_dir=str(tmp_path / "logs"),
        limit=64,
        verbose=False,
    )
    assert saved.is_file()
    assert any((tmp_path / "logs" / "float").rglob("events.out.tfevents.*"))
    assert result["bits"] == 32 and result["epochs"] == 0
    assert result["quantized_accuracy"] == result["float_accuracy"]
    assert result["size_bytes"] == result["float_bytes"] == 4 * 38282


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--model=vgg16"], ["--model=vgg16", "digits_cnn|lenet5"]),
        (["--schedule=fast"], ["--schedule=fast", "mpa"]),
        (["--epochs=-1"], ["--epochs=-1", "non-negative"]),
        (["--bits=12"], ["--bits=12", "in [1, 8]", "'multivalued'"]),
        (["--scheme=ternary", "--bits=3"], ["--bits=3", "must be 2"]),
        (["--scheme=uniform", "--schedule=mpa"], ["--schedule=mpa", "'multivalued'"]),
        (["--scheme=none", "--tflite_out=x.tflite"], ["--tflite_out=x.tflite", "'none'"]),
        (["--model=lenet5"], ["--model=lenet5", "(8, 8, 1)"]),
        (["--model=digits_cnn", "--dataset=mnist"], ["--model=digits_cnn", "dataset='digits'"]),
        (["--limit=0"], ["--limit=0", "TRAIN,TEST"]),
        (["--limit=a,b"], ["--limit=a,b", "TRAIN,TEST"]),
        (["--learning_rate=0"], ["--learning_rate=0.0", "> 0"]),
        (["--activation_bits=2"], ["--activation_bits=2", "lqnets"]),
        (["--unknown=1"], ["unknown"]),
        (["extra"], ["unexpected arguments ['extra']"]),
    ],
)
def test_bad_flags(argv, fragments, capsys):
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in error, error


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--schedule" in out and "--tflite_out" in out


def test_bad_argument_of_the_function():
    with pytest.raises(cli.UsageError, match="scheme must be one of") as info:
        cli.train(scheme="binary")
    assert info.value.flag == "scheme"


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.datasets, "_CHECKOUT_DATA", tmp_path / "no-shared-data")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.delenv("TFQUANT_DATA", raising=False)
    argv = ["--model=lenet300_100", "--dataset=mnist", f"--data_dir={tmp_path}"]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert "mnist was not found" in error and str(tmp_path / "mnist") in error
