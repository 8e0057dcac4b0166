"""Reliability report: faults injected and survived, bad inputs rejected cleanly, fuzz cases
run, replicas checked. Reuses the tests' scripts and tables (tests/scripts/, tests/test_*.py).

Run: python benchmarks/reliability.py [--fuzz-examples 300] [--json ...]

  faults    SIGKILL of the trainer inside each of the four schedules, restarted with
            keras.callbacks.BackupAndRestore (survived: every variable bit-identical to an
            uninterrupted run); and a NaN batch in each schedule (survived: no schedule state
            moved and the schedule said so).
  bad input every case of tests/test_bad_input_table.py (rejected cleanly: the expected error
            type, a message naming the argument or file, weights and files unchanged).
  fuzz      mutated .tflite bytes through the inspection path and mutated compressed
            containers through the decoder, in a capped process (tests/scripts/fuzz_tflite.py).
  replicas  every variable of every schedule: MirroredStrategy replica 1 and the two
            MultiWorkerMirroredStrategy workers (127.0.0.1) against replica 0, bit for bit.
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import tfquant as tfq  # noqa: E402
from tests.scripts import harness  # noqa: E402
from tfquant._keras import quantized_weights  # noqa: E402

KILL_AT = [("phase", 3, 1), ("contraction", 1, 1), ("rounds", 2, 2), ("layers", 2, 1)]
SCHEDULES = [name for name, _, _ in KILL_AT]


def _identical(first, second):
    a, b = harness.load_variables(first), harness.load_variables(second)
    return len(a) == len(b) and all(
        np.array_equal(x, y) for x, y in zip(a.values(), b.values(), strict=True)
    )


def sigkill_faults(root):
    reference = harness.start_plain(root / "reference")
    run = harness.run_with_kills(root / "killed", KILL_AT)
    harness.wait(reference)
    survived = sum(
        _identical(root / "reference" / f"{s}.npz", root / "killed" / f"{s}.npz") for s in SCHEDULES
    )
    return {"injected": len(run.kills), "survived": survived, "processes": run.processes}


def nan_faults():
    from tfquant.models import datasets, digits_cnn

    keras = tfq.keras
    makers = {
        "PhaseAdaptation": lambda: tfq.callbacks.PhaseAdaptation(epochs_per_phase=1),
        "IntervalContraction": lambda: tfq.callbacks.IntervalContraction(epochs=2),
        "PartitionRounds": lambda: tfq.callbacks.PartitionRounds(epochs_per_round=1),
        "IncrementalLayers": lambda: tfq.callbacks.IncrementalLayers(epochs_per_layer=1),
    }
    (x, y), _ = datasets.load("digits")
    x, y = x[:256].copy(), y[:256]
    x[128:192] = np.nan  # batch 2 of each epoch
    survived = 0
    for name, make in makers.items():
        scheme = tfq.schemes.Multivalued(bits=2, mode="masked")
        qmodel = tfq.quantize_model(digits_cnn(seed=0), scheme)
        qmodel.compile(
            keras.optimizers.Adam(5e-4),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        states = []

        class Snapshot(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None, states=states, qmodel=qmodel):
                states.append(
                    [
                        {k: v.numpy().copy() for k, v in variables.items() if k != "initialized"}
                        for _, _, _, variables in quantized_weights(qmodel)
                    ]
                )

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            qmodel.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0,
                       callbacks=[make(), Snapshot()])  # fmt: skip
        still = all(
            np.array_equal(a[k], b[k])
            for later in states[2:]
            for a, b in zip(states[1], later, strict=True)
            for k in a
        )
        survived += (
            still
            and f"{name}: " in printed.getvalue()
            and "does not advance" in (printed.getvalue())
        )
    return {"injected": len(makers), "survived": survived}


def bad_inputs(root):
    from tests import test_bad_input_table as table

    root.mkdir(parents=True, exist_ok=True)
    world = table.build_world(root)
    snapshot = table.take_snapshot(world)
    problems = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for case in table.CASES:
            problem = table.run_case(world, case, snapshot)
            if problem is not None:
                problems[case.id] = problem
    return {"tried": len(table.CASES), "rejected_cleanly": len(table.CASES) - len(problems),
            "problems": problems}  # fmt: skip


def fuzz(root, examples):
    script = REPO / "tests" / "scripts" / "fuzz_tflite.py"
    command = [sys.executable, str(script), "--out", str(root), "--examples", str(examples)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    summary = {"cases": 0, "container_cases": 0}
    if (root / "fuzz.json").exists():
        summary |= json.loads((root / "fuzz.json").read_text())
    return {
        "tflite_cases": summary["cases"],
        "container_cases": summary["container_cases"],
        "crashed": done.returncode < 0,
        "unclean_errors": done.returncode > 0,
        "address_space_cap_mb": summary.get("address_space_cap_mb"),
    }


def replicas(root):
    """Per schedule, MirroredStrategy replica 1 and both workers against replica 0."""
    mirrored = harness.start_plain(root / "mirrored", strategy="mirrored")
    harness.run_multiworker(root / "multiworker", workers=2)
    harness.wait(mirrored)
    compared, identical = 0, 0
    for schedule in SCHEDULES:
        values = harness.load_variables(root / "mirrored" / f"{schedule}.npz")
        reference = [v[0] for v in values.values()]
        copies = [[v[1] for v in values.values()]]
        for i in (0, 1):
            worker = root / "multiworker" / f"worker-{i}" / f"{schedule}.npz"
            copies.append([v[0] for v in harness.load_variables(worker).values()])
        compared += len(copies)
        identical += sum(
            all(np.array_equal(x, y) for x, y in zip(reference, copy, strict=True))
            for copy in copies
        )
    return {"comparisons": compared, "identical": identical, "schedules": len(SCHEDULES)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz-examples", type=int, default=300)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "reliability.json"))
    args = parser.parse_args(argv)
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="tfquant_reliability_") as directory:
        root = pathlib.Path(directory)
        for name, run in (
            ("sigkill", lambda: sigkill_faults(root / "faults")),
            ("nan", nan_faults),
            ("bad_input", lambda: bad_inputs(root / "bad_input")),
            ("fuzz", lambda: fuzz(root / "fuzz", args.fuzz_examples)),
            ("replicas", lambda: replicas(root / "replicas")),
        ):
            start = time.perf_counter()
            results[name] = run()
            seconds[name] = round(time.perf_counter() - start, 1)
    fuzz_ok = not results["fuzz"]["crashed"] and not results["fuzz"]["unclean_errors"]
    rows = [
        ("faults: SIGKILL mid-schedule, resumed", results["sigkill"]["injected"],
         results["sigkill"]["survived"]),
        ("faults: NaN batch", results["nan"]["injected"], results["nan"]["survived"]),
        ("bad inputs", results["bad_input"]["tried"], results["bad_input"]["rejected_cleanly"]),
        ("fuzz: mutated .tflite", results["fuzz"]["tflite_cases"],
         results["fuzz"]["tflite_cases"] if fuzz_ok else 0),
        ("fuzz: mutated containers", results["fuzz"]["container_cases"],
         results["fuzz"]["container_cases"] if fuzz_ok else 0),
        ("replicas: replica 1, workers 0 and 1 vs replica 0 (x4)",
         results["replicas"]["comparisons"], results["replicas"]["identical"]),
    ]  # fmt: skip
    print(f"{'check':<56}{'tried':>7}{'passed':>8}")
    print("-" * 71)
    for label, tried, passed in rows:
        print(f"{label:<56}{tried:>7}{passed:>8}")
    problems = results["bad_input"]["problems"]
    for case, problem in problems.items():
        print(f"  bad input {case!r}: {problem}")
    report = {
        "rows": [{"check": label, "tried": t, "passed": p} for label, t, p in rows],
        "details": results,
        "seconds": seconds,
    }
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(t == p for _, t, p in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
