"""The notebooks in notebooks/: each runs top to bottom in fast mode, and each is committed with its outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import REPO
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_tensors_and_autograd",
    "02_first_neural_network",
    "03_mlp_and_tensorboard",
    "04_from_logistic_regression_to_cnn",
    "05_keras_to_lightning",
    "06_why_did_it_say_3",
    "07_digits_from_elsewhere",
]


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _text(outputs: list[nbformat.NotebookNode]) -> str:
    parts = []
    for output in outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
        parts.extend(output.get("traceback", []))
    return "\n".join(parts)


def test_the_seven_notebooks_are_there():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_with_the_outputs_of_a_full_run(path: Path):
    """Readers on a code host see the outputs, so they must be there, complete and from a real run."""
    cells = _code_cells(nbformat.read(path, as_version=4))
    counts = [cell.execution_count for cell in cells]
    assert None not in counts, f"{path.name}: code cells without outputs; execute the notebook and save it"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: not run once, top to bottom, in one kernel"
    )
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert _text(cells[0].outputs).startswith("full run"), f"{path.name}: saved from a fast-mode run"
    assert any("image/png" in output.get("data", {}) for output in outputs), f"{path.name}: no plot"
    assert "site-packages" not in _text(outputs), f"{path.name}: a warning or traceback is in the outputs"


@pytest.fixture(scope="module")
def kernel_manager_for(tmp_path_factory):
    """Kernel managers that start this very interpreter (the project's venv), whatever Jupyter finds first."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / "lit_mnist_tests"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "lit_mnist", "language": "python"})
    )

    def make() -> AsyncKernelManager:
        specs = KernelSpecManager(kernel_dirs=[str(kernels)])
        return AsyncKernelManager(kernel_name="lit_mnist_tests", kernel_spec_manager=specs)

    return make


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_runs_in_fast_mode(path: Path, kernel_manager_for, monkeypatch):
    """Execute an in-memory copy with LIT_MNIST_FAST=1; any cell error fails the test."""
    monkeypatch.setenv("LIT_MNIST_FAST", "1")  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    client = NotebookClient(
        nb,
        km=kernel_manager_for(),
        timeout=600,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    assert _text(nb.cells[0].outputs).strip() == sys.prefix, "the kernel is not the project's interpreter"
    assert _text(_code_cells(nb)[1].outputs).startswith("fast mode"), (
        "the notebook did not see LIT_MNIST_FAST=1"
    )
