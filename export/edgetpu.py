"""Edge TPU compatibility and latency: a static check of a .tflite against the Edge TPU's model
requirements (always runs), `edgetpu_compiler` when it is installed (which ops it maps), and
latency through the Edge TPU delegate on an attached Coral device.
"""

import ctypes
import dataclasses
import os
import platform
import re
import shutil
import subprocess
import tempfile

import numpy as np

from tfquant.export.benchmark import (
    TargetUnavailableError,
    check_count,
    check_model_bytes,
    time_interpreter,
)

# Operations the Edge TPU compiler can map, as TFLite builtin names. Source: Coral, "TensorFlow
# models on the Edge TPU" (coral.ai/docs/edgetpu/models-intro/), table "Supported operations",
# written from memory of that page (compiler 16) and checked against the same table copied in
# Axis' ARTPEC-7 (an Edge TPU SoC) "supported ops" page. Not in the table, so reported as
# unsupported here: DEQUANTIZE, GATHER, HARD_SWISH, LEAKY_RELU, BATCH_TO_SPACE_ND,
# SPACE_TO_BATCH_ND, UNPACK, EQUAL, NOT_EQUAL, LOG. Each entry has limits the table lists (no
# fused activation on pooling, MEAN/PAD only on x/y, ...): the compiler has the last word, so
# run it when you can. LSTM is unidirectional only (TFLite: UNIDIRECTIONAL_SEQUENCE_LSTM).
EDGETPU_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
# 8-bit data (int8, or uint8 in older models); int32 for biases and shape/axis operands.
_EDGETPU_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32))
_MAX_NON_TRIVIAL_DIMS = 3  # "only the 3 innermost dimensions may have a size greater than 1"
_COMPILE_TIMEOUT_S = 600
_EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib"}.get(
    platform.system(), "edgetpu.dll"
)
_STATIC_SHAPES = (
    "Dynamic shapes (-1 in a tensor's shape signature; the converter leaves the batch "
    "dimension of a Keras model dynamic): the Edge TPU compiler needs static shapes. Export "
    "with a fixed batch: tfquant.export.to_tflite(qmodel, data, batch_size=1)."
)
_INSTALL_COMPILER = (
    "The Edge TPU mapping (which ops run on the Edge TPU and which fall back to the CPU) and "
    "on-device latency need edgetpu_compiler: install the Debian/Ubuntu package "
    "`edgetpu-compiler` from Coral's apt repository (x86-64 Linux only; "
    "https://coral.ai/docs/edgetpu/compiler/) or pass compiler='path/to/edgetpu_compiler'. "
    "The static check needs nothing."
)


@dataclasses.dataclass
class OpCheck:
    """One op of the model against the Edge TPU requirements."""

    index: int
    name: str
    ok: bool
    reasons: list


@dataclasses.dataclass
class CompilerOp:
    """One row of `edgetpu_compiler -s`'s table: `count` ops `operator` with one `status`."""

    operator: str
    count: int
    status: str

    @property
    def mapped(self):
        return self.status.startswith("Mapped to Edge TPU")


@dataclasses.dataclass
class EdgeTpuReport:
    """What `edgetpu_report` found. `ok`: every op passes the static check."""

    ops: list
    compiler: str | None = None  # path of the compiler that ran, None when it did not run
    compiler_version: str | None = None
    compiler_output: str | None = None
    compiler_ops: list = dataclasses.field(default_factory=list)
    edgetpu_ops: int | None = None
    cpu_ops: int | None = None
    compiled_model: bytes | None = None
    note: str = ""

    @property
    def ok(self):
        return all(op.ok for op in self.ops)

    def failures(self):
        """One line per failing op: `#index NAME: reason; reason`."""
        return [f"#{op.index} {op.name}: {'; '.join(op.reasons)}" for op in self.ops if not op.ok]

    def format(self):
        """The report as a table (what `print(report)` shows)."""
        passed = sum(op.ok for op in self.ops)
        lines = [f"Edge TPU static check: {passed} of {len(self.ops)} ops compatible"]
        lines += [f"{'#':>4}  {'op':<24} {'ok':<4} reasons"]
        for op in self.ops:
            reasons = "; ".join(op.reasons)
            lines.append(f"{op.index:>4}  {op.name:<24} {'yes' if op.ok else 'no':<4} {reasons}")
        if any(r.startswith("dynamic shape") for op in self.ops for r in op.reasons):
            lines.append(_STATIC_SHAPES)
        if self.compiler_output is not None:
            lines.append(
                f"edgetpu_compiler {self.compiler_version or '(version unknown)'}: "
                f"{self.edgetpu_ops} ops on the Edge TPU, {self.cpu_ops} on the CPU"
            )
            lines += [f"  {r.operator:<24} {r.count:>4}  {r.status}" for r in self.compiler_ops]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    __str__ = format


def _short(name):
    return name.split(";")[0]


def check_ops(ops, tensors, graph_inputs=()):
    """The static check on LiteRT's op and tensor details (`_get_ops_details()`,
    `get_tensor_details()` by index, input tensor indices). Returns a list of `OpCheck`.

    Activation tensors (model inputs and op outputs) must have static shapes (no -1 in
    `shape_signature`, which is how a dynamic batch shows) and at most 3 dimensions larger
    than 1; every tensor must be int8/uint8 (int32 for biases and shapes); every op must be
    in `EDGETPU_OPS`.
    """
    produced = {int(i) for op in ops for i in op["outputs"]} | {int(i) for i in graph_inputs}
    checks = []
    for op in ops:
        name = op["op_name"]
        reasons = []
        if name not in EDGETPU_OPS:
            reasons.append(f"{name} is not an Edge TPU operation")
        indices = [int(i) for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        wrong_type, dynamic, too_many_dims = [], [], []
        for index in dict.fromkeys(indices):
            tensor = tensors[index]
            label = repr(_short(tensor["name"]))
            dtype = np.dtype(tensor["dtype"])
            if dtype not in _EDGETPU_TYPES:
                wrong_type.append(f"{label} {dtype.name}")
            if index not in produced:
                continue  # a constant (weights, bias, shape): fixed at compile time
            shape = [int(s) for s in tensor["shape"]]
            signature = tensor.get("shape_signature")
            signature = shape if signature is None else [int(s) for s in signature]
            if any(s < 0 for s in signature):
                dynamic.append(f"{label} {signature}")
            if sum(s > 1 for s in shape) > _MAX_NON_TRIVIAL_DIMS:
                too_many_dims.append(f"{label} {shape}")
        if wrong_type:
            reasons.append(
                f"not 8-bit integer: {', '.join(wrong_type)} (the Edge TPU computes on "
                "int8/uint8, int32 only for biases and shapes)"
            )
        if dynamic:
            reasons.append(f"dynamic shape: {', '.join(dynamic)}")
        if too_many_dims:
            reasons.append(
                f"more than {_MAX_NON_TRIVIAL_DIMS} dimensions larger than 1: "
                f"{', '.join(too_many_dims)}"
            )
        checks.append(OpCheck(int(op["index"]), name, not reasons, reasons))
    return checks


def _details(tfl):
    from tfquant.export.tflite import litert_errors, load_interpreter

    check_model_bytes(tfl)
    # No allocation: a model with dynamic shapes or custom ops is still readable.
    interpreter = load_interpreter(tfl, allocate=False)
    with litert_errors("could not be read"):
        tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
        inputs = [d["index"] for d in interpreter.get_input_details()]
        return interpreter._get_ops_details(), tensors, inputs


def parse_edgetpu_compiler_output(text):
    """Parses what `edgetpu_compiler -s` prints.

    Returns:
      dict with `version`, `succeeded` (bool), `edgetpu_ops`, `cpu_ops`, `total_ops`,
      `subgraphs` (ints or None), `ops` (list of `CompilerOp` from the Operator / Count /
      Status table) and `error` (the first ERROR / failure line, or None). When every op is
      mapped the compiler omits the "Number of operations that will run ..." lines; the split
      then comes from the table, or from the total.

    Example:
      >>> out = parse_edgetpu_compiler_output('''Edge TPU Compiler version 16.0.384591198
      ... Total number of operations: 2
      ... Operator                       Count      Status
      ...
      ... CONV_2D                        2          Mapped to Edge TPU
      ... Compilation succeeded!''')
      >>> out["version"], out["edgetpu_ops"], out["cpu_ops"], out["ops"][0].mapped
      ('16.0.384591198', 2, 0, True)
    """

    def number(pattern):
        match = re.search(pattern, text)
        return int(match[1]) if match else None

    version = re.search(r"Edge TPU Compiler version\s+(\S+)", text)
    ops, in_table = [], False
    for line in text.splitlines():
        if re.match(r"\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        row = re.match(r"\s*([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$", line)
        if in_table and row:
            ops.append(CompilerOp(row[1], int(row[2]), row[3]))
    error = re.search(r"^.*(?:ERROR|[Ff]ailed|Internal compiler error).*$", text, re.MULTILINE)
    result = {
        "version": version[1] if version else None,
        "succeeded": bool(re.search(r"Compilation succeeded|compiled successfully", text))
        and not re.search(r"Compilation failed", text),
        "edgetpu_ops": number(r"Number of operations that will run on Edge TPU:\s*(\d+)"),
        "cpu_ops": number(r"Number of operations that will run on CPU:\s*(\d+)"),
        "total_ops": number(r"Total number of operations:\s*(\d+)"),
        "subgraphs": number(r"Number of Edge TPU subgraphs:\s*(\d+)"),
        "ops": ops,
        "error": error[0].strip() if error else None,
    }
    if result["edgetpu_ops"] is None and result["succeeded"]:
        if ops:
            result["edgetpu_ops"] = sum(r.count for r in ops if r.mapped)
            result["cpu_ops"] = sum(r.count for r in ops if not r.mapped)
        elif result["total_ops"] is not None:
            result["edgetpu_ops"], result["cpu_ops"] = result["total_ops"], 0
    return result


def _find_compiler(compiler):
    if not isinstance(compiler, (str, os.PathLike)) or not os.fspath(compiler):
        raise ValueError(
            "compiler must be None or the name or path of edgetpu_compiler. Received: "
            f"compiler={compiler!r}"
        )
    return shutil.which(os.fspath(compiler))


def _compile(tfl, compiler_path, report):
    with tempfile.TemporaryDirectory(prefix="tfquant_edgetpu_") as directory:
        model = os.path.join(directory, "model.tflite")
        out_dir = os.path.join(directory, "out")
        os.mkdir(out_dir)
        with open(model, "wb") as stream:
            stream.write(bytes(tfl))
        command = [compiler_path, "-s", "-o", out_dir, model]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=_COMPILE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as error:
            message = f"edgetpu_compiler timed out after {_COMPILE_TIMEOUT_S} s"
            raise RuntimeError(message) from error
        output = done.stdout + done.stderr
        parsed = parse_edgetpu_compiler_output(output)
        report.compiler = compiler_path
        report.compiler_output = output
        report.compiler_version = parsed["version"]
        report.compiler_ops = parsed["ops"]
        report.edgetpu_ops, report.cpu_ops = parsed["edgetpu_ops"], parsed["cpu_ops"]
        compiled = os.path.join(out_dir, "model_edgetpu.tflite")
        if done.returncode == 0 and os.path.isfile(compiled):
            with open(compiled, "rb") as stream:
                report.compiled_model = stream.read()
        else:
            detail = parsed["error"] or output.strip()[-500:] or "no output"
            report.note = (
                f"edgetpu_compiler failed (exit code {done.returncode}) or wrote no "
                f"model_edgetpu.tflite: {detail}"
            )


def edgetpu_report(tfl, compiler="edgetpu_compiler"):
    """Checks `tfl` against the Edge TPU's requirements and, when `compiler` is installed,
    compiles it for the Edge TPU.

    The static check always runs, per op: every tensor 8-bit integer (int32 for biases and
    shapes), static shapes (batch 1, no -1 in the shape signature), at most 3 dimensions
    larger than 1 per activation tensor, and the op in the Edge TPU's supported list
    (`EDGETPU_OPS`). With `edgetpu_compiler` on PATH (or `compiler` a path) it runs
    `edgetpu_compiler -s -o OUT model.tflite` and adds its verdict: ops on the Edge TPU / on
    the CPU, its per-operator table and the compiled model bytes.

    Args:
      tfl: .tflite bytes (e.g. from `to_tflite`).
      compiler: name or path of edgetpu_compiler; None runs only the static check.

    Returns:
      `EdgeTpuReport` (`print(report)` shows a table; `report.ok` is the static verdict;
      `report.compiled_model` the Edge TPU model when the compiler ran).
    """
    ops, tensors, inputs = _details(tfl)
    report = EdgeTpuReport(ops=check_ops(ops, tensors, inputs))
    if compiler is None:
        report.note = "edgetpu_compiler not run (compiler=None). " + _INSTALL_COMPILER
        return report
    compiler_path = _find_compiler(compiler)
    if compiler_path is None:
        report.note = f"edgetpu_compiler not found ({os.fspath(compiler)!r}). {_INSTALL_COMPILER}"
        return report
    _compile(tfl, compiler_path, report)
    return report


def benchmark_edgetpu(tfl, runs=200, warmup=20, threads=1, compiler="edgetpu_compiler"):
    """Compiles `tfl` with edgetpu_compiler and times it with the Edge TPU delegate.

    Returns:
      dict with `target`, `runs`, `threads`, `median_us`, `p90_us`, `mean_us`, and the
      compiler's `edgetpu_ops` / `cpu_ops`.

    Raises:
      TargetUnavailableError: no edgetpu_compiler, or no Edge TPU runtime / device.
      RuntimeError: the compiler failed.
    """
    check_model_bytes(tfl)
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        check_count(name, value, low)
    compiler_path = _find_compiler(compiler)
    if compiler_path is None:
        raise TargetUnavailableError(
            f"edgetpu_compiler not found ({os.fspath(compiler)!r}). {_INSTALL_COMPILER} "
            "edgetpu_report(tfl) gives the static compatibility check without it."
        )
    report = edgetpu_report(tfl, compiler=compiler_path)
    if report.compiled_model is None:
        raise RuntimeError(f"Could not compile the model for the Edge TPU: {report.note}")

    from ai_edge_litert.interpreter import Interpreter, load_delegate

    try:
        # Loading the library first: a failed load_delegate leaves a half-built Delegate
        # whose __del__ raises.
        ctypes.CDLL(_EDGETPU_LIBRARY)
        delegate = load_delegate(_EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as error:
        raise TargetUnavailableError(
            f"The Edge TPU runtime {_EDGETPU_LIBRARY} could not be loaded or found no device "
            f"({error}). Install `libedgetpu1-std` from Coral's apt repository "
            "(https://coral.ai/docs/accelerator/get-started/) and attach a Coral USB "
            "Accelerator or M.2 / PCIe module."
        ) from error
    interpreter = Interpreter(
        model_content=report.compiled_model, experimental_delegates=[delegate], num_threads=threads
    )
    interpreter.allocate_tensors()
    result = {"target": "edgetpu", "runs": runs, "threads": threads}
    result |= time_interpreter(interpreter, runs, warmup)
    result |= {"edgetpu_ops": report.edgetpu_ops, "cpu_ops": report.cpu_ops}
    return result
