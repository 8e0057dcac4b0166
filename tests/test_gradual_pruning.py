"""GradualPruning on digits: the zero interval follows Zhu & Gupta's schedule, never shrinks,
reaches each layer's target, pruned weights are exact zeros in the codebook, a resumed run
is identical, a NaN kernel does not move its interval, and the config round-trips."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model, fit_with_backup
from tfquant._keras import quantized_weights, tf
from tfquant.callbacks import pruning as pruning_module
from tfquant.callbacks.pruning import pruning_sparsity

keras = tfq.keras


def _subset(digits, n=256):
    (x, y), _ = digits
    return x[:n], y[:n]


def _pruned_model(float_model, sparsity=0.8, layers=None):
    scheme = tfq.schemes.Multivalued(levels=5, sparsity=sparsity, layers=layers)
    return compile_model(tfq.quantize_model(float_model, scheme), 1e-3)


def _states(model):
    return [(w, q, s) for _, w, q, s in quantized_weights(model) if "zero_threshold" in s]


class _Snapshots(keras.callbacks.Callback):
    """Per layer kernel, zero threshold and schedule step, when the epoch starts and after
    every batch. Listed before GradualPruning in `callbacks` it sees what an update is given;
    listed after, what the update left."""

    def __init__(self):
        super().__init__()
        self.records = []  # one per event: (schedule step, [(kernel, threshold)] per layer)

    def _record(self):
        states = _states(self.model)
        layers = [(k.numpy().copy(), float(s["zero_threshold"].numpy())) for k, _, s in states]
        self.records.append((int(states[0][2]["schedule_step"].numpy()), layers))

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            self._record()

    def on_train_batch_end(self, batch, logs=None):
        self._record()


def _rounded_count(sparsity, size):
    """How many weights an update prunes for `sparsity` at least: the code rounds to a count
    and keeps one weight outside the interval."""
    return min(int(round(sparsity * size)), size - 1)


def test_schedule_formula():
    values = [pruning_sparsity(t, 0.9, 0.2, 10, 30, 3) for t in range(0, 40)]
    assert values[:11] == [0.2] * 11 and values[30:] == [0.9] * 10
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[20] == pytest.approx(0.9 - 0.7 * 0.5**3)


def test_zero_interval_grows_to_the_target(float_model, digits):
    x, y = _subset(digits)
    targets = {"quant_fc1": 0.9}
    qmodel = _pruned_model(float_model, 0.7, layers={"fc1": {"sparsity": 0.9}})
    pruning = tfq.callbacks.GradualPruning(end_epoch=2, frequency=3, verbose=0)
    after = _Snapshots()
    qmodel.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[pruning, after])
    thresholds = np.array([[t for _, t in layers] for _, layers in after.records])
    assert np.all(np.diff(thresholds, axis=0) >= 0), "a zero interval shrank"
    first_batch = after.records[1][1]
    assert max(np.mean(k == 0) for k, _ in first_batch) < 0.5, "cubic start at 0 prunes little"
    for (wrapper, kernel, quantizer, state), (last, threshold) in zip(
        quantized_weights(qmodel), after.records[-1][1], strict=True
    ):
        target = targets.get(wrapper.name, 0.7)
        assert quantizer.sparsity == pytest.approx(target)
        # At end_epoch the interval holds the rounded target count; training afterwards
        # only lets weights drift into it (pruned ones get no gradient).
        pruned = np.abs(last) <= threshold
        assert pruned.sum() >= _rounded_count(target, last.size), (wrapper.name, pruned.mean())
        hard = np.asarray(quantizer.hard_quantize(kernel, state))
        centers = state["centers"].numpy()
        assert 0.0 in centers and np.all(np.isin(hard, centers))
        np.testing.assert_array_equal(hard == 0, pruned)  # pruned <=> quantized to exactly 0
    assert int(_states(qmodel)[0][2]["schedule_step"].numpy()) == 3 * 8
    assert qmodel.train_function is not None  # the model's own train function is back


def test_updates_follow_the_schedule(float_model, digits):
    """At every update (batch 0, every `frequency` batches, end_epoch) each layer's zero
    interval holds exactly the schedule's rounded count of the weights it was given (more only
    by ties, or when the interval already held more: it never shrinks), they become exact
    zeros, and between updates no pruned weight leaves the interval."""
    x, y = _subset(digits, 128)  # 4 batches of 32 per epoch
    qmodel = _pruned_model(float_model, 0.8)
    pruning = tfq.callbacks.GradualPruning(
        end_epoch=2, begin_epoch=0.5, initial_sparsity=0.1, frequency=2, verbose=0
    )
    before, after = _Snapshots(), _Snapshots()
    callbacks = [before, pruning, after]
    qmodel.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks)
    steps = [step for step, _ in after.records]
    assert steps == list(range(13)) and [step for step, _ in before.records] == steps
    rose = set()
    shares = {}  # per layer: zero fraction right after each update
    for (step, given), (_, left), previous in zip(
        before.records, after.records, [None, *after.records[:-1]], strict=True
    ):
        update = step % 2 == 0  # batches 0, 2, 4, 6, 8 (= end_epoch = 2 * 4), 10, 12
        sparsity = pruning_sparsity(step, 0.8, 0.1, 2, 8, 3)  # begin 0.5 * 4, end 2 * 4
        for index, ((kernel, old), (pruned_kernel, threshold)) in enumerate(
            zip(given, left, strict=True)
        ):
            magnitude, size = np.abs(kernel), kernel.size
            inside = np.abs(pruned_kernel) <= threshold
            if previous is not None:  # pruned weights stay pruned, before and after an update
                last_kernel, last_threshold = previous[1][index]
                assert np.all(np.abs(kernel[np.abs(last_kernel) <= last_threshold]) <= old)
            if not update:
                assert threshold == old and np.array_equal(pruned_kernel, kernel), step
                continue
            count = _rounded_count(sparsity, size)
            assert threshold >= (old if step else 0.0), (step, index)
            assert inside.sum() >= count, (step, index, inside.mean(), sparsity)
            assert inside.mean() >= sparsity - 0.5 / size  # the rounding, as a fraction
            if step == 0 or threshold > old:  # t is the count-th smallest |w| it was given
                rose.add(step)
                assert (magnitude < threshold).sum() < count <= (magnitude <= threshold).sum()
            np.testing.assert_array_equal(pruned_kernel == 0, inside)  # interval = exact zeros
            np.testing.assert_array_equal(pruned_kernel[~inside], kernel[~inside])
            assert shares.setdefault(index, [0.0])[-1] <= inside.mean(), "sparsity went down"
            shares[index].append(inside.mean())
    assert {0, 4, 6, 8} <= rose  # batch 0 sets s_i; the schedule rises over 2 < step <= 8
    for layer_shares in shares.values():
        assert layer_shares[1] < 0.1 + 0.05 < 0.8 - 0.05 < layer_shares[-1]


def test_last_update_divides_exactly(float_model, digits, monkeypatch):
    """Updates between the first and the last refine the previous centers by Lloyd's iteration;
    the last one (at end_epoch, here the last batch) is the exact division of what it saw."""
    x, y = _subset(digits, 128)  # 4 batches of 32
    qmodel = _pruned_model(float_model, 0.8)
    starts = []
    original = pruning_module.sparse_centers

    def spy(*args, start=None, **kwargs):
        starts.append(start is not None)
        return original(*args, start=start, **kwargs)

    monkeypatch.setattr(pruning_module, "sparse_centers", spy)
    pruning = tfq.callbacks.GradualPruning(end_epoch=2, frequency=2, verbose=0)
    qmodel.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, callbacks=[pruning])
    layers = len(_states(qmodel))
    # batch 0 exact, batches 2, 4, 6 warm, batch 8 (= end_epoch) exact, per layer
    assert starts[:layers] == [False] * layers and starts[-layers:] == [False] * layers
    assert any(starts), "no update between the first and the last refined the centers"
    for kernel, quantizer, state in _states(qmodel):
        values = kernel.numpy()
        share = float(np.mean(np.abs(values) <= state["zero_threshold"].numpy()))
        expected, _ = original(values, quantizer.levels, share)
        np.testing.assert_array_equal(state["centers"].numpy(), expected)


def test_warm_start_lands_next_to_the_exact_division():
    from tfquant.quantizers.multivalued import sparse_centers

    kernel = (np.random.default_rng(0).standard_t(4, (200, 100)) * 0.05).astype(np.float32)
    exact, t = sparse_centers(kernel, 7, 0.5)
    outside = np.sort(kernel[np.abs(kernel) > t])

    def sse(centers):
        mids = (centers[1:] + centers[:-1]) / 2
        return float(np.sum((outside - centers[np.searchsorted(mids, outside)]) ** 2))

    refined, _ = sparse_centers(kernel, 7, 0.5, start=exact)  # the optimum is a fixed point
    step = np.max(np.abs(exact)) / 127
    np.testing.assert_allclose(refined, exact, rtol=0, atol=step)
    moved, _ = sparse_centers(kernel, 7, 0.5, start=exact * 1.2)  # from centers 20 % off
    nonzero = lambda c: np.delete(c, np.argmin(np.abs(c)))  # noqa: E731
    assert sse(nonzero(moved)) <= 1.01 * sse(nonzero(exact))
    assert sse(nonzero(exact * 1.2)) > 1.05 * sse(nonzero(exact))  # the start was off
    garbage = np.linspace(-9.0, 9.0, 7)  # divisions other than k-means ignore the start
    np.testing.assert_array_equal(
        sparse_centers(kernel, 7, 0.5, "linear", start=garbage)[0],
        sparse_centers(kernel, 7, 0.5, "linear")[0],
    )


def test_resume_mid_pruning_is_identical(float_model, digits, tmp_path):
    tf.config.experimental.enable_op_determinism()
    x, y = _subset(digits, 192)

    def run(interrupt_at=None, backup=None):
        keras.utils.set_random_seed(3)
        schedule = tfq.callbacks.GradualPruning(end_epoch=3, frequency=2, verbose=0)
        return fit_with_backup(
            _pruned_model(float_model, 0.8), x, y, schedule, backup, interrupt_at,
            epochs=4, batch_size=64,
        )  # fmt: skip

    reference = run()
    assert run(interrupt_at=(1, 1), backup=tmp_path / "backup") is None  # mid pruning
    resumed = run(backup=tmp_path / "backup")
    for (k1, _, s1), (k2, _, s2) in zip(_states(reference), _states(resumed), strict=True):
        np.testing.assert_array_equal(k1.numpy(), k2.numpy())
        for key in ("centers", "zero_threshold", "schedule_step"):
            np.testing.assert_array_equal(s1[key].numpy(), s2[key].numpy())


def test_nan_kernel_keeps_its_interval(float_model, capsys):
    qmodel = _pruned_model(float_model, 0.8)
    pruning = tfq.callbacks.GradualPruning(end_epoch=1, frequency=1)
    pruning.set_model(qmodel)
    pruning.set_params({"steps": 4, "epochs": 1})
    pruning.on_train_begin()
    pruning.on_epoch_begin(0)
    kernel, _, state = _states(qmodel)[0]
    before = float(state["zero_threshold"].numpy())
    values = kernel.numpy()
    values.flat[0] = np.nan
    kernel.assign(values)
    pruning.on_train_batch_end(0, {"loss": 1.0})
    assert "NaN or Inf" in capsys.readouterr().out
    assert float(state["zero_threshold"].numpy()) == before
    pruning.on_train_end()


def test_ending_before_end_epoch_says_so_and_resumes(float_model, digits, capsys):
    x, y = _subset(digits, 128)  # 4 batches of 32
    qmodel = _pruned_model(float_model, 0.8)
    pruning = tfq.callbacks.GradualPruning(end_epoch=2, frequency=2)
    qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[pruning])
    assert "before end_epoch (batch 8)" in capsys.readouterr().out
    qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[pruning])
    assert "before end_epoch" not in capsys.readouterr().out
    for kernel, _, state in _states(qmodel):
        assert state["schedule_step"].numpy() == 8
        pruned = np.abs(kernel.numpy()) <= state["zero_threshold"].numpy()
        assert pruned.sum() >= _rounded_count(0.8, pruned.size)


def test_masked_model_is_refused_before_training(float_model, digits):
    x, y = _subset(digits, 64)
    scheme = tfq.schemes.Multivalued(levels=5, sparsity=0.5, mode="masked")
    qmodel = compile_model(tfq.quantize_model(float_model, scheme))
    before = [w.copy() for w in qmodel.get_weights()]
    with pytest.raises(ValueError, match="'snap' mode"):
        qmodel.fit(x, y, epochs=1, verbose=0, callbacks=[tfq.callbacks.GradualPruning(1)])
    assert all(np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights(), strict=True))


def test_config_round_trip():
    pruning = tfq.callbacks.GradualPruning(
        end_epoch=5.5,
        begin_epoch=1,
        initial_sparsity=0.2,
        power=2,
        frequency=50,
        steps_per_epoch=10,
        verbose=2,
        fused=False,
    )
    clone = tfq.callbacks.GradualPruning.from_config(pruning.get_config())
    assert clone.get_config() == pruning.get_config()
