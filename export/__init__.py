"""tfquant.export: integer TFLite export whose kernels are exactly the trained values, the
exactness check, and latency measurement.
"""

from tfquant.export.benchmark import benchmark
from tfquant.export.tflite import ExportCheckError, TfliteReport, check_tflite, to_tflite

__all__ = ["to_tflite", "check_tflite", "TfliteReport", "ExportCheckError", "benchmark"]
