"""`Distiller`: quantization-aware training against a float teacher's soft targets (knowledge
distillation, Hinton et al. 2015 "Distilling the Knowledge in a Neural Network", Sec. 2), so
that a pruned, few-bit student keeps the teacher's accuracy (Mishra & Marr 2018, "Apprentice",
apply it to low-precision networks).

The loss of a training step (Hinton et al.'s weighted average of the two objectives):

    alpha * L(y, z_s) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + R

where `z_s`, `z_t` are the student's and teacher's logits, `L` the compiled loss on the labels,
`T` the temperature (the `T^2` keeps the soft term's gradients at the hard term's scale when
`T` changes) and `R` the student's regularization losses (e.g. `tfq.regularizers`' group
lasso), which are not weighted.
"""

from tfquant._keras import check_keras2_model, keras, tf

__all__ = ["Distiller"]


@keras.utils.register_keras_serializable(package="tfquant")
class Distiller(keras.Model):
    """Trains `student` (a `tfq.quantize_model` result) with `fit` on the labels and on a frozen
    `teacher`'s soft targets; predicts and evaluates with the student.

    Every tfquant schedule (`GradualPruning`, `PhaseAdaptation`, ...) and `tfq.summary` act
    on the student's quantizers when given the distiller; the student is trained in place, so
    after `fit` save, shrink, compress and export `distiller.student` as any quantized model.
    The teacher runs in inference mode and is never updated. Both models map the same inputs
    to outputs of the same shape: logits (`from_logits=True`, the default) or probabilities.

    Args:
      student: the tf_keras model to train (usually quantized).
      teacher: a tf_keras model with the student's input and output shapes, e.g. the float
        model the student was quantized from.
      temperature: T > 0 of the softened distributions; Hinton et al. use 1-20, 2-5 suits
        10-class nets.
      alpha: weight in [0, 1] of the loss on the labels; 1 - alpha weighs the soft targets.
      from_logits: whether both models output logits (True) or probabilities.

    Example:
      >>> import numpy as np
      >>> import tfquant as tfq
      >>> keras = tfq.keras
      >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      >>> student = tfq.quantize_model(teacher, tfq.schemes.Multivalued(bits=2))
      >>> distiller = tfq.Distiller(student, teacher, temperature=4.0, alpha=0.5)
      >>> distiller.compile(
      ...     "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
      ... )
      >>> x, y = np.random.rand(32, 4).astype("float32"), np.arange(32) % 3
      >>> history = distiller.fit(x, y, epochs=1, verbose=0)
      >>> sorted(history.history)
      ['accuracy', 'distillation_loss', 'loss']
      >>> distiller.get_config()["temperature"]
      4.0
    """

    def __init__(self, student, teacher, temperature=4.0, alpha=0.5, from_logits=True, **kwargs):
        check_keras2_model(student, "student")
        check_keras2_model(teacher, "teacher")
        if student is teacher:
            raise ValueError(
                "teacher must be another model than student (a frozen model to learn from, "
                f"e.g. the float model the student was quantized from). Received: the same "
                f"model {student.name!r} for both"
            )
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0. Received: {temperature!r}")
        if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
            raise ValueError(f"alpha must be a number in [0, 1]. Received: {alpha!r}")
        for argument, model in (("student", student), ("teacher", teacher)):
            if len(model.inputs or []) != 1 or len(model.outputs or []) != 1:
                raise ValueError(
                    f"{argument} must have one input and one output (a classifier). Received: "
                    f"{model.name!r} with {len(model.inputs or [])} inputs and "
                    f"{len(model.outputs or [])} outputs"
                )
        shapes = {
            name: (tuple(m.inputs[0].shape[1:]), tuple(m.outputs[0].shape[1:]))
            for name, m in (("student", student), ("teacher", teacher))
        }
        if shapes["student"] != shapes["teacher"]:
            raise ValueError(
                "student and teacher must have the same input and output shapes. Received: "
                f"student {shapes['student']}, teacher {shapes['teacher']} ((input, output) "
                "shapes without the batch axis)"
            )
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._distillation_tracker = keras.metrics.Mean(name="distillation_loss")
        # Called once now: built (its variables are the two models'), so schedules can read it
        # before `fit`, and with an input signature, so it saves as a SavedModel.
        self(keras.Input(type_spec=student.inputs[0].type_spec))

    @property
    def _tfquant_student(self):  # read by tfquant._keras.trained_model
        return self.student

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _log_softened(self, outputs):
        """log softmax(z / T) of logits, or of log-probabilities for probability outputs."""
        if not self.from_logits:
            outputs = tf.math.log(tf.clip_by_value(outputs, 1e-12, 1.0))
        return tf.nn.log_softmax(outputs / self.temperature, axis=-1)

    def distillation_loss(self, student_outputs, teacher_outputs):
        """Per-example `T^2 * KL(teacher's softened distribution || student's)`."""
        teacher_log = self._log_softened(tf.stop_gradient(teacher_outputs))
        student_log = self._log_softened(student_outputs)
        divergence = tf.reduce_sum(tf.exp(teacher_log) * (teacher_log - student_log), axis=-1)
        return self.temperature**2 * divergence

    def _objective(self, x, y, sample_weight, training):
        """The step's outputs, its loss (see the module docstring) and the mean soft term."""
        teacher_outputs = self.teacher(x, training=False)
        outputs = self(x, training=training)
        hard = self.compiled_loss(y, outputs, sample_weight)
        soft = tf.reduce_mean(self.distillation_loss(outputs, teacher_outputs))
        loss = self.alpha * hard + (1.0 - self.alpha) * soft
        if self.student.losses:
            loss += tf.add_n(self.student.losses)
        return outputs, loss, soft

    def _logs(self, y, outputs, sample_weight, loss, soft):
        self._loss_tracker.update_state(loss)
        self._distillation_tracker.update_state(soft)
        self.compiled_metrics.update_state(y, outputs, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            outputs, loss, soft = self._objective(x, y, sample_weight, training=True)
        variables = self.student.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._logs(y, outputs, sample_weight, loss, soft)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        outputs, loss, soft = self._objective(x, y, sample_weight, training=False)
        return self._logs(y, outputs, sample_weight, loss, soft)

    @property
    def metrics(self):
        # The distillation objective and its soft term, then the compiled metrics; the compiled
        # loss's own tracker is left out (it would log the hard term alone as "loss").
        compiled = self.compiled_metrics.metrics if self.compiled_metrics is not None else []
        return [self._loss_tracker, self._distillation_tracker, *compiled]

    def get_config(self):
        return {
            "student": keras.layers.serialize(self.student),
            "teacher": keras.layers.serialize(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "from_logits": self.from_logits,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.layers.deserialize(config[key])
        return cls(**config)
