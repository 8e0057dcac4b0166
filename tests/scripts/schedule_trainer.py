"""Trains a tiny masked 2-bit digits model with each tfquant schedule and saves every variable.

The worker process of the fault-injection, MirroredStrategy and MultiWorkerMirroredStrategy
tests (tests/test_faults.py, tests/test_distributed.py) and of benchmarks/reliability.py.
Everything is seeded and deterministic (op determinism, no shuffling), so two runs with the
same arguments end with bit-identical variables.

    python tests/scripts/schedule_trainer.py --out DIR [--strategy none|mirrored|multiworker]
        [--schedules phase,contraction,rounds,layers] [--backup] [--kill-at phase:1:2,...]

Per schedule it writes DIR/<schedule>.npz (every model variable; under a strategy, one row per
local replica) and appends one JSON line per epoch start to DIR/<schedule>.jsonl (epoch and
schedule state, read after BackupAndRestore restored it). A schedule whose .npz exists is
skipped, so a restarted process goes on where the killed one stopped.

--backup adds keras.callbacks.BackupAndRestore (one folder per schedule, saved every epoch).
--kill-at SCHEDULE:EPOCH:BATCH (comma separated): at the end of that batch, the first time
only, the process writes DIR/kill-SCHEDULE-EPOCH-BATCH.json with its pid and waits for the test
to SIGKILL it (exit code 3 if nobody does within --wait seconds).
--strategy multiworker reads TF_CONFIG (set by the caller) and writes into DIR/worker-<index>.
--time-limit: SIGALRM ends the process after that many seconds whatever it is doing.
"""

import argparse
import json
import os
import signal
import sys
import time

SCHEDULES = ("phase", "contraction", "rounds", "layers", "pruning")
SAMPLES, BATCH = 256, 64  # 4 batches per epoch


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", default="none", choices=("none", "mirrored", "multiworker"))
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--backup", action="store_true")
    parser.add_argument("--kill-at", default="")
    parser.add_argument("--wait", type=float, default=120.0)
    parser.add_argument("--time-limit", type=int, default=600)
    args = parser.parse_args(argv)
    args.schedules = [s for s in args.schedules.split(",") if s]
    unknown = set(args.schedules) - set(SCHEDULES)
    if unknown:
        parser.error(f"unknown schedules {sorted(unknown)}; allowed: {SCHEDULES}")
    args.kill_at = [tuple(p.split(":")) for p in args.kill_at.split(",") if p]
    return args


args = parse(sys.argv[1:])
signal.alarm(args.time_limit)  # the default action of SIGALRM ends the process
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfquant as tfq  # noqa: E402  (before TensorFlow: pins Keras 2)
from tfquant._keras import quantized_weights, tf  # noqa: E402

keras = tfq.keras

# The strategy comes first: logical devices and the multi-worker cluster must be set up before
# TensorFlow initializes its devices.
if args.strategy == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif args.strategy == "multiworker":
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=120)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    args.out = os.path.join(args.out, f"worker-{task['index']}")
else:
    strategy = tf.distribute.get_strategy()
tf.config.experimental.enable_op_determinism()

from tfquant.models import datasets, digits_cnn  # noqa: E402


def make_schedule(name):
    if name == "phase":  # 4 phases of 2 epochs: a restart lands inside a phase
        return tfq.callbacks.PhaseAdaptation(epochs_per_phase=2)
    if name == "contraction":
        return tfq.callbacks.IntervalContraction(epochs=2)
    if name == "rounds":
        return tfq.callbacks.PartitionRounds(epochs_per_round=1, recluster=True)
    if name == "pruning":  # snap mode with a zero interval; updates every 3 of 4 batches
        return tfq.callbacks.GradualPruning(end_epoch=2, frequency=3)
    return tfq.callbacks.IncrementalLayers(epochs_per_layer=1)


def schedule_state(model):
    """The schedule variables of every scheduled layer, as JSON-able lists."""
    state = {}
    for wrapper, _, _, variables in quantized_weights(model):
        if "frozen_mask" not in variables:
            continue
        state[wrapper.name] = {
            "centers": variables["centers"].numpy().tolist(),
            "interval_done": variables["interval_done"].numpy().tolist(),
            "adapting_interval": float(variables["adapting_interval"].numpy()),
            "schedule_step": float(variables["schedule_step"].numpy()),
            "frozen": int(variables["frozen_mask"].numpy().sum()),
        }
        if "zero_threshold" in variables:
            state[wrapper.name]["zero_threshold"] = float(variables["zero_threshold"].numpy())
    return state


class StateLog(keras.callbacks.Callback):
    """Appends the epoch and the schedule state at every epoch start (after a restore)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        line = {"pid": os.getpid(), "epoch": epoch, "state": schedule_state(self.model)}
        with open(self.path, "a") as stream:
            stream.write(json.dumps(line) + "\n")


class KillPoint(keras.callbacks.Callback):
    """At (epoch, batch), the first time only: write a marker and wait to be SIGKILLed."""

    def __init__(self, marker, epoch, batch, wait):
        super().__init__()
        self.marker, self.at, self.wait = marker, (epoch, batch), wait
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) != self.at or os.path.exists(self.marker):
            return
        with open(self.marker + ".partial", "w") as stream:
            json.dump({"pid": os.getpid(), "epoch": self.epoch, "batch": batch}, stream)
        os.replace(self.marker + ".partial", self.marker)
        time.sleep(self.wait)
        os._exit(3)  # nobody killed us: the caller will see exit code 3


def variables_of(model):
    names, values = [], []
    for variable in model.weights:
        names.append(variable.name)
        replicas = getattr(variable, "values", None)
        if replicas is not None and strategy.num_replicas_in_sync > 1:
            values.append(np.stack([np.asarray(v.numpy()) for v in replicas]))
        else:
            values.append(np.asarray(variable.numpy())[None])
    return names, values


def save_npz(path, model, epochs):
    names, values = variables_of(model)
    arrays = {f"v{i:03d}": value for i, value in enumerate(values)}
    partial = path + ".partial.npz"
    np.savez(partial, names=np.array(names), epochs=np.array(epochs), **arrays)
    os.replace(partial, path)


def train(name, x, y):
    result = os.path.join(args.out, f"{name}.npz")
    if os.path.exists(result):
        return
    start = time.perf_counter()
    with strategy.scope():
        model = digits_cnn(seed=0)  # seeds Python, NumPy and TensorFlow
        if name == "pruning":
            scheme = tfq.schemes.Multivalued(levels=5, sparsity=0.7)
        else:
            scheme = tfq.schemes.Multivalued(bits=2, mode="masked")
        qmodel = tfq.quantize_model(model, scheme)
        qmodel.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    schedule = make_schedule(name)
    epochs = 3 if name == "pruning" else schedule.epochs_needed(qmodel)
    callbacks = []
    if args.backup:
        folder = os.path.join(args.out, f"backup-{name}")
        callbacks.append(keras.callbacks.BackupAndRestore(folder))
    callbacks += [schedule, StateLog(os.path.join(args.out, f"{name}.jsonl"))]
    for schedule_name, epoch, batch in args.kill_at:
        if schedule_name == name:
            marker = os.path.join(args.out, f"kill-{name}-{epoch}-{batch}.json")
            callbacks.append(KillPoint(marker, int(epoch), int(batch), args.wait))
    qmodel.fit(x, y, epochs=epochs, batch_size=BATCH, shuffle=False, verbose=0, callbacks=callbacks)
    save_npz(result, qmodel, epochs)
    print(f"{name}: trained {epochs} epochs in {time.perf_counter() - start:.1f} s", flush=True)


def main():
    os.makedirs(args.out, exist_ok=True)
    (x, y), _ = datasets.load("digits")
    x, y = x[:SAMPLES], y[:SAMPLES]
    for name in args.schedules:
        train(name, x, y)
    print("done", flush=True)


main()
