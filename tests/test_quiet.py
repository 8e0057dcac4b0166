"""Every command line answers --help / -h and names an unknown flag; tfquant's exports keep the
converter's chatter off stderr while the user's own warnings and real errors get through."""

import importlib
import os
import subprocess
import sys
import warnings

import pytest

import tfquant as tfq
from tests.conftest import compile_model
from tfquant import _quiet, export
from tfquant.models import digits_cnn

COMMANDS = {
    "tfquant.export": ("--model", "--out", "--representative", "--overwrite"),
    "tfquant.models.train": ("--model", "--scheme", "--schedule", "--tflite_out"),
    "tfquant.models.baselines": ("--name", "--data_dir", "--backup_dir"),
}
STARTUP_CHATTER = ("cpu_feature_guard", "port.cc", "cudart_stub", "cuInit", "absl::InitializeLog")
XLA_CHATTER = ("XLA service", "StreamExecutor", "Compiled cluster using XLA")
CONVERTER_CHATTER = (
    "Statistics for quantized inputs",
    "fully_quantize",
    "tf_tfl_flatbuffer_helpers",
    "Reading SavedModel",
    "Skipping runtime version metadata",
)


@pytest.fixture(scope="module")
def runs():
    """{(module, argument): finished process}: every command with --help and with a bogus
    flag, started together (each pays for importing TensorFlow)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")
    }
    started = {
        (module, arg): subprocess.Popen(
            [sys.executable, "-m", module, arg],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for module in COMMANDS
        for arg in ("--help", "--bogus_flag=1")
    }
    finished = {}
    for key, process in started.items():
        out, err = process.communicate(timeout=300)
        finished[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return finished


@pytest.mark.parametrize("module", COMMANDS)
def test_help_lists_the_flags_and_exits_0(runs, module):
    done = runs[module, "--help"]
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in COMMANDS[module]:
        assert flag in done.stdout
    assert "--undefok" not in done.stdout  # absl's own flags are not this command's
    for chatter in STARTUP_CHATTER:
        assert chatter not in done.stderr, done.stderr


@pytest.mark.parametrize("module", COMMANDS)
def test_short_help_in_process(module, capsys):
    main = importlib.import_module(module if module != "tfquant.export" else "tfquant.export.cli")
    # train's main takes the arguments only; the others, like sys.argv, the program name first.
    argv = ["-h"] if module == "tfquant.models.train" else [module, "-h"]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    for flag in COMMANDS[module]:
        assert flag in out


@pytest.mark.parametrize("module", COMMANDS)
def test_unknown_flag_is_named(runs, module):
    done = runs[module, "--bogus_flag=1"]
    assert done.returncode == 2
    assert "Unknown command line flag 'bogus_flag'" in done.stderr
    assert f"python -m {module}" in done.stderr and "--help" in done.stderr
    for chatter in STARTUP_CHATTER:
        assert chatter not in done.stderr, done.stderr


def _show_on_stderr(message, category, filename, lineno, file=None, line=None):
    # What Python does outside pytest, which records warnings instead of printing them.
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_export_is_quiet_but_user_warnings_are_not(digits, capfd, monkeypatch):
    (x, _), _ = digits
    qmodel = compile_model(tfq.quantize_model(digits_cnn(seed=0), tfq.schemes.Multivalued(bits=3)))
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", _show_on_stderr)
        warnings.warn("the user's warning before the export", UserWarning, stacklevel=1)
        tfl = export.to_tflite(qmodel, representative_data=x[:16])
        warnings.warn("the user's warning after the export", UserWarning, stacklevel=1)
    assert tfl[4:8] == b"TFL3"
    err = capfd.readouterr().err
    assert "the user's warning before the export" in err
    assert "the user's warning after the export" in err
    for chatter in CONVERTER_CHATTER:
        assert chatter not in err, err


def test_converter_replays_what_is_not_chatter(capfd):
    capfd.readouterr()
    with pytest.warns(UserWarning) as caught:
        with _quiet.converter():
            os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8\n")
            os.write(2, b"I0000 00:00:1.5    7 reader.cc:83] Reading SavedModel from: here\n")
            os.write(2, b"E0000 00:00:1.5    7 convert.cc:9] 'tfl.foo' op is not supported\n")
            print("a line from Python", file=sys.stderr)
            warnings.warn(
                "Statistics for quantized inputs were expected, but not specified; "
                "continuing anyway.",
                UserWarning,
                stacklevel=1,
            )
            warnings.warn("a warning of the user's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of the user's own"]
    err = capfd.readouterr().err
    assert "'tfl.foo' op is not supported" in err and "a line from Python" in err
    assert "fully_quantize" not in err and "Reading SavedModel" not in err


def test_lines_are_replayed_when_the_conversion_fails(capfd):
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="broken"):
        with _quiet.converter():
            os.write(2, b"E0000 00:00:1.5    7 convert.cc:9] why it broke\n")
            raise RuntimeError("broken")
    assert "why it broke" in capfd.readouterr().err
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # descriptor 2 is stderr again


@pytest.mark.parametrize(
    "orig_argv, expected",
    [
        (["python", "-m", "tfquant.export", "--help"], True),
        (["python", "-mtfquant.demo"], True),
        (["python", "-W", "ignore", "-m", "tfquant.models.train"], True),
        (["python", "-m", "pytest", "tests"], False),
        (["python", "my_script.py", "-m", "tfquant.export"], False),
        (["python", "-c", "import tfquant"], False),
    ],
)
def test_only_tfquants_own_command_lines_count(orig_argv, expected, monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert _quiet.launched_as_cli() is expected


def test_startup_leaves_a_users_program_alone(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "my_script.py"])
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with _quiet.startup() as active:
        assert not active
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_startup_keeps_the_users_log_level(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "tfquant.export"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with _quiet.startup() as active:
        assert active
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_no_retracing_warning_from_tfquants_level_search(caplog):
    """Kernels of many shapes trace the XLA level search once each: tfquant keeps TensorFlow's
    retracing warning about it quiet, and a user's own function still gets the warning."""
    import logging

    from tfquant._keras import tf
    from tfquant.quantizers.base import nearest_level

    levels = tf.constant([-1.0, 0.0, 1.0])

    def users_function(values):
        return values * 2.0

    users_function = tf.function(users_function)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for size in range(1, 10):
            nearest_level(tf.random.normal((size, size + 1)), levels)
            users_function(tf.zeros((size,)))
    retracing = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert not [m for m in retracing if "_nearest_unrolled" in m]
    assert [m for m in retracing if "users_function" in m]


_EXPORT_SCRIPT = """
import warnings
import tfquant as tfq
from tfquant.models.datasets import load

keras = tfq.keras
(x, y), _ = load("digits", limit=(64, 8))
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3))
qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
qmodel.fit(x, y, epochs=1, verbose=0)
tfl = tfq.export.to_tflite(qmodel, representative_data=x[:16])
tfq.export.benchmark(tfl, runs=3, warmup=1)
warnings.warn("the user's own warning", UserWarning, stacklevel=1)
print("exported")
"""


def test_a_first_fit_and_export_in_a_fresh_program_warns_nothing():
    """In the suite an earlier conversion may have shown TensorFlow's once-per-location
    warnings already; a fresh interpreter with Python's default filters and TensorFlow's
    default log level sees what a user's program sees: no XLA notice from the first `fit`
    (tfquant's search is XLA-compiled), no converter warning, no deprecation of the
    interpreter its calibration runs, no LiteRT notice from timing the file with XNNPACK,
    and the user's own warning."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")
    }
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and "exported" in done.stdout, done.stderr[-2000:]
    assert "the user's own warning" in done.stderr
    for chatter in (
        *CONVERTER_CHATTER,
        *XLA_CHATTER,
        "tf.lite.Interpreter is deprecated",
        "XNNPACK delegate",
    ):
        assert chatter not in done.stderr, done.stderr


_LOAD_SCRIPT = """
import sys
import tfquant as tfq
from tfquant.models.datasets import load

(x, y), _ = load("digits", limit=(64, 8))
qmodel = tfq.load_model(sys.argv[1])
qmodel.compile("adam", tfq.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
qmodel.fit(x, y, epochs=1, verbose=0)
print("trained")
"""


def test_a_first_fit_of_a_loaded_model_is_quiet_too(tmp_path):
    """The XLA warm-up happens where every QAT model is built (its quantizers' `build`), so
    a fresh program that only loads a saved model and fits it sees no XLA notice either."""
    model = tfq.keras.Sequential(
        [tfq.keras.Input((8, 8, 1)), tfq.keras.layers.Flatten(), tfq.keras.layers.Dense(10)]
    )
    tfq.quantize_model(model, tfq.schemes.Multivalued(bits=3)).save(tmp_path / "saved")
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")
    }
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path / "saved")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]
    for chatter in XLA_CHATTER:
        assert chatter not in done.stderr, done.stderr


def test_xla_notices_are_recognised_and_nothing_else():
    assert _quiet.is_xla_chatter(
        "I0000 00:00:1796445552.480289    1856 service.cc:153] XLA service 0x7f4f initialized"
    )
    assert _quiet.is_xla_chatter(
        "I0000 00:00:1796445552.578598    1856 device_compiler.h:208] Compiled cluster using XLA!"
    )
    # an XLA error, or an informational line from elsewhere, is not chatter
    assert not _quiet.is_xla_chatter("E0000 00:00:1.5    1856 service.cc:153] XLA failed")
    assert not _quiet.is_xla_chatter("I0000 00:00:1.5    1856 my_op.cc:12] user's line")
    assert not _quiet.is_xla_chatter("Compiled cluster using XLA!")
    assert _quiet.is_litert_chatter("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert not _quiet.is_litert_chatter("ERROR: failed to create XNNPACK delegate")
