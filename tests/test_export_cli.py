"""`python -m tfquant.export` end to end on a SavedModel made here; INT4 read from the
flatbuffer; the TFLite Micro model of --micro_compress; files never overwritten without
--overwrite."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant import export
from tfquant.export import cli, flatbuffer


def _saved(float_model, digits, scheme, path):
    (x, y), _ = digits
    qmodel = compile_model(tfq.quantize_model(float_model, scheme))
    qmodel.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    qmodel.save(str(path), save_format="tf")
    return qmodel


@pytest.fixture(scope="module")
def multivalued_savedmodel(float_model, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "multivalued"
    _saved(float_model, digits, tfq.schemes.Multivalued(bits=3), path)
    return str(path)


def _sha(path):
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def test_cli_end_to_end_in_a_subprocess(multivalued_savedmodel, tmp_path):
    out, report = tmp_path / "m.tflite", tmp_path / "card.json"
    command = [
        sys.executable,
        "-m",
        "tfquant.export",
        f"--model={multivalued_savedmodel}",
        f"--out={out}",
        "--representative=digits",
        "--samples=200",
        "--benchmark=host",
        "--runs=5",
        "--micro",
        "--micro_compress",  # alone: lut
        f"--report={report}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all exact" in done.stdout
    card = json.loads(report.read_text())
    assert card["tflite_bytes"] == out.stat().st_size
    assert card["exact"] and not card["float_ops"] and card["failures"] == []
    assert {k["stored_type"] for k in card["kernels"]} == {"INT8"}
    assert len(card["kernels"]) == 4
    for book in card["codebooks"].values():
        assert not book["per_channel"] and 1 <= len(book["values"]) <= 8
    assert card["agreement"] >= 0.95 and card["check_samples"] == 200
    assert card["latency"]["target"] == "host" and card["latency"]["median_us"] > 0
    assert card["int4_fraction"] == 0.0
    assert card["micro"]["arena_bytes"] > 0 and card["micro"]["agreement"] >= 0.98
    micro = card["micro_compress"]
    micro_file = tmp_path / "m.micro.tflite"
    assert micro["file"] == micro_file.name and micro["encoding"] == "lut"
    assert micro["micro_bytes"] == micro_file.stat().st_size < 0.6 * micro["int8_bytes"]
    assert micro["identical_outputs"] and micro["ratio"] == pytest.approx(
        micro["micro_bytes"] / micro["int8_bytes"]
    )
    assert 3.0 <= micro["bits_per_weight"] < 3.2
    assert micro["micro_arena_bytes"] >= micro["int8_arena_bytes"] > 0
    assert [k["encoding"] for k in micro["kernels"]] == ["lut per tensor"] * 4
    assert "m.micro.tflite" in done.stdout


def _run(*args):
    return cli.main(["tfquant.export", *args])


def test_existing_files_are_never_overwritten(multivalued_savedmodel, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"keep me")
    before = _sha(out)
    assert _run(f"--model={multivalued_savedmodel}", f"--out={out}") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _sha(out) == before
    assert _run(f"--model={multivalued_savedmodel}", f"--out={out}", "--overwrite") == 0
    assert flatbuffer.stored_tensors(out.read_bytes())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out=x.tflite"], "--model is required"),
        (["--model=m"], "--out is required"),
        (["--model=m", "--out=x.tflite", "--benchmark=phone"], "--benchmark must be one of"),
        (["--model=m", "--out=x.tflite", "--representative=imagenet"], "--representative"),
        (["--model=m", "--out=x.tflite", "--samples=0"], "--samples must be >= 1"),
        (["--model=no/such/dir", "--out=x.tflite"], "does not exist"),
        (["--model=m", "--out=x.tflite", "--bogus=1"], "bogus"),
        (["--model=m", "--out=x.tflite", "--micro_compress=zip"], "--micro_compress=zip"),
    ],
)
def test_bad_flags_name_the_flag(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"")
    assert _run(*args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()


def test_existing_micro_model_is_never_overwritten(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "x.micro.tflite").write_bytes(b"keep me")
    assert _run("--model=m", "--out=x.tflite", "--micro_compress") == 2
    error = capsys.readouterr().err
    assert "x.micro.tflite" in error and "--overwrite" in error
    assert (tmp_path / "x.micro.tflite").read_bytes() == b"keep me"
    assert not (tmp_path / "x.tflite").exists()
    assert cli.micro_path("x") == "x.micro.tflite"


def test_help_lists_micro_compress(capsys):
    assert _run("--help") == 0
    assert "--micro_compress: <lut|prune|smallest>" in capsys.readouterr().out


def test_npz_representative_with_wrong_shape(multivalued_savedmodel, tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 28, 28, 1), np.float32))
    out = tmp_path / "m.tflite"
    assert (
        _run(f"--model={multivalued_savedmodel}", f"--out={out}", f"--representative={data}") == 2
    )
    assert "(28, 28, 1)" in capsys.readouterr().err
    assert not out.exists()


def test_int4_kernels_are_int4_in_the_flatbuffer(float_model, digits, tmp_path):
    path = tmp_path / "ternary"
    _saved(float_model, digits, tfq.schemes.Ternary(), path)
    int8, int4 = tmp_path / "int8.tflite", tmp_path / "int4.tflite"
    report = tmp_path / "card.json"
    assert _run(f"--model={path}", f"--out={int8}", "--samples=64") == 0
    assert (
        _run(f"--model={path}", f"--out={int4}", "--int4", "--samples=64", f"--report={report}")
        == 0
    )
    card = json.loads(report.read_text())
    assert {k["stored_type"] for k in card["kernels"]} == {"INT4"}
    assert card["int4_fraction"] > 0.95 and card["exact"]
    assert int4.stat().st_size < 0.6 * int8.stat().st_size
    by_type = flatbuffer.constant_bytes_by_type(int4.read_bytes())
    assert by_type.get("INT4", 0) > by_type.get("INT8", 0)


def test_stored_tensor_round_trip_and_corrupt_bytes(multivalued_savedmodel, tmp_path):
    out = tmp_path / "m.tflite"
    assert _run(f"--model={multivalued_savedmodel}", f"--out={out}", "--samples=32") == 0
    tensors = flatbuffer.stored_tensors(out.read_bytes())
    assert all(flatbuffer.StoredTensor(**dataclasses.asdict(t)) == t for t in tensors)
    data = out.read_bytes()
    with pytest.raises(ValueError, match="TFLite flatbuffer"):
        flatbuffer.stored_tensors(data[:4] + b"XXXX" + data[8:])
    with pytest.raises(TypeError, match="tfl must be"):
        flatbuffer.stored_tensors("model.tflite")


def test_fixed_batch_export_is_static_and_exact(multivalued_savedmodel, digits):
    _, (x_test, y_test) = digits
    qmodel = tfq.load_model(multivalued_savedmodel)
    tfl = export.to_tflite(qmodel, x_test[:16], batch_size=1)
    signatures = {t.shape_signature[0] for t in flatbuffer.stored_tensors(tfl) if t.shape}
    assert -1 not in signatures
    report = export.check_tflite(tfl, qmodel, x_test[:100], y_test[:100])  # strict
    assert report.ok and report.agreement >= 0.99
    with pytest.raises(ValueError, match="batch_size must be None or a positive integer"):
        export.to_tflite(qmodel, x_test[:16], batch_size=0)


def test_unwritable_output_is_a_clear_error(multivalued_savedmodel, tmp_path, capsys, monkeypatch):
    from tfquant.export import tflite

    def refuse(data, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(tflite, "write_atomic", refuse)  # as a read-only folder would
    out = tmp_path / "m.tflite"
    assert _run(f"--model={multivalued_savedmodel}", f"--out={out}", "--samples=16") == 2
    assert "Permission denied" in capsys.readouterr().err
    assert not out.exists()
