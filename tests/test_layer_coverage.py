"""Every layer quantized as asked, or named (issue 20 §3): Conv1D, SeparableConv2D,
Conv2DTranspose, Dense on 3-D inputs and Embedding train with the scheme's quantizer, show in
`tfq.summary`, and export to files whose kernels are exactly the trained codes; layers with
weights that stay float are named with the reason in one warning from `quantize_model`; a
`keep_first_last_8bit` scheme on a model of two quantized layers says that it quantizes none
of them at the scheme's bits."""

import warnings

import numpy as np
import pytest

import tfquant as tfq
from tfquant import export
from tfquant.configs.layer import OutputQuantizeConfig
from tfquant.export import flatbuffer, rewrite
from tfquant.export.tflite import run_tflite
from tfquant.quantizers import LearnedBasisActivationQuantizer

keras = tfq.keras
layers = keras.layers

_CLASSES = 3
_FLOAT_NOTICE = "tfquant leaves these layers float"


def _labels(features, seed):
    """Classes from a fixed random linear map of `features` (N, F): learnable by the toys."""
    weights = np.random.default_rng(seed).normal(size=(features.shape[1], _CLASSES))
    return (features @ weights).argmax(-1)


def conv1d_model():
    inputs = keras.Input((16, 2))
    h = layers.Conv1D(8, 3, activation="relu", name="conv1d")(inputs)
    h = layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))


def separable_model():
    inputs = keras.Input((8, 8, 2))
    h = layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="separable")(inputs)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))


def transpose_model():
    inputs = keras.Input((4, 4, 2))
    h = layers.Conv2DTranspose(6, 3, 2, padding="same", activation="relu", name="transpose")(inputs)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))


def dense_3d_model():
    inputs = keras.Input((6, 4))
    h = layers.Dense(8, activation="relu", name="dense_3d")(inputs)
    h = layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))


def embedding_model(input_dtype="int32"):
    inputs = keras.Input((6,), dtype=input_dtype)
    h = layers.Embedding(20, 8, name="embedding")(inputs)
    h = layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))


def _data(name, count=640, seed=0):
    rng = np.random.default_rng(seed)
    if name == "embedding":
        x = rng.integers(0, 20, (count, 6)).astype(np.float32)
        counts = np.stack([np.sum(x % _CLASSES == c, axis=1) for c in range(_CLASSES)], 1)
        return x, (counts + rng.uniform(0, 0.5, counts.shape)).argmax(-1)
    shape = {"conv1d": (16, 2), "separable": (8, 8, 2), "transpose": (4, 4, 2), "dense_3d": (6, 4)}
    x = rng.normal(size=(count, *shape[name])).astype(np.float32)
    pooled = x.reshape(count, -1, shape[name][-1]).mean(1)
    return x, _labels(np.concatenate([pooled, np.abs(pooled)], 1), seed=1)


MODELS = {
    "conv1d": conv1d_model,
    "separable": separable_model,
    "transpose": transpose_model,
    "dense_3d": dense_3d_model,
    "embedding": embedding_model,
}
# QAT model layer names of each new layer's quantized weights.
QUANTIZED = {
    "conv1d": ["quant_conv1d"],
    "separable": ["quant_separable_depthwise", "quant_separable_pointwise"],
    "transpose": ["quant_transpose"],
    "dense_3d": ["quant_dense_3d"],
    "embedding": ["quant_embedding"],
}
SCHEMES = {
    "multivalued-3bit": lambda: tfq.schemes.Multivalued(bits=3),
    "uniform-4bit": lambda: tfq.schemes.Uniform(bits=4),  # per output channel
    "uniform-4bit-per-layer": lambda: tfq.schemes.Uniform(bits=4, per_channel=False),
}
# Per-channel uniform on an Embedding is left float (GATHER has one scale): tested below.
CASES = [
    ("conv1d", "multivalued-3bit"),
    ("conv1d", "uniform-4bit"),
    ("separable", "multivalued-3bit"),
    ("separable", "uniform-4bit"),
    ("transpose", "multivalued-3bit"),
    ("transpose", "uniform-4bit"),
    ("transpose", "uniform-4bit-per-layer"),
    ("dense_3d", "multivalued-3bit"),
    ("dense_3d", "uniform-4bit"),
    ("embedding", "multivalued-3bit"),
    ("embedding", "uniform-4bit-per-layer"),
]


def _compile(model, rate=1e-2):
    model.compile(
        keras.optimizers.Adam(rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="module")
def float_model(request):
    keras.utils.set_random_seed(0)
    x, y = _data(request.param)
    model = _compile(MODELS[request.param]())
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    return request.param, model


def _codes_per_channel(tfl, tensor_name):
    """Most distinct integer codes in one output channel of the file's filter `tensor_name`,
    and the distinct codes in the whole tensor."""
    (found,) = [f for f in rewrite.filters(flatbuffer.read_model(tfl)) if f.name == tensor_name]
    by_channel = np.moveaxis(found.codes, found.axis, 0).reshape(found.shape[found.axis], -1)
    return max(np.unique(c).size for c in by_channel), np.unique(found.codes).size


@pytest.mark.parametrize(("float_model", "scheme_name"), CASES, indirect=["float_model"])
def test_new_layer_types_export_exactly(float_model, scheme_name):
    name, model = float_model
    scheme = SCHEMES[scheme_name]()
    x, y = _data(name)
    x_test, y_test = _data(name, count=256, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = tfq.quantize_model(model, scheme)
    assert not [w for w in caught if _FLOAT_NOTICE in str(w.message)]
    qmodel = _compile(qmodel, 1e-3)
    qmodel.fit(x, y, epochs=2, batch_size=64, verbose=0)
    rows = {row.layer: row for row in tfq.summary(qmodel, print_fn=None)}
    quantizer = type(scheme.weight_quantizer()).__name__
    for layer in QUANTIZED[name]:
        assert rows[layer].quantizer == quantizer, rows
    tfl = export.to_tflite(qmodel, representative_data=x[:200])
    # Measured on 256 held-out samples: 98.0-100 % agreement, every disagreement a Keras
    # near-tie (top-2 margin of at most 2 output steps); Keras accuracy 0.77-0.86 (chance 0.33).
    report = export.check_tflite(tfl, qmodel, x_test, y_test, min_agreement=0.97)
    assert report.ok and not report.float_ops, report.failures()
    assert report.disagreement_margin <= 3, report.disagreement_margin
    assert report.keras_accuracy > 0.6, report.keras_accuracy
    assert abs(report.tflite_accuracy - report.keras_accuracy) <= 0.03, report
    kernels = {k.layer: k for k in report.kernels}
    assert set(QUANTIZED[name]) <= set(kernels), kernels
    for layer in QUANTIZED[name]:
        kernel = kernels[layer]
        assert kernel.exact, kernel
        per_channel, total = _codes_per_channel(tfl, kernel.tflite_tensor)
        levels = rows[layer].levels
        assert (per_channel if scheme.per_channel else total) <= levels, (layer, kernel)
    ops = {
        "conv1d": "CONV_2D",
        "separable": "DEPTHWISE_CONV_2D",
        "transpose": "TRANSPOSE_CONV",
        "dense_3d": "FULLY_CONNECTED",
        "embedding": "GATHER",
    }
    assert ops[name] in report.ops, report.ops


@pytest.mark.parametrize("name", ["conv1d", "transpose"])
def test_int4_export(name):
    """Conv1D kernels (CONV_2D) go to INT4 like Conv2D; Conv2DTranspose kernels stay int8,
    and the warning says why."""
    keras.utils.set_random_seed(7)
    x, y = _data(name, count=256)
    qmodel = _compile(tfq.quantize_model(MODELS[name](), tfq.schemes.Ternary()), 1e-3)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfl = export.to_tflite(qmodel, x[:100], int4=True)
    report = export.check_tflite(tfl, qmodel, strict=False)
    assert report.ok, report.failures()
    stored = {k.layer: k.stored_type for k in report.kernels}
    notices = [str(w.message) for w in caught if "instead of INT4" in str(w.message)]
    if name == "conv1d":
        assert stored == {"quant_conv1d": "INT4", "quant_head": "INT4"} and not notices
    else:
        assert stored == {"quant_transpose": "INT8", "quant_head": "INT4"}
        (notice,) = notices
        assert "['quant_transpose']: Conv2DTranspose (TRANSPOSE_CONV)" in notice


def test_transpose_codebook_is_per_output_channel():
    """A Conv2DTranspose kernel is [h, w, out, in]: per-channel quantizers must scale its
    output channels (axis -2), the axis TFLite's TRANSPOSE_CONV quantizes."""
    keras.utils.set_random_seed(3)
    model = transpose_model()
    kernel = model.get_layer("transpose").kernel
    scaled = kernel.numpy() * np.array([1.0, 10, 100, 1000, 1, 1], np.float32)[None, None, :, None]
    kernel.assign(scaled)
    qmodel = tfq.quantize_model(model, tfq.schemes.Uniform(bits=4))
    (wrapper, weight, quantizer, variables) = next(
        entry
        for entry in tfq._keras.quantized_weights(qmodel)
        if entry[0].name == "quant_transpose"
    )
    hard = np.asarray(quantizer.hard_quantize(weight, variables))
    peaks = np.abs(hard).max(axis=(0, 1, 3))
    np.testing.assert_allclose(peaks, np.abs(scaled).max(axis=(0, 1, 3)), rtol=1e-6)
    steps = np.asarray(quantizer.grid_step(weight, variables))
    assert steps.shape == (6,)


def _float_layers_model():
    """A Dense backbone with every kind of layer tfquant leaves float, and weightless ones."""
    inputs = keras.Input((6, 4))
    h = layers.Dense(8, name="dense")(inputs)
    h = layers.LayerNormalization(name="ln")(h)
    h = layers.LSTM(8, return_sequences=True, name="lstm")(h)
    h = layers.GRU(8, return_sequences=True, name="gru")(h)
    h = layers.SimpleRNN(8, return_sequences=True, name="simple_rnn")(h)
    h = layers.Conv1DTranspose(8, 3, padding="same", name="conv1d_transpose")(h)
    h = layers.BatchNormalization(name="bn")(layers.Conv1D(8, 1, name="conv1d")(h))
    h = layers.ReLU(name="relu")(h)
    h = layers.MaxPooling1D(name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    inner = keras.Sequential([keras.Input((24,)), layers.Dense(8)], name="inner_model")
    h = layers.Add(name="add")([inner(h), layers.Dense(8, name="side")(h)])
    return keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))


def test_one_warning_names_every_float_layer_and_why():
    model = _float_layers_model()
    with pytest.warns(UserWarning, match=_FLOAT_NOTICE) as caught:
        qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
    notices = [str(w.message) for w in caught if _FLOAT_NOTICE in str(w.message)]
    assert len(notices) == 1, notices
    (notice,) = notices
    expected = {
        "ln": "LayerNormalization: gamma and beta",
        "lstm": "LSTM: recurrent kernels are not supported",
        "gru": "GRU: recurrent kernels are not supported",
        "simple_rnn": "SimpleRNN: recurrent kernels are not supported",
        "conv1d_transpose": "Conv1DTranspose: neither tfquant nor tfmot",
        "bn": "BatchNormalization: tfmot folds a BatchNormalization into the kernel only",
        "inner_model": "nested Sequential",
    }
    for name, reason in expected.items():
        assert f"'{name}' ({reason}" in notice, (name, notice)
    for weightless in ("relu", "pool", "flatten", "add"):
        assert f"'{weightless}'" not in notice
    for quantized in ("dense", "conv1d", "side", "head"):
        assert f"'{quantized}'" not in notice
    assert {row.layer for row in tfq.summary(qmodel, print_fn=None)} == {
        "quant_dense",
        "quant_conv1d",
        "quant_side",
        "quant_head",
    }


def test_no_warning_when_every_weight_is_quantized():
    inputs = keras.Input((8, 8, 2))
    h = layers.SeparableConv2D(4, 3, padding="same", name="separable")(inputs)
    h = layers.BatchNormalization()(layers.Conv2D(4, 3, use_bias=False)(h))
    h = layers.ReLU()(h)
    h = layers.Conv2DTranspose(4, 3, 2, padding="same")(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Reshape((-1, 4))(h)
    h = layers.Conv1D(4, 3)(h)
    h = layers.Dense(4)(h)
    h = layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, layers.Dense(_CLASSES)(layers.Dropout(0.1)(h)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
    assert len(tfq.summary(qmodel, print_fn=None)) == 7


def test_per_channel_embedding_is_named():
    """GATHER carries one scale per table: under a per-channel scheme the Embedding stays
    float, the warning says so, and the converter's own int8 table passes the check (it is
    not a tfquant kernel)."""
    keras.utils.set_random_seed(4)
    x, y = _data("embedding", count=256)
    model = _compile(embedding_model())
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    with pytest.warns(UserWarning, match=_FLOAT_NOTICE) as caught:
        qmodel = tfq.quantize_model(model, tfq.schemes.Uniform(bits=4))
    (notice,) = [str(w.message) for w in caught if _FLOAT_NOTICE in str(w.message)]
    assert "'embedding' (Embedding under a per-channel scheme: TFLite's GATHER" in notice
    assert [row.layer for row in tfq.summary(qmodel, print_fn=None)] == ["quant_head"]
    qmodel = _compile(qmodel, 1e-3)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0)
    report = export.check_tflite(export.to_tflite(qmodel, x[:100]), qmodel, x)
    assert report.ok and "GATHER" in report.ops
    with pytest.raises(ValueError, match="per-channel scheme"):
        tfq.quantize_annotate_layer(layers.Embedding(5, 2), tfq.schemes.LearnedBasis())


def test_layer_normalization_exports_as_integer_ops():
    """The warning's claim about LayerNormalization: the converter computes it with int8
    ops (RSQRT among them) and the file has no float op."""
    keras.utils.set_random_seed(5)
    x, y = _data("dense_3d", count=256)
    inputs = keras.Input((6, 4))
    h = layers.LayerNormalization(name="ln")(layers.Dense(8, name="dense")(inputs))
    h = layers.GlobalAveragePooling1D()(h)
    model = _compile(keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h)))
    with pytest.warns(UserWarning, match="'ln' \\(LayerNormalization"):
        qmodel = _compile(tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3)), 1e-3)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0)
    report = export.check_tflite(export.to_tflite(qmodel, x[:100]), qmodel, strict=False)
    assert report.ok and not report.float_ops and "RSQRT" in report.ops, report


def test_batchnorm_after_conv1d_exports_as_integer_ops():
    """The warning's claim about a BatchNormalization tfmot does not fold (here after a
    Conv1D): the file computes it as int8 MUL and ADD, and the Conv1D kernel stays exact."""
    keras.utils.set_random_seed(6)
    x, y = _data("conv1d", count=256)
    inputs = keras.Input((16, 2))
    h = layers.Conv1D(8, 3, use_bias=False, name="conv1d")(inputs)
    h = layers.GlobalAveragePooling1D()(layers.ReLU()(layers.BatchNormalization(name="bn")(h)))
    model = _compile(keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h)))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    with pytest.warns(UserWarning, match="'bn' \\(BatchNormalization: tfmot folds"):
        qmodel = _compile(tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3)), 1e-3)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0)
    report = export.check_tflite(export.to_tflite(qmodel, x[:100]), qmodel, strict=False)
    assert report.ok and not report.float_ops, report
    assert {"MUL", "ADD"} <= set(report.ops), report.ops
    assert {k.layer for k in report.kernels if k.exact} == {"quant_conv1d", "quant_head"}


def test_lstm_export_fails_as_the_warning_says():
    inputs = keras.Input((4, 3))
    h = layers.LSTM(4, name="lstm")(layers.Dense(3, name="dense")(inputs))
    model = keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))
    with pytest.warns(UserWarning, match="'lstm' \\(LSTM: recurrent"):
        qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
    with pytest.raises(Exception, match="TensorList|tensor list"):
        export.to_tflite(qmodel, np.zeros((4, 4, 3), np.float32))


def test_embedding_on_a_float_input_is_refused():
    model = embedding_model(input_dtype="float32")
    with pytest.raises(ValueError, match="dtype='int32'.*Received: input dtype float32"):
        tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))


def test_annotated_separable_gets_the_scheme_on_both_parts():
    inputs = keras.Input((8, 8, 2))
    scheme = tfq.schemes.Ternary()
    h = tfq.quantize_annotate_layer(layers.SeparableConv2D(4, 3, name="separable"), scheme)(inputs)
    h = layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, layers.Dense(_CLASSES, name="head")(h))  # not annotated
    qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
    rows = {row.layer: row.quantizer for row in tfq.summary(qmodel, print_fn=None)}
    assert rows == {
        "quant_separable_depthwise": "TernaryQuantizer",
        "quant_separable_pointwise": "TernaryQuantizer",
    }


@pytest.mark.parametrize("count", [1, 2, 3])
def test_keep_first_last_8bit_notice_on_small_models(count):
    inputs = keras.Input((4,))
    h = inputs
    for i in range(count):
        h = layers.Dense(4, name=f"fc{i}")(h)
    model = keras.Model(inputs, h)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfq.quantize_model(model, tfq.schemes.LearnedBasis(weight_bits=2))
        tfq.quantize_model(
            model, tfq.schemes.LearnedBasis(weight_bits=2, keep_first_last_8bit=False)
        )
    notices = [str(w.message) for w in caught if "keep_first_last_8bit" in str(w.message)]
    if count > 2:
        assert not notices
        return
    (notice,) = notices
    for i in range(count):
        assert f"'fc{i}'" in notice
    assert "8-bit" in notice and "none gets the LearnedBasis quantizer" in notice
    assert "Pass keep_first_last_8bit=False" in notice


def test_k_bit_activations_reach_standalone_relu_layers(tmp_path):
    """`LearnedBasis(activation_bits=2)` gives 2-bit inputs to every quantized layer that
    reads a ReLU, also where the ReLU is its own layer after a BatchNorm (Conv -> BN -> ReLU,
    ReLU after an Add, an Activation("relu6") read through a max pooling), not only a layer's
    `activation=` argument. A ReLU that a residual Add also reads stays 8-bit (the residual
    stream keeps its precision, as in LQ-Nets) and the conv reading it gets a 2-bit
    QuantizeLayer of its own. The model saves, loads and exports with them."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.ReLU(name="relu1")(layers.BatchNormalization(name="bn1")(x))
    y = layers.BatchNormalization(name="bn2")(layers.Conv2D(8, 3, padding="same", name="conv2")(x))
    x = layers.ReLU(name="relu2")(layers.Add(name="add")([x, y]))
    x = layers.Activation("relu6", name="relu3")(layers.Conv2D(8, 1, name="conv3")(x))
    x = layers.Dense(4, name="logits")(layers.GlobalMaxPooling2D(name="pool")(x))
    model = _compile(keras.Model(inputs, x))
    features = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype("float32")
    model.fit(features, np.arange(64) % 4, epochs=1, verbose=0)
    scheme = tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=2, keep_first_last_8bit=False)
    qmodel = _compile(tfq.quantize_model(model, scheme))
    qmodel.fit(features, np.arange(64) % 4, epochs=1, verbose=0)
    names = ["quant_relu2", "quant_relu3", "conv2_input_quantize", "quant_relu1"]
    probe = keras.Model(qmodel.inputs, [qmodel.get_layer(n).output for n in names])
    values = [np.unique(v.numpy()).size for v in probe(features)]
    assert max(values[:3]) <= 4, values  # 2 bits, not tfmot's 8
    assert values[3] > 4, values  # relu1 feeds the Add: the residual stream stays 8-bit
    for name in names[:2]:
        assert isinstance(qmodel.get_layer(name).quantize_config, OutputQuantizeConfig)
    assert not isinstance(qmodel.get_layer("quant_relu1").quantize_config, OutputQuantizeConfig)
    inserted = qmodel.get_layer("conv2_input_quantize")
    assert isinstance(inserted.quantizer, LearnedBasisActivationQuantizer)
    assert inserted._inbound_nodes[0].inbound_layers.name == "quant_relu1"
    assert qmodel.get_layer("quant_conv2")._inbound_nodes[0].inbound_layers is inserted
    add_inputs = {
        layer.name for layer in qmodel.get_layer("quant_add")._inbound_nodes[0].inbound_layers
    }
    assert "quant_relu1" in add_inputs
    qmodel.save(tmp_path / "saved")
    loaded = tfq.load_model(tmp_path / "saved")
    np.testing.assert_array_equal(loaded(features), qmodel(features))
    tfl = export.to_tflite(qmodel, representative_data=features)
    agreement = np.mean(np.argmax(run_tflite(tfl, features), -1) == np.argmax(qmodel(features), -1))
    assert agreement >= 0.5  # TFLite computes the activations at 8 bits (finer than Keras)
    assert tfq.schemes.LearnedBasis(2, None).output_quantizer(layers.ReLU()) is None
    assert tfq.schemes.Multivalued().output_quantizer(layers.ReLU()) is None
    assert scheme.output_quantizer(layers.ReLU(negative_slope=0.1)) is None


def test_k_bit_activations_stay_off_outputs_and_unquantized_readers():
    """A ReLU that is also a model output keeps 8 bits (the user reads it) and the conv
    reading it gets its own 2-bit input; a ReLU read only through an average pooling (not a
    quantized layer's direct input) or only by a layer kept at 8 bits stays 8-bit."""
    inputs = keras.Input((8, 8, 3))
    a = layers.ReLU(name="relu_out")(layers.Conv2D(4, 3, name="conv1")(inputs))
    b = layers.ReLU(name="relu_avg")(layers.Conv2D(4, 3, name="conv2")(a))
    c = layers.Conv2D(4, 1, name="conv3")(layers.AveragePooling2D(name="avg")(b))
    d = layers.ReLU(name="relu_last")(c)
    logits = layers.Dense(2, name="last")(layers.Flatten(name="flat")(d))
    model = keras.Model(inputs, [logits, a])
    scheme = tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=2)  # first/last 8-bit
    qmodel = tfq.quantize_model(model, scheme)
    quantize_layers = [layer.name for layer in qmodel.layers if "input_quantize" in layer.name]
    assert quantize_layers == ["conv2_input_quantize"]
    for name in ("quant_relu_out", "quant_relu_avg", "quant_relu_last"):
        assert not isinstance(qmodel.get_layer(name).quantize_config, OutputQuantizeConfig), name


def test_k_bit_activations_through_a_pooling_layer_shared_with_the_float_model():
    """tfmot leaves a MaxPooling1D shared between the user's float model and the quantized
    one, so its node list also holds the readers of every model the user called it in (here
    an unquantized Dense of another model). Where the K bits go follows the quantized model's
    own edges: the ReLU read only by the quantized conv (through the pooling) gets the 2-bit
    quantizer on its output and no input quantizer is inserted."""
    pool = layers.MaxPooling1D(name="pool")
    other = keras.Input((14, 4))
    keras.Model(other, layers.Dense(2, name="other_head")(layers.Flatten()(pool(other))))
    inputs = keras.Input((16, 3))
    x = layers.ReLU(name="relu1")(layers.Conv1D(4, 3, name="conv1")(inputs))
    x = layers.Conv1D(4, 3, name="conv2")(pool(x))
    x = layers.ReLU(name="relu2")(x)
    logits = layers.Dense(2, name="last")(layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, logits)
    scheme = tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=2, keep_first_last_8bit=False)
    qmodel = tfq.quantize_model(model, scheme)
    nodes = qmodel.get_layer("pool")._outbound_nodes
    assert any(node.outbound_layer not in qmodel.layers for node in nodes)
    assert [layer.name for layer in qmodel.layers if "input_quantize" in layer.name] == []
    assert isinstance(qmodel.get_layer("quant_relu1").quantize_config, OutputQuantizeConfig)
    features = np.random.default_rng(0).normal(size=(32, 16, 3)).astype("float32")
    probe = keras.Model(qmodel.inputs, qmodel.get_layer("quant_relu1").output)
    assert np.unique(probe(features).numpy()).size <= 4
