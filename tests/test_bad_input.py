"""Bad input gets a clear error naming the argument and the value, and the user's model is
left untouched."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import weights_equal
from tfquant import export, quantizers, schemes

keras = tfq.keras


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: quantizers.MultivaluedQuantizer(bits=12), ValueError, "bits=12"),
        (lambda: quantizers.MultivaluedQuantizer(bits=2.5), TypeError, "bits=2.5"),
        (lambda: quantizers.MultivaluedQuantizer(levels=1), ValueError, "levels=1"),
        (lambda: schemes.Multivalued(division="kmean"), ValueError, "'kmeans', 'linear'"),
        (lambda: schemes.Multivalued(mode="soft"), ValueError, "mode='soft'"),
        (lambda: schemes.Ternary(method="xnor"), ValueError, "'twn', 'ttq'"),
        (lambda: schemes.Ternary(threshold=1.5), ValueError, "threshold=1.5"),
        (lambda: schemes.Ternary(per_channel="yes"), TypeError, "per_channel='yes'"),
        (lambda: schemes.Uniform(bits=1), ValueError, "bits=1"),
        (lambda: schemes.LearnedBasis(weight_bits=5), ValueError, "weight_bits=5"),
        (lambda: schemes.LearnedBasis(activation_bits=0), ValueError, "activation_bits=0"),
    ],
)
def test_invalid_arguments(make, error, fragment):
    with pytest.raises(error, match="Received") as info:
        make()
    assert fragment in str(info.value)


def test_unsupported_layer_annotation_names_the_layer():
    with pytest.raises(ValueError, match="'my_lstm' of type LSTM"):
        tfq.quantize_annotate_layer(keras.layers.LSTM(4, name="my_lstm"), schemes.Ternary())


def test_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="built model"):
        tfq.quantize_model(model, schemes.Ternary())


def test_not_a_scheme(float_model):
    with pytest.raises(TypeError, match="scheme must be a tfquant scheme"):
        tfq.quantize_model(float_model, "ternary")


def test_keras3_model_is_rejected():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match="Keras 3 model"):
        tfq.quantize_model(model, schemes.Ternary())


def test_keras3_already_loaded_gives_instructions():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow as tf; tf.keras.Model; import tfquant"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "import tfquant` before `import tensorflow`" in result.stderr


def test_model_without_quantizable_layers():
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="no layer tfquant can quantize"):
        tfq.quantize_model(model, schemes.Uniform())


def test_non_finite_weights_leave_model_untouched(float_model):
    model = keras.models.clone_model(float_model)
    weights = model.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = np.nan
    model.set_weights(weights)
    with pytest.raises(ValueError, match="NaN or Inf"):
        tfq.quantize_model(model, schemes.Multivalued())
    assert np.isnan(model.get_weights()[0].flat[0])


@pytest.fixture(scope="module")
def qmodel(float_model):
    return tfq.quantize_model(float_model, schemes.Ternary())


@pytest.mark.parametrize(
    "data, error, fragment",
    [
        (np.zeros((0, 8, 8, 1), np.float32), ValueError, "at least one sample"),
        (np.zeros((4, 8, 8), np.float32), ValueError, "shape (N, 8, 8, 1)"),
        (np.full((4, 8, 8, 1), np.inf, np.float32), ValueError, "finite"),
        ("digits", TypeError, "float array"),
    ],
)
def test_bad_representative_data(qmodel, data, error, fragment):
    before = [w.copy() for w in qmodel.get_weights()]
    with pytest.raises(error) as info:
        export.to_tflite(qmodel, data)
    assert fragment in str(info.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights(), strict=True))


def test_export_of_a_float_model_warns_and_takes_the_plain_path(float_model, digits):
    (x, _), (x_test, _) = digits
    before = [w.copy() for w in float_model.get_weights()]
    with pytest.warns(UserWarning, match="no tfquant quantizer"):
        tfl = export.to_tflite(float_model, x[:32])
    report = export.check_tflite(tfl, float_model, x_test[:100], strict=False)
    assert not report.float_ops and not report.kernels  # integer, no codebook to compare
    assert report.agreement >= 0.9
    assert all(np.array_equal(a, b) for a, b in zip(before, float_model.get_weights(), strict=True))


def test_quantize_model_leaves_user_model_untouched(float_model):
    reference = keras.models.clone_model(float_model)
    reference.set_weights(float_model.get_weights())
    tfq.quantize_model(float_model, schemes.LearnedBasis())
    assert weights_equal(reference, float_model)


def test_check_tflite_rejects_garbage(qmodel):
    with pytest.raises(ValueError, match="not a valid TFLite flatbuffer"):
        export.check_tflite(b"not a flatbuffer at all", qmodel)


def test_benchmark_rejects_unknown_target():
    with pytest.raises(ValueError, match="target must be one of"):
        export.benchmark(b"", target="phone")
