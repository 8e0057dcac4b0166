"""Export of models with several inputs and outputs (list or dict data, every output checked,
the file's I/O order mapped by name), kernels under tfmot's own 8-bit quantizer in summary and
check_tflite, and a LayerNormalization before a quantized Dense exported exactly."""

import warnings

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import tfquant as tfq
from tfquant import export
from tfquant.export import flatbuffer, rewrite
from tfquant.export import tflite as tflite_module

keras = tfq.keras
layers = keras.layers
_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _synthetic(samples=400, seed=0):
    rng = np.random.default_rng(seed)
    left = rng.normal(size=(samples, 6)).astype(np.float32)
    right = rng.normal(size=(samples, 4)).astype(np.float32)
    three = (left[:, 0] + right[:, 0] > 0).astype(int) + (left[:, 1] > 0.5)
    two = (right[:, 1] - left[:, 2] > 0).astype(int)
    return left, right, three, two


@pytest.fixture(scope="module")
def two_by_two():
    """Two inputs ("zeta" then "alpha": Keras order is not alphabetical), two branches
    concatenated, two heads ("zhead" 3 classes then "ahead" 2 classes)."""
    left, right, three, two = _synthetic()
    keras.utils.set_random_seed(0)
    zeta, alpha = keras.Input((6,), name="zeta"), keras.Input((4,), name="alpha")
    a = layers.Dense(16, activation="relu", name="branch_z")(zeta)
    b = layers.Dense(16, activation="relu", name="branch_a")(alpha)
    h = layers.Concatenate()([a, b])
    model = keras.Model(
        [zeta, alpha], [layers.Dense(3, name="zhead")(h), layers.Dense(2, name="ahead")(h)]
    )
    model.compile(keras.optimizers.Adam(1e-2), [_LOSS, _LOSS])
    model.fit([left, right], [three, two], epochs=10, batch_size=32, verbose=0)
    return model


SCHEMES = {
    "multivalued-3bit": lambda: tfq.schemes.Multivalued(bits=3),
    "uniform-8bit": lambda: tfq.schemes.Uniform(bits=8),
}


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def exported(request, two_by_two):
    left, right, three, two = _synthetic()
    qmodel = tfq.quantize_model(two_by_two, SCHEMES[request.param]())
    qmodel.compile(keras.optimizers.Adam(1e-3), [_LOSS, _LOSS])
    qmodel.fit([left, right], [three, two], epochs=1, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "The kernels of")  # no kernel left inexact
        tfl = export.to_tflite(qmodel, [left[:200], right[:200]])
    return qmodel, tfl


def test_two_inputs_two_outputs_export_exactly_with_list_or_dict_data(exported):
    qmodel, tfl = exported
    left, right, three, two = _synthetic()
    before = [w.copy() for w in qmodel.get_weights()]
    from_dict = export.to_tflite(qmodel, {"alpha": right[:200], "zeta": left[:200]})
    assert all(np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights(), strict=True))
    test = {"alpha": right[200:], "zeta": left[200:]}
    for file in (tfl, from_dict):
        report = export.check_tflite(
            file, qmodel, test, {"quant_zhead": three[200:], "quant_ahead": two[200:]},
            min_agreement=0.97,
        )  # fmt: skip
        assert report.ok and len(report.kernels) == 4
        assert all(k.exact and k.exactness == "codes" for k in report.kernels)
        assert [o.output for o in report.outputs] == list(qmodel.output_names)
        # Measured: 99.5-100 % per output on these 200 samples, margins of at most 1 step.
        assert all(o.agreement >= 0.97 for o in report.outputs), report.outputs
        assert report.agreement == min(o.agreement for o in report.outputs)
        assert report.keras_accuracy is None  # per output only, for several outputs
        for output in report.outputs:
            assert abs(output.tflite_accuracy - output.keras_accuracy) <= 0.03
        assert report.outputs[1].keras_accuracy > 0.7  # the model learned (chance 0.5)
    # Labels as a list in output order give the same per-output accuracies.
    listed = export.check_tflite(
        tfl, qmodel, [left[200:], right[200:]], [three[200:], None], min_agreement=0.97
    )
    assert listed.outputs[0].keras_accuracy == report.outputs[0].keras_accuracy
    assert listed.outputs[1].keras_accuracy is None


def test_every_input_and_output_is_int8(exported):
    _, tfl = exported
    interpreter = tflite_module.load_interpreter(tfl)
    details = interpreter.get_input_details() + interpreter.get_output_details()
    assert len(details) == 4
    assert all(d["dtype"] == np.int8 for d in details)
    float_io = export.to_tflite(exported[0], list(_synthetic()[:2]), int8_io=False)
    interpreter = tflite_module.load_interpreter(float_io)
    assert all(
        d["dtype"] == np.float32
        for d in interpreter.get_input_details() + interpreter.get_output_details()
    )


def test_run_tflite_maps_inputs_and_outputs_by_name(exported):
    qmodel, tfl = exported
    left, right, _, _ = _synthetic()
    keras_out = qmodel([left[:50], right[:50]], training=False)
    for inputs, model in (
        ([left[:50], right[:50]], None),  # the order to_tflite recorded in the file
        ({"alpha": right[:50], "zeta": left[:50]}, None),
        ([left[:50], right[:50]], qmodel),
    ):
        outputs = tflite_module.run_tflite(tfl, inputs, model=model)
        assert isinstance(outputs, list) and [o.shape for o in outputs] == [(50, 3), (50, 2)]
        for got, want in zip(outputs, keras_out, strict=True):
            agreement = np.mean(got.argmax(-1) == np.asarray(want).argmax(-1))
            assert agreement >= 0.96, agreement


class _Reversed:
    """An interpreter whose input and output details come in the reverse order."""

    def __init__(self, interpreter):
        self._interpreter = interpreter

    def get_input_details(self):
        return self._interpreter.get_input_details()[::-1]

    def get_output_details(self):
        return self._interpreter.get_output_details()[::-1]

    def __getattr__(self, name):
        return getattr(self._interpreter, name)


@pytest.mark.parametrize("signature", [True, False])
def test_io_order_does_not_depend_on_the_interpreter_order(exported, signature):
    qmodel, tfl = exported
    interpreter = tflite_module.load_interpreter(tfl)
    wanted = {}
    for kind, names, shapes in (
        ("inputs", qmodel.input_names, [(6,), (4,)]),
        ("outputs", qmodel.output_names, [(3,), (2,)]),
    ):
        plain = tflite_module.io_details(interpreter, kind, names)
        wanted[kind] = [d["index"] for d in plain]
        assert [tuple(d["shape"][1:]) for d in plain] == shapes
        proxy = _Reversed(interpreter)
        if not signature:  # then the tensor names ("serving_default_zeta:0") or shapes decide
            proxy.get_signature_list = dict
        flipped = tflite_module.io_details(proxy, kind, names, shapes)
        assert [d["index"] for d in flipped] == wanted[kind]
    ordered = tflite_module.io_details(interpreter, "inputs", qmodel.input_names)
    shapes = [tuple(d["shape"][1:]) for d in ordered]
    assert shapes == [(6,), (4,)]
    with pytest.raises(export.InvalidTfliteError, match="no inputs? named 'nope'"):
        tflite_module.io_details(interpreter, "inputs", ["nope", "zeta"])


def test_the_file_records_keras_io_order(exported):
    qmodel, tfl = exported
    import json

    recorded = json.loads(flatbuffer.metadata(tfl, tflite_module.IO_METADATA))
    assert recorded == {"inputs": ["zeta", "alpha"], "outputs": list(qmodel.output_names)}


@pytest.mark.parametrize(
    "data, error, fragment",
    [
        (lambda a, r: [a, r, r], ValueError, "must hold 2 arrays, one per model input"),
        (lambda a, r: [a], ValueError, "Received: 1 arrays"),
        (lambda a, r: {"zeta": a, "beta": r}, ValueError, "unknown ['beta']; missing ['alpha']"),
        (lambda a, r: [a, a], ValueError, "representative_data[1] must have shape (N, 4)"),
        (lambda a, r: {"zeta": a, "alpha": a}, ValueError, "representative_data['alpha']"),
        (lambda a, r: [a, r[:10]], ValueError, "representative_data[1] N=10"),
        (lambda a, r: a, TypeError, "a list (in model.inputs order) or a dict"),
        (lambda a, r: [a * np.nan, r], ValueError, "representative_data[0] must be finite"),
    ],
)
def test_bad_multi_input_data_is_named(exported, data, error, fragment):
    qmodel, _ = exported
    left, right, _, _ = _synthetic(40)
    with pytest.raises(error) as info:
        export.to_tflite(qmodel, data(left, right))
    assert fragment in str(info.value), str(info.value)
    if "shape" in fragment:
        assert "Received: shape (40, 6)" in str(info.value)


def test_bad_labels_and_check_data_are_named(exported):
    qmodel, tfl = exported
    left, right, three, _ = _synthetic(40)
    with pytest.raises(ValueError, match=r"data\[1\] must have shape"):
        export.check_tflite(tfl, qmodel, [left, left])
    with pytest.raises(ValueError, match="labels must be a list of 2 label arrays"):
        export.check_tflite(tfl, qmodel, [left, right], three)
    with pytest.raises(ValueError, match=r"unknown keys \['head'\]"):
        export.check_tflite(tfl, qmodel, [left, right], {"head": three})
    with pytest.raises(ValueError, match=r"labels\[0\] must hold one label per sample"):
        export.check_tflite(tfl, qmodel, [left, right], [three[:5], None])


def test_an_output_below_min_agreement_fails_the_check(exported):
    """Swapping the two heads' kernels in the Keras model leaves the file unchanged: the
    check must fail on agreement (and on the kernels), naming the output."""
    qmodel, tfl = exported
    left, right, _, _ = _synthetic()
    with tfmot.quantization.keras.quantize_scope():
        other = keras.models.clone_model(qmodel)
    other.set_weights(qmodel.get_weights())
    head = other.get_layer("quant_zhead").layer
    head.bias.assign(head.bias + np.array([5.0, 0.0, 0.0], np.float32))
    report = export.check_tflite(tfl, other, [left, right], strict=False)
    by_name = {o.output: o for o in report.outputs}
    assert by_name["quant_zhead"].agreement < 0.9
    assert by_name["quant_ahead"].agreement >= 0.97
    with pytest.raises(export.ExportCheckError, match="on output 'quant_zhead'"):
        export.check_tflite(tfl, other, [left, right])


def _tfmot_annotated():
    """A Dense annotated with tfmot's own 8-bit config, then one left to the scheme."""
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    inputs = keras.Input((8, 8, 1))
    first = layers.Dense(32, activation="relu", name="eight_bit")
    h = annotate(first, registry.get_quantize_config(first))(layers.Flatten()(inputs))
    outputs = annotate(layers.Dense(10, name="head"))(h)
    return keras.Model(inputs, outputs)


def test_a_tfmot_8bit_kernel_is_summarized_and_checked(digits):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(4)
    qmodel = tfq.quantize_model(_tfmot_annotated(), tfq.schemes.Multivalued(bits=3))
    qmodel.compile(keras.optimizers.Adam(3e-3), _LOSS)
    qmodel.fit(x, y, epochs=3, batch_size=32, verbose=0)
    rows = {r.layer: r for r in tfq.summary(qmodel, print_fn=None)}
    assert rows["quant_eight_bit"].quantizer == "LastValueQuantizer"
    assert rows["quant_eight_bit"].bits == 8 and rows["quant_eight_bit"].levels == 255
    assert rows["quant_head"].quantizer == "MultivaluedQuantizer" and rows["quant_head"].bits == 3
    tfl = export.to_tflite(qmodel, x[:200])
    report = export.check_tflite(tfl, qmodel, x_test, y_test, min_agreement=0.97)
    checks = {k.layer: k for k in report.kernels}
    assert set(checks) == {"quant_eight_bit", "quant_head"}
    eight = checks["quant_eight_bit"]
    assert eight.exact and eight.exactness == "rounding" and eight.quantizer == "LastValueQuantizer"
    # Within half a per-channel step of tfmot's values, not equal to them: the converter
    # re-quantized tfmot's per-tensor grid per output channel.
    assert 0 < eight.max_abs_error
    assert checks["quant_head"].exactness == "codes" and checks["quant_head"].codes <= 8
    # A Keras model whose tfmot kernel differs from the file's fails that kernel's check.
    with tfmot.quantization.keras.quantize_scope():
        other = keras.models.clone_model(qmodel)
    other.set_weights(qmodel.get_weights())
    (kernel,) = [
        w for w in other.get_layer("quant_eight_bit").weights if w.name.endswith("/kernel:0")
    ]
    kernel.assign(kernel * 1.05 + 0.01)
    bad = export.check_tflite(tfl, other, strict=False)
    assert not {k.layer: k for k in bad.kernels}["quant_eight_bit"].exact
    assert any("LastValueQuantizer" in f for f in bad.failures())


def _layernorm_dense(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 1))
    h = layers.Dense(32, activation="relu", name="hidden")(layers.Flatten()(inputs))
    h = layers.LayerNormalization(name="norm")(h)
    model = keras.Model(inputs, layers.Dense(10, name="head")(h))
    model.compile(keras.optimizers.Adam(3e-3), _LOSS)
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    norm = model.get_layer("norm")  # a gamma far from 1, per feature
    norm.gamma.assign(np.linspace(0.3, 2.0, 32).astype(np.float32))
    qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(levels=8))
    qmodel.compile(keras.optimizers.Adam(1e-3), _LOSS)
    qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return qmodel


def test_layernorm_before_a_dense_exports_exactly(digits):
    (x, _), (x_test, y_test) = digits
    qmodel = _layernorm_dense(digits)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "The kernels of")
        tfl = export.to_tflite(qmodel, x[:200])
    report = export.check_tflite(tfl, qmodel, x_test, y_test, min_agreement=0.98)
    assert report.ok and {k.layer for k in report.kernels} == {"quant_hidden", "quant_head"}
    assert all(k.exact and k.codes <= 8 and k.fold == "none" for k in report.kernels)
    assert "MUL" in report.ops  # gamma stays an int8 multiply instead of entering the kernel
    assert abs(report.tflite_accuracy - report.keras_accuracy) <= 0.02


def test_a_folded_layernorm_is_reported_as_an_input_factor(digits):
    """The converter's own file (gamma folded into the Dense per input feature) is not exact,
    and the check says why."""
    (x, _), _ = digits
    qmodel = _layernorm_dense(digits)
    copy = tflite_module.export_copy(qmodel)
    folded = tflite_module._convert(copy, [x[:200]], None, True)
    folded, missing, _ = tflite_module._write_exact(folded, copy, False)
    assert missing == ["quant_head"]
    head = next(f for f in rewrite.filters(flatbuffer.read_model(folded)) if "quant_head" in f.name)
    assert "norm" in rewrite.segments(head.name)  # the converter folded the normalization
    report = export.check_tflite(folded, qmodel, strict=False)
    check = {k.layer: k for k in report.kernels}["quant_head"]
    assert not check.exact and check.fold == "input factor" and check.codes > 8
    assert any("factor per input feature" in f for f in report.failures())


def test_output_agreement_round_trip():
    row = tflite_module.OutputAgreement("head", 0.5, 0.4, 0.45, 2.0)
    assert tflite_module.OutputAgreement(**row.get_config()) == row


def test_cli_exports_a_two_input_model_from_named_npz_arrays(exported, tmp_path, capsys):
    import json

    from tfquant.export import cli

    qmodel, _ = exported
    saved = tmp_path / "saved"
    qmodel.save(str(saved), save_format="tf")
    left, right, three, two = _synthetic(100)
    out, card = tmp_path / "m.tflite", tmp_path / "card.json"
    args = ["tfquant.export", f"--model={saved}", f"--out={out}", f"--report={card}"]
    assert cli.main([*args, "--representative=digits"]) == 2
    assert "pass an .npz file with one array per input" in capsys.readouterr().err
    assert not out.exists()
    named = tmp_path / "named.npz"
    np.savez(named, zeta=left, alpha=right, y_quant_zhead=three, y_quant_ahead=two)
    assert cli.main([*args, f"--representative={named}"]) == 0
    written = json.loads(card.read_text())
    assert written["exact"] and len(written["kernels"]) == 4
    assert [o["output"] for o in written["outputs"]] == list(qmodel.output_names)
    assert all(o["keras_accuracy"] is not None for o in written["outputs"])
    unnamed = tmp_path / "unnamed.npz"
    np.savez(unnamed, x=left)
    assert cli.main([*args, "--overwrite", f"--representative={unnamed}"]) == 2
    assert "missing ['zeta', 'alpha']" in capsys.readouterr().err
