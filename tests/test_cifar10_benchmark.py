"""benchmarks/cifar10.py --quick: rows from the shipped ResNet-20 baseline are measured,
stored as they finish, and accumulate over runs (a rerun of other rows keeps the stored ones)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(rows, path, *flags):
    command = [sys.executable, "benchmarks/cifar10.py", "--quick", "--json", str(path), *flags]
    done = subprocess.run(
        command + (["--rows", *rows] if rows else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quick_rows_accumulate(tmp_path):
    path = tmp_path / "cifar10.json"
    _run(["float", "MPA 2-bit"], path)
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

    table = _run(["naive 2-bit"], path)
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
    assert _run([], path, "--table") == table.replace(f"wrote {path}\n", "")
    assert path.read_text() == before
