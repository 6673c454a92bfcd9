"""What a notebook shows when a worker's item fails: the worker's frames with the cell's lines, the
item and the cause chain, and nothing of mpkit itself (no frame of its own, no cell source shown as
the string IPython passes to the magic); a worker's warning names the cell, not a temporary file.

Shown as a user sees it: the text IPython prints in a real shell, and the error a real kernel sends.
"""
from __future__ import annotations

import re

import pytest
from IPython.utils.capture import capture_output

from tests.kernels import KernelSession
from tests.shell import ip, ipython  # noqa: F401  (fixtures: a kernel-like shell)

pytestmark = pytest.mark.timeout(240)

MAGIC_CELL = '''%%mp_pool [1, 2, 0, 4] -n 2 --no-progress
import warnings

def invert(x):
    warnings.warn(f"careful with {x}")
    try:
        return 1 / x
    except ZeroDivisionError as err:
        raise ValueError(f"cannot invert {x}") from err
'''

MAP_CELL = '''import mpkit

def parse(text):
    try:
        return int(text)
    except ValueError as err:
        raise RuntimeError(f"cannot parse {text!r}") from err

mpkit.map(parse, ["1", "x", "3"], workers=2, progress=False)
'''

#: What a user must not see: mpkit's own frames, and the cell handed to the magic as a string.
NOT_SHOWN = ("mpkit/engine", "mpkit/magics", "mpkit/_api", "raise fatal", "run_cell_magic", "def invert(x):\\n")


def shown_in_shell(ip, source: str) -> tuple[int, str, str]:
    ip.run_line_magic("colors", "nocolor")
    with capture_output() as captured:
        result = ip.run_cell(source, store_history=True)
    assert result.error_in_exec is not None
    return result.execution_count, captured.stdout, captured.stderr


def _no_mpkit(text: str) -> None:
    for bad in NOT_SHOWN:
        assert bad not in text, f"{bad!r} is shown:\n{text}"


def test_a_failing_mp_pool_item_shows_the_cells_lines_and_the_chain_only(ip, start_method):
    number, out, _ = shown_in_shell(ip, MAGIC_CELL)
    _no_mpkit(out)
    assert f"Cell In[{number}], line 7, in invert" in out and "return 1 / x" in out, out
    assert f"Cell In[{number}], line 9, in invert" in out, out
    assert 'raise ValueError(f"cannot invert {x}") from err' in out
    assert "The above exception was the direct cause of the following exception" in out
    assert "ZeroDivisionError: division by zero" in out and "ValueError: cannot invert 0" in out
    assert re.search(r"raised in mpkit worker \d+ on item 2: 0", out), out


def test_a_failing_map_in_a_cell_shows_the_call_and_the_workers_frames(ip, start_method):
    number, out, _ = shown_in_shell(ip, MAP_CELL)
    _no_mpkit(out)
    assert f"Cell In[{number}], line 9" in out and "mpkit.map(parse" in out, out  # where the map was called
    assert f"Cell In[{number}], line 5, in parse" in out and "return int(text)" in out, out
    assert "RuntimeError: cannot parse 'x'" in out and re.search(r"on item 1: 'x'", out), out


def test_a_worker_that_dies_shows_no_mpkit_frame(ip, start_method):
    number, out, _ = shown_in_shell(ip, "import mpkit\nfrom tests import helpers\n"
                                        "mpkit.map(helpers.kill_self_on, range(6), workers=2, progress=False)")
    _no_mpkit(out)
    assert f"Cell In[{number}], line 3" in out and "WorkerDied" in out, out


def test_a_worker_warning_names_the_cell(ip, start_method):
    source = MAGIC_CELL.replace("[1, 2, 0, 4]", "[1, 2]")
    with capture_output() as captured:
        result = ip.run_cell(source, store_history=True)
    assert result.error_in_exec is None
    err = captured.stderr
    assert f"Cell In[{result.execution_count}], line 5: UserWarning: careful with 1" in err, err
    assert "mp_cell_" not in err and "mpkit-cells-" not in err, err


def _plain(lines: list[str]) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))


def test_in_a_kernel_the_error_and_warnings_name_the_cells_lines(start_method):
    kernel = KernelSession()
    try:
        kernel.run("%load_ext mpkit")
        cell = kernel.run(MAGIC_CELL, ok=False)
        shown = _plain(cell.error["traceback"])
        _no_mpkit(shown)
        # the arrow points at the line that failed, with that line's own text next to it
        assert re.search(r"----> 7\s+return 1 / x", shown), shown
        assert re.search(r"----> 9\s+raise ValueError", shown), shown
        assert "ValueError: cannot invert 0" in shown and "on item 2: 0" in shown
        number = cell.reply["execution_count"]
        assert f"Cell In[{number}], line 5: UserWarning: careful with 1" in cell.text("stderr"), cell.text("stderr")
        assert "mp_cell_" not in cell.text("stderr")

        cell = kernel.run(MAP_CELL, ok=False)
        shown = _plain(cell.error["traceback"])
        _no_mpkit(shown)
        assert re.search(r"----> 5\s+return int\(text\)", shown), shown
        assert re.search(r"----> 9\s+mpkit.map\(parse", shown), shown
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


PIPELINE_CELL = '''import mpkit

def parse(text):
    return int(text)

def scale(batch):
    return [10 / x for x in batch]

pipe = mpkit.Pipeline("parse").stage(parse, workers=2).batch(max_size=2, max_wait=0.1).stage(scale)
pipe.run(["1", "2", "0", "4"], progress=False)
'''


def test_a_failing_pipeline_stage_shows_the_cells_lines_and_no_mpkit_frame(ip, start_method):
    number, out, _ = shown_in_shell(ip, PIPELINE_CELL)
    _no_mpkit(out)
    assert f"Cell In[{number}], line 7, in scale" in out and "return [10 / x for x in batch]" in out, out
    assert "ZeroDivisionError: division by zero" in out and "stage 'scale'" in out, out
