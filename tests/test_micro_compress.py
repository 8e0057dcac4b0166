"""TFLite Micro models that store each kernel as its codebook indices (`to_micro`): every
scheme of the end-to-end tests, LUT per tensor, per channel and BatchNorm-folded, the pruning
encoder (hand-zeroed kernels and a `GradualPruning` run), a codebook too large for a LUT, the
proof (identical outputs, LUTs read back), corrupt DECODE data and bad input. Corrupt
compressed files in TFLM itself: tests/test_fuzz_tflite.py."""

import warnings

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tests.test_end_to_end import SCHEMES
from tfquant import export
from tfquant.export import micro_compress
from tfquant.export.folding import exact_kernels
from tfquant.export.tflite import export_copy

keras = tfq.keras


def _trained(model, scheme, digits):
    (x, y), _ = digits
    qmodel = compile_model(tfq.quantize_model(model, scheme))
    qmodel.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    return qmodel


def _codes(qmodel):
    kernels, _ = exact_kernels(export_copy(qmodel))
    return {k.layer: k for k in kernels}


@pytest.fixture(scope="module")
def multivalued(float_model, digits):
    qmodel = _trained(float_model, tfq.schemes.Multivalued(bits=3), digits)
    (x, _), _ = digits
    return qmodel, export.to_tflite(qmodel, x[:32], batch_size=1)


def test_per_layer_codebook_is_a_3_bit_lut_with_identical_outputs(multivalued, digits):
    qmodel, int8_tfl = multivalued
    (x, _), _ = digits
    micro_tfl, report = export.to_micro(qmodel, x[:32], int8_tflite=int8_tfl)
    assert report.identical_outputs and report.samples == 32
    assert report.int8_bytes == len(int8_tfl) and report.micro_bytes == len(micro_tfl)
    assert report.ratio < 0.55 and 3.0 <= report.bits_per_weight < 3.2
    trained = _codes(qmodel)
    assert [k.layer for k in report.kernels] == list(trained)
    for kernel in report.kernels:
        assert (kernel.encoding, kernel.index_bits, kernel.codes_read_back) == (
            "lut per tensor",
            3,
            True,
        )
        # The table read back from the file is the layer's trained codebook, as int8 codes.
        assert kernel.table_values == np.unique(trained[kernel.layer].codes).tolist()
    assert report.micro_arena_bytes >= report.int8_arena_bytes
    assert report.decode_buffer_bytes >= 64 * 512  # fc1's kernel, expanded
    assert report.split_arena_bytes < report.micro_arena_bytes
    decoded = micro_compress.decoded_kernels(micro_tfl)
    assert len(decoded) == 4
    # micro_report measures the compressed file's arena; LiteRT cannot run DECODE, so data
    # is refused with the way to check outputs, not a misleading "invalid TFLite" error.
    assert export.micro_report(micro_tfl).arena_bytes > 0
    with pytest.raises(ValueError, match="data cannot be checked against LiteRT.*data=None"):
        export.micro_report(micro_tfl, data=x[:4])
    config = report.get_config()
    assert micro_compress.MicroCompressionReport(**config).get_config() == config


#: Schemes of the end-to-end tests that the tests below already take through `to_micro`.
COVERED = {
    "multivalued-kmeans-3bit": "test_per_layer_codebook_is_a_3_bit_lut_with_identical_outputs",
    "ternary-twn-per-channel": "test_per_channel_codebooks",
    "uniform-8bit": "test_codebook_over_128_values_stays_int8_with_a_warning",
}


@pytest.mark.parametrize("name", sorted(set(SCHEMES) - set(COVERED)))
def test_every_scheme_runs_identically_in_tflm(name, float_model, digits):
    # Every kernel of at most 128 values is a LUT of ceil(log2(levels)) bits whose table reads
    # back as its trained codes; a larger codebook (8-bit uniform) stays int8, with a warning.
    (x, _), _ = digits
    qmodel = _trained(float_model, SCHEMES[name](), digits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        micro_tfl, report = export.to_micro(qmodel, x[:16])
    assert report.identical_outputs and report.samples == 16
    trained = _codes(qmodel)
    assert [k.layer for k in report.kernels] == list(trained)
    largest = 2**micro_compress.MAX_INDEX_BITS  # 128 values
    stay_int8 = [k.layer for k in report.kernels if k.levels > largest]
    for kernel in report.kernels:
        if kernel.levels > largest:
            assert kernel.encoding == "int8" and not kernel.codes_read_back
            continue
        assert kernel.encoding.startswith("lut") and kernel.codes_read_back
        assert kernel.index_bits == micro_compress.index_bits(kernel.levels)
        codes = set(np.unique(trained[kernel.layer].codes).tolist())
        assert codes <= set(kernel.table_values) <= codes | {0}  # per-channel: padded with 0
    warned = " ".join(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    assert all(layer in warned for layer in stay_int8)
    assert report.micro_bytes < report.int8_bytes or len(stay_int8) == len(report.kernels)
    assert len(micro_compress.decoded_kernels(micro_tfl)) == len(report.kernels) - len(stay_int8)


def test_per_channel_codebooks(float_model, digits):
    (x, _), _ = digits
    qmodel = _trained(float_model, tfq.schemes.Ternary(per_channel=True), digits)
    _, report = export.to_micro(qmodel, x[:16])
    assert report.identical_outputs
    for kernel in report.kernels:
        # Per-channel ternary: per-channel scales, one table per output channel.
        assert kernel.encoding == "lut per channel" and kernel.index_bits == 2
        assert kernel.codes_read_back


def test_per_channel_tables_of_channels_using_fewer_values(float_model, digits):
    # Channels using 1 or 2 of the 3 ternary codes: the tables differ in length, TFLM steps
    # through them by the ancillary header's stride (the longest table, shorter ones padded).
    (x, _), _ = digits
    qmodel = _trained(float_model, tfq.schemes.Ternary(per_channel=True), digits)
    for layer in ("quant_conv1", "quant_fc1"):
        kernel = [w for w in qmodel.get_layer(layer).weights if w.name.endswith("kernel:0")][0]
        values = kernel.numpy()
        values[..., 0] = 0.0  # one code: 0
        values[..., 1] = np.abs(values[..., 1])  # two codes: 0 and +
        kernel.assign(values)
    trained = _codes(qmodel)
    conv1_codes = trained["quant_conv1"].codes  # (16, 3, 3, 1), channels first
    assert {1, 2} <= {len(np.unique(row)) for row in conv1_codes.reshape(16, -1)}
    micro_tfl, report = export.to_micro(qmodel, x[:16])
    assert report.identical_outputs
    decoded = micro_compress.decoded_kernels(micro_tfl)
    for kernel in report.kernels:
        assert kernel.encoding == "lut per channel" and kernel.codes_read_back
        _, tables = decoded[f"{kernel.tensor}_decoded"]
        assert tables.shape[1] == 3  # stride: the longest table
    conv1 = {k.layer: k for k in report.kernels}["quant_conv1"]
    values, tables = decoded[f"{conv1.tensor}_decoded"]
    assert np.array_equal(values, conv1_codes)
    assert tables[0].tolist() == [0, 0, 0]  # the all-zero channel: [0], padded


def test_batchnorm_folded_conv_keeps_one_table(digits):
    (x, y), _ = digits
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, use_bias=False, name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(name="relu"),
            layers.Flatten(name="flatten"),
            layers.Dense(10, name="logits"),
        ]
    )
    compile_model(model).fit(x[:256], y[:256], epochs=2, verbose=0)
    qmodel = _trained(model, tfq.schemes.Multivalued(bits=3), digits)
    conv = _codes(qmodel)["quant_conv"]
    assert conv.batchnorm is not None  # stored with per-channel scales, the same codes
    _, report = export.to_micro(qmodel, x[:16])
    kernel = {k.layer: k for k in report.kernels}["quant_conv"]
    # Per-channel scales: TFLM reads it with one table per channel (all holding the codes).
    assert kernel.encoding == "lut per channel" and kernel.index_bits == 3
    trained = set(np.unique(conv.folded()[0]).tolist())
    assert trained <= set(kernel.table_values) <= trained | {0}  # tables padded with 0
    assert report.identical_outputs


def test_codebook_over_128_values_stays_int8_with_a_warning(float_model, digits):
    (x, _), _ = digits
    qmodel = _trained(float_model, tfq.schemes.Uniform(bits=8, per_channel=False), digits)
    with pytest.warns(UserWarning, match=r"stay int8.*quant_fc1 \(its codebook has 25\d values"):
        micro_tfl, report = export.to_micro(qmodel, x[:8])
    assert all(k.encoding == "int8" for k in report.kernels)
    assert len(report.uncompressed) == 4 and report.identical_outputs


def test_sparse_kernels_through_the_prune_encoder(float_model, digits):
    (x, _), _ = digits
    sparse = keras.models.clone_model(float_model)
    sparse.set_weights(float_model.get_weights())
    rng = np.random.default_rng(0)
    for layer in sparse.layers:
        if layer.get_weights():
            kernel, bias = layer.get_weights()
            kernel[rng.random(kernel.shape) < 0.98] = 0.0
            layer.set_weights([kernel, bias])
    qmodel = _trained(sparse, tfq.schemes.Ternary(), digits)
    int8_tfl = export.to_tflite(qmodel, x[:16], batch_size=1)
    _, pruned = export.to_micro(qmodel, x[:16], encoding="prune", int8_tflite=int8_tfl)
    _, lut = export.to_micro(qmodel, x[:16], int8_tflite=int8_tfl)
    _, best = export.to_micro(qmodel, x[:16], encoding="smallest", int8_tflite=int8_tfl)
    assert pruned.identical_outputs and best.identical_outputs
    fc1 = {k.layer: k for k in pruned.kernels}["quant_fc1"]
    assert fc1.encoding == "prune" and fc1.codes_read_back
    # The format: 1 bit per weight, a 16-byte header, one byte per non-zero code.
    nonzero = np.count_nonzero(_codes(qmodel)["quant_fc1"].codes)
    assert fc1.stored_bytes == 32768 // 8 + 16 + nonzero < 32768 // 4
    assert best.micro_bytes <= min(lut.micro_bytes, pruned.micro_bytes)


def test_gradual_pruning_run_through_the_prune_encoder(float_model, digits):
    # A model pruned in training (zero intervals widened by GradualPruning), not by hand.
    (x, y), _ = digits
    scheme = tfq.schemes.Multivalued(
        levels=5, sparsity=0.5, layers={"fc1": {"levels": 3, "sparsity": 0.95}}
    )
    qmodel = compile_model(tfq.quantize_model(float_model, scheme), 1e-3)
    pruning = tfq.callbacks.GradualPruning(end_epoch=1, frequency=2, verbose=0)
    qmodel.fit(x[:256], y[:256], epochs=2, batch_size=32, verbose=0, callbacks=[pruning])
    fc1_codes = _codes(qmodel)["quant_fc1"].codes
    assert np.mean(fc1_codes == 0) >= 0.94
    micro_tfl, report = export.to_micro(qmodel, x[:16], encoding="smallest")
    assert report.identical_outputs
    kernels = {k.layer: k for k in report.kernels}
    fc1 = kernels["quant_fc1"]
    assert fc1.encoding == "prune" and fc1.codes_read_back
    assert fc1.stored_bytes == fc1_codes.size // 8 + 16 + np.count_nonzero(fc1_codes)
    values, tables = micro_compress.decoded_kernels(micro_tfl)[f"{fc1.tensor}_decoded"]
    assert tables is None and np.array_equal(values, fc1_codes)
    # "smallest" took, per kernel, the smaller of the LUT and the pruning encoding.
    for kernel in report.kernels:
        codes = _codes(qmodel)[kernel.layer].codes
        bits = micro_compress.index_bits(kernel.levels)
        lut = -(-codes.size * bits // 8) + np.unique(codes).size  # indices + the table
        prune = -(-codes.size // 8) + np.count_nonzero(codes)  # mask + non-zero codes
        assert kernel.encoding == ("prune" if prune < lut else "lut per tensor")


def test_corrupt_decode_data_is_a_clear_error(multivalued, digits):
    qmodel, int8_tfl = multivalued
    (x, _), _ = digits
    micro_tfl, _ = export.to_micro(qmodel, x[:4], int8_tflite=int8_tfl)
    model = micro_compress.read_model(micro_tfl)
    graph = model.subgraphs[0]
    names = [code.customCode for code in model.operatorCodes]
    decode = next(
        op for op in graph.operators if names[op.opcodeIndex] in (b"TFLM_DECODE", "TFLM_DECODE")
    )
    header = bytes(model.buffers[graph.tensors[decode.inputs[1]].buffer].data)
    offset = micro_tfl.find(header)
    assert offset > 0 and header[:2] == b"\0\1"  # LUT, version 1
    edits = {
        0: (5, "decode type 5 is not LUT/prune"),  # decode type
        5: (0x10, "a LUT of 0-bit indices"),  # index width 0, per-channel axis 1
        6: (0, "stride 0"),  # table stride
    }
    for position, (value, message) in edits.items():
        corrupt = bytearray(micro_tfl)
        corrupt[offset + position] = value
        with pytest.raises(ValueError, match=rf"micro_tfl: DECODE of '.+': .*{message}"):
            micro_compress.decoded_kernels(bytes(corrupt))


def test_prune_format_against_the_decoder_spec():
    # One bit per element, most significant bit first; 1: the next value, 0: the zero point.
    values = np.array(
        [[0, 5, 0, 0, 0, 0, 0, -7], [0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 2, 0, 0, 0]]
    )
    mask, nonzero = micro_compress.prune_encode(values.astype(np.int8))
    assert mask == bytes([0b01000001, 0, 0b10001000]) and nonzero.tolist() == [5, -7, 1, 2]
    shape = values.shape
    assert np.array_equal(micro_compress.prune_decode(mask, nonzero, shape), values)
    # Per-channel zero points, channels last (DEPTHWISE_CONV_2D's layout).
    zero_points = np.array([1, 0], np.int8)
    channels_last = np.array([[1, 0], [3, 0], [1, 4]], np.int8)
    mask, nonzero = micro_compress.prune_encode(channels_last, zero_points, axis=1)
    assert mask == bytes([0b00100100]) and nonzero.tolist() == [3, 4]
    back = micro_compress.prune_decode(mask, nonzero, (3, 2), zero_points, axis=1)
    assert np.array_equal(back, channels_last)
    with pytest.raises(ValueError, match="marks 2 values but 1 follow"):
        micro_compress.prune_decode(mask, nonzero[:1], (3, 2), zero_points, axis=1)


def test_the_proof_fails_loudly(multivalued, digits, monkeypatch):
    qmodel, int8_tfl = multivalued
    (x, _), _ = digits
    real_run = micro_compress.run_micro
    calls = []

    def off_by_one_on_the_second_model(interpreter, data):
        calls.append(1)
        out = real_run(interpreter, data)
        return out + 1 if len(calls) == 2 else out

    monkeypatch.setattr(micro_compress, "run_micro", off_by_one_on_the_second_model)
    with pytest.raises(export.MicroCompressionError, match="differ from the int8 model's on 8"):
        export.to_micro(qmodel, x[:8], int8_tflite=int8_tfl)
    monkeypatch.setattr(micro_compress, "run_micro", real_run)
    real_decode = micro_compress._decode

    monkeypatch.setattr(micro_compress, "_decode", lambda *a: (real_decode(*a)[0] * 0, None))
    with pytest.raises(export.MicroCompressionError, match="decodes to other values"):
        export.to_micro(qmodel, x[:8], int8_tflite=int8_tfl)


def test_bad_input_names_the_argument(multivalued, digits, float_model):
    qmodel, int8_tfl = multivalued
    (x, _), _ = digits
    with pytest.raises(ValueError, match=r"encoding must be one of .*Received: encoding='zip'"):
        export.to_micro(qmodel, x[:8], encoding="zip")
    with pytest.raises(TypeError, match="int8_tflite must be None or the bytes"):
        export.to_micro(qmodel, x[:8], int8_tflite="model.tflite")
    with pytest.raises(ValueError, match="arena_size must be None or an integer >= 1024"):
        export.to_micro(qmodel, x[:8], arena_size=16)
    with pytest.raises(ValueError, match="representative_data"):
        export.to_micro(qmodel, np.zeros((4, 3, 3, 1)))
    other = _trained(float_model, tfq.schemes.Ternary(), digits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="int8_tflite holds none of qmodel's tfquant kernels"):
            export.to_micro(other, x[:8], int8_tflite=int8_tfl)
