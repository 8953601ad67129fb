"""Notebooks execute top to bottom against a real warehouse, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# notebook → the session fixture whose warehouse it reads (02 needs the metrics table of the train stage)
WAREHOUSE_FIXTURE = {"00_tables.ipynb": "default_run", "01_explore_augmented.ipynb": "default_run",
                     "02_compare_runs.ipynb": "trained_run"}


@pytest.mark.parametrize("name", list(WAREHOUSE_FIXTURE))
def test_notebook_executes_on_the_default_run(name, request, monkeypatch):
    ctx = request.getfixturevalue(WAREHOUSE_FIXTURE[name])[0]
    monkeypatch.setenv("RECAUG_WAREHOUSE", ctx.warehouse.root)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{name}: saved with outputs"
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code")
