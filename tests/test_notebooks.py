"""The Colab tutorials in colab/: each runs top to bottom in quick mode (TFQUANT_QUICK=1) in a
kernel of this interpreter, prints at least one figure where it promises one, and is stored
without outputs, with its Colab badge and Colab-only install cell."""

import importlib.util
import json
import pathlib
import sys

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
KERNEL = "tfquant-tests"
# Figures (image/png outputs) each notebook draws; 05 and 07 print tables only.
FIGURES = {
    "01_quickstart.ipynb": 1,
    "02_mpa_lenet5_mnist.ipynb": 3,
    "03_ternary_and_learned_bases.ipynb": 2,
    "04_compression.ipynb": 3,
    "05_export_and_latency.ipynb": 0,
    "06_cifar10_resnet20.ipynb": 2,
    "07_microcontroller.ipynb": 0,
}


def _strip_module():
    spec = importlib.util.spec_from_file_location("colab_strip", COLAB / "strip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


strip = _strip_module()
NOTEBOOKS = [path.name for path in strip.notebooks(COLAB)]


def test_every_tutorial_is_listed():
    assert NOTEBOOKS == sorted(FIGURES)


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A kernelspec that starts ipykernel with this interpreter (not whatever `python3` a
    user-level Jupyter install would pick), in quick mode."""
    assert importlib.util.find_spec("ipykernel"), "pip install -e '.[test]' (needs ipykernel)"
    folder = tmp_path_factory.mktemp("kernels")
    spec = folder / KERNEL
    spec.mkdir()
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tfquant tests",
        "language": "python",
        "env": {"TFQUANT_QUICK": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"},
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return [str(folder)]


def _outputs(notebook):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_quick_mode(name, kernel_dirs, tmp_path):
    notebook = nbformat.read(COLAB / name, as_version=4)
    notebook.cells.append(
        nbformat.v4.new_code_cell('assert QUICK, "TFQUANT_QUICK=1 did not reach the kernel"')
    )
    manager = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
    )
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == FIGURES[name]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_repo_copy_is_stripped(name):
    raw = json.loads((COLAB / name).read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{name} has outputs: run `python colab/strip.py`"
            )
    assert strip.clean(raw, name) == raw, f"{name} is not clean: run `python colab/strip.py`"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_badge_and_colab_only_install_cell(name):
    notebook = nbformat.read(COLAB / name, as_version=4)
    first, install = notebook.cells[0], notebook.cells[1]
    assert first.cell_type == "markdown"
    assert "[![Open In Colab]" in first.source and strip.colab_url(name) in first.source
    assert install.cell_type == "code"
    assert 'if "google.colab" in sys.modules:' in install.source
    assert strip.pip_url() in install.source
    compile(install.source, name, "exec")  # plain Python, no shell magic: a no-op outside Colab
    assert "TFQUANT_QUICK" in notebook.cells[2].source


def test_strip_removes_outputs_and_fixes_urls(tmp_path):
    name = "01_quickstart.ipynb"
    notebook = json.loads((COLAB / name).read_text(encoding="utf-8"))
    notebook["cells"][0]["source"] = [
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        "(https://colab.research.google.com/github/someone/fork/blob/dev/colab/old.ipynb)\n"
    ]
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    code["source"] = "".join(code["source"]).replace(
        strip.pip_url(), "git+https://github.com/a/b.git"
    )
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    code["execution_count"] = 3
    code["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    path = tmp_path / name
    path.write_text(json.dumps(notebook), encoding="utf-8")
    assert strip.main(["--check", str(path)]) == 1
    assert strip.main([str(path)]) == 0
    assert strip.main(["--check", str(path)]) == 0
    cleaned = json.loads(path.read_text(encoding="utf-8"))
    assert strip.colab_url(name) in "".join(cleaned["cells"][0]["source"])
    code = next(c for c in cleaned["cells"] if c["cell_type"] == "code")
    assert f'"tfquant[micro] @ {strip.pip_url()}"' in "".join(code["source"])
    assert code["outputs"] == [] and code["execution_count"] is None
    assert "execution" not in code["metadata"]
