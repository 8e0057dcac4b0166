"""Entropy coders and the compressed-model container: exact round trips, Huffman optimality,
ANS at the entropy bound, bit-exact restore of quantized digits models, and a fuzz of the
container reader that may only ever raise CompressedFormatError."""

import itertools
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfquant as tfq
from tfquant._keras import quantized_weights
from tfquant.coding import CompressedFormatError, ans, huffman
from tfquant.coding.container import HEADER
from tfquant.coding.entropy import entropy_bits, entropy_of_counts
from tfquant.coding.stream import varint
from tfquant.models import digits_cnn

CODERS = [huffman, ans]


def _skewed(seed, alphabet, length, skew):
    """`length` symbols from a Zipf-like law p(k) ~ (k + 1)^-skew over `alphabet` symbols."""
    rng = np.random.default_rng(seed)
    p = (np.arange(alphabet) + 1.0) ** -skew
    return rng.choice(alphabet, size=length, p=p / p.sum())


# -- coders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("coder", CODERS, ids=["huffman", "ans"])
@settings(max_examples=60, deadline=None)
@given(
    alphabet=st.integers(1, 256),
    length=st.integers(0, 5000),
    skew=st.floats(0.0, 4.0),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_decode_identity(coder, alphabet, length, skew, extra, seed):
    indices = _skewed(seed, alphabet, length, skew)
    size = alphabet + extra  # room for symbols that never occur
    data = coder.encode(indices, alphabet_size=size)
    decoded = coder.decode(data)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, indices)


@pytest.mark.parametrize("coder", CODERS, ids=["huffman", "ans"])
def test_one_symbol_alphabet_costs_only_the_header(coder):
    indices = np.full(10_000, 3)
    data = coder.encode(indices)
    assert len(data) <= 12
    np.testing.assert_array_equal(coder.decode(data), indices)
    assert coder.decode(coder.encode(np.zeros(0, np.int64))).size == 0


@pytest.mark.parametrize(
    "probabilities",
    [
        [0.99, 0.01],
        0.5 ** np.arange(1, 17),
        (np.arange(256) + 1.0) ** -1.2,
        [0.3, 0.3, 0.2, 0.1, 0.05, 0.05],
    ],
    ids=["two-point", "geometric", "zipf-256", "six"],
)
def test_ans_is_within_one_percent_of_the_entropy_bound(probabilities):
    p = np.asarray(probabilities, np.float64)
    indices = np.random.default_rng(0).choice(p.size, size=100_000, p=p / p.sum())
    counts = np.bincount(indices, minlength=p.size)
    bound_bits = indices.size * entropy_of_counts(counts)
    data = ans.encode(indices, alphabet_size=p.size)
    header_bytes = len(varint(p.size)) + sum(len(varint(int(c))) for c in counts)
    assert 8 * len(data) <= 1.01 * bound_bits + 8 * header_bytes + 64
    assert ans.bits_per_weight(indices, p.size) == pytest.approx(8 * len(data) / indices.size)


def _optimal_expected_length(counts, max_length=None):
    """Brute force: the cheapest length vector (1..k-1 each) that satisfies Kraft."""
    k = len(counts)
    best = np.inf
    for lengths in itertools.product(range(1, min(k, max_length or k)), repeat=k):
        if sum(2.0**-length for length in lengths) <= 1.0:
            best = min(best, sum(c * length for c, length in zip(counts, lengths, strict=True)))
    return best


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 1000), min_size=2, max_size=6))
def test_huffman_lengths_are_optimal(counts):
    lengths = huffman.code_lengths(counts)
    assert sum(2.0 ** -int(length) for length in lengths) == 1.0  # complete prefix code
    assert int(np.dot(counts, lengths)) == _optimal_expected_length(counts)
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 1000), min_size=5, max_size=6), max_length=st.just(3))
def test_length_limited_codes_are_optimal(counts, max_length):
    lengths = huffman.code_lengths(counts, max_length=max_length)
    assert lengths.max() <= max_length
    assert sum(2.0 ** -int(length) for length in lengths) <= 1.0
    assert int(np.dot(counts, lengths)) == _optimal_expected_length(counts, max_length + 1)


def test_huffman_ignores_unused_symbols_and_limits_code_length():
    assert huffman.code_lengths([0, 4, 0, 4]).tolist() == [0, 1, 0, 1]
    fibonacci = [1, 1]
    while len(fibonacci) < 30:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = huffman.code_lengths(fibonacci)
    assert lengths.max() == huffman.MAX_CODE_LENGTH
    assert sum(2.0 ** -int(length) for length in lengths) == 1.0
    indices = np.random.default_rng(0).permutation(np.repeat(np.arange(25), fibonacci[:25]))
    data = huffman.encode(indices)  # optimal lengths reach 24: limited to 20
    assert np.frombuffer(data[4:29], np.uint8).max() == huffman.MAX_CODE_LENGTH
    np.testing.assert_array_equal(huffman.decode(data), indices)


def test_huffman_is_within_one_bit_of_entropy():
    indices = _skewed(1, 8, 50_000, 1.5)
    assert entropy_bits(indices) <= huffman.bits_per_weight(indices) < entropy_bits(indices) + 1


@pytest.mark.parametrize("coder", CODERS, ids=["huffman", "ans"])
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=64))
def test_decoders_reject_garbage_cleanly(coder, data):
    try:
        decoded = coder.decode(data)
    except CompressedFormatError:
        return
    assert decoded.dtype == np.int64


@pytest.mark.parametrize("coder", CODERS, ids=["huffman", "ans"])
def test_decoders_refuse_oversized_claims(coder):
    with pytest.raises(CompressedFormatError, match="limit"):
        coder.decode(coder.encode(np.zeros(100, np.int64)), max_symbols=10)


# -- container on the digits model -------------------------------------------------------------

SCHEMES = {
    "ternary_per_channel": lambda: tfq.schemes.Ternary(per_channel=True),
    "ttq_per_channel": lambda: tfq.schemes.Ternary(method="ttq", per_channel=True),
    "uniform4_per_channel": lambda: tfq.schemes.Uniform(bits=4),
    "lqnets": lambda: tfq.schemes.LearnedBasis(weight_bits=2),
}


def _hard_kernels(model):
    return [
        np.asarray(quantizer.hard_quantize(weight, variables)) + np.float32(0)
        for _, weight, quantizer, variables in quantized_weights(model)
    ]


def _bits(array):
    return np.asarray(array, np.float32).view(np.uint32)


def _scramble(model, seed):
    """Overwrites every variable of `model` with noise, so a restore must write them all."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        dtype = variable.dtype.as_numpy_dtype
        noise = rng.normal(size=variable.shape) if dtype().dtype.kind == "f" else 7
        variable.assign(np.broadcast_to(noise, variable.shape).astype(dtype))


def _assert_same_model(restored, original, x):
    for copy, kernel in zip(_hard_kernels(restored), _hard_kernels(original), strict=True):
        np.testing.assert_array_equal(_bits(copy), _bits(kernel))
    np.testing.assert_array_equal(restored(x).numpy(), original(x).numpy())


@pytest.fixture(scope="module")
def multivalued(float_model):
    return tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3))


@pytest.fixture(scope="module")
def ternary(float_model):
    return tfq.quantize_model(float_model, tfq.schemes.Ternary())


@pytest.fixture(scope="module")
def fresh_models():
    """Quantized digits models with other weights (same architecture), one per scheme."""
    return {
        "multivalued": tfq.quantize_model(digits_cnn(seed=7), tfq.schemes.Multivalued(bits=3)),
        "ternary": tfq.quantize_model(digits_cnn(seed=7), tfq.schemes.Ternary()),
    }


@pytest.mark.parametrize("coder", ["ans", "huffman"])
@pytest.mark.parametrize("name", ["multivalued", "ternary"])
def test_round_trip_is_bit_exact(request, fresh_models, digits, name, coder, tmp_path):
    qmodel = request.getfixturevalue(name)
    blob = tfq.coding.compress(qmodel, coder=coder)
    path = tmp_path / "digits.tfqz"
    blob.save(path)
    assert sorted(os.listdir(tmp_path)) == ["digits.tfqz"]  # no temporary file left behind
    assert path.read_bytes() == blob.to_bytes()
    target = fresh_models[name]
    _scramble(target, seed=len(coder))
    restored = tfq.coding.decompress(path, target)
    assert restored is target
    _assert_same_model(restored, qmodel, digits[1][0])


@pytest.mark.parametrize(
    "name", ["ternary_per_channel", "ttq_per_channel", "uniform4_per_channel", "lqnets"]
)
def test_per_channel_codebooks_round_trip(float_model, digits, name):
    qmodel = tfq.quantize_model(float_model, SCHEMES[name]())
    x = digits[1][0]
    kernels, outputs = _hard_kernels(qmodel), qmodel(x).numpy()
    blob = tfq.coding.compress(qmodel)
    assert any(layer.channels > 1 for layer in blob.layers)
    _scramble(qmodel, seed=0)
    tfq.coding.decompress(blob.to_bytes(), qmodel)
    for copy, kernel in zip(_hard_kernels(qmodel), kernels, strict=True):
        np.testing.assert_array_equal(_bits(copy), _bits(kernel))
    np.testing.assert_array_equal(qmodel(x).numpy(), outputs)


def test_sizes_and_report(multivalued):
    by_ans = tfq.coding.compress(multivalued, coder="ans")
    by_huffman = tfq.coding.compress(multivalued, coder="huffman")
    weights = sum(int(np.prod(w.shape)) for _, w, _, _ in quantized_weights(multivalued))
    for blob in (by_ans, by_huffman):
        assert blob.nbytes == len(blob.to_bytes())
        assert blob.float_bytes == 4 * weights
        assert blob.ratio > 1
        assert blob.ratio == blob.float_bytes / blob.nbytes
        assert blob.entropy_bytes <= blob.nbytes
        assert f"ratio={blob.ratio:.2f}" in repr(blob)
    assert by_ans.nbytes <= by_huffman.nbytes
    for layer in by_ans.layers:
        assert layer.levels <= 8
        assert layer.entropy_bits <= layer.coded_bits < 3.7
        assert 0.0 <= layer.sparsity <= 1.0
    lines = []
    rows = tfq.coding.report(multivalued, print_fn=lines.append)
    assert f"ans {by_ans.nbytes} B (ratio {by_ans.ratio:.2f})" in lines[-1]
    assert [r.layer for r in rows] == [layer.name for layer in by_ans.layers]
    for row in rows:
        assert row.entropy_bits <= row.ans_bits <= row.huffman_bits + 1e-9
    parsed = tfq.coding.Compressed.from_bytes(by_ans.to_bytes())
    assert parsed.layers == by_ans.layers
    assert parsed.coder == "ans"


def test_clear_errors(float_model, multivalued, fresh_models):
    data = tfq.coding.compress(multivalued).to_bytes()
    target = fresh_models["multivalued"]
    with pytest.raises(ValueError, match="coder must be one of 'huffman', 'ans'"):
        tfq.coding.compress(multivalued, coder="zip")
    with pytest.raises(ValueError, match="no tfquant quantizer"):
        tfq.coding.compress(float_model)
    with pytest.raises(CompressedFormatError, match="bad magic"):
        tfq.coding.decompress(b"PK" + data[2:], target)
    newer = bytearray(data)
    newer[8:10] = struct.pack("<H", 4)
    with pytest.raises(CompressedFormatError, match="version 4 is not supported"):
        tfq.coding.decompress(bytes(newer), target)
    with pytest.raises(CompressedFormatError, match="not the same architecture"):
        tfq.coding.decompress(data, fresh_models["ternary"])
    with pytest.raises(CompressedFormatError, match="too short"):
        tfq.coding.decompress(data[:20], target)
    with pytest.raises(TypeError, match="path or bytes"):
        tfq.coding.decompress(123, target)
    with pytest.raises(CompressedFormatError, match="max_elements"):
        tfq.coding.Compressed.from_bytes(data, max_elements=1000)  # fc1 has 32768 weights


WITHOUT_STATE = {
    # a schedule in progress: zero interval, frozen weights, intervals and counters all set
    "multivalued_masked_sparse": lambda: tfq.schemes.Multivalued(
        bits=3, mode="masked", sparsity=0.5
    ),
    "multivalued": lambda: tfq.schemes.Multivalued(bits=2),
    "ttq_per_channel": SCHEMES["ttq_per_channel"],
    "lqnets": SCHEMES["lqnets"],
}


@pytest.mark.parametrize("name", list(WITHOUT_STATE))
def test_container_without_training_state(float_model, digits, name):
    """`include_training_state=False` leaves out exactly the variables that only steer
    training, and restores a model that predicts and re-compresses the same even when those
    variables hold noise in the model restored into (so no forward pass reads them)."""
    (x, y), (x_test, _) = digits
    qmodel = tfq.quantize_model(float_model, WITHOUT_STATE[name]())
    qmodel.compile("adam", "sparse_categorical_crossentropy")
    callbacks = []
    if name == "multivalued_masked_sparse":  # every phase done: all weights frozen
        callbacks = [tfq.callbacks.PhaseAdaptation(epochs_per_phase=0.25, verbose=0)]
    qmodel.fit(x[:512], y[:512], epochs=2, batch_size=32, verbose=0, callbacks=callbacks)
    full = tfq.coding.compress(qmodel)
    lean = tfq.coding.compress(qmodel, include_training_state=False)
    assert full.include_training_state and not lean.include_training_state
    assert "include_training_state=False" in repr(lean)
    assert struct.unpack_from("<H", lean.to_bytes(), 10) == (1,)  # the header flag
    left_out = [
        v.name for v in qmodel.weights if "optimizer_step" in v.name or "interval" in v.name
    ]
    left_out += [
        v.name
        for v in qmodel.weights
        for key in ("adaptation", "pull_strength", "schedule_step")
        if v.name.endswith(f"_{key}:0")
    ]
    assert len(full.variable_nbytes()) - len(lean.variable_nbytes()) == len(left_out) > 0
    assert lean.nbytes < full.nbytes
    assert lean.layers == full.layers

    parsed = tfq.coding.Compressed.from_bytes(lean.to_bytes())
    assert not parsed.include_training_state
    target = tfq.quantize_model(digits_cnn(seed=7), WITHOUT_STATE[name]())
    _scramble(target, seed=3)
    restored = tfq.coding.decompress(lean.to_bytes(), target)
    _assert_same_model(restored, qmodel, x_test)
    again = tfq.coding.compress(restored, include_training_state=False)
    assert again.to_bytes() == lean.to_bytes()
    if name == "multivalued_masked_sparse":
        from tfquant import export
        from tfquant.export.flatbuffer import read_model, stored_tensors
        from tfquant.export.tflite import run_tflite

        # The same file up to the names Keras numbers: their digits depend on how many models
        # the process made before, so the two files' lengths may differ by some padding.
        calibration = x[:64]
        files = [export.to_tflite(model, calibration) for model in (restored, qmodel)]
        tensors = [[(t.type, t.shape, t.constant_bytes) for t in stored_tensors(f)] for f in files]
        assert tensors[0] == tensors[1]
        constants = []
        for tfl in files:  # every buffer but the metadata (it names the input layer)
            model = read_model(tfl)
            named = {entry.buffer for entry in model.metadata or []}
            constants.append(
                [
                    None if b.data is None else bytes(b.data)
                    for index, b in enumerate(model.buffers)
                    if index not in named
                ]
            )
        assert constants[0] == constants[1]
        outputs = [run_tflite(tfl, x_test) for tfl in files]
        np.testing.assert_array_equal(*outputs)


def test_container_flags_are_checked(multivalued, fresh_models):
    data = bytearray(tfq.coding.compress(multivalued, include_training_state=False).to_bytes())
    data[10:12] = struct.pack("<H", 2)
    with pytest.raises(CompressedFormatError, match="unknown flags 0x0002"):
        tfq.coding.decompress(bytes(data), fresh_models["multivalued"])
    with pytest.raises(TypeError, match="include_training_state must be True or False"):
        tfq.coding.compress(multivalued, include_training_state="no")


def test_partly_frozen_masked_model_warns(float_model):
    qmodel = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3, mode="masked"))
    with pytest.warns(UserWarning, match="are frozen"):
        tfq.coding.compress(qmodel)


def _restamp(data):
    """Rewrites the header's body length and CRC so that a mutation reaches the parser."""
    if len(data) < HEADER.size:
        return data
    magic, version, flags, count, _, _ = HEADER.unpack_from(data)
    body = data[HEADER.size :]
    return HEADER.pack(magic, version, flags, count, len(body), zlib.crc32(body)) + body


@st.composite
def _mutations(draw, data):
    """Byte edits, mostly in the records (after the header), then usually a fixed-up header."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set"] * 5 + ["delete", "insert", "truncate", "header"]))
        low = 0 if action in ("truncate", "header") else HEADER.size
        high = (min(HEADER.size, len(data)) if action == "header" else len(data)) - 1
        if high < low:
            continue
        position = draw(st.integers(low, high))
        if action in ("set", "header"):
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    data = bytes(data)
    return _restamp(data) if draw(st.sampled_from([True, True, True, False])) else data


@pytest.fixture(scope="module")
def fuzz_target(multivalued):
    blobs = {c: tfq.coding.compress(multivalued, coder=c).to_bytes() for c in ("ans", "huffman")}
    return blobs, tfq.quantize_model(digits_cnn(seed=3), tfq.schemes.Multivalued(bits=3))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(choice=st.data())
def test_decompress_of_mutated_bytes_raises_only_format_errors(fuzz_target, choice):
    blobs, model = fuzz_target
    mutated = choice.draw(_mutations(blobs[choice.draw(st.sampled_from(sorted(blobs)))]))
    before = [w.numpy() for w in model.weights]
    try:
        tfq.coding.decompress(mutated, model)
    except CompressedFormatError:
        # Nothing is written unless everything fits.
        for old, variable in zip(before, model.weights, strict=True):
            np.testing.assert_array_equal(variable.numpy(), old)
