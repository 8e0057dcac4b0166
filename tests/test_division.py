"""Division methods: k-means equals the brute-force optimum on small inputs; Hessian-weighted
k-means and ECSQ behave as Choi et al. describe; linear / exponential follow MPA's recipe."""

import itertools

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import tfquant as tfq
from tests.conftest import compile_model
from tfquant.coding import divide, ecsq, hessian_diagonal
from tfquant.summary import entropy_bits


def _cost(values, centers, weight=None):
    weight = np.ones_like(values) if weight is None else weight
    distances = (values[:, None] - np.asarray(centers)[None, :]) ** 2
    return float(np.sum(weight * distances.min(axis=1)))


def _brute_force(values, levels, weight=None):
    """Optimal 1-D (weighted) k-means by trying every split of the sorted values."""
    order = np.argsort(values)
    values = values[order]
    weight = np.ones_like(values) if weight is None else weight[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, values.size), levels - 1):
        groups = np.split(np.arange(values.size), cuts)
        centers = [np.average(values[g], weights=weight[g]) for g in groups]
        best = min(best, _cost(values, centers, weight))
    return best


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=4, max_size=9),
    levels=st.integers(2, 4),
)
@example(values=[1.0, 1.0, 1.0, -2.0, 3.0, 3.0], levels=3)  # ties, just enough distinct values
def test_kmeans_matches_brute_force(values, levels):
    # Lists with repeated values stay in (ties are a case k-means must handle); only those with
    # fewer distinct values than levels are rejected, about a fifth of the draws, and
    # max_examples counts the accepted ones.
    values = np.array(values, np.float64)
    assume(np.unique(values).size >= levels)  # fewer distinct values than levels: no split
    centers = divide(values, levels, "kmeans").astype(np.float64)
    assert _cost(values, centers) <= _brute_force(values, levels) * (1 + 1e-5) + 1e-9


def test_hessian_kmeans_follows_the_important_weights():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-1, 0.3, 500), rng.normal(1, 0.3, 500)])
    importance = np.where(values > 0, 1.0, 1e-3)
    plain = divide(values, 4, "kmeans")
    weighted = divide(values, 4, "hessian_kmeans", importance=importance)
    assert (weighted > 0).sum() > (plain > 0).sum()  # more centers where the Hessian is large
    assert _cost(values, weighted, importance) < _cost(values, plain, importance)


def test_hessian_kmeans_needs_importance():
    with pytest.raises(ValueError, match="hessian_diagonal"):
        divide(np.arange(10.0), 2, "hessian_kmeans")


def test_ecsq_trades_distortion_for_entropy():
    values = np.random.default_rng(1).standard_t(4, 20_000) * 0.05
    results = []
    for weight in (0.0, 0.3, 1.5):
        centers = ecsq(values, 8, weight)
        mids = (centers[1:] + centers[:-1]) / 2
        quantized = centers[np.searchsorted(mids, values)]
        results.append((entropy_bits(quantized), np.mean((quantized - values) ** 2)))
    entropies, errors = zip(*results, strict=True)
    assert entropies[0] > entropies[1] > entropies[2]
    assert errors[0] < errors[1] < errors[2]


def test_linear_and_exponential_centers():
    values = np.array([-2.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(divide(values, 4, "linear"), [-2, -1, 1, 2])
    np.testing.assert_allclose(divide(values, 4, "exponential"), [-2, -1, 1, 2])
    np.testing.assert_allclose(divide(values, 6, "exponential"), [-2, -1, -0.5, 0.5, 1, 2])
    np.testing.assert_allclose(divide(values, 3, "linear"), [-2, 0, 2])


def test_hessian_diagonal_feeds_quantize_model(float_model, digits):
    (x, y), _ = digits
    loss = tfq.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    importance = hessian_diagonal(float_model, x[:128], y[:128], loss, samples=2, batch_size=64)
    assert set(importance) == {"conv1", "conv2", "fc1", "logits"}
    assert all(np.all(v >= 0) and v.max() > 0 for v in importance.values())
    scheme = tfq.schemes.Multivalued(bits=2, division="hessian_kmeans")
    qmodel = compile_model(tfq.quantize_model(float_model, scheme, importance=importance))
    assert all(r.distinct <= 4 for r in tfq.summary(qmodel, print_fn=None))
    with pytest.raises(ValueError, match="hessian_diagonal"):
        tfq.quantize_model(float_model, scheme)


def test_ecsq_scheme_round_trip():
    scheme = tfq.schemes.Multivalued(bits=3, division="ecsq", entropy_weight=0.5)
    assert tfq.schemes.Multivalued.from_config(scheme.get_config()) == scheme


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.floats(-5, 5, allow_nan=False, width=32), min_size=4, max_size=8, unique=True
    ),
    weights=st.lists(st.floats(0.01, 10), min_size=8, max_size=8),
    levels=st.integers(2, 3),
)
def test_hessian_kmeans_matches_weighted_brute_force(values, weights, levels):
    values = np.array(values, np.float64)
    weight = np.array(weights[: values.size])
    centers = divide(values, levels, "hessian_kmeans", importance=weight).astype(np.float64)
    assert (
        _cost(values, centers, weight) <= _brute_force(values, levels, weight) * (1 + 1e-4) + 1e-6
    )
