"""Every public quantizer, config and scheme round-trips through get_config / from_config and
through Keras (de)serialization; new public classes must be added to PUBLIC. The docstring
examples of every public class run as doctests."""

import doctest
import inspect
import io
import sys

import pytest

import tfquant as tfq
from tfquant import configs, quantizers, regularizers, schemes

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
    configs.SeparableQuantizeConfig(
        configs.LayerQuantizeConfig("depthwise_kernel", quantizers.MultivaluedQuantizer(bits=2)),
        configs.LayerQuantizeConfig("kernel", quantizers.UniformQuantizer(4)),
    ),
    schemes.Multivalued(bits=2, division="linear", keep_first_last_8bit=True),
    schemes.Ternary(method="ttq", per_channel=True),
    schemes.LearnedBasis(weight_bits=3, activation_bits=None),
    schemes.Uniform(bits=5),
    regularizers.GroupLasso(strength=3e-4, channel_axis=-2),
    regularizers.GroupLasso(depthwise=True),
]


def _public_classes():
    found = set()
    for module in (quantizers, configs, schemes, regularizers):
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


def _documented_classes():
    """Every public class of tfquant's public modules -> must its docstring have an example
    that runs? Quantizers, configs, schemes and callbacks must (STYLE.md); the others (result
    records, errors) need not, but an example they have must work."""
    import tfquant.export as export

    classes = {}
    for module in (tfq, quantizers, configs, schemes, tfq.callbacks, tfq.coding, export):
        for name in module.__all__:
            cls = getattr(module, name)
            if inspect.isclass(cls) and cls.__module__.startswith("tfquant"):
                classes[cls] = False
    for cls in _public_classes() | {getattr(tfq.callbacks, n) for n in tfq.callbacks.__all__}:
        classes[cls] = inspect.isclass(cls)
    ordered = sorted(classes.items(), key=lambda item: (item[0].__module__, item[0].__name__))
    return [pytest.param(cls, required, id=cls.__name__) for cls, required in ordered]


@pytest.mark.parametrize(("cls", "required"), _documented_classes())
def test_public_class_docstring_example_runs(cls, required):
    """Runs the class docstring's examples as doctests, in the defining module's namespace
    (as `pytest --doctest-modules` does): none may fail, and where required at least one must
    run (a `+SKIP` one does not count)."""
    module = sys.modules[cls.__module__]
    tests = doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, module, module.__dict__)
    runnable = [e for t in tests for e in t.examples if not e.options.get(doctest.SKIP)]
    assert runnable or not required, f"{cls.__name__}'s docstring has no example that runs"
    output = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        test.globs = dict(module.__dict__)  # the examples must not change the module
        runner.run(test, out=output.write)
    assert runner.summarize(verbose=False).failed == 0, output.getvalue()
