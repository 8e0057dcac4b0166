"""Each schedule's per-batch update runs inside Keras' train step (fused) with exactly the
result of running it from the `on_train_batch_end` hook; the model gets its own train
function back after `fit`; models the fused step cannot serve fall back to the hook."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant._keras import quantized_weights, tf

keras = tfq.keras

SCHEDULES = {
    "PhaseAdaptation": lambda **kw: tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, **kw),
    "IntervalContraction": lambda **kw: tfq.callbacks.IntervalContraction(epochs=2, **kw),
    "PartitionRounds": lambda **kw: tfq.callbacks.PartitionRounds(rounds=2, **kw),
    "IncrementalLayers": lambda **kw: tfq.callbacks.IncrementalLayers(**kw),
}


class _Watch(keras.callbacks.Callback):
    """Records whether the schedule ran fused during training (it is undone after fit)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.fused = schedule, []

    def on_train_batch_end(self, batch, logs=None):
        self.fused.append(self.schedule._after_step.active)


def _quantized(float_model):
    scheme = tfq.schemes.Multivalued(bits=2, mode="masked")
    return compile_model(tfq.quantize_model(float_model, scheme), 5e-4)


def _train(qmodel, schedule, x, y):
    watch = _Watch(schedule)
    epochs = schedule.epochs_needed(qmodel) + 1
    qmodel.fit(
        x, y, epochs=epochs, batch_size=64, shuffle=False, verbose=0, callbacks=[schedule, watch]
    )
    return set(watch.fused)


@pytest.mark.parametrize("name", SCHEDULES)
def test_fused_update_equals_the_hook(float_model, digits, name):
    tf.config.experimental.enable_op_determinism()
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    runs = {}
    for fused in (True, False):
        keras.utils.set_random_seed(3)
        qmodel = _quantized(float_model)
        assert _train(qmodel, SCHEDULES[name](verbose=0, fused=fused), x, y) == {fused}
        assert not getattr(qmodel.train_function, "_tfquant_fused", False)  # given back
        runs[fused] = qmodel
    for a, b in zip(runs[True].weights, runs[False].weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    for _, kernel, _, state in quantized_weights(runs[True]):
        if "centers" in state:
            assert np.all(np.isin(kernel.numpy(), state["centers"].numpy())), kernel.name


def test_fit_again_without_the_schedule_runs_no_update(float_model, digits):
    (x, y), _ = digits
    qmodel = _quantized(float_model)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
    qmodel.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0, callbacks=[schedule])

    def steps():
        return [s["schedule_step"].numpy() for _, _, _, s in quantized_weights(qmodel) if s]

    before = steps()
    qmodel.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)
    after = steps()
    assert before == after and before[0] == 2


def test_steps_per_execution_falls_back_to_the_hook(float_model, digits):
    (x, y), _ = digits
    qmodel = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=1, mode="masked"))
    qmodel.compile(
        keras.optimizers.Adam(5e-4),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=2,
    )
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
    assert _train(qmodel, schedule, x[:256], y[:256]) == {False}
    for _, kernel, _, state in quantized_weights(qmodel):
        if "centers" in state:
            assert np.all(np.isin(kernel.numpy(), state["centers"].numpy())), kernel.name
