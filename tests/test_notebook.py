"""examples/quickstart.ipynb runs top to bottom under a real Jupyter kernel (a failing cell fails).

The kernel is this interpreter (a kernel spec written for the test, pointing at sys.executable),
with this checkout's `src` first on its path and a fresh data cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_under_a_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / "transferlab-test"
    spec.mkdir(parents=True)
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "transferlab test", "language": "python",
        # Jupyter's own inline backend (the suite may run with MPLBACKEND=Agg), so figures show.
        "env": {"PYTHONPATH": path, "TRANSFERLAB_DATA": str(tmp_path / "data"),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="transferlab-test", timeout=900,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "same labels" in text and "notebook ran in" in text
    shown = [out for cell in notebook.cells for out in cell.get("outputs", [])
             if out.get("output_type") == "execute_result"]
    assert any("text/html" in out["data"] for out in shown)  # Run, Evaluation, Predictions
    assert any("image/png" in out["data"] for out in shown)  # the confusion-matrix Figure
