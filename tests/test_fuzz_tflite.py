"""The .tflite inspection path on corrupt input: `flatbuffer.validate` names what is wrong
before a native interpreter sees the file, and a bounded hypothesis fuzz of mutated bytes (in a
process of its own with an address-space cap, so a segfault or a runaway allocation fails the
test instead of killing pytest) finds no crash and no error other than ours, on exported
models, compressed containers and compressed TFLite Micro files (`to_micro`, LUT and pruning).
"""

import json
import os
import pathlib
import subprocess
import sys

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

import tfquant as tfq
from tfquant import export
from tfquant.export import flatbuffer
from tfquant.export.flatbuffer import InvalidTfliteError

keras = tfq.keras
FUZZ = pathlib.Path(__file__).parent / "scripts" / "fuzz_tflite.py"
EXAMPLES = 150


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="fc")])
    qmodel = tfq.quantize_model(model, tfq.schemes.Ternary())
    x = np.random.default_rng(0).uniform(-1, 1, (16, 6)).astype(np.float32)
    qmodel(x, training=True)
    return qmodel, x, export.to_tflite(qmodel, x)


def _edited(tfl, edit):
    """`tfl` unpacked with the schema's object API, changed by `edit(model)`, packed again."""
    model = schema.ModelT.InitFromPackedBuf(tfl, 0)
    edit(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _kernel(model):
    graph = model.subgraphs[0]
    op = next(op for op in graph.operators if len(op.inputs) > 1)
    return graph.tensors[op.inputs[1]]


def _set(obj, name, value):
    setattr(obj, name, value)


def _short_constant(model):
    tensor = _kernel(model)
    buffer = model.buffers[tensor.buffer]
    buffer.data = buffer.data[:-1]


def _first_op(model):
    return model.subgraphs[0].operators[0]


CORRUPTIONS = {
    "no subgraph": (lambda m: _set(m, "subgraphs", []), "the model has no subgraph"),
    "op input out of range": (
        lambda m: _set(_first_op(m), "inputs", np.array([999], np.int32)),
        "tensor indices [999] out of range",
    ),
    "unknown opcode": (lambda m: _set(_first_op(m), "opcodeIndex", 77), "operator code 77"),
    "buffer out of range": (lambda m: _set(_kernel(m), "buffer", 4096), "uses buffer 4096"),
    "constant too short": (_short_constant, "needs 18 bytes"),
    "negative dimension": (
        lambda m: _set(_kernel(m), "shape", np.array([3, -6], np.int32)),
        "negative dimension",
    ),
    "huge tensor": (
        lambda m: _set(m.subgraphs[0].tensors[-1], "shape", np.array([1 << 20, 1 << 12], np.int32)),
        "need more than 2147483648 bytes",
    ),
    "name not UTF-8": (lambda m: _set(_kernel(m), "name", b"\xff\xfe"), "is not UTF-8"),
    "scales per channel": (
        lambda m: _set(_kernel(m).quantization, "scale", np.ones(5, np.float32)),
        "5 scales",
    ),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_validate_names_what_is_wrong(tiny, corruption):
    qmodel, _, tfl = tiny
    edit, fragment = CORRUPTIONS[corruption]
    bad = _edited(tfl, edit)
    with pytest.raises(InvalidTfliteError, match="tfl is not a valid TFLite flatbuffer") as info:
        flatbuffer.validate(bad)
    assert fragment in str(info.value)
    # every inspection entry point refuses it the same way, before LiteRT or TFLM load it
    for call in (
        lambda: export.check_tflite(bad, qmodel),
        lambda: export.edgetpu_report(bad, compiler=None),
        lambda: export.benchmark(bad, runs=1, warmup=0),
        lambda: flatbuffer.stored_tensors(bad),
    ):
        with pytest.raises(InvalidTfliteError, match=fragment.replace("[", r"\[")):
            call()


def test_validate_accepts_every_export(tiny):
    _, _, tfl = tiny
    assert flatbuffer.validate(tfl).SubgraphsLength() == 1
    assert flatbuffer.validate(_edited(tfl, lambda m: None)).SubgraphsLength() == 1


@pytest.mark.multiprocess
def test_fuzzed_tflite_and_containers_never_crash(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, str(FUZZ), "--out", str(tmp_path), "--examples", str(EXAMPLES)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    last = tmp_path / "last-case.bin"
    if result.returncode < 0:  # killed by a signal: a crash in native code
        pytest.fail(
            f"the fuzz process died of signal {-result.returncode}; its input is in {last} "
            f"({last.stat().st_size if last.exists() else '?'} bytes)\n{result.stderr[-3000:]}"
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"fuzz cases: {EXAMPLES}" in result.stdout
    summary = json.loads((tmp_path / "fuzz.json").read_text())
    # Compressed TFLite Micro files (LUT and pruning) were mutated too, and files with a
    # corrupt DECODE header were loaded and run by TFLM: none crashed.
    assert summary["micro_cases"] >= EXAMPLES // 3
    assert summary["micro_header_cases"] > summary["micro_header_loaded"] > 0
