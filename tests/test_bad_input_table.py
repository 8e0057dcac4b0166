"""Every public entry point against bad input, from one table: wrong types, out-of-range
values, Keras 3 objects, unbuilt models, empty data, non-finite weights and data, corrupt
SavedModel / .tflite / compressed / dataset files. Each case must raise the listed error with a
message naming the argument (or the file), and leave every model's weights and every file (by
sha256) as they were. `CASES` is the table; `World` holds what the cases are called on.
"""

import dataclasses
import hashlib
import shutil
from collections.abc import Callable

import numpy as np
import pytest

import tfquant as tfq
from tfquant import callbacks, export, schemes
from tfquant.coding import CompressedFormatError
from tfquant.export import InvalidTfliteError
from tfquant.models import datasets

keras = tfq.keras


@dataclasses.dataclass
class World:
    root: object
    float_model: object
    qmodel: object
    masked: object
    ternary: object
    nan_qmodel: object
    nan_model: object
    unbuilt: object
    keras3_model: object
    keras3_layer: object
    x: np.ndarray
    y: np.ndarray
    tfl: bytes
    blob: bytes

    def file(self, name):
        return self.root / name

    def bytes_of(self, name):
        return (self.root / name).read_bytes()


def _fit(model, x, y, schedule):
    return model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[schedule])


def _sha256s(root):
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _weights(world):
    models = ("float_model", "qmodel", "masked", "ternary", "nan_qmodel", "nan_model")
    out = {name: [w.copy() for w in getattr(world, name).get_weights()] for name in models}
    out["keras3_model"] = [np.asarray(w).copy() for w in world.keras3_model.get_weights()]
    return out


def build_world(root):
    """Models, data and files (good and corrupt) under `root` for the cases to call."""
    import keras as keras3

    keras.utils.set_random_seed(0)
    float_model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, name="fc"),
        ],
        name="tiny",
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    float_model.compile("sgd", loss)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    qmodel = tfq.quantize_model(float_model, schemes.Multivalued(bits=2, mode="snap"))
    qmodel(x, training=True)
    qmodel.compile("sgd", loss)
    masked = tfq.quantize_model(float_model, schemes.Multivalued(bits=2, mode="masked"))
    masked.compile("sgd", loss)
    nan_qmodel = tfq.quantize_model(float_model, schemes.Multivalued(bits=2))
    weights = nan_qmodel.get_weights()
    kernel = next(i for i, w in enumerate(weights) if w.ndim == 4)
    weights[kernel] = weights[kernel].copy()
    weights[kernel].flat[0] = np.nan
    nan_qmodel.set_weights(weights)
    nan_model = keras.models.clone_model(float_model)
    weights = float_model.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = np.inf
    nan_model.set_weights(weights)
    keras3_model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Dense(2)])

    tfl = export.to_tflite(qmodel, x)
    blob = tfq.coding.compress(qmodel).to_bytes()
    (root / "model.tflite").write_bytes(tfl)
    (root / "model.tfq").write_bytes(blob)
    flipped = bytearray(tfl)
    flipped[len(flipped) // 2] ^= 0xFF
    (root / "flipped.tflite").write_bytes(bytes(flipped))
    (root / "truncated.tflite").write_bytes(tfl[: len(tfl) // 3])
    (root / "truncated.tfq").write_bytes(blob[: len(blob) // 2])
    flipped = bytearray(blob)
    flipped[-3] ^= 0x55
    (root / "flipped.tfq").write_bytes(bytes(flipped))
    (root / "empty.tfq").write_bytes(b"")

    qmodel.save(root / "saved", save_format="tf")
    shutil.copytree(root / "saved", root / "saved_truncated")
    pb = root / "saved_truncated" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    shutil.copytree(root / "saved", root / "saved_garbage")
    (root / "saved_garbage" / "saved_model.pb").write_bytes(b"\x00garbage" * 100)
    shutil.copytree(root / "saved", root / "saved_flipped_variables")
    (data,) = (root / "saved_flipped_variables" / "variables").glob("variables.data-*")
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    data.write_bytes(bytes(flipped))
    shutil.copytree(root / "saved", root / "saved_no_variables")
    shutil.rmtree(root / "saved_no_variables" / "variables")
    (root / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))

    mnist = root / "mnist"
    mnist.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (mnist / stem).write_bytes(b"\x00\x00\x08\x03" + bytes(12))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / stem).write_bytes(b"not an IDX file")

    return World(
        root=root,
        float_model=float_model,
        qmodel=qmodel,
        masked=masked,
        ternary=tfq.quantize_model(float_model, schemes.Ternary()),
        nan_qmodel=nan_qmodel,
        nan_model=nan_model,
        unbuilt=keras.Sequential([keras.layers.Dense(3)]),
        keras3_model=keras3_model,
        keras3_layer=keras3.layers.Dense(2),
        x=x,
        y=y,
        tfl=tfl,
        blob=blob,
    )


@dataclasses.dataclass(frozen=True)
class Case:
    """`call(world)` must raise `error` with `fragment` (the argument or file) in its message."""

    id: str
    call: Callable
    error: type | tuple
    fragment: str


MV = schemes.Multivalued
E = (ValueError, TypeError)  # either is fine where Keras-style checks pick one

# fmt: off
CASES = [
    # -- quantize_model / quantize_apply / quantize_annotate_layer ---------------------------
    Case("quantize_model str", lambda w: tfq.quantize_model("m.h5", MV()), TypeError, "model"),
    Case("quantize_model keras3", lambda w: tfq.quantize_model(w.keras3_model, MV()), TypeError, "Keras 3"),
    Case("quantize_model unbuilt", lambda w: tfq.quantize_model(w.unbuilt, MV()), ValueError, "model must be a built"),
    Case("quantize_model non-finite", lambda w: tfq.quantize_model(w.nan_model, MV()), ValueError, "NaN or Inf"),
    Case("quantize_model scheme str", lambda w: tfq.quantize_model(w.float_model, "mv"), TypeError, "scheme"),
    Case("quantize_model scheme class", lambda w: tfq.quantize_model(w.float_model, MV), TypeError, "scheme"),
    Case("quantize_model importance list", lambda w: tfq.quantize_model(w.float_model, MV(division="hessian_kmeans"), importance=[1.0]), TypeError, "importance"),
    Case("quantize_model importance shape", lambda w: tfq.quantize_model(w.float_model, MV(division="hessian_kmeans"), importance={"conv": np.ones((3, 3, 1, 4)), "fc": np.ones(3)}), ValueError, "importance['fc']"),
    Case("quantize_model importance nan", lambda w: tfq.quantize_model(w.float_model, MV(division="hessian_kmeans"), importance={"conv": np.ones((3, 3, 1, 4)), "fc": np.full((144, 10), np.nan)}), ValueError, "importance['fc']"),
    Case("quantize_model importance unknown layer", lambda w: tfq.quantize_model(w.float_model, MV(division="hessian_kmeans"), importance={"nope": np.ones(3)}), ValueError, "'nope'"),
    Case("quantize_model qat model", lambda w: tfq.quantize_model(w.qmodel, MV()), ValueError, "model"),
    Case("quantize_apply str", lambda w: tfq.quantize_apply(None, MV()), TypeError, "model"),
    Case("quantize_apply keras3", lambda w: tfq.quantize_apply(w.keras3_model, MV()), TypeError, "Keras 3"),
    Case("quantize_apply scheme", lambda w: tfq.quantize_apply(w.float_model, 3), TypeError, "scheme"),
    Case("quantize_apply non-finite", lambda w: tfq.quantize_apply(w.nan_model, MV()), ValueError, "NaN or Inf"),
    Case("annotate str", lambda w: tfq.quantize_annotate_layer("fc", MV()), TypeError, "layer"),
    Case("annotate keras3", lambda w: tfq.quantize_annotate_layer(w.keras3_layer, MV()), TypeError, "layer"),
    Case("annotate lstm", lambda w: tfq.quantize_annotate_layer(keras.layers.LSTM(2, name="rnn"), MV()), ValueError, "'rnn'"),
    Case("annotate scheme", lambda w: tfq.quantize_annotate_layer(keras.layers.Dense(2), "mv"), TypeError, "scheme"),
    # -- schemes ---------------------------------------------------------------------------
    Case("Multivalued bits", lambda w: MV(bits=0), ValueError, "bits=0"),
    Case("Multivalued bits str", lambda w: MV(bits="3"), TypeError, "bits='3'"),
    Case("Multivalued levels", lambda w: MV(levels=1), ValueError, "levels=1"),
    Case("Multivalued division", lambda w: MV(division="kmean"), ValueError, "division"),
    Case("Multivalued mode", lambda w: MV(mode=None), E, "mode"),
    Case("Multivalued entropy nan", lambda w: MV(entropy_weight=float("nan")), ValueError, "entropy_weight"),
    Case("Multivalued sparsity", lambda w: MV(sparsity=1.0), ValueError, "sparsity"),
    Case("Multivalued layers", lambda w: MV(layers=["fc"]), TypeError, "layers"),
    Case("Multivalued 8bit", lambda w: MV(keep_first_last_8bit="no"), TypeError, "keep_first_last_8bit"),
    Case("Ternary method", lambda w: schemes.Ternary(method=1), E, "method"),
    Case("Ternary threshold", lambda w: schemes.Ternary(threshold=-0.5), ValueError, "threshold"),
    Case("Ternary per_channel", lambda w: schemes.Ternary(per_channel=1), TypeError, "per_channel"),
    Case("LearnedBasis weight_bits", lambda w: schemes.LearnedBasis(weight_bits=9), ValueError, "weight_bits"),
    Case("LearnedBasis activation_bits", lambda w: schemes.LearnedBasis(activation_bits=2.0), TypeError, "activation_bits"),
    Case("Uniform bits", lambda w: schemes.Uniform(bits=99), ValueError, "bits=99"),
    Case("Uniform per_channel", lambda w: schemes.Uniform(per_channel="yes"), TypeError, "per_channel"),
    # -- callbacks -------------------------------------------------------------------------
    Case("PhaseAdaptation epochs", lambda w: callbacks.PhaseAdaptation(epochs_per_phase=-1), ValueError, "epochs_per_phase"),
    Case("PhaseAdaptation epochs str", lambda w: callbacks.PhaseAdaptation(epochs_per_phase="2"), TypeError, "epochs_per_phase"),
    Case("PhaseAdaptation pull", lambda w: callbacks.PhaseAdaptation(pull_strength=float("inf")), ValueError, "pull_strength"),
    Case("PhaseAdaptation steps", lambda w: callbacks.PhaseAdaptation(steps_per_epoch=0), ValueError, "steps_per_epoch"),
    Case("PhaseAdaptation verbose", lambda w: callbacks.PhaseAdaptation(verbose=True), TypeError, "verbose"),
    Case("PhaseAdaptation fused", lambda w: callbacks.PhaseAdaptation(fused="yes"), TypeError, "fused='yes'"),
    Case("PhaseAdaptation tune_centers", lambda w: callbacks.PhaseAdaptation(tune_centers=1), TypeError, "tune_centers=1"),
    Case("IntervalContraction fused", lambda w: callbacks.IntervalContraction(fused=None), TypeError, "fused=None"),
    Case("PartitionRounds fused", lambda w: callbacks.PartitionRounds(fused=0), TypeError, "fused=0"),
    Case("IncrementalLayers fused", lambda w: callbacks.IncrementalLayers(fused="no"), TypeError, "fused='no'"),
    Case("IntervalContraction epochs", lambda w: callbacks.IntervalContraction(epochs=0), ValueError, "epochs=0"),
    Case("IntervalContraction epochs float", lambda w: callbacks.IntervalContraction(epochs=1.5), TypeError, "epochs=1.5"),
    Case("PartitionRounds rounds", lambda w: callbacks.PartitionRounds(rounds=0), ValueError, "rounds=0"),
    Case("PartitionRounds order", lambda w: callbacks.PartitionRounds(order="random"), ValueError, "order='random'"),
    Case("PartitionRounds recluster", lambda w: callbacks.PartitionRounds(recluster="yes"), TypeError, "recluster"),
    Case("IncrementalLayers epochs", lambda w: callbacks.IncrementalLayers(epochs_per_layer=-2), ValueError, "epochs_per_layer"),
    Case("IncrementalLayers order", lambda w: callbacks.IncrementalLayers(order=7), TypeError, "order=7"),
    Case("GradualPruning end", lambda w: callbacks.GradualPruning(end_epoch=0), ValueError, "end_epoch=0"),
    Case("GradualPruning begin", lambda w: callbacks.GradualPruning(end_epoch=2, begin_epoch=3), ValueError, "begin_epoch=3"),
    Case("GradualPruning initial", lambda w: callbacks.GradualPruning(end_epoch=2, initial_sparsity=1.0), ValueError, "initial_sparsity=1.0"),
    Case("GradualPruning power", lambda w: callbacks.GradualPruning(end_epoch=2, power=0), ValueError, "power=0"),
    Case("GradualPruning frequency", lambda w: callbacks.GradualPruning(end_epoch=2, frequency=0.5), TypeError, "frequency=0.5"),
    Case("GradualPruning fused", lambda w: callbacks.GradualPruning(end_epoch=2, fused="no"), TypeError, "fused='no'"),
    Case("GradualPruning no zero interval", lambda w: _fit(w.qmodel, w.x, w.y, callbacks.GradualPruning(end_epoch=1)), ValueError, "sparsity > 0"),
    Case("GradualPruning float model", lambda w: _fit(w.float_model, w.x, w.y, callbacks.GradualPruning(end_epoch=1)), ValueError, "model 'tiny'"),
    Case("PhaseAdaptation float model", lambda w: _fit(w.float_model, w.x, w.y, callbacks.PhaseAdaptation()), ValueError, "model 'tiny'"),
    Case("IntervalContraction float model", lambda w: _fit(w.float_model, w.x, w.y, callbacks.IntervalContraction()), ValueError, "model 'tiny'"),
    Case("PartitionRounds float model", lambda w: _fit(w.float_model, w.x, w.y, callbacks.PartitionRounds()), ValueError, "model 'tiny'"),
    Case("IncrementalLayers float model", lambda w: _fit(w.float_model, w.x, w.y, callbacks.IncrementalLayers()), ValueError, "model 'tiny'"),
    Case("PhaseAdaptation snap model", lambda w: _fit(w.qmodel, w.x, w.y, callbacks.PhaseAdaptation()), ValueError, "mode='snap'"),
    Case("PartitionRounds unknown layer", lambda w: _fit(w.masked, w.x, w.y, callbacks.IncrementalLayers(order=["nope"])), ValueError, "order=['nope']"),
    Case("epochs_needed keras3", lambda w: callbacks.PartitionRounds().epochs_needed(w.keras3_model), TypeError, "Keras 3"),
    Case("epochs_needed float model", lambda w: callbacks.PhaseAdaptation().epochs_needed(w.float_model), ValueError, "model 'tiny'"),
    # -- summary ---------------------------------------------------------------------------
    Case("summary float model", lambda w: tfq.summary(w.float_model, print_fn=None), ValueError, "qmodel"),
    Case("summary str", lambda w: tfq.summary("qmodel.h5", print_fn=None), TypeError, "qmodel"),
    Case("summary keras3", lambda w: tfq.summary(w.keras3_model, print_fn=None), TypeError, "Keras 3"),
    Case("summary print_fn", lambda w: tfq.summary(w.qmodel, print_fn="stdout"), TypeError, "print_fn"),
    # -- load_model ------------------------------------------------------------------------
    Case("load_model missing", lambda w: tfq.load_model(w.file("nope")), FileNotFoundError, "nope"),
    Case("load_model int", lambda w: tfq.load_model(42), TypeError, "path"),
    Case("load_model h5 file", lambda w: tfq.load_model(w.file("model.h5")), ValueError, "model.h5"),
    Case("load_model tflite", lambda w: tfq.load_model(w.file("model.tflite")), ValueError, "model.tflite"),
    Case("load_model empty dir", lambda w: tfq.load_model(w.file("mnist")), ValueError, "mnist"),
    Case("load_model truncated pb", lambda w: tfq.load_model(w.file("saved_truncated")), ValueError, "saved_truncated"),
    Case("load_model garbage pb", lambda w: tfq.load_model(w.file("saved_garbage")), ValueError, "saved_garbage"),
    Case("load_model no variables", lambda w: tfq.load_model(w.file("saved_no_variables")), ValueError, "saved_no_variables"),
    Case("load_model compile", lambda w: tfq.load_model(w.file("saved"), compile="yes"), TypeError, "compile"),
    Case("load_model flipped variables", lambda w: tfq.load_model(w.file("saved_flipped_variables")), ValueError, "saved_flipped_variables"),
    # -- coding ----------------------------------------------------------------------------
    Case("Distiller temperature", lambda w: tfq.Distiller(w.qmodel, w.float_model, temperature=-1), ValueError, "temperature"),
    Case("Distiller same model", lambda w: tfq.Distiller(w.qmodel, w.qmodel), ValueError, "teacher"),
    Case("Distiller keras3", lambda w: tfq.Distiller(w.qmodel, w.keras3_model), TypeError, "teacher"),
    Case("compress distiller", lambda w: tfq.coding.compress(tfq.Distiller(w.qmodel, w.float_model)), ValueError, "qmodel.student"),
    Case("to_tflite distiller", lambda w: export.to_tflite(tfq.Distiller(w.qmodel, w.float_model), None), ValueError, "qmodel.student"),
    Case("compress float", lambda w: tfq.coding.compress(w.float_model), ValueError, "qmodel"),
    Case("compress str", lambda w: tfq.coding.compress("x"), TypeError, "qmodel"),
    Case("compress keras3", lambda w: tfq.coding.compress(w.keras3_model), TypeError, "Keras 3"),
    Case("compress coder", lambda w: tfq.coding.compress(w.qmodel, coder="zip"), ValueError, "coder"),
    Case("compress non-finite", lambda w: tfq.coding.compress(w.nan_qmodel), ValueError, "NaN or Inf"),
    Case("compress training state", lambda w: tfq.coding.compress(w.qmodel, include_training_state=1), TypeError, "include_training_state"),
    Case("decompress int", lambda w: tfq.coding.decompress(7, w.qmodel), TypeError, "path_or_bytes"),
    Case("decompress missing", lambda w: tfq.coding.decompress(w.file("no.tfq"), w.qmodel), FileNotFoundError, "no.tfq"),
    Case("decompress empty", lambda w: tfq.coding.decompress(w.file("empty.tfq"), w.qmodel), CompressedFormatError, "container"),
    Case("decompress truncated", lambda w: tfq.coding.decompress(w.file("truncated.tfq"), w.qmodel), CompressedFormatError, "container"),
    Case("decompress flipped", lambda w: tfq.coding.decompress(w.file("flipped.tfq"), w.qmodel), CompressedFormatError, "checksum"),
    Case("decompress tflite", lambda w: tfq.coding.decompress(w.tfl, w.qmodel), CompressedFormatError, "container"),
    Case("decompress float model", lambda w: tfq.coding.decompress(w.blob, w.float_model), CompressedFormatError, "architecture"),
    Case("decompress other scheme", lambda w: tfq.coding.decompress(w.blob, w.ternary), CompressedFormatError, "not the same architecture"),
    Case("decompress model str", lambda w: tfq.coding.decompress(w.blob, "model"), TypeError, "model"),
    Case("decompress keras3", lambda w: tfq.coding.decompress(w.blob, w.keras3_model), TypeError, "Keras 3"),
    Case("decompress max_elements", lambda w: tfq.coding.decompress(w.blob, w.qmodel, max_elements=-1), ValueError, "max_elements"),
    # -- export ----------------------------------------------------------------------------
    Case("to_tflite str", lambda w: export.to_tflite("qmodel", w.x), TypeError, "qmodel"),
    Case("to_tflite keras3", lambda w: export.to_tflite(w.keras3_model, w.x), TypeError, "Keras 3"),
    Case("to_tflite unbuilt", lambda w: export.to_tflite(w.unbuilt, w.x), ValueError, "qmodel must be a built"),
    Case("to_tflite non-finite", lambda w: export.to_tflite(w.nan_qmodel, w.x), ValueError, "NaN or Inf"),
    Case("to_tflite empty data", lambda w: export.to_tflite(w.qmodel, w.x[:0]), ValueError, "representative_data"),
    Case("to_tflite nan data", lambda w: export.to_tflite(w.qmodel, w.x * np.nan), ValueError, "representative_data"),
    Case("to_tflite data shape", lambda w: export.to_tflite(w.qmodel, w.x[..., 0]), ValueError, "representative_data"),
    Case("to_tflite data str", lambda w: export.to_tflite(w.qmodel, "x.npy"), TypeError, "representative_data"),
    Case("to_tflite batch_size", lambda w: export.to_tflite(w.qmodel, w.x, batch_size=0), ValueError, "batch_size"),
    Case("to_tflite int4", lambda w: export.to_tflite(w.qmodel, w.x, int4="yes"), TypeError, "int4"),
    Case("to_tflite int8_io", lambda w: export.to_tflite(w.qmodel, w.x, int8_io=None), TypeError, "int8_io"),
    Case("check_tflite str", lambda w: export.check_tflite(str(w.file("model.tflite")), w.qmodel), TypeError, "tfl"),
    Case("check_tflite flipped", lambda w: export.check_tflite(w.bytes_of("flipped.tflite"), w.qmodel), (InvalidTfliteError, export.ExportCheckError), "tfl"),
    Case("check_tflite truncated", lambda w: export.check_tflite(w.bytes_of("truncated.tflite"), w.qmodel), InvalidTfliteError, "tfl"),
    Case("check_tflite compressed", lambda w: export.check_tflite(w.blob, w.qmodel), InvalidTfliteError, "tfl"),
    Case("check_tflite qmodel str", lambda w: export.check_tflite(w.tfl, "qmodel"), TypeError, "qmodel"),
    Case("check_tflite empty data", lambda w: export.check_tflite(w.tfl, w.qmodel, w.x[:0]), ValueError, "data must hold"),
    Case("check_tflite nan data", lambda w: export.check_tflite(w.tfl, w.qmodel, w.x * np.nan), ValueError, "data must be finite"),
    Case("check_tflite labels", lambda w: export.check_tflite(w.tfl, w.qmodel, w.x, w.y[:3]), ValueError, "labels"),
    Case("check_tflite min_agreement", lambda w: export.check_tflite(w.tfl, w.qmodel, min_agreement=2), ValueError, "min_agreement"),
    Case("check_tflite strict", lambda w: export.check_tflite(w.tfl, w.qmodel, strict="no"), TypeError, "strict"),
    Case("benchmark garbage", lambda w: export.benchmark(b"garbage", runs=1), InvalidTfliteError, "tfl"),
    Case("benchmark path", lambda w: export.benchmark(str(w.file("model.tflite"))), TypeError, "tfl"),
    Case("benchmark runs", lambda w: export.benchmark(w.tfl, runs=0), ValueError, "runs=0"),
    Case("benchmark threads", lambda w: export.benchmark(w.tfl, threads=1.5), ValueError, "threads"),
    Case("benchmark target", lambda w: export.benchmark(w.tfl, target="tpu"), ValueError, "target"),
    Case("benchmark option", lambda w: export.benchmark(w.tfl, serial="abc"), ValueError, "serial"),
    Case("edgetpu_report garbage", lambda w: export.edgetpu_report(b"\x00" * 64), InvalidTfliteError, "tfl"),
    Case("edgetpu_report flipped", lambda w: export.edgetpu_report(w.bytes_of("truncated.tflite")), InvalidTfliteError, "tfl"),
    Case("edgetpu_report compiler", lambda w: export.edgetpu_report(w.tfl, compiler=5), ValueError, "compiler"),
    Case("edgetpu_report list", lambda w: export.edgetpu_report([1, 2]), TypeError, "tfl"),
    Case("micro_report garbage", lambda w: export.micro_report(b"TFL3" * 10), InvalidTfliteError, "tfl"),
    Case("micro_report arena", lambda w: export.micro_report(w.tfl, arena_size=100), ValueError, "arena_size"),
    Case("micro_report data shape", lambda w: export.micro_report(w.tfl, data=w.x[:, :4]), ValueError, "data must have shape"),
    Case("micro_report empty data", lambda w: export.micro_report(w.tfl, data=w.x[:0]), ValueError, "data must hold"),
    Case("micro_report nan data", lambda w: export.micro_report(w.tfl, data=w.x * np.nan), ValueError, "data must be finite"),
    # -- datasets --------------------------------------------------------------------------
    Case("load name", lambda w: datasets.load("minst"), ValueError, "name='minst'"),
    Case("load name type", lambda w: datasets.load(None), ValueError, "name=None"),
    Case("load limit", lambda w: datasets.load("digits", limit=0), ValueError, "limit=0"),
    Case("load limit str", lambda w: datasets.load("digits", limit="10"), ValueError, "limit='10'"),
    Case("load test_fraction", lambda w: datasets.load("digits", test_fraction=1.5), ValueError, "test_fraction=1.5"),
    Case("load seed", lambda w: datasets.load("digits", seed="zero"), TypeError, "seed='zero'"),
    Case("load seed negative", lambda w: datasets.load("digits", seed=-1), ValueError, "seed=-1"),
    Case("load corrupt idx", lambda w: datasets.load("mnist", data_dir=w.file("mnist"), verify=False), datasets.DatasetError, "mnist"),
    Case("load corrupt idx verified", lambda w: datasets.load("mnist", data_dir=w.file("mnist")), datasets.DatasetError, "sha256"),
]
# fmt: on


def take_snapshot(world):
    """Every model's weights and every file's sha256, to compare after each case."""
    return _weights(world), _sha256s(world.root)


def run_case(world, case, snapshot):
    """Runs one case; None when it was rejected cleanly, else what went wrong."""
    try:
        case.call(world)
    except case.error as error:
        if case.fragment not in str(error):
            return f"{type(error).__name__} without {case.fragment!r}: {error}"
    except Exception as error:  # noqa: BLE001 (any other error is the finding)
        return f"{type(error).__name__} instead of {case.error}: {error}"
    else:
        return "no error"
    weights, files = snapshot
    after = _weights(world)
    for name, before in weights.items():
        if not all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(before, after[name], strict=True)
        ):
            return f"changed the weights of {name}"
    if _sha256s(world.root) != files:
        return "changed a file"
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("bad_input"))


@pytest.fixture(scope="module")
def snapshot(world):
    return take_snapshot(world)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_rejected_cleanly(world, snapshot, case):
    problem = run_case(world, case, snapshot)
    assert problem is None, f"{case.id}: {problem}"


def test_the_table_covers_every_public_entry_point():
    names = " ".join(case.id for case in CASES)
    entry_points = [
        "quantize_model", "quantize_apply", "annotate", "Multivalued", "Ternary", "LearnedBasis",
        "Uniform", "PhaseAdaptation", "IntervalContraction", "PartitionRounds",
        "IncrementalLayers", "GradualPruning", "Distiller", "summary", "load_model", "compress", "decompress", "to_tflite",
        "check_tflite", "benchmark", "edgetpu_report", "micro_report", "load ",
    ]  # fmt: skip
    assert [e for e in entry_points if e not in names] == []
