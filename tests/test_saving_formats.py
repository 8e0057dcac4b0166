"""Every way tf_keras saves a model keeps a tfquant QAT model: `.keras`, `.h5` and SavedModel
files from `qmodel.save` and `ModelCheckpoint` (and weights-only checkpoints) load back with
their quantizers and state, the same predictions and the same TFLite export; what cannot be
loaded (weights-only files, revived layers, Keras 3 models) fails with the fix in the error."""

import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import tfquant as tfq
from tfquant import export
from tfquant._keras import quantized_weights

keras = tfq.keras

# Keras's own advice to prefer .keras over .h5: the .h5 cases save there on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5:UserWarning")

SCHEMES = {
    "multivalued": lambda: tfq.schemes.Multivalued(bits=3),
    "ternary": lambda: tfq.schemes.Ternary(method="ttq"),  # trainable scales: order matters
}
MODEL_FORMATS = ["x.keras", "x.h5", "savedmodel"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int64") + (x[:, 4:, :4].mean((1, 2, 3)) > 0)
    return x, y


def float_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1), name="image")
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    hidden = keras.layers.Flatten(name="flatten")(hidden)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model(inputs, outputs)


def qat_model(name):
    qmodel = tfq.quantize_model(float_model(), SCHEMES[name]())
    qmodel.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return qmodel


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def trained(request, data):
    """(scheme name, trained QAT model, its TFLite export)."""
    x, y = data
    qmodel = qat_model(request.param)
    qmodel.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return request.param, qmodel, export.to_tflite(qmodel, x[:32])


def quantizer_states(qmodel):
    """Per quantized weight: layer name, quantizer class and config, and its variables."""
    states = []
    for wrapper, _, quantizer, variables in quantized_weights(qmodel):
        values = {key: np.asarray(variable) for key, variable in variables.items()}
        states.append((wrapper.name, type(quantizer).__name__, quantizer.get_config(), values))
    return states


def assert_same_model(loaded, qmodel, x):
    expected, actual = quantizer_states(qmodel), quantizer_states(loaded)
    assert [s[:3] for s in actual] == [s[:3] for s in expected]
    assert all(s[1] != "NoneType" for s in actual)
    for (*_, want), (*_, got) in zip(expected, actual, strict=True):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # Every variable, in the same order (h5 and .keras store weights by position).
    assert len(loaded.weights) == len(qmodel.weights)
    for got, want in zip(loaded.weights, qmodel.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.name)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


def save_path(tmp_path, name):
    return str(tmp_path / name)


@pytest.mark.parametrize("name", MODEL_FORMATS)
def test_save_load_round_trip_with_same_export(trained, data, tmp_path, name):
    _, qmodel, tflite = trained
    x, _ = data
    path = save_path(tmp_path, name)
    qmodel.save(path)
    loaded = tfq.load_model(path)
    assert_same_model(loaded, qmodel, x)
    assert export.to_tflite(loaded, x[:32]) == tflite
    # The loaded model saves again, to the same format, and comes back the same.
    again = save_path(tmp_path, "again_" + name)
    loaded.save(again)
    assert_same_model(tfq.load_model(again), qmodel, x)


@pytest.mark.parametrize("name", MODEL_FORMATS)
def test_plain_keras_load_model_keeps_quantizers(trained, data, tmp_path, name):
    """After `import tfquant`, Keras's own loader works, inside tfmot's quantize_scope or not
    (outside it, a SavedModel used to come back with quantizers None)."""
    scheme, qmodel, tflite = trained
    x, _ = data
    path = save_path(tmp_path, name)
    qmodel.save(path)
    with tfmot.quantization.keras.quantize_scope():
        assert_same_model(keras.models.load_model(path, compile=False), qmodel, x)
    plain = keras.models.load_model(path, compile=False)
    assert_same_model(plain, qmodel, x)
    if name == "savedmodel" and scheme == "multivalued":
        assert export.to_tflite(plain, x[:32]) == tflite


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("pattern", ["ep{epoch:02d}.keras", "ep{epoch:02d}.h5", "ep{epoch:02d}"])
def test_model_checkpoint_files_load(data, tmp_path, scheme, pattern):
    x, y = data
    qmodel = qat_model(scheme)
    checkpoint = keras.callbacks.ModelCheckpoint(save_path(tmp_path, pattern))
    qmodel.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[checkpoint])
    assert sorted(os.listdir(tmp_path)) == [pattern.format(epoch=1), pattern.format(epoch=2)]
    resumed = tfq.load_model(save_path(tmp_path, pattern.format(epoch=2)), compile=True)
    assert_same_model(resumed, qmodel, x)
    resumed.fit(x, y, epochs=1, batch_size=32, verbose=0)  # training can go on from the file


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("pattern", ["w{epoch}.keras", "w{epoch}.h5", "w{epoch}"])
def test_weights_only_checkpoints_load_into_a_new_qat_model(data, tmp_path, scheme, pattern):
    x, y = data
    qmodel = qat_model(scheme)
    checkpoint = keras.callbacks.ModelCheckpoint(
        save_path(tmp_path, pattern), save_weights_only=True
    )
    qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[checkpoint])
    path = save_path(tmp_path, pattern.format(epoch=1))
    fresh = qat_model(scheme)
    status = fresh.load_weights(path)
    if status is not None:  # TF checkpoint: the optimizer's slots are not created yet
        status.expect_partial()
    assert_same_model(fresh, qmodel, x)
    # tfq.load_model cannot build a model from weights: it says what to do instead.
    error = FileNotFoundError if pattern == "w{epoch}" else ValueError
    with pytest.raises(error, match="weights only.*quantize_model.*load_weights") as info:
        tfq.load_model(path)
    assert repr(path) in str(info.value)


def test_revived_model_is_refused_not_exported_as_plain_int8(trained, data, tmp_path, monkeypatch):
    """A SavedModel loaded while tfmot's classes are unknown to Keras (before tfquant is
    imported, say) has generic layers without quantizers: export, check and summary refuse it."""
    _, qmodel, tflite = trained
    x, y = data
    path = save_path(tmp_path, "savedmodel")
    qmodel.save(path)
    registered = keras.utils.get_custom_objects()
    for name in ["QuantizeWrapperV2", "QuantizeLayer"]:
        monkeypatch.delitem(registered, name)
    revived = keras.models.load_model(path, compile=False)
    monkeypatch.undo()
    for call in [
        lambda: export.to_tflite(revived, x[:32]),
        lambda: export.check_tflite(tflite, revived, x, y),
        lambda: tfq.summary(revived, print_fn=None),
    ]:
        with pytest.raises(ValueError, match=r"revived.*tfq\.load_model\(path\)"):
            call()


def test_load_model_errors_name_the_formats(tmp_path):
    other = tmp_path / "model.tflite"
    other.write_bytes(b"TFL3")
    with pytest.raises(ValueError, match="SavedModel directory, a .keras file or an .h5 file"):
        tfq.load_model(other)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras"):
        tfq.load_model(broken)


def test_old_layer_quantize_config_format_still_loads():
    """Configs written before the quantizers were stored in Keras's legacy format."""
    config = tfq.configs.LayerQuantizeConfig("kernel", tfq.quantizers.TernaryQuantizer("ttq"))
    old = {
        "weight_attribute": "kernel",
        "weight_quantizer": keras.utils.serialize_keras_object(config.weight_quantizer),
        "activation_quantizer": keras.utils.serialize_keras_object(config.activation_quantizer),
    }
    assert "registered_name" in old["weight_quantizer"]
    assert tfq.configs.LayerQuantizeConfig.from_config(old) == config


_KERAS3_SCRIPT = """
import importlib.metadata, sys
import numpy as np
import keras as keras3                      # imported before tfquant: the Keras 3 package
assert keras3.__version__.startswith("3."), keras3.__version__
import tfquant as tfq

keras = tfq.keras
layers = keras3.layers
model3 = keras3.Sequential(
    [keras3.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(3)]
)
try:
    tfq.quantize_model(model3, tfq.schemes.Ternary())
except TypeError as error:
    message = str(error)
else:
    sys.exit("a Keras 3 model was accepted")
assert "Keras 3" in message and "set_weights(model.get_weights())" in message, message
# The advice: same architecture in tfq.keras, weights copied over.
model2 = keras.Sequential(
    [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]
)
model2.set_weights(model3.get_weights())
x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
np.testing.assert_allclose(model2.predict(x, verbose=0), np.asarray(model3(x)), atol=1e-6)
tfq.quantize_model(model2, tfq.schemes.Ternary())
print("advice works")
"""


def test_keras3_model_error_gives_advice_that_works():
    # In a fresh interpreter: inside the suite other imports decide what `keras` names.
    pytest.importorskip("keras")
    if not importlib.metadata.version("keras").startswith("3."):
        pytest.skip("the installed `keras` package is not Keras 3")
    result = subprocess.run(
        [sys.executable, "-c", _KERAS3_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "advice works" in result.stdout
