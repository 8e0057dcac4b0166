"""Keeps the tutorial notebooks clean for the repository: strips outputs, execution counts and
run metadata, and points each notebook's "Open in Colab" badge and Colab install cell at
GITHUB_REPO. Needs only the standard library.

    python colab/strip.py            # rewrite every colab/*.ipynb in place
    python colab/strip.py --check    # list the notebooks that need it; exit 1 if any
"""

import argparse
import json
import pathlib
import re
import sys

#: The GitHub "org/repo" that hosts tfquant: the one place to change it for a fork.
GITHUB_REPO = "tfquant/tfquant"
BRANCH = "main"
FOLDER = pathlib.Path(__file__).resolve().parent

_COLAB_URL = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"']+")
_PIP_URL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?:\.git)?(?=[\"'@#\s]|$)")
# Cell metadata that records a run rather than the content.
_RUN_METADATA = ("execution", "collapsed", "scrolled", "jupyter", "ExecuteTime")


def colab_url(name):
    """The Colab address of notebook `name` (e.g. "01_quickstart.ipynb") in GITHUB_REPO."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}/colab/{name}"


def pip_url():
    """What the Colab install cell installs: this project from GitHub."""
    return f"git+https://github.com/{GITHUB_REPO}"


def _source(cell):
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def clean(notebook, name):
    """Returns `notebook` (a parsed .ipynb dict) without outputs and with badge and install
    URL pointing at GITHUB_REPO; `name` is its file name."""
    notebook = json.loads(json.dumps(notebook))
    for cell in notebook.get("cells", []):
        source = _COLAB_URL.sub(colab_url(name), _source(cell))
        cell["source"] = _PIP_URL.sub(pip_url(), source).splitlines(keepends=True)
        for key in _RUN_METADATA:
            cell.get("metadata", {}).pop(key, None)
        cell.pop("id", None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    metadata = notebook.setdefault("metadata", {})
    for key in ("widgets", "papermill", "execution", "varInspector"):
        metadata.pop(key, None)
    metadata["language_info"] = {"name": "python"}
    notebook["nbformat"], notebook["nbformat_minor"] = 4, 4
    return notebook


def dumps(notebook):
    """The notebook as text, formatted like Jupyter writes it (indent 1, sorted keys)."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def notebooks(folder=FOLDER):
    """The tutorial notebooks, in order."""
    return sorted(pathlib.Path(folder).glob("[0-9][0-9]_*.ipynb"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report, change nothing")
    parser.add_argument("paths", nargs="*", help="notebooks (default: colab/NN_*.ipynb)")
    args = parser.parse_args(argv)
    dirty = []
    for path in [pathlib.Path(p) for p in args.paths] or notebooks():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cleaned = clean(notebook, path.name)
        if cleaned != notebook:  # compared as data: any JSON layout (Jupyter's, ruff's) is fine
            dirty.append(path)
            if not args.check:
                path.write_text(dumps(cleaned), encoding="utf-8")
    for path in dirty:
        print(f"{'needs stripping' if args.check else 'stripped'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
