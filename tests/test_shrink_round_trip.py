"""A shrunk model is a first-class QAT model (issue 22): a LeNet, a 2-block ResNet and a
depthwise net with planted dead channels shrink to models that predict what the pruned ones
do, save and load (SavedModel, .keras), compress to fewer bytes and decompress into the
architecture they were shrunk from, and export exactly (`to_tflite`, `to_micro`); Conv1D and
Conv2DTranspose lose their dead channels too; channel pruning zeroes the planted channels."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tests.test_saving_formats import assert_same_model
from tests.test_shrink import _check_identical, _fit, _kill, _qat, _quiet_batchnorm
from tfquant import export
from tfquant._keras import quantized_weights
from tfquant.coding import CompressedFormatError

keras = tfq.keras
layers = keras.layers


def _silent_batchnorm(qmodel, name, channels):
    """Makes BatchNorm `name` map a zero input to exactly 0 on `channels`."""
    batchnorm = qmodel.get_layer(name).layer
    for variable in (batchnorm.beta, batchnorm.moving_mean):
        values = variable.numpy()
        values[channels] = 0.0
        variable.assign(values)


def _conv_bn(x, filters, name, relu=True, **kwargs):
    x = layers.Conv2D(filters, 3, padding="same", name=name, **kwargs)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _resnet(digits):
    """Stem + two residual blocks (conv-BN-ReLU-conv-BN, identity skip) + head."""
    inputs = keras.Input((8, 8, 1))
    x = _conv_bn(inputs, 8, "stem")
    for block in (1, 2):
        y = _conv_bn(x, 8, f"b{block}a")
        y = _conv_bn(y, 8, f"b{block}b", relu=False)
        x = layers.ReLU(name=f"b{block}_out")(layers.Add(name=f"b{block}_add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return _fit(keras.Model(inputs, layers.Dense(10, name="logits")(x)), digits)


def _depthwise(digits):
    """Conv-BN-ReLU, depthwise-BN-ReLU, pointwise-BN-ReLU, SeparableConv2D, head."""
    inputs = keras.Input((8, 8, 1))
    x = _conv_bn(inputs, 8, "conv")
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.ReLU(name="dw_relu")(layers.BatchNormalization(name="dw_bn")(x))
    x = _conv_bn(x, 12, "pw")
    x = layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return _fit(keras.Model(inputs, layers.Dense(10, name="logits")(x)), digits)


def _plant_lenet(qmodel):
    _kill(qmodel, {"quant_conv1": [0, 3, 5], "quant_conv2": list(range(0, 32, 4))})
    _kill(qmodel, {"quant_fc1": list(range(0, 64, 3))})
    return {
        "quant_conv1": (16, 13),
        "quant_conv2": (32, 24),
        "quant_fc1": (64, 42),
        "quant_logits": (10, 10),
    }


def _plant_resnet(qmodel):
    # Inside the blocks: conv a's dead channels, ReLU(BN(0)) = 0, leave with conv b's inputs.
    _kill(qmodel, {"quant_b1a": [1, 2], "quant_b2a": [0, 3]})
    _quiet_batchnorm(qmodel, "quant_b1a_bn", [1, 2])
    _quiet_batchnorm(qmodel, "quant_b2a_bn", [0, 3])
    # Channel 5 of the residual stream is 0 in the stem and in both blocks' sums: it goes
    # from the stem, from both conv b's and from the head's inputs.
    _kill(qmodel, {"quant_stem": [5], "quant_b1b": [5], "quant_b2b": [5]})
    for name in ("quant_stem_bn", "quant_b1b_bn", "quant_b2b_bn"):
        _silent_batchnorm(qmodel, name, [5])
    return {
        "quant_stem": (8, 7),
        "quant_b1a": (8, 6),
        "quant_b1b": (8, 7),
        "quant_b2a": (8, 6),
        "quant_b2b": (8, 7),
        "quant_logits": (10, 10),
    }


def _plant_depthwise(qmodel):
    _kill(qmodel, {"quant_conv": [2, 5], "quant_pw": [0, 7], "quant_sep_pointwise": [1, 4]})
    _quiet_batchnorm(qmodel, "quant_conv_bn", [2, 5])
    _quiet_batchnorm(qmodel, "quant_pw_bn", [0, 7])
    # The depthwise channels that conv's dead 2 and 5 feed output their bias through dw_bn
    # and ReLU: planted to 0 too, so that whether they go does not depend on the training.
    _kill(qmodel, {"quant_dw": [2, 5]})
    _quiet_batchnorm(qmodel, "quant_dw_bn", [2, 5])
    # conv's channels 2, 5 take the depthwise channels they feed with them; pw's 0 and 7
    # take the separable conv's depthwise channels; its pointwise part loses 1 and 4.
    return {
        "quant_conv": (8, 6),
        "quant_dw": (8, 6),
        "quant_pw": (12, 10),
        "quant_sep_depthwise": (12, 10),
        "quant_sep_pointwise": (8, 6),
        "quant_logits": (10, 10),
    }


NETWORKS = {
    "lenet": (None, _plant_lenet),
    "resnet": (_resnet, _plant_resnet),
    "depthwise": (_depthwise, _plant_depthwise),
}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request, float_model, digits):
    """(name, float model, scheme, pruned QAT model, expected channels, shrunk, report)."""
    build, plant = NETWORKS[request.param]
    model = float_model if build is None else build(digits)
    scheme = tfq.schemes.Multivalued(bits=3, sparsity=0.3)
    qmodel = _qat(model, scheme, digits)
    expected = plant(qmodel)
    shrunk, report = tfq.shrink(qmodel)
    return request.param, model, scheme, qmodel, expected, shrunk, report


def test_shrunk_model_predicts_and_saves(network, digits, tmp_path):
    name, _, _, qmodel, expected, shrunk, report = network
    _, (x_test, _) = digits
    assert report.channels == expected
    _check_identical(qmodel, shrunk, digits)
    # .keras through tfq.load_model; SavedModel (slower to write) through Keras's own loader,
    # for one of the networks.
    shrunk.save(tmp_path / "shrunk.keras")
    assert_same_model(tfq.load_model(tmp_path / "shrunk.keras"), shrunk, x_test)
    if name == "lenet":
        shrunk.save(tmp_path / "shrunk")
        assert_same_model(keras.models.load_model(tmp_path / "shrunk"), shrunk, x_test)


def test_shrunk_model_compresses_smaller_and_decompresses(network, digits):
    name, model, scheme, qmodel, _, shrunk, _ = network
    _, (x_test, _) = digits
    # The container holds only the kept channels' weights: fewer bytes than the pruned
    # model's, even though that one codes its dead rows and columns as flags.
    blob, pruned_blob = tfq.coding.compress(shrunk), tfq.coding.compress(qmodel)
    kept = sum(int(np.prod(k.shape)) for _, k, _, _ in quantized_weights(shrunk))
    assert blob.float_bytes == 4 * kept < pruned_blob.float_bytes
    assert blob.nbytes < pruned_blob.nbytes
    # Decompressed into a fresh QAT model of the unshrunk architecture, it comes back as a
    # new shrunk model (the kernels' shapes give the channel counts) that predicts the same.
    fresh = tfq.quantize_model(keras.models.clone_model(model), scheme)
    before = [w.copy() for w in fresh.get_weights()]
    restored = tfq.coding.decompress(blob.to_bytes(), fresh)
    assert restored is not fresh
    assert all(np.array_equal(a, b) for a, b in zip(before, fresh.get_weights(), strict=True))
    np.testing.assert_array_equal(
        restored.predict(x_test, verbose=0), shrunk.predict(x_test, verbose=0)
    )
    # ... and into a model of the shrunk architecture in place (the ordinary path).
    assert tfq.coding.decompress(blob.to_bytes(), restored) is restored
    # Without training state, smaller still, and it too rebuilds the shrunk architecture.
    lean = tfq.coding.compress(shrunk, include_training_state=False)
    assert lean.nbytes < blob.nbytes
    fresh = tfq.quantize_model(keras.models.clone_model(model), scheme)
    np.testing.assert_array_equal(
        tfq.coding.decompress(lean.to_bytes(), fresh).predict(x_test, verbose=0),
        shrunk.predict(x_test, verbose=0),
    )
    if name == "lenet":  # not a shrunk version of the model passed: the error says what fits
        config = model.get_config()  # the same layers, but conv1's kernel is 2x2
        (conv1,) = [c for c in config["layers"] if c["config"]["name"] == "conv1"]
        conv1["config"]["kernel_size"] = (2, 2)
        other = tfq.quantize_model(keras.Sequential.from_config(config), scheme)
        before = [w.copy() for w in other.get_weights()]
        with pytest.raises(CompressedFormatError, match="the shrunk model or the model it was"):
            tfq.coding.decompress(blob.to_bytes(), other)
        assert all(np.array_equal(a, b) for a, b in zip(before, other.get_weights(), strict=True))


def test_shrunk_model_exports_exactly(network, digits):
    _, _, _, _, _, shrunk, _ = network
    (x, _), (x_test, y_test) = digits
    # Exact int8 kernels (check_tflite raises otherwise), then TFLM's LUTs, proved identical.
    tfl = export.to_tflite(shrunk, representative_data=x[:32], batch_size=1)
    tflite = export.check_tflite(tfl, shrunk, x_test[:120], y_test[:120], min_agreement=0.9)
    assert tflite.ok and all(k.exact for k in tflite.kernels), tflite.failures()
    _, micro = export.to_micro(shrunk, x[:32], int8_tflite=tfl)
    assert micro.identical_outputs and all(k.codes_read_back for k in micro.kernels)
    assert {k.layer for k in micro.kernels} == {w.name for w, _, _, _ in quantized_weights(shrunk)}


def test_a_layer_called_twice_is_refused():
    inputs = keras.Input((4,))
    dense = layers.Dense(4, name="twice")
    outputs = layers.Dense(2, name="out")(dense(dense(inputs)))
    qmodel = tfq.quantize_model(keras.Model(inputs, outputs), tfq.schemes.Multivalued(bits=2))
    with pytest.raises(ValueError, match="uses layer 'quant_twice' 2 times"):
        tfq.shrink(qmodel)


def _conv1d(digits):
    inputs = keras.Input((8, 8))  # the digit's rows as a sequence of 8 steps
    x = layers.Conv1D(8, 3, activation="relu", name="c1")(inputs)
    x = layers.Conv1D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.MaxPooling1D(name="pool")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x))


def _transpose(digits):
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    x = layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="t1")(x)
    x = layers.Conv2DTranspose(6, 3, activation="relu", name="t2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x))


@pytest.mark.parametrize(
    ("build", "dead", "expected"),
    [
        (
            _conv1d,
            {"quant_c1": [1, 6], "quant_c2": [3]},
            {"quant_c1": (8, 6), "quant_c2": (8, 7), "quant_logits": (10, 10)},
        ),
        (
            _transpose,
            {"quant_c1": [2], "quant_t1": [0, 5], "quant_t2": [1]},
            {"quant_c1": (6, 5), "quant_t1": (8, 6), "quant_t2": (6, 5), "quant_logits": (10, 10)},
        ),
    ],
    ids=["conv1d", "conv2d_transpose"],
)
def test_conv1d_and_conv2d_transpose_channels_are_removed(build, dead, expected, digits):
    (x, y), (x_test, y_test) = digits
    if build is _conv1d:
        digits = ((x.reshape(-1, 8, 8), y), (x_test.reshape(-1, 8, 8), y_test))
    qmodel = _qat(
        _fit(build(digits), digits), tfq.schemes.Multivalued(bits=3, sparsity=0.3), digits
    )
    _kill_any(qmodel, dead)
    shrunk, report = tfq.shrink(qmodel)
    assert report.channels == expected
    _check_identical(qmodel, shrunk, digits)


def _kill_any(qmodel, dead):
    """`_kill` for any kernel layout: output channels on the quantizer's channel axis."""
    for wrapper, kernel, quantizer, _ in quantized_weights(qmodel):
        if wrapper.name not in dead:
            continue
        view = np.array(quantizer.channel_view(kernel.numpy()))
        view[:, dead[wrapper.name]] = 0
        kernel.assign(np.asarray(quantizer.from_channel_view(view)))
        bias = wrapper.layer.bias.numpy()
        bias[dead[wrapper.name]] = 0
        wrapper.layer.bias.assign(bias)


def test_channel_pruning_drives_planted_dead_channels_to_exactly_zero(float_model, digits):
    """GradualPruning(structure="channel") is tfquant's group sparsity (a zero interval
    widened by channel L2 norm, not a group-lasso penalty): channels planted with a tiny norm
    are the ones it zeroes, exactly and for good, while training pulls on them."""
    (x, y), _ = digits
    scheme = tfq.schemes.Multivalued(bits=3, sparsity=0.25, layers={"logits": {"sparsity": 0.0}})
    qmodel = compile_model(tfq.quantize_model(float_model, scheme))
    planted = {"quant_conv1": [1, 6, 9, 14], "quant_fc1": list(range(0, 64, 4))}
    for wrapper, kernel, quantizer, _ in quantized_weights(qmodel):
        if wrapper.name in planted:
            view = np.array(quantizer.channel_view(kernel.numpy()))
            view[:, planted[wrapper.name]] *= 1e-3
            kernel.assign(np.asarray(quantizer.from_channel_view(view)))
    pruning = tfq.callbacks.GradualPruning(end_epoch=1, frequency=2, verbose=0, structure="channel")
    qmodel.fit(x[:192], y[:192], epochs=2, batch_size=32, verbose=0, callbacks=[pruning])
    for wrapper, kernel, quantizer, state in quantized_weights(qmodel):
        if wrapper.name not in planted:
            continue
        view = np.asarray(quantizer.channel_view(kernel.numpy()))
        hard = np.asarray(quantizer.channel_view(quantizer.hard_quantize(kernel, state)))
        zero = np.flatnonzero(np.all(view == 0, axis=0))
        assert zero.tolist() == planted[wrapper.name], wrapper.name
        assert np.flatnonzero(np.all(hard == 0, axis=0)).tolist() == planted[wrapper.name]
        assert np.all(wrapper.layer.bias.numpy()[zero] == 0)
    _, report = tfq.shrink(qmodel)
    assert report.removed == {"quant_conv1": 4, "quant_conv2": 8, "quant_fc1": 16}
