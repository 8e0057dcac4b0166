"""Group sparsity: a penalty that drives whole output channels (units of Dense) to zero, so
that `tfq.shrink` can remove them.

`GroupLasso` is the group lasso of Yuan & Lin 2006 ("Model selection and estimation in
regression with grouped variables") with one group per output channel, the filter-wise
penalty of Wen et al. 2016 ("Learning Structured Sparsity in Deep Neural Networks", Eq. 1-2):

    strength * sum_c sqrt(n_c) * ||W[..., c]||_2

where `n_c` is the number of weights of channel c. Gradient descent on it pulls every
channel's weights towards zero at the same rate whatever their size, so channels the loss does
not need reach zero; a quantizer with a zero interval (`Multivalued(sparsity=...)`,
`Ternary`) then maps them to exactly 0, and `tfq.shrink` removes them.
"""

import math

from tfquant._keras import keras, tf

__all__ = ["GroupLasso", "with_group_lasso"]

_CHANNEL_LAYERS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
)


def _safe_norm(squares):
    """sqrt with a zero gradient at 0 (a channel already at zero stays there, no NaN)."""
    positive = squares > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, squares, tf.ones_like(squares))), 0.0)


@keras.utils.register_keras_serializable(package="tfquant")
class GroupLasso(keras.regularizers.Regularizer):
    """Group lasso over the output channels of a kernel: `strength * sum_c sqrt(n_c) *
    ||W[..., c]||_2` (Yuan & Lin 2006; Wen et al. 2016's filter-wise groups).

    The output channel is the kernel's last axis (Conv1D, Conv2D, Dense: filters / units;
    DepthwiseConv2D: its `in * multiplier` output channels, the last two axes), except
    `Conv2DTranspose`, whose output channels are the second to last axis: pass
    `channel_axis=-2` for it (`with_group_lasso` does).

    Args:
      strength: the penalty's weight, > 0. With Adam at learning rate 1e-3 on MNIST-sized
        models, 1e-4 to 1e-3 removes a few to most channels.
      channel_axis: -1 (the default) or -2 (Conv2DTranspose); with -2 the last axis is
        folded into the groups.
      depthwise: True for a DepthwiseConv2D kernel (groups over the last two axes).

    Example:
      >>> import numpy as np
      >>> import tfquant as tfq
      >>> penalty = tfq.regularizers.GroupLasso(strength=0.5)
      >>> kernel = np.array([[3.0, 0.0], [4.0, 0.0]], np.float32)  # unit 0: norm 5, unit 1: 0
      >>> round(float(penalty(kernel)), 4)  # 0.5 * sqrt(2) * 5
      3.5355
      >>> tfq.regularizers.GroupLasso.from_config(penalty.get_config()).strength
      0.5
    """

    def __init__(self, strength=1e-4, channel_axis=-1, depthwise=False):
        if (
            isinstance(strength, bool)
            or not isinstance(strength, (int, float))
            or not math.isfinite(strength)
            or strength <= 0
        ):
            raise ValueError(f"strength must be a number > 0. Received: strength={strength!r}")
        if channel_axis not in (-1, -2):
            raise ValueError(
                "channel_axis must be -1 (Conv, Dense, DepthwiseConv2D) or -2 (Conv2DTranspose). "
                f"Received: channel_axis={channel_axis!r}"
            )
        if not isinstance(depthwise, bool):
            raise ValueError(f"depthwise must be True or False. Received: depthwise={depthwise!r}")
        if depthwise and channel_axis != -1:
            raise ValueError(
                "depthwise=True groups over the last two axes: channel_axis must be -1. "
                f"Received: channel_axis={channel_axis!r}"
            )
        self.strength = float(strength)
        self.channel_axis = channel_axis
        self.depthwise = depthwise

    def channel_norms(self, kernel):
        """The L2 norm of every output channel of `kernel` (1-D; for a depthwise kernel in
        TensorFlow's order of output channels, input channel * multiplier + m)."""
        kernel = tf.convert_to_tensor(kernel)
        if self.channel_axis == -2:
            kernel = tf.experimental.numpy.swapaxes(kernel, -1, -2)
        channels = kernel.shape[-1] * (kernel.shape[-2] if self.depthwise else 1)
        grouped = tf.reshape(kernel, [-1, channels])
        return _safe_norm(tf.reduce_sum(tf.square(grouped), axis=0))

    def __call__(self, kernel):
        norms = self.channel_norms(kernel)
        group_size = tf.convert_to_tensor(kernel).shape.num_elements() // norms.shape[0]
        return self.strength * math.sqrt(group_size) * tf.reduce_sum(norms)

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self):
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self):
        return (
            f"GroupLasso(strength={self.strength!r}, channel_axis={self.channel_axis}, "
            f"depthwise={self.depthwise})"
        )

    def get_config(self):
        return {
            "strength": self.strength,
            "channel_axis": self.channel_axis,
            "depthwise": self.depthwise,
        }


def with_group_lasso(model, strength=1e-4, layers=None):
    """A copy of the float Keras model `model` (same weights) whose Conv1D, Conv2D,
    Conv2DTranspose, DepthwiseConv2D and Dense layers (or only those named in `layers`) carry
    a `GroupLasso(strength)` kernel regularizer over their output channels; quantize it with
    `tfq.quantize_model` and train as usual. `model` itself is not changed. A layer that
    already has a kernel regularizer is refused (say which layers to use with `layers`).

    Example:
      >>> import tfquant as tfq
      >>> model = tfq.keras.Sequential([tfq.keras.Input((8,)), tfq.keras.layers.Dense(4)])
      >>> penalized = tfq.regularizers.with_group_lasso(model, strength=1e-3)
      >>> type(penalized.layers[0].kernel_regularizer).__name__
      'GroupLasso'
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"model must be a Keras 2 (tf.keras) model. Received: {type(model).__name__}"
        )
    penalty = GroupLasso(strength)  # validates strength
    names = [layer.name for layer in model.layers]
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise TypeError(f"layers must be a list of layer names. Received: layers={layers!r}")
        unknown = sorted(set(layers) - set(names))
        if unknown:
            raise ValueError(f"layers names layers the model does not have: {unknown}")
    chosen = set(layers) if layers is not None else None
    targets = {}
    for layer in model.layers:
        if chosen is not None and layer.name not in chosen:
            continue
        if not isinstance(layer, _CHANNEL_LAYERS) or isinstance(
            layer, keras.layers.SeparableConv2D
        ):
            if chosen is not None:
                raise ValueError(
                    f"layer {layer.name!r} ({type(layer).__name__}) has no output-channel "
                    "kernel GroupLasso supports (Conv1D, Conv2D, Conv2DTranspose, "
                    f"DepthwiseConv2D, Dense). Received: layers={sorted(chosen)!r}"
                )
            continue
        attribute = (
            "depthwise_regularizer"
            if isinstance(layer, keras.layers.DepthwiseConv2D)
            else "kernel_regularizer"
        )
        if getattr(layer, attribute, None) is not None:
            raise ValueError(
                f"layer {layer.name!r} already has a {attribute}; GroupLasso would replace it. "
                "Pass layers=[...] without it."
            )
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            targets[layer.name] = (attribute, GroupLasso(penalty.strength, depthwise=True))
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            targets[layer.name] = (attribute, GroupLasso(penalty.strength, channel_axis=-2))
        else:
            targets[layer.name] = (attribute, GroupLasso(penalty.strength))

    def clone(layer):
        config = layer.get_config()
        if layer.name in targets:
            attribute, regularizer = targets[layer.name]
            config[attribute] = keras.regularizers.serialize(regularizer)
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
