"""Latency on an Android phone: push the model and TFLite's `benchmark_model` tool with adb, run
it, parse its report, and remove what was pushed.

`benchmark_model` is not built here: download the prebuilt nightly `android_aarch64` binary
(`android_arm` for 32-bit phones) linked from the TensorFlow Lite / LiteRT "Performance
measurement" page (the benchmark tool section) and pass its path as `benchmark_binary`.
"""

import os
import re
import shutil
import subprocess
import tempfile
import uuid
import warnings

from tfquant.export.benchmark import TargetUnavailableError, check_count, check_model_bytes

REMOTE_DIR = "/data/local/tmp"
_ADB_TIMEOUT_S = 60
_PUSH_TIMEOUT_S = 300
_RUN_TIMEOUT_S = 900  # benchmark_model stops by itself after --max_secs (150 s by default)

_INSTALL_ADB = (
    "Install the Android SDK platform-tools "
    "(https://developer.android.com/tools/releases/platform-tools; on Debian/Ubuntu also "
    "`apt-get install adb`) and put adb on PATH, pass adb='path/to/adb' or set $ADB."
)
_USB_DEBUGGING = (
    "Enable USB debugging on the phone: Settings > About phone > tap 'Build number' 7 times, "
    "then Settings > System > Developer options > USB debugging; plug it in, unlock it and "
    "accept the 'Allow USB debugging?' prompt (or use `adb connect HOST:PORT` for wireless "
    "debugging)."
)
_GET_BENCHMARK_MODEL = (
    "Download the prebuilt nightly benchmark_model for android_aarch64 (android_arm for 32-bit "
    "phones) linked from the TensorFlow Lite / LiteRT 'Performance measurement' page "
    "(benchmark tools section), or build it with "
    "`bazel build -c opt --config=android_arm64 //tensorflow/lite/tools/benchmark:benchmark_model`."
)
# `adb devices -l` properties look like `model:Pixel_7`; state words never contain ':'.
_DEVICE_PROPERTY = re.compile(r"^[a-z_]+:\S*$")
_NUMBER = r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"


def find_adb(adb="adb"):
    """Path of the adb executable: `adb` if it is a path or on PATH; for the default name
    also $ADB, then $ANDROID_HOME / $ANDROID_SDK_ROOT platform-tools.

    Raises:
      TargetUnavailableError: adb is not found.
    """
    if not isinstance(adb, (str, os.PathLike)) or not os.fspath(adb):
        raise ValueError(
            f"adb must be the name or path of the adb executable. Received: adb={adb!r}"
        )
    adb = os.fspath(adb)
    candidates = [adb]
    if adb == "adb":
        candidates.insert(0, os.environ.get("ADB", ""))
        for variable in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
            if os.environ.get(variable):
                candidates.append(os.path.join(os.environ[variable], "platform-tools", "adb"))
    for candidate in candidates:
        found = candidate and shutil.which(candidate)
        if found:
            return found
    raise TargetUnavailableError(
        f"adb (Android platform-tools) was not found (looked for adb={adb!r}). "
        f"{_INSTALL_ADB} {_USB_DEBUGGING}"
    )


def parse_adb_devices(text):
    """Parses `adb devices -l` into a list of {"serial", "state", "properties"} dicts.

    Example:
      >>> parse_adb_devices('''List of devices attached
      ... 1A2B3C4D   device usb:1-2 product:panther model:Pixel_7 device:panther transport_id:3
      ... emulator-5554  unauthorized transport_id:1
      ... ''')[0]["properties"]["model"]
      'Pixel_7'
    """
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*", "adb ")):
            continue
        serial, *fields = line.split()
        state, properties = [], {}
        for field in fields:
            if state and _DEVICE_PROPERTY.match(field):
                key, _, value = field.partition(":")
                properties[key] = value
            elif not properties:
                state.append(field)
        devices.append({"serial": serial, "state": " ".join(state), "properties": properties})
    return devices


def _describe(device):
    model = device["properties"].get("model")
    return f"{device['serial']} ({device['state']}{', ' + model if model else ''})"


def _run(command, step, timeout):
    """Runs `command`; returns (stdout, stderr). Raises RuntimeError naming `step` on failure."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except OSError as error:
        raise TargetUnavailableError(f"{step}: could not run {command[0]!r}: {error}") from error
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{step} timed out after {timeout} s") from error
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise RuntimeError(f"{step} failed (exit code {done.returncode}): {tail}")
    return done.stdout, done.stderr


def android_devices(adb="adb"):
    """The devices `adb devices -l` lists (see `parse_adb_devices`)."""
    stdout, _ = _run([find_adb(adb), "devices", "-l"], "adb devices -l", _ADB_TIMEOUT_S)
    return parse_adb_devices(stdout)


def select_device(devices, serial=None):
    """The device to use: the one with `serial`, else the only ready one.

    Raises:
      TargetUnavailableError: no (ready) device, or `serial` is not attached.
      ValueError: several ready devices and no `serial`.
    """
    listing = ", ".join(_describe(d) for d in devices) or "none"
    if serial is not None:
        matches = [d for d in devices if d["serial"] == serial]
        if not matches:
            raise TargetUnavailableError(
                f"No Android device with serial={serial!r} is attached. Attached: {listing}."
            )
        device = matches[0]
    else:
        ready = [d for d in devices if d["state"] == "device"]
        if len(ready) > 1:
            raise ValueError(
                "serial must name one device when several Android devices are attached. "
                f"Received: serial=None; attached: {listing}"
            )
        if not ready:
            if not devices:
                raise TargetUnavailableError(
                    f"No Android device is attached (`adb devices -l` lists none). {_USB_DEBUGGING}"
                )
            device = devices[0]
        else:
            device = ready[0]
    if device["state"] != "device":
        hint = {
            "unauthorized": "unlock the phone and accept the 'Allow USB debugging?' prompt",
            "offline": "reconnect the cable, or run `adb kill-server` and retry",
        }.get(device["state"], _USB_DEBUGGING)
        raise TargetUnavailableError(
            f"Android device {_describe(device)} is not ready: {hint}. Attached: {listing}."
        )
    return device


def _stats(line):
    """`count=50 first=1 curr=2 min=1 max=3 avg=1.5 std=0` -> {"count": 50.0, ...}."""
    start = line.index("count=")
    return {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUMBER})", line[start:])}


def parse_benchmark_model_output(text):
    """Parses the report of TFLite's `benchmark_model` tool (times in µs, memory in MB).

    Returns:
      dict with `init_us`, `first_inference_us`, `warmup_avg_us`, `inference_avg_us` (from
      the `Inference timings in us:` line), `warmup` and `inference` (the `count= first=
      curr= min= max= avg= std=` statistics of the warm-up and timed runs, as dicts),
      `model_size_mb`, `init_memory_mb`, `overall_memory_mb` and `peak_memory_mb`. A value
      the output does not hold is None.

    Raises:
      ValueError: `text` holds no inference timings.

    Example:
      >>> out = parse_benchmark_model_output(
      ...     "count=5 first=90 curr=41 min=40 max=90 avg=50.2 std=20\\n"
      ...     "count=50 first=42 curr=40 min=38 max=57 avg=40.86 std=3\\n"
      ...     "Inference timings in us: Init: 2345, First inference: 90, "
      ...     "Warmup (avg): 50.2, Inference (avg): 40.86")
      >>> out["inference_avg_us"], out["inference"]["count"], out["warmup"]["max"]
      (40.86, 50.0, 90.0)
    """
    result = dict.fromkeys(
        (
            "init_us",
            "first_inference_us",
            "warmup_avg_us",
            "inference_avg_us",
            "warmup",
            "inference",
            "model_size_mb",
            "init_memory_mb",
            "overall_memory_mb",
            "peak_memory_mb",
        )
    )
    timing_keys = {
        "init": "init_us",
        "first inference": "first_inference_us",
        "warmup (avg)": "warmup_avg_us",
        "inference (avg)": "inference_avg_us",
    }
    stats = []
    for line in text.splitlines():
        line = line.strip()
        if "Inference timings in us:" in line:
            timings = line.split("Inference timings in us:", 1)[1]
            for key, value in re.findall(rf"([A-Za-z][\w ()]*?)\s*:\s*({_NUMBER})", timings):
                key = key.strip(" ,").lower()
                if key in timing_keys:
                    result[timing_keys[key]] = float(value)
        elif re.search(r"\bcount=\d", line):
            stats.append(_stats(line))
        elif match := re.search(rf"input model file size \(MB\):\s*({_NUMBER})", line):
            result["model_size_mb"] = float(match[1])
        elif "Memory footprint delta" in line:
            for key, value in re.findall(rf"(init|overall)=({_NUMBER})", line):
                result[f"{key}_memory_mb"] = float(value)
        elif match := re.search(rf"peak memory footprint \(MB\)[^:]*:\s*({_NUMBER})", line):
            peak = float(match[1])
            result["peak_memory_mb"] = peak if peak >= 0 else None  # -1: not measured
    if stats:
        # The tool prints the warm-up statistics first, then those of the timed runs.
        result["inference"] = stats[-1]
        result["warmup"] = stats[0] if len(stats) > 1 else None
    if result["inference_avg_us"] is None:
        if result["inference"] is None:
            raise ValueError(
                "text must be the output of TFLite's benchmark_model. Received: text without "
                "an 'Inference timings in us:' line or run statistics"
            )
        result["inference_avg_us"] = result["inference"].get("avg")
    return result


def benchmark_model_flags(graph, threads, runs, warmup, use_xnnpack, use_gpu, use_nnapi):
    """Command-line flags of `benchmark_model` for one measurement."""
    flags = [
        f"--graph={graph}",
        f"--num_threads={threads}",
        f"--num_runs={runs}",
        f"--warmup_runs={warmup}",
        # Exactly `runs` timed runs: no minimum duration stretching the run count.
        "--min_secs=0",
        "--warmup_min_secs=0",
        "--report_peak_memory_footprint=true",
    ]
    if use_xnnpack is not None:
        flags.append(f"--use_xnnpack={str(use_xnnpack).lower()}")
    if use_gpu:
        flags.append("--use_gpu=true")
    if use_nnapi:
        flags.append("--use_nnapi=true")
    return flags


def _check_arguments(benchmark_binary, serial, use_xnnpack, use_gpu, use_nnapi):
    if benchmark_binary is None:
        raise ValueError(
            "benchmark_binary is required for target='android': the path of TFLite's "
            f"benchmark_model built for the phone. {_GET_BENCHMARK_MODEL} "
            "Received: benchmark_binary=None"
        )
    if not isinstance(benchmark_binary, (str, os.PathLike)):
        raise ValueError(
            "benchmark_binary must be the path of a benchmark_model executable. Received: "
            f"benchmark_binary={benchmark_binary!r}"
        )
    if not os.path.isfile(benchmark_binary):
        raise FileNotFoundError(
            "benchmark_binary must be the path of a benchmark_model executable. Received: "
            f"benchmark_binary={os.fspath(benchmark_binary)!r} (no such file). "
            f"{_GET_BENCHMARK_MODEL}"
        )
    if serial is not None and (not isinstance(serial, str) or not serial):
        raise ValueError(
            "serial must be None or a device serial from `adb devices -l`. Received: "
            f"serial={serial!r}"
        )
    if use_xnnpack is not None and not isinstance(use_xnnpack, bool):
        raise ValueError(
            "use_xnnpack must be None (the tool's default), True or False. Received: "
            f"use_xnnpack={use_xnnpack!r}"
        )
    for name, value in (("use_gpu", use_gpu), ("use_nnapi", use_nnapi)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")
    if use_gpu and use_nnapi:
        raise ValueError(
            "use_gpu and use_nnapi cannot both be True: benchmark one delegate at a time. "
            "Received: use_gpu=True, use_nnapi=True"
        )


def benchmark_android(
    tfl,
    benchmark_binary=None,
    serial=None,
    threads=1,
    runs=200,
    warmup=20,
    use_xnnpack=None,
    use_gpu=False,
    use_nnapi=False,
    adb="adb",
):
    """Runs TFLite's `benchmark_model` on an Android device attached over adb.

    Pushes the model and `benchmark_binary` to /data/local/tmp under unique names, makes the
    binary executable, runs it and removes both files afterwards (also on failure).

    Args:
      tfl: .tflite bytes.
      benchmark_binary: path of `benchmark_model` built for the phone (required; see the
        module docstring for where to get it).
      serial: device serial (`adb devices -l`); None picks the only attached device.
      threads: `--num_threads`. runs: `--num_runs` (timed). warmup: `--warmup_runs`.
      use_xnnpack: None keeps the tool's default (XNNPACK on in current builds); True/False
        passes `--use_xnnpack`.
      use_gpu / use_nnapi: run with the GPU / NNAPI delegate (not both).
      adb: the adb executable (name on PATH or path); $ADB is used for the default name.

    Returns:
      dict with `target`, `runs` (timed runs the tool reports), `threads`, `mean_us`, and
      `median_us` / `p90_us` as None (benchmark_model prints neither), plus, when the tool
      prints them, `std_us`, `min_us`, `max_us`, `init_us`, `first_inference_us`,
      `warmup_mean_us`, `peak_memory_mb`; `device` (serial) and `device_model`.

    Raises:
      TargetUnavailableError: no adb, or no ready device.
      ValueError / FileNotFoundError: a bad argument. RuntimeError: an adb step failed.
    """
    check_model_bytes(tfl)
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        check_count(name, value, low)
    _check_arguments(benchmark_binary, serial, use_xnnpack, use_gpu, use_nnapi)
    adb_path = find_adb(adb)
    stdout, _ = _run([adb_path, "devices", "-l"], "adb devices -l", _ADB_TIMEOUT_S)
    device = select_device(parse_adb_devices(stdout), serial)

    base = [adb_path, "-s", device["serial"]]
    token = uuid.uuid4().hex[:12]
    remote_model = f"{REMOTE_DIR}/tfquant_{token}.tflite"
    remote_binary = f"{REMOTE_DIR}/tfquant_{token}_benchmark_model"
    flags = benchmark_model_flags(
        remote_model, threads, runs, warmup, use_xnnpack, use_gpu, use_nnapi
    )
    with tempfile.TemporaryDirectory(prefix="tfquant_android_") as directory:
        local_model = os.path.join(directory, "model.tflite")
        with open(local_model, "wb") as stream:
            stream.write(bytes(tfl))
        try:
            _run(base + ["push", local_model, remote_model], "adb push (model)", _PUSH_TIMEOUT_S)
            _run(
                base + ["push", os.fspath(benchmark_binary), remote_binary],
                "adb push (benchmark_model)",
                _PUSH_TIMEOUT_S,
            )
            _run(base + ["shell", "chmod", "+x", remote_binary], "adb shell chmod", _ADB_TIMEOUT_S)
            stdout, stderr = _run(
                base + ["shell", remote_binary, *flags], "benchmark_model", _RUN_TIMEOUT_S
            )
        finally:
            try:
                _run(
                    base + ["shell", "rm", "-f", remote_model, remote_binary],
                    "adb shell rm",
                    _ADB_TIMEOUT_S,
                )
            except (RuntimeError, OSError) as error:
                warnings.warn(
                    f"Could not remove {remote_model} and {remote_binary} from the device: {error}",
                    stacklevel=2,
                )
    output = f"{stdout}\n{stderr}"
    try:
        parsed = parse_benchmark_model_output(output)
    except ValueError as error:
        raise RuntimeError(
            f"benchmark_model printed no inference timings; its output ended with: "
            f"{output.strip()[-2000:]}"
        ) from error
    stats = parsed["inference"] or {}
    result = {
        "target": "android",
        "runs": int(stats.get("count", runs)),
        "threads": threads,
        "median_us": None,
        "p90_us": None,
        "mean_us": parsed["inference_avg_us"],
    }
    optional = {
        "std_us": stats.get("std"),
        "min_us": stats.get("min"),
        "max_us": stats.get("max"),
        "init_us": parsed["init_us"],
        "first_inference_us": parsed["first_inference_us"],
        "warmup_mean_us": parsed["warmup_avg_us"],
        "peak_memory_mb": parsed["peak_memory_mb"],
    }
    result |= {key: value for key, value in optional.items() if value is not None}
    result["device"] = device["serial"]
    result["device_model"] = device["properties"].get("model")
    return result
