"""Latency targets beyond the host: the Android driver (adb + benchmark_model) and the Edge TPU
check (static rules + edgetpu_compiler), tested without a phone or the compiler.

The fixtures tests/fixtures/benchmark_model_android.txt and tests/fixtures/edgetpu_compiler.txt
are written from the tools' documented output formats, not recorded on this machine (no phone
or Edge TPU compiler here). Fake `adb` / `edgetpu_compiler` scripts record their arguments and
print canned output, so the command sequences are asserted.
"""

import json
import os
import pathlib
import stat
import sys

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant import export
from tfquant._keras import tf
from tfquant.export import android, edgetpu

keras = tfq.keras
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
BENCHMARK_OUTPUT = (FIXTURES / "benchmark_model_android.txt").read_text()
COMPILER_OUTPUT = (FIXTURES / "edgetpu_compiler.txt").read_text()
ONE_DEVICE = (
    "List of devices attached\n"
    "1A2B3C4D5E6F   device usb:1-2 product:panther model:Pixel_7 device:panther "
    "transport_id:3\n\n"
)

# A fake tool: appends its argv to calls.jsonl and answers from config.json (same folder).
_FAKE_TOOL = """#!{python}
import json, os, pathlib, sys
here = pathlib.Path(__file__).resolve().parent
config = json.loads((here / "config.json").read_text())
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as log:
    log.write(json.dumps(args) + "\\n")
{body}
"""
_ADB_BODY = """
if args[:2] == ["devices", "-l"]:
    print(config["devices"], end="")
    sys.exit(0)
args = args[2:] if args[0] == "-s" else args
if args[0] == "push":
    size = os.path.getsize(args[1])
    print(f"{args[1]}: 1 file pushed, 0 skipped. 3.1 MB/s ({size} bytes in 0.001s)")
elif args[0] == "shell" and args[1].endswith("_benchmark_model"):
    print(config["benchmark_output"], end="")
    sys.exit(config.get("benchmark_rc", 0))
"""
_COMPILER_BODY = """
out_dir, model = args[args.index("-o") + 1], args[-1]
if config.get("fail"):
    print("Edge TPU Compiler version 16.0.384591198")
    print("ERROR: Attempting to use a delegate that only supports static-sized tensors.")
    print("Compilation failed!")
    sys.exit(1)
stem = pathlib.Path(model).stem
(pathlib.Path(out_dir) / (stem + "_edgetpu.tflite")).write_bytes(
    b"EDGETPU:" + pathlib.Path(model).read_bytes())
print(config["output"], end="")
"""


def make_tool(directory, name, body, **config):
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    path = directory / name
    path.write_text(_FAKE_TOOL.format(python=sys.executable, body=body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(tool):
    lines = (tool.parent / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def bare_path(monkeypatch, tmp_path):
    """PATH holds only an empty folder; no $ADB / Android SDK variables."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for variable in ("ADB", "ANDROID_HOME", "ANDROID_SDK_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    return empty


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "benchmark_model"
    path.write_bytes(b"\x7fELF fake aarch64 binary")
    return path


# --- Android -------------------------------------------------------------------------------


def test_parse_benchmark_model_fixture():
    out = export.parse_benchmark_model_output(BENCHMARK_OUTPUT)
    assert out["init_us"] == 2345 and out["first_inference_us"] == 5678
    assert out["warmup_avg_us"] == 1234.5 and out["inference_avg_us"] == 1200.25
    assert out["warmup"]["count"] == 10 and out["warmup"]["max"] == 5678
    assert out["inference"] == {
        "count": 50,
        "first": 1214,
        "curr": 1192,
        "min": 1171,
        "max": 1388,
        "avg": 1200.25,
        "std": 41,
    }
    assert (out["init_memory_mb"], out["overall_memory_mb"], out["peak_memory_mb"]) == (
        1.2,
        3.4,
        5.6,
    )
    assert out["model_size_mb"] == pytest.approx(0.042632)


def test_parse_benchmark_model_older_format_and_garbage():
    # Older builds print without the "INFO: " prefix; adb over a pty ends lines with \r\n.
    text = (
        "count=1 first=900 curr=900 min=900 max=900 avg=900 std=0\r\n"
        "count=20 first=410 curr=400 min=390 max=450 avg=401.5 std=12\r\n"
        "Inference timings in us: Init: 12000, First inference: 900, Warmup (avg): 900, "
        "Inference (avg): 401.5\r\n"
    )
    out = export.parse_benchmark_model_output(text)
    assert out["inference"]["count"] == 20 and out["inference_avg_us"] == 401.5
    assert out["peak_memory_mb"] is None
    with pytest.raises(ValueError, match="output of TFLite's benchmark_model"):
        export.parse_benchmark_model_output("Segmentation fault\n")


def test_parse_adb_devices_states():
    devices = android.parse_adb_devices(
        "* daemon not running; starting now at tcp:5037\n"
        "* daemon started successfully\n"
        "List of devices attached\n"
        "1A2B3C4D   device usb:1-2 product:panther model:Pixel_7 device:panther transport_id:3\n"
        "emulator-5554          unauthorized transport_id:1\n"
        "0123456789ABCDEF       no permissions (user in plugdev group; are your udev rules "
        "wrong?); see [http://developer.android.com/tools/device.html] usb:1-1 transport_id:2\n"
    )
    assert [d["serial"] for d in devices] == ["1A2B3C4D", "emulator-5554", "0123456789ABCDEF"]
    assert devices[0]["state"] == "device" and devices[0]["properties"]["model"] == "Pixel_7"
    assert devices[1]["state"] == "unauthorized"
    assert devices[2]["state"].startswith("no permissions")
    assert devices[2]["properties"] == {"usb": "1-1", "transport_id": "2"}


def test_android_benchmark_drives_adb(tmp_path, binary):
    adb = make_tool(
        tmp_path / "tools", "adb", _ADB_BODY, devices=ONE_DEVICE, benchmark_output=BENCHMARK_OUTPUT
    )
    model = b"TFL3 fake model bytes"
    result = export.benchmark(
        model, target="android", benchmark_binary=binary, adb=str(adb), runs=50, warmup=10
    )
    log = calls(adb)
    assert log[0] == ["devices", "-l"]
    serial = ["-s", "1A2B3C4D5E6F"]
    push_model, push_binary, chmod, run, remove = log[1:]
    assert push_model[:3] == serial + ["push"]
    remote_model = push_model[4]
    assert remote_model.startswith("/data/local/tmp/tfquant_") and remote_model.endswith(".tflite")
    assert push_binary == serial + ["push", str(binary), push_binary[4]]
    remote_binary = push_binary[4]
    assert remote_binary.startswith("/data/local/tmp/") and remote_binary != remote_model
    assert chmod == serial + ["shell", "chmod", "+x", remote_binary]
    assert run[:4] == serial + ["shell", remote_binary]
    flags = run[4:]
    for flag in (
        f"--graph={remote_model}",
        "--num_threads=1",
        "--num_runs=50",
        "--warmup_runs=10",
    ):
        assert flag in flags
    assert not any(f.startswith(("--use_gpu", "--use_nnapi", "--use_xnnpack")) for f in flags)
    assert remove == serial + ["shell", "rm", "-f", remote_model, remote_binary]
    assert not os.path.exists(push_model[3])  # the local temporary model is gone

    assert result["target"] == "android" and result["runs"] == 50 and result["threads"] == 1
    assert result["mean_us"] == 1200.25
    assert (result["std_us"], result["min_us"], result["max_us"]) == (41, 1171, 1388)
    assert result["init_us"] == 2345 and result["peak_memory_mb"] == 5.6
    assert result["median_us"] is None and result["p90_us"] is None
    assert result["device"] == "1A2B3C4D5E6F" and result["device_model"] == "Pixel_7"


def test_android_adb_from_path_with_delegate_flags(tmp_path, monkeypatch, bare_path, binary):
    adb = make_tool(
        bare_path, "adb", _ADB_BODY, devices=ONE_DEVICE, benchmark_output=BENCHMARK_OUTPUT
    )
    export.benchmark(
        b"model",
        target="android",
        benchmark_binary=str(binary),
        threads=4,
        use_xnnpack=False,
        use_gpu=True,
    )
    flags = calls(adb)[4][4:]
    assert {"--num_threads=4", "--use_xnnpack=false", "--use_gpu=true"} <= set(flags)
    assert "--use_nnapi=true" not in flags
    # $ADB is honoured for the default name.
    os.rename(adb, bare_path / "my-adb")
    monkeypatch.setenv("ADB", str(bare_path / "my-adb"))
    export.benchmark(b"model", target="android", benchmark_binary=binary, use_nnapi=True)
    assert "--use_nnapi=true" in calls(adb)[-2]


def test_android_picks_serial_among_several(tmp_path, binary):
    devices = (
        "List of devices attached\n"
        "1A2B3C4D5E6F   device usb:1-2 product:panther model:Pixel_7 transport_id:3\n"
        "emulator-5554  device product:sdk_gphone64 model:sdk_gphone64_x86_64 transport_id:1\n"
    )
    adb = make_tool(
        tmp_path / "tools", "adb", _ADB_BODY, devices=devices, benchmark_output=BENCHMARK_OUTPUT
    )
    with pytest.raises(ValueError, match="serial must name one device") as error:
        export.benchmark(b"m", target="android", benchmark_binary=binary, adb=str(adb))
    assert "1A2B3C4D5E6F" in str(error.value) and "emulator-5554" in str(error.value)
    assert calls(adb) == [["devices", "-l"]]  # nothing pushed
    result = export.benchmark(
        b"m", target="android", benchmark_binary=binary, adb=str(adb), serial="emulator-5554"
    )
    assert result["device"] == "emulator-5554"
    assert all(call[:2] == ["-s", "emulator-5554"] for call in calls(adb)[2:])


@pytest.mark.parametrize(
    "devices, match",
    [
        ("List of devices attached\n\n", "No Android device is attached"),
        ("List of devices attached\nABC unauthorized transport_id:1\n", "Allow USB debugging"),
    ],
)
def test_android_without_ready_device(tmp_path, binary, devices, match):
    adb = make_tool(tmp_path / "tools", "adb", _ADB_BODY, devices=devices, benchmark_output="")
    with pytest.raises(export.TargetUnavailableError, match=match):
        export.benchmark(b"m", target="android", benchmark_binary=binary, adb=str(adb))


def test_android_without_adb(bare_path, binary):
    with pytest.raises(export.TargetUnavailableError) as error:
        export.benchmark(b"m", target="android", benchmark_binary=binary)
    assert "platform-tools" in str(error.value) and "USB debugging" in str(error.value)
    assert isinstance(error.value, RuntimeError)


def test_android_failed_run_still_removes_files(tmp_path, binary):
    adb = make_tool(
        tmp_path / "tools",
        "adb",
        _ADB_BODY,
        devices=ONE_DEVICE,
        benchmark_output="ERROR: Failed to allocate tensors!\n",
        benchmark_rc=1,
    )
    with pytest.raises(RuntimeError, match="benchmark_model failed .*allocate tensors"):
        export.benchmark(b"m", target="android", benchmark_binary=binary, adb=str(adb))
    assert calls(adb)[-1][2:5] == ["shell", "rm", "-f"]


def test_android_argument_errors(tmp_path, binary):
    with pytest.raises(ValueError, match="benchmark_binary is required.*android_aarch64"):
        export.benchmark(b"m", target="android")
    with pytest.raises(FileNotFoundError, match="no such file"):
        export.benchmark(b"m", target="android", benchmark_binary=tmp_path / "missing")
    with pytest.raises(ValueError, match="use_xnnpack must be None.*Received: use_xnnpack='yes'"):
        export.benchmark(b"m", target="android", benchmark_binary=binary, use_xnnpack="yes")
    with pytest.raises(ValueError, match="use_gpu must be True or False. Received: use_gpu=1"):
        export.benchmark(b"m", target="android", benchmark_binary=binary, use_gpu=1)
    with pytest.raises(ValueError, match="cannot both be True"):
        export.benchmark(
            b"m", target="android", benchmark_binary=binary, use_gpu=True, use_nnapi=True
        )
    with pytest.raises(ValueError, match="serial must be None or a device serial"):
        export.benchmark(b"m", target="android", benchmark_binary=binary, serial="")
    with pytest.raises(ValueError, match="serial applies only to target='android'"):
        export.benchmark(b"m", target="host", serial="ABC")
    with pytest.raises(ValueError, match="compiler applies only to target='edgetpu'"):
        export.benchmark(b"m", target="android", benchmark_binary=binary, compiler="x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'device'"):
        export.benchmark(b"m", target="android", device="phone")
    with pytest.raises(ValueError, match="runs must be an integer >= 1. Received: runs=0"):
        export.benchmark(b"m", target="android", benchmark_binary=binary, runs=0)


# --- Edge TPU ------------------------------------------------------------------------------


def test_parse_edgetpu_compiler_fixture():
    out = export.parse_edgetpu_compiler_output(COMPILER_OUTPUT)
    assert out["version"] == "16.0.384591198" and out["succeeded"] and out["error"] is None
    assert (out["edgetpu_ops"], out["cpu_ops"], out["total_ops"], out["subgraphs"]) == (5, 2, 7, 1)
    rows = [(r.operator, r.count, r.mapped) for r in out["ops"]]
    assert rows == [
        ("CONV_2D", 2, True),
        ("MAX_POOL_2D", 1, True),
        ("RESHAPE", 1, True),
        ("FULLY_CONNECTED", 1, True),
        ("FULLY_CONNECTED", 1, False),
        ("DEQUANTIZE", 1, False),
    ]
    assert out["ops"][4].status.startswith("Operation is otherwise supported, but not mapped")


def test_parse_edgetpu_compiler_all_mapped_and_failed():
    # With every op mapped the compiler prints no "Number of operations that will run" lines.
    mapped = "\n".join(
        line for line in COMPILER_OUTPUT.splitlines() if "will run on" not in line
    ).replace("Operation is otherwise supported, but not mapped due to some", "Mapped to Edge TPU")
    mapped = mapped.replace(
        "Operation is working on an unsupported data type", "Mapped to Edge TPU"
    )
    out = export.parse_edgetpu_compiler_output(mapped)
    assert (out["edgetpu_ops"], out["cpu_ops"]) == (7, 0)
    failed = export.parse_edgetpu_compiler_output(
        "Edge TPU Compiler version 16.0.384591198\n"
        "ERROR: Attempting to use a delegate that only supports static-sized tensors with a "
        "graph that has dynamic-sized tensors.\nCompilation failed!\n"
    )
    assert not failed["succeeded"] and failed["edgetpu_ops"] is None
    assert failed["error"].startswith("ERROR: Attempting to use a delegate")


def test_static_check_rules_on_details():
    def tensor(name, dtype, shape, signature=None):
        return {
            "name": name,
            "dtype": dtype,
            "shape": np.array(shape),
            "shape_signature": signature,
        }

    tensors = {
        0: tensor("in", np.int8, [1, 4, 4, 4, 4], [1, 4, 4, 4, 4]),
        1: tensor("w", np.int8, [8, 3, 3, 4], [8, 3, 3, 4]),  # constants may be 4-D
        2: tensor("mid", np.int8, [1, 4, 4, 8], [1, -1, 4, 8]),
        3: tensor("out", np.float32, [1, 8], [1, 8]),
    }
    ops = [
        {"index": 0, "op_name": "CONV_3D", "inputs": [0, 1, -1], "outputs": [2]},
        {"index": 1, "op_name": "DEQUANTIZE", "inputs": [2], "outputs": [3]},
    ]
    checks = edgetpu.check_ops(ops, tensors, graph_inputs=[0])
    assert [c.ok for c in checks] == [False, False]
    conv = "\n".join(checks[0].reasons)
    assert "CONV_3D is not an Edge TPU operation" in conv
    assert "more than 3 dimensions larger than 1: 'in' [1, 4, 4, 4, 4]" in conv
    assert "'w'" not in conv and "dynamic shape: 'mid' [1, -1, 4, 8]" in conv
    assert "not 8-bit integer: 'out' float32" in "\n".join(checks[1].reasons)


@pytest.fixture(scope="module")
def digits_tflite(float_model, digits):
    """The tfquant digits export (batch dimension dynamic, as the converter leaves it) and the
    same model exported with `batch_size=1`, 3-bit multivalued, full int8."""
    (x, y), _ = digits
    qmodel = compile_model(tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3)))
    qmodel.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    dynamic = export.to_tflite(qmodel, representative_data=x[:32])
    static = export.to_tflite(qmodel, representative_data=x[:32], batch_size=1)
    return dynamic, static


@pytest.fixture(scope="module")
def float_tflite(float_model):
    return tf.lite.TFLiteConverter.from_keras_model(float_model).convert()


def test_digits_export_reports_dynamic_batch(digits_tflite):
    dynamic, _ = digits_tflite
    report = export.edgetpu_report(dynamic, compiler=None)
    assert [op.name for op in report.ops] == [
        "CONV_2D",
        "CONV_2D",
        "MAX_POOL_2D",
        "RESHAPE",
        "FULLY_CONNECTED",
        "FULLY_CONNECTED",
    ]
    assert not report.ok
    for op in report.ops:  # int8, supported, <= 3 non-trivial dims: only the batch fails
        assert len(op.reasons) == 1 and op.reasons[0].startswith("dynamic shape: "), op
        assert "[-1, " in op.reasons[0]
    assert "batch_size=1" in report.format() and "compiler=None" in report.note
    print(report)


def test_static_batch_export_passes(digits_tflite):
    _, static = digits_tflite
    report = export.edgetpu_report(static, compiler=None)
    assert report.ok and report.failures() == [] and len(report.ops) == 6
    assert "6 of 6 ops compatible" in report.format()


def test_float_model_fails_per_op(float_tflite):
    report = export.edgetpu_report(float_tflite, compiler=None)
    assert not report.ok and len(report.failures()) == len(report.ops) == 6
    for op in report.ops:
        assert any(r.startswith("not 8-bit integer:") and "float32" in r for r in op.reasons)


def test_edgetpu_without_compiler(bare_path, digits_tflite):
    _, static = digits_tflite
    report = export.edgetpu_report(static)
    assert report.ok and report.compiler is None and report.compiled_model is None
    assert "edgetpu-compiler" in report.note and "apt" in report.note
    with pytest.raises(export.TargetUnavailableError, match="edgetpu-compiler") as error:
        export.benchmark(static, target="edgetpu", runs=5)
    assert "edgetpu_report" in str(error.value)


def test_edgetpu_with_fake_compiler(bare_path, digits_tflite):
    _, static = digits_tflite
    compiler = make_tool(bare_path, "edgetpu_compiler", _COMPILER_BODY, output=COMPILER_OUTPUT)
    report = export.edgetpu_report(static)
    ((flag, out_flag, out_dir, model),) = calls(compiler)
    assert (flag, out_flag) == ("-s", "-o") and model.endswith("model.tflite")
    assert not os.path.exists(out_dir)  # compiled in a temporary folder, cleaned up
    assert report.compiled_model == b"EDGETPU:" + static
    assert report.compiler == str(compiler) and report.compiler_version == "16.0.384591198"
    assert (report.edgetpu_ops, report.cpu_ops) == (5, 2)
    assert len(report.compiler_ops) == 6 and "Mapped to Edge TPU" in report.format()
    # Latency then needs the Edge TPU runtime and a device, which this machine lacks.
    with pytest.raises(export.TargetUnavailableError, match="libedgetpu1-std"):
        export.benchmark(static, target="edgetpu", runs=5)


def test_edgetpu_compiler_failure_is_reported(bare_path, digits_tflite):
    dynamic, _ = digits_tflite
    make_tool(bare_path, "edgetpu_compiler", _COMPILER_BODY, output="", fail=True)
    report = export.edgetpu_report(dynamic)
    assert report.compiled_model is None and "static-sized tensors" in report.note
    with pytest.raises(RuntimeError, match="Could not compile the model for the Edge TPU"):
        export.benchmark(dynamic, target="edgetpu", runs=5)


def test_edgetpu_argument_errors():
    with pytest.raises(ValueError, match="tfl is not a valid TFLite flatbuffer"):
        export.edgetpu_report(b"not a model", compiler=None)
    with pytest.raises(TypeError, match="tfl must be the bytes"):
        export.edgetpu_report("model.tflite", compiler=None)
    with pytest.raises(ValueError, match="compiler must be None or the name or path"):
        export.benchmark(b"m", target="edgetpu", compiler=3)


def test_host_litert_benchmark_tool(digits_tflite):
    dynamic, _ = digits_tflite
    result = export.benchmark(dynamic, runs=20, warmup=2, tool="litert-benchmark")
    assert result["tool"] == "litert-benchmark" and result["runs"] == 20
    assert 0 <= result["min_us"] <= result["mean_us"] <= result["max_us"]  # 10 µs steps
    assert result["init_us"] > 0
    assert export.benchmark(dynamic, runs=5, warmup=0)["tool"] == "interpreter"
    with pytest.raises(ValueError, match="tool must be one of"):
        export.benchmark(dynamic, tool="perf")
    with pytest.raises(ValueError, match="tool applies only to target='host'"):
        export.benchmark(dynamic, target="edgetpu", tool="litert-benchmark")
