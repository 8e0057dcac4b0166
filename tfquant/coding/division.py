"""Division methods: the codebook centers a layer's weights are divided around.

MPA (seed 002, Eq. 9 and Sec. "Division"): k-means, linear and exponential division.
k-means is the exact optimum of Eq. 9 in 1-D, computed by the Ckmeans.1d.dp dynamic program
(Wang & Song 2011, package `ckmeans`).
"""

import ckmeans
import numpy as np

from tfquant.options import Division

_CKMEANS_MAX_LEVELS = 255  # ckmeans' limit


def divide(weights, levels, division="kmeans", importance=None, entropy_weight=0.1):
    """Returns `levels` sorted centers for `weights` by the given division method.

    Args:
      weights: array of any shape (flattened).
      levels: number of centers, >= 2.
      division: a `Division` name: "kmeans", "linear", "exponential", "hessian_kmeans" or
        "ecsq".
      importance: for "hessian_kmeans", non-negative per-weight importance (the Hessian
        diagonal, e.g. from `tfq.coding.hessian_diagonal`), same size as `weights`.
      entropy_weight: for "ecsq", λ of the rate term in units of the weights' variance
        (0 = plain Lloyd from a uniform start; larger = fewer bits, more distortion).

    Returns:
      float32 array of shape [levels], sorted ascending. Entries may repeat when the weights
      have fewer distinct values than `levels`.

    Example:
      >>> divide(np.array([-1.0, -0.9, 0.0, 0.1, 1.0, 1.1]), 3).astype(float).round(2).tolist()
      [-0.95, 0.05, 1.05]
    """
    division = Division.parse(division, "division")
    values = np.asarray(weights, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("weights must not be empty. Received: an array of size 0")
    if not np.all(np.isfinite(values)):
        raise ValueError("weights must be finite. Received: NaN or Inf among the weights")
    if division is Division.KMEANS:
        centers = _kmeans(values, levels)
    elif division is Division.HESSIAN_KMEANS:
        centers = _hessian_kmeans(values, levels, importance)
    elif division is Division.ECSQ:
        centers = ecsq(values, levels, entropy_weight)
    else:
        centers = _symmetric(values, levels, division)
    return np.sort(np.asarray(centers, dtype=np.float32))


def _kmeans(values, levels):
    if levels <= _CKMEANS_MAX_LEVELS:
        # ckmeans returns one cluster per distinct value when there are fewer than `levels`.
        clusters = ckmeans.ckmeans(values, min(levels, values.size))
        centers = np.array([cluster.mean() for cluster in clusters])
        return np.concatenate([centers, np.full(levels - centers.size, centers[-1])])
    # 256 levels: beyond ckmeans; Lloyd on the sorted data from the quantiles (near-exact).
    ordered = np.sort(values)
    start = np.quantile(ordered, (np.arange(levels) + 0.5) / levels)
    return weighted_lloyd(ordered, np.ones_like(ordered), start)


def _hessian_kmeans(values, levels, importance):
    """Choi et al. Eq. 8: minimize Σ h_i (w_i - c)², started from the exact unweighted optimum."""
    if importance is None:
        raise ValueError(
            "division='hessian_kmeans' needs the Hessian diagonal of the loss: pass importance="
            "tfq.coding.hessian_diagonal(model, x, y, loss) (to quantize_model or divide). "
            "Received: importance=None"
        )
    weight = np.asarray(importance, np.float64).ravel()
    if weight.size != values.size or not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError(
            "importance must hold one finite, non-negative value per weight. Received: "
            f"{weight.size} values for {values.size} weights"
        )
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    weight = weight[order] + 1e-12 * max(float(weight.max()), 1e-30)  # no zero-mass clusters
    return weighted_lloyd(ordered, weight, _weighted_dp(ordered, weight, levels))


def _weighted_dp(ordered, weight, levels, bins=1024):
    """Optimal weighted 1-D k-means over at most `bins` runs of the sorted data.

    With n <= bins every point is its own run and the result is the exact optimum; otherwise
    the runs hold equal counts and the optimum over them starts the weighted Lloyd refinement
    (which then moves boundaries inside runs).
    """
    edges = np.unique(np.linspace(0, ordered.size, min(bins, ordered.size) + 1).astype(int))
    mass = np.add.reduceat(weight, edges[:-1])
    first = np.add.reduceat(weight * ordered, edges[:-1])
    second = np.add.reduceat(weight * ordered**2, edges[:-1])
    cum = [np.concatenate([[0.0], np.cumsum(a)]) for a in (mass, first, second)]
    runs = mass.size
    if runs <= levels:
        return np.concatenate([first / mass, np.full(levels - runs, first[-1] / mass[-1])])
    # scatter[a, e]: weighted scatter Σw x² - (Σw x)² / Σw of one cluster over runs a..e.
    first_run, last_run = np.meshgrid(np.arange(runs), np.arange(runs), indexing="ij")
    valid = last_run >= first_run
    lo, hi = first_run, last_run + 1
    total = np.where(valid, cum[0][hi] - cum[0][lo], 1.0)
    scatter = cum[2][hi] - cum[2][lo] - (cum[1][hi] - cum[1][lo]) ** 2 / total
    scatter = np.where(valid, np.maximum(scatter, 0.0), np.inf)
    best = scatter[0]  # best[e]: one cluster over runs 0..e
    choices = []
    for _ in range(levels - 1):
        previous = np.concatenate([[np.inf], best[:-1]])  # previous[a] = best[a - 1]
        candidates = previous[:, None] + scatter
        choice = np.argmin(candidates, axis=0)  # where the last cluster starts
        choices.append(choice)
        best = candidates[choice, np.arange(runs)]
    clusters, last = [], runs - 1
    for choice in reversed(choices):
        first = int(choice[last])
        clusters.append((first, last))
        last = first - 1
    clusters.append((0, last))
    centers = [
        (cum[1][b + 1] - cum[1][a]) / (cum[0][b + 1] - cum[0][a]) for a, b in clusters if b >= a
    ]
    return np.sort(np.asarray(centers))


def ecsq(values, levels, entropy_weight=0.1, iterations=50):
    """Entropy-constrained scalar quantization (Choi et al. Sec. 4.2, iterative solution).

    Starts from `levels` uniform centers over [min, max] and alternates: assign each weight to
    argmin_j (w - c_j)² + λ·(-log2 p_j), then c_j = mean and p_j = share of its weights, with
    λ = entropy_weight · var(w). Clusters that empty stay empty (their centers repeat a used
    one in the output, which keeps `levels` entries).

    >>> centers = ecsq(np.random.default_rng(0).normal(size=2000), 8, entropy_weight=0.0)
    >>> bool(np.all(np.diff(centers) > 0))
    True
    """
    values = np.asarray(values, np.float64).ravel()
    scale = float(values.var()) or 1.0
    lam = float(entropy_weight) * scale
    if lam < 0 or not np.isfinite(lam):
        raise ValueError(f"entropy_weight must be >= 0. Received: entropy_weight={entropy_weight}")
    centers = np.linspace(values.min(), values.max(), levels)
    share = np.full(levels, 1.0 / levels)
    for _ in range(iterations):
        # λ · code length; an emptied cluster can never win again.
        penalty = np.where(share > 0, lam * -np.log2(np.maximum(share, 1e-300)), np.inf)
        assigned = np.empty(values.size, np.int64)
        for begin in range(0, values.size, 1 << 16):  # chunks keep the cost matrix small
            chunk = values[begin : begin + (1 << 16), None]
            assigned[begin : begin + chunk.shape[0]] = np.argmin(
                (chunk - centers) ** 2 + penalty, axis=1
            )
        counts = np.bincount(assigned, minlength=levels)
        sums = np.bincount(assigned, weights=values, minlength=levels)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
        share = counts / values.size
        if np.allclose(updated, centers, rtol=0, atol=1e-12 * (abs(values).max() + 1)):
            break
        centers = updated
    used = np.sort(centers[share > 0])
    return np.concatenate([used, np.full(levels - used.size, used[-1])])


def weighted_lloyd(ordered, weight, centers, iterations=100):
    """Lloyd's algorithm for Σ weight·(w - c)² on sorted 1-D data, O(k log n) per iteration.

    Clusters of sorted data are contiguous, so assignments are `searchsorted` of the midpoints
    and weighted means come from prefix sums.

    Args:
      ordered: sorted 1-D values. weight: non-negative weights, same order.
      centers: initial centers (sorted). iterations: maximum iterations.

    Returns:
      sorted centers (a center that loses all its points keeps its position).

    >>> weighted_lloyd(np.array([0.0, 1.0, 10.0, 11.0]), np.ones(4), np.array([0.0, 5.0])).tolist()
    [0.5, 10.5]
    """
    mass = np.concatenate([[0.0], np.cumsum(weight)])
    moment = np.concatenate([[0.0], np.cumsum(weight * ordered)])
    centers = np.sort(np.asarray(centers, np.float64))
    for _ in range(iterations):
        cuts = np.concatenate(
            [[0], np.searchsorted(ordered, (centers[1:] + centers[:-1]) / 2), [ordered.size]]
        )
        total = mass[cuts[1:]] - mass[cuts[:-1]]
        updated = np.where(
            total > 0, (moment[cuts[1:]] - moment[cuts[:-1]]) / np.maximum(total, 1e-300), centers
        )
        updated = np.sort(updated)
        if np.allclose(updated, centers, rtol=0, atol=1e-12):
            return updated
        centers = updated
    return centers


def _symmetric(values, levels, division):
    """Linear / exponential centers, mirrored around zero (zero included for odd `levels`)."""
    top = (abs(values.min()) + abs(values.max())) / 2.0  # "average of |min| and |max|"
    half = levels // 2
    if division is Division.LINEAR:
        positive = top * np.arange(1, half + 1) / half
    else:
        positive = top / 2.0 ** np.arange(half)[::-1]
    middle = [0.0] if levels % 2 else []
    return np.concatenate([-positive[::-1], middle, positive])
