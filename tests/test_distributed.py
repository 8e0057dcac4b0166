"""Every schedule under tf.distribute: MirroredStrategy on 2 logical CPU devices (one process:
logical devices must be set before TensorFlow initializes them) and MultiWorkerMirroredStrategy
with 2 worker processes on 127.0.0.1 (TF_CONFIG, bounded by timeouts). All runs are
tests/scripts/schedule_trainer.py with the same seed and global batch (64).

What is exact and what is not:
  - replicas of one process, and the two workers, hold bit-identical variables (all of them:
    kernels, centers, masks, phase state, optimizer-free weights such as biases);
  - the 2-worker run equals the 2-replica MirroredStrategy run bit for bit: each replica
    computes the same half batch, and a sum of two gradients is the same in either order;
  - against one device (global batch 64 on one replica) the phase state is identical at every
    epoch start (schedule step, finished intervals, adapting interval) and at the end (every
    mask full), and PhaseAdaptation's codebook is identical (its centers are fixed when the
    model is quantized); the weights are not bit-identical. The reason is QAT itself, not tfquant:
    tfmot's activation quantizers track a moving min/max of each replica's half batch,
    averaged across replicas, where one device sees the min/max of the whole batch, so the
    forward passes differ slightly (measured after one epoch: a float model without fake-quant
    agrees to 1e-8, the QAT model to about 2e-4). Weights near an interval bound can then land
    on the other side (frozen counts differ by up to 2 % mid-schedule), and schedules whose
    centers follow the weights end slightly apart: IntervalContraction's means by about 1e-5
    of max|center|, the re-divided centers of PartitionRounds (re-clustering) and
    IncrementalLayers by a few int8 grid steps (measured: at most 4 steps, 3 % of
    max|center|). Checked to within `CENTER_TOLERANCE` of the layer's largest |center|, frozen
    counts to `FROZEN_TOLERANCE`.
"""

import numpy as np
import pytest

from tests.scripts import harness

pytestmark = pytest.mark.multiprocess

SCHEDULES = ("phase", "contraction", "rounds", "layers")
CENTER_TOLERANCE = 0.05  # of max|center|: about 6 steps of the layer's int8 grid (1/127 each)
FROZEN_TOLERANCE = 0.03  # of the frozen count, at an epoch start
EXACT_CODEBOOKS = ("phase",)


def _by_position(path):
    return list(harness.load_variables(path).items())


def _layers(variables):
    """{layer: {key: value}} of the multivalued quantizer state, from (name, value) pairs."""
    out = {}
    for name, value in variables:
        layer, _, short = name.partition("/")
        for key in ("centers", "frozen_mask", "interval_done", "schedule_step", "zero_threshold"):
            if short == f"kernel_{key}:0":
                out.setdefault(layer, {})[key] = value
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, schedule_reference):
    """Starts the MirroredStrategy run and the two workers together; waits for all three."""
    root = tmp_path_factory.mktemp("distributed")
    mirrored = harness.start_plain(root / "mirrored", strategy="mirrored")
    try:
        harness.run_multiworker(root / "multiworker", workers=2, timeout=600)
    finally:
        harness.wait(mirrored, timeout=600)
    return {
        "single": schedule_reference.wait(),
        "mirrored": root / "mirrored",
        "workers": [root / "multiworker" / f"worker-{i}" for i in range(2)],
    }


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_replicas_and_workers_are_identical(runs, schedule):
    mirrored = _by_position(runs["mirrored"] / f"{schedule}.npz")
    workers = [_by_position(folder / f"{schedule}.npz") for folder in runs["workers"]]
    for index, (name, value) in enumerate(mirrored):
        assert value.shape[0] == 2, f"{name} is not mirrored on 2 replicas"
        np.testing.assert_array_equal(value[0], value[1], err_msg=f"replicas differ: {name}")
        for worker in workers:
            np.testing.assert_array_equal(worker[index][1][0], value[0], err_msg=name)
    for layer, state in _layers(mirrored).items():
        assert np.all(state["frozen_mask"] == 1.0), layer  # every schedule finished


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_same_codebook_and_phases_as_one_device(runs, schedule):
    single = _layers(_by_position(runs["single"] / f"{schedule}.npz"))
    worker = _layers(_by_position(runs["workers"][0] / f"{schedule}.npz"))
    assert single.keys() == worker.keys() and len(single) == 4
    for layer in single:
        one, two = single[layer], worker[layer]
        for key in ("frozen_mask", "interval_done", "schedule_step"):
            np.testing.assert_array_equal(one[key], two[key], err_msg=f"{layer} {key}")
        if schedule in EXACT_CODEBOOKS:
            np.testing.assert_array_equal(one["centers"], two["centers"], err_msg=layer)
        scale = np.max(np.abs(one["centers"]))
        np.testing.assert_allclose(two["centers"], one["centers"], atol=CENTER_TOLERANCE * scale)
        assert one["centers"].shape == two["centers"].shape


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_phases_match_one_device_epoch_by_epoch(runs, schedule):
    single = harness.epoch_log(runs["single"] / f"{schedule}.jsonl")
    worker = harness.epoch_log(runs["workers"][0] / f"{schedule}.jsonl")
    assert [line["epoch"] for line in single] == [line["epoch"] for line in worker]
    for one, two in zip(single, worker, strict=True):
        for layer, state in one["state"].items():
            other = two["state"][layer]
            for key in ("schedule_step", "interval_done", "adapting_interval"):
                assert state[key] == other[key], (schedule, one["epoch"], layer, key)
            assert abs(state["frozen"] - other["frozen"]) <= FROZEN_TOLERANCE * state["frozen"]


def test_gradual_pruning_under_replicas_and_workers(runs):
    """GradualPruning (host-side updates of mirrored variables): replicas and workers
    bit-identical; against one device the same schedule steps and zero fractions within the
    frozen-count tolerance, since the kernels differ slightly (see the module docstring)."""
    mirrored = _by_position(runs["mirrored"] / "pruning.npz")
    workers = [_by_position(folder / "pruning.npz") for folder in runs["workers"]]
    for index, (name, value) in enumerate(mirrored):
        np.testing.assert_array_equal(value[0], value[1], err_msg=f"replicas differ: {name}")
        for worker in workers:
            np.testing.assert_array_equal(worker[index][1][0], value[0], err_msg=name)
    single = dict(_by_position(runs["single"] / "pruning.npz"))
    single_state = _layers(single.items())
    for layer, state in _layers(mirrored).items():
        assert state["schedule_step"][0] == 3 * 4, layer  # 3 epochs of 4 batches
        name = f"{layer.removeprefix('quant_')}/kernel:0"  # the wrapped layer's kernel
        kernel = dict(mirrored)[name][0]
        zeros = np.mean(np.abs(kernel) <= state["zero_threshold"][0])
        one = single[name][0]
        one_zeros = np.mean(np.abs(one) <= single_state[layer]["zero_threshold"][0])
        assert zeros >= 0.7 - 0.01 and abs(zeros - one_zeros) <= FROZEN_TOLERANCE, layer


def test_workers_log_the_same_phases_epoch_by_epoch(runs):
    for schedule in (*SCHEDULES, "pruning"):
        logs = [harness.epoch_log(folder / f"{schedule}.jsonl") for folder in runs["workers"]]
        assert [line["state"] for line in logs[0]] == [line["state"] for line in logs[1]]
        assert len(logs[0]) >= 2
