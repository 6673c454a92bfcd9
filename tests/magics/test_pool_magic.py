"""``%%mp_pool`` in a real IPython shell: the line, the cell, worker output, errors, help."""
from __future__ import annotations

import os
import re
import sys
import textwrap

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import mpkit
from mpkit.engine import _default
from tests.proctree import wait_until
from tests.shell import ip, ipython  # noqa: F401  (fixtures: a kernel-like shell)


def mp_pool(ip, line: str, cell: str):
    """Run ``%%mp_pool LINE`` over ``cell`` as a direct call: exceptions reach the test."""
    return ip.run_cell_magic("mp_pool", line, textwrap.dedent(cell).lstrip("\n"))


def run_cell(ip, line: str, cell: str):
    """Run the magic as a notebook cell would be run: (execution result, captured output)."""
    body = textwrap.dedent(cell).lstrip("\n")
    source = f"%%mp_pool {line}\n{body}"
    with capture_output() as captured:
        result = ip.run_cell(source, store_history=True)
    return result, captured


def ipython_shows(ip, exc: BaseException) -> str:
    """The traceback IPython prints for ``exc`` (without colours)."""
    ip.run_line_magic("colors", "nocolor")
    return ip.InteractiveTB.text(type(exc), exc, exc.__traceback__)


DOUBLE = """
def double(x):
    return 2 * x
"""


# ---- the line: items, -o, -f ---------------------------------------------------------------
def test_items_expression_with_spaces_and_a_string_filter(ip, start_method):
    ip.user_ns["paths"] = ["a.xlsx", "b.csv", "c.xlsx", "d.txt"]
    out = mp_pool(ip, '[p for p in paths if p.endswith(".xlsx")] -n 2 --no-progress', """
        def stem(path):
            return path.rsplit(".", 1)[0].upper()
    """)
    assert out == ["A", "C"]


def test_items_with_minus_signs(ip, start_method):
    assert mp_pool(ip, "[1, -1, 2] -o r --no-progress", DOUBLE) is None
    assert ip.user_ns["r"] == [2, -2, 4]


@pytest.mark.parametrize("line, expected", [
    ("range(-2, 2) -o r", [-4, -2, 0, 2]),
    ("[a -b for a, b in pairs] -o r", [-2, 4]),          # "-b" is subtraction, not a flag
    ('["x -o y", "-n"] -o r', ["x -o yx -o y", "-n-n"]),  # flags inside a string
    ("nums -n 2 -o r", [2, 4, 6]),
])
def test_items_expressions_that_look_like_options(ip, start_method, line, expected):
    ip.user_ns["pairs"] = [(1, 2), (5, 3)]
    ip.user_ns["nums"] = [1, 2, 3]
    mp_pool(ip, line + " --no-progress", DOUBLE)
    assert ip.user_ns["r"] == expected


def test_without_out_the_results_are_the_cell_value(ip, start_method):
    result, _ = run_cell(ip, "[3, 4] -n 2 --no-progress", DOUBLE)
    assert result.success, result.error_in_exec
    assert result.result == [6, 8]


def test_func_option_picks_a_function(ip, start_method):
    out = mp_pool(ip, "[1, 2, 3] -f first -n 2 --no-progress", """
        def first(x):
            return helper(x) + 1

        def helper(x):
            return x * 10

        def last(x):
            return "not me"
    """)
    assert out == [11, 21, 31]


def test_default_is_the_last_top_level_function(ip, start_method):
    out = mp_pool(ip, "[1, 2] -n 2 --no-progress", """
        import math

        def first(x):
            return "not me"

        class Shape:
            def area(self, x):
                return "not me either"

        def last(x):
            def inner(y):          # nested: not a candidate
                return y
            return inner(x) + math.floor(0.5)
    """)
    assert out == [1, 2]


def test_cell_functions_are_defined_in_the_notebook(ip, start_method):
    mp_pool(ip, "[1] -n 1 --no-progress", """
        class Point:
            def __init__(self, x):
                self.x = x

        def helper(x):
            return x + 100

        def go(x):
            return helper(x)
    """)
    assert ip.user_ns["go"](1) == 101
    assert ip.user_ns["helper"](2) == 102
    assert ip.user_ns["Point"](3).x == 3
    # and a notebook cell can call them
    result = ip.run_cell("go(5) + helper(0)")
    assert result.result == 205


# ---- options -----------------------------------------------------------------------------
def test_share_sends_notebook_values_as_globals(ip, start_method):
    ip.user_ns["offset"] = 10
    ip.user_ns["table"] = {"a": 1, "b": 2}
    out = mp_pool(ip, "['a', 'b'] -n 2 --share offset,table --no-progress", """
        def look_up(key):
            return offset + table[key]
    """)
    assert out == [11, 12]


def test_share_sends_the_current_values_to_warm_workers(ip, start_method):
    cell = """
        def scaled(x):
            return x * factor
    """
    ip.user_ns["factor"] = 2
    assert mp_pool(ip, "[1, 2, 3] -n 2 --share factor --no-progress", cell) == [2, 4, 6]
    ip.user_ns["factor"] = 5
    assert mp_pool(ip, "[1, 2, 3] -n 2 --share factor --no-progress", cell) == [5, 10, 15]


def test_unordered(ip, start_method):
    mp_pool(ip, "[1, 2] -n 2 --no-progress", DOUBLE)  # start the workers
    assert wait_until(lambda: len(_default.get_pool().pids()) == 2, timeout=20)
    out = mp_pool(ip, "range(6) -n 2 --unordered --chunksize 1 --no-progress", """
        import time

        def slow_first(x):
            time.sleep(0.5 if x == 0 else 0.0)
            return x
    """)
    assert sorted(out) == list(range(6))
    assert out.index(0) > 0, out  # the other worker's results came in while item 0 slept


def test_on_error_collect(ip, start_method):
    assert mp_pool(ip, "[1, 0, 2, 0] -n 2 -o r --on-error collect --no-progress", """
        def invert(x):
            return 1 / x
    """) is None
    r = ip.user_ns["r"]
    assert list(r) == [1.0, 0.5]
    assert [(f.index, f.item) for f in r.failures] == [(1, 0), (3, 0)]
    assert all(isinstance(f.exception, ZeroDivisionError) for f in r.failures)


def test_on_error_skip_warns_and_counts(ip, start_method):
    with pytest.warns(mpkit.MpkitWarning, match="1 of 3 items failed"):
        out = mp_pool(ip, "[1, 0, 2] -n 2 --on-error skip --no-progress", """
            def invert(x):
                return 1 / x
        """)
    assert list(out) == [1.0, 0.5]
    assert len(out.failures) == 1


def test_retries(ip, start_method, tmp_path):
    ip.user_ns["marker_dir"] = str(tmp_path)
    cell = """
        import os

        def flaky(x):
            marker = os.path.join(marker_dir, str(x))
            if not os.path.exists(marker):      # fails the first time it sees x
                open(marker, "w").close()
                raise RuntimeError(f"first attempt at {x}")
            return x
    """
    assert mp_pool(ip, "[1, 2, 3] -n 2 --retries 1 --share marker_dir --no-progress", cell) == [1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


def test_without_retries_the_first_attempt_fails(ip, start_method, tmp_path):
    ip.user_ns["marker_dir"] = str(tmp_path)
    with pytest.raises(RuntimeError, match="first attempt at 1"):
        mp_pool(ip, "[1] -n 1 --share marker_dir --no-progress", """
            import os

            def flaky(x):
                marker = os.path.join(marker_dir, str(x))
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    raise RuntimeError(f"first attempt at {x}")
                return x
        """)


def test_chunksize_sends_items_in_chunks(ip, start_method):
    out = mp_pool(ip, "range(6) -n 2 --chunksize 3 --no-progress", """
        import os
        import time

        def where(x):
            time.sleep(0.01)
            return os.getpid()
    """)
    assert len(out) == 6
    # a chunk runs in one worker
    assert len(set(out[:3])) == 1 and len(set(out[3:])) == 1


def test_timeout(ip, start_method):
    out = mp_pool(ip, "[0, 5, 0] -n 2 --timeout 0.5 --on-error collect --no-progress", """
        import time

        def nap(seconds):
            time.sleep(seconds)
            return seconds
    """)
    assert list(out) == [0, 0]
    assert [f.index for f in out.failures] == [1]
    assert isinstance(out.failures[0].exception, mpkit.TaskTimeout)


def test_start_method_option(ip, start_method):
    """--start-method spawn wins over the session default (forkserver's workers are not our children)."""
    out = mp_pool(ip, "[1, 2] -n 2 --start-method spawn --no-progress", """
        import os

        def parent(_):
            return os.getppid()
    """)
    assert out == [os.getpid(), os.getpid()]
    assert _default.get_pool(start_method="spawn").start_method == "spawn"


# ---- worker errors -----------------------------------------------------------------------
RAISES = """
def check(x):
    if x == 2:
        raise ValueError(f"bad item {x}")
    return x
"""


def test_worker_exception_has_the_original_type_and_names_the_cell(ip, start_method):
    with pytest.raises(ValueError, match="bad item 2") as info:
        mp_pool(ip, "[1, 2, 3] -n 2 --no-progress", RAISES)
    text = ipython_shows(ip, info.value)
    assert re.search(r"Cell In\[\d+\], line 4, in check", text), text  # line 1 is the magic
    assert 'raise ValueError(f"bad item {x}")' in text


def test_worker_exception_shown_in_a_cell(ip, start_method):
    result, captured = run_cell(ip, "[1, 2, 3] -n 2 --no-progress", RAISES)
    assert isinstance(result.error_in_exec, ValueError)
    shown = captured.stdout + captured.stderr
    assert re.search(r"Cell In\[\d+\], line 4, in check", shown), shown
    assert 'raise ValueError(f"bad item {x}")' in shown
    assert "ValueError: bad item 2" in shown
    assert "raised in mpkit worker" in shown


def test_worker_traceback_names_the_number_of_the_cell_that_ran(ip, start_method):
    result, captured = run_cell(ip, "[1, 2, 3] -n 2 --no-progress", RAISES)
    number = result.execution_count
    shown = captured.stdout
    assert f"Cell In[{number}], line 4, in check" in shown, shown
    assert "run_cell_magic" not in shown  # the line IPython calls the magic through: the cell as a string


def test_exception_class_defined_in_the_cell(ip, start_method):
    with pytest.raises(Exception) as info:
        mp_pool(ip, "[1, 2] -n 2 --no-progress", """
            class BadItem(Exception):
                pass

            def check(x):
                if x == 2:
                    raise BadItem(x)
                return x
        """)
    assert type(info.value) is ip.user_ns["BadItem"]  # `except BadItem:` works in the notebook


# ---- bad input: a one-line UsageError, no traceback, no process started ------------------
BAD_INPUT = [
    pytest.param("[1, 2] -f nope", DOUBLE, r"-f nope: no function named 'nope'.*defined here: double",
                 id="unknown-func"),
    pytest.param("[1, 2]", "x = 1\n", r"defines no function to map", id="no-function"),
    pytest.param("[1, 2]", "def f(x):\n    return x +\n", r"syntax error in the cell at line 3",
                 id="syntax-error"),
    pytest.param("[1, 2] --share nothere", DOUBLE, r"--share nothere: there is no variable 'nothere'",
                 id="undefined-share"),
    pytest.param("42", DOUBLE, r"the items '42' evaluate to int 42, which is not iterable", id="not-iterable"),
    pytest.param("undefined_items", DOUBLE,
                 r"evaluating the items 'undefined_items' failed: NameError: name 'undefined_items'",
                 id="items-name-error"),
    pytest.param("[1, 2] --bogus", DOUBLE, r"unrecognized arguments: --bogus", id="unknown-flag"),
    pytest.param("[1, 2] -z 3", DOUBLE, r"unrecognized arguments: -z", id="unknown-short-flag"),
    pytest.param("[1, 2] -n two", DOUBLE, r"invalid int value: 'two'", id="bad-workers"),
    pytest.param("[1, 2] --chunksize 0", DOUBLE, r"--chunksize takes 'auto' or a positive whole number",
                 id="bad-chunksize"),
    pytest.param("[1, 2] --on-error maybe", DOUBLE, r"invalid choice: 'maybe'", id="bad-on-error"),
    pytest.param("-n 2", DOUBLE, r"needs the items first", id="no-items"),
    pytest.param("[1, 2] -n 2 extra", DOUBLE, r"unexpected text after the options: 'extra'", id="extra-text"),
]


def _assert_one_line_usage_error(ip, line, cell, message):
    with pytest.raises(UsageError) as info:
        mp_pool(ip, line, cell)
    text = str(info.value)
    assert re.search(message, text), text
    assert "\n" not in text, f"not one line: {text!r}"
    assert _default._pool is None, "bad input started a pool"


@pytest.mark.parametrize("line, cell, message", BAD_INPUT)
def test_bad_input_raises_a_usage_error(ip, line, cell, message):
    _assert_one_line_usage_error(ip, line, cell, message)


@pytest.mark.parametrize("line, cell, message", BAD_INPUT)
def test_bad_input_in_a_cell_shows_no_traceback(ip, line, cell, message):
    result, captured = run_cell(ip, line, cell)
    assert isinstance(result.error_in_exec, UsageError)
    shown = captured.stdout + captured.stderr
    assert re.search("UsageError: .*" + message, shown), shown
    assert "Traceback" not in shown and "---->" not in shown, shown


# ---- warm workers, redefined cells ---------------------------------------------------------
def test_a_redefined_cell_runs_its_new_code_on_warm_workers(ip, start_method):
    line = "[1, 2, 3, 4] -n 2 --no-progress"
    first = mp_pool(ip, line, """
        import os

        def version(x):
            return ("old", os.getpid())
    """)
    warm = set(_default.get_pool().pids())
    assert {tag for tag, _ in first} == {"old"}
    second = mp_pool(ip, line, """
        import os

        def version(x):
            return ("new", os.getpid())
    """)
    assert {tag for tag, _ in second} == {"new"}
    assert {pid for _, pid in second} <= warm, "the second run did not use the warm workers"
    assert ip.user_ns["version"](0)[0] == "new"


def test_rerunning_the_same_cell_on_warm_workers(ip, start_method):
    for _ in range(2):
        assert mp_pool(ip, "[1, 2] -n 2 --no-progress", DOUBLE) == [2, 4]


# ---- worker output -----------------------------------------------------------------------
CHATTY = """
import sys

def chatty(x):
    print(f"hello {x}")
    print(f"to stderr {x}", file=sys.stderr)
    return x
"""


@pytest.mark.parametrize("progress", ["", " --no-progress"])
def test_worker_prints_appear_with_the_worker_prefix(ip, start_method, progress):
    with capture_output() as captured:
        out = mp_pool(ip, "[1, 2, 3] -n 2" + progress, CHATTY)
    assert out == [1, 2, 3]
    hellos = re.findall(r"^\[w\d+\] hello (\d)$", captured.stdout, re.MULTILINE)
    assert sorted(hellos) == ["1", "2", "3"], captured.stdout
    # the text progress bar shares stderr: it rewrites its line after a carriage return
    errs = re.findall(r"^\[w\d+\] to stderr (\d)$", captured.stderr.replace("\r", "\n"), re.MULTILINE)
    assert sorted(errs) == ["1", "2", "3"], captured.stderr


def test_worker_prints_reach_pytest_capture(ip, start_method, capsys):
    mp_pool(ip, "[7] -n 1 --no-progress", CHATTY)
    assert re.search(r"^\[w\d+\] hello 7$", capsys.readouterr().out, re.MULTILINE)


# ---- help --------------------------------------------------------------------------------
def test_the_magic_documents_its_options(ip):
    info = ip.object_inspect("%%mp_pool")
    assert info["found"]
    doc = info["docstring"]
    for option in ("-n", "--workers", "-o", "--out", "-f", "--func", "--unordered", "--chunksize",
                   "--on-error", "--retries", "--timeout", "--share", "--start-method", "--no-progress"):
        assert option in doc, f"{option} missing from the help"
    assert "%%mp_pool paths -n 4 -o results" in doc


def test_the_help_shows_the_magic_as_it_is_typed(ip):
    """``%%mp_pool?`` in a notebook: the usage line starts with %%mp_pool, not %%%mp_pool."""
    doc = ip.object_inspect("%%mp_pool")["docstring"]
    assert "  %%mp_pool ITEMS [-n WORKERS]" in doc, doc[:200]
    assert "%%%" not in doc, doc[:200]


def test_help_flag(ip):
    with pytest.raises(UsageError, match="--share"):
        mp_pool(ip, "-h", DOUBLE)


# ---- cells whose module cannot be used as is ------------------------------------------------
def test_an_error_at_the_top_level_of_the_cell_raises_in_the_shell(ip):
    result, captured = run_cell(ip, "[1, 2] -n 2 --no-progress", """
        import no_such_module_for_mpkit_tests
        def f(x):
            return x
    """)
    assert isinstance(result.error_in_exec, ModuleNotFoundError)
    assert _default._pool is None, "a broken cell started a pool"


def test_an_error_at_the_top_level_of_the_cell_names_the_cell(ip):
    result, captured = run_cell(ip, "[1, 2] -n 2 --no-progress", """
        raise RuntimeError("top level of the cell")
        def f(x):
            return x
    """)
    assert isinstance(result.error_in_exec, RuntimeError)
    assert re.search(r"Cell In\[\d+\], line 2", captured.stdout), captured.stdout
    assert "mpkit-cells-" not in captured.stdout


def test_cell_label_after_reload_ext(ip, start_method, request):
    request.addfinalizer(_forget_cells_of_deleted_folders)
    cell = RAISES + "# a cell text used only by this test\n"
    with pytest.raises(ValueError):
        mp_pool(ip, "[1, 2] -n 2 --no-progress", cell)
    ip.run_line_magic("reload_ext", "mpkit")
    mpkit.shutdown()  # workers started after the reload (a warm one may still hold the old module)
    with pytest.raises(ValueError) as info:
        mp_pool(ip, "[1, 2] -n 2 --no-progress", cell)
    text = ipython_shows(ip, info.value)
    assert re.search(r"Cell In\[\d+\], line 4, in check", text), text


def _forget_cells_of_deleted_folders() -> None:
    """After a reload, keep cells imported from the old folder from reaching later tests."""
    for name, module in list(sys.modules.items()):
        if name.startswith("mp_cell_") and not os.path.exists(getattr(module, "__file__", "") or ""):
            del sys.modules[name]


# ---- bad options and cells the workers cannot run: one line, named, before any work ----------
ASYNC_CELL = """
import asyncio

async def fetch(x):
    await asyncio.sleep(0)
    return x
"""
GENERATOR_CELL = """
def numbers(x):
    yield from range(x)
"""
BAD_OPTIONS = [
    pytest.param("[1, 2] -o 1abc", DOUBLE, r"-o 1abc: .*'1abc' is not a valid Python variable name", id="out-digit"),
    pytest.param("[1, 2] -o x.y", DOUBLE, r"-o x\.y: .*'x\.y' is not a valid Python variable name", id="out-dotted"),
    pytest.param("[1, 2] -o for", DOUBLE, r"-o for: .*not a keyword", id="out-keyword"),
    pytest.param("[1, 2] -n 0", DOUBLE, r"-n 0: the number of worker processes must be 1 or more", id="workers-0"),
    pytest.param("[1, 2] --retries -1", DOUBLE, r"--retries -1: .*must be 0 or more", id="retries"),
    pytest.param("[1, 2] --timeout 0", DOUBLE, r"--timeout 0: .*more than 0", id="timeout-0"),
    pytest.param("[1, 2] --timeout 5 --chunksize 10", DOUBLE, r"--timeout 5 bounds each item.*--chunksize 10",
                 id="timeout-chunksize"),
    pytest.param("[1, 2]", ASYNC_CELL, r"fetch is an async function \(async def\).*asyncio\.run", id="async-def"),
    pytest.param("[1, 2]", GENERATOR_CELL, r"numbers is a generator function", id="generator"),
]


@pytest.mark.parametrize("line, cell, message", BAD_OPTIONS)
def test_bad_options_raise_a_usage_error_before_any_work(ip, line, cell, message):
    _assert_one_line_usage_error(ip, line, cell, message)
    assert "for" not in ip.user_ns and "x.y" not in ip.user_ns and "1abc" not in ip.user_ns


@pytest.mark.parametrize("line, cell, message", BAD_OPTIONS)
def test_bad_options_in_a_cell_show_no_traceback(ip, line, cell, message):
    result, captured = run_cell(ip, line, cell)
    assert isinstance(result.error_in_exec, UsageError)
    shown = captured.stdout + captured.stderr
    assert re.search("UsageError: .*" + message, shown), shown
    assert "Traceback" not in shown and "---->" not in shown, shown


def test_share_of_an_unpicklable_variable_names_the_variable(ip, start_method):
    ip.run_cell("import threading\nguard = threading.Lock()\nscale = 3")
    result, captured = run_cell(ip, "[1, 2] -n 1 --no-progress --share scale,guard", """
        def work(x):
            with guard:
                return x * scale
    """)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    shown = captured.stdout + captured.stderr
    assert re.search(r"--share guard: the notebook variable 'guard' \(lock\) cannot be pickled", shown), shown
    assert "CellFunction" not in shown and "Traceback" not in shown, shown


CHAINED = """
TABLE = {1: "one"}

def look_up(x):
    try:
        return TABLE[x]
    except KeyError as err:
        raise LookupError(f"no entry for {x}") from err
"""


def test_a_chained_worker_exception_shows_both_errors_with_their_cell_lines(ip, start_method):
    result, captured = run_cell(ip, "[1, 2] -n 1 --no-progress", CHAINED)
    err = result.error_in_exec
    assert type(err) is LookupError and type(err.__cause__) is KeyError, repr(err)
    shown = captured.stdout + captured.stderr
    number = result.execution_count
    at = 0
    for part in (f"Cell In[{number}], line 6, in look_up", "return TABLE[x]", "KeyError: 2",
                 "The above exception was the direct cause of the following exception:",
                 f"Cell In[{number}], line 8, in look_up", 'raise LookupError(f"no entry for {x}") from err',
                 "LookupError: no entry for 2", "raised in mpkit worker 1 on item 1: 2"):
        found = shown.find(part, at)
        assert found >= 0, f"{part!r} missing or out of order after position {at}:\n{shown}"
        at = found + len(part)
    assert "run_cell_magic" not in shown, shown  # no cell source passed to the magic as a string


def test_showing_a_map_interrupted_holds_interrupts_only_until_the_cell_ends(ip):
    import signal

    before = signal.getsignal(signal.SIGINT)
    with capture_output() as captured:
        result = ip.run_cell("import mpkit\nraise mpkit.MapInterrupted(mpkit.ResultList([10, 20]), [2], 3)",
                             store_history=True)
    assert isinstance(result.error_in_exec, mpkit.MapInterrupted)
    assert "MapInterrupted: interrupted after 2 of 3 items finished" in captured.stdout + captured.stderr
    assert signal.getsignal(signal.SIGINT) is before, "the interrupt handler was not given back after the cell"
    assert sys.last_value.results == [10, 20]


def test_init_option_sets_globals_the_cell_function_reads(ip, start_method):
    out = mp_pool(ip, "[1, 2, 3] -n 2 --init setup --no-progress", """
        SCALE = 1

        def setup():
            global SCALE
            SCALE = 100

        def work(x):
            return x * SCALE + 5
    """)
    assert out == [105, 205, 305]


def test_init_option_names_a_function_of_the_cell(ip, start_method):
    with pytest.raises(UsageError, match="--init nope: no function named 'nope'"):
        mp_pool(ip, "[1] --init nope --no-progress", DOUBLE)
