"""Runs every benchmark and regenerates the README's results section from what they printed,
so the README never carries a hand-typed figure.

Run: python benchmarks/run_all.py [--quick] [--only NAME ...] [--render-only]
  --quick        reduced settings (minutes instead of hours; the section says so)
  --only         run these benchmarks only (the others keep their last stored output)
  --render-only  rebuild the README section from the stored outputs without running anything
  --table-only   for benchmarks whose rows accumulate over several runs (cifar10), store the
                 table of the rows measured so far without training any

Each benchmark's table (its stdout) is stored in benchmarks/results/<name>.txt next to its
JSON; the README section between the `results:begin` / `results:end` markers is rebuilt from
those files, with the published figures of the papers we implement beside ours.
"""

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# name: (title, command after `python`, full arguments, quick arguments)
#: The LeNet compression settings run over 3 seeds (the issues' targets are means of 3 seeds).
_SEEDED_LENETS = [
    "--epochs",
    "24",
    "--model-epochs",
    "lenet300_100=48",
    "--cosine",
    "--ratios",
    "--schedule",
    "prune",
    "--no-tfmot",
    "--seeds",
    "0",
    "1",
    "2",
    "--png",
    "",
]
#: The quick LeNet-5 slice of the structured and allocation entries: 4,000 training and
#: 1,000 test images, one epoch.
_QUICK_SLICE = ["--limit", "4000", "--test-limit", "1000", "--epochs", "1"]
#: Quick settings of the structured LeNet-5 rows (after --models lenet5 --recipes NAME).
_QUICK_STRUCTURED = [
    *_QUICK_SLICE,
    "--ratios",
    "--schedule",
    "prune",
    "--no-tfmot",
    "--latency-rounds",
    "1",
    "--png",
    "",
]
#: Fractions of output channels allocate_bits may remove per layer.
_CHANNEL_FRACTIONS = ["0", "0.25", "0.5", "0.625", "0.75", "0.875"]
BENCHMARKS = {
    "demo": (
        "Demo: every scheme on sklearn digits (`make demo`)",
        ["-m", "tfquant.demo"],
        [],
        ["--epochs", "15", "--qat-epochs", "4"],
    ),
    "schedules": (
        "Schedules at 2 bits on LeNet-5 (Fashion-MNIST), 3 seeds",
        ["benchmarks/schedules.py"],
        [
            "--datasets",
            "fashion_mnist",
            "--bits",
            "2",
            "--methods",
            "naive",
            "MPA",
            "MPA+tune",
            "MPA+STE",
            "--learning-rate",
            "5e-4",
            "--seeds",
            "0",
            "1",
            "2",
        ],
        [
            "--datasets",
            "fashion_mnist",
            "--bits",
            "2",
            "--methods",
            "naive",
            "MPA",
            "--epochs",
            "2",
            "--float-epochs",
            "2",
        ],
    ),
    "schedules_3bit": (
        "Schedules at 3 bits and ternary on LeNet-5 (MNIST, Fashion-MNIST), one seed",
        ["benchmarks/schedules.py"],
        [
            "--datasets",
            "mnist",
            "fashion_mnist",
            "--bits",
            "3",
            "--methods",
            "naive",
            "MPA",
            "--learning-rate",
            "5e-4",
        ],
        [
            "--datasets",
            "mnist",
            "--bits",
            "3",
            "--methods",
            "naive",
            "MPA",
            "--epochs",
            "2",
            "--float-epochs",
            "2",
        ],
    ),
    "schedules_ternary_peers": (
        "Ternary on LeNet-5 beside the QKeras peer (MNIST, Fashion-MNIST), one seed",
        ["benchmarks/schedules.py"],
        [
            "--bits",
            "--methods",
            "MPA+STE",
            "QKeras",
            "--learning-rate",
            "5e-4",
        ],
        [
            "--datasets",
            "mnist",
            "--bits",
            "--methods",
            "MPA+STE",
            "QKeras",
            "--epochs",
            "2",
            "--float-epochs",
            "2",
        ],
    ),
    "schedules_table": (
        "Schedules: the full table (every method at 4, 3, 2 bits and ternary), one seed",
        ["benchmarks/schedules.py"],
        ["--learning-rate", "5e-4"],
        ["--datasets", "mnist", "--bits", "2", "--epochs", "2", "--float-epochs", "2"],
    ),
    "cifar10": (
        "CIFAR-10 ResNet-20: every method from the shipped float baseline (rows accumulate)",
        ["benchmarks/cifar10.py"],
        ["--epochs", "8", "--train", "50000"],
        ["--quick"],
    ),
    "compression": (
        "Compression (LeNet-300-100, LeNet-5 on MNIST; LeNet-5 on a CIFAR-10 subset)",
        ["benchmarks/compression.py"],
        ["--epochs", "24", "--cosine", "--ratios", "100", "200", "--schedule", "prune"],
        [
            "--limit",
            "10000",
            "--test-limit",
            "5000",
            "--epochs",
            "3",
            "--ratios",
            "60",
            "100",
            "--schedule",
            "prune",
        ],
    ),
    "structured": (
        "Structured pruning: group lasso, tfq.shrink, the shrunk .tflite (3 seeds)",
        ["benchmarks/compression.py"],
        [
            "--models",
            "lenet300_100",
            "lenet5",
            "--recipes",
            "structured",
            "structured strong",
            "channels",
            *_SEEDED_LENETS,
        ],
        ["--models", "lenet5", "--recipes", "structured", *_QUICK_STRUCTURED],
    ),
    "structured_kd": (
        "Structured pruning distilled from the float net (tfq.Distiller, 3 seeds)",
        ["benchmarks/compression.py"],
        [
            "--models",
            "lenet300_100",
            "lenet5",
            "--recipes",
            "structured kd",
            *_SEEDED_LENETS[:2],
            "--model-epochs",
            "lenet300_100=48",
            "lenet5=40",
            *_SEEDED_LENETS[4:],
        ],
        ["--models", "lenet5", "--recipes", "structured kd", *_QUICK_STRUCTURED],
    ),
    "structured_channels": (
        "Channel pruning for speed: LeNet-5 at 70 % of the conv channels (3 seeds)",
        ["benchmarks/compression.py"],
        ["--models", "lenet5", "--recipes", "channels 70", *_SEEDED_LENETS],
        ["--models", "lenet5", "--recipes", "channels 70", *_QUICK_STRUCTURED],
    ),
    "allocate_channels": (
        "allocate_bits trading channels against bits (3 seeds)",
        ["benchmarks/compression.py"],
        [
            "--models",
            "lenet300_100",
            "lenet5",
            "--recipes",
            "lenet300_100:allocate_bits 100x",
            "lenet300_100:allocate_bits 100x channels",
            "lenet300_100:allocate_bits 200x channels",
            "lenet5:allocate_bits 200x",
            "lenet5:allocate_bits 200x channels",
            "lenet5:allocate_bits 400x channels",
            *_SEEDED_LENETS,
            "--ratios",
            "100",
            "200",
            "400",
            "--channel-sparsities",
            *_CHANNEL_FRACTIONS,
        ],
        [
            "--models",
            "lenet5",
            "--recipes",
            "allocate_bits 400x channels",
            *_QUICK_SLICE,
            "--ratios",
            "400",
            "--channel-sparsities",
            *_CHANNEL_FRACTIONS,
            "--schedule",
            "prune",
            "--no-tfmot",
            "--png",
            "",
        ],
    ),
    "compression_seeds": (
        "Compression at the issue's targets over 3 seeds",
        ["benchmarks/compression.py"],
        [
            "--models",
            "lenet300_100",
            "lenet5",
            "--recipes",
            "lenet300_100:recipe",
            "lenet5:recipe 200x",
            *_SEEDED_LENETS,
        ],
        [
            "--models",
            "lenet300_100",
            "--recipes",
            "recipe",
            "--limit",
            "10000",
            "--test-limit",
            "5000",
            "--epochs",
            "3",
            "--ratios",
            "--schedule",
            "prune",
            "--no-tfmot",
            "--seeds",
            "0",
            "1",
            "--png",
            "",
        ],
    ),
    "coding_report": (
        "tfq.coding.report on the digits CNN (3-bit multivalued and ternary, no fine-tuning)",
        ["benchmarks/coding_report.py"],
        [],
        [],
    ),
    "latency": (
        "Host latency and file size vs tfmot int8 (LeNet-5)",
        ["benchmarks/latency.py"],
        [],
        ["--train", "2000", "--test", "500", "--rounds", "2", "--runs", "100"],
    ),
    "micro": (
        "TFLite Micro models storing kernels as trained indices (LeNet-5, LeNet-300-100 MNIST, "
        "`to_micro`)",
        ["benchmarks/micro.py"],
        [],
        [
            "--train",
            "2000",
            "--test",
            "500",
            "--recipe-epochs",
            "2",
            "--recipe-train",
            "5000",
            "--rounds",
            "2",
            "--runs",
            "50",
        ],
    ),
    "real_networks": (
        "BatchNorm networks vs tfmot int8: ResNet-20 and MobileNetV2 on CIFAR-10",
        ["benchmarks/real_networks.py"],
        [],
        [
            "--qat-train",
            "1000",
            "--test",
            "1000",
            "--mobilenet-epochs",
            "3",
            "--rounds",
            "2",
            "--runs",
            "30",
        ],
    ),
    "qat_overhead": (
        "Training-step overhead vs float and tfmot QAT (LeNet-5)",
        ["benchmarks/qat_overhead.py"],
        [],
        ["--steps", "10", "--rounds", "2"],
    ),
    "schedule_overhead": (
        "Schedule callback overhead (LeNet-5)",
        ["benchmarks/schedule_overhead.py"],
        [],
        ["--steps", "30", "--rounds", "2"],
    ),
    "division": (
        "Division methods: exact 1-D k-means vs scikit-learn",
        ["benchmarks/division.py"],
        [],
        ["--n", "200000"],
    ),
    "reliability": (
        "Reliability: faults, bad inputs, fuzzing, replicas",
        ["benchmarks/reliability.py"],
        [],
        [],
    ),
}

# Published figures (from the papers; accuracy in %, compression as float32 size / coded size).
ANCHORS = [
    ("Deep Compression (Han et al. 2016)", "LeNet-300-100 MNIST", "40x, no accuracy loss"),
    ("Deep Compression (Han et al. 2016)", "LeNet-5 MNIST", "39x, no accuracy loss"),
    ("Choi et al. 2017 (seed 003)", "LeNet-5 MNIST", "51.25x, no accuracy loss"),
    ("Choi et al. 2017 (seed 003)", "ResNet-32 CIFAR-10", "22.17x, no accuracy loss"),
    ("Soft weight-sharing (Ullrich et al. 2017)", "LeNet-5 MNIST", "162x, < 0.1 pt loss"),
    ("Soft weight-sharing (Ullrich et al. 2017)", "LeNet-300-100 MNIST", "64x, < 0.1 pt loss"),
    ("TWN (Li et al. 2016)", "LeNet-5 MNIST", "ternary 99.35 vs float 99.41"),
    ("TTQ (Zhu et al. 2017)", "ResNet-20 CIFAR-10", "ternary 91.13 vs float 91.77"),
]


# Benchmarks whose rows accumulate in their JSON over several runs, and the flag that prints
# the stored table without measuring (`--table-only`).
STORED_TABLE = {"cifar10": "--table"}


def _run(name, quick, table_only=False):
    title, command, full, reduced = BENCHMARKS[name]
    if table_only:
        if name not in STORED_TABLE:
            print(f"[{name}] skipped: --table-only applies to {', '.join(STORED_TABLE)}")
            return None
        full = [*full, STORED_TABLE[name]]
    script = command[0] if not command[0].startswith("-") else None
    if script and not os.path.exists(os.path.join(ROOT, script)):
        print(f"[{name}] skipped: {script} does not exist yet")
        return None
    arguments = reduced if quick else full
    json_path = os.path.join("benchmarks", "results", f"{name}.json")  # relative to ROOT
    full_command = [sys.executable, *command, *arguments, "--json", json_path]
    print(f"[{name}] {' '.join(full_command[1:])}", flush=True)
    done = subprocess.run(
        full_command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ)
    )
    if done.returncode:
        print(f"[{name}] FAILED ({done.returncode}):\n{done.stderr[-2000:]}")
        return False
    stamp = datetime.date.today().isoformat()
    header = (
        f"# python {shlex.join(command + arguments)}   ({stamp}, "
        f"{'quick' if quick else 'full'} settings, {os.cpu_count()} CPU cores, "
        f"{platform.machine()})\n"
    )
    table = "\n".join(
        line for line in done.stdout.strip().splitlines() if not line.startswith("wrote ")
    )
    with open(os.path.join(RESULTS, f"{name}.txt"), "w") as stream:
        stream.write(header + table + "\n")
    print(done.stdout)
    return True


def render():
    """The README's results section from the stored outputs."""
    parts = [
        BEGIN,
        "## Results (generated by `python benchmarks/run_all.py`; do not edit by hand)",
        "",
        "Each block is what the benchmark printed, with its command and settings on top.",
        "",
    ]
    for name, (title, *_rest) in BENCHMARKS.items():
        path = os.path.join(RESULTS, f"{name}.txt")
        if not os.path.exists(path):
            continue
        with open(path) as stream:
            text = stream.read().strip()
        parts += [f"### {title}", "", "```", text, "```", ""]
    parts += [
        "### Published figures on the same networks",
        "",
        "| method | network | published |",
        "|---|---|---|",
        *[f"| {method} | {network} | {figure} |" for method, network, figure in ANCHORS],
        "",
        END,
    ]
    return "\n".join(parts)


def write_readme(section):
    with open(README) as stream:
        text = stream.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(README, "w") as stream:
        stream.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS))
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    failed = []
    if not args.render_only:
        for name in args.only or BENCHMARKS:
            if _run(name, args.quick, args.table_only) is False:
                failed.append(name)
    write_readme(render())
    print(f"README results section rebuilt{'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
