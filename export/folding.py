"""What each quantized kernel must be in the .tflite file, computed from the Keras model: its
integer codes in TFLite's layout, one scale per output channel, and its float bias, with a
following BatchNormalization folded in.

BatchNorm at inference is affine per output channel (DESIGN.md, "BatchNorm folding"):
`conv(x, W)·γ_c/σ_c + β_c − γ_c·μ_c/σ_c = conv(x, W ⊙ γ/σ) + b'`. With `W = codes · step` on the
layer's grid, the folded kernel is the same codes in every channel with scale
`step · |γ_c/σ_c|` (codes negated where γ_c/σ_c < 0), so per-channel int8 holds the trained
codebook indices exactly. `export.rewrite` writes these into the converter's output.
"""

import dataclasses

import numpy as np

from tfquant._keras import consumers, following_batchnorm, keras, quantized_weights
from tfquant.quantizers.base import TfquantQuantizer, export_codes, safe_step


@dataclasses.dataclass
class ExactKernel:
    """One quantized Keras kernel and what it must become in the .tflite file: integer codes
    in TFLite's layout (output channel first for Conv1D, Conv2D, Conv2DTranspose and Dense,
    last for DepthwiseConv2D; an Embedding's table as it is, one scale for all of it),
    one grid step per output channel, its bias, and the affine map of the BatchNormalization
    that follows it (if any), which `stored` folds in.

    Example:
      >>> kernel = ExactKernel("quant_dense", "dense", np.array([[1, -2]]), np.array([0.5]),
      ...                      bias=None, bits=8, levels=8)
      >>> kernel.stored()[0].tolist(), kernel.stored()[1].tolist()
      ([[1, -2]], [0.5])
      >>> codes, scales, bias = kernel.stored(np.array([-2.0]), np.array([1.0]))
      >>> codes.tolist(), scales.tolist(), bias.tolist()
      ([[-1, 2]], [1.0], [1.0])
      >>> ExactKernel(**kernel.get_config()).get_config() == kernel.get_config()
      True
    """

    layer: str  # the QuantizeWrapper's name (it appears in the converter's tensor names)
    keras_layer: str  # the wrapped Keras layer's name
    codes: np.ndarray  # integers, TFLite layout, unfolded
    steps: np.ndarray  # float64 [channels]: the grid step of each output channel, unfolded
    bias: np.ndarray | None  # float64 [channels], unfolded; None when the layer has none
    bits: int  # 8, or 4 for an INT4 kernel
    levels: int  # distinct values the quantizer allows (per channel if per-channel)
    channel_axis: int = 0
    batchnorm: str | None = None  # the BatchNormalization that follows, if any
    batchnorm_factor: np.ndarray | None = None  # its γ/σ per channel
    batchnorm_offset: np.ndarray | None = None  # its β − μ·γ/σ per channel

    def __post_init__(self):
        self.codes = np.asarray(self.codes, np.int64)
        self.steps = np.asarray(self.steps, np.float64).reshape(-1)
        for name in ("bias", "batchnorm_factor", "batchnorm_offset"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, np.float64).reshape(-1))

    def _view(self):
        shape = [1] * self.codes.ndim
        shape[self.channel_axis] = -1
        return shape

    def stored(self, factor=None, offset=None):
        """`(codes, scales, bias)` of the kernel followed by `x · factor + offset` per channel
        (None: nothing folded). Scales stay positive: a negative factor negates the channel's
        codes; a zero factor leaves the channel all-zero codes."""
        codes, scales, bias = self.codes, self.steps, self.bias
        if factor is None:
            return codes, scales, bias
        view = self._view()
        dead = np.abs(factor) < 1e-30
        sign = np.where(factor < 0, -1, 1)
        codes = np.where(dead.reshape(view), 0, codes * sign.reshape(view))
        scales = np.where(dead, scales, scales * np.abs(factor))
        offset = np.zeros_like(factor) if offset is None else offset
        bias = offset + (0.0 if bias is None else bias * factor)
        return codes, scales, bias

    def folded(self):
        """`stored` with the following BatchNormalization folded in (if there is one)."""
        return self.stored(self.batchnorm_factor, self.batchnorm_offset)

    def values(self, factor=None):
        """The float kernel that the codes and scales stand for (TFLite layout)."""
        codes, scales, _ = self.stored(factor)
        return codes * scales.reshape(self._view())

    def get_config(self):
        def listed(value):
            return None if value is None else np.asarray(value).tolist()

        return {
            "layer": self.layer,
            "keras_layer": self.keras_layer,
            "codes": listed(self.codes),
            "steps": listed(self.steps),
            "bias": listed(self.bias),
            "bits": self.bits,
            "levels": self.levels,
            "channel_axis": self.channel_axis,
            "batchnorm": self.batchnorm,
            "batchnorm_factor": listed(self.batchnorm_factor),
            "batchnorm_offset": listed(self.batchnorm_offset),
        }


def layer_kind(layer):
    """How TFLite stores `layer`'s quantized weight: "depthwise", "transposed"
    (Conv2DTranspose), "table" (Embedding), or "kernel" (Conv1D, Conv2D, Dense)."""
    layer = _inner(layer)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return "transposed"
    if isinstance(layer, keras.layers.Embedding):
        return "table"
    return "kernel"


def tflite_layout(kernel, kind):
    """Keras kernel -> the layout TFLite stores it in (output channel first, depthwise last).

    `kind` is `layer_kind(layer)` (True / False: depthwise or not, the older form).

    >>> tflite_layout(np.zeros((3, 2, 5)), "kernel").shape  # Conv1D: CONV_2D [out, 1, k, in]
    (5, 1, 3, 2)
    >>> tflite_layout(np.zeros((3, 3, 5, 2)), "transposed").shape  # TRANSPOSE_CONV [out, h, w, in]
    (5, 3, 3, 2)
    """
    if kind is True or kind == "depthwise":  # [h, w, in, mult] -> [1, h, w, in*mult]
        h, w = kernel.shape[:2]
        return kernel.reshape(1, h, w, -1)
    if kind == "table":  # Embedding [vocab, dim]: GATHER's params as they are
        return kernel
    if kind == "transposed":  # Conv2DTranspose [h, w, out, in] -> [out, h, w, in]
        return kernel.transpose(2, 0, 1, 3)
    if kernel.ndim == 4:  # Conv2D [h, w, in, out] -> [out, h, w, in]
        return kernel.transpose(3, 0, 1, 2)
    if kernel.ndim == 3:  # Conv1D [k, in, out] -> CONV_2D [out, 1, k, in]
        return kernel.transpose(2, 0, 1)[:, None]
    return kernel.T  # Dense [in, out] -> [out, in]


def _inner(layer):
    return getattr(layer, "layer", layer)


def batchnorm_affine(batchnorm):
    """`(factor, offset)` per channel of an inference-mode BatchNormalization:
    y = x · factor + offset, factor = γ / sqrt(var + ε), offset = β − μ · factor."""
    variance = np.asarray(batchnorm.moving_variance.numpy(), np.float64)
    mean = np.asarray(batchnorm.moving_mean.numpy(), np.float64)
    factor = 1.0 / np.sqrt(variance + batchnorm.epsilon)
    if batchnorm.scale:
        factor = factor * np.asarray(batchnorm.gamma.numpy(), np.float64)
    offset = -mean * factor
    if batchnorm.center:
        offset = offset + np.asarray(batchnorm.beta.numpy(), np.float64)
    return factor, offset


def _bits(quantizer, kernel, quantizer_vars, int4, kind):
    # TRANSPOSE_CONV and GATHER are given int8 filters only (their INT4 support is untested).
    if int4 and kind not in INT8_ONLY and quantizer.export_exact(kernel, quantizer_vars, bits=4):
        return 4
    return 8


#: Layer kinds (`layer_kind`) stored as int8 even when `int4` asks for INT4.
INT8_ONLY = ("transposed", "table")


def exact_kernels(qmodel, int4=False, fold=True):
    """The `ExactKernel` of every tfquant-quantized kernel of `qmodel` (a QAT model).

    Args:
      qmodel: a model from `tfq.quantize_model`.
      int4: kernels whose codebook lies on a 4-bit grid get 4-bit codes (|code| <= 7).
      fold: fold a BatchNormalization that directly follows the layer.

    Returns:
      `(kernels, not_int4)`: the list, and the names of layers that `int4` could not store
      in 4 bits (their codebook is not on a 4-bit grid, or they are a Conv2DTranspose or an
      Embedding, which are stored as int8).
    """
    kernels, not_int4 = [], []
    consumers_of = consumers(qmodel) if fold else {}
    for wrapper, weight, quantizer, quantizer_vars in quantized_weights(qmodel):
        if not isinstance(quantizer, TfquantQuantizer):
            continue
        hard = quantizer.hard_quantize(weight, quantizer_vars)
        kind = layer_kind(wrapper)
        bits = _bits(quantizer, weight, quantizer_vars, int4, kind)
        if int4 and bits == 8:
            not_int4.append(wrapper.name)
        step = np.asarray(
            safe_step(quantizer.grid_step(weight, quantizer_vars, export_codes(bits))),
            np.float64,
        )
        hard = tflite_layout(np.asarray(hard, np.float64), kind)
        axis = hard.ndim - 1 if kind == "depthwise" else 0
        channels = hard.shape[axis]
        steps = np.broadcast_to(step.reshape(-1), (channels,)).astype(np.float64)
        view = [1] * hard.ndim
        view[axis] = -1
        codes = np.round(hard / steps.reshape(view)).astype(np.int64)
        inner = _inner(wrapper)
        bias = None
        if getattr(inner, "use_bias", False) and getattr(inner, "bias", None) is not None:
            bias = np.asarray(inner.bias.numpy(), np.float64).reshape(-1)
        batchnorm = following_batchnorm(wrapper, consumers_of) if fold and kind != "table" else None
        factor, offset = batchnorm_affine(batchnorm) if batchnorm is not None else (None, None)
        kernels.append(
            ExactKernel(
                layer=wrapper.name,
                keras_layer=inner.name,
                codes=codes,
                steps=steps,
                bias=bias,
                bits=bits,
                levels=int(quantizer.levels),
                channel_axis=axis,
                batchnorm=None if batchnorm is None else batchnorm.name,
                batchnorm_factor=factor,
                batchnorm_offset=offset,
            )
        )
    return kernels, not_int4
