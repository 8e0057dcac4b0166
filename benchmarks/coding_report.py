"""`tfq.coding.report` on the digits CNN of the tests: bits per weight (entropy bound, Huffman,
ANS) per kernel and the container ratios, for 3-bit multivalued k-means and ternary (TWN)
codebooks without fine-tuning. Cheap (under a minute): it generates the README's example.

Run: python benchmarks/coding_report.py [--json benchmarks/results/coding_report.json]
"""

import argparse
import dataclasses
import json
import os

import tfquant as tfq
from tfquant.models import compile_classifier, datasets, digits_cnn

SCHEMES = {
    "Multivalued(bits=3)": lambda: tfq.schemes.Multivalued(bits=3),
    "Ternary()": lambda: tfq.schemes.Ternary(),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="float training epochs")
    parser.add_argument("--json", default="benchmarks/results/coding_report.json")
    args = parser.parse_args(argv)
    (x, y), _ = datasets.load("digits")
    float_model = compile_classifier(digits_cnn(seed=1))
    float_model.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0)
    out = {"args": vars(args), "schemes": {}}
    for name, scheme in SCHEMES.items():
        qmodel = tfq.quantize_model(float_model, scheme())
        print(f"digits CNN, {name} (no fine-tuning):")
        rows = tfq.coding.report(qmodel)
        total = sum(row.weights for row in rows)

        def mean(field, rows=rows, total=total):
            return sum(getattr(row, field) * row.weights for row in rows) / total

        means = {field: mean(field) for field in ("entropy_bits", "huffman_bits", "ans_bits")}
        print(
            f"all {total} kernel weights: entropy {means['entropy_bits']:.3f} bits/weight,"
            f" Huffman {means['huffman_bits']:.3f}, ANS {means['ans_bits']:.3f}"
        )
        print()
        out["schemes"][name] = {
            "layers": [dataclasses.asdict(row) for row in rows],
            "mean_bits": means,
        }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(out, stream, indent=2, default=float)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
