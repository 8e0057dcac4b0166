"""tfquant.plots: every function returns a labelled Figure (PNG-renderable without a display)
for each accepted input form and rejects bad input with a clear error."""

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

import tfquant as tfq
from tests.conftest import compile_model
from tfquant import plots

keras = tfq.keras


def _png(fig):
    assert isinstance(fig, Figure)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


@pytest.fixture(scope="module")
def scheduled(float_model, digits):
    """A masked 2-bit model one epoch into MPA (partly frozen), with the fit History and the
    schedule's scalars recorded after every batch."""
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    qmodel = compile_model(
        tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2, mode="masked")), 5e-4
    )
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=2, verbose=0)
    steps = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append({**logs, **schedule.scalars()})
    )
    history = qmodel.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[schedule, record])
    return qmodel, history, steps


@pytest.fixture(scope="module")
def snapped(float_model):
    return tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3))


def test_weight_histogram_shows_frozen_and_free(scheduled):
    qmodel, _, _ = scheduled
    fig = plots.weight_histogram(qmodel)
    axes = _visible(fig)
    assert len(axes) == 4
    for ax in axes:
        assert ax.get_xlabel() == "weight value"
        assert ax.get_ylabel() == "weights (count)"
        assert "4 centers" in ax.get_title() and "% frozen" in ax.get_title()
        assert 0 < float(ax.get_title().split(", ")[-1].split("%")[0]) < 100
    legend = _legend_texts(fig)
    assert "free weights" in legend and "frozen weights (on their center)" in legend
    _png(fig)


@pytest.mark.parametrize("layer", ["fc1", "quant_fc1", ["fc1"]])
def test_weight_histogram_selects_layers(scheduled, layer):
    fig = plots.weight_histogram(scheduled[0], layer=layer, log=True)
    (ax,) = _visible(fig)
    assert ax.get_title().startswith("fc1: 32,768 weights")
    assert ax.get_ylabel() == "weights (count, log scale)"


@pytest.mark.parametrize(
    "scheme, title",
    [
        (tfq.schemes.Ternary(method="ttq"), "3 centers"),
        (tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=2), "levels per channel"),
    ],
    ids=["ternary", "per-channel"],
)
def test_weight_histogram_other_quantizers(float_model, scheme, title):
    qmodel = tfq.quantize_model(float_model, scheme)
    fig = plots.weight_histogram(qmodel, layer=["conv2", "fc1"], columns=1)
    assert all(title in ax.get_title() for ax in _visible(fig))
    assert "codebook centers" in _legend_texts(fig) or title == "levels per channel"
    _png(fig)


def test_weight_histogram_errors(scheduled, float_model):
    qmodel = scheduled[0]
    with pytest.raises(ValueError, match=r"layer 'fc9' has no tfquant weight quantizer.*fc1"):
        plots.weight_histogram(qmodel, layer="fc9")
    with pytest.raises(TypeError, match="layer must be None, a layer name"):
        plots.weight_histogram(qmodel, layer=3)
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        plots.weight_histogram(qmodel, bins=0)
    with pytest.raises(ValueError, match="returned by tfq.quantize_model"):
        plots.weight_histogram(float_model)
    with pytest.raises(TypeError, match="qmodel must be a tf_keras Model"):
        plots.weight_histogram("model")


def test_phase_timeline_from_history(scheduled):
    _, history, _ = scheduled
    fig = plots.phase_timeline(history)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["frozen weights (%)", "adaptation s", "accuracy (%)"]
    assert fig.axes[-1].get_xlabel() == "epoch"
    assert _legend_texts(fig)[-4:] == ["quant_conv1", "quant_conv2", "quant_fc1", "quant_logits"]
    frozen = fig.axes[0].get_lines()[0].get_ydata()
    assert len(frozen) == 3 and np.all(np.diff(frozen) >= 0)
    for source in (
        history.history,
        [
            {key: values[epoch] for key, values in history.history.items()}
            for epoch in range(len(history.epoch))
        ],
    ):
        again = plots.phase_timeline(source)
        np.testing.assert_array_equal(again.axes[0].get_lines()[0].get_ydata(), frozen)
    _png(fig)


def test_phase_timeline_per_batch_shows_s_ramps(scheduled):
    _, _, steps = scheduled
    fig = plots.phase_timeline(steps, layers=["quant_fc1"], steps_per_epoch=4, metrics=())
    frozen_ax, s_ax = fig.axes
    (line,) = s_ax.get_lines()
    s = line.get_ydata()
    assert len(s) == 12 and s.max() == pytest.approx(7 / 8) and s.min() == 0.0
    assert line.get_xdata()[-1] == pytest.approx(3.0)  # 12 batches / 4 per epoch


def test_phase_timeline_hides_s_when_always_zero():
    logs = [{"quant_fc1/frozen_fraction": f, "quant_fc1/adaptation": 0.0} for f in (0.5, 1.0)]
    fig = plots.phase_timeline(logs)
    assert [ax.get_ylabel() for ax in fig.axes] == ["frozen weights (%)"]


def test_phase_timeline_errors(scheduled):
    _, history, _ = scheduled
    with pytest.raises(ValueError, match="PhaseAdaptation"):
        plots.phase_timeline({"loss": [1.0, 0.5]})
    with pytest.raises(TypeError, match="History that model.fit returns"):
        plots.phase_timeline(42)
    with pytest.raises(TypeError, match="one logs dict per epoch"):
        plots.phase_timeline([1, 2])
    with pytest.raises(ValueError, match="different lengths"):
        plots.phase_timeline({"a/frozen_fraction": [0.1, 0.2], "loss": [1.0]})
    with pytest.raises(ValueError, match="steps_per_epoch must be None or a positive integer"):
        plots.phase_timeline(history, steps_per_epoch=0)
    with pytest.raises(ValueError, match=r"layers \['fc9'\] have no scalars"):
        plots.phase_timeline(history, layers=["fc9"])
    with pytest.raises(ValueError, match="no epoch"):
        plots.phase_timeline({"a/frozen_fraction": []})


POINTS = [("float32", 156_220, 0.978), ("3-bit", 42_632, 0.981), ("ternary", 8_000, 0.96)]


@pytest.mark.parametrize(
    "points",
    [
        POINTS,
        [{"label": a, "size_bytes": b, "accuracy": c} for a, b, c in POINTS],
        {a: (b, c) for a, b, c in POINTS},
    ],
    ids=["tuples", "dicts", "mapping"],
)
def test_pareto_accepts_each_form(points):
    assert plots.pareto_front(points) == ["ternary", "3-bit"]
    fig = plots.pareto(points, title="digits")
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "model size (KiB)",
        "accuracy (%)",
        "digits",
    )
    assert ax.get_xscale() == "log"  # sizes span 20x
    assert {t.get_text() for t in ax.texts} == {"float32", "3-bit", "ternary"}
    _png(fig)


def test_pareto_linear_scale_and_bytes():
    ax = plots.pareto([("a", 900, 0.5), ("b", 1000, 0.6)]).axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "model size (B)"


@pytest.mark.parametrize(
    "points, error, match",
    [
        ([("a", 100, 97.5)], ValueError, "divide percentages by 100"),
        ([("a", 0, 0.5)], ValueError, "size_bytes must be a positive number"),
        ([], TypeError, "non-empty list"),
        ([("a", 100)], TypeError, r"\(label, size_bytes, accuracy\)"),
        ([{"label": "a", "size": 1, "accuracy": 0.5}], TypeError, "dicts with those keys"),
        ("abc", TypeError, "non-empty list"),
    ],
)
def test_pareto_errors(points, error, match):
    with pytest.raises(error, match=match):
        plots.pareto(points)


def test_bits_per_weight_from_report(snapped):
    rows = tfq.coding.report(snapped, print_fn=None)
    fig = plots.bits_per_weight(rows)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "bits per weight"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["fixed-length codes", "entropy bound", "Huffman", "ANS"]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "conv1\n144 w" and ticks[-1] == "all layers\n38,160 w"
    assert len(ax.containers) == 3 and all(len(c) == 5 for c in ax.containers)
    _png(fig)


def test_bits_per_weight_from_containers(snapped):
    huffman = tfq.coding.compress(snapped, coder="huffman")
    ans = tfq.coding.compress(snapped, coder="ans")
    ax = plots.bits_per_weight([huffman, ans]).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["fixed-length codes", "entropy bound", "Huffman", "ANS"]
    assert "zeros" in ax.get_xticklabels()[0].get_text()
    (single,) = plots.bits_per_weight(ans).axes
    assert [t.get_text() for t in single.get_legend().get_texts()][1:] == ["entropy bound", "ANS"]


def test_bits_per_weight_errors(snapped):
    with pytest.raises(TypeError, match="list of LayerCoding"):
        plots.bits_per_weight(snapped)
    with pytest.raises(TypeError, match="list of LayerCoding"):
        plots.bits_per_weight([])
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    blob = tfq.coding.compress(tfq.quantize_model(other, tfq.schemes.Multivalued(bits=2)))
    with pytest.raises(ValueError, match="same model"):
        plots.bits_per_weight([tfq.coding.compress(snapped), blob])
