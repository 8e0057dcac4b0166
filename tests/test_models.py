"""Every architecture builds, trains a step, quantizes with every scheme and exports an
exact full-integer TFLite model."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant import export, models

ARCHITECTURES = {
    "lenet300_100": (lambda: models.lenet300_100(), (28, 28, 1)),
    "lenet5": (lambda: models.lenet5(), (28, 28, 1)),
    "resnet20": (lambda: models.resnet20(), (32, 32, 3)),
    "tiny_mobilenet": (lambda: models.tiny_mobilenet(batch_size=None), (32, 32, 3)),
}
SCHEMES = {
    "multivalued": lambda: tfq.schemes.Multivalued(bits=3),
    "ternary": lambda: tfq.schemes.Ternary(),
    # Learned-basis activations are K-bit in Keras but 8-bit in TFLite: on these untrained,
    # near-tied logits that flips argmaxes; test_end_to_end checks them on a trained model.
    "lqnets": lambda: tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=None),
    "uniform": lambda: tfq.schemes.Uniform(bits=4),
}


# ResNet-20 with Ternary and Uniform(4): the BatchNorm-folded ResNet blocks of
# test_real_networks (TTQ, Uniform 8-bit and 4-bit) and every scheme on the other
# architectures cover them; each ResNet-20 case costs about 30 s of tracing.
CASES = [
    (name, scheme)
    for name in sorted(ARCHITECTURES)
    for scheme in sorted(SCHEMES)
    if not (name == "resnet20" and scheme in ("ternary", "uniform"))
]


@pytest.fixture(scope="module")
def trained_architecture(request):
    build, shape = ARCHITECTURES[request.param]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 64)
    # One noisy template per class: outputs that differ between samples, so agreement
    # measures the export and not ties between near-identical logits.
    templates = rng.uniform(0, 1, (10, *shape))
    x = (0.6 * templates[y] + 0.4 * rng.uniform(0, 1, (64, *shape))).astype(np.float32)
    model = compile_model(build())
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    # Two training steps barely move BatchNorm's moving statistics, and with their initial
    # values a deep net's inference output collapses towards zero: set them from the data.
    _batchnorm_statistics_from(model, x)
    return request.param, model, x, y


def _batchnorm_statistics_from(model, x):
    for layer in model.layers:
        if isinstance(layer, tfq.keras.layers.BatchNormalization):
            inputs = tfq.keras.Model(model.input, layer.input).predict(x, verbose=0)
            axes = tuple(range(inputs.ndim - 1))
            layer.moving_mean.assign(inputs.mean(axes))
            layer.moving_variance.assign(inputs.var(axes))


@pytest.mark.parametrize("trained_architecture, scheme", CASES, indirect=["trained_architecture"])
def test_quantize_train_export(trained_architecture, scheme):
    name, model, x, y = trained_architecture
    qmodel = compile_model(tfq.quantize_model(model, SCHEMES[scheme]()))
    qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0)
    tfl = export.to_tflite(qmodel, representative_data=x[:16])
    report = export.check_tflite(tfl, qmodel, x[:32], strict=False)
    assert not report.float_ops, (name, scheme, report.float_ops)
    assert not report.unmatched_layers
    assert all(k.exact for k in report.kernels), (name, scheme)
    assert report.agreement >= 0.9, (name, scheme, report.agreement)
    assert "MUL" not in report.ops, (name, scheme)  # every BatchNorm folded into a kernel
    keras_out = qmodel.predict(x[:32], verbose=0)
    assert np.ptp(keras_out, axis=0).max() > 0.1, "outputs do not depend on the input"


def test_tiny_mobilenet_is_static_batch_one():
    model = models.tiny_mobilenet()
    assert model.input_shape == (1, 32, 32, 3)


def test_mobilenet_v2_is_the_keras_applications_network():
    model = models.mobilenet_v2(alpha=0.35, input_shape=(32, 32, 3), classes=10)
    reference = tfq.keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    assert [type(layer).__name__ for layer in model.layers] == [
        type(layer).__name__ for layer in reference.layers
    ]
    assert [w.shape for w in model.weights] == [w.shape for w in reference.weights]
    model.set_weights(reference.get_weights())  # so Keras's published weights load too
    assert model.layers[-1].get_config()["activation"] == "linear"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0}, "alpha=0"),
        ({"alpha": "wide"}, "alpha='wide'"),
        ({"input_shape": (16, 16, 3)}, r"input_shape=\(16, 16, 3\)"),
        ({"input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
        ({"input_shape": (32, 32, 1)}, r"input_shape=\(32, 32, 1\)"),
    ],
)
def test_mobilenet_v2_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.mobilenet_v2(**kwargs)


def test_resnet_depth_is_checked():
    with pytest.raises(ValueError, match="depth=21"):
        models.cifar_resnet(21)


def test_train_cli_builds_mobilenet_v2_and_names_bad_inputs():
    from tfquant.models.train import UsageError, build_model

    model = build_model("mobilenet_v2", (32, 32, 3))
    assert model.output_shape == (None, 10)
    with pytest.raises(UsageError, match="mobilenet_v2"):
        build_model("mobilenet_v2", (28, 28, 1))
