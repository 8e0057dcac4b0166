"""`tfq.allocate_bits`: per-layer codebook sizes and sparsities that meet a coded-size budget
with the least Hessian-weighted distortion (Choi et al., seed 003, Eq. 7: the loss grows by
about ½ Σ h_i (w_i - q_i)² when weight w_i becomes q_i), delivering MVQ's (seed 000)
"customized compression for devices of different sizes". The plan is a `tfq.schemes` scheme.
"""

import dataclasses
import math

import numpy as np

from tfquant._keras import check_keras2_model, inbound_layer_names, keras, quantized_weights
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
from tfquant.shrink import (
    _check_graph,
    _is_per_channel,
    _is_producer,
    _keep_masks,
    _output_axis,
    _shrink,
    _slice_weight,
)

#: Levels and sparsities tried per layer by default.
DEFAULT_LEVELS = tuple(range(2, 17))
DEFAULT_SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95)
#: Bytes an ANS stream may exceed its entropy estimate by (final coder state, word padding).
ANS_SLACK_BYTES = 12
_BINS = 4096  # budget resolution of the dynamic program
_MAX_ROUNDS = 6  # plan -> compress -> tighten (or, with channels removed, raise) rounds
_RAISE_MARGIN = 0.01  # a plan this far under its budget is not searched again


@dataclasses.dataclass(frozen=True)
class LayerOption:
    """One candidate codebook for one layer, with its estimated cost.

    Attributes:
      levels: codebook size. sparsity: fraction in the zero interval (of the kept channels).
      nbytes: estimated bytes in the container (kernel record and quantizer state).
      distortion: Σ h_i (w_i - q_i)², h the Hessian diagonal estimate (q_i = 0 for the
        weights of removed channels).
      entropy_bits: entropy of the indices, bits per weight.
      channel_sparsity: fraction of the output channels (units) removed.
    """

    levels: int
    sparsity: float
    nbytes: int
    distortion: float
    entropy_bits: float
    channel_sparsity: float = 0.0


class BitPlan:
    """Per-layer codebook sizes, sparsities and removed channels chosen by `tfq.allocate_bits`.

    Use it as a scheme: `plan.quantize(model)` quantizes `plan.shrink(model)` (the float
    model without the plan's removed output channels; `model` itself when it removes none)
    with `plan.scheme()`, a `tfq.schemes.Multivalued` whose `layers` follow the plan (pass
    `mode="masked"` etc. through).

    Attributes:
      layers: dict layer name -> {"levels": L, "sparsity": s}.
      removed: dict layer name -> sorted output channel (unit) indices the plan removes;
        empty unless `allocate_bits` was given `channel_sparsities`.
      division: the division method the sizes were estimated with.
      coder: "ans" or "huffman".
      budget_bytes: the budget asked for.
      estimated_bytes: the plan's estimated container size.
      measured_bytes: `tfq.coding.compress(plan.quantize(model)).nbytes`, measured by
        `allocate_bits` (None for a plan built by hand).
      distortion: the plan's total Hessian-weighted distortion.
      options: (not in the config) every layer's candidate `LayerOption`s.

    Example:
      >>> plan = BitPlan({"fc1": {"levels": 4, "sparsity": 0.9}}, budget_bytes=2000,
      ...                removed={"fc1": [3, 0]})
      >>> plan.scheme().get_config()["layers"]
      {'fc1': {'levels': 4, 'sparsity': 0.9}}
      >>> plan.removed
      {'fc1': [0, 3]}
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
        removed=None,
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
        self.removed = _check_removed(removed)
        self.options = {}
        self.importance = None

    def scheme(self, **kwargs):
        """A `tfq.schemes.Multivalued` with this plan's per-layer levels and sparsities.

        A plan that removes channels is meant for `plan.shrink(model)`: quantize that (or
        use `plan.quantize(model)`).

        Args:
          **kwargs: other `Multivalued` arguments (e.g. mode="masked").
        """
        return Multivalued(division=self.division.value, layers=self.layers, **kwargs)

    def shrink(self, model):
        """`model` without the plan's removed output channels: a new float model.

        Each removed channel's kernel slice and bias are set to 0 (and the BatchNormalization
        after it made to output 0 there) in a copy, which `tfq.shrink`'s rules then cut down,
        with the matching inputs of the next layers. `model` is not modified; a plan that
        removes nothing returns `model` itself.

        Raises:
          ValueError: a subclassed `model` (its layers cannot be rewired); a layer of
            `removed` that `model` lacks or cannot lose channels of
            (not a Conv1D, Conv2D, Conv2DTranspose or Dense layer, an index out of range),
            or a channel `tfq.shrink` cannot remove there (one a residual sum or the
            model's output needs).
        """
        return self._shrunk(model)[0] if self.removed else model

    def _shrunk(self, model):
        """`(shrunk, keep, inbound)` for a plan that removes channels."""
        _check_graph(model, "model", "float model")
        copy = _zeroed_copy(model, self.removed)
        shrunk, _, keep = _shrink(copy, warn=False)
        for name, channels in self.removed.items():
            kept = [c for c in channels if keep[name][c]]
            if kept:
                raise ValueError(
                    f"removed[{name!r}] must name channels that shrinking can remove; "
                    f"channels {kept} are still needed at 0 (a residual sum, a non-zero "
                    "activation of 0 or the model's output reads them). Received: removed="
                    f"{dict(self.removed)}"
                )
        return shrunk, keep, inbound_layer_names(copy)

    def quantize(self, model, **kwargs):
        """`tfq.quantize_model(plan.shrink(model), self.scheme(**kwargs))` (with the Hessian
        importance, cut to the kept channels, when the division is "hessian_kmeans")."""
        from tfquant.quantize import quantize_model

        importance = self.importance if self.division is Division.HESSIAN_KMEANS else None
        start = model
        if self.removed:
            start, keep, inbound = self._shrunk(model)
            if importance is not None:
                importance = _sliced_importance(importance, model, start, keep, inbound)
        return quantize_model(start, self.scheme(**kwargs), importance=importance)

    def get_config(self):
        return {
            "layers": {name: dict(options) for name, options in self.layers.items()},
            "budget_bytes": self.budget_bytes,
            "division": self.division.value,
            "coder": self.coder.value,
            "estimated_bytes": self.estimated_bytes,
            "measured_bytes": self.measured_bytes,
            "distortion": self.distortion,
            "removed": {name: list(channels) for name, channels in self.removed.items()},
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
            removed = self.removed.get(name)
            extra = f", {len(removed)} channels removed" if removed else ""
            lines.append(
                f"  {name}: {options['levels']} levels, sparsity {options['sparsity']}{extra}"
            )
        return "\n".join(lines)


def _check_removed(removed):
    if removed is None:
        return {}
    if not isinstance(removed, dict):
        raise TypeError(
            "removed must be a dict of layer name -> channel indices. "
            f"Received: removed of type {type(removed).__name__}"
        )
    out = {}
    for name, channels in removed.items():
        values = list(channels)
        if not values or any(
            isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in values
        ):
            raise ValueError(
                "removed must map each layer name to a non-empty list of channel indices "
                f"(integers >= 0). Received: removed[{name!r}]={channels!r}"
            )
        out[str(name)] = sorted(set(int(c) for c in values))
    return out


def _channel_layer(model, name):
    """`model`'s layer `name`, checked to be one whose output channels a plan can remove."""
    try:
        layer = model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"removed names layer {name!r}, which the model does not have. Received: a "
            f"model with layers {[layer.name for layer in model.layers]}"
        ) from None
    if not _is_producer(layer):
        raise ValueError(
            f"removed names layer {name!r}, a {type(layer).__name__}; channels can be removed "
            "from Conv1D, Conv2D, Conv2DTranspose and Dense layers only"
        )
    return layer


def _zero_channels(model, name, channels):
    """Sets output `channels` of `model`'s layer `name` to output 0: its kernel slices and
    biases, and the offset and mean of a BatchNormalization after it (through activations
    and Dropout). Returns `[(variable, old value)]` to undo it."""
    layer = _channel_layer(model, name)
    size = layer.kernel.shape[_output_axis(layer)]
    if channels and max(channels) >= size:
        raise ValueError(
            f"removed[{name!r}] must hold channel indices below {size} (its output "
            f"channels). Received: {channels}"
        )
    undo = []

    def zero(variable, index, axis=-1):
        value = variable.numpy()
        undo.append((variable, value))
        value = np.moveaxis(value.copy(), axis, -1)
        value[..., index] = 0
        variable.assign(np.moveaxis(value, -1, axis))

    zero(layer.kernel, channels, _output_axis(layer))
    if layer.use_bias:
        zero(layer.bias, channels)
    consumers = {}
    for target, sources in inbound_layer_names(model).items():
        for source in sources:
            consumers.setdefault(source, []).append(target)
    frontier = list(consumers.get(name, []))
    while frontier:
        after = model.get_layer(frontier.pop())
        if not _is_per_channel(after):
            continue
        if isinstance(after, keras.layers.BatchNormalization):
            zero(after.moving_mean, channels)
            if after.center:
                zero(after.beta, channels)
        frontier += consumers.get(after.name, [])
    return undo


def _float_copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _zeroed_copy(model, removed):
    copy = _float_copy(model)
    for name, channels in removed.items():
        _zero_channels(copy, name, channels)
    return copy


def _removable(model, names):
    """The layers among `names` whose output channel with the least kernel norm, zeroed
    (`_zero_channels`), `tfq.shrink` would remove."""
    copy = _float_copy(model)
    out = []
    for name in names:
        layer = copy.get_layer(name)
        if not _is_producer(layer):
            continue
        view = np.moveaxis(layer.kernel.numpy(), _output_axis(layer), -1)
        channels = view.shape[-1]
        if channels < 2:
            continue
        channel = int(np.argmin(np.sum(view.reshape(-1, channels) ** 2, axis=0)))
        undo = _zero_channels(copy, name, [channel])
        keep, _, _ = _keep_masks(copy)
        if not keep[name][channel]:
            out.append(name)
        for variable, value in undo:
            variable.assign(value)
    return out


def _sliced_importance(importance, model, shrunk, keep, inbound):
    """The Hessian importance of `model`'s kernels cut to the `shrunk` model's."""
    out = dict(importance)
    for name, values in importance.items():
        layer, target = model.get_layer(name), shrunk.get_layer(name)
        attribute = supported_weight_attribute(layer)
        shape = tuple(getattr(layer, attribute).shape)
        if tuple(getattr(target, attribute).shape) == shape:
            continue
        source = inbound.get(name, [None])[0]
        out[name] = _slice_weight(
            np.asarray(values).reshape(shape),
            layer,
            np.flatnonzero(keep[source]),
            np.flatnonzero(keep[name]),
            shape,
        )
    return out


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


def _channel_options(layer, kernel, variable_name, importance, fractions, *settings):
    """`_layer_options` for the kernel with each fraction of its output channels removed
    (those of least Hessian-weighted norm Σ h_i w_i², the loss increase Optimal Brain
    Damage predicts for zeroing them), and `(fraction, removed indices)` per fraction."""
    hessian = np.asarray(importance, np.float64).reshape(kernel.shape)
    axis = _output_axis(layer)
    channels = kernel.shape[axis]
    saliency = np.sum(
        np.moveaxis(hessian * kernel.astype(np.float64) ** 2, axis, -1).reshape(-1, channels),
        axis=0,
    )
    order = np.argsort(saliency, kind="stable")
    options, removed = [], {}
    for fraction in fractions:
        count = int(round(fraction * channels))
        if fraction > 0 and not 0 < count < channels or count in removed:
            continue
        drop = np.sort(order[:count])
        keep = np.setdiff1d(np.arange(channels), drop)
        removed[count] = (float(fraction), [int(c) for c in drop])
        kept = np.take(kernel, keep, axis=axis)
        lost = float(saliency[drop].sum())
        for option in _layer_options(
            kept, variable_name, np.take(hessian, keep, axis=axis), *settings
        ):
            options.append(
                dataclasses.replace(
                    option, distortion=option.distortion + lost, channel_sparsity=float(fraction)
                )
            )
    return options, {fraction: drop for fraction, drop in removed.values()}


def _layer_options(
    kernel, variable_name, importance, levels, sparsities, division, coder, entropy_weight
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


def _check_sparsities(sparsities, argument="sparsities"):
    sparsities = tuple(sparsities)
    if not sparsities:
        raise ValueError(f"{argument} must not be empty. Received: {argument}=()")
    for value in sparsities:
        check_float(argument, value, 0.0, 1.0, low_open=False)
        if value >= 1.0:
            raise ValueError(f"{argument} must be in [0, 1). Received: {argument}={sparsities}")
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
    channel_sparsities=(0.0,),
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

    With `channel_sparsities` the plan also trades channels against bits (structured
    pruning): every Conv1D / Conv2D / Conv2DTranspose / Dense layer whose output channels
    `tfq.shrink` can remove (not the model's outputs, nor a channel a residual sum needs)
    gets its options once per fraction f: the f share of its output channels (units) with
    the least Hessian-weighted norm Σ h_i w_i² (Optimal Brain Damage's saliency) removed,
    their Σ h_i w_i² added to the distortion, and the bytes of the smaller kernel. The plan
    records the removed indices (`plan.removed`); `plan.quantize(model)` quantizes the
    shrunk float model (`plan.shrink(model)`: a new architecture, with the next layers'
    matching inputs cut as well). Those inputs and the removed biases are not in the estimate,
    so the measured size comes in under it; the search is then repeated with the budget
    raised by the margin while that lowers the distortion and still fits.

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
      channel_sparsities: fractions of output channels to try removing per layer (default
        `(0.0,)`: none), e.g. `(0.0, 0.25, 0.5, 0.75)`.

    Returns:
      A `BitPlan` (use `plan.quantize(model)`, or `plan.scheme()` on `plan.shrink(model)`).

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
    fractions = _check_sparsities(channel_sparsities, "channel_sparsities")
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
    names = [name for name, _ in kernels]
    removable = set(_removable(model, names)) if fractions != (0.0,) else set()
    options_per_layer, removals = [], {}
    for name, variable in kernels:
        settings = (levels, sparsities, division, coder, entropy_weight)
        if name in removable:
            options, removals[name] = _channel_options(
                model.get_layer(name),
                variable.numpy(),
                variable.name,
                importance[name],
                fractions,
                *settings,
            )
        else:
            options = _layer_options(variable.numpy(), variable.name, importance[name], *settings)
        options_per_layer.append(options)
    reference = BitPlan(
        {n: {"levels": levels[-1], "sparsity": 0.0} for n in names}, budget_bytes, division, coder
    )
    reference.importance = importance
    fixed = _fixed_bytes(reference.quantize(model))
    smallest = fixed + sum(min(o.nbytes for o in options) for options in options_per_layer)

    slack = _RAISE_MARGIN * budget_bytes

    def planned(picked):
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
            removed={
                n: removals[n][o.channel_sparsity]
                for n, o in zip(names, picked, strict=True)
                if o.channel_sparsity > 0
            },
        )
        plan.options = dict(zip(names, options_per_layer, strict=True))
        plan.importance = importance
        plan.measured_bytes = compress(plan.quantize(model), coder=coder.value).nbytes
        if verbose:
            print(f"{plan}\n  measured {plan.measured_bytes} bytes (budget {budget_bytes})")
        return plan

    target, best, fits, fails = budget_bytes, None, None, None
    for _ in range(_MAX_ROUNDS):
        picked = _choose(options_per_layer, target - fixed) if target > fixed else None
        if picked is None:
            break
        plan = planned(picked)
        if plan.measured_bytes > budget_bytes and best is None:
            target -= plan.measured_bytes - budget_bytes  # tighten
            continue
        if plan.measured_bytes > budget_bytes:
            fails = target
        else:
            if best is None or plan.distortion < best.distortion:
                best = plan
            fits = target
            if not plan.removed or budget_bytes - plan.measured_bytes <= slack:
                break
        if fails is not None and fails - fits <= slack:
            break
        # raise: by the margin left, or halfway back from a raise that went over
        target = (
            target + budget_bytes - plan.measured_bytes if fails is None else (fits + fails) / 2
        )
    if best is None:
        _too_small(budget_bytes, smallest, levels, sparsities)
    return best


def _too_small(budget_bytes, smallest, levels, sparsities):
    raise ValueError(
        f"budget_bytes must be at least about {smallest} bytes for this model (every layer at "
        f"its smallest option among levels {list(levels)} x sparsities {list(sparsities)}, "
        "plus the biases and quantizer state the container stores; try higher sparsities or "
        f"channel_sparsities to go lower). Received: budget_bytes={budget_bytes}"
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
