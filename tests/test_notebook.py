"""examples/quickstart.ipynb runs end to end in a real Jupyter kernel (nbclient + ipykernel, the `dev` extra), as a
user would run it: every cell without an error, the forecast table, the fan chart and the verdicts shown.
About 40-60 s on 2 CPU cores."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
VERDICTS = ("better", "no significant difference", "worse")


def test_the_notebook_is_kept_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code), \
        "clear the outputs before committing (Jupyter: Edit > Clear Outputs of All Cells)"


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch):
    """A "python3" kernelspec that starts this interpreter (the venv's, which has pricegpt), found first through
    JUPYTER_PATH: whatever other python3 kernel the machine has registered is not used."""
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[dev]')")
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pricegpt tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        for mime in ("text/plain", "text/html"):
            parts.append(output.get("data", {}).get(mime, ""))
    return "".join(parts)


def test_the_quickstart_notebook_runs_end_to_end(tmp_path, kernel_of_this_python):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
    import nbformat

    work = tmp_path / "work"
    work.mkdir()
    copy = shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # a cell's error raises CellExecutionError with the cell and its traceback

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    text = "\n".join(_text(cell) for cell in code)
    assert "price_0.9" in text and "AAPL" in text  # the predict_df table
    assert any("image/png" in o.get("data", {}) for cell in code for o in cell.outputs)  # the fan chart
    assert "against the best baseline" in text and any(verdict in text for verdict in VERDICTS)
    assert "random_walk" in text and "crps_ratio" in text  # the comparison table
