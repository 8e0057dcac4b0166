"""Train-step time of every tfquant quantizer vs float Keras and tfmot's 8-bit QAT, same run.

Network: LeNet-5 (Caffe variant of the papers: conv20-5x5, pool, conv50-5x5, pool, fc500,
fc10) on MNIST-shaped batches. Step time does not depend on pixel values, so the batches are
random (no dataset needed). Variants are timed in interleaved rounds (one epoch each per
round) and each gets the median over rounds, so machine noise hits all of them alike.

Run: python benchmarks/qat_overhead.py [--batch 128] [--steps 40] [--rounds 5] [--json out.json]
Targets: multivalued 3-bit and ternary TTQ <= 1.10x float (issue #19; tfmot 8-bit QAT measured
1.10x); the other quantizers <= 1.15x (issue #3); LQ-Nets <= 1.5x. The diagnostic row
"multivalued 3-bit, no search" is the multivalued model with its nearest-center search replaced
by the identity (the kernel passes unquantized): what the QAT wrapper, its variables and the
straight-through estimator cost without the quantizer's own arithmetic.
"""

import argparse
import json
import os
import platform
import time

import numpy as np

import tfquant as tfq  # first: pins tf.keras to Keras 2 before tfmot loads
import tfquant.quantizers.multivalued as multivalued_module
from tfquant._keras import keras, tf

# isort: split
import tensorflow_model_optimization as tfmot

TARGETS = {
    "tfmot 8-bit QAT": None,
    "multivalued 3-bit": 1.10,
    "ternary TTQ": 1.10,
    "multivalued 3-bit, no search": None,
    "LQ-Nets W2A2": 1.5,
}


def lenet5():
    layers = keras.layers
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(20, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(50, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(500, activation="relu"),
            layers.Dense(10),
        ],
        name="lenet5",
    )


VARIANTS = {
    "float Keras": None,
    "tfmot 8-bit QAT": "tfmot",
    "multivalued 3-bit": lambda: tfq.schemes.Multivalued(bits=3),
    "multivalued 3-bit, no search": "no_search",
    "multivalued 3-bit masked": lambda: tfq.schemes.Multivalued(bits=3, mode="masked"),
    "ternary TWN": lambda: tfq.schemes.Ternary(method="twn"),
    "ternary TTQ": lambda: tfq.schemes.Ternary(method="ttq"),
    "uniform 8-bit": lambda: tfq.schemes.Uniform(bits=8),
    "uniform 4-bit": lambda: tfq.schemes.Uniform(bits=4),
    "LQ-Nets W2A2": lambda: tfq.schemes.LearnedBasis(weight_bits=2, activation_bits=2),
}


def _no_search(values, levels):
    """The identity in place of `nearest_level` (diagnostic row only)."""
    del levels
    return values, tf.zeros_like(values, tf.int32)


def build(kind, base):
    if kind is None:
        model = keras.models.clone_model(base)
    elif kind == "tfmot":
        model = tfmot.quantization.keras.quantize_model(base)
    elif kind == "no_search":
        model = tfq.quantize_model(base, tfq.schemes.Multivalued(bits=3))
    else:
        model = tfq.quantize_model(base, kind())
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="train steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/results/qat_overhead.json")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch * args.steps, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.batch * args.steps)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).cache().repeat()
    base = lenet5()
    models = {name: build(kind, base) for name, kind in VARIANTS.items()}
    # Keras' own compiled train step (what model.fit runs), called directly so that fit's
    # callbacks and progress logic stay out of the timing.
    steps = {}
    for name, model in models.items():
        train_function, batches = model.make_train_function(), iter(data)
        search = multivalued_module.nearest_level
        if VARIANTS[name] == "no_search":  # traced with the identity in place of the search
            multivalued_module.nearest_level = _no_search
        try:
            for _ in range(3):  # trace and warm up
                train_function(batches)
        finally:
            multivalued_module.nearest_level = search
        steps[name] = (train_function, batches)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (train_function, batches) in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = train_function(batches)
            float(logs["loss"])  # wait for the last step
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)

    step = {name: float(np.median(t)) for name, t in times.items()}
    float_ms, tfmot_ms = step["float Keras"], step["tfmot 8-bit QAT"]
    rows = []
    for name in models:
        target = TARGETS.get(name, 1.15) if name != "float Keras" else None
        ratio = step[name] / float_ms
        rows.append(
            {
                "variant": name,
                "step_ms": step[name],
                "vs_float": ratio,
                "vs_tfmot": step[name] / tfmot_ms,
                "target_vs_float": target,
                "meets_target": None if target is None else bool(ratio <= target),
            }
        )
    header = f"{'variant':<28}{'ms/step':>9}{'x float':>9}{'x tfmot':>9}{'target':>8}"
    print(
        f"LeNet-5, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
        f"{os.cpu_count()} CPU cores, TF {tf.__version__}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        target = (
            ""
            if r["target_vs_float"] is None
            else (f"{'ok' if r['meets_target'] else 'MISS'} {r['target_vs_float']:.2f}")
        )
        print(
            f"{r['variant']:<28}{r['step_ms']:>9.2f}{r['vs_float']:>9.3f}{r['vs_tfmot']:>9.3f}"
            f"{target:>10}"
        )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(
            {
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "batch": args.batch,
                "steps": args.steps,
                "rounds": args.rounds,
                "rows": rows,
            },
            stream,
            indent=2,
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
