"""examples/quickstart.ipynb runs top to bottom (on synthetic ML-1M, a tiny model, seconds of training), so the
notebook cannot silently rot; and it is committed with its outputs cleared."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import TINY

from data_processor import write_synthetic_ml1m

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_runs_top_to_bottom(tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="nbclient runs the notebook (requirements-extra.txt)")
    pytest.importorskip("matplotlib", reason="the notebook draws its pictures (requirements-extra.txt)")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m")
    out = tmp_path / "run"
    flags = [*TINY, "--max_epochs", "3"]
    parameters.source = f"DATA_DIR = {str(data_dir)!r}\nOUT = {str(out)!r}\nMINUTES = 0.5\nMODEL_FLAGS = {flags!r}"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "\n".join(output.get("data", {}).get("text/plain", "") + output.get("text", "") for output in outputs)
    assert "NDCG@10" in text and "predicted_rating" in text and "demographics" in text  # metrics, top 10, newcomer
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 2  # the explanation's influence chart and the training curves
    assert {"best_model.pt", "results.json", "metadata.json", "why.png", "curves.png"} <= {
        path.name for path in out.iterdir()}
