"""Front-ends plug into the engine through its observer interface: a bar or a panel of one's own
gets frozen snapshots of a map or a pipeline, and the engine itself imports no widgets and no IPython.
"""
from __future__ import annotations

import ast
import functools
import glob
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mpkit
import mpkit.engine
from tests import helpers, pipeline_tasks
from tests.proctree import REPO, child_env, wait_until

FRONT_END_MODULES = ("ipywidgets", "IPython", "mpkit.widgets", "tqdm")


class MapRecorder:
    """A map front-end of a test's own: keeps every call it gets."""

    def __init__(self, description, total):
        self.description, self.total = description, total
        self.updates, self.writes, self.finals = [], [], []

    def update(self, stats):
        self.updates.append(stats)

    def write(self, text, stream):
        self.writes.append((stream, text))

    def close(self, stats):
        self.finals.append(stats)


class PipelineRecorder:
    def __init__(self):
        self.updates, self.finals = [], []

    def update(self, stats):
        self.updates.append(stats)

    def close(self, stats):
        self.finals.append(stats)


def _made(cls):
    """A factory ``(description, total) -> bar`` that also remembers the bars it made."""
    made = []

    def factory(description, total):
        bar = cls(description, total)
        made.append(bar)
        return bar

    return factory, made


# ---- the engine stays free of front-ends ----------------------------------------------------------
def test_the_engine_runs_a_map_and_a_pipeline_without_importing_a_front_end(start_method):
    code = f"""
import sys
import mpkit.engine as engine
from tests import helpers

class Bar:
    def __init__(self, description, total): self.calls = []
    def update(self, stats): self.calls.append(stats)
    def write(self, text, stream): pass
    def close(self, stats): self.calls.append(stats); bars.append(self)

class Panel:
    def update(self, stats): pass
    def close(self, stats): panels.append(stats)

bars, panels = [], []
with engine.Pool(2, start_method={start_method!r}) as pool:
    assert pool.map(helpers.square, range(20), progress=Bar) == [x * x for x in range(20)]
    assert pool.map(helpers.square, range(5)) == [x * x for x in range(5)]   # the default: no bar
pipe = engine.Pipeline("plain").stage(helpers.double)
pipe.observe(Panel())
assert sorted(pipe.run(range(10), start_method={start_method!r})) == [2 * x for x in range(10)]
assert bars[0].calls[-1].done == 20 and panels[-1].completed == 10
print(sorted(m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'IPython', 'tqdm')
             or m.startswith('mpkit.widgets')))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_no_engine_module_imports_a_front_end_not_even_inside_a_function():
    engine = Path(mpkit.engine.__file__).parent
    found = []
    for path in sorted(glob.glob(str(engine / "**" / "*.py"), recursive=True)):
        tree = ast.parse(Path(path).read_text(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                if name.split(".")[0] in FRONT_END_MODULES or "widgets" in name:
                    found.append(f"{os.path.relpath(path, engine)}:{node.lineno} imports {name}")
    assert not found, found


# ---- maps --------------------------------------------------------------------------------------
def test_a_map_front_end_of_ones_own_sees_counts_grow_and_a_final_close_with_every_item(start_method):
    factory, made = _made(MapRecorder)
    with mpkit.engine.Pool(2, start_method=start_method) as pool:
        assert pool.map(helpers.chatty, range(6), progress=factory) == list(range(6))
        out = pool.map(helpers.fail_on, range(31), on_error="collect", chunksize=1, progress=factory)
        slow = pool.map(pipeline_tasks.slow, range(40), chunksize=1, progress=factory)
    assert len(made) == 3
    chatty, failing, bar = made
    assert (chatty.description, chatty.total) == ("chatty", 6)
    printed = "".join(text for stream, text in chatty.writes if stream == "stdout")
    assert all(f"item {i}" in printed for i in range(6)), chatty.writes
    assert len(chatty.finals) == 1 and chatty.finals[0].done == 6
    final = failing.finals[-1]
    assert len(failing.finals) == 1
    assert (final.done, final.failed, final.total) == (30, 1, 31) == (len(out), len(out.failures), 31)
    assert slow == list(range(40)) and len(bar.finals) == 1 and bar.finals[0].done == 40
    counts = [s.done + s.failed for s in bar.updates] + [bar.finals[0].done]
    assert counts == sorted(counts), counts           # never goes back
    assert all(type(s) is mpkit.MapStats for s in bar.updates + bar.finals + failing.updates)


def test_a_front_end_that_raises_does_not_break_the_map_and_is_reported(start_method, caplog):
    class Broken(MapRecorder):
        def update(self, stats):
            raise ValueError("the bar broke in update")

        def write(self, text, stream):
            raise ValueError("the bar broke in write")

        def close(self, stats):
            raise ValueError("the bar broke in close")

    with caplog.at_level(logging.ERROR, logger="mpkit"):
        with mpkit.engine.Pool(2, start_method=start_method) as pool:
            assert pool.map(helpers.chatty, range(8), progress=Broken) == list(range(8))
            out = list(pool.imap(helpers.square, range(50), chunksize=1, progress=Broken))
            assert out == [x * x for x in range(50)]
    assert "the bar broke in" in caplog.text


def test_a_stuck_map_front_end_does_not_hold_the_workers_back(start_method, tmp_path):
    """The front-end's first update waits until every item ran: it can only see that happen if the
    engine goes on without it (items are fed and results collected while it is stuck)."""
    n = 60
    path = str(tmp_path / "item")
    ran = lambda: len(glob.glob(path + ".*"))  # noqa: E731

    class Stuck(MapRecorder):
        seen_while_stuck = None

        def update(self, stats):
            if Stuck.seen_while_stuck is None:
                wait_until(lambda: ran() >= n, timeout=60)
                Stuck.seen_while_stuck = ran()
            super().update(stats)

    with mpkit.engine.Pool(2, start_method=start_method) as pool:
        out = pool.map(functools.partial(pipeline_tasks.touch, path=path), range(n), chunksize=1,
                       progress=Stuck)
    assert out == list(range(n))
    assert Stuck.seen_while_stuck == n


def test_progress_true_without_a_front_end_says_what_to_do(start_method):
    with mpkit.engine.Pool(1, start_method=start_method) as pool:
        with pytest.raises(ValueError, match=r"progress=True.*mpkit\.Pool.*factory"):
            pool.map(helpers.square, range(3), progress=True)
        with pytest.raises(ValueError, match=r"progress=True.*mpkit\.Pool.*factory"):
            pool.imap(helpers.square, range(3), progress=True)  # at the call, not at the first next()
    with pytest.raises(ValueError, match=r"progress=True.*'plain'.*mpkit\.Pipeline.*pipe\.observe"):
        mpkit.engine.Pipeline("plain").stage(helpers.double).run([1], progress=True, start_method=start_method)


# ---- pipelines ----------------------------------------------------------------------------------
def test_a_pipeline_front_end_of_ones_own_sees_counts_grow_and_every_item_at_the_close(start_method):
    watch = PipelineRecorder()
    pipe = (mpkit.engine.Pipeline("watched").stage(pipeline_tasks.slow, workers=2)
            .stage(helpers.fail_on, name="checker"))
    assert pipe.observe(watch) is watch
    out = pipe.run(range(40), on_error="collect", progress=False)
    assert len(out) == 39 and len(out.failures) == 1
    assert len(watch.finals) == 1
    final = watch.finals[0]
    assert final.accounted and final.pending == 0
    assert (final.submitted, final.completed, final.failed) == (40, 39, 1)
    done = [s.completed + s.failed for s in watch.updates] + [final.completed + final.failed]
    assert done == sorted(done), done
    assert all(type(s) is mpkit.PipelineStats for s in watch.updates)
    # the next run reports to the same observer
    pipe.run(range(3), progress=False)
    assert len(watch.finals) == 2 and watch.finals[1].completed == 3
    watch.closed = True  # an observer that says it is closed is left out of the runs that follow
    pipe.run(range(2), progress=False)
    assert len(watch.finals) == 2


def test_a_front_end_attached_after_a_run_shows_how_it_ended(start_method):
    pipe = mpkit.engine.Pipeline("ended").stage(helpers.double)
    pipe.run(range(5), start_method=start_method)
    late = pipe.observe(PipelineRecorder())
    assert [(s.state, s.completed) for s in late.updates] == [("stopped", 5)] and not late.finals


def test_a_pipeline_front_end_that_raises_does_not_break_the_run(start_method, caplog):
    class Broken:
        def update(self, stats):
            raise RuntimeError("the panel broke in update")

        def close(self, stats):
            raise RuntimeError("the panel broke in close")

    pipe = mpkit.engine.Pipeline("broken panel").stage(pipeline_tasks.slow).stage(helpers.double)
    pipe.observe(Broken())
    with caplog.at_level(logging.ERROR, logger="mpkit"):
        assert sorted(pipe.run(range(30), start_method=start_method)) == [2 * x for x in range(30)]
        svc = pipe.start(start_method=start_method)
        try:
            assert svc.submit(4).result(timeout=60) == 8
        finally:
            svc.stop(timeout=60)
    assert "the panel broke in" in caplog.text


def test_a_stuck_pipeline_front_end_does_not_hold_the_stages_back(start_method, tmp_path):
    n = 50
    path = str(tmp_path / "item")
    ran = lambda: len(glob.glob(path + ".*"))  # noqa: E731
    seen = []

    class Stuck(PipelineRecorder):
        def update(self, stats):
            if not seen:
                wait_until(lambda: ran() >= n, timeout=60)
                seen.append(ran())
            super().update(stats)

    pipe = (mpkit.engine.Pipeline("stuck panel").stage(helpers.identity)
            .stage(functools.partial(pipeline_tasks.touch, path=path), name="last"))
    pipe.observe(Stuck())
    assert sorted(pipe.run(range(n), start_method=start_method)) == list(range(n))
    assert seen == [n]


def test_a_front_end_watching_from_another_thread_gets_the_final_close(start_method):
    """The close reaches the observer after its last update, even when updates run long."""
    order = []

    class Slow:
        def update(self, stats):
            order.append("update")
            threading.Event().wait(0.2)

        def close(self, stats):
            order.append("close")

    pipe = mpkit.engine.Pipeline("slow panel").stage(pipeline_tasks.slow)
    pipe.observe(Slow())
    pipe.run([0.01] * 30, start_method=start_method)
    assert order[-1] == "close" and order.count("close") == 1


# ---- public names for front-ends, magics and recipes ------------------------------------------------
def test_public_accessors_instead_of_private_attributes(start_method):
    assert mpkit.engine.default_pool() is None or not mpkit.engine.default_pool().closed
    mpkit.map(helpers.square, range(3), workers=1, progress=False)
    pool = mpkit.engine.default_pool()
    assert pool is not None and pool in mpkit.engine.live_pools()
    pipe = mpkit.Pipeline("accessors").batch(4, 0.1).stage(helpers.identity, maxsize=7)
    assert [s.name for s in pipe.specs] == ["identity"] and pipe.specs[0].maxsize == 7
    assert pipe in mpkit.engine.live_pipelines()
    assert pipe.service is None and pipe.state == "ready"
    svc = pipe.start(start_method=start_method)
    try:
        assert pipe.service is svc and pipe.state == "running"
        assert svc.submit(5).result(timeout=60) == 5  # workers start with the first item
        workers = wait_until(lambda: pipe.workers()["identity"], timeout=60)
        assert workers and all(isinstance(pid, int) for _, pid, _ in workers)
    finally:
        svc.stop(timeout=60)
    assert pipe.state == "stopped" and pipe.workers() == {}


#: Private names of other projects that the magics read, with why.
NOT_THE_ENGINES = {"_filename_map": "IPython's record of the file behind each cell (for tracebacks)"}


def test_magics_and_recipes_use_no_private_engine_attribute():
    """``obj._name`` on anything but ``self`` / ``cls`` in the magics and recipes (the engine's
    private state: ``pipe._flow``, ``_specs``, ``_default._pool``) is what this test refuses."""
    root = Path(mpkit.__file__).parent
    found = []
    for folder in ("magics", "recipes"):
        for path in sorted((root / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                        and not node.attr.startswith("__")
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "sys"))):
                    found.append(f"{folder}/{path.name}:{node.lineno} .{node.attr}")
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                        and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                        and str(node.args[1].value).startswith("_") \
                        and not str(node.args[1].value).startswith("__") \
                        and node.args[1].value not in NOT_THE_ENGINES:
                    found.append(f"{folder}/{path.name}:{node.lineno} getattr {node.args[1].value}")
    assert not found, found


# ---- the default front-ends, through the interface, in a real kernel --------------------------------
def _outputs(kernel, code, timeout=120):
    """Run a cell; the mimetypes of what it displayed and its stdout text."""
    cell = kernel.collect(kernel.start(code), timeout)
    if cell.error is not None:
        raise AssertionError("\n".join(cell.error["traceback"]))
    return [mime for data in cell.displays for mime in data], cell.text()


def test_a_kernel_shows_the_default_bar_dashboard_and_timeline(start_method):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("matplotlib")
    from tests.kernels import KernelSession

    widget = "application/vnd.jupyter.widget-view+json"
    kernel = KernelSession()
    try:
        _outputs(kernel, "import mpkit\nfrom tests import helpers, pipeline_tasks")
        shown, text = _outputs(kernel, "r = mpkit.map(pipeline_tasks.slow, range(30), workers=2)\n"
                                       "print(len(r))")
        assert widget in shown and text.strip() == "30"      # tqdm's widget bar, by default
        shown, _ = _outputs(kernel, "r = mpkit.map(helpers.square, range(3), workers=2, progress=False)")
        assert widget not in shown
        shown, text = _outputs(kernel, "pipe = mpkit.Pipeline('k').stage(pipeline_tasks.slow, workers=2)\n"
                                       "out = pipe.run(range(40))\n"
                                       "print(len(out), pipe.stats().completed)")
        assert widget in shown and text.strip() == "40 40"   # the dashboard of a blocking run
        shown, text = _outputs(kernel, "svc = pipe.start()\ndash = pipe.dashboard()\n"
                                       "print(svc.submit(7).result(timeout=60)); svc.stop(timeout=60)\n"
                                       "print(dash.closed, 'completed', dash.final.completed)\n"
                                       "fig = pipe.timeline(); print(type(fig).__name__)")
        assert text.split() == ["7", "True", "completed", "1", "Figure"], text
    finally:
        kernel.close()
