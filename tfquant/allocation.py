"""`tfq.allocate_bits`: per-layer codebook sizes and sparsities that meet a coded-size budget
with the least Hessian-weighted distortion (Choi et al., seed 003, Eq. 7: the loss grows by
about ½ Σ h_i (w_i - q_i)² when weight w_i becomes q_i), delivering MVQ's (seed 000)
"customized compression for devices of different sizes". The plan is a `tfq.schemes` scheme.
"""

import dataclasses
import math

import numpy as np

from tfquant._keras import check_keras2_model, keras, quantized_weights
from tfquant.coding import huffman
from tfquant.coding.container import (
    HEADER,
    Coder,
    compress,
    kernel_record_overhead,
    variable_nbytes,
)
from tfquant.coding.division import divide
from tfquant.coding.entropy import entropy_of_counts
from tfquant.coding.hessian import hessian_diagonal
from tfquant.coding.stream import varint
from tfquant.configs.layer import SUPPORTED_LAYERS, supported_weight_attribute
from tfquant.options import Division
from tfquant.quantizers.base import check_float
from tfquant.quantizers.multivalued import (
    _SCHEDULE_SCALARS,
    MultivaluedQuantizer,
    snap_centers,
    sparse_centers,
)
from tfquant.schemes import Multivalued

#: Levels and sparsities tried per layer by default.
DEFAULT_LEVELS = tuple(range(2, 17))
DEFAULT_SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95)
#: Bytes an ANS stream may exceed its entropy estimate by (final coder state, word padding).
ANS_SLACK_BYTES = 12
_BINS = 4096  # budget resolution of the dynamic program
_MAX_ROUNDS = 6  # plan -> compress -> tighten rounds


@dataclasses.dataclass(frozen=True)
class LayerOption:
    """One candidate codebook for one layer, with its estimated cost.

    Attributes:
      levels: codebook size. sparsity: fraction in the zero interval.
      nbytes: estimated bytes in the container (kernel record and quantizer state).
      distortion: Σ h_i (w_i - q_i)², h the Hessian diagonal estimate.
      entropy_bits: entropy of the indices, bits per weight.
    """

    levels: int
    sparsity: float
    nbytes: int
    distortion: float
    entropy_bits: float


class BitPlan:
    """Per-layer codebook sizes and sparsities chosen by `tfq.allocate_bits`.

    Use it as a scheme: `plan.scheme()` is a `tfq.schemes.Multivalued` whose `layers` follow
    the plan (pass `mode="masked"` etc. through), `plan.quantize(model)` quantizes with it.

    Attributes:
      layers: dict layer name -> {"levels": L, "sparsity": s}.
      division: the division method the sizes were estimated with.
      coder: "ans" or "huffman".
      budget_bytes: the budget asked for.
      estimated_bytes: the plan's estimated container size.
      measured_bytes: `tfq.coding.compress(plan.quantize(model)).nbytes`, measured by
        `allocate_bits` (None for a plan built by hand).
      distortion: the plan's total Hessian-weighted distortion.
      options: (not in the config) every layer's candidate `LayerOption`s.

    Example:
      >>> plan = BitPlan({"fc1": {"levels": 4, "sparsity": 0.9}}, budget_bytes=2000)
      >>> plan.scheme().get_config()["layers"]
      {'fc1': {'levels': 4, 'sparsity': 0.9}}
      >>> BitPlan.from_config(plan.get_config()).get_config() == plan.get_config()
      True
    """

    def __init__(
        self,
        layers,
        budget_bytes,
        division="kmeans",
        coder="ans",
        estimated_bytes=None,
        measured_bytes=None,
        distortion=None,
    ):
        self.layers = {
            str(name): {"levels": int(o["levels"]), "sparsity": float(o["sparsity"])}
            for name, o in layers.items()
        }
        self.budget_bytes = int(budget_bytes)
        self.division = Division.parse(division, "division")
        self.coder = Coder.parse(coder, "coder")
        self.estimated_bytes = estimated_bytes
        self.measured_bytes = measured_bytes
        self.distortion = distortion
        self.options = {}
        self.importance = None

    def scheme(self, **kwargs):
        """A `tfq.schemes.Multivalued` with this plan's per-layer levels and sparsities.

        Args:
          **kwargs: other `Multivalued` arguments (e.g. mode="masked").
        """
        return Multivalued(division=self.division.value, layers=self.layers, **kwargs)

    def quantize(self, model, **kwargs):
        """`tfq.quantize_model(model, self.scheme(**kwargs))` (with the Hessian importance when
        the division is "hessian_kmeans")."""
        from tfquant.quantize import quantize_model

        importance = self.importance if self.division is Division.HESSIAN_KMEANS else None
        return quantize_model(model, self.scheme(**kwargs), importance=importance)

    def get_config(self):
        return {
            "layers": {name: dict(options) for name, options in self.layers.items()},
            "budget_bytes": self.budget_bytes,
            "division": self.division.value,
            "coder": self.coder.value,
            "estimated_bytes": self.estimated_bytes,
            "measured_bytes": self.measured_bytes,
            "distortion": self.distortion,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        lines = [
            f"BitPlan(budget_bytes={self.budget_bytes}, estimated_bytes="
            f"{self.estimated_bytes}, measured_bytes={self.measured_bytes})"
        ]
        for name, options in self.layers.items():
            lines.append(f"  {name}: {options['levels']} levels, sparsity {options['sparsity']}")
        return "\n".join(lines)


def quantize_numpy(kernel, centers, zero_threshold=None):
    """The indices (into `centers`) a `MultivaluedQuantizer` gives `kernel`, in numpy.

    Same rule as the quantizer (float32 midpoints, ties to the lower center; with a zero
    interval, |w| <= t -> the zero center, the rest to the nearest non-zero center).

    >>> quantize_numpy(np.array([-0.9, 0.1, 0.4]), np.array([-1.0, 0.0, 1.0], np.float32),
    ...                0.2).tolist()
    [0, 1, 2]
    """
    values = np.asarray(kernel, np.float32).ravel()
    centers = np.asarray(centers, np.float32)
    search = centers.copy()
    zero = None
    if zero_threshold is not None:
        zero = int(np.argmin(np.abs(centers)))
        neighbour = zero + 1 if zero + 1 < centers.size else zero - 1
        search[zero] = centers[neighbour]
    midpoints = (search[1:] + search[:-1]) / np.float32(2.0)
    index = np.searchsorted(midpoints, values, side="left")
    if zero is not None:
        index = np.where(index == zero, neighbour, index)  # that slot holds the neighbour
        index = np.where(np.abs(values) <= np.float32(zero_threshold), zero, index)
    return index


def _centers(kernel, levels, sparsity, division, importance, entropy_weight):
    if sparsity > 0:
        return sparse_centers(kernel, levels, sparsity, division, importance, entropy_weight)
    return snap_centers(divide(kernel, levels, division, importance, entropy_weight)), None


def _stream_bytes(counts, coder):
    """Estimated bytes of the coder stream for symbols with these counts (all > 0)."""
    total = int(counts.sum())
    if coder is Coder.HUFFMAN:
        lengths = huffman.code_lengths(counts)
        header = len(varint(counts.size)) + len(varint(total)) + counts.size
        return header + math.ceil(int(np.dot(counts, lengths)) / 8) + (2 if counts.size == 1 else 0)
    header = len(varint(counts.size)) + sum(len(varint(int(c))) for c in counts)
    if counts.size <= 1:
        return header
    return header + math.ceil(total * entropy_of_counts(counts) / 8) + ANS_SLACK_BYTES


def _state_bytes(shape, levels, sparsity):
    """Container bytes of a `MultivaluedQuantizer`'s variables (schedule state at rest).

    Centers and interval bounds are distinct floats off any common grid, stored raw.
    """
    irregular = np.random.default_rng(0).normal(size=levels + 1).astype(np.float32)
    arrays = [
        irregular[:levels],  # centers
        np.zeros(shape, np.float32),  # frozen mask
        irregular,  # interval bounds
        np.zeros(levels, np.float32),  # interval done
    ]
    arrays += [np.float32(value) for value in _SCHEDULE_SCALARS.values()]
    if sparsity > 0:
        arrays.append(np.float32(0.5))  # zero threshold
    return sum(variable_nbytes(np.asarray(a)) for a in arrays)


def _layer_options(
    name, kernel, variable_name, importance, levels, sparsities, division, coder, entropy_weight
):
    options = []
    hessian = np.asarray(importance, np.float64).reshape(kernel.shape)
    overhead = kernel_record_overhead(variable_name, kernel.shape, MultivaluedQuantizer.__name__)
    for level in levels:
        for sparsity in sparsities:
            if sparsity > 0 and level < 3:
                continue
            extra = hessian if division is Division.HESSIAN_KMEANS else None
            centers, threshold = _centers(kernel, level, sparsity, division, extra, entropy_weight)
            index = quantize_numpy(kernel, centers, threshold)
            quantized = centers[index].reshape(kernel.shape)
            distinct, symbols = np.unique(quantized, return_inverse=True)
            counts = np.bincount(symbols.ravel())
            table = 1 + len(varint(distinct.size)) + 4 * distinct.size
            stream = _stream_bytes(counts, coder)
            nbytes = overhead + table + 1 + len(varint(stream)) + stream
            nbytes += _state_bytes(kernel.shape, level, sparsity)
            distortion = float(np.sum(hessian * (kernel.astype(np.float64) - quantized) ** 2))
            options.append(
                LayerOption(
                    level, float(sparsity), int(nbytes), distortion, entropy_of_counts(counts)
                )
            )
    return options


def _choose(options_per_layer, budget):
    """Multiple-choice knapsack by dynamic programming over budget bins (sizes rounded up,
    so any plan it returns fits `budget`): least total distortion, one option per layer."""
    unit = max(budget / _BINS, 1e-9)
    bins = int(budget // unit) + 1
    best = np.zeros(bins)  # best[b]: least distortion with at most b units used
    choices = []
    for options in options_per_layer:
        weight = np.array([math.ceil(o.nbytes / unit) for o in options])
        cost = np.array([o.distortion for o in options])
        table = np.full((len(options), bins), np.inf)
        for k, (w, c) in enumerate(zip(weight, cost, strict=True)):
            if w < bins:
                table[k, w:] = best[: bins - w] + c
        choice = np.argmin(table, axis=0)
        best = table[choice, np.arange(bins)]
        choices.append(choice)
    if not np.isfinite(best[-1]):
        return None
    picked, remaining = [], bins - 1
    for options, choice in zip(reversed(options_per_layer), reversed(choices), strict=True):
        k = int(choice[remaining])
        picked.append(options[k])
        remaining -= math.ceil(options[k].nbytes / unit)
    return picked[::-1]


def _default_loss(model, y):
    y = np.asarray(y)
    activation = getattr(model.layers[-1], "activation", None)
    from_logits = keras.activations.serialize(activation) != "softmax" if activation else True
    if y.ndim > 1 and y.shape[-1] > 1:
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _check_levels(levels):
    levels = tuple(levels)
    if not levels or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 2 <= v <= 256
        for v in levels
    ):
        raise ValueError(f"levels must be integers in [2, 256]. Received: levels={levels!r}")
    return tuple(sorted(set(int(v) for v in levels)))


def _check_sparsities(sparsities):
    sparsities = tuple(sparsities)
    if not sparsities:
        raise ValueError("sparsities must not be empty. Received: sparsities=()")
    for value in sparsities:
        check_float("sparsities", value, 0.0, 1.0, low_open=False)
        if value >= 1.0:
            raise ValueError(f"sparsities must be in [0, 1). Received: sparsities={sparsities}")
    return tuple(sorted(set(float(v) for v in sparsities)))


def allocate_bits(
    model,
    budget_bytes,
    data,
    levels=DEFAULT_LEVELS,
    sparsities=DEFAULT_SPARSITIES,
    division="kmeans",
    coder="ans",
    loss=None,
    entropy_weight=0.1,
    hessian_samples=2,
    max_batches=4,
    verbose=0,
):
    """Chooses per-layer levels and sparsity that meet a coded-size budget with least loss.

    For every Conv2D / DepthwiseConv2D / Dense kernel and every option (levels L x sparsity
    s; s > 0 needs L >= 3) the codebook is placed exactly as `MultivaluedQuantizer` would
    place it, the kernel is quantized, and the option gets two numbers: its Hessian-weighted
    distortion Σ h_i (w_i - q_i)² (h from `tfq.coding.hessian_diagonal` on `data`; Choi et
    al., seed 003) and its container bytes, estimated from the entropy of its index counts
    (Huffman: its exact code lengths) plus the exact codebook, record and quantizer-state
    bytes. A dynamic program over the budget picks one option per layer with the least total
    distortion whose estimate fits (biases, activation ranges and other variables counted
    as stored). The plan is then checked: the model is quantized with `plan.quantize(model)`
    and compressed with `coder`; if that is over the budget, the search is repeated with the
    budget lowered by the excess. The estimate is an upper bound up to rounding (ANS lands
    within `ANS_SLACK_BYTES` of the entropy estimate; the grid codebook and the container's
    dead-row/column layout can only make a record smaller, by a few percent at most on the
    LeNets), so that rarely happens. So
    `tfq.coding.compress(plan.quantize(model)).nbytes <= budget_bytes` for the returned plan,
    before fine-tuning; fine-tuning moves weights between centers, which changes the coded
    size by a few percent either way (snap mode with sparsity keeps the pruned weights).

    Args:
      model: a trained float `tfq.keras` model (Sequential or functional).
      budget_bytes: the container size to meet, in bytes (`tfq.coding.compress(...).nbytes`).
      data: `(x, y)` for the Hessian estimate (the first `max_batches` batches of 256).
      levels: codebook sizes to try per layer (default 2..16).
      sparsities: zero-interval fractions to try per layer (default 0, .5, .75, .9, .95).
      division: the division method of the scheme ("kmeans", "hessian_kmeans", ...).
      coder: "ans" (default) or "huffman", the coder the budget is for.
      loss: the loss for the Hessian; default sparse (or one-hot) cross-entropy, from logits
        unless the last layer is a softmax.
      entropy_weight: λ of the "ecsq" division.
      hessian_samples: Rademacher probes per batch of the Hessian estimate.
      max_batches: batches of 256 samples of `data` used for it.
      verbose: 1 prints the plan and the measured size of each round.

    Returns:
      A `BitPlan` (use `plan.scheme()` or `plan.quantize(model)`).

    Raises:
      ValueError: a budget below the smallest plan (the message gives that size), a bad
        option list, or a model without quantizable layers.

    Example:
      >>> import tfquant as tfq
      >>> model = tfq.keras.Sequential([tfq.keras.Input((16,)), tfq.keras.layers.Dense(32),
      ...                               tfq.keras.layers.Dense(4)])
      >>> x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
      >>> y = np.arange(64) % 4
      >>> plan = tfq.allocate_bits(model, 900, (x, y), levels=(3, 4, 8),
      ...                          sparsities=(0.0, 0.5))
      >>> plan.measured_bytes <= 900
      True
      >>> qmodel = plan.quantize(model)
      >>> tfq.coding.compress(qmodel).nbytes == plan.measured_bytes
      True
    """
    check_keras2_model(model)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float, np.number)):
        raise TypeError(f"budget_bytes must be a number. Received: budget_bytes={budget_bytes!r}")
    if not budget_bytes > 0 or not np.isfinite(budget_bytes):
        raise ValueError(f"budget_bytes must be positive. Received: budget_bytes={budget_bytes}")
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(
            f"data must be an (x, y) pair of arrays. Received: data of type {type(data).__name__}"
        )
    levels = _check_levels(levels)
    sparsities = _check_sparsities(sparsities)
    division = Division.parse(division, "division")
    coder = Coder.parse(coder, "coder")
    x, y = data
    loss = loss if loss is not None else _default_loss(model, y)

    kernels = []
    for layer in model.layers:
        attribute = supported_weight_attribute(layer)
        if attribute:
            kernels.append((layer.name, getattr(layer, attribute)))
    if not kernels:
        raise ValueError(
            f"model has no layer tfquant quantizes ({SUPPORTED_LAYERS}) to allocate bits to. "
            f"Received: layers {[type(layer).__name__ for layer in model.layers]}"
        )
    importance = hessian_diagonal(
        model, x, y, loss, samples=hessian_samples, max_batches=max_batches
    )
    options_per_layer = [
        _layer_options(
            name,
            variable.numpy(),
            variable.name,
            importance[name],
            levels,
            sparsities,
            division,
            coder,
            entropy_weight,
        )
        for name, variable in kernels
    ]
    names = [name for name, _ in kernels]
    reference = BitPlan(
        {n: {"levels": levels[-1], "sparsity": 0.0} for n in names}, budget_bytes, division, coder
    )
    reference.importance = importance
    fixed = _fixed_bytes(reference.quantize(model))
    smallest = fixed + sum(min(o.nbytes for o in options) for options in options_per_layer)

    target = budget_bytes
    for _ in range(_MAX_ROUNDS):
        picked = _choose(options_per_layer, target - fixed) if target > fixed else None
        if picked is None:
            _too_small(budget_bytes, smallest, levels, sparsities)
        plan = BitPlan(
            {
                n: {"levels": o.levels, "sparsity": o.sparsity}
                for n, o in zip(names, picked, strict=True)
            },
            budget_bytes,
            division,
            coder,
            estimated_bytes=fixed + sum(o.nbytes for o in picked),
            distortion=float(sum(o.distortion for o in picked)),
        )
        plan.options = dict(zip(names, options_per_layer, strict=True))
        plan.importance = importance
        plan.measured_bytes = compress(plan.quantize(model), coder=coder.value).nbytes
        if verbose:
            print(f"{plan}\n  measured {plan.measured_bytes} bytes (budget {budget_bytes})")
        if plan.measured_bytes <= budget_bytes:
            return plan
        target -= plan.measured_bytes - budget_bytes
    _too_small(budget_bytes, smallest, levels, sparsities)


def _too_small(budget_bytes, smallest, levels, sparsities):
    raise ValueError(
        f"budget_bytes must be at least about {smallest} bytes for this model (every layer at "
        f"its smallest option among levels {list(levels)} x sparsities {list(sparsities)}, "
        "plus the biases and quantizer state the container stores; try higher sparsities to "
        f"go lower). Received: budget_bytes={budget_bytes}"
    )


def _fixed_bytes(qmodel):
    """Container bytes of everything but the multivalued kernels and their quantizer state."""
    blob = compress(qmodel)
    state = set()
    kernels = 0
    for _, weight, quantizer, variables in quantized_weights(qmodel):
        if isinstance(quantizer, MultivaluedQuantizer):
            state.update(v.ref() for v in variables.values())
            state.add(weight.ref())
            kernels += 1
    per_variable = blob.variable_nbytes()
    seen, total = set(), 0
    for variable in qmodel.weights:
        if variable.ref() in seen:
            continue
        seen.add(variable.ref())
        if variable.ref() not in state:
            total += per_variable[len(seen) - 1]
    return total + HEADER.size


__all__ = ["BitPlan", "LayerOption", "allocate_bits", "quantize_numpy"]
