"""Faults: a trainer SIGKILLed in the middle of every schedule and restarted with
keras.callbacks.BackupAndRestore ends bit-identical to an uninterrupted run; a NaN in a batch
stops every schedule from advancing, with a message that says so.

The SIGKILL run is tests/scripts/schedule_trainer.py (digits, masked 2-bit, 4 batches per
epoch, op determinism, no shuffling). It is killed four times, once inside each schedule:
PhaseAdaptation in the second epoch of its second phase (epochs_per_phase=2, so the restart
lands inside a phase), IntervalContraction mid-contraction, PartitionRounds and
IncrementalLayers mid-round. BackupAndRestore saves at epoch ends, so each restart repeats the
killed epoch from its first batch with the state of the previous epoch end. This caught a real
bug: the epoch-level schedules counted an epoch in `on_epoch_end`, after BackupAndRestore (first
in the callback list) had saved, so a restart replayed a round one epoch late.
"""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tests.scripts import harness
from tfquant._keras import quantized_weights

keras = tfq.keras
STEPS_PER_EPOCH = 4
KILL_AT = [("phase", 3, 1), ("contraction", 1, 1), ("rounds", 2, 2), ("layers", 2, 1)]


@pytest.mark.multiprocess
def test_sigkill_in_every_schedule_resumes_bit_identical(tmp_path, schedule_reference):
    run = harness.run_with_kills(tmp_path, KILL_AT, timeout=600)
    reference = schedule_reference.wait()
    assert len(run.kills) == 4 and run.processes == 5
    for schedule, epoch, batch in KILL_AT:
        expected = harness.load_variables(reference / f"{schedule}.npz")
        resumed = harness.load_variables(tmp_path / f"{schedule}.npz")
        assert len(expected) == len(resumed) > 40
        # by position: layer names carry a per-process counter (quantize_layer_1, ...)
        for (name, value), (_, other) in zip(expected.items(), resumed.items(), strict=True):
            np.testing.assert_array_equal(value, other, err_msg=f"{schedule}: {name}")

        # The restarted process began at the killed epoch, in the state the uninterrupted run
        # had then (same phase, same step, same finished intervals and frozen counts).
        reference_log = harness.epoch_log(reference / f"{schedule}.jsonl")
        states = {line["epoch"]: line["state"] for line in reference_log}
        lines = harness.epoch_log(tmp_path / f"{schedule}.jsonl")
        (kill,) = [k for k in run.kills if k["marker"] == f"kill-{schedule}-{epoch}-{batch}.json"]
        killed_pid = kill["pid"]
        assert (kill["epoch"], kill["batch"]) == (epoch, batch)
        restarted = [line for line in lines if line["pid"] != killed_pid]
        assert restarted[0]["epoch"] == epoch
        assert list(restarted[0]["state"].values()) == list(states[epoch].values())
        assert max(line["epoch"] for line in lines if line["pid"] == killed_pid) == epoch
    # PhaseAdaptation was killed inside a phase: 8 steps per phase, the restart at step 12
    phase_restart = harness.epoch_log(tmp_path / "phase.jsonl")[4]
    steps = {state["schedule_step"] for state in phase_restart["state"].values()}
    assert steps == {3.0 * STEPS_PER_EPOCH} and (3 * STEPS_PER_EPOCH) % 8 != 0


SCHEDULES = {
    "PhaseAdaptation": lambda: tfq.callbacks.PhaseAdaptation(epochs_per_phase=1),
    "IntervalContraction": lambda: tfq.callbacks.IntervalContraction(epochs=2),
    "PartitionRounds": lambda: tfq.callbacks.PartitionRounds(epochs_per_round=1),
    "IncrementalLayers": lambda: tfq.callbacks.IncrementalLayers(epochs_per_layer=1),
}
STATE_KEYS = (
    "centers",
    "frozen_mask",
    "interval_done",
    "interval_bounds",
    "schedule_step",
    "adapting_interval",
    "adaptation",
)


class _Snapshots(keras.callbacks.Callback):
    """The schedule state after every batch (runs after the schedule)."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(
            [
                {key: variables[key].numpy().copy() for key in STATE_KEYS}
                for _, _, _, variables in quantized_weights(self.model)
            ]
        )


def _same(first, second):
    return all(
        np.array_equal(a[key], b[key]) for a, b in zip(first, second, strict=True) for key in a
    )


@pytest.mark.parametrize("name", SCHEDULES)
def test_nan_batch_stops_the_schedule_and_says_so(float_model, digits, name, capsys):
    (x, y), _ = digits
    x, y = x[:256].copy(), y[:256]
    x[128:192] = np.nan  # batch 2 of every epoch
    qmodel = compile_model(
        tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2, mode="masked")), 5e-4
    )
    snapshots = _Snapshots()
    qmodel.fit(
        x,
        y,
        epochs=2,
        batch_size=64,
        shuffle=False,
        verbose=0,
        callbacks=[SCHEDULES[name](), snapshots],
    )
    out = capsys.readouterr().out
    # Which route the NaN takes depends on the CPU's kernels: the FakeQuant ops may clamp it
    # on its way forward (the loss stays finite, the input range and conv1's weights do not),
    # or it reaches the loss. Either way the message names what was not finite.
    routes = (
        f"{name}: loss is nan",
        f"{name}: loss is inf",
        f"{name}: the weights [",  # ... hold NaN or Inf
        f"{name}: a loss or weight was NaN or Inf",
    )
    assert sum(route in out for route in routes) >= 1, out
    assert "does not advance" in out
    assert out.count("does not advance") <= 2  # once per epoch, not once per batch
    states = snapshots.states
    assert len(states) == 2 * STEPS_PER_EPOCH
    # Batches 0 and 1 were finite: the schedule ran (a step counted, or a round frozen) ...
    assert any(np.any(s["frozen_mask"] > 0) or s["schedule_step"] > 0 for s in states[1])
    # ... and from the NaN batch on, nothing in its state moved: no step, no mask, no center.
    for later in states[2:]:
        assert _same(states[1], later)
    for _, _, _, variables in quantized_weights(qmodel):
        assert np.all(np.isfinite(variables["centers"].numpy()))
    assert not all(np.all(np.isfinite(w)) for w in qmodel.get_weights())  # it did train on NaN


def test_nan_loss_is_reported_by_every_schedule(float_model, capsys):
    qmodel = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2, mode="masked"))
    for name, make in SCHEDULES.items():
        schedule = make()
        schedule.set_model(qmodel)
        schedule.set_params({"steps": 4, "epochs": 2})
        schedule.on_train_begin()
        schedule.on_epoch_begin(0)
        for batch in range(4):
            schedule.on_train_batch_end(batch, {"loss": float("nan")})
        schedule.on_epoch_end(0, {"loss": float("nan")})
        out = capsys.readouterr().out
        assert f"{name}: loss is nan" in out and "does not advance" in out, out
        steps = {float(s["schedule_step"].numpy()) for _, _, _, s in quantized_weights(qmodel)}
        assert steps == {0.0}, name
