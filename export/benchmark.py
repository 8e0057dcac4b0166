"""Latency of a TFLite model. Host: the LiteRT interpreter, timed per invoke."""

import time

import numpy as np

_TARGETS = ("host",)


def benchmark(tfl, target="host", runs=200, warmup=20, threads=1):
    """Measures inference latency of `tfl` on `target`.

    Args:
      tfl: .tflite bytes.
      target: "host" (the LiteRT Python interpreter on this machine).
      runs: timed invocations (>= 1). warmup: untimed invocations first (>= 0).
      threads: interpreter threads (>= 1).

    Returns:
      dict with `target`, `runs`, `threads`, `median_us`, `p90_us`, `mean_us`.
    """
    if target not in _TARGETS:
        raise ValueError(f"target must be one of {_TARGETS}. Received: target={target!r}")
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={value!r}")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tfl), num_threads=threads)
    interpreter.allocate_tensors()
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
        "target": target,
        "runs": runs,
        "threads": threads,
        "median_us": float(np.median(timings)),
        "p90_us": float(np.percentile(timings, 90)),
        "mean_us": float(timings.mean()),
    }
