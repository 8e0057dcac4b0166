"""TFLite Micro: the exported digits model loads in the reference interpreter, reports its
arena, and computes what LiteRT computes."""

import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant import export
from tfquant.export import micro


@pytest.fixture(scope="module")
def digits_tflite(float_model, digits):
    (x, y), _ = digits
    qmodel = compile_model(tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3)))
    qmodel.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    return export.to_tflite(qmodel, representative_data=x[:32], batch_size=1)


def test_micro_runs_the_model_like_litert(digits_tflite, digits):
    _, (x_test, _) = digits
    report = micro.micro_report(digits_tflite, x_test[:50])
    # The arena holds at least the largest activation pair (8x8x16 in, 8x8x32 out, int8).
    assert report.arena_bytes == report.head_bytes + report.tail_bytes
    assert report.head_bytes >= 8 * 8 * 16 + 8 * 8 * 32
    assert report.samples == 50
    assert report.agreement >= 0.98 and report.max_output_difference <= 1
    assert micro.MicroReport(**report.get_config()) == report


def test_micro_arena_too_small_and_bad_input(digits_tflite):
    with pytest.raises(ValueError, match="does not load in TFLite Micro"):
        micro.micro_report(digits_tflite, arena_size=2048)
    with pytest.raises(ValueError, match="arena_size must be"):
        micro.micro_report(digits_tflite, arena_size=16)
    with pytest.raises(TypeError, match="tfl must be"):
        micro.micro_report("model.tflite")
    with pytest.raises(ValueError, match="Arena allocation"):
        micro.parse_allocations("nothing here")


def test_missing_package_says_what_to_install(monkeypatch, digits_tflite):
    import builtins

    real_import = builtins.__import__

    def no_micro(name, *args, **kwargs):
        if name.startswith("tflite_micro"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_micro)
    with pytest.raises(export.TargetUnavailableError, match="pip install tflite-micro"):
        micro.micro_report(digits_tflite)
