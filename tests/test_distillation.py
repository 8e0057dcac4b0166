"""tfq.Distiller (issue 22: distillation keeps a pruned few-bit student at its teacher's
accuracy): the objective against numpy, only the student trains, schedules and summaries given
the distiller act on the student, channel pruning + group lasso + shrink through it, the
config round trip, and bad input."""

import numpy as np
import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant.models import digits_cnn

keras = tfq.keras
layers = keras.layers

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_objective_matches_numpy(float_model, digits, alpha):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    student = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2))
    distiller = tfq.Distiller(student, float_model, temperature=3.0, alpha=alpha)
    distiller.compile("adam", LOSS)
    logs = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    z_s, z_t = student.predict(x, verbose=0), float_model.predict(x, verbose=0)
    hard = -_log_softmax(z_s)[np.arange(len(y)), y].mean()
    p_t = np.exp(_log_softmax(z_t / 3.0))
    soft = 9.0 * (p_t * (_log_softmax(z_t / 3.0) - _log_softmax(z_s / 3.0))).sum(-1).mean()
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], alpha * hard + (1 - alpha) * soft, rtol=1e-4)
    # the distiller predicts with the student
    np.testing.assert_array_equal(distiller.predict(x, verbose=0), z_s)


def test_probability_outputs_give_the_logits_objective():
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    models = []
    for activation in (None, "softmax"):
        inputs = keras.Input((4,))
        models.append(keras.Model(inputs, layers.Activation(activation or "linear")(inputs)))
    by_logits = tfq.Distiller(models[0], keras.models.clone_model(models[0]))
    by_probabilities = tfq.Distiller(
        models[1], keras.models.clone_model(models[1]), from_logits=False
    )
    teacher = np.roll(logits, 1, axis=0)
    expected = by_logits.distillation_loss(logits, teacher).numpy()
    got = by_probabilities.distillation_loss(
        models[1](logits).numpy(), models[1](teacher).numpy()
    ).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.all(expected > 0)


def test_only_the_student_trains_and_the_regularizer_counts(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    teacher = compile_model(digits_cnn(seed=2))
    teacher.fit(x, y, epochs=1, verbose=0)
    start = tfq.regularizers.with_group_lasso(teacher, 1e-3)
    student = tfq.quantize_model(start, tfq.schemes.Multivalued(bits=3))
    before_teacher, before_student = _weights(teacher), _weights(student)
    distiller = tfq.Distiller(student, teacher, alpha=0.5)
    distiller.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    assert student.losses  # the group lasso is the student's
    with_penalty = distiller.evaluate(x[:128], y[:128], verbose=0, return_dict=True)["loss"]
    penalty = float(sum(loss.numpy() for loss in student.losses))
    history = distiller.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert set(history.history) == {"loss", "distillation_loss", "accuracy"}
    assert all(
        np.array_equal(a, b) for a, b in zip(before_teacher, teacher.get_weights(), strict=True)
    )
    assert not all(
        np.array_equal(a, b) for a, b in zip(before_student, student.get_weights(), strict=True)
    )
    # the evaluated objective includes the penalty, unweighted
    plain = tfq.Distiller(
        tfq.quantize_model(teacher, tfq.schemes.Multivalued(bits=3)), teacher, alpha=0.5
    )
    plain.student.set_weights(before_student)
    plain.compile("adam", LOSS)
    without = plain.evaluate(x[:128], y[:128], verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(with_penalty - without, penalty, rtol=1e-4)


def test_schedules_and_summary_act_on_the_student(float_model, digits):
    """GradualPruning(structure="channel") given the distiller prunes the student's channels
    to the target; `tfq.summary` of the distiller is the student's; the shrunk student predicts
    what the pruned one does."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    student = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=3, sparsity=0.5))
    distiller = tfq.Distiller(student, float_model)
    distiller.compile(keras.optimizers.Adam(1e-3), LOSS)
    pruning = tfq.callbacks.GradualPruning(end_epoch=1, frequency=4, verbose=0, structure="channel")
    distiller.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[pruning])
    by_distiller = tfq.summary(distiller, print_fn=None)
    by_student = tfq.summary(student, print_fn=None)
    assert by_distiller == by_student
    assert all(abs(row.sparsity - 0.5) < 0.06 for row in by_student), by_student
    shrunk, report = tfq.shrink(student)
    assert shrunk.count_params() < student.count_params()
    np.testing.assert_array_equal(
        shrunk.predict(x, verbose=0).argmax(-1), student.predict(x, verbose=0).argmax(-1)
    )


def test_phase_adaptation_through_the_distiller_ends_on_the_centers(float_model, digits):
    (x, y), _ = digits
    student = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2))
    distiller = tfq.Distiller(student, float_model, alpha=0.2)
    distiller.compile(keras.optimizers.Adam(1e-3), LOSS)
    schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
    distiller.fit(
        x[:256],
        y[:256],
        epochs=schedule.epochs_needed(distiller),
        verbose=0,
        batch_size=64,
        callbacks=[schedule],
    )
    rows = tfq.summary(student, print_fn=None)
    assert rows and all(r.frozen == 1.0 and r.distinct <= r.levels for r in rows), rows


def test_config_round_trip(float_model):
    student = tfq.quantize_model(float_model, tfq.schemes.Ternary())
    distiller = tfq.Distiller(student, float_model, temperature=2.5, alpha=0.2, name="kd")
    config = distiller.get_config()
    clone = tfq.Distiller.from_config(config)
    assert (clone.temperature, clone.alpha, clone.from_logits, clone.name) == (2.5, 0.2, True, "kd")
    for ours, theirs in ((clone.student, student), (clone.teacher, float_model)):
        assert [type(layer).__name__ for layer in ours.layers] == [
            type(layer).__name__ for layer in theirs.layers
        ]
        assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    assert [r.quantizer for r in tfq.summary(clone.student, print_fn=None)] == [
        r.quantizer for r in tfq.summary(student, print_fn=None)
    ]
    serialized = keras.utils.serialize_keras_object(distiller)
    assert serialized["registered_name"] == "tfquant>Distiller"
    assert keras.utils.deserialize_keras_object(serialized).get_config()["alpha"] == 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0}, "temperature must be a number > 0. Received: 0"),
        ({"temperature": "4"}, "temperature must be a number > 0. Received: '4'"),
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\]. Received: 1.5"),
    ],
)
def test_bad_settings_are_named(float_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfq.Distiller(keras.models.clone_model(float_model), float_model, **kwargs)


def test_bad_models_are_named(float_model):
    with pytest.raises(ValueError, match="teacher must be another model than student"):
        tfq.Distiller(float_model, float_model)
    inputs = keras.Input((8, 8, 1))
    other = keras.Model(inputs, layers.Dense(5)(layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match=r"same input and output shapes.*\(5,\)"):
        tfq.Distiller(other, float_model)
    two = keras.Model(inputs, [layers.Flatten()(inputs), layers.Flatten()(inputs)])
    with pytest.raises(ValueError, match="teacher must have one input and one output"):
        tfq.Distiller(float_model, two)
    with pytest.raises(TypeError, match="student"):
        tfq.Distiller("model.keras", float_model)


@pytest.mark.parametrize("name", ["distiller.keras", "distiller_savedmodel"])
def test_saved_distiller_loads_and_predicts_the_same(float_model, digits, tmp_path, name):
    (x, y), _ = digits
    student = tfq.quantize_model(float_model, tfq.schemes.Multivalued(bits=2))
    distiller = tfq.Distiller(student, float_model, temperature=2.0)
    distiller.compile("adam", LOSS)
    distiller.fit(x[:128], y[:128], verbose=0)
    distiller.save(tmp_path / name)
    loaded = tfq.load_model(str(tmp_path / name))
    assert isinstance(loaded, tfq.Distiller) and loaded.temperature == 2.0
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))
    assert tfq.summary(loaded, print_fn=None) == tfq.summary(student, print_fn=None)
