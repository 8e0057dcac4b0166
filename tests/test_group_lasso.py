"""GroupLasso (issue 22): the penalty over output channels, its axes for every layer type,
a zero gradient at a zero channel, saving, and planted useless channels driven to exactly 0
by the penalty (not without it), then removed by `tfq.shrink`."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tests.test_shrink import _check_identical
from tfquant._keras import quantized_weights, tf
from tfquant.regularizers import GroupLasso, with_group_lasso

keras = tfq.keras
layers = keras.layers


def test_penalty_is_the_group_lasso_of_the_output_channels():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    expected = 0.1 * np.sqrt(36) * np.linalg.norm(kernel.reshape(-1, 5), axis=0).sum()
    np.testing.assert_allclose(float(GroupLasso(0.1)(kernel)), expected, rtol=1e-5)
    # Conv2DTranspose: [h, w, out, in]
    transposed = GroupLasso(0.1, channel_axis=-2).channel_norms(kernel)
    np.testing.assert_allclose(
        transposed, np.linalg.norm(kernel.transpose(0, 1, 3, 2).reshape(-1, 4), axis=0), 1e-5
    )


def test_depthwise_groups_follow_the_layers_output_channels():
    layer = layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)
    x = np.random.default_rng(1).normal(size=(1, 5, 5, 3)).astype(np.float32)
    layer.build(x.shape)
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[:, :, 1, 0] = 1.0  # input channel 1, multiplier 0
    layer.depthwise_kernel.assign(kernel)
    live = np.flatnonzero(np.abs(np.asarray(layer(x))).sum(axis=(0, 1, 2)))
    norms = GroupLasso(1.0, depthwise=True).channel_norms(kernel).numpy()
    assert live.tolist() == np.flatnonzero(norms).tolist() == [2]


def test_a_zero_channel_gets_a_zero_gradient():
    kernel = tf.Variable(np.array([[0.0, 3.0], [0.0, 4.0]], np.float32))
    with tf.GradientTape() as tape:
        loss = GroupLasso(1.0)(kernel)
    gradient = tape.gradient(loss, kernel).numpy()
    assert np.all(np.isfinite(gradient)) and np.all(gradient[:, 0] == 0)
    np.testing.assert_allclose(gradient[:, 1], np.sqrt(2) * np.array([0.6, 0.8]), rtol=1e-6)


def _mlp(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Flatten(name="flat"),
            layers.Dense(16, activation="relu", name="hidden"),
            layers.Dense(10, name="out"),
        ]
    )
    compile_model(model, 1e-2).fit(x, y, epochs=10, batch_size=64, verbose=0)
    return model


def _train_with_useless_units(model, digits, strength):
    """QAT with hidden units 0-5 made useless (their rows of `out` zero and `out` frozen):
    only the penalty acts on their incoming weights."""
    (x, y), _ = digits
    if strength:
        model = with_group_lasso(model, strength, layers=["hidden"])
    qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3, sparsity=0.3))
    weights = {w.name: k for w, k, _, _ in quantized_weights(qmodel)}
    kernel = weights["quant_out"].numpy()
    kernel[:6] = 0.0
    weights["quant_out"].assign(kernel)
    qmodel.get_layer("quant_out").trainable = False
    compile_model(qmodel, 1e-2).fit(x, y, epochs=8, batch_size=64, verbose=0)
    hidden = {w.name: (k, q, s) for w, k, q, s in quantized_weights(qmodel)}["quant_hidden"]
    kernel, quantizer, state = hidden
    return qmodel, np.asarray(quantizer.hard_quantize(kernel, state))


def test_penalty_drives_useless_units_to_exactly_zero_and_shrink_removes_them(digits):
    model = _mlp(digits)
    before = [w.copy() for w in model.get_weights()]
    qmodel, hard = _train_with_useless_units(model, digits, strength=1e-3)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    dead = np.flatnonzero(~np.any(hard != 0, axis=0))
    assert set(range(6)) <= set(dead), np.abs(hard[:, :6]).sum(axis=0)
    # The penalty may take a weak unit the loss uses too; most of them stay.
    assert len(dead) <= 9
    (_, _), (x_test, y_test) = digits
    accuracy = np.mean(qmodel.predict(x_test, verbose=0).argmax(-1) == y_test)
    assert accuracy > 0.8
    shrunk, report = tfq.shrink(qmodel)
    # Units 0-5 go (nothing reads them); another zero unit goes if ReLU(bias) is 0.
    assert 16 - len(dead) <= report.channels["quant_hidden"][1] <= 10
    _check_identical(qmodel, shrunk, digits)
    # Without the penalty the same units keep weights off zero.
    _, unpenalized = _train_with_useless_units(model, digits, strength=None)
    assert np.any(unpenalized[:, :6] != 0)


def test_regularizer_survives_saving_and_config(digits, tmp_path):
    model = with_group_lasso(_mlp(digits), 2e-4)
    regularizer = model.get_layer("hidden").kernel_regularizer
    assert GroupLasso.from_config(regularizer.get_config()).get_config() == {
        "strength": 2e-4,
        "channel_axis": -1,
        "depthwise": False,
    }
    qmodel = compile_model(tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3)))
    assert len(qmodel.losses) == 2  # hidden and out
    qmodel.save(tmp_path / "q.keras")
    loaded = tfq.load_model(tmp_path / "q.keras")
    penalty = [float(v) for v in loaded.losses]
    np.testing.assert_allclose(penalty, [float(v) for v in qmodel.losses], rtol=1e-6)


def test_every_channel_layer_gets_its_axes():
    inputs = keras.Input((8, 8, 2))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = layers.Conv2DTranspose(3, 3, padding="same", name="up")(x)
    x = layers.SeparableConv2D(3, 3, padding="same", name="sep")(x)
    x = layers.Flatten()(x)
    model = keras.Model(inputs, layers.Dense(2, name="head")(x))
    penalized = with_group_lasso(model, 1e-3)
    get = penalized.get_layer
    assert get("dw").depthwise_regularizer.depthwise
    assert get("up").kernel_regularizer.channel_axis == -2
    assert get("conv").kernel_regularizer.channel_axis == -1
    assert get("sep").depthwise_regularizer is None  # SeparableConv2D: not a channel kernel
    assert get("head").kernel_regularizer is not None
    assert len(penalized.losses) == 4
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), penalized.predict(x, verbose=0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": 0}, "strength must be a number > 0. Received: strength=0"),
        ({"strength": "big"}, "Received: strength='big'"),
        ({"channel_axis": 0}, "channel_axis must be -1 .* Received: channel_axis=0"),
        ({"depthwise": 1}, "depthwise must be True or False. Received: depthwise=1"),
        ({"depthwise": True, "channel_axis": -2}, "channel_axis must be -1"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupLasso(**kwargs)


def test_with_group_lasso_refuses_what_it_cannot_do():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(3, kernel_regularizer="l2", name="reg"),
            layers.Dropout(0.1, name="drop"),
            layers.Dense(2, name="head"),
        ]
    )
    with pytest.raises(ValueError, match="'reg' already has a kernel_regularizer"):
        with_group_lasso(model)
    with pytest.raises(ValueError, match="names layers the model does not have: \\['nope'\\]"):
        with_group_lasso(model, layers=["nope"])
    with pytest.raises(ValueError, match="'drop' \\(Dropout\\) has no output-channel kernel"):
        with_group_lasso(model, layers=["drop"])
    with pytest.raises(TypeError, match="layers must be a list of layer names"):
        with_group_lasso(model, layers="head")
    with pytest.raises(TypeError, match="model must be a Keras 2"):
        with_group_lasso("model")
    assert with_group_lasso(model, layers=["head"]).get_layer("head").kernel_regularizer
    assert model.get_layer("head").kernel_regularizer is None
