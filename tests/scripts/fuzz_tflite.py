"""Fuzzes tfquant's .tflite inspection path and the compressed-model decoder with mutated bytes
of a real (tiny) model, in a process of its own with a cap on its address space.

    python tests/scripts/fuzz_tflite.py --out DIR [--examples 150] [--seed N] [--headroom-mb 3072]

Known crashers run first (see `known_crashers`). Each case mutates the bytes of a small
exported model (byte and word overwrites, truncation, deletion, insertion) and feeds them to
`flatbuffer.stored_tensors`, `edgetpu_report`, `check_tflite` (with data, so the model also
runs) and `micro_report`; every `--container-every`-th case also decodes a mutated
`tfq.coding.compress` container, and every `--micro-every`-th case mutates a TFLite Micro file
of `to_micro` (LUT, or pruning from a sparse model, in turn) and feeds it to `decoded_kernels`
and to `micro_report` with data (TFLM loads it and runs its DECODE operators).
A case passes when the call returns or raises a ValueError (InvalidTfliteError,
CompressedFormatError, ...) whose message names `tfl`, the container or the DECODE.
Anything else fails the run: another exception type (printed with its traceback, exit code 1),
a crash (the caller sees the signal; DIR/last-case.bin holds the input) or an allocation past
the cap (RLIMIT_AS: it raises MemoryError or aborts). Prints 'fuzz cases: N' at the end.
"""

import argparse
import json
import os
import resource
import sys
import traceback

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", required=True)
parser.add_argument("--examples", type=int, default=150)
parser.add_argument("--seed", type=int, default=None, help="random exploration (default: fixed)")
parser.add_argument("--headroom-mb", type=int, default=3072)
parser.add_argument("--container-every", type=int, default=4)
parser.add_argument("--micro-every", type=int, default=3)
args = parser.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tfquant as tfq  # noqa: E402
from tfquant import export  # noqa: E402
from tfquant.export import flatbuffer, micro_compress  # noqa: E402

keras = tfq.keras


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(2, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="fc"),
        ]
    )
    qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=2))
    x = np.random.default_rng(0).uniform(0, 1, (8, 4, 4, 1)).astype(np.float32)
    qmodel(x, training=True)  # calibrates the activation ranges
    # what mutated containers are decoded into: same architecture and scheme
    target = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=2))
    return qmodel, x, target


def sparse_model(x):
    """A one-Dense model whose kernel is 90 % zeros: `to_micro` prunes it."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(32)]
    )
    kernel, bias = model.layers[-1].get_weights()
    kernel[np.random.default_rng(0).random(kernel.shape) < 0.9] = 0.0
    model.layers[-1].set_weights([kernel, bias])
    qmodel = tfq.quantize_model(model, tfq.schemes.Ternary())
    qmodel(x, training=True)
    return qmodel


QMODEL, X, TARGET = tiny_model()
TFL = export.to_tflite(QMODEL, X)
BLOB = tfq.coding.compress(QMODEL).to_bytes()
export.check_tflite(TFL, QMODEL, X)  # the unmutated model passes every check
MICRO = [export.to_micro(QMODEL, X)[0], export.to_micro(sparse_model(X), X, encoding="prune")[0]]
for micro in MICRO:  # what the mutations start from: a LUT and a pruned kernel, each decoded
    assert {k[1] is None for k in micro_compress.decoded_kernels(micro).values()} in (
        {False},
        {True},
    )
os.makedirs(args.out, exist_ok=True)
LAST = os.path.join(args.out, "last-case.bin")


def address_space_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) // 1024
    return 0


# From here on, the process cannot map more than its current size plus the headroom (the
# validator caps a model's tensors at flatbuffer.MAX_TENSOR_BYTES = 2 GiB).
baseline_mb = address_space_mb()
limit = (baseline_mb + args.headroom_mb) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

WORDS = [0, 1, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, len(TFL), len(TFL) - 4]


def mutations(size):
    position = st.integers(0, size - 1)
    return st.lists(
        st.one_of(
            st.tuples(st.just("byte"), position, st.integers(0, 255)),
            st.tuples(st.just("word"), position, st.sampled_from(WORDS)),
            st.tuples(st.just("truncate"), position, st.just(0)),
            st.tuples(st.just("delete"), position, st.integers(1, 16)),
            st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=8)),
        ),
        min_size=1,
        max_size=4,
    )


def mutate(data, edits):
    data = bytearray(data)
    for kind, position, value in edits:
        position = min(position, max(len(data) - 1, 0))
        if kind == "byte" and data:
            data[position] = value
        elif kind == "word":
            data[position : position + 4] = value.to_bytes(4, "little")
        elif kind == "truncate":
            del data[position:]
        elif kind == "delete":
            del data[position : position + value]
        elif kind == "insert":
            data[position:position] = value
    return bytes(data)


def expect_clean(call, label, name):
    """Runs `call`; a ValueError naming `name` is a clean rejection, anything else fails."""
    try:
        call()
        return "accepted"
    except ValueError as error:
        if name not in str(error):
            raise AssertionError(f"{label}: ValueError without {name!r}: {error}") from error
        return "rejected"


counts = {
    "cases": 0,
    "accepted": 0,
    "rejected": 0,
    "container_cases": 0,
    "micro_cases": 0,  # mutated TFLite Micro files
    "micro_loaded": 0,  # of which TFLM loaded (and then ran)
    "micro_header_cases": 0,  # one DECODE header byte set to a telling value
    "micro_header_loaded": 0,
}


def micro_case(micro, count=True):
    """A mutated TFLite Micro file: its kernels decoded here, then loaded and run in TFLM
    (counted as a fuzz case, or with `count=False` as a header case)."""
    with open(LAST, "wb") as stream:
        stream.write(micro)
    expect_clean(lambda: micro_compress.decoded_kernels(micro), "decoded_kernels", "tfl")
    loaded = expect_clean(
        lambda: export.micro_report(micro, arena_size=1 << 20), "micro_report", "tfl"
    )
    expect_clean(
        lambda: export.micro_report(micro, data=X[:2], arena_size=1 << 20),
        "micro_report of a compressed model, run",
        "tfl",
    )
    kind = "micro" if count else "micro_header"
    counts[f"{kind}_cases"] += 1
    counts[f"{kind}_loaded"] += loaded == "accepted"


def decode_headers(micro):
    """Offsets in `micro` of each DECODE ancillary tensor's data (its 16-byte header first)."""
    model = flatbuffer.read_model(micro)
    offsets = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if op.inputs is None or len(op.inputs) < 2:
                continue
            for ancillary in op.inputs[1::2]:
                data = model.buffers[subgraph.tensors[ancillary].buffer].data
                if data is not None and len(data) >= 16 and bytes(data[:2]) in (b"\0\1", b"\2\1"):
                    offsets.append(micro.find(bytes(data)))
    return [offset for offset in offsets if offset >= 0]


def header_corruptions(micro):
    """`micro` with one byte of a DECODE header set to a telling value, for each of the first
    8 header bytes (decode type, version, pruning version, index width / table axis, table
    stride) of each DECODE."""
    cases = []
    for offset in decode_headers(micro):
        for position in range(8):
            for value in (0, 1, 2, 0x17, 0x7F, 0xFF):
                data = bytearray(micro)
                data[offset + position] = value
                cases.append(bytes(data))
    return cases


def one_case(tfl, container, count=True):
    with open(LAST, "wb") as stream:  # left behind if the process dies
        stream.write(tfl)
    outcomes = [
        expect_clean(lambda: flatbuffer.stored_tensors(tfl), "stored_tensors", "tfl"),
        expect_clean(lambda: export.edgetpu_report(tfl, compiler=None), "edgetpu_report", "tfl"),
        expect_clean(
            lambda: export.check_tflite(tfl, QMODEL, X[:2], strict=False), "check_tflite", "tfl"
        ),
        expect_clean(lambda: export.micro_report(tfl, arena_size=1 << 20), "micro_report", "tfl"),
    ]
    if not count:
        return
    counts["cases"] += 1
    counts["accepted" if all(o == "accepted" for o in outcomes) else "rejected"] += 1
    if container is not None:
        with open(LAST, "wb") as stream:
            stream.write(container)
        before = [w.copy() for w in TARGET.get_weights()]
        try:
            tfq.coding.decompress(container, TARGET)
        except ValueError as error:
            if "container" not in str(error) and "record" not in str(error):
                raise AssertionError(f"decompress: unclear error: {error}") from error
            after = TARGET.get_weights()
            if not all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)):
                raise AssertionError("decompress changed the model before failing") from error
        counts["container_cases"] += 1


@settings(
    max_examples=args.examples,
    deadline=None,
    database=None,
    derandomize=args.seed is None,
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def fuzz(data):
    edits = data.draw(mutations(len(TFL)), label="tflite edits")
    container_edits = data.draw(mutations(len(BLOB)), label="container edits")
    container = None
    if counts["cases"] % args.container_every == 0:
        container = mutate(BLOB, container_edits)
    micro = MICRO[data.draw(st.integers(0, len(MICRO) - 1), label="micro file")]
    micro_edits = data.draw(mutations(max(len(m) for m in MICRO)), label="micro edits")
    if counts["cases"] % args.micro_every == 0:
        micro_case(mutate(micro, micro_edits))
    one_case(mutate(TFL, edits), container)


def known_crashers(tfl):
    """Inputs that crashed a native interpreter before `flatbuffer.validate` existed."""
    root = int.from_bytes(tfl[0:4], "little")
    vtable = root - int.from_bytes(tfl[root : root + 4], "little", signed=True)
    # Model's vtable slots 1 and 2 (operator_codes, subgraphs) zeroed: a valid flatbuffer
    # without them, which segfaulted the LiteRT 2.3 Python interpreter's constructor.
    data = bytearray(tfl)
    data[vtable + 6 : vtable + 10] = bytes(4)
    return [bytes(data)]


if args.seed is not None:
    fuzz = seed(args.seed)(fuzz)
try:
    for case in known_crashers(TFL):
        one_case(case, None, count=False)
    for micro in MICRO:
        cases = header_corruptions(micro)
        assert cases, "no DECODE header found in a TFLite Micro file"
        for case in cases:
            micro_case(case, count=False)
    fuzz()
except Exception:
    traceback.print_exc()
    sys.exit(1)
summary = counts | {"address_space_cap_mb": baseline_mb + args.headroom_mb}
with open(os.path.join(args.out, "fuzz.json"), "w") as stream:
    json.dump(summary, stream)
print(f"fuzz cases: {counts['cases']} ({json.dumps(summary)})")
