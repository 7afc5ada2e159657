"""docs/examples/quickstart.ipynb runs top to bottom in a real kernel."""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import pid_alive

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "examples" / "quickstart.ipynb"
KERNEL = "zfarm-test-python"
CELL_TIMEOUT = 120  # seconds per cell; the whole notebook takes a few seconds


@pytest.fixture()
def kernel_of_this_python(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter (the .venv with zfarm in it)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "zfarm tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return KERNEL


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output["text"]
    return output.get("data", {}).get("text/plain", "")


def test_quickstart_notebook_executes(kernel_of_this_python, tmp_path):
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, startup_timeout=CELL_TIMEOUT,
                                     kernel_name=kernel_of_this_python,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError if any cell fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = ["".join(_text(o) for o in c.outputs) for c in code]
    assert outputs[0].strip() == "[0, 1]"  # rc.ids
    assert outputs[2].strip() == "([100, 350], 450)"  # scatter, per-engine sums, total
    # The progress bar is a widget in a notebook (tqdm.auto picks it).
    bar = code[3].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in bar), bar
    assert "longest: 181 at n = 1161" in outputs[4]
    px = outputs[6]
    assert "[stdout:0] engine pid" in px and "[stdout:1] engine pid" in px
    assert "Out[0:" in px and "Out[1:" in px
    assert "[stdout:0] block on engine 0: [0, 1, 2, 3, 4] sum 10" in outputs[7]
    # Every process the notebook started is gone.
    pids = ast.literal_eval(outputs[-1].strip())
    assert len(pids) == 3
    assert not any(pid_alive(p) for p in pids)
    assert os.getpid() not in pids
