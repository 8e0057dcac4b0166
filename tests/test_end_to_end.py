"""Digits end to end for every scheme: quantize -> fit -> exact int8 TFLite that agrees with
Keras on >= 99 % of the test set; SavedModel round trip; summary."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model, weights_equal
from tfquant import export

SCHEMES = {
    "multivalued-kmeans-3bit": lambda: tfq.schemes.Multivalued(bits=3),
    "multivalued-linear-2bit": lambda: tfq.schemes.Multivalued(bits=2, division="linear"),
    "ternary-twn": lambda: tfq.schemes.Ternary(method="twn"),
    "ternary-ttq": lambda: tfq.schemes.Ternary(method="ttq"),
    "ternary-twn-per-channel": lambda: tfq.schemes.Ternary(method="twn", per_channel=True),
    "lqnets-w2a4": lambda: tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=4),
    "uniform-8bit": lambda: tfq.schemes.Uniform(bits=8),
    "uniform-4bit-per-layer": lambda: tfq.schemes.Uniform(bits=4, per_channel=False),
}


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def trained(request, float_model, digits):
    (x, y), _ = digits
    before = [w.copy() for w in float_model.get_weights()]
    qmodel = compile_model(tfq.quantize_model(float_model, SCHEMES[request.param]()), 5e-4)
    assert all(np.array_equal(a, b) for a, b in zip(before, float_model.get_weights(), strict=True))
    qmodel.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return request.param, qmodel


def test_export_is_exact_and_agrees(trained, digits):
    name, qmodel = trained
    (x, _), (x_test, y_test) = digits
    tfl = export.to_tflite(qmodel, representative_data=x[:100])
    report = export.check_tflite(tfl, qmodel, x_test, y_test)  # raises on any failure
    assert report.ok and report.agreement >= 0.99
    assert len(report.kernels) == 4 and all(k.exact for k in report.kernels)
    assert set(report.ops) <= {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"}
    assert report.tflite_accuracy > 0.85, name
    for kernel in report.kernels:
        if not name.startswith(("lqnets", "uniform-8bit", "ternary-twn-per")):
            assert kernel.codes <= kernel.codebook_size  # per-layer codebook survives intact


def test_summary_counts_levels(trained):
    name, qmodel = trained
    rows = tfq.summary(qmodel, print_fn=None)
    assert [r.layer for r in rows] == ["quant_conv1", "quant_conv2", "quant_fc1", "quant_logits"]
    for row in rows:
        assert 1 <= row.distinct <= row.levels
        assert 0 <= row.entropy_bits <= np.log2(row.levels) + 1e-9
        assert row.entropy_bytes <= row.fixed_bytes
    if name.startswith("multivalued-kmeans"):
        assert all(r.levels == 8 for r in rows)


def test_savedmodel_round_trip(trained, digits, tmp_path):
    _, qmodel = trained
    _, (x_test, _) = digits
    path = str(tmp_path / "qmodel")
    qmodel.save(path, save_format="tf")
    with tfq.quantizers.base.tfmot.quantization.keras.quantize_scope():
        loaded = tfq.keras.models.load_model(path, compile=False)
    np.testing.assert_array_equal(
        loaded.predict(x_test, verbose=0), qmodel.predict(x_test, verbose=0)
    )
    assert weights_equal(loaded, qmodel)


def test_int4_export_halves_ternary_kernels(float_model, digits):
    (x, y), (x_test, y_test) = digits
    qmodel = compile_model(tfq.quantize_model(float_model, tfq.schemes.Ternary()), 5e-4)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0)
    int8 = export.to_tflite(qmodel, x[:50])
    int4 = export.to_tflite(qmodel, x[:50], int4=True)
    assert len(int4) < 0.7 * len(int8)
    report = export.check_tflite(int4, qmodel, x_test, y_test)
    assert report.ok


def test_keep_first_last_8bit(float_model):
    qmodel = tfq.quantize_model(
        float_model, tfq.schemes.Multivalued(bits=2, keep_first_last_8bit=True)
    )
    kinds = [r.quantizer for r in tfq.summary(qmodel, print_fn=None)]
    assert kinds == [
        "UniformQuantizer",
        "MultivaluedQuantizer",
        "MultivaluedQuantizer",
        "UniformQuantizer",
    ]


def test_annotated_layers_only(digits):
    keras = tfq.keras
    scheme = tfq.schemes.Ternary()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            tfq.quantize_annotate_layer(keras.layers.Dense(16, activation="relu"), scheme),
            keras.layers.Dense(10),
        ]
    )
    qmodel = tfq.quantize_model(model, scheme)
    rows = tfq.summary(qmodel, print_fn=None)
    assert len(rows) == 1 and rows[0].levels == 3


@pytest.mark.parametrize(
    "scheme",
    [tfq.schemes.Multivalued(bits=3), tfq.schemes.Uniform(bits=4)],
    ids=["per-layer", "per-channel"],
)
def test_depthwise_and_batchnorm_model_exports(digits, scheme):
    keras = tfq.keras
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 1),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    compile_model(model, 3e-3).fit(x, y, epochs=15, batch_size=32, verbose=0)
    qmodel = compile_model(tfq.quantize_model(model, scheme))
    qmodel.fit(x, y, epochs=3, batch_size=32, verbose=0)
    tfl = export.to_tflite(qmodel, x[:50])
    report = export.check_tflite(tfl, qmodel, x_test, y_test, strict=False)
    assert report.ok  # no float op; every kernel (depthwise included) exact
    assert report.keras_accuracy > 0.5  # a tiny GAP net: well above chance (0.1), not more
    assert report.agreement >= 0.97
    assert "DEPTHWISE_CONV_2D" in report.ops


def test_check_tflite_fails_loudly_on_a_float_model(float_model, digits):
    (x, _), (x_test, _) = digits
    qmodel = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3))
    float_tfl = tfq.tf.lite.TFLiteConverter.from_keras_model(float_model).convert()
    with pytest.raises(export.ExportCheckError, match="float compute ops"):
        export.check_tflite(float_tfl, qmodel, x_test[:20])
    report = export.check_tflite(float_tfl, qmodel, strict=False)
    assert not report.ok and not any(k.exact for k in report.kernels)


def _expected_codebook_floats(quantizer):
    name = type(quantizer).__name__
    if name == "UniformQuantizer":
        return 1  # one scale
    if name == "TernaryQuantizer":
        return 1 if quantizer.method.value == "twn" else 2
    if name == "LearnedBasisQuantizer":
        return quantizer.bits  # the basis
    return quantizer.levels  # the centers


@pytest.mark.parametrize(
    "scheme",
    [
        lambda: tfq.schemes.Uniform(bits=8),
        lambda: tfq.schemes.Ternary(method="ttq"),
        lambda: tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=None),
        lambda: tfq.schemes.Multivalued(bits=3),
    ],
)
def test_summary_counts_what_defines_each_codebook(float_model, scheme):
    qmodel = tfq.quantize_model(float_model, scheme())
    for row, (_, _, quantizer, _) in zip(
        tfq.summary(qmodel, print_fn=None), tfq._keras.quantized_weights(qmodel), strict=True
    ):
        floats = _expected_codebook_floats(quantizer)
        assert quantizer.codebook_floats() == floats
        codebooks = quantizer.num_channels if quantizer.per_channel else 1
        index_bits = max(1, int(np.ceil(np.log2(max(row.levels, 2)))))
        assert row.fixed_bytes == -(-row.weights * index_bits // 8) + 4 * floats * codebooks
        assert row.fixed_bytes < 4 * row.weights  # smaller than float32
