"""Host latency of several .tflite files measured in the same run: interleaved rounds (one
`tfquant.export.benchmark` of every file per round), so that a machine busy for a while
slows every file alike, and the median over the rounds."""

import numpy as np

from tfquant import export


def interleaved_median_us(files, rounds, runs, warmup, threads=1):
    """`{key: median µs}` of `files` (`{key: .tflite bytes}`): each round times every file
    once (`runs` timed invocations after `warmup`, on `threads` threads); the median of the
    rounds' medians."""
    timings = {key: [] for key in files}
    for _ in range(rounds):
        for key, tfl in files.items():
            result = export.benchmark(tfl, runs=runs, warmup=warmup, threads=threads)
            timings[key].append(result["median_us"])
    return {key: float(np.median(values)) for key, values in timings.items()}
