"""Latency of a TFLite model. Host: the LiteRT interpreter, timed per invoke. Android: the
TFLite `benchmark_model` tool driven over adb (`android.py`). Edge TPU: `edgetpu_compiler`,
then the LiteRT interpreter with the Edge TPU delegate (`edgetpu.py`).
"""

import time

import numpy as np

from tfquant import _quiet

TARGETS = ("host", "android", "edgetpu")

# Keyword arguments that only one target uses, with their defaults.
_TARGET_ARGUMENTS = {
    "android": {
        "serial": None,
        "benchmark_binary": None,
        "use_xnnpack": None,
        "use_gpu": False,
        "use_nnapi": False,
        "adb": "adb",
    },
    "edgetpu": {"compiler": "edgetpu_compiler"},
    "host": {"tool": "interpreter"},
}
HOST_TOOLS = ("interpreter", "litert-benchmark")


class TargetUnavailableError(RuntimeError):
    """The benchmark target (a tool, a device, a runtime library) is missing on this machine.

    The message says what to install or attach.
    """


def check_count(name, value, low):
    """Raises ValueError unless `value` is an integer >= `low` (booleans are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={value!r}")


def check_model_bytes(tfl):
    if not isinstance(tfl, (bytes, bytearray, memoryview)):
        raise TypeError(f"tfl must be the bytes of a .tflite model. Received: {type(tfl).__name__}")


def time_interpreter(interpreter, runs, warmup):
    """Feeds zeros, runs `warmup` untimed then `runs` timed invocations; returns µs stats."""
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    for _ in range(warmup):
        interpreter.invoke()
    timings = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        timings[i] = (time.perf_counter_ns() - start) / 1e3
    return {
        "median_us": float(np.median(timings)),
        "p90_us": float(np.percentile(timings, 90)),
        "mean_us": float(timings.mean()),
    }


def benchmark(tfl, target="host", runs=200, warmup=20, threads=1, **target_arguments):
    """Measures inference latency of `tfl` on `target`.

    Args:
      tfl: .tflite bytes.
      target: "host" (the LiteRT Python interpreter on this machine), "android" (the TFLite
        `benchmark_model` tool on a phone attached over adb, see `android.benchmark_android`)
        or "edgetpu" (compiled with `edgetpu_compiler`, run with the Edge TPU delegate on an
        attached Coral device, see `edgetpu.benchmark_edgetpu`).
      runs: timed invocations (>= 1). warmup: untimed invocations first (>= 0).
      threads: CPU threads (>= 1).
      **target_arguments: for "android": `benchmark_binary` (required: path of a
        `benchmark_model` executable built for the phone), `serial=None`,
        `use_xnnpack=None`, `use_gpu=False`, `use_nnapi=False`, `adb="adb"`; for
        "edgetpu": `compiler="edgetpu_compiler"`; for "host": `tool="interpreter"` (the
        Python interpreter timed per invoke) or `tool="litert-benchmark"` (the ai-edge-litert
        wheel's `litert-benchmark` command on the CompiledModel API, whose figures are printed
        in 10 µs steps).

    Returns:
      dict with `target`, `runs`, `threads`, `median_us`, `p90_us`, `mean_us`. Android adds
      `std_us`, `min_us`, `max_us`, `init_us`, `peak_memory_mb` (and reports `median_us` and
      `p90_us` as None: `benchmark_model` does not print them); the Edge TPU adds
      `edgetpu_ops` and `cpu_ops` (the compiler's op split).

    Raises:
      ValueError: a bad argument, or an argument another target uses.
      TargetUnavailableError: the tool, device or runtime library of the target is missing.

    Example:
      >>> benchmark(b"", target="gpu")
      Traceback (most recent call last):
      ...
      ValueError: target must be one of ('host', 'android', 'edgetpu'). Received: target='gpu'
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}. Received: target={target!r}")
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        check_count(name, value, low)
    known = {name for arguments in _TARGET_ARGUMENTS.values() for name in arguments}
    for name, value in target_arguments.items():
        if name not in known:
            raise TypeError(
                f"benchmark() got an unexpected keyword argument {name!r}. Allowed: {sorted(known)}"
            )
        if name not in _TARGET_ARGUMENTS.get(target, {}):
            owner = next(t for t, arguments in _TARGET_ARGUMENTS.items() if name in arguments)
            if value != _TARGET_ARGUMENTS[owner][name]:
                raise ValueError(
                    f"{name} applies only to target={owner!r}. Received: {name}={value!r} "
                    f"with target={target!r}"
                )
    options = {k: v for k, v in target_arguments.items() if k in _TARGET_ARGUMENTS.get(target, {})}
    check_model_bytes(tfl)

    if target == "android":
        from tfquant.export.android import benchmark_android

        return benchmark_android(tfl, runs=runs, warmup=warmup, threads=threads, **options)
    if target == "edgetpu":
        from tfquant.export.edgetpu import benchmark_edgetpu

        return benchmark_edgetpu(tfl, runs=runs, warmup=warmup, threads=threads, **options)

    if options.get("tool", "interpreter") not in HOST_TOOLS:
        raise ValueError(f"tool must be one of {HOST_TOOLS}. Received: tool={options['tool']!r}")
    if options.get("tool") == "litert-benchmark":
        return litert_benchmark(tfl, runs=runs, warmup=warmup, threads=threads)

    from ai_edge_litert.interpreter import OpResolverType

    from tfquant.export.tflite import load_interpreter

    # The default op resolver (with XNNPACK), as a deployed model runs; its one-time notice
    # that XNNPACK is applied stays off stderr.
    with _quiet.filtered_stderr(_quiet.is_litert_chatter):
        interpreter = load_interpreter(
            tfl, num_threads=threads, experimental_op_resolver_type=OpResolverType.AUTO
        )
    return {
        "target": target,
        "tool": "interpreter",
        "runs": runs,
        "threads": threads,
    } | time_interpreter(interpreter, runs, warmup)


def litert_benchmark(tfl, runs=200, warmup=20, threads=1, command="litert-benchmark"):
    """Runs the `litert-benchmark` command of the ai-edge-litert wheel on `tfl` and reads its
    JSON result. Returns the `benchmark` dict (`tool` says which), plus `init_us`, `min_us`,
    `max_us`, `std_us`; `p90_us` is the tool's p95 (it prints no p90) and is named so."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    path = shutil.which(command) or shutil.which(
        command, path=os.path.dirname(os.path.abspath(sys.executable))
    )
    if path is None:
        raise TargetUnavailableError(
            f"{command} is not on PATH: it comes with the ai-edge-litert wheel (pip install "
            "ai-edge-litert); use tool='interpreter' otherwise."
        )
    check_model_bytes(tfl)
    with tempfile.TemporaryDirectory() as folder:
        model, result = os.path.join(folder, "model.tflite"), os.path.join(folder, "result.json")
        with open(model, "wb") as stream:
            stream.write(bytes(tfl))
        done = subprocess.run(
            [
                path,
                "--model",
                model,
                "--num_runs",
                str(runs),
                "--warmup_runs",
                str(warmup),
                "--num_threads",
                str(threads),
                "--result_json",
                result,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode or not os.path.exists(result):
            raise ValueError(f"{command} failed on the model: {done.stderr.strip()[-1000:]}")
        with open(result) as stream:
            latency = json.load(stream)["latency"]
    return {
        "target": "host",
        "tool": "litert-benchmark",
        "runs": runs,
        "threads": threads,
        "median_us": latency["median_ms"] * 1e3,
        "p95_us": latency["p95_ms"] * 1e3,
        "mean_us": latency["avg_ms"] * 1e3,
        "min_us": latency["min_ms"] * 1e3,
        "max_us": latency["max_ms"] * 1e3,
        "std_us": latency["std_ms"] * 1e3,
        "init_us": latency["init_ms"] * 1e3,
    }
