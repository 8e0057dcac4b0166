"""Microcontrollers: runs an exported model in the TensorFlow Lite Micro interpreter (the
`tflite-micro` Python package, its reference kernels) and reports the tensor arena it needs,
the figure that decides whether a model fits a microcontroller's RAM.
"""

import contextlib
import ctypes
import dataclasses
import os
import re
import sys
import tempfile

import numpy as np

from tfquant.export.benchmark import TargetUnavailableError

_INSTALL = (
    "TFLite Micro's Python interpreter is not installed: `pip install tflite-micro` (Linux "
    "x86-64 wheels; tfquant's test extras pin one) gives it. Without it, the arena size and a "
    "run on the reference kernels cannot be measured."
)
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")


@dataclasses.dataclass
class MicroReport:
    """What `micro_report` measured in the TFLite Micro interpreter.

    Example:
      >>> report = MicroReport(arena_bytes=5488, head_bytes=3072, tail_bytes=2416)
      >>> MicroReport(**report.get_config()) == report
      True
    """

    arena_bytes: int  # tensor arena the model needs (head + tail)
    head_bytes: int  # activations (reused between ops)
    tail_bytes: int  # persistent: tensor structs, quantization data, kernel buffers
    samples: int = 0
    agreement: float | None = None  # same argmax as the LiteRT interpreter
    max_output_difference: int | None = None  # in int8 output steps, vs LiteRT

    def get_config(self):
        return dataclasses.asdict(self)


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as error:
        raise TargetUnavailableError(_INSTALL) from error
    return runtime


@contextlib.contextmanager
def _captured_output(sink):
    """Captures what C/C++ code writes to file descriptors 1 and 2 (TFLM's allocation report
    goes through its debug log)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as temporary:
        for fd in saved:
            os.dup2(temporary.fileno(), fd)
        try:
            yield
        finally:
            libc.fflush(None)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            temporary.seek(0)
            sink.append(temporary.read().decode("utf-8", "replace"))


def parse_allocations(text):
    """Arena figures from TFLM's `print_allocations` output: `(total, head, tail)` bytes.

    Example:
      >>> parse_allocations("[RecordingMicroAllocator] Arena allocation total 5488 bytes\\n"
      ...     "[RecordingMicroAllocator] Arena allocation head 3072 bytes\\n"
      ...     "[RecordingMicroAllocator] Arena allocation tail 2416 bytes")
      (5488, 3072, 2416)
    """
    found = [pattern.search(text) for pattern in (_TOTAL, _HEAD, _TAIL)]
    if not all(found):
        raise ValueError(
            "TFLM's allocation report has no 'Arena allocation total/head/tail' lines. "
            f"Received: {text[:300]!r}"
        )
    return tuple(int(match.group(1)) for match in found)


def micro_report(tfl, data=None, arena_size=None):
    """Loads `tfl` in TFLite Micro, measures its arena and (with `data`) runs it.

    Args:
      tfl: .tflite bytes of a full-integer model (int8 input and output).
      data: optional float inputs (N, *input_shape); each sample is run in TFLM and in the
        LiteRT interpreter and the outputs are compared.
      arena_size: bytes to give the interpreter, >= 1024 (default: 16 MiB + the file size,
        enough for any model tfquant exports; the report says how much it really used).

    Returns:
      `MicroReport`.

    Raises:
      TargetUnavailableError: the `tflite-micro` package is not installed.
      InvalidTfliteError (a ValueError): `tfl` is not a valid TFLite model.
      ValueError: the model does not load in TFLM (e.g. float or unsupported ops), or
        `data` is given for a TFLM-compressed model (`to_micro`), which LiteRT cannot run.
    """
    if not isinstance(tfl, (bytes, bytearray)):
        raise TypeError(f"tfl must be the bytes of a .tflite model. Received: {type(tfl).__name__}")
    if arena_size is not None and (
        isinstance(arena_size, bool) or not isinstance(arena_size, int) or arena_size < 1024
    ):
        # Below about 1 KiB TFLM's allocator crashes the process instead of failing cleanly.
        raise ValueError(
            f"arena_size must be None or an integer >= 1024. Received: arena_size={arena_size!r}"
        )
    from tfquant.export.tflite import load_interpreter

    # TFLM trusts its input: `validate` and LiteRT's flatbuffers Verifier see the file first.
    load_interpreter(tfl, allocate=False)
    interpreter, report = load_micro(tfl, arena_size)
    if data is None:
        return report

    from tfquant.export.micro_compress import has_decode_ops
    from tfquant.export.tflite import run_tflite

    if has_decode_ops(tfl):
        raise ValueError(
            "data cannot be checked against LiteRT for a TFLM-compressed model: its DECODE "
            "operators run only in TFLite Micro. Pass data=None for the arena report; "
            "`to_micro` already proves the compressed model's outputs identical to the int8 "
            "model's, which micro_report(int8_tfl, data) compares with LiteRT. Received: data "
            f"of shape {np.shape(data)} with a model that has DECODE operators"
        )
    micro = run_micro(interpreter, data)
    output = interpreter.get_output_details(0)
    out_scale = float(output["quantization_parameters"]["scales"][0])
    out_zero = int(output["quantization_parameters"]["zero_points"][0])
    reference = np.round(run_tflite(tfl, data).reshape(len(data), -1) / out_scale + out_zero)
    report.samples = len(data)
    report.agreement = float(np.mean(micro.argmax(-1) == reference.argmax(-1)))
    report.max_output_difference = int(np.max(np.abs(micro - reference)))
    return report


def load_micro(tfl, arena_size=None, decode_buffer=0):
    """`(interpreter, MicroReport)`: `tfl` (already validated by the caller) loaded in TFLite
    Micro with `arena_size` bytes (default: 16 MiB + the file size), and the arena it used.
    `decode_buffer` > 0 gives TFLM that many bytes of separate memory for what DECODE
    operators expand (its `alt_decompression_memory_size`), outside the arena.

    Raises:
      TargetUnavailableError: the `tflite-micro` package is not installed.
      ValueError: the model does not load in TFLM.
    """
    runtime = _runtime()
    arena_size = arena_size or (16 << 20) + len(tfl)
    text = []
    try:
        interpreter = runtime.Interpreter.from_bytes(
            bytes(tfl),
            arena_size=int(arena_size),
            alt_decompression_memory_size=int(decode_buffer),
        )
        with _captured_output(text):
            interpreter.print_allocations()
    except RuntimeError as error:
        raise ValueError(f"tfl does not load in TFLite Micro: {error}") from error
    total, head, tail = parse_allocations(text[0])
    return interpreter, MicroReport(arena_bytes=total, head_bytes=head, tail_bytes=tail)


def run_micro(interpreter, data):
    """The int8 outputs (N, outputs) of a one-input TFLM `interpreter` (from `load_micro`) on
    float `data` (N, *input_shape), quantized to its int8 input one sample at a time.

    Raises:
      ValueError: the model's input is not int8, or `data` does not fit it.
    """
    from tfquant.export.tflite import check_input_data

    detail = interpreter.get_input_details(0)
    if np.dtype(detail["dtype"]) != np.int8:
        raise ValueError(
            "TFLite Micro runs int8-input models here (to_tflite's default int8_io=True). "
            f"Received: input dtype {np.dtype(detail['dtype']).name}"
        )
    data = check_input_data(data, tuple(detail["shape"][1:]), "data", "tfl's input")
    scale = float(detail["quantization_parameters"]["scales"][0])
    zero = int(detail["quantization_parameters"]["zero_points"][0])
    outputs = []
    for sample in data:
        codes = np.clip(np.round(sample[None] / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_input(codes.reshape(detail["shape"]), 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0).reshape(-1).astype(np.int32))
    return np.stack(outputs)
