"""MPA schedule on digits: every weight ends on a center, masks only grow, Eq. 15 clipping
holds after every batch, resume mid-phase gives identical results, bad arguments fail early."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model, fit_with_backup
from tfquant._keras import quantized_weights, tf
from tfquant.callbacks import phase_adaptation

keras = tfq.keras


def _subset(digits, n=256):
    (x, y), _ = digits
    return x[:n], y[:n]


def _scheduled(float_model, bits=2, levels=None):
    scheme = tfq.schemes.Multivalued(bits=bits, levels=levels, mode="masked")
    return compile_model(tfq.quantize_model(float_model, scheme), 5e-4)


def _states(model):
    return [(w, s) for _, w, q, s in quantized_weights(model) if "centers" in s]


class _Recorder(keras.callbacks.Callback):
    """Checks the schedule's invariants after every batch (runs after the schedule)."""

    def __init__(self):
        super().__init__()
        self.masks = None
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        masks = []
        for kernel, state in _states(self.model):
            mask = state["frozen_mask"].numpy() > 0.5
            values = kernel.numpy()
            centers = state["centers"].numpy()
            assert np.all(np.isin(values[mask], centers)), "a frozen weight left its center"
            done = state["interval_done"].numpy() > 0.5
            bounds = state["interval_bounds"].numpy()
            if not done.all() and (~mask).any():
                low = bounds[:-1][~done].min()
                high = bounds[1:][~done].max()
                free = values[~mask]
                assert free.min() >= low - 1e-6 and free.max() <= high + 1e-6  # Eq. 15
            masks.append(mask)
        if self.masks is not None:
            for before, after in zip(self.masks, masks, strict=True):
                assert np.all(after[before]), "a frozen weight thawed"
        self.masks = masks


@pytest.mark.parametrize("recluster", [False, True])
def test_every_weight_ends_on_a_center(float_model, digits, recluster):
    x, y = _subset(digits)
    qmodel = _scheduled(float_model, bits=2)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, recluster=recluster, verbose=0)
    recorder = _Recorder()
    epochs = schedule.epochs_needed(qmodel)
    assert epochs == 4
    history = qmodel.fit(
        x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[schedule, recorder]
    )
    assert recorder.batches == 16
    for kernel, state in _states(qmodel):
        values = np.unique(kernel.numpy())
        assert values.size <= 4
        assert np.all(np.isin(values, state["centers"].numpy()))
        assert np.all(state["frozen_mask"].numpy() == 1.0)
        assert np.all(state["interval_done"].numpy() == 1.0)
    assert history.history["quant_fc1/frozen_fraction"][-1] == 1.0
    assert history.history["quant_fc1/frozen_fraction"][0] < 1.0


def test_phases_follow_descending_magnitude(float_model, digits):
    x, y = _subset(digits, 128)
    qmodel = _scheduled(float_model, levels=3)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
    (_, state), *_ = _states(qmodel)
    centers = state["centers"].numpy()
    finished = []
    for _ in range(3):
        before = state["interval_done"].numpy().copy()
        qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[schedule])
        finished.append(int(np.flatnonzero(state["interval_done"].numpy() - before)[0]))
    magnitudes = np.abs(centers[finished])
    assert np.all(np.diff(magnitudes) <= 0)


def test_sequential_order_quantizes_one_layer_at_a_time(float_model, digits):
    x, y = _subset(digits, 128)
    qmodel = _scheduled(float_model, bits=1)
    schedule = tfq.callbacks.PhaseAdaptation(
        epochs_per_phase=1, order=["quant_logits"], update="epoch", verbose=0
    )
    assert schedule.epochs_needed(qmodel) == 8
    qmodel.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[schedule])
    frozen = {
        wrapper.name: state["frozen_mask"].numpy().mean()
        for wrapper, _, _, state in quantized_weights(qmodel)
    }
    assert frozen["quant_logits"] == 1.0
    assert frozen["quant_conv1"] == 0.0


def test_pull_loss_is_added_during_adaptation(float_model, digits):
    x, y = _subset(digits, 64)
    qmodel = _scheduled(float_model, bits=2)
    for _, state in _states(qmodel):
        state["adapting_interval"].assign(0.0)
        state["pull_strength"].assign(1.0)
    inference = qmodel.evaluate(x, y, verbose=0, batch_size=64)[0]
    pulled = qmodel.train_on_batch(x, y)[0]
    # the same batch and weights: training adds λ · Σ|w - c| > 0 on top of the data loss
    assert pulled > inference + 0.01


@pytest.fixture
def deterministic_ops():
    # TF has no public switch back; deterministic CPU kernels are fine for the later tests.
    tf.config.experimental.enable_op_determinism()


@pytest.mark.parametrize(
    "finish, epochs, interrupt_at",
    [("hold", 8, (3, 1)), ("straight_through", 6, (5, 1))],  # mid phase 2; mid finish
)
def test_resume_mid_phase_is_identical(
    float_model, digits, tmp_path, deterministic_ops, finish, epochs, interrupt_at
):
    x, y = _subset(digits, 192)

    def run(interrupt_at=None, backup=None):
        keras.utils.set_random_seed(7)
        schedule = tfq.callbacks.PhaseAdaptation(
            epochs_per_phase=1 if finish != "hold" else 2, finish=finish, verbose=0
        )
        return fit_with_backup(
            _scheduled(float_model, bits=2), x, y, schedule, backup, interrupt_at,
            epochs=epochs, batch_size=64,
        )  # fmt: skip

    reference = run()
    assert run(interrupt_at=interrupt_at, backup=tmp_path / "backup") is None
    resumed = run(backup=tmp_path / "backup")
    for (k1, s1), (k2, s2) in zip(_states(reference), _states(resumed), strict=True):
        np.testing.assert_array_equal(k1.numpy(), k2.numpy())
        for key in ("centers", "frozen_mask", "interval_done", "schedule_step"):
            np.testing.assert_array_equal(s1[key].numpy(), s2[key].numpy())


def test_nan_loss_does_not_advance(float_model, capsys):
    qmodel = _scheduled(float_model, bits=2)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1)
    schedule.set_model(qmodel)
    schedule.set_params({"steps": 10, "epochs": 4})
    schedule.on_train_begin()
    schedule.on_epoch_begin(0)
    schedule.on_train_batch_end(0, {"loss": float("nan")})
    assert "loss is nan" in capsys.readouterr().out
    assert all(s["schedule_step"].numpy() == 0 for _, s in _states(qmodel))
    schedule.on_train_batch_end(0, {"loss": 1.0})
    assert all(s["schedule_step"].numpy() == 1 for _, s in _states(qmodel))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"epochs_per_phase": 0}, ValueError, "epochs_per_phase=0"),
        ({"order": "random"}, ValueError, "order='random'"),
        ({"order": 3}, TypeError, "order=3"),
        ({"update": "step"}, ValueError, "update='step'"),
        ({"pull_decay": 1.5}, ValueError, "pull_decay=1.5"),
        ({"finish": "thaw"}, ValueError, "finish='thaw'"),
        ({"finish": "straight_through", "tune_centers": True}, ValueError, "tune_centers=True"),
    ],
)
def test_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error) as info:
        tfq.callbacks.PhaseAdaptation(**kwargs)
    assert fragment in str(info.value)


def test_model_without_masked_quantizers_fails_before_training(float_model, digits):
    x, y = _subset(digits, 64)
    scheme = tfq.schemes.Multivalued(bits=2, mode="snap")
    qmodel = compile_model(tfq.quantize_model(float_model, scheme))
    before = [w.copy() for w in qmodel.get_weights()]
    with pytest.raises(ValueError, match="mode='snap'"):
        qmodel.fit(x, y, epochs=1, verbose=0, callbacks=[tfq.callbacks.PhaseAdaptation()])
    assert all(np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights(), strict=True))


@pytest.mark.parametrize("fused", [True, False])
def test_default_mode_snaps_until_a_schedule_takes_it(float_model, digits, fused):
    """Default mode "auto": a plain fit snaps every weight; a schedule's fit that follows
    (reusing the train function traced for snapping, as Keras does) computes exactly as on a
    model built with mode="masked" in the same state, and ends every weight on a center."""
    x, y = _subset(digits)

    def build(mode):
        scheme = tfq.schemes.Multivalued(bits=2, **({"mode": mode} if mode else {}))
        qmodel = tfq.quantize_model(float_model, scheme)
        qmodel.compile(keras.optimizers.SGD(0.05), compile_model(qmodel).loss)
        return qmodel

    default = build(None)
    default.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    snapped = default.predict(x[:64], verbose=0)
    masked = build("masked")
    masked.set_weights(default.get_weights())
    assert not np.allclose(snapped, masked.predict(x[:64], verbose=0))  # it did snap
    histories = []
    for qmodel in (default, masked):
        schedule = tfq.callbacks.PhaseAdaptation(fused=fused)
        history = qmodel.fit(
            x,
            y,
            epochs=schedule.epochs_needed(qmodel),
            batch_size=64,
            verbose=0,
            shuffle=False,
            callbacks=[schedule, _Recorder()],
        )
        histories.append(history.history["loss"])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)
    for wrapper, _, quantizer, _ in quantized_weights(default):
        assert quantizer.get_config()["mode"] == "masked", wrapper.name
    for kernel, state in _states(default):
        assert np.all(state["frozen_mask"].numpy() == 1.0)
        assert np.all(np.isin(kernel.numpy(), state["centers"].numpy()))


def test_unknown_layer_in_order(float_model, digits):
    x, y = _subset(digits, 64)
    qmodel = _scheduled(float_model)
    with pytest.raises(ValueError, match="'nope'"):
        qmodel.fit(
            x, y, epochs=1, verbose=0, callbacks=[tfq.callbacks.PhaseAdaptation(order=["nope"])]
        )


def test_config_round_trip():
    schedule = tfq.callbacks.PhaseAdaptation(
        epochs_per_phase=3,
        pull_strength=0.02,
        pull_decay=0.9,
        recluster=True,
        order=["a", "b"],
        update="epoch",
        steps_per_epoch=7,
        verbose=0,
        finish="straight_through",
    )
    clone = tfq.callbacks.PhaseAdaptation.from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()


def test_tensorboard_gets_schedule_scalars(float_model, digits, tmp_path):
    x, y = _subset(digits, 64)
    qmodel = _scheduled(float_model, bits=1)
    board = keras.callbacks.TensorBoard(str(tmp_path))
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
    qmodel.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[schedule, board])
    tags = set()
    for path in (tmp_path / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    assert {"epoch_quant_fc1/frozen_fraction", "epoch_quant_fc1/quantization_error"} <= tags


def test_tune_centers_moves_the_codebook_and_ends_on_the_grid(float_model, digits):
    x, y = _subset(digits)
    runs = {}
    for tune in (False, True):
        keras.utils.set_random_seed(5)
        qmodel = _scheduled(float_model, bits=2)
        schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, tune_centers=tune, verbose=0)
        epochs = schedule.epochs_needed(qmodel) + 2  # two epochs of center tuning
        qmodel.fit(
            x, y, epochs=epochs, batch_size=64, shuffle=False, verbose=0, callbacks=[schedule]
        )
        runs[tune] = qmodel
    for (kernel, state), (_, plain) in zip(_states(runs[True]), _states(runs[False]), strict=True):
        centers = state["centers"].numpy()
        assert state["center_tuning"].numpy() == 1.0
        assert np.all(np.isin(kernel.numpy(), centers))  # every weight on a center
        np.testing.assert_array_equal(tfq.quantizers.multivalued.snap_centers(centers), centers)
        assert len(np.unique(kernel.numpy())) <= 4
        assert not np.array_equal(centers, plain["centers"].numpy())  # the centers trained


def test_tune_centers_flag_is_the_tune_centers_finish():
    schedule = tfq.callbacks.PhaseAdaptation(tune_centers=True)
    assert schedule.get_config()["finish"] == "tune_centers"


def _kernel_codes(model):
    """Each kernel's weights as indices into its codebook (every weight is on a center)."""
    return [np.searchsorted(s["centers"].numpy(), k.numpy()) for k, s in _states(model)]


@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_straight_through_finish_moves_weights_between_fixed_centers(float_model, digits, sparsity):
    x, y = _subset(digits)
    scheme = tfq.schemes.Multivalued(levels=5 if sparsity else 4, mode="masked", sparsity=sparsity)
    keras.utils.set_random_seed(5)
    qmodel = compile_model(tfq.quantize_model(float_model, scheme), 3e-3)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, finish="straight_through")
    needed = schedule.epochs_needed(qmodel)
    fit = dict(batch_size=32, shuffle=False, verbose=0, callbacks=[schedule])
    qmodel.fit(x, y, epochs=needed, **fit)
    phased = [(k.numpy(), s["centers"].numpy()) for k, s in _states(qmodel)]
    codes = _kernel_codes(qmodel)

    class Forward(keras.callbacks.Callback):  # during the finish: kernels drift off the centers
        drifted = False

        def on_train_batch_end(self, batch, logs=None):
            for kernel, state in _states(self.model):
                Forward.drifted |= not np.all(np.isin(kernel.numpy(), state["centers"].numpy()))

    qmodel.fit(x, y, epochs=3, **{**fit, "callbacks": [schedule, Forward()]})
    assert Forward.drifted
    moved = 0
    for (kernel, state), (before, centers), old, new in zip(
        _states(qmodel), phased, codes, _kernel_codes(qmodel), strict=True
    ):
        assert state["center_tuning"].numpy() == 2.0
        np.testing.assert_array_equal(state["centers"].numpy(), centers)  # the centers stay
        assert np.all(np.isin(kernel.numpy(), centers))  # every weight back on a center
        assert np.all(state["frozen_mask"].numpy() == 1.0)
        moved += int(np.sum(old != new))
        if sparsity:  # pruned weights stay pruned
            assert np.all(kernel.numpy()[before == 0.0] == 0.0)
    assert moved > 0  # some weights changed center, which a held finish never does


def _random_layer(shape, frozen_share):
    """A kernel of standard normal weights and a frozen mask with about `frozen_share` set,
    as tensors (inputs of a schedule's XLA update)."""
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, shape).astype(np.float32)
    mask = (rng.random(shape) < frozen_share).astype(np.float32)
    return tf.constant(weights), tf.constant(mask)


def test_update_keeps_everything_where_the_guard_says_not_finite():
    """The guard's answer goes into the update as a tensor (no tf.cond around it): False must
    leave the weights, mask and centers exactly as they were, True must change them."""
    weights, mask = _random_layer((40, 30), 0.3)
    centers = tf.constant([-1.5, -0.5, 0.5, 1.5])
    bounds = tf.constant([-4.0, -1.0, 0.0, 1.0, 4.0])
    done = tf.constant([0.0, 0.0, 0.0, 0.0])
    args = (weights, mask, centers, bounds, done, tf.constant(3), tf.constant(0.5))
    for finite, same in ((tf.constant(False), True), (tf.constant(True), False)):
        new_weights, new_mask = phase_adaptation._adapted(*args, finite)
        assert np.array_equal(new_weights.numpy(), weights.numpy()) == same
        assert np.array_equal(new_mask.numpy(), mask.numpy()) == same
        moved, new_centers = phase_adaptation._recentered(weights, centers, False, finite)
        assert np.array_equal(moved.numpy(), weights.numpy()) == same
        assert np.array_equal(new_centers.numpy(), centers.numpy()) == same
