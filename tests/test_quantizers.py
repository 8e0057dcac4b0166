"""Property tests for every quantizer: values on the codebook, at most `levels` distinct values
(per channel for per-channel quantizers), idempotence, straight-through gradients, exact
export grid."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import build_quantizer
from tfquant._keras import tf
from tfquant.quantizers import (
    LearnedBasisActivationQuantizer,
    LearnedBasisQuantizer,
    MultivaluedQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)

QUANTIZERS = [
    lambda: MultivaluedQuantizer(bits=3),
    lambda: MultivaluedQuantizer(bits=2, division="linear"),
    lambda: MultivaluedQuantizer(levels=5, division="exponential"),
    lambda: TernaryQuantizer("twn"),
    lambda: TernaryQuantizer("twn", per_channel=True),
    lambda: TernaryQuantizer("ttq"),
    lambda: TernaryQuantizer("ttq", per_channel=True),
    lambda: UniformQuantizer(bits=4),
    lambda: UniformQuantizer(bits=3, per_channel=False),
    lambda: LearnedBasisQuantizer(bits=2),
    lambda: LearnedBasisQuantizer(bits=3, per_channel=False),
]

kernels = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    elements=st.floats(-2, 2, width=32),
)


def _prepared(make, kernel):
    quantizer = make()
    variables = build_quantizer(quantizer, kernel.shape)
    quantizer.initialize(kernel, variables)
    return quantizer, variables


def _channels(quantizer, values):
    return values.reshape(-1, values.shape[-1]) if quantizer.per_channel else values.reshape(-1, 1)


@pytest.mark.parametrize("make", QUANTIZERS)
@settings(max_examples=15, deadline=None)
@given(kernel=kernels)
@example(kernel=np.array([[3.27736e-40]], np.float32))  # subnormal: TF flushes it to 0
def test_outputs_are_on_codebook_and_idempotent(make, kernel):
    quantizer, variables = _prepared(make, kernel)
    out = quantizer(tf.constant(kernel), False, variables).numpy()
    hard = np.asarray(quantizer.hard_quantize(kernel, variables))
    np.testing.assert_array_equal(out, hard)
    for column in _channels(quantizer, out).T:
        assert np.unique(column).size <= quantizer.levels
    again = np.asarray(quantizer.hard_quantize(hard, variables))
    np.testing.assert_allclose(again, hard, rtol=0, atol=1e-6 * (np.abs(hard).max() + 1e-12))
    assert quantizer.export_exact(kernel, variables, bits=8)


@pytest.mark.parametrize("make", QUANTIZERS)
def test_straight_through_gradient(make):
    kernel = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    quantizer, variables = _prepared(make, kernel)
    latent = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizer(latent, True, variables) * 3.0)
    gradient = tape.gradient(loss, latent).numpy()
    if isinstance(quantizer, TernaryQuantizer) and quantizer.method == "ttq":
        # TTQ scales the latent gradient by W_p / 1 / W_n in its three regions (TTQ Eq. 8),
        # the same W_p and W_n the forward pass put out (test_ttq_gradients_follow_the_paper).
        out = quantizer(latent, True, variables).numpy()
        np.testing.assert_allclose(gradient, 3.0 * np.where(out == 0, 1.0, np.abs(out)))
    else:
        np.testing.assert_allclose(gradient, np.full_like(kernel, 3.0))


def test_multivalued_masked_mode_passes_unfrozen_weights():
    kernel = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    quantizer = MultivaluedQuantizer(bits=2, mode="masked")
    variables = build_quantizer(quantizer, kernel.shape)
    quantizer.initialize(kernel, variables)
    mask = np.zeros_like(kernel)
    mask[0] = 1.0
    variables["frozen_mask"].assign(mask)
    latent = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        out = quantizer(latent, True, variables)
        loss = tf.reduce_sum(out)
    out = out.numpy()
    centers = variables["centers"].numpy()
    assert set(np.round(out[0], 6)) <= set(np.round(centers, 6))
    np.testing.assert_array_equal(out[1:], kernel[1:])
    gradient = tape.gradient(loss, latent).numpy()
    np.testing.assert_array_equal(gradient[0], 0.0)  # frozen weights do not move (MPA Eq. 14)
    np.testing.assert_array_equal(gradient[1:], 1.0)


def test_multivalued_centers_on_int8_grid():
    kernel = np.random.default_rng(1).normal(size=(50, 20)).astype(np.float32)
    quantizer, variables = _prepared(lambda: MultivaluedQuantizer(bits=3), kernel)
    centers = variables["centers"].numpy().astype(np.float64)
    step = np.abs(centers).max() / 127
    np.testing.assert_allclose(centers / step, np.round(centers / step), atol=1e-4)
    assert np.all(np.diff(centers) >= 0)


def test_twn_matches_paper_rule():
    kernel = np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32)
    quantizer, variables = _prepared(lambda: TernaryQuantizer("twn"), kernel)
    out = np.asarray(quantizer.hard_quantize(kernel, variables))
    delta = 0.7 * np.abs(kernel).mean()
    above = np.abs(kernel) > delta
    alpha = np.abs(kernel[above]).mean()
    np.testing.assert_allclose(out, np.sign(kernel) * above * alpha, rtol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_ttq_gradients_follow_the_paper(per_channel):
    """TTQ (Zhu et al. 2017) Eq. 8: dL/dw~ = W_p dL/dw^t where w~ > delta, dL/dw^t where
    |w~| <= delta, W_n dL/dw^t where w~ < -delta. Eq. 7: the scales get the sums of dL/dw^t
    over their regions. The paper writes dL/dW_n = +sum over I_n although w^t = -W_n there;
    tfquant follows the chain rule (-sum), which gradient descent on W_n needs."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(12, 4)).astype(np.float32)
    kernel[:2] *= 0.01  # inside the zero region, |w~| <= delta, in every column
    upstream = rng.normal(size=kernel.shape).astype(np.float32)  # dL/dw^t, not all equal
    quantizer, variables = _prepared(lambda: TernaryQuantizer("ttq", per_channel), kernel)
    columns = kernel.shape[1] if per_channel else 1
    positive_scale = np.linspace(0.4, 0.7, columns).astype(np.float32)  # W_p != W_n != 1
    negative_scale = np.linspace(1.9, 1.3, columns).astype(np.float32)
    variables["positive_scale"].assign(positive_scale)
    variables["negative_scale"].assign(negative_scale)
    latent = tf.Variable(kernel)
    scales = [variables["positive_scale"], variables["negative_scale"]]
    with tf.GradientTape() as tape:
        out = quantizer(latent, True, variables)
        loss = tf.reduce_sum(out * upstream)
    latent_gradient, positive_gradient, negative_gradient = (
        g.numpy() for g in tape.gradient(loss, [latent, *scales])
    )
    out = out.numpy()

    view = lambda a: a if per_channel else a.reshape(-1, 1)  # noqa: E731  [N, C], C scale groups
    delta = 0.05 * np.abs(view(kernel)).max(axis=0)  # t * max|w~|, t = 0.05
    positive, negative = view(kernel) > delta, view(kernel) < -delta
    assert positive.any(axis=0).all() and negative.any(axis=0).all()
    assert (~positive & ~negative).any(axis=0).all()  # every region is tested in every group
    # Forward: W_p / 0 / -W_n, the scales snapped to the int8 grid of max(W_p, W_n).
    step = np.maximum(positive_scale, negative_scale) / 127
    forward_positive = np.round(positive_scale / step) * step
    forward_negative = np.round(negative_scale / step) * step
    expected = forward_positive * positive - forward_negative * negative
    np.testing.assert_allclose(view(out), expected, rtol=1e-6)
    # Eq. 8, with the scales the forward pass used.
    factor = np.where(positive, forward_positive, np.where(negative, forward_negative, 1.0))
    np.testing.assert_allclose(view(latent_gradient), view(upstream) * factor, rtol=1e-6)
    # Eq. 7 (through the straight-through snap, d snapped / d W = 1).
    np.testing.assert_allclose(
        positive_gradient, np.where(positive, view(upstream), 0).sum(axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        negative_gradient, -np.where(negative, view(upstream), 0).sum(axis=0), rtol=1e-5
    )


def test_learned_basis_qem_reduces_error():
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(200, 6)).astype(np.float32)
    quantizer, variables = _prepared(lambda: LearnedBasisQuantizer(bits=2, momentum=0.0), kernel)

    def error():
        return float(
            np.mean((np.asarray(quantizer.hard_quantize(kernel, variables)) - kernel) ** 2)
        )

    before = error()
    for _ in range(5):
        quantizer(tf.constant(kernel), True, variables)
    assert error() < before


def test_learned_basis_activation_levels_and_update():
    quantizer = LearnedBasisActivationQuantizer(bits=2, momentum=0.0)
    variables = build_quantizer(quantizer, None)
    activations = tf.constant(np.random.default_rng(5).uniform(0, 6, size=(256, 8)), tf.float32)
    out = quantizer(activations, True, variables).numpy()
    assert np.unique(out).size <= 4 and out.min() >= 0
    refit = quantizer(activations, False, variables).numpy()
    assert np.mean((refit - activations.numpy()) ** 2) < np.mean((out - activations.numpy()) ** 2)


def test_depthwise_channels_are_input_times_multiplier():
    quantizer = UniformQuantizer(bits=4)
    build_quantizer(quantizer, (3, 3, 5, 2), depthwise=True)
    assert quantizer.num_channels == 10
