"""tfquant.export: integer TFLite export whose kernels are exactly the trained values, the
exactness check, latency measurement (host, Android over adb, Edge TPU) and TFLite Micro's
arena, and TFLite Micro models that store each kernel as its codebook indices.
"""

from tfquant.export.android import android_devices, parse_benchmark_model_output
from tfquant.export.benchmark import TargetUnavailableError, benchmark
from tfquant.export.edgetpu import (
    EDGETPU_OPS,
    EdgeTpuReport,
    edgetpu_report,
    parse_edgetpu_compiler_output,
)
from tfquant.export.flatbuffer import InvalidTfliteError
from tfquant.export.micro import MicroReport, micro_report
from tfquant.export.micro_compress import (
    MicroCompressionError,
    MicroCompressionReport,
    to_micro,
)
from tfquant.export.tflite import ExportCheckError, TfliteReport, check_tflite, to_tflite

__all__ = [
    "to_tflite",
    "check_tflite",
    "TfliteReport",
    "ExportCheckError",
    "InvalidTfliteError",
    "benchmark",
    "TargetUnavailableError",
    "edgetpu_report",
    "EdgeTpuReport",
    "EDGETPU_OPS",
    "parse_edgetpu_compiler_output",
    "parse_benchmark_model_output",
    "android_devices",
    "micro_report",
    "MicroReport",
    "to_micro",
    "MicroCompressionReport",
    "MicroCompressionError",
]
