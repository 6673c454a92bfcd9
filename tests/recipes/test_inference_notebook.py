"""demo_notebooks/04_batched_inference.ipynb, run headless in a real Jupyter kernel (nbclient)."""
from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
import nbformat  # noqa: E402

from mpkit.recipes.inference import minilm_available  # noqa: E402
from tests.test_notebooks import ROOT, _code_cells_ok, _run_notebook, _with_repo_on_pythonpath  # noqa: E402

NOTEBOOK = ROOT / "demo_notebooks" / "04_batched_inference.ipynb"
BUDGET = 60  # seconds for the whole notebook, kernel start included


def test_inference_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:40]


def test_inference_notebook_runs_in_a_kernel(start_method, monkeypatch):
    _with_repo_on_pythonpath(monkeypatch)
    started = time.perf_counter()
    nb = _run_notebook(NOTEBOOK)
    elapsed = time.perf_counter() - started
    everything = _code_cells_ok(nb, start_method)
    assert f"start method: {start_method}" in everything
    assert "3000 embeddings of 64 numbers" in everything
    assert "same as calling the model directly: True" in everything
    ratio = re.search(r"batches of up to 128: +[\d,]+ items/s \(([\d.]+)x\)", everything)
    assert ratio and float(ratio.group(1)) > 2, everything
    lone = re.search(r"lone requests: median (\d+) ms, max (\d+) ms; max_wait \+ one call = (\d+) ms", everything)
    assert lone and int(lone.group(1)) >= 45, everything
    assert "accounted: True" in everything and "failed: 0" in everything
    if minilm_available():
        assert "200 embeddings of 384 numbers" in everything, everything
    else:
        assert "MiniLM skipped" in everything
    assert elapsed < BUDGET, f"the notebook took {elapsed:.0f} s"
