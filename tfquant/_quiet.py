"""Keeps the chatter tfquant causes, and the user cannot act on, off the terminal: TensorFlow's
C++ start-up lines in tfquant's own command lines, and the TFLite converter's log lines and
"Statistics for quantized inputs" warning around tfquant's conversions.

Only inside tfquant's own calls: a program that imports tfquant keeps its warning filters,
its TF_CPP_MIN_LOG_LEVEL and everything it writes to stderr. Lines that are not known chatter
(a real converter error, a warning from the user's code) are replayed to stderr unchanged.
"""

import contextlib
import os
import re
import sys
import tempfile
import warnings

#: The converter's Python warning when a full-integer model's input statistics come from the
#: representative dataset (always so in tfquant: nothing to act on).
_CONVERTER_WARNING = r"Statistics for quantized inputs were expected, but not specified"
# The converter's calibration runs TF's own tf.lite.Interpreter, which warns that it is
# deprecated: about TensorFlow's internals, nothing the user's code does.
_INTERPRETER_WARNING = r"\s*Warning: tf\.lite\.Interpreter is deprecated"

# absl / TF C++ log lines: "I0000 00:00:1796384081.517249    1596 port.cc:153] message".
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] (.*)$")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"

# Start-up: oneDNN notice, CUDA lookups on a machine without a GPU, CPU-instruction notice.
_STARTUP_SOURCES = ("port.cc", "cudart_stub.cc", "cpu_feature_guard.cc", "cuda_executor.cc")
_STARTUP_TEXT = (
    "failed call to cuInit",
    "Could not find cuda drivers",
    "To enable the following instructions:",
    "Unable to register cu",  # cuDNN / cuFFT / cuBLAS factory already registered
)
# Conversion: the converter's progress report and the options it ignores for Keras models.
_CONVERTER_TEXT = (
    "fully_quantize: ",
    "Ignored output_format.",
    "Ignored drop_control_dependency.",
    "Skipping runtime version metadata in the model.",
)


def is_startup_chatter(line):
    """True for TensorFlow's import-time lines nobody can act on (oneDNN, CUDA lookup, CPU
    instructions); errors from anywhere else are not chatter."""
    line = line.rstrip("\n")
    if line.startswith(_ABSL_PREAMBLE) or any(text in line for text in _STARTUP_TEXT):
        return True
    match = _LOG_LINE.match(line)
    return bool(match) and match.group(2) in _STARTUP_SOURCES


# XLA's one-time notices: the service and its host "StreamExecutor", the first compiled
# cluster. tfquant's nearest-center search is XLA-compiled (quantizers/base.py).
_XLA_SOURCES = ("service.cc", "device_compiler.h")


def is_xla_chatter(line):
    """True for XLA's once-per-process informational lines (service start, first cluster)."""
    match = _LOG_LINE.match(line.rstrip("\n"))
    return bool(match) and match.group(1) == "I" and match.group(2) in _XLA_SOURCES


_xla_warmed_up = False


def warm_up_xla(compiled, *arguments):
    """Runs the XLA-compiled function `compiled` once on `arguments` with XLA's one-time
    informational lines kept off stderr (once per process): without it they appear in the
    middle of the user's first `fit`, which compiles tfquant's search. Other lines pass."""
    global _xla_warmed_up
    if _xla_warmed_up:
        return
    with filtered_stderr(is_xla_chatter):
        compiled(*arguments)
    _xla_warmed_up = True


#: LiteRT's notice when its default XNNPACK delegate is applied (once per process).
_XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def is_litert_chatter(line):
    """True for LiteRT's informational notice that it applied XNNPACK (as the user asked by
    timing a deployed model's default resolver): nothing to act on."""
    return line.strip() == _XNNPACK_NOTICE


def is_converter_chatter(line):
    """True for the TFLite converter's informational lines and the known warnings about
    options it ignores; its other warnings and every error are not chatter."""
    line = line.rstrip("\n")
    if is_startup_chatter(line) or any(text in line for text in _CONVERTER_TEXT):
        return True
    match = _LOG_LINE.match(line)
    return bool(match) and match.group(1) == "I"


def launched_as_cli():
    """True when this process is one of tfquant's command lines (`python -m tfquant...`),
    whose output tfquant owns; False inside a user's program."""
    argv = list(getattr(sys, "orig_argv", ()))[1:]  # the interpreter's own options first
    while argv:
        arg = argv.pop(0)
        if arg in ("-W", "-X"):  # options that take a value
            argv = argv[1:]
        elif arg == "-m" or (arg.startswith("-m") and len(arg) > 2):
            module = arg[2:] or (argv[0] if argv else "")
            return module == "tfquant" or module.startswith("tfquant.")
        elif arg == "-" or arg.startswith("-c") or not arg.startswith("-"):
            return False  # stdin, -c code or a script: the user's program
    return False


@contextlib.contextmanager
def startup():
    """Wraps tfquant's `import tensorflow`. In tfquant's own command lines (see
    `launched_as_cli`) it defaults TF_CPP_MIN_LOG_LEVEL to 2 (a value the user set is kept)
    and filters the C++ start-up lines out of stderr; in a user's program it does nothing.
    Yields whether it is active.
    """
    if not launched_as_cli():
        yield False
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr(is_startup_chatter):
        yield True


@contextlib.contextmanager
def converter():
    """Around `TFLiteConverter.convert()`: hides the converter's "Statistics for quantized
    inputs" UserWarning, the deprecation UserWarning of the interpreter its calibration
    uses, and its log lines; other warnings and stderr lines still reach the
    user (the lines once the conversion has finished)."""
    with warnings.catch_warnings():
        for message in (_CONVERTER_WARNING, _INTERPRETER_WARNING):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        with filtered_stderr(is_converter_chatter):
            yield


def convert(tflite_converter):
    """`tflite_converter.convert()` inside `converter()`: the .tflite flatbuffer as bytes."""
    with converter():
        return tflite_converter.convert()


@contextlib.contextmanager
def filtered_stderr(is_chatter):
    """Sends file descriptor 2 (C++ logging as well as Python's sys.stderr) to a temporary
    file for the block, then writes every captured line for which `is_chatter(line)` is False
    to stderr, in order; also when the block raises.

    The descriptor is process-wide: other threads' stderr output during the block is held
    back and replayed (filtered) with it. Where there is no descriptor 2 to redirect, the
    block runs unfiltered.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_chatter(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _OwnRetracingFilter:
    """Drops TensorFlow's "triggered tf.function retracing" warning for the functions named:
    tfquant's XLA level search traces once per kernel shape by design (a model has several),
    which is not the mistake the warning is about. Other functions' warnings pass."""

    def __init__(self, names):
        self.names = tuple(names)

    def filter(self, record):
        message = record.getMessage()
        return not (
            "triggered tf.function retracing" in message
            and any(f"<function {name} at" in message for name in self.names)
        )


def hide_retracing_warnings(*names):
    """Keeps the retracing warning of tfquant's own per-shape tf.functions `names` off the
    `tensorflow` logger (once per process)."""
    import logging

    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _OwnRetracingFilter) for f in logger.filters):
        logger.addFilter(_OwnRetracingFilter(names))
