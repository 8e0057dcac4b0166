"""SLQ PartitionRounds and MLQ IncrementalLayers on digits: every weight ends on a center,
masks only grow, rounds follow the configured order, resume from the epoch counter."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tests.test_phase_adaptation import _random_layer, _Recorder, _states, _subset
from tfquant._keras import quantized_weights, tf
from tfquant.callbacks import interval_contraction
from tfquant.callbacks.base import held_weights


def _masked(float_model, levels):
    scheme = tfq.schemes.Multivalued(levels=levels, mode="masked")
    return compile_model(tfq.quantize_model(float_model, scheme), 5e-4)


@pytest.mark.parametrize("order", ["zero_first", "magnitude", "error"])
def test_partition_rounds_end_on_centers(float_model, digits, order):
    x, y = _subset(digits, 128)
    qmodel = _masked(float_model, 4)
    schedule = tfq.callbacks.PartitionRounds(rounds=2, order=order, recluster=True, verbose=0)
    assert schedule.epochs_needed(qmodel) == 2
    recorder = _Recorder()
    history = qmodel.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[schedule, recorder])
    for kernel, state in _states(qmodel):
        values = np.unique(kernel.numpy())
        assert values.size <= 4 and np.all(np.isin(values, state["centers"].numpy()))
        assert np.all(state["frozen_mask"].numpy() == 1.0)
    fractions = history.history["quant_fc1/frozen_fraction"]
    assert 0 < fractions[0] < 1 and fractions[1] == 1.0


def test_zero_first_quantizes_the_center_nearest_zero_first(float_model, digits):
    x, y = _subset(digits, 64)
    qmodel = _masked(float_model, 3)
    schedule = tfq.callbacks.PartitionRounds(order="zero_first", verbose=0)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[schedule])
    for _, state in _states(qmodel):
        done = state["interval_done"].numpy() > 0.5
        centers = state["centers"].numpy()
        assert done.sum() == 1 and np.argmin(np.abs(centers)) == np.flatnonzero(done)[0]


def test_incremental_layers_one_at_a_time(float_model, digits):
    x, y = _subset(digits, 128)
    qmodel = _masked(float_model, 3)
    schedule = tfq.callbacks.IncrementalLayers(epochs_per_layer=1, order="reverse", verbose=0)
    assert schedule.epochs_needed(qmodel) == 4
    qmodel.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[schedule])
    frozen = {w.name: s["frozen_mask"].numpy().mean() for w, _, _, s in quantized_weights(qmodel)}
    assert frozen == {"quant_conv1": 0.0, "quant_conv2": 0.0, "quant_fc1": 1.0, "quant_logits": 1.0}
    qmodel.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[schedule])
    for kernel, state in _states(qmodel):
        assert np.unique(kernel.numpy()).size <= 3
        assert np.all(np.isin(kernel.numpy(), state["centers"].numpy()))


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: tfq.callbacks.PartitionRounds(order="random"), ValueError, "order='random'"),
        (lambda: tfq.callbacks.PartitionRounds(rounds=0), ValueError, "rounds=0"),
        (
            lambda: tfq.callbacks.IncrementalLayers(epochs_per_layer=0),
            ValueError,
            "epochs_per_layer=0",
        ),
        (lambda: tfq.callbacks.IncrementalLayers(order=5), TypeError, "order=5"),
    ],
)
def test_bad_arguments(make, error, fragment):
    with pytest.raises(error) as info:
        make()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "schedule",
    [
        tfq.callbacks.PartitionRounds(rounds=3, epochs_per_round=2, order="error", verbose=0),
        tfq.callbacks.IncrementalLayers(epochs_per_layer=2, order=["a"], verbose=0),
    ],
    ids=["PartitionRounds", "IncrementalLayers"],
)
def test_config_round_trip(schedule):
    assert type(schedule).from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_interval_contraction_shares_weights(float_model, digits):
    x, y = _subset(digits, 128)
    qmodel = _masked(float_model, 4)
    schedule = tfq.callbacks.IntervalContraction(epochs=2, verbose=0)
    widths = []

    class Width(tfq.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            (kernel, state), *_ = _states(self.model)
            centers = state["centers"].numpy()
            values = kernel.numpy().ravel()
            nearest = centers[np.abs(values[:, None] - centers).argmin(axis=1)]
            widths.append(np.abs(values - nearest).max())

    qmodel.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[schedule, Width()])
    assert widths[0] > 0 and widths[1] == 0 and widths[2] == 0
    for kernel, state in _states(qmodel):
        values = np.unique(kernel.numpy())
        assert values.size <= 4 and np.all(np.isin(values, state["centers"].numpy()))
        assert np.all(state["frozen_mask"].numpy() == 1.0)


def test_interval_contraction_round_trip_and_bad_input():
    schedule = tfq.callbacks.IntervalContraction(epochs=3, steps_per_epoch=5, verbose=0)
    clone = tfq.callbacks.IntervalContraction.from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="epochs=0"):
        tfq.callbacks.IntervalContraction(epochs=0)


def test_interval_contraction_step_picks_its_case_inside_one_launch():
    """`_stepped` (one XLA launch per layer): a contraction with an interval shift every
    `every` steps and at the last, without one in between, `hold` once contracted, and
    nothing at all where the guard says not finite."""
    weights, mask = _random_layer((50, 20), 0.5)
    centers = tf.constant([-1.2, -0.3, 0.4, 1.1])
    bounds = tf.constant([-5.0, -0.75, 0.05, 0.75, 5.0])
    done = tf.constant([1.0, 0.0, 0.0, 1.0])
    yes, no = tf.constant(True), tf.constant(False)

    def step(at, finite=yes, total=10, every=4):
        out = interval_contraction._stepped(
            weights, mask, centers, bounds, done, tf.constant(at), total, every, finite
        )
        return [t.numpy() for t in out]

    def expect(got, want):
        for a, b in zip(got[:3], want, strict=True):
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-7)

    expect(step(4), interval_contraction._contracted(weights, centers, bounds, 0.5, True))
    expect(step(5), interval_contraction._contracted(weights, centers, bounds, 0.6, False))
    expect(step(9), interval_contraction._contracted(weights, centers, bounds, 1.0, True))
    assert not np.array_equal(step(4)[1], centers.numpy())  # the shift moved the centers
    np.testing.assert_array_equal(step(5)[1], centers.numpy())
    held = held_weights(weights, mask, centers, bounds, done)
    expect(step(10), (held, centers, bounds))
    expect(step(5, finite=no), (weights, centers, bounds))
    expect(step(10, finite=no), (weights, centers, bounds))
    assert step(5)[3] == pytest.approx(0.6)
