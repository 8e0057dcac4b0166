"""Shared fixtures: a float digits CNN trained once per session, and quantizer holders."""

import numpy as np
import pytest

import tfquant as tfq
from tfquant.models import compile_classifier, datasets, digits_cnn

keras = tfq.keras


compile_model = compile_classifier


@pytest.fixture(scope="session")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="session")
def float_model(digits):
    (x, y), _ = digits
    model = compile_model(digits_cnn(seed=1))
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def schedule_reference(tmp_path_factory):
    """A plain single-device run of tests/scripts/schedule_trainer.py (every schedule, the
    seed and global batch of the fault and multi-worker runs), started in the background when
    a test first asks for it; `.wait()` returns its output folder."""
    from tests.scripts import harness

    reference = _Background(harness, tmp_path_factory.mktemp("schedule_reference"))
    yield reference
    reference.stop()


class _Background:
    def __init__(self, harness, out):
        self.harness, self.out = harness, out
        self.process = harness.start_plain(out)
        self.error = None

    def wait(self, timeout=600):
        if self.process.returncode is None and self.error is None:
            try:
                self.harness.wait(self.process, timeout)
            except self.harness.RunError as error:
                self.error = error
        if self.error is not None:
            raise self.error
        return self.out

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def subclassed_model(inputs=3, units=2):
    """A built subclassed Keras model (one Dense): what graph-based functions must refuse."""

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(units)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, inputs), np.float32))
    return model


def build_quantizer(quantizer, shape, depthwise=False):
    """Builds `quantizer` for a kernel of `shape`, its variables owned by a bare layer."""
    owner = keras.layers.DepthwiseConv2D(3) if depthwise else keras.layers.Layer()
    variables = quantizer.build(shape, "kernel", owner)
    return variables


def _named_weights(model):
    return {
        (layer.name, w.name.split("/")[-1]): w.numpy()
        for layer in model.layers
        for w in layer.weights
    }


def weights_equal(a, b):
    """Same weights layer by layer, matched by name (creation order may differ on reload)."""
    first, second = _named_weights(a), _named_weights(b)
    return first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


class Interrupted(Exception):
    """Raised by `fit_with_backup` where it stops training."""


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Interrupted()


def fit_with_backup(qmodel, x, y, schedule, backup=None, interrupt_at=None, **fit_kwargs):
    """`qmodel.fit` with `schedule`, a BackupAndRestore into `backup` (if given) and, with
    `interrupt_at=(epoch, batch)`, a crash after that batch. Returns the model, or None when
    it was interrupted (a later call with the same `backup` resumes)."""
    callbacks = [schedule]
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup)))
    if interrupt_at is not None:
        callbacks.append(_InterruptAt(*interrupt_at))
    try:
        qmodel.fit(x, y, shuffle=False, verbose=0, callbacks=callbacks, **fit_kwargs)
    except Interrupted:
        return None
    return qmodel
