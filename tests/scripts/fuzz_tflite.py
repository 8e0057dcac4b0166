"""Fuzzes tfquant's .tflite inspection path and the compressed-model decoder with mutated bytes
of a real (tiny) model, in a process of its own with a cap on its address space.

    python tests/scripts/fuzz_tflite.py --out DIR [--examples 150] [--seed N] [--headroom-mb 3072]

Known crashers run first (see `known_crashers`). Each case mutates the bytes of a small
exported model (byte and word overwrites, truncation, deletion, insertion) and feeds them to
`flatbuffer.stored_tensors`, `edgetpu_report`, `check_tflite` (with data, so the model also
runs) and `micro_report`; every `--container-every`-th case also decodes a mutated
`tfq.coding.compress` container. A case passes when the call returns or raises a ValueError
(InvalidTfliteError, CompressedFormatError, ...) whose message names `tfl` or the container.
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
args = parser.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tfquant as tfq  # noqa: E402
from tfquant import export  # noqa: E402
from tfquant.export import flatbuffer  # noqa: E402

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


QMODEL, X, TARGET = tiny_model()
TFL = export.to_tflite(QMODEL, X)
BLOB = tfq.coding.compress(QMODEL).to_bytes()
export.check_tflite(TFL, QMODEL, X)  # the unmutated model passes every check
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


counts = {"cases": 0, "accepted": 0, "rejected": 0, "container_cases": 0}


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
    fuzz()
except Exception:
    traceback.print_exc()
    sys.exit(1)
summary = counts | {"address_space_cap_mb": baseline_mb + args.headroom_mb}
with open(os.path.join(args.out, "fuzz.json"), "w") as stream:
    json.dump(summary, stream)
print(f"fuzz cases: {counts['cases']} ({json.dumps(summary)})")
