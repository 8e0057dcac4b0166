"""Sparsity through the zero interval of the multivalued quantizer (exact zeros, 0 in the
codebook, kept through fine-tuning, export and the container, positions coded at the entropy
bound) and `tfq.allocate_bits` (meets its budget, refuses an impossible one)."""

import pathlib
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfquant as tfq
from tests.conftest import build_quantizer, compile_model, subclassed_model
from tests.scripts.write_old_container import SCHEMES, tiny_model, variable_key
from tfquant import export
from tfquant._keras import quantized_weights, tf
from tfquant.allocation import ANS_SLACK_BYTES, BitPlan, quantize_numpy
from tfquant.coding import CompressedFormatError, ans, masked
from tfquant.coding.entropy import entropy_of_counts
from tfquant.coding.stream import varint
from tfquant.models import digits_cnn
from tfquant.quantizers import MultivaluedQuantizer

CONTAINERS = pathlib.Path(__file__).parent / "fixtures" / "containers"
keras = tfq.keras


def _hard(qmodel):
    return {
        wrapper.name: np.asarray(quantizer.hard_quantize(weight, variables))
        for wrapper, weight, quantizer, variables in quantized_weights(qmodel)
    }


@pytest.mark.parametrize("division", ["kmeans", "linear", "exponential", "hessian_kmeans", "ecsq"])
def test_zero_interval_gives_the_requested_zeros(division):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(200, 50)).astype(np.float32)
    importance = rng.uniform(0.1, 1.0, size=kernel.shape)
    quantizer = MultivaluedQuantizer(bits=3, division=division, sparsity=0.9)
    variables = build_quantizer(quantizer, kernel.shape)
    quantizer.initialize(kernel, variables, importance=importance)
    centers = variables["centers"].numpy()
    assert np.count_nonzero(centers == 0) == 1  # 0 forced into the codebook, once
    hard = np.asarray(quantizer.hard_quantize(kernel, variables))
    assert np.count_nonzero(hard == 0) == 9000  # exactly the 90 % smallest |w|
    threshold = variables["zero_threshold"].numpy()
    np.testing.assert_array_equal(hard == 0, np.abs(kernel) <= threshold)
    assert set(np.unique(hard)) <= set(centers)
    np.testing.assert_array_equal(quantizer.hard_quantize(hard, variables), hard)  # idempotent
    assert quantizer.export_exact(kernel, variables)
    indices = quantize_numpy(kernel, centers, threshold)  # allocate_bits' rule is the same
    np.testing.assert_array_equal(centers[indices], hard.ravel())
    latent = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        output = quantizer(latent, True, variables)
        loss = tf.reduce_sum(output * 2.0)
    np.testing.assert_array_equal(output.numpy(), hard)
    gradient = tape.gradient(loss, latent).numpy()
    np.testing.assert_array_equal(gradient, np.where(hard == 0, 0.0, 2.0))  # pruned stay pruned


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"sparsity": 1.0}, ValueError, "sparsity must be in [0, 1). Received: sparsity=1.0"),
        ({"sparsity": -0.1}, ValueError, "Received: sparsity=-0.1"),
        ({"sparsity": "high"}, TypeError, "sparsity must be a number"),
        (
            {"bits": 1, "sparsity": 0.5},
            ValueError,
            "at least 3 levels (the zero center and one on each side). Received: levels=2",
        ),
    ],
)
def test_bad_sparsity(kwargs, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        MultivaluedQuantizer(**kwargs)


def test_scheme_layer_settings_are_checked():
    with pytest.raises(ValueError, match=re.escape("layers['fc1'] may set")):
        tfq.schemes.Multivalued(layers={"fc1": {"level": 4}})
    with pytest.raises(ValueError, match=re.escape("layers['fc1']: sparsity must be in")):
        tfq.schemes.Multivalued(layers={"fc1": {"sparsity": 2.0}})
    with pytest.raises(TypeError, match="layers must be a dict"):
        tfq.schemes.Multivalued(layers=[("fc1", 4)])


@pytest.fixture(scope="module")
def sparse_model(float_model, digits):
    (x, y), _ = digits
    scheme = tfq.schemes.Multivalued(
        bits=3,
        sparsity=0.8,
        layers={"conv1": {"sparsity": 0.3}, "logits": {"levels": 5, "sparsity": 0.0}},
    )
    qmodel = tfq.quantize_model(float_model, scheme)
    before = _hard(qmodel)
    compile_model(qmodel, 1e-3).fit(x, y, epochs=2, batch_size=32, verbose=0)
    return scheme, qmodel, before


def test_sparsity_survives_fine_tuning_summary_and_report(sparse_model):
    _, qmodel, before = sparse_model
    after = _hard(qmodel)
    expected = {"quant_conv1": 0.3, "quant_conv2": 0.8, "quant_fc1": 0.8, "quant_logits": 0.0}
    rows = {r.layer: r for r in tfq.summary(qmodel, print_fn=None)}
    for name, fraction in expected.items():
        assert np.all(after[name][before[name] == 0] == 0)  # pruned weights stay pruned
        assert fraction <= rows[name].sparsity <= fraction + 0.05  # drift-ins join them
        assert rows[name].sparsity == np.mean(after[name] == 0)
    assert rows["quant_logits"].levels == 5 and rows["quant_fc1"].levels == 8
    coding = {r.layer: r for r in tfq.coding.report(qmodel, print_fn=None)}
    for layer in tfq.coding.compress(qmodel).layers:
        wrapper = "quant_" + layer.name.split("/")[0]
        assert layer.sparsity == rows[wrapper].sparsity == coding[layer.name].sparsity


def test_sparse_model_exports_exactly(sparse_model, digits):
    _, qmodel, _ = sparse_model
    (x, _), (x_test, y_test) = digits
    tfl = export.to_tflite(qmodel, representative_data=x[:100])
    report = export.check_tflite(tfl, qmodel, x_test, y_test)  # raises on any failure
    assert all(kernel.exact for kernel in report.kernels)
    assert report.tflite_accuracy > 0.8


def test_sparse_model_container_round_trip(sparse_model, digits):
    scheme, qmodel, _ = sparse_model
    x = digits[1][0]
    blob = tfq.coding.compress(qmodel)
    target = tfq.quantize_model(digits_cnn(seed=7), scheme)
    restored = tfq.coding.decompress(blob.to_bytes(), target)
    for name, kernel in _hard(qmodel).items():
        np.testing.assert_array_equal(_hard(restored)[name].view(np.uint32), kernel.view(np.uint32))
    np.testing.assert_array_equal(restored(x).numpy(), qmodel(x).numpy())


def test_phase_adaptation_quantizes_the_zero_interval_first(float_model, digits, capsys):
    (x, y), _ = digits
    scheme = tfq.schemes.Multivalued(levels=3, sparsity=0.7, mode="masked")
    qmodel = compile_model(tfq.quantize_model(float_model, scheme))
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=0.25, verbose=1)
    qmodel.fit(
        x, y, epochs=schedule.epochs_needed(qmodel), batch_size=32, verbose=0, callbacks=[schedule]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "quant_fc1 interval" in line]
    assert "interval 1/3 (center +0.00000)" in lines[0]
    for wrapper, weight, quantizer, variables in quantized_weights(qmodel):
        assert np.all(variables["frozen_mask"].numpy() == 1)
        kernel = weight.numpy()
        np.testing.assert_array_equal(quantizer.hard_quantize(kernel, variables), kernel)
        assert 0.6 <= np.mean(kernel == 0) <= 0.8, wrapper.name


def test_ans_codes_a_very_sparse_layer_at_the_entropy_bound():
    rng = np.random.default_rng(0)
    probabilities = np.array([0.99] + [0.01 / 7] * 7)
    indices = rng.choice(8, size=400_000, p=probabilities)
    counts = np.bincount(indices, minlength=8)
    bound = indices.size * entropy_of_counts(counts) / 8
    header = len(varint(8)) + sum(len(varint(int(c))) for c in counts)
    coded = len(ans.encode(indices, alphabet_size=8))
    assert coded - header <= 1.001 * bound + ANS_SLACK_BYTES


def test_container_codes_sparse_kernels_near_the_entropy_bound(sparse_model):
    _, qmodel, _ = sparse_model
    for layer in tfq.coding.compress(qmodel, coder="ans").layers:
        weights = int(np.prod(layer.shape))
        header = 1 + 3 * layer.levels  # alphabet size and one count varint per symbol
        assert layer.coded_bits * weights / 8 <= (
            1.01 * layer.entropy_bits * weights / 8 + header + ANS_SLACK_BYTES
        )


def test_dead_rows_and_columns_are_coded_as_flags(float_model, digits):
    scheme = tfq.schemes.Multivalued(bits=2, sparsity=0.97)
    qmodel = tfq.quantize_model(float_model, scheme)
    kernel = _hard(qmodel)["quant_fc1"]
    assert (~kernel.any(axis=1)).mean() > 0.2  # whole inputs pruned
    blob = tfq.coding.compress(qmodel)
    fc1 = next(layer for layer in blob.layers if layer.name == "fc1/kernel")
    assert fc1.coder == "ans-masked" and fc1.coded_bits < fc1.entropy_bits  # below i.i.d. bound
    data = blob.to_bytes()
    assert struct.unpack_from("<H", data, 8) == (3,)
    target = tfq.quantize_model(digits_cnn(seed=7), scheme)
    tfq.coding.decompress(data, target)
    x = digits[1][0]
    np.testing.assert_array_equal(target(x).numpy(), qmodel(x).numpy())
    with pytest.raises(tfq.coding.CompressedFormatError, match="unknown coder 2"):
        tfq.coding.Compressed.from_bytes(data[:8] + struct.pack("<H", 1) + data[10:])


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.binary(max_size=64), rows=st.integers(0, 40), columns=st.integers(0, 40))
def test_masked_decoder_rejects_garbage_cleanly(data, rows, columns):
    try:
        decoded = masked.decode(data, rows, columns)
    except CompressedFormatError:
        return
    assert decoded.shape == (rows * columns,)


# Real containers written by older tfquant commits (tests/scripts/write_old_container.py; see
# tests/fixtures/containers/README.md): name -> (version, scheme in SCHEMES).
OLD_CONTAINERS = {
    "v1_huffman": (1, "plain"),  # 97260f1, the first container
    "v1_ans": (1, "plain"),
    "v2_ans_masked_early": (2, "sparse"),  # 757d346: coder 2, no center_tuning variable yet
    "v2_ans_masked_late": (2, "sparse"),  # ec11768 (fe81be6~1), the last version 2 writer
}


@pytest.mark.parametrize("name", sorted(OLD_CONTAINERS))
def test_older_containers_still_read(name):
    version, scheme = OLD_CONTAINERS[name]
    data = (CONTAINERS / f"{name}.tfqc").read_bytes()
    assert struct.unpack_from("<H", data, 8) == (version,)
    coders = {layer.coder for layer in tfq.coding.Compressed.from_bytes(data).layers}
    assert ("ans-masked" in coders) == ("masked" in name)
    expected = np.load(CONTAINERS / f"{name}.npz")
    target = tfq.quantize_model(tiny_model(keras), tfq.schemes.Multivalued(**SCHEMES[scheme]))
    fresh = {variable_key(w): w.numpy() for w in target.weights}
    tfq.coding.decompress(data, target)
    restored = {variable_key(w): w.numpy() for w in target.weights}
    for key in expected.files:
        np.testing.assert_array_equal(restored[key], expected[key], key)
    assert not np.array_equal(restored["fc/kernel:0"], fresh["fc/kernel:0"])
    # Variables added after the writer keep the fresh model's value: center_tuning = 0 (hold).
    added = set(restored) - set(expected.files)
    assert added <= {f"quant_{layer}/kernel_center_tuning:0" for layer in ("conv", "fc", "logits")}
    for key in added:
        assert restored[key] == fresh[key] == 0.0, key
    for _, kernel, quantizer, state in quantized_weights(target):
        np.testing.assert_array_equal(quantizer.hard_quantize(kernel, state), kernel.numpy())


def test_float16_biases_take_two_bytes_and_restore_exactly(sparse_model, digits):
    scheme, trained, _ = sparse_model
    qmodel = tfq.quantize_model(digits_cnn(seed=7), scheme)
    qmodel.set_weights(trained.get_weights())  # a copy: the fixture stays as it was
    before = tfq.coding.compress(qmodel)
    biases = [v for v in qmodel.trainable_weights if "bias" in v.name]
    assert biases and not any(_float16_exact(v.numpy()) for v in biases)
    change = tfq.coding.round_to_float16(qmodel)
    assert 0 < change < 1e-3
    assert all(_float16_exact(v.numpy()) for v in biases)
    assert tfq.coding.round_to_float16(qmodel) == 0.0  # idempotent
    after = tfq.coding.compress(qmodel)
    saved = before.nbytes - after.nbytes
    raw_bias_elements = sum(v.shape.num_elements() for v in biases)
    assert 0 < saved <= 2 * raw_bias_elements
    target = tfq.quantize_model(digits_cnn(seed=3), scheme)
    tfq.coding.decompress(after.to_bytes(), target)
    kernels = {id(w) for _, w, _, _ in quantized_weights(qmodel)}
    for a, b in zip(qmodel.weights, target.weights, strict=True):
        if id(a) not in kernels:  # the biases float32 again, bit for bit
            assert b.dtype == a.dtype
            np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()), a.name)
    for name, values in _hard(qmodel).items():
        np.testing.assert_array_equal(values, _hard(target)[name])
    x = digits[1][0]
    np.testing.assert_array_equal(target(x).numpy(), qmodel(x).numpy())


def _float16_exact(values):
    return np.array_equal(values.astype(np.float16).astype(np.float32), values)


@pytest.fixture(scope="module")
def plan_and_budget(float_model, digits):
    (x, y), _ = digits
    budget = 6000
    plan = tfq.allocate_bits(
        float_model, budget, (x, y), levels=(2, 3, 4, 6, 8, 16), sparsities=(0.0, 0.5, 0.8, 0.9)
    )
    return plan, budget


def test_allocate_bits_meets_its_budget(plan_and_budget, float_model):
    plan, budget = plan_and_budget
    qmodel = plan.quantize(float_model)
    blob = tfq.coding.compress(qmodel)
    assert blob.nbytes == plan.measured_bytes <= budget
    # The estimate is an upper bound up to rounding: ANS stays within its slack of the entropy
    # estimate, and the grid codebook and dead-row/column flags can only make records smaller.
    assert blob.nbytes <= plan.estimated_bytes + 8
    assert blob.nbytes >= 0.95 * plan.estimated_bytes
    rows = {r.layer.removeprefix("quant_"): r for r in tfq.summary(qmodel, print_fn=None)}
    for name, options in plan.layers.items():
        assert rows[name].levels == options["levels"]
        assert rows[name].sparsity >= options["sparsity"] - 1e-3
    assert plan.distortion >= 0 and set(plan.options) == set(plan.layers)


def test_allocate_bits_rejects_an_impossible_budget(float_model, digits, plan_and_budget):
    (x, y), _ = digits
    with pytest.raises(ValueError, match=r"budget_bytes must be at least about (\d+) bytes") as e:
        tfq.allocate_bits(float_model, 300, (x[:256], y[:256]), levels=(3, 4), sparsities=(0.9,))
    smallest = int(re.search(r"at least about (\d+) bytes", str(e.value)).group(1))
    assert smallest > 300 and "Received: budget_bytes=300" in str(e.value)
    with pytest.raises(ValueError, match="budget_bytes must be positive"):
        tfq.allocate_bits(float_model, -1, (x, y))
    with pytest.raises(TypeError, match=r"data must be an \(x, y\) pair"):
        tfq.allocate_bits(float_model, 5000, x)


def test_config_round_trips(plan_and_budget):
    plan, _ = plan_and_budget
    clone = BitPlan.from_config(plan.get_config())
    assert clone.get_config() == plan.get_config()
    assert clone.scheme() == plan.scheme()
    scheme = plan.scheme(mode="masked")
    assert tfq.schemes.Multivalued.from_config(scheme.get_config()) == scheme
    quantizer = MultivaluedQuantizer(levels=5, sparsity=0.75, mode="masked")
    serialized = tfq.keras.utils.serialize_keras_object(quantizer)
    assert tfq.keras.utils.deserialize_keras_object(serialized) == quantizer
    schedule = tfq.callbacks.PhaseAdaptation(zero_first=False)
    assert tfq.callbacks.PhaseAdaptation.from_config(schedule.get_config()).zero_first is False


def test_allocate_bits_trades_channels_for_bits(float_model, digits, plan_and_budget):
    (x, y), (x_test, _) = digits
    settings = dict(levels=(2, 3, 4, 6, 8, 16), sparsities=(0.0, 0.5, 0.8, 0.9))
    fractions = (0.0, 0.25, 0.5, 0.75)
    plain, budget = plan_and_budget
    traded = tfq.allocate_bits(
        float_model, budget, (x, y), channel_sparsities=fractions, **settings
    )
    # A superset of options: the same budget buys no more distortion than bits alone.
    assert traded.measured_bytes <= budget and traded.distortion <= plain.distortion
    with pytest.raises(ValueError, match="channel_sparsities to go lower"):
        tfq.allocate_bits(float_model, 3000, (x, y), **settings)
    plan = tfq.allocate_bits(float_model, 3000, (x, y), channel_sparsities=fractions, **settings)
    assert plan.removed and set(plan.removed) <= {"conv1", "conv2", "fc1"}  # not the logits
    qmodel = plan.quantize(float_model)
    assert tfq.coding.compress(qmodel).nbytes == plan.measured_bytes <= 3000
    for name, channels in plan.removed.items():
        before = float_model.get_layer(name)
        after = qmodel.get_layer(f"quant_{name}").layer
        assert after.kernel.shape[-1] == before.kernel.shape[-1] - len(channels)
    # The shrunk float model computes what the model with those channels zeroed computes.
    shrunk = plan.shrink(float_model)
    zeroed = keras.models.clone_model(float_model)
    zeroed.set_weights(float_model.get_weights())
    for name, channels in plan.removed.items():
        layer = zeroed.get_layer(name)
        for variable in (layer.kernel, layer.bias):
            value = variable.numpy()
            value[..., channels] = 0
            variable.assign(value)
    np.testing.assert_allclose(shrunk(x_test), zeroed(x_test), rtol=0, atol=1e-5)
    assert plan.shrink(float_model) is not float_model and plain.shrink(float_model) is float_model
    assert "channels removed" in repr(plan)
    assert BitPlan.from_config(plan.get_config()).removed == plan.removed


def _residual_net():
    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    stem = layers.ReLU(name="stem_relu")(
        layers.BatchNormalization(name="stem_bn")(
            layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
        )
    )
    inner = layers.Conv2D(8, 3, padding="same", use_bias=False, name="inner")(stem)
    inner = layers.ReLU(name="inner_relu")(layers.BatchNormalization(name="inner_bn")(inner))
    branch = layers.BatchNormalization(name="out_bn")(
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="branch")(inner)
    )
    merged = layers.ReLU(name="merged")(layers.Add(name="add")([stem, branch]))
    pooled = layers.GlobalAveragePooling2D(name="pool")(merged)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(pooled))
    for layer in model.layers:  # BatchNorm statistics that are not the identity
        if isinstance(layer, layers.BatchNormalization):
            for variable in layer.weights:
                variable.assign(np.random.default_rng(0).uniform(0.5, 1.5, variable.shape))
    return compile_model(model)


def test_channels_come_out_where_shrink_can_remove_them():
    from tfquant.allocation import _removable

    model = _residual_net()
    # The residual sum reads every channel of the stem and the branch; the logits are the output.
    assert _removable(model, ["stem", "inner", "branch", "logits"]) == ["inner"]
    x = np.random.default_rng(1).normal(size=(64, 8, 8, 3)).astype("float32")
    y = np.arange(64) % 10
    before = [w.copy() for w in model.get_weights()]
    plan = tfq.allocate_bits(
        model,
        1500,
        (x, y),
        levels=(2, 4),
        sparsities=(0.0,),
        channel_sparsities=(0.0, 0.5),
        division="hessian_kmeans",
    )
    assert set(plan.removed) <= {"inner"}
    plan = BitPlan(plan.layers, 1500, "hessian_kmeans", removed={"inner": [1, 5]})
    plan.importance = tfq.coding.hessian_diagonal(
        model, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    shrunk = plan.shrink(model)
    assert shrunk.get_layer("inner").filters == 6 and tuple(
        shrunk.get_layer("inner_bn").gamma.shape
    ) == (6,)
    assert shrunk.get_layer("branch").kernel.shape == (3, 3, 6, 8)
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    kernel, bn = zeroed.get_layer("inner").kernel, zeroed.get_layer("inner_bn")
    kernel.assign(kernel.numpy() * np.isin(np.arange(8), [1, 5], invert=True))
    for variable in (bn.beta, bn.moving_mean):
        variable.assign(variable.numpy() * np.isin(np.arange(8), [1, 5], invert=True))
    np.testing.assert_allclose(shrunk(x), zeroed(x), rtol=0, atol=1e-5)
    qmodel = plan.quantize(model)  # the Hessian importance is cut to the shrunk kernels
    assert qmodel.get_layer("quant_branch").layer.kernel.shape == (3, 3, 6, 8)
    for a, b in zip(before, model.get_weights(), strict=True):  # the user's model untouched
        np.testing.assert_array_equal(a, b)

    subclassed = subclassed_model(inputs=4, units=8)
    with pytest.raises(ValueError, match="model must be a Sequential or functional float model"):
        plan.shrink(subclassed)
    with pytest.raises(ValueError, match=r"removed\['stem'\] must name channels .* \[0\]"):
        BitPlan({}, 1500, removed={"stem": [0]}).shrink(model)
    with pytest.raises(ValueError, match="a BatchNormalization; channels can be removed from"):
        BitPlan({}, 1500, removed={"inner_bn": [0]}).shrink(model)
    with pytest.raises(ValueError, match="layer 'nope', which the model does not have"):
        BitPlan({}, 1500, removed={"nope": [0]}).shrink(model)
    with pytest.raises(ValueError, match=r"indices below 8 .* Received: \[9\]"):
        BitPlan({}, 1500, removed={"inner": [9]}).shrink(model)
    with pytest.raises(ValueError, match=r"Received: removed\['inner'\]=\[\]"):
        BitPlan({}, 1500, removed={"inner": []})
    with pytest.raises(TypeError, match="removed must be a dict"):
        BitPlan({}, 1500, removed=[1])
    with pytest.raises(ValueError, match=r"channel_sparsities must be in \[0, 1\)"):
        tfq.allocate_bits(model, 1500, (x, y), channel_sparsities=(0.0, 1.0))
