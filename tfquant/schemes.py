"""Quantization schemes: tfmot `QuantizeScheme`s whose registry puts a tfquant quantizer on
every Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D, Dense and Embedding weight (a
SeparableConv2D is first split into DepthwiseConv2D + Conv2D by tfmot's layout transform) and
leaves every other layer (BatchNorm patterns, Add, pooling, ...) to tfmot's default 8-bit
registry and layout transforms.
"""

import tensorflow_model_optimization as tfmot

from tfquant._keras import (
    inbound_edges,
    keras,
    output_layer_names,
    quantize_layer,
    tfmot_layout_transforms,
)
from tfquant.configs.layer import (
    LayerQuantizeConfig,
    OutputQuantizeConfig,
    SeparableQuantizeConfig,
    supported_weight_attribute,
)
from tfquant.quantizers import (
    LearnedBasisActivationQuantizer,
    LearnedBasisQuantizer,
    MultivaluedQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
)
from tfquant.quantizers.base import check_bool, check_int

_default_8bit = tfmot.quantization.keras.default_8bit
_transforms, _ModelTransformer = tfmot_layout_transforms()
_NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6")


def _is_relu_layer(layer):
    """A ReLU layer computing max(x, 0) or min(max(x, 0), 6), or an Activation relu/relu6."""
    if type(layer) is keras.layers.Activation:
        return keras.activations.serialize(layer.activation) in _NON_NEGATIVE_ACTIVATIONS
    if type(layer) is not keras.layers.ReLU:
        return False
    config = layer.get_config()
    return (
        config.get("max_value") in (None, 6.0)
        and not config.get("negative_slope")
        and not config.get("threshold")
    )


class Scheme(tfmot.quantization.keras.QuantizeScheme):
    """Base class of tfquant schemes; use `Multivalued`, `Ternary`, `LearnedBasis`, `Uniform`.

    Args:
      keep_first_last_8bit: quantize the first and last quantized layer of the model with
        8-bit uniform weights instead (the LQ-Nets / TWN convention); on a model with at most
        two quantized layers that is all of them, and `quantize_model` warns.
    """

    #: Export granularity of the weight quantizers (and of the 8-bit first/last layers).
    per_channel = False

    def __init__(self, keep_first_last_8bit=False):
        self.keep_first_last_8bit = check_bool("keep_first_last_8bit", keep_first_last_8bit)

    def weight_quantizer(self):
        """A new weight quantizer for one layer."""
        raise NotImplementedError

    def weight_quantizer_for(self, layer):
        """A new weight quantizer for `layer`; schemes with per-layer settings override it."""
        del layer
        return self.weight_quantizer()

    def activation_quantizer(self, layer):
        """The activation quantizer for `layer`, or None for tfmot's 8-bit one."""
        del layer
        return None

    def output_quantizer(self, layer):
        """The quantizer for the output of a weightless layer (a standalone ReLU), or None
        for tfmot's 8-bit handling."""
        del layer
        return None

    def quantizes(self, layer):
        """True if this scheme puts its quantizer on `layer`'s weight: a layer type tfquant
        supports, except an Embedding under a per-channel scheme (TFLite's GATHER carries one
        scale for the whole table, so per-channel codes cannot be stored exactly)."""
        if supported_weight_attribute(layer) is None:
            return False
        return not (self.per_channel and isinstance(layer, keras.layers.Embedding))

    def config_for(self, layer, eight_bit=False):
        """The `LayerQuantizeConfig` this scheme gives `layer` (a supported layer); for a
        SeparableConv2D, the `SeparableQuantizeConfig` of its two parts."""
        if type(layer) is keras.layers.SeparableConv2D:
            depthwise, pointwise = separable_parts(layer.name)
            return SeparableQuantizeConfig(
                self.config_for(keras.layers.DepthwiseConv2D(1, name=depthwise), eight_bit),
                self.config_for(
                    keras.layers.Conv2D(1, 1, activation=layer.activation, name=pointwise),
                    eight_bit,
                ),
            )
        attribute = supported_weight_attribute(layer)
        if eight_bit:
            return LayerQuantizeConfig(attribute, UniformQuantizer(8, self.per_channel))
        return LayerQuantizeConfig(
            attribute, self.weight_quantizer_for(layer), self.activation_quantizer(layer)
        )

    def get_layout_transformer(self):
        return _LayoutTransform()

    def get_quantize_registry(self):
        return _Registry(self, eight_bit_layers=())

    def get_config(self):
        return {"keep_first_last_8bit": self.keep_first_last_8bit}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _Registry(_default_8bit.Default8BitQuantizeRegistry):
    """tfmot's 8-bit registry with tfquant configs for the layers `Scheme.quantizes` accepts."""

    def __init__(self, scheme, eight_bit_layers):
        super().__init__(disable_per_axis=not scheme.per_channel)
        self._scheme = scheme
        self._eight_bit_layers = frozenset(eight_bit_layers)

    def supports(self, layer):
        return self._scheme.quantizes(layer) or super().supports(layer)

    def get_quantize_config(self, layer):
        if self._scheme.quantizes(layer):
            return self._scheme.config_for(layer, layer.name in self._eight_bit_layers)
        return super().get_quantize_config(layer)


def separable_parts(name):
    """The names of the DepthwiseConv2D and 1x1 Conv2D a SeparableConv2D `name` becomes."""
    return f"{name}_depthwise", f"{name}_pointwise"


class _NamedSeparableConvQuantize(_transforms.SeparableConvQuantize):
    """tfmot's SeparableConv2D -> DepthwiseConv2D + Conv2D split, with the two new layers
    named after the original (`separable_parts`) instead of fresh global names, so summaries,
    exports and `Multivalued(layers=...)` can refer to them."""

    def replacement(self, match_layer):
        config = match_layer.metadata.get("quantize_config")
        if isinstance(config, SeparableQuantizeConfig):  # from tfq.quantize_annotate_layer
            match_layer.metadata["quantize_config"] = None
        elif config is not None:
            return match_layer
        result = super().replacement(match_layer)
        depthwise, pointwise = separable_parts(match_layer.layer["config"]["name"])
        result.layer["name"] = result.layer["config"]["name"] = pointwise
        source = result.input_layers[0]
        source.layer["name"] = source.layer["config"]["name"] = depthwise
        if isinstance(config, SeparableQuantizeConfig):
            match_layer.metadata["quantize_config"] = config
            result.metadata["quantize_config"] = config.pointwise
            source.metadata["quantize_config"] = config.depthwise
        return result


class _FloatInputLayerQuantize(_transforms.InputLayerQuantize):
    """tfmot's fake quantization after each model input, for float inputs only: integer
    inputs (token ids feeding an Embedding) pass unchanged, as they do in TFLite."""

    def replacement(self, match_layer):
        dtype = match_layer.layer["config"].get("dtype") or "float32"
        if not str(dtype).startswith(("float", "bfloat")):
            return match_layer
        return super().replacement(match_layer)


class _LayoutTransform(_default_8bit.Default8BitQuantizeLayoutTransform):
    """tfmot's default 8-bit layout transforms, with `_NamedSeparableConvQuantize` and
    `_FloatInputLayerQuantize` in place of tfmot's own two."""

    def apply(self, model, layer_quantize_map):
        transforms = [
            _FloatInputLayerQuantize(),
            _transforms.SeparableConv1DQuantize(),
            _NamedSeparableConvQuantize(),
            _transforms.Conv2DReshapeBatchNormReLUQuantize(),
            _transforms.Conv2DReshapeBatchNormActivationQuantize(),
            _transforms.Conv2DBatchNormReLUQuantize(),
            _transforms.Conv2DBatchNormActivationQuantize(),
            _transforms.Conv2DReshapeBatchNormQuantize(),
            _transforms.Conv2DBatchNormQuantize(),
            _transforms.ConcatTransform6Inputs(),
            _transforms.ConcatTransform5Inputs(),
            _transforms.ConcatTransform4Inputs(),
            _transforms.ConcatTransform3Inputs(),
            _transforms.ConcatTransform(),
            _transforms.DenseBatchNormQuantize(),
            _transforms.DenseBatchNormReLUQuantize(),
            _transforms.DenseBatchNormActivationQuantize(),
            _transforms.LayerReLUQuantize(),
            _transforms.LayerReluActivationQuantize(),
        ]
        return _ModelTransformer(
            model, transforms, set(layer_quantize_map.keys()), layer_quantize_map
        ).transform()


class BoundScheme(tfmot.quantization.keras.QuantizeScheme):
    """A scheme applied to one model: knows which layers are kept at 8 bits."""

    def __init__(self, scheme, eight_bit_layers):
        self.scheme = scheme
        self.eight_bit_layers = tuple(eight_bit_layers)

    def get_layout_transformer(self):
        return _OutputLayout(self.scheme, self.eight_bit_layers)

    def get_quantize_registry(self):
        return _Registry(self.scheme, self.eight_bit_layers)


#: Layers whose output holds only values of their input (and zeros): K-bit levels pass
#: through them unchanged, so a K-bit ReLU output read through them is still K-bit.
_LEVEL_PRESERVING = tuple(
    getattr(keras.layers, name)
    for name in (
        "Flatten",
        "Reshape",
        "Permute",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
    )
)


class _OutputLayout(tfmot.quantization.keras.QuantizeLayoutTransform):
    """The scheme's layout transform, then the scheme's output quantizer (`output_quantizer`,
    K-bit activations) where a layer the scheme quantizes reads a standalone ReLU.

    The K bits go where the quantized weight layers read (LQ-Nets quantizes the inputs of
    its quantized convolutions), never onto a residual stream: a ReLU read only by such
    layers (directly or through level-preserving layers: pooling by max, flatten, reshape,
    padding, dropout) gets the quantizer on its output; a ReLU also read by anything else
    (a residual Add, a Concatenate, an average pooling, a model output, a layer kept at 8
    bits) keeps tfmot's 8-bit quantizer, and each quantized weight layer that reads it gets a
    K-bit `QuantizeLayer` of its own on that input. A ReLU that no quantized weight layer
    reads stays 8-bit.
    """

    def __init__(self, scheme, eight_bit_layers=()):
        self.scheme = scheme
        self.eight_bit_layers = tuple(eight_bit_layers)

    def apply(self, model, layer_quantize_map):
        model, layer_quantize_map = self.scheme.get_layout_transformer().apply(
            model, layer_quantize_map
        )
        readers = {}
        for reader, source, node_index, tensor_index in inbound_edges(model):
            readers.setdefault(source, []).append((reader, node_index, tensor_index))
        outputs = output_layer_names(model)
        edges = []
        for layer in model.layers:
            quantizer = self.scheme.output_quantizer(layer)
            if quantizer is None:
                continue
            weight_edges, other = self._reads(
                model, layer.name, readers, outputs, layer_quantize_map
            )
            if not weight_edges:
                continue
            if not other:
                entry = layer_quantize_map.setdefault(layer.name, {})
                entry["quantize_config"] = OutputQuantizeConfig(quantizer)
            else:  # one quantizer (one learned basis) per inserted input
                edges += [(edge, self.scheme.output_quantizer(layer)) for edge in weight_edges]
        if edges:
            model = _with_input_quantizers(model, edges)
        return model, layer_quantize_map

    def _reads(self, model, name, readers, outputs, layer_quantize_map):
        """`(edges, other)`: the edges `(producer, node index, tensor index, reader)` by which
        quantized weight layers read layer `name`'s output (through level-preserving layers),
        numbered as in the model's config, and whether anything else reads it (another layer
        or the model's outputs). `readers`: source name -> its `(reader, node index, tensor
        index)`, from the model's own config, so a layer shared with another model is seen
        with this model's readers only."""
        edges, other = [], name in outputs
        for reader_name, node_index, tensor_index in readers.get(name, []):
            reader = model.get_layer(reader_name)
            if isinstance(reader, _LEVEL_PRESERVING):
                more, reader_other = self._reads(
                    model, reader_name, readers, outputs, layer_quantize_map
                )
                edges += more
                other = other or reader_other
            elif self._quantized_reader(reader, layer_quantize_map):
                edges.append((name, node_index, tensor_index, reader_name))
            else:
                other = True
        return edges, other

    def _quantized_reader(self, layer, layer_quantize_map):
        return (
            supported_weight_attribute(layer) is not None
            and not isinstance(layer, keras.layers.Embedding)
            and layer.name in layer_quantize_map
            and layer.name not in self.eight_bit_layers
        )


def _with_input_quantizers(model, edges):
    """A copy of the functional `model` (same layers' weights) with a tfmot `QuantizeLayer`
    holding `quantizer` on each edge `(producer, node index, tensor index, reader)`."""
    config = model.get_config()
    entries = config["layers"]
    taken = {entry["name"] for entry in entries}
    for (source, node_index, tensor_index, reader), quantizer in edges:
        name, count = f"{reader}_input_quantize", 1
        while name in taken:
            name, count = f"{reader}_input_quantize_{count}", count + 1
        taken.add(name)
        inserted = keras.layers.serialize(quantize_layer(quantizer, name))
        inserted.update(name=name, inbound_nodes=[[[source, node_index, tensor_index, {}]]])
        position = next(i for i, entry in enumerate(entries) if entry["name"] == reader)
        entries[position]["inbound_nodes"] = [
            [
                [name, 0, 0, *argument[3:]]
                if list(argument[:3]) == [source, node_index, tensor_index]
                else argument
                for argument in node
            ]
            for node in entries[position]["inbound_nodes"]
        ]
        entries.insert(position, inserted)
    with tfmot.quantization.keras.quantize_scope():
        copy = keras.Model.from_config(config)
    for layer in model.layers:
        copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


_LAYER_OPTIONS = (
    "bits",
    "levels",
    "division",
    "mode",
    "entropy_weight",
    "sparsity",
    "int4_grid",
)


class Multivalued(Scheme):
    """Multivalued (codebook) weights: 2**bits centers per layer (MVQ / MPA).

    Args:
      bits: codebook size 2**bits, in [1, 8].
      levels: explicit codebook size in [2, 256]; overrides `bits`.
      division: "kmeans", "linear", "exponential", "hessian_kmeans" (pass `importance` to
        `quantize_model`) or "ecsq" (entropy-constrained, rate weight `entropy_weight`).
      mode: "auto" (the default: every weight snaps, as "snap", until a schedule of
        `tfq.callbacks` starts on the model and turns the layer "masked"), "snap" (naive: all
        weights snap from the first step; schedules refuse it) or "masked" (a schedule
        freezes weights gradually; until one runs the weights are float).
      keep_first_last_8bit: see `Scheme` (it wins over `layers` for those two layers).
      entropy_weight: λ of the "ecsq" division, in units of each layer's weight variance.
      sparsity: fraction of each layer's weights in a zero interval that quantizes to exactly
        0 (magnitude pruning inside the codebook), in [0, 1); see `MultivaluedQuantizer`.
      layers: per-layer settings, a dict layer name -> dict of any of "bits", "levels",
        "division", "mode", "entropy_weight", "sparsity", "int4_grid" that replace the
        scheme's values for that layer (what `tfq.allocate_bits` produces). Layers not named
        use the scheme's.
      int4_grid: keep every layer's centers on its 4-bit grid (codes -7..7, at most 15
        levels, so bits <= 3) during training, so that `tfq.export.to_tflite(..., int4=True)`
        stores the kernels exactly as INT4 (half the int8 file); see `MultivaluedQuantizer`.

    Example:
      >>> scheme = Multivalued(bits=3, division="linear")
      >>> Multivalued.from_config(scheme.get_config()) == scheme
      True
      >>> pruned = Multivalued(bits=3, sparsity=0.9, layers={"fc2": {"levels": 5,
      ...                                                           "sparsity": 0.5}})
      >>> Multivalued.from_config(pruned.get_config()) == pruned
      True
      >>> four_bit = Multivalued(bits=3, int4_grid=True)  # INT4-exact codebooks
      >>> Multivalued.from_config(four_bit.get_config()) == four_bit
      True
    """

    def __init__(
        self,
        bits=3,
        levels=None,
        division="kmeans",
        mode="auto",
        keep_first_last_8bit=False,
        entropy_weight=0.1,
        sparsity=0.0,
        layers=None,
        int4_grid=False,
    ):
        super().__init__(keep_first_last_8bit)
        self._template = MultivaluedQuantizer(
            bits, levels, division, mode, entropy_weight, sparsity, int4_grid
        )
        self.layers = _check_layers(layers, self._template.get_config())

    def weight_quantizer(self):
        return MultivaluedQuantizer.from_config(self._template.get_config())

    def weight_quantizer_for(self, layer):
        override = self.layers.get(layer.name)
        if override is None:
            return self.weight_quantizer()
        return MultivaluedQuantizer.from_config(_merged(self._template.get_config(), override))

    def get_config(self):
        layers = {name: dict(options) for name, options in self.layers.items()} or None
        return {**self._template.get_config(), **super().get_config(), "layers": layers}

    def __hash__(self):
        return hash((type(self).__name__, self._template.get_config()["bits"], len(self.layers)))


def _merged(config, override):
    """The quantizer config with `override` applied; "bits" alone drops the scheme's levels."""
    merged = {**config, **override}
    if "bits" in override and "levels" not in override:
        merged["levels"] = None
    return merged


def _check_layers(layers, config):
    """Validates `Multivalued(layers=...)`: each entry must make a valid quantizer."""
    if layers is None:
        return {}
    if not isinstance(layers, dict):
        raise TypeError(
            "layers must be a dict of layer name -> dict of quantizer settings. Received: "
            f"layers of type {type(layers).__name__}"
        )
    checked = {}
    for name, options in layers.items():
        if not isinstance(name, str) or not isinstance(options, dict):
            raise TypeError(
                "layers must map layer names (str) to dicts of quantizer settings. Received: "
                f"layers[{name!r}]={options!r}"
            )
        unknown = sorted(set(options) - set(_LAYER_OPTIONS))
        if unknown:
            raise ValueError(
                f"layers[{name!r}] may set {', '.join(_LAYER_OPTIONS)}. Received: {unknown}"
            )
        try:
            quantizer = MultivaluedQuantizer.from_config(_merged(config, options))
        except (TypeError, ValueError) as error:
            raise type(error)(f"layers[{name!r}]: {error}") from None
        canonical = quantizer.get_config()
        checked[name] = {key: canonical[key] for key in options}
        if "bits" in options and "levels" not in options:
            checked[name]["levels"] = None
    return checked


class Ternary(Scheme):
    """Ternary weights {-a, 0, +b}: TWN or TTQ, per layer or per output channel.

    Example:
      >>> scheme = Ternary(method="ttq")
      >>> Ternary.from_config(scheme.get_config()) == scheme
      True
    """

    def __init__(self, method="twn", per_channel=False, threshold=None, keep_first_last_8bit=False):
        super().__init__(keep_first_last_8bit)
        self._template = TernaryQuantizer(method, per_channel, threshold)
        self.per_channel = self._template.per_channel

    def weight_quantizer(self):
        return TernaryQuantizer.from_config(self._template.get_config())

    def get_config(self):
        return {**self._template.get_config(), **super().get_config()}


class LearnedBasis(Scheme):
    """LQ-Nets: learned K-bit bases for weights (per channel) and activations (per layer).

    Activations are quantized with a learned basis where a quantized layer reads a ReLU (or
    ReLU6): a layer's own `activation=`, or a standalone ReLU layer whose output only
    quantized layers read. A ReLU also read by a residual Add (a model output, an 8-bit layer)
    keeps 8 bits and each quantized layer reading it gets a K-bit input of its own (see
    `_OutputLayout`). Other activations keep tfmot's 8-bit quantizer.

    Args:
      weight_bits: K for weights, in [1, 4].
      activation_bits: K for activations in [1, 8], or None for 8-bit activations.
      keep_first_last_8bit: keep the first and last layer at 8 bits (LQ-Nets default: True).

    Example:
      >>> scheme = LearnedBasis(weight_bits=2, activation_bits=4)
      >>> LearnedBasis.from_config(scheme.get_config()) == scheme
      True
    """

    per_channel = True

    def __init__(self, weight_bits=2, activation_bits=2, keep_first_last_8bit=True):
        super().__init__(keep_first_last_8bit)
        self.weight_bits = check_int("weight_bits", weight_bits, 1, 4)
        self.activation_bits = (
            None if activation_bits is None else check_int("activation_bits", activation_bits, 1, 8)
        )

    def weight_quantizer(self):
        return LearnedBasisQuantizer(self.weight_bits, per_channel=True)

    def activation_quantizer(self, layer):
        activation = keras.activations.serialize(layer.activation)
        if self.activation_bits is None or activation not in _NON_NEGATIVE_ACTIVATIONS:
            return None
        return LearnedBasisActivationQuantizer(self.activation_bits)

    def output_quantizer(self, layer):
        """K-bit activations after a standalone ReLU (max value None or 6, no slope or
        threshold) or an Activation("relu" / "relu6") layer as well."""
        if self.activation_bits is None or not _is_relu_layer(layer):
            return None
        return LearnedBasisActivationQuantizer(self.activation_bits)

    def get_config(self):
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            **super().get_config(),
        }


class Uniform(Scheme):
    """Symmetric uniform b-bit weights (the tfmot-style baseline, at 2-8 bits).

    Example:
      >>> scheme = Uniform(bits=4, per_channel=False)
      >>> Uniform.from_config(scheme.get_config()) == scheme
      True
    """

    def __init__(self, bits=8, per_channel=True, keep_first_last_8bit=False):
        super().__init__(keep_first_last_8bit)
        self._template = UniformQuantizer(bits, per_channel)
        self.per_channel = self._template.per_channel

    def weight_quantizer(self):
        return UniformQuantizer.from_config(self._template.get_config())

    def get_config(self):
        return {**self._template.get_config(), **super().get_config()}


__all__ = ["Scheme", "Multivalued", "Ternary", "LearnedBasis", "Uniform"]
