"""Notebooks execute top to bottom against a real warehouse, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["00_tables.ipynb", "01_explore_augmented.ipynb"])
def test_notebook_executes_on_the_default_run(name, default_run, monkeypatch):
    ctx, _ = default_run
    monkeypatch.setenv("RECAUG_WAREHOUSE", ctx.warehouse.root)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code")
