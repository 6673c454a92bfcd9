"""The demo notebooks, run headless in a real Jupyter kernel (nbclient), as a user would see them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "demo_notebooks" / "01_quickstart.ipynb"
CELL_TIMEOUT = 60        # seconds per cell; the whole quickstart takes a few seconds
STARTUP_TIMEOUT = 60     # seconds for the kernel to start on a busy machine
CLI_TIMEOUT = 100        # seconds for `python -m mpkit demo`, kernel start included


def _with_repo_on_pythonpath(monkeypatch) -> None:
    """The kernel starts in the notebook's folder: let it import this checkout's mpkit."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *paths]))


def _text(cell) -> str:
    """All text a code cell showed: streams, plain-text results and errors."""
    out = []
    for output in cell.get("outputs", []):
        kind = output["output_type"]
        if kind == "stream":
            out.append(output["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(output.get("data", {}).get("text/plain", "") + "\n")
        elif kind == "error":
            out.append(f"{output['ename']}: {output['evalue']}\n")
    return "".join(out)


def _code_cells_ok(nb, start_method: str | None = None) -> str:
    """Assert no code cell failed; return all the text the cells showed."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [(c.source.splitlines()[0], _text(c)) for c in code
              if any(o["output_type"] == "error" for o in c.outputs)]
    assert not errors, f"cells failed under {start_method or 'the default start method'}: {errors}"
    return "\n".join(_text(c) for c in code)


def _run_notebook(path: Path):
    nb = nbformat.read(path, as_version=4)
    # One cell more, to check the kernel used the start method under test.
    nb.cells.append(nbformat.v4.new_code_cell(
        "from mpkit.engine import default_start_method\n"
        "print('start method:', default_start_method())"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     startup_timeout=STARTUP_TIMEOUT, allow_errors=True,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def test_quickstart_is_stored_without_outputs():
    nb = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the quickstart has no code cells"
    for cell in code:
        assert cell.outputs == [], f"stored outputs in cell {cell.source[:40]!r}"
        assert cell.execution_count is None, f"stored execution count in cell {cell.source[:40]!r}"
    assert any(c.cell_type == "markdown" for c in nb.cells)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_quickstart_runs_in_a_kernel(start_method, monkeypatch):
    _with_repo_on_pythonpath(monkeypatch)
    nb = _run_notebook(QUICKSTART)
    code = [c for c in nb.cells if c.cell_type == "code"]

    errors = [(c.source.splitlines()[0], _text(c)) for c in code
              if any(o["output_type"] == "error" for o in c.outputs)]
    assert not errors, f"cells failed under {start_method}: {errors}"
    assert all(c.execution_count is not None for c in code), "not every code cell ran"

    text = {c.source.splitlines()[0]: _text(c) for c in code}
    everything = "\n".join(text.values())
    assert f"start method: {start_method}" in everything

    # mpkit.map with a function defined in a cell
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121]" in everything
    # %%mp_pool: worker prints, prefixed with the worker, in the magic's own cell
    magic_out = next(out for first, out in text.items() if first.startswith("%%mp_pool"))
    worker_lines = re.findall(r"^\[w\d+\] measuring '(\w+)' in process \d+$", magic_out, re.MULTILINE)
    assert sorted(worker_lines) == sorted(["apple", "banana", "cherry", "kiwi", "mango", "plum"])
    assert "lengths: [5, 6, 6, 4, 5, 4]" in everything
    # on_error="collect": the successes, and the failure listed
    assert "results: [1.0, 0.5, 0.25] (+1 failed)" in everything
    assert "failed: item 0 (index 2): ZeroDivisionError: division by zero" in everything
    # the warm pool answers at once
    warm = re.search(r"warm pool: (\d+) ms", everything)
    assert warm, everything
    assert int(warm.group(1)) < 5000


def test_demo_command_runs_the_quickstart():
    """`python -m mpkit demo` from the repository root: exit code 0 and a summary line."""
    env = dict(os.environ)
    env.pop("MPKIT_START_METHOD", None)
    proc = subprocess.run([sys.executable, "-m", "mpkit", "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = sum(c.cell_type == "code" for c in nbformat.read(QUICKSTART, as_version=4).cells)
    summary = rf"^mpkit demo: {cells} of {cells} code cells run in [\d.]+ s: OK$"
    assert re.search(summary, proc.stdout, re.MULTILINE), proc.stdout
    assert "[1] %load_ext mpkit" in proc.stdout
    assert re.search(r"^    \[w\d+\] measuring 'apple' in process \d+$", proc.stdout, re.MULTILINE), proc.stdout
    assert "ZeroDivisionError: division by zero" in proc.stdout


PIPELINE = ROOT / "demo_notebooks" / "02_pipeline_dashboard.ipynb"


def test_pipeline_demo_runs_and_saves_final_totals(start_method, monkeypatch):
    _with_repo_on_pythonpath(monkeypatch)
    nb = _run_notebook(PIPELINE)
    everything = _code_cells_ok(nb, start_method)
    assert f"start method: {start_method}" in everything
    assert "3000 predictions" in everything
    assert "largest batch: 128" in everything
    assert re.search(r"lone request answered in [\d.]+ s, in a batch of 1", everything)
    assert "accounted: True" in everything
    assert "2000 results, in input order: [0, 1, 2, 3, 4]" in everything
    # The saved notebook keeps each dashboard as its static summary, with the final totals equal
    # to the true counts, and no widget of it (they were closed at the end).
    summaries = _summaries(nb)
    assert len(summaries) == 2, summaries                  # the service's (3000 + 2 requests), then the run's
    assert "stopped" in summaries[0] and "completed 3,002" in summaries[0], summaries[0]
    assert "finished" in summaries[1] and "submitted 2,000" in summaries[1] and "completed 2,000" in summaries[1]
    # no output needs a widget (nbclient keeps the state of closed models in the metadata, as
    # no front-end does; the outputs no longer point at them)
    widget = "application/vnd.jupyter.widget-view+json"
    assert not [out for cell in nb.cells for out in cell.get("outputs", []) if widget in out.get("data", {})]


def _summaries(nb) -> list[str]:
    """The text of each dashboard's static summary the saved notebook keeps, in output order."""
    return [re.sub(r"<[^>]+>", " ", "".join(out.get("data", {}).get("text/html", "")))
            for cell in nb.cells for out in cell.get("outputs", [])
            if "mpkit-summary" in "".join(out.get("data", {}).get("text/html", ""))]


def _streams(nb, name: str) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o["output_type"] == "stream" and o["name"] == name)


def test_dialogue_demo_runs(monkeypatch):
    _with_repo_on_pythonpath(monkeypatch)
    nb = _run_notebook(ROOT / "demo_notebooks" / "03_dialogue_cleaning.ipynb")
    everything = _code_cells_ok(nb)
    assert "the same dialogue, reversed" in everything
    assert "11,739 rows read" in everything
    assert "Warning" not in _streams(nb, "stderr"), _streams(nb, "stderr")  # a newcomer's first cell: no warning
    # the writers' dashboard counts conversations (500, and 501 in the seed mode), not messages
    texts = " ".join(_summaries(nb))
    assert re.search(r"submitted\W+500\b", texts) and re.search(r"submitted\W+501\b", texts), texts[:2000]


def test_batched_inference_demo_runs(monkeypatch):
    _with_repo_on_pythonpath(monkeypatch)
    nb = _run_notebook(ROOT / "demo_notebooks" / "04_batched_inference.ipynb")
    everything = _code_cells_ok(nb)
    assert "3000 embeddings" in everything and "same as calling the model directly: True" in everything
    assert "accounted: True" in everything
    assert "Warning" not in _streams(nb, "stderr"), _streams(nb, "stderr")


def test_dask_demo_runs_on_a_local_cluster(monkeypatch):
    """05_dask_cluster: a map, the dialogue recipe and the inference pipeline on a LocalCluster the
    notebook starts (its workers inherit the kernel's environment, so they import this mpkit)."""
    pytest.importorskip("distributed")
    _with_repo_on_pythonpath(monkeypatch)
    everything = _code_cells_ok(_run_notebook(ROOT / "demo_notebooks" / "05_dask_cluster.ipynb"))
    assert "2 Dask workers" in everything
    assert "100000 results; first: [7, 8, 11] | same as local: True" in everything
    assert "11,739 rows read" in everything
    assert "3000 embeddings in" in everything and "same as calling the model here: True" in everything
    assert "submitted: 3001 | completed: 3001 | accounted: True" in everything
    assert "worker processes of the Counter stage: 1" in everything
