"""Shared fixtures: a float digits CNN trained once per session, and quantizer holders."""

import numpy as np
import pytest
from tfquant.models import datasets, digits_cnn

import tfquant as tfq

keras = tfq.keras


def compile_model(model, learning_rate=1e-3):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="session")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="session")
def float_model(digits):
    (x, y), _ = digits
    model = compile_model(digits_cnn(seed=1))
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model


def build_quantizer(quantizer, shape, depthwise=False):
    """Builds `quantizer` for a kernel of `shape`, its variables owned by a bare layer."""
    owner = keras.layers.DepthwiseConv2D(3) if depthwise else keras.layers.Layer()
    variables = quantizer.build(shape, "kernel", owner)
    return variables


def weights_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
