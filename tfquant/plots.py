"""Pictures of quantized models: weight histograms with the codebook and the frozen/free split,
the MPA phase timeline (frozen fraction and adaptation s, seed 002 Eq. 5-8), size vs accuracy
Pareto fronts, and per-layer bits per weight (entropy bound, Huffman, ANS; seed 003).

Every function returns a `matplotlib.figure.Figure` built without pyplot: nothing is shown,
no GUI backend is selected and no global figure list grows, so it is safe in scripts, tests
and servers (save with `fig.savefig("f.png")`). In a notebook, put the figure last in a cell
(after `%matplotlib inline`, Colab's default) or call `display(fig)`.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox

from tfquant._keras import check_keras2_model, keras, quantized_weights
from tfquant.options import Mode
from tfquant.quantizers.base import TfquantQuantizer
from tfquant.quantizers.multivalued import MultivaluedQuantizer

FREE_COLOR = "tab:blue"
FROZEN_COLOR = "tab:orange"
_SERIES_COLORS = ("tab:gray", "tab:blue", "tab:green", "tab:purple", "tab:red")


# -- weight histogram --------------------------------------------------------------------------
def _layer_name(wrapper):
    inner = getattr(wrapper, "layer", None)
    return inner.name if inner is not None else wrapper.name


def _select_layers(qmodel, layer):
    entries = [e for e in quantized_weights(qmodel) if isinstance(e[2], TfquantQuantizer)]
    if not entries:
        raise ValueError(
            "qmodel must be a model returned by tfq.quantize_model. Received: a model with no "
            "tfquant quantizer"
        )
    if layer is None:
        return entries
    names = [layer] if isinstance(layer, str) else layer
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names) or not names:
        raise TypeError(
            f"layer must be None, a layer name or a list of layer names. Received: layer={layer!r}"
        )
    known = [_layer_name(e[0]) for e in entries]
    chosen = {}  # id(weight) -> entry: each kernel once, in the order asked
    for name in names:
        matches = [e for e in entries if name in (e[0].name, _layer_name(e[0]))]
        if not matches:
            raise ValueError(
                f"layer {name!r} has no tfquant weight quantizer. Allowed: {known}. "
                f"Received: layer={layer!r}"
            )
        chosen.update((id(e[1]), e) for e in matches)
    return list(chosen.values())


def _grid(count, columns):
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def weight_histogram(qmodel, layer=None, bins=60, log=False, columns=2):
    """Histogram of each quantized kernel's weights with its codebook centers.

    The bars are the kernel's stored float weights (what the optimizer updates; the forward
    pass maps each to a codebook value). For a `masked` multivalued quantizer (driven by a
    schedule such as `tfq.callbacks.PhaseAdaptation`) the frozen weights, which sit exactly on
    their centers, are drawn as one orange bar per center and the free ones as the blue
    histogram; a center is drawn solid once its interval is quantized, dotted until then.
    Above each center: the share of the weights the forward pass maps to it. Per-layer
    codebooks draw every center; per-channel codebooks (LQ-Nets, per-channel ternary/uniform)
    are only counted in the title.

    Args:
      qmodel: a model returned by `tfq.quantize_model`.
      layer: None (every quantized kernel), a layer name ("fc1" or the wrapper's
        "quant_fc1") or a list of names.
      bins: histogram bins per layer (int >= 1).
      log: logarithmic count axis (frozen spikes can dwarf the free weights).
      columns: subplots per row.

    Returns:
      matplotlib Figure, one subplot per kernel.

    Raises:
      TypeError: `qmodel` is not a Keras 2 model, or `layer` is not a name or list of names.
      ValueError: `qmodel` has no tfquant quantizer, an unknown layer name, or bad `bins`.

    Example:
      >>> import tfquant as tfq
      >>> from tfquant import plots
      >>> keras = tfq.keras
      >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="fc")])
      >>> qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=2, mode="masked"))
      >>> fig = plots.weight_histogram(qmodel, layer="fc")
      >>> fig.axes[0].get_title()
      'fc: 128 weights, 4 centers, 0% frozen'
    """
    check_keras2_model(qmodel, "qmodel")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer. Received: bins={bins!r}")
    entries = _select_layers(qmodel, layer)
    rows, cols = _grid(len(entries), columns)
    fig = Figure(figsize=(5.2 * cols, 3.3 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    legend = {}
    for ax, (wrapper, weight, quantizer, state) in zip(axes, entries, strict=False):
        legend.update(_histogram_axes(ax, wrapper, weight, quantizer, state, bins, log))
    for ax in axes[len(entries) :]:
        ax.set_visible(False)
    if legend:
        fig.legend(
            legend.values(),
            legend.keys(),
            loc="outside upper center",
            ncols=min(3, len(legend)),
            fontsize=9,
        )
    return fig


def _histogram_axes(ax, wrapper, weight, quantizer, state, bins, log):
    kernel = np.asarray(weight.numpy(), np.float64).ravel()
    handles = {}
    masked = (
        isinstance(quantizer, MultivaluedQuantizer)
        and quantizer.mode is Mode.MASKED
        and "frozen_mask" in state
    )
    edges = np.histogram_bin_edges(kernel, bins=bins)
    frozen = np.zeros(kernel.shape, bool)
    if masked:
        frozen = np.asarray(state["frozen_mask"].numpy()).ravel() > 0.5
    if (~frozen).any():
        ax.hist(kernel[~frozen], bins=edges, color=FREE_COLOR, log=log, zorder=2)
        label = "free weights" if masked else "weights (stored float values)"
        handles[label] = Patch(color=FREE_COLOR)

    if quantizer.per_channel:
        centers_text = f"{quantizer.levels} levels per channel"
    else:
        if isinstance(quantizer, MultivaluedQuantizer):
            centers = np.asarray(state["centers"].numpy(), np.float64)
            done = np.asarray(state["interval_done"].numpy()) > 0.5
        else:
            centers = np.asarray(quantizer.codebook(weight, state), np.float64)
            done = np.ones(centers.shape, bool)
        hard = np.asarray(quantizer.hard_quantize(weight, state), np.float64).ravel()
        nearest = np.searchsorted((centers[1:] + centers[:-1]) / 2, hard)  # value index
        shares = np.bincount(nearest, minlength=centers.size) / kernel.size
        for center, finished, share in zip(centers, done, shares, strict=True):
            style = "-" if (finished or not masked) else ":"
            ax.axvline(center, color="0.2", linestyle=style, linewidth=1.0, zorder=1)
            ax.text(
                center,
                1.0,
                f"{share:.0%}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="0.2",
            )
        if masked and frozen.any():
            width = 0.8 * (edges[1] - edges[0])
            if centers.size > 1:  # wide enough to see, narrow enough not to hide free weights
                width = max(width, 0.15 * float(np.min(np.diff(centers))))
            counts = np.bincount(nearest[frozen], minlength=centers.size)
            ax.bar(centers, counts, width, color=FROZEN_COLOR, log=log, zorder=3)
            handles["frozen weights (on their center)"] = Patch(color=FROZEN_COLOR)
        if not masked:
            handles["codebook centers"] = Line2D([], [], color="0.2", linestyle="-")
        if masked and done.any():
            handles["center, interval quantized"] = Line2D([], [], color="0.2", linestyle="-")
        if masked and not done.all():
            handles["center, interval not finished"] = Line2D([], [], color="0.2", linestyle=":")
        handles["NN% = share of the weights quantized to that center"] = Line2D([], [], ls="")
        centers_text = f"{centers.size} centers"
    title = f"{_layer_name(wrapper)}: {kernel.size:,} weights, {centers_text}"
    if masked:
        title += f", {frozen.mean():.0%} frozen"
    ax.set_title(title, fontsize=10, pad=14)
    ax.set_xlabel("weight value")
    ax.set_ylabel("weights (count, log scale)" if log else "weights (count)")
    if not log:
        ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    return handles


# -- phase timeline ----------------------------------------------------------------------------
def _history_dict(history_or_logs):
    """A `{key: [value per epoch]}` dict and the epoch numbers (1-based) from what `fit` gave."""
    source = history_or_logs
    epochs = None
    if isinstance(source, keras.callbacks.History) or (
        hasattr(source, "history") and isinstance(getattr(source, "history", None), dict)
    ):
        epochs = [e + 1 for e in getattr(source, "epoch", [])] or None
        source = source.history
    if isinstance(source, Mapping):
        history = {}
        for key, values in source.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
                raise TypeError(
                    "history_or_logs as a dict must map each key to a list of per-epoch "
                    f"values (like History.history). Received: {key!r}: {values!r}"
                )
            history[key] = [float(v) for v in values]
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if not all(isinstance(logs, Mapping) for logs in source):
            raise TypeError(
                "history_or_logs as a list must hold one logs dict per epoch. "
                f"Received: a list of {sorted({type(e).__name__ for e in source})}"
            )
        keys = list(dict.fromkeys(k for logs in source for k in logs))
        history = {k: [float(logs.get(k, np.nan)) for logs in source] for k in keys}
    else:
        raise TypeError(
            "history_or_logs must be the History that model.fit returns, its .history dict, "
            f"or a list of per-epoch logs dicts. Received: {type(history_or_logs).__name__}"
        )
    lengths = {len(v) for v in history.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"history_or_logs has series of different lengths {sorted(lengths)}: one value per "
            "epoch is expected for every key"
        )
    count = lengths.pop() if lengths else 0
    if epochs is None or len(epochs) != count:
        epochs = list(range(1, count + 1))
    return history, epochs


def phase_timeline(
    history_or_logs, layers=None, metrics=("accuracy", "val_accuracy"), steps_per_epoch=None
):
    """Frozen fraction and adaptation coefficient s of each layer, per epoch.

    Reads the per-layer scalars that `tfq.callbacks.PhaseAdaptation` (and the other schedules)
    add to the epoch logs: `<layer>/frozen_fraction` and `<layer>/adaptation`. From epoch logs
    s is the value at the end of each epoch (MPA Eq. 5-6: it rises from 0 to 1 during a phase
    and reads 0 right after an interval finished, so with one epoch per phase it is always 0
    there); its panel is left out when it is 0 throughout. To see s ramp within phases, record
    `schedule.scalars()` after every batch and pass that list with `steps_per_epoch` (see the
    example). A last panel shows the `metrics` found in the logs.

    Args:
      history_or_logs: what `model.fit` returned (a `History`), its `.history` dict, or a
        list of logs dicts, one per epoch (or per batch, with `steps_per_epoch`).
      layers: None (every layer with scalars) or a list of layer names as they appear in the
        keys (e.g. "quant_fc1").
      metrics: log keys to plot in a last panel, as percentages, when present.
      steps_per_epoch: None when there is one entry per epoch; else the entries are batches
        and the epoch axis is fractional (entry i is at (i + 1) / steps_per_epoch).

    Returns:
      matplotlib Figure with two or three panels sharing the epoch axis.

    Raises:
      TypeError: `history_or_logs` is none of the accepted types.
      ValueError: no `<layer>/frozen_fraction` scalars (no schedule ran), or unknown layers.

    Example:
      >>> from tfquant import plots
      >>> logs = [{"quant_fc1/frozen_fraction": f, "quant_fc1/adaptation": s, "accuracy": a}
      ...         for f, s, a in [(0.2, 0.5, 0.9), (0.4, 0.0, 0.92), (1.0, 0.0, 0.95)]]
      >>> fig = plots.phase_timeline(logs)
      >>> [ax.get_ylabel() for ax in fig.axes]
      ['frozen weights (%)', 'adaptation s', 'accuracy (%)']

      Per batch, during `fit`:

      >>> schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=2)  # doctest: +SKIP
      >>> steps = []  # doctest: +SKIP
      >>> record = tfq.keras.callbacks.LambdaCallback(
      ...     on_train_batch_end=lambda batch, logs: steps.append(
      ...         {**logs, **schedule.scalars()}))  # doctest: +SKIP
      >>> qmodel.fit(x, y, batch_size=64, epochs=schedule.epochs_needed(qmodel),
      ...            callbacks=[schedule, record])  # doctest: +SKIP
      >>> plots.phase_timeline(steps, steps_per_epoch=len(x) // 64 + 1)  # doctest: +SKIP
    """
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, (int, np.integer))
        or steps_per_epoch < 1
    ):
        raise ValueError(
            "steps_per_epoch must be None or a positive integer. "
            f"Received: steps_per_epoch={steps_per_epoch!r}"
        )
    history, epochs = _history_dict(history_or_logs)
    if steps_per_epoch is not None:
        epochs = [step / steps_per_epoch for step in epochs]
    suffix = "/frozen_fraction"
    found = [k[: -len(suffix)] for k in history if k.endswith(suffix)]
    if not found:
        raise ValueError(
            "history_or_logs has no '<layer>/frozen_fraction' scalars: train with a schedule "
            "callback (e.g. tfq.callbacks.PhaseAdaptation) in model.fit(callbacks=[...]) and "
            f"pass what fit returned. Received keys: {sorted(history)[:10]}"
        )
    if not epochs:
        raise ValueError("history_or_logs holds no epoch: train for at least one epoch first")
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise TypeError(f"layers must be None or a list of names. Received: {layers!r}")
        unknown = [n for n in layers if n not in found]
        if unknown:
            raise ValueError(f"layers {unknown} have no scalars. Allowed: {found}")
        found = list(layers)
    adaptation = {n: history.get(f"{n}/adaptation") for n in found}
    show_s = any(v is not None and np.nanmax(np.abs(v)) > 0 for v in adaptation.values())
    shown_metrics = [m for m in metrics if m in history]
    panels = 1 + show_s + bool(shown_metrics)
    fig = Figure(figsize=(9, 1.2 + 2.3 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False).ravel()
    colors = _layer_colors(len(found))
    line = "o-" if len(epochs) <= 40 else "-"
    ax = axes[0]
    for name, color in zip(found, colors, strict=True):
        ax.plot(epochs, 100 * np.asarray(history[f"{name}{suffix}"]), line, color=color, ms=4)
    ax.set_ylabel("frozen weights (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(
        "Schedule progress per layer (values at the end of each "
        f"{'epoch' if steps_per_epoch is None else 'batch'})",
        fontsize=11,
    )
    panel = 1
    if show_s:
        ax = axes[panel]
        for name, color in zip(found, colors, strict=True):
            if adaptation[name] is not None:
                ax.plot(epochs, adaptation[name], line, color=color, ms=4)
        ax.set_ylabel("adaptation s")
        ax.set_ylim(-0.05, 1.05)
        panel += 1
    if shown_metrics:
        ax = axes[panel]
        for metric, style in zip(shown_metrics, ("-", "--", ":", "-."), strict=False):
            ax.plot(epochs, 100 * np.asarray(history[metric]), style, color="black", label=metric)
        ax.set_ylabel("accuracy (%)" if all("acc" in m for m in shown_metrics) else "metric (%)")
        ax.legend(loc="lower right", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=c, marker="o" if line == "o-" else None, ms=4) for c in colors]
    fig.legend(handles, found, loc="outside right upper", title="layer", fontsize=9)
    return fig


def _layer_colors(count):
    if count <= 10:
        return [f"C{i}" for i in range(count)]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, count - 1)) for i in range(count)]


# -- Pareto front ------------------------------------------------------------------------------
def _points(points):
    if isinstance(points, Mapping):
        items = [
            (label, *value) if isinstance(value, Sequence) else None
            for label, value in points.items()
        ]
    elif isinstance(points, Sequence) and not isinstance(points, (str, bytes)):
        items = []
        for p in points:
            if isinstance(p, Mapping):
                missing = {"label", "size_bytes", "accuracy"} - set(p)
                items.append(None if missing else (p["label"], p["size_bytes"], p["accuracy"]))
            elif isinstance(p, Sequence) and not isinstance(p, (str, bytes)):
                items.append(tuple(p))
            else:
                items.append(None)
    else:
        items = None
    if not items or any(i is None or len(i) != 3 for i in items):
        raise TypeError(
            "points must be a non-empty list of (label, size_bytes, accuracy) tuples or of "
            "dicts with those keys, or a {label: (size_bytes, accuracy)} dict. "
            f"Received: {points!r}"[:400]
        )
    out = []
    for label, size, accuracy in items:
        if isinstance(size, bool) or not isinstance(size, (int, float, np.number)) or size <= 0:
            raise ValueError(
                f"size_bytes must be a positive number. Received: {size!r} for {label!r}"
            )
        if (
            isinstance(accuracy, bool)
            or not isinstance(accuracy, (int, float, np.number))
            or not (0.0 <= accuracy <= 1.0)
        ):
            raise ValueError(
                f"accuracy must be a fraction in [0, 1] (divide percentages by 100). "
                f"Received: {accuracy!r} for {label!r}"
            )
        out.append((str(label), float(size), float(accuracy)))
    return out


def pareto_front(points):
    """Labels of the points no other point beats on both size and accuracy, smallest first.

    >>> pareto_front([("a", 100, 0.9), ("b", 50, 0.95), ("c", 20, 0.8)])
    ['c', 'b']
    """
    best, front = -math.inf, []
    for label, _, accuracy in sorted(_points(points), key=lambda p: (p[1], -p[2])):
        if accuracy > best:
            front.append(label)
            best = accuracy
    return front


def _size_unit(largest):
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if largest >= 2 * scale:
            return unit, scale
    return "B", 1


def pareto(points, title="Size vs accuracy", log_size=None):
    """Model size against accuracy for several schemes, with the Pareto front.

    Filled markers are on the front (no other point is both smaller and more accurate), hollow
    ones are beaten; every point is labelled.

    Args:
      points: list of `(label, size_bytes, accuracy)` tuples, or of dicts with the keys
        "label", "size_bytes", "accuracy", or a `{label: (size_bytes, accuracy)}` dict.
        accuracy is a fraction in [0, 1]; size_bytes e.g. `len(tflite_bytes)` or
        `Compressed.nbytes`.
      title: figure title.
      log_size: logarithmic size axis; None chooses it when sizes span more than 8x.

    Returns:
      matplotlib Figure.

    Raises:
      TypeError: `points` has another shape.
      ValueError: a size is not positive or an accuracy is outside [0, 1].

    Example:
      >>> from tfquant import plots
      >>> fig = plots.pareto([("float32", 156_220, 0.978), ("3-bit", 42_632, 0.981),
      ...                     ("ternary", 24_000, 0.97)])
      >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
      ('model size (KiB)', 'accuracy (%)')
    """
    parsed = _points(points)
    front = set(pareto_front(parsed))
    sizes = np.array([p[1] for p in parsed])
    unit, scale = _size_unit(sizes.max())
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    ordered = sorted((p for p in parsed if p[0] in front), key=lambda p: p[1])
    ax.plot(
        [p[1] / scale for p in ordered],
        [100 * p[2] for p in ordered],
        "-",
        color="tab:green",
        alpha=0.6,
        linewidth=2,
        drawstyle="steps-post",
        label="Pareto front",
        zorder=1,
    )
    for i, (label, size, accuracy) in enumerate(parsed):
        on_front = label in front
        ax.scatter(
            size / scale,
            100 * accuracy,
            s=60,
            color=f"C{i % 10}",
            facecolors=f"C{i % 10}" if on_front else "none",
            linewidths=1.8,
            zorder=3,
        )
    ax.scatter([], [], s=60, color="gray", label="on the front")
    ax.scatter([], [], s=60, facecolors="none", edgecolors="gray", label="beaten")
    if log_size if log_size is not None else sizes.max() > 8 * sizes.min():
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"model size ({unit})")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=9)
    _place_labels(
        fig, ax, [(label, size / scale, 100 * accuracy) for label, size, accuracy in parsed]
    )
    return fig


# Label positions tried around a point, in offset points: right, above, left, below, further.
_LABEL_SPOTS = (
    ((7, 4), "left", "bottom"),
    ((7, -4), "left", "top"),
    ((-7, 4), "right", "bottom"),
    ((-7, -4), "right", "top"),
    ((0, 9), "center", "bottom"),
    ((0, -9), "center", "top"),
    ((7, 16), "left", "bottom"),
    ((7, -16), "left", "top"),
)


def _place_labels(fig, ax, points):
    """Annotates each point at the first spot where its text overlaps no earlier label, no
    marker and stays inside the axes (the first spot if none is free)."""
    FigureCanvasAgg(fig)  # a renderer to measure text with; no GUI involved
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # runs the layout so positions are final
    inside = ax.get_window_extent(renderer)
    taken = []
    for x, y in ((p[1], p[2]) for p in points):
        cx, cy = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(cx - 6, cy - 6, cx + 6, cy + 6))
    for label, x, y in points:
        chosen = None
        for offset, ha, va in _LABEL_SPOTS:
            text = ax.annotate(
                label, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va, fontsize=9
            )
            box = text.get_window_extent(renderer)
            fits = (
                box.x0 >= inside.x0
                and box.x1 <= inside.x1
                and box.y0 >= inside.y0
                and box.y1 <= inside.y1
                and not any(box.overlaps(other) for other in taken)
            )
            if fits:
                chosen = text
                taken.append(box)
                break
            text.remove()
        if chosen is None:
            offset, ha, va = _LABEL_SPOTS[0]
            ax.annotate(
                label, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va, fontsize=9
            )


# -- bits per weight ---------------------------------------------------------------------------
def _coding_rows(report_or_compressed):
    """(layer names, weights per layer, levels per layer, {series: bits per layer}, sparsity)."""
    from tfquant.coding import Compressed, LayerCoding

    source = report_or_compressed
    if isinstance(source, Compressed):
        source = [source]
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)) or not source:
        source = None
    elif all(isinstance(r, LayerCoding) for r in source):
        names = [r.layer for r in source]
        series = {
            "entropy bound": [r.entropy_bits for r in source],
            "Huffman": [r.huffman_bits for r in source],
            "ANS": [r.ans_bits for r in source],
        }
        return names, [r.weights for r in source], [r.levels for r in source], series, None
    elif all(isinstance(c, Compressed) for c in source):
        first = source[0].layers
        names = [s.name for s in first]
        for blob in source[1:]:
            if [s.name for s in blob.layers] != names:
                raise ValueError(
                    "the Compressed containers must hold the same model (same kernels); "
                    f"Received: kernels {names} and {[s.name for s in blob.layers]}"
                )
        if not names:
            raise ValueError("report_or_compressed holds no quantized kernel")
        series = {"entropy bound": [s.entropy_bits for s in first]}
        for blob in source:
            label = {"huffman": "Huffman"}.get(blob.coder, blob.coder)
            label = "ANS" if label.startswith("ans") else label  # "ans", "ans-masked"
            while label in series:
                label += "'"
            series[label] = [s.coded_bits for s in blob.layers]
        weights = [math.prod(s.shape) for s in first]
        return names, weights, [s.levels for s in first], series, [s.sparsity for s in first]
    raise TypeError(
        "report_or_compressed must be what tfq.coding.report returns (a list of LayerCoding), "
        "a Compressed from tfq.coding.compress, or a list of Compressed of the same model. "
        f"Received: {type(report_or_compressed).__name__}"
    )


def bits_per_weight(report_or_compressed, title="Bits per weight by layer"):
    """Per-layer bars of bits per weight: entropy bound vs Huffman vs ANS.

    A black tick over each group marks fixed-length codes, ceil(log2(levels)) bits; the last
    group ("all layers") is the average weighted by the number of weights. Given containers,
    the tick labels add each kernel's share of exact zeros (sparsity).

    Args:
      report_or_compressed: the list `tfq.coding.report(qmodel)` returns (entropy, Huffman and
        ANS), a `Compressed` from `tfq.coding.compress` (entropy and its coder), or a list of
        `Compressed` of the same model (e.g. one per coder).
      title: figure title.

    Returns:
      matplotlib Figure.

    Raises:
      TypeError: another kind of input.
      ValueError: containers of different models, or no quantized kernel.

    Example:
      >>> from tfquant import plots
      >>> from tfquant.coding import LayerCoding
      >>> rows = [LayerCoding("conv1/kernel", 144, 8, 2.96, 3.61, 3.61),
      ...         LayerCoding("fc1/kernel", 32768, 8, 2.87, 2.93, 2.87)]
      >>> fig = plots.bits_per_weight(rows)
      >>> fig.axes[0].get_ylabel()
      'bits per weight'
    """
    names, weights, levels, series, sparsity = _coding_rows(report_or_compressed)
    total = float(sum(weights))
    overall = {k: float(np.dot(v, weights) / total) for k, v in series.items()}
    fixed = [max(1, math.ceil(math.log2(max(n, 2)))) for n in levels]
    fixed_overall = float(np.dot(fixed, weights) / total)
    groups = len(names) + 1
    fig = Figure(figsize=(max(7.0, 1.15 * groups + 2.5), 4.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(groups)
    for i, (label, values) in enumerate(series.items()):
        heights = list(values) + [overall[label]]
        bars = ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            heights,
            width,
            label=label,
            color=_SERIES_COLORS[i % len(_SERIES_COLORS)],
        )
        ax.bar_label(
            bars, fmt="%.2f", label_type="edge", padding=-24, rotation=90, color="white", fontsize=8
        )
    for xi, bits in zip(x, fixed + [fixed_overall], strict=True):
        ax.hlines(bits, xi - 0.45, xi + 0.45, color="black", linewidth=2)
    ax.plot([], [], color="black", linewidth=2, label="fixed-length codes")
    labels = []
    for i, name in enumerate(names):
        short = name[: -len("/kernel")] if name.endswith("/kernel") else name
        text = f"{short}\n{weights[i]:,} w"
        if sparsity is not None:
            text += f"\n{sparsity[i]:.0%} zeros"
        labels.append(text)
    labels.append(f"all layers\n{int(total):,} w")
    ax.set_xticks(x, labels, fontsize=8, rotation=30 if groups > 8 else 0)
    ax.set_ylabel("bits per weight")
    ax.set_ylim(0, max(max(fixed), *(max(v) for v in series.values())) * 1.18)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    return fig


__all__ = ["weight_histogram", "phase_timeline", "pareto", "pareto_front", "bits_per_weight"]
