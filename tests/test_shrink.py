"""tfq.shrink on digits: planted dead channels (and those GradualPruning(structure="channel")
zeroes) are removed through Flatten, BatchNorm, DepthwiseConv2D, Add and Concatenate; the
shrunk model predicts bit-identically, exports exactly, and bad inputs are refused."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model, subclassed_model
from tfquant import export
from tfquant._keras import quantized_weights

keras = tfq.keras
layers = keras.layers


def _fit(model, digits, epochs=1):
    (x, y), _ = digits
    compile_model(model).fit(x[:512], y[:512], epochs=epochs, batch_size=64, verbose=0)
    return model


def _qat(model, scheme, digits):
    """The QAT model, fitted one short epoch so that its activation ranges are learned."""
    return _fit(tfq.quantize_model(model, scheme), digits)


def _kill(qmodel, dead):
    """Zeroes the kernel slices (and biases) of the output channels `dead[wrapper name]`."""
    for wrapper, kernel, _, _ in quantized_weights(qmodel):
        if wrapper.name not in dead:
            continue
        values = kernel.numpy()
        if isinstance(wrapper.layer, layers.DepthwiseConv2D):
            values[:, :, dead[wrapper.name], :] = 0
        else:
            values[..., dead[wrapper.name]] = 0
        kernel.assign(values)
        bias = wrapper.layer.bias.numpy()
        bias[dead[wrapper.name]] = 0
        wrapper.layer.bias.assign(bias)


def _quiet_batchnorm(qmodel, name, channels):
    """Makes BatchNorm `name` map a zero input to -1 on `channels` (ReLU then gives 0)."""
    batchnorm = qmodel.get_layer(name).layer
    for variable, value in ((batchnorm.beta, -1.0), (batchnorm.moving_mean, 0.0)):
        values = variable.numpy()
        values[channels] = value
        variable.assign(values)


def _check_identical(qmodel, shrunk, digits, exact=True):
    """Bit-identical outputs; or (`exact=False`) bit-identical on >= 99 % of the samples and
    within one step of the output's 8-bit grid on the others: a removed zero term changes
    the float summation order of the kept ones (oneDNN blocks the dot products by length),
    which can move an intermediate activation across a rounding boundary of its 8-bit
    fake quantization (seen on 1 of 360 digits)."""
    _, (x_test, _) = digits
    ours, theirs = shrunk.predict(x_test, verbose=0), qmodel.predict(x_test, verbose=0)
    if exact:
        np.testing.assert_array_equal(ours, theirs)
        return
    same = np.all(ours == theirs, axis=1)
    wrapper = qmodel.layers[-1]
    variables = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in wrapper.weights}
    step = (variables["post_activation_max"] - variables["post_activation_min"]) / 255
    assert same.mean() >= 0.99, same.mean()
    assert np.max(np.abs(ours - theirs)) <= step * 1.001


def _check_export(shrunk, digits, min_agreement=0.99):
    """Exact kernels and int8 ops (raises otherwise); returns the class agreement."""
    (x, _), (x_test, y_test) = digits
    tfl = export.to_tflite(shrunk, representative_data=x[:64])
    report = export.check_tflite(tfl, shrunk, x_test, y_test, min_agreement=min_agreement)
    return report.outputs[0].agreement


def test_cnn_flatten(float_model, digits):
    qmodel = _qat(float_model, tfq.schemes.Multivalued(bits=3, sparsity=0.5), digits)
    weights = [w.copy() for w in qmodel.get_weights()]
    _kill(qmodel, {"quant_conv1": [0, 3, 5], "quant_conv2": list(range(0, 32, 4))})
    pruned = [w.copy() for w in qmodel.get_weights()]
    shrunk, report = tfq.shrink(qmodel)
    assert report.removed == {"quant_conv1": 3, "quant_conv2": 8}
    assert shrunk.get_layer("quant_conv2").layer.kernel.shape == (3, 3, 13, 24)
    # 4x4 positions of 24 channels after the pooling: fc1 reads 384 of 512 inputs
    assert shrunk.get_layer("quant_fc1").layer.kernel.shape == (384, 64)
    assert all(np.array_equal(a, b) for a, b in zip(pruned, qmodel.get_weights(), strict=True))
    assert len(weights) == len(pruned)
    _check_identical(qmodel, shrunk, digits)
    _check_export(shrunk, digits)
    # the quantizers came along: same codebook, same threshold
    for (_, _, _, old), (_, _, _, new) in zip(
        quantized_weights(qmodel), quantized_weights(shrunk), strict=True
    ):
        np.testing.assert_array_equal(old["centers"].numpy(), new["centers"].numpy())
        assert old["zero_threshold"].numpy() == new["zero_threshold"].numpy()


def test_mlp_and_a_dead_unit_with_bias_is_kept(digits):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Flatten(name="flatten"),
            layers.Dense(32, activation="relu", name="fc1"),
            layers.Dense(16, name="fc2"),
            layers.Dense(10, name="logits"),
        ]
    )
    qmodel = _qat(_fit(model, digits), tfq.schemes.Multivalued(bits=2, sparsity=0.3), digits)
    _kill(qmodel, {"quant_fc1": [1, 2, 3], "quant_fc2": [0, 5]})
    bias = qmodel.get_layer("quant_fc2").layer.bias
    bias.assign(np.where(np.arange(16) == 5, 0.5, bias.numpy()))  # unit 5 outputs 0.5: kept
    relu_bias = qmodel.get_layer("quant_fc1").layer.bias
    relu_bias.assign(np.where(np.arange(32) == 3, -0.5, relu_bias.numpy()))  # relu(-0.5) = 0
    shrunk, report = tfq.shrink(qmodel)
    assert report.channels["quant_fc1"] == (32, 29)
    assert report.channels["quant_fc2"] == (16, 15)
    assert shrunk.get_layer("quant_fc2").layer.kernel.shape == (29, 15)
    _check_identical(qmodel, shrunk, digits)
    _check_export(shrunk, digits)


def _residual_depthwise(digits):
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = layers.BatchNormalization(name="bn2")(y)
    y = layers.ReLU(name="relu2")(y)
    y = layers.Conv2D(8, 1, name="pw")(y)
    z = layers.Add(name="add")([x, y])
    z = layers.Concatenate(name="cat")([z, x])
    z = layers.GlobalAveragePooling2D(name="gap")(z)
    outputs = layers.Dense(10, name="logits")(z)
    return _fit(keras.Model(inputs, outputs), digits, epochs=2)


def test_residual_depthwise_batchnorm(digits):
    qmodel = _qat(
        _residual_depthwise(digits), tfq.schemes.Multivalued(bits=3, sparsity=0.3), digits
    )
    # conv1 channels 1, 2 dead (BN maps them to -1, ReLU to 0): the depthwise channels they
    # feed and bn2 go too. pw channel 4 is dead but the Add needs it (conv1's channel 4 is
    # alive): kept. pw channels 1, 2 are dead and the sum's other branch too: removed.
    _kill(qmodel, {"quant_conv1": [1, 2], "quant_pw": [1, 2, 4]})
    _kill(qmodel, {"quant_dw": [1, 2]})  # bn2(dw's bias) < 0 whatever the training gave
    _quiet_batchnorm(qmodel, "quant_bn1", [1, 2])
    _quiet_batchnorm(qmodel, "quant_bn2", [1, 2])
    shrunk, report = tfq.shrink(qmodel)
    assert report.channels == {
        "quant_conv1": (8, 6),
        "quant_dw": (8, 6),
        "quant_pw": (8, 6),
        "quant_logits": (10, 10),
    }
    assert shrunk.get_layer("quant_bn2").layer.gamma.shape == (6,)
    assert shrunk.get_layer("quant_logits").layer.kernel.shape == (12, 10)
    _check_identical(qmodel, shrunk, digits)
    # On this briefly trained residual net TFLite's classes differ from Keras' on a few
    # digits for the full model too (its kernels are still exact; the cause is not in
    # shrink): the shrunk file agrees exactly as often as the full one.
    assert _check_export(shrunk, digits, 0.9) == _check_export(qmodel, digits, 0.9)


def test_a_dead_channel_the_sum_needs_is_kept(digits):
    qmodel = _qat(
        _residual_depthwise(digits), tfq.schemes.Multivalued(bits=3, sparsity=0.3), digits
    )
    _kill(qmodel, {"quant_pw": [4]})
    with pytest.warns(UserWarning, match="nothing to remove"):
        shrunk, report = tfq.shrink(qmodel)
    assert report.removed == {}
    _check_identical(qmodel, shrunk, digits)


def test_bad_inputs(float_model):
    with pytest.raises(TypeError, match="qmodel"):
        tfq.shrink("model.keras")
    with pytest.raises(ValueError, match="qmodel must be a QAT model"):
        tfq.shrink(float_model)

    sub = subclassed_model()
    with pytest.raises(ValueError, match="subclassed"):
        tfq.shrink(sub)


def test_whole_kernel_quantizer_is_refused(float_model):
    # TWN's per-layer threshold is 0.7 * mean|w| over the whole kernel: cutting the zero
    # channels out would move it, so shrink refuses instead of changing the kept weights.
    qmodel = tfq.quantize_model(float_model, tfq.schemes.Ternary(per_channel=False))
    _kill(qmodel, {"quant_conv2": list(range(16))})
    with pytest.raises(ValueError, match="depend on the whole kernel"):
        tfq.shrink(qmodel)


def test_user_model_untouched_and_report_round_trip(float_model):
    qmodel = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2, sparsity=0.5))
    _kill(qmodel, {"quant_fc1": [0, 1]})
    before = [w.copy() for w in qmodel.get_weights()]
    shrunk, report = tfq.shrink(qmodel)
    assert all(np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights(), strict=True))
    assert shrunk is not qmodel and report.removed == {"quant_fc1": 2}
    assert tfq.ShrinkReport.from_config(report.get_config()) == report


def test_structured_gradual_pruning_then_shrink(float_model, digits):
    (x, y), _ = digits
    scheme = tfq.schemes.Multivalued(bits=3, sparsity=0.5, layers={"logits": {"sparsity": 0.0}})
    qmodel = compile_model(tfq.quantize_model(float_model, scheme))
    pruning = tfq.callbacks.GradualPruning(end_epoch=2, frequency=5, verbose=0, structure="channel")
    history = qmodel.fit(x[:512], y[:512], epochs=3, batch_size=32, verbose=0, callbacks=[pruning])
    for name, channels in (("quant_conv1", 16), ("quant_conv2", 32), ("quant_fc1", 64)):
        assert history.history[f"{name}/channel_sparsity"][-1] == 0.5
        wrapper = qmodel.get_layer(name)
        (_, kernel, quantizer, state), *_ = (
            q for q in quantized_weights(qmodel) if q[0] is wrapper
        )
        hard = np.asarray(quantizer.hard_quantize(kernel, state)).reshape(-1, channels)
        dead = np.all(hard == 0, axis=0)
        assert dead.sum() == channels // 2  # whole channels, after the last epoch's steps too
        assert np.all(kernel.numpy().reshape(-1, channels)[:, dead] == 0)
        assert np.all(wrapper.layer.bias.numpy()[dead] == 0)
        assert np.all(hard[:, ~dead].any(axis=0))  # no other channel was zeroed
    shrunk, report = tfq.shrink(qmodel)
    assert report.removed == {"quant_conv1": 8, "quant_conv2": 16, "quant_fc1": 32}
    _check_identical(qmodel, shrunk, digits, exact=False)
    _check_export(shrunk, digits)


def test_channel_pruning_through_batchnorm_then_shrink(digits):
    # Conv + BatchNorm + ReLU with positive BatchNorm offsets: a pruned filter alone would
    # leave its channel at the constant beta > 0 after the ReLU, which shrink must keep.
    # Channel pruning holds the BatchNorm's gamma and beta at 0 on the pruned channels too.
    (x, y), _ = digits
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for index in (1, 2):
        h = layers.Conv2D(8, 3, padding="same", use_bias=False, name=f"conv{index}")(h)
        h = layers.BatchNormalization(name=f"bn{index}", beta_initializer="ones")(h)
        h = layers.ReLU(name=f"relu{index}")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = _fit(keras.Model(inputs, layers.Dense(10, name="logits")(h)), digits)
    scheme = tfq.schemes.Multivalued(bits=3, sparsity=0.5, layers={"logits": {"sparsity": 0.0}})
    qmodel = compile_model(tfq.quantize_model(model, scheme))
    pruning = tfq.callbacks.GradualPruning(end_epoch=1, frequency=5, verbose=0, structure="channel")
    qmodel.fit(x[:512], y[:512], epochs=2, batch_size=32, verbose=0, callbacks=[pruning])
    kernels = {wrapper.name: kernel.numpy() for wrapper, kernel, _, _ in quantized_weights(qmodel)}
    for index in (1, 2):
        dead = np.all(kernels[f"quant_conv{index}"] == 0, axis=(0, 1, 2))
        assert dead.sum() == 4
        norm = qmodel.get_layer(f"quant_bn{index}").layer
        assert np.all(norm.gamma.numpy()[dead] == 0) and np.all(norm.beta.numpy()[dead] == 0)
        assert np.all(norm.beta.numpy()[~dead] != 0)  # the kept channels' offsets train on
    shrunk, report = tfq.shrink(qmodel)
    assert report.removed == {"quant_conv1": 4, "quant_conv2": 4}
    assert shrunk.get_layer("quant_bn2").layer.gamma.shape == (4,)
    _check_identical(qmodel, shrunk, digits, exact=False)
    # both files exact (the pruned model's folded BatchNorm factor is 0 on the dead channels)
    assert _check_export(shrunk, digits, 0.9) == _check_export(qmodel, digits, 0.9)


def test_structure_option():
    pruning = tfq.callbacks.GradualPruning(end_epoch=1, structure="channel")
    clone = tfq.callbacks.GradualPruning.from_config(pruning.get_config())
    assert clone.get_config() == pruning.get_config()
    with pytest.raises(ValueError, match="structure must be one of 'weight', 'channel'"):
        tfq.callbacks.GradualPruning(end_epoch=1, structure="filter")


def test_an_input_feature_no_kernel_reads_keeps_the_input_shape(digits):
    """A first Dense (straight after the input) whose kernel ignores some input features:
    the model input and the kernel's rows keep their size, only dead units go."""
    (x, y), (x_test, y_test) = digits
    flat = ((x.reshape(len(x), -1), y), (x_test.reshape(len(x_test), -1), y_test))
    model = keras.Sequential(
        [
            keras.Input((64,)),
            layers.Dense(16, activation="relu", name="fc1"),
            layers.Dense(10, name="logits"),
        ]
    )
    qmodel = _qat(_fit(model, flat), tfq.schemes.Multivalued(bits=2, sparsity=0.3), flat)
    (kernel,) = [k for w, k, _, _ in quantized_weights(qmodel) if w.name == "quant_fc1"]
    kernel.assign(np.where(np.arange(64)[:, None] < 8, 0.0, kernel.numpy()))  # 8 unread pixels
    _kill(qmodel, {"quant_fc1": [4]})
    shrunk, report = tfq.shrink(qmodel)
    assert shrunk.input_shape == qmodel.input_shape
    assert shrunk.get_layer("quant_fc1").layer.kernel.shape == (64, 15)
    assert report.channels["quant_fc1"] == (16, 15)
    _check_identical(qmodel, shrunk, flat)
