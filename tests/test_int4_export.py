"""INT4 export (`to_tflite(..., int4=True)`) of LeNet-5: uniform 4-bit (per channel and per
layer), ternary and multivalued codebooks kept on the 4-bit grid (`int4_grid`) store every
conv and Dense kernel as INT4, checked by reading the flatbuffer's tensor types."""

import numpy as np
import pytest

import tfquant as tfq
from tfquant import export
from tfquant.export import flatbuffer
from tfquant.export.rewrite import filters
from tfquant.models import compile_classifier, lenet5
from tfquant.quantizers.multivalued import snap_centers

SCHEMES = {
    "uniform4_per_channel": lambda: tfq.schemes.Uniform(bits=4),
    "uniform4_per_layer": lambda: tfq.schemes.Uniform(bits=4, per_channel=False),
    "ternary": lambda: tfq.schemes.Ternary(),
    "multivalued3_int4_grid": lambda: tfq.schemes.Multivalued(bits=3, int4_grid=True),
}


def _lenet_digits(digits):
    """The 8x8 digits upsampled to LeNet-5's 28x28 input (3x nearest, 2 pixels of padding)."""
    (x, y), (x_test, y_test) = digits

    def upsample(images):
        big = np.kron(images, np.ones((1, 3, 3, 1), np.float32))
        return np.pad(big, ((0, 0), (2, 2), (2, 2), (0, 0)))

    return (upsample(x[:400]), y[:400]), (upsample(x_test[:200]), y_test[:200])


@pytest.fixture(scope="module")
def lenet(digits):
    data = _lenet_digits(digits)
    (x, y), _ = data
    model = compile_classifier(lenet5())
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model, data


def _kernel_filters(tfl):
    return [f for f in filters(flatbuffer.read_model(tfl)) if f.op != "GATHER"]


def _int4_byte_fraction(tfl):
    """Fraction of the stored kernel bytes (conv and Dense filters) that are INT4."""
    sizes = {
        t.name: (t.type, t.constant_bytes)
        for t in flatbuffer.stored_tensors(tfl)
        if t.constant_bytes
    }
    stored = [sizes[f.name] for f in _kernel_filters(tfl)]
    return sum(size for kind, size in stored if kind == "INT4") / sum(size for _, size in stored)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_int4_file_holds_every_kernel_as_int4(lenet, name):
    float_model, ((x, y), (x_test, _)) = lenet
    qmodel = compile_classifier(tfq.quantize_model(float_model, SCHEMES[name]()), 2e-4)
    qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0)
    int8_file = export.to_tflite(qmodel, x[:64])
    int4_file = export.to_tflite(qmodel, x[:64], int4=True)

    kernels = _kernel_filters(int4_file)
    assert sorted(f.op for f in kernels) == ["CONV_2D"] * 2 + ["FULLY_CONNECTED"] * 2
    assert [f.stored_type for f in kernels] == ["INT4"] * 4
    assert all(np.abs(f.codes).max() <= 7 for f in kernels)
    assert _int4_byte_fraction(int4_file) == 1.0
    assert flatbuffer.int4_fraction(int4_file) == 1.0
    assert len(int4_file) <= 0.55 * len(int8_file)  # measured 0.507 per layer, 0.522 per channel
    # Exact codes and scales, and TFLite's classes agree with Keras (both files).
    for tfl in (int4_file, int8_file):
        report = export.check_tflite(tfl, qmodel, data=x_test, min_agreement=0.95)
        assert report.ok


def test_int4_grid_keeps_centers_on_the_grid_through_a_schedule(float_model, digits):
    (x, y), _ = digits
    scheme = tfq.schemes.Multivalued(bits=2, int4_grid=True)
    qmodel = compile_classifier(tfq.quantize_model(float_model, scheme), 1e-3)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
    qmodel.fit(
        x[:256], y[:256], epochs=schedule.epochs_needed(qmodel), verbose=0, callbacks=[schedule]
    )
    for layer in qmodel.layers:
        for weight in layer.weights:
            if weight.name.endswith("centers:0"):
                centers = weight.numpy().astype(np.float64)
                codes = centers / (np.abs(centers).max() / 7)
                assert np.allclose(codes, np.round(codes), atol=1e-4), centers
                assert len(np.unique(np.round(codes))) == centers.size
    int4_file = export.to_tflite(qmodel, x[:64], int4=True)
    assert [f.stored_type for f in _kernel_filters(int4_file)] == ["INT4"] * 4
    assert export.check_tflite(int4_file, qmodel).ok


def test_snap_centers_on_the_4bit_grid_keeps_levels_distinct():
    centers = np.array([-0.5, -0.02, 0.0, 0.01, 0.03, 0.4, 0.45, 1.0])
    snapped = snap_centers(centers, codes=7)
    codes = snapped / (1.0 / 7)
    assert np.allclose(codes, np.round(codes), atol=1e-5)
    assert len(np.unique(np.round(codes))) == centers.size
    assert np.abs(np.round(codes)).max() == 7


@pytest.mark.parametrize("kwargs", [{"bits": 4}, {"levels": 16}, {"bits": 8}])
def test_int4_grid_refuses_more_than_15_levels(kwargs):
    with pytest.raises(ValueError, match="int4_grid=True allows at most 15 levels.*Received"):
        tfq.schemes.Multivalued(int4_grid=True, **kwargs)


def test_int4_grid_round_trips_through_config():
    scheme = tfq.schemes.Multivalued(bits=3, int4_grid=True, layers={"fc1": {"levels": 5}})
    again = tfq.schemes.Multivalued.from_config(scheme.get_config())
    assert again == scheme and again.get_config()["int4_grid"] is True
    quantizer = again.weight_quantizer()
    assert quantizer.int4_grid and quantizer.grid_codes == 7
    with pytest.raises(TypeError, match="int4_grid must be True or False. Received: int4_grid=1"):
        tfq.schemes.Multivalued(int4_grid=1)
