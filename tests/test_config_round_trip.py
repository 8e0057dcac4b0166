"""Every public quantizer, config and scheme round-trips through get_config / from_config and
through Keras (de)serialization; new public classes must be added to PUBLIC."""

import inspect

import pytest

import tfquant as tfq
from tfquant import configs, quantizers, schemes

keras = tfq.keras

PUBLIC = [
    quantizers.MultivaluedQuantizer(bits=4, division="exponential", mode="masked"),
    quantizers.MultivaluedQuantizer(levels=5),
    quantizers.TernaryQuantizer("ttq", per_channel=True, threshold=0.1),
    quantizers.UniformQuantizer(bits=3, per_channel=False),
    quantizers.LearnedBasisQuantizer(bits=3, momentum=0.8),
    quantizers.LearnedBasisActivationQuantizer(bits=4),
    configs.LayerQuantizeConfig("kernel", quantizers.TernaryQuantizer()),
    configs.LayerQuantizeConfig(
        "depthwise_kernel",
        quantizers.UniformQuantizer(4),
        quantizers.LearnedBasisActivationQuantizer(2),
    ),
    schemes.Multivalued(bits=2, division="linear", keep_first_last_8bit=True),
    schemes.Ternary(method="ttq", per_channel=True),
    schemes.LearnedBasis(weight_bits=3, activation_bits=None),
    schemes.Uniform(bits=5),
]


def _public_classes():
    found = set()
    for module in (quantizers, configs, schemes):
        for name in module.__all__:
            cls = getattr(module, name)
            if inspect.isclass(cls) and not name.startswith(("Tfquant", "Scheme")):
                found.add(cls)
    return found


def test_every_public_class_is_covered():
    assert _public_classes() <= {type(obj) for obj in PUBLIC}


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: type(o).__name__)
def test_config_round_trip(obj):
    clone = type(obj).from_config(obj.get_config())
    assert clone == obj
    assert clone.get_config() == obj.get_config()


@pytest.mark.parametrize(
    "obj", [o for o in PUBLIC if not isinstance(o, schemes.Scheme)], ids=lambda o: type(o).__name__
)
def test_keras_serialization_round_trip(obj):
    serialized = keras.utils.serialize_keras_object(obj)
    assert serialized["registered_name"] == f"tfquant>{type(obj).__name__}"
    assert keras.utils.deserialize_keras_object(serialized) == obj


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: type(o).__name__)
def test_public_class_has_docstring_example(obj):
    assert ">>>" in (type(obj).__doc__ or "")
