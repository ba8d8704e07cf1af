"""The notebooks execute top to bottom (nbclient, the current venv's kernel) on small settings: the tiny random
model and a handful of prompts, injected into each notebook's ``parameters`` cell. They share one run directory,
so later notebooks reuse the stages earlier ones computed, as they would for a user."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


def test_every_notebook_is_tested() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_quickstart.ipynb", "02_probes_by_layer.ipynb", "03_steering_and_patching.ipynb"]


@pytest.mark.parametrize("name", ["01_quickstart", "02_probes_by_layer", "03_steering_and_patching"])
def test_notebook_executes(name: str, workdir: Path, tiny_model_path: Path, tiny_run_sets: list[str]) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "each notebook has exactly one cell tagged 'parameters'"
    sets = [f"model.name={tiny_model_path}", *tiny_run_sets]
    params[0].source = f'CONFIG = "default"\nOUT = {str(workdir / "run")!r}\nSETS = {sets!r}'
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert images, f"{name} drew no figure"
    logic = [
        c.source for c in nb.cells if c.cell_type == "code" and ("def " in c.source or "class " in c.source)
    ]
    assert not logic, "notebooks import the library; they define no functions or classes of their own"
