"""Writes a compressed-model container with an older tfquant, for tests/fixtures/containers/.

    git archive <commit> tfquant | tar -x -C /tmp/old_<commit>
    .venv/bin/python tests/scripts/write_old_container.py /tmp/old_<commit> NAME CODER SCHEME OUT

puts that checkout's `tfquant` first on sys.path, quantizes `tiny_model()` (fixed random
weights) with `SCHEMES[SCHEME]`, compresses it with CODER ("huffman" or "ans") and writes
OUT/NAME.tfqc (the container) and OUT/NAME.npz (what each variable held: the hard-quantized
values for the quantized kernels, the value for the others, keyed by `variable_key`). It checks
that the old tfquant reads its own container back to those values first.
"""

import pathlib
import re
import sys

import numpy as np

SCHEMES = {"plain": {"bits": 3}, "sparse": {"bits": 2, "sparsity": 0.65}}


def tiny_model(keras):
    """Conv(4) -> Dense(16) -> Dense(3) on (4, 4, 1) inputs: 308 kernel weights."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            layers.Conv2D(4, 3, name="conv"),
            layers.Flatten(name="flatten"),
            layers.Dense(16, name="fc"),
            layers.Dense(3, name="logits"),
        ],
        name="tiny",
    )


def variable_key(variable):
    """The variable's name without Keras' per-process suffix of the input quantize layer."""
    return re.sub(r"quantize_layer_\d+", "quantize_layer", variable.name)


def main(checkout, name, coder, scheme_name, out):
    sys.path.insert(0, checkout)
    import tfquant as tfq
    from tfquant._keras import quantized_weights

    assert tfq.__file__.startswith(checkout), tfq.__file__
    model = tiny_model(tfq.keras)
    rng = np.random.default_rng(2026)
    weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()]
    weights[2][:10] *= 1e-3  # fc inputs 0-9 nearly dead: pruned whole rows under "sparse"
    model.set_weights(weights)
    scheme = tfq.schemes.Multivalued(**SCHEMES[scheme_name])
    qmodel = tfq.quantize_model(model, scheme)
    blob = tfq.coding.compress(qmodel, coder=coder)
    data = blob.to_bytes()
    hard = {w.ref(): np.asarray(q.hard_quantize(w, s)) for _, w, q, s in quantized_weights(qmodel)}
    expected = {variable_key(w): hard.get(w.ref(), w.numpy()) for w in qmodel.weights}
    target = tfq.coding.decompress(data, tfq.quantize_model(tiny_model(tfq.keras), scheme))
    for w in target.weights:
        np.testing.assert_array_equal(w.numpy(), expected[variable_key(w)], variable_key(w))
    out = pathlib.Path(out)
    (out / f"{name}.tfqc").write_bytes(data)
    np.savez_compressed(out / f"{name}.npz", **expected)
    version = int.from_bytes(data[8:10], "little")
    print(name, f"version {version}, {len(data)} bytes,", [(x.name, x.coder) for x in blob.layers])


if __name__ == "__main__":
    main(*sys.argv[1:])
