"""The Cancel button of the map's progress bar, clicked while the map runs in a real kernel.

The click is sent as JupyterLab sends it (a ``comm_msg`` with ipywidgets' click event to the
button's comm) while the cell is still running the map; the map stops as an interrupt stops it:
``MapInterrupted`` with the results that finished, in input order, and the warm workers kept.
"""
from __future__ import annotations

import re

import pytest

from tests.kernels import KernelSession

pytestmark = pytest.mark.timeout(240)

SETUP = '''
import sys, time
import mpkit

def slow(x):
    time.sleep(0.05)
    if x == 5:
        print("item 5 done")
    return 10 * x

mpkit.map(slow, range(4), workers=2)   # the pool is warm: the next map's bar shows at once
pids = set(mpkit.engine.default_pool().pids())
'''


def _cancel_button(kernel: KernelSession, msg_id: str, timeout: float = 60.0, description: str = "Cancel") -> str:
    """The comm id of the Cancel button (or another, by its ``description``) the cell ``msg_id``
    shows (read from IOPub as it opens)."""
    for msg in kernel.iopub(msg_id, timeout):
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        state = msg["content"].get("data", {}).get("state", {}) if msg["msg_type"] == "comm_open" else {}
        if state.get("_model_name") == "ButtonModel" and state.get("description") == description:
            return msg["content"]["comm_id"]
    raise AssertionError(f"the cell showed no {description} button")


def _wait_for_output(kernel: KernelSession, msg_id: str, text: str, timeout: float = 60.0) -> None:
    """Wait until the cell ``msg_id`` printed ``text`` (a worker's print, relayed to the cell)."""
    for msg in kernel.iopub(msg_id, timeout):
        if msg["msg_type"] == "stream" and text in msg["content"]["text"]:
            return
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    raise AssertionError(f"the cell did not print {text!r}")


def _click(kernel: KernelSession, comm_id: str) -> None:
    """What the front-end sends when the button is clicked."""
    msg = kernel.kc.session.msg("comm_msg", {"comm_id": comm_id,
                                             "data": {"method": "custom", "content": {"event": "click"}}})
    kernel.kc.shell_channel.send(msg)


def test_cancel_stops_the_running_map_and_keeps_the_finished_results(start_method):
    kernel = KernelSession()
    try:
        kernel.run(SETUP)
        msg_id = kernel.start("out = mpkit.map(slow, range(400), workers=2)")
        comm_id = _cancel_button(kernel, msg_id)
        _wait_for_output(kernel, msg_id, "item 5 done")  # some items finished: click while the map runs
        _click(kernel, comm_id)
        cell = kernel.collect(msg_id, timeout=60)
        assert cell.error is not None, "the map was not stopped by the click"
        assert cell.error["ename"] == "MapInterrupted", cell.error
        assert re.search(r"interrupted after \d+ of 400 items finished", cell.error["evalue"]), cell.error
        last = cell.displays[-1]                          # the bar the saved notebook keeps says why it stopped
        assert "cancelled" in last["text/plain"] and "<" not in last["text/plain"], last
        check = kernel.run(
            "exc = sys.last_value\n"
            "print(len(exc.results), exc.results == sorted(exc.results),\n"
            "      sorted(exc.results + [10 * i for i in exc.pending]) == [10 * i for i in range(400)])\n"
            "print('same workers:', set(mpkit.engine.default_pool().pids()) == pids)")
        finished, in_order, all_accounted = check.text().split("\n")[0].split()
        assert 0 < int(finished) < 400 and in_order == "True" and all_accounted == "True", check.text()
        assert "same workers: True" in check.text(), check.text()
        # the next map runs as usual, and its bar's button is gone once it is over
        assert "ok" in kernel.run("print('ok' if mpkit.map(slow, range(6), workers=2) == "
                                  "[10 * i for i in range(6)] else 'wrong')").text()
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


def test_cancel_in_mp_pool_keeps_the_finished_results_in_the_out_variable(start_method):
    kernel = KernelSession()
    try:
        kernel.run("%load_ext mpkit")
        msg_id = kernel.start("%%mp_pool range(400) -n 2 -o out\nimport time\n\n"
                              "def slow(x):\n    time.sleep(0.05)\n    if x == 5:\n        print('item 5 done')\n"
                              "    return 10 * x\n")
        comm_id = _cancel_button(kernel, msg_id)
        _wait_for_output(kernel, msg_id, "item 5 done")
        _click(kernel, comm_id)
        cell = kernel.collect(msg_id, timeout=60)
        assert cell.error is not None and cell.error["ename"] == "MapInterrupted", cell.error
        check = kernel.run("print(0 < len(out) < 400, out == sorted(out))")
        assert check.text().split() == ["True", "True"], check.text()
        kernel.run("import mpkit; mpkit.shutdown()")
    finally:
        kernel.close()


def test_cancel_of_an_imap_loop_stops_it_with_a_traceback_of_the_cell_only(start_method):
    """A loop over ``mpkit.imap`` stopped by Cancel: the loop ends where it was (what it consumed
    is kept), the traceback shows the cell's line and none of mpkit's frames (the bar's thread
    that noted the click included), and the warm workers run the next map."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP)
        msg_id = kernel.start("acc = []\nfor v in mpkit.imap(slow, range(400), workers=2):\n    acc.append(v)\n")
        comm_id = _cancel_button(kernel, msg_id)
        _wait_for_output(kernel, msg_id, "item 5 done")
        _click(kernel, comm_id)
        cell = kernel.collect(msg_id, timeout=60)
        assert cell.error is not None and cell.error["ename"] == "KeyboardInterrupt", cell.error
        shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(cell.error["traceback"]))
        assert "for v in mpkit.imap(slow" in shown, shown
        assert "mpkit/engine" not in shown and "mpkit/widgets" not in shown, shown
        check = kernel.run("print(0 < len(acc) < 400, acc == [10 * i for i in range(len(acc))],\n"
                           "      set(mpkit.engine.default_pool().pids()) == pids,\n"
                           "      mpkit.map(slow, range(5), workers=2) == [10 * i for i in range(5)])")
        assert check.text().split() == ["True"] * 4, check.text()
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


def test_a_finished_bar_with_a_cancel_button_is_static_html_and_leaves_no_widget(start_method):
    """The bar's output ends as the final bar in static HTML (30/30, a full bar) with its text
    for plain front-ends: what a saved notebook keeps and shows without a kernel (nbviewer,
    GitHub), and not tqdm's widget shown again, which JupyterLab hid at once (the picture of the
    finished bar was an empty line), nor the box's repr (``HBox(children=(... Button(...``). No
    widget model of the bar, its box or its button is left in the kernel."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP + "from ipywidgets.widgets.widget import _instances\n")
        cell = kernel.run("base = len(_instances)\nout = mpkit.map(slow, range(30), workers=2)")
        widget = "application/vnd.jupyter.widget-view+json"
        assert cell.displays and widget in cell.displays[0], "the map showed no live bar"
        last = cell.displays[-1]
        assert widget not in last, last
        assert "30/30" in last["text/plain"] and "100%" in last["text/plain"], last
        assert "HBox(" not in last["text/plain"] and "Button(" not in last["text/plain"], last
        assert 'class="mpkit-map-bar"' in last["text/html"] and "width:100%" in last["text/html"], last
        assert "30/30" in last["text/html"] and "<script" not in last["text/html"], last
        left = kernel.run("print(len(_instances) - base)").text().strip()
        assert left == "0", f"a map's bar left {left} widget models in the kernel"
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


LATE_CLICK = '''
from mpkit.widgets._progress import TqdmProgress

class ClickedAsItEnds(TqdmProgress):
    """The bar, holding its close until the user's click has arrived: the worst moment for it."""

    def close(self, stats):
        print("all items done")
        assert self.cancel.requested.wait(60), "the click did not arrive"
        super().close(stats)

out = mpkit.map(slow, range(30), workers=2, progress=ClickedAsItEnds)
'''


def test_a_click_as_the_map_ends_keeps_its_results_and_closes_the_bar(start_method):
    """Cancel clicked once every item is done, as the bar closes: the map returns its results
    (there is nothing left to cancel) and the button goes away, instead of MapInterrupted raised
    from the bar's close with the Cancel button left live on the page."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP + "from ipywidgets.widgets.widget import _instances\n")
        msg_id = kernel.start(LATE_CLICK)
        comm_id = _cancel_button(kernel, msg_id)
        _wait_for_output(kernel, msg_id, "all items done")
        _click(kernel, comm_id)
        cell = kernel.collect(msg_id, timeout=60)
        assert cell.error is None, cell.error
        check = kernel.run(f"print(out == [10 * i for i in range(30)], {comm_id!r} in _instances)")
        assert check.text().split() == ["True", "False"], check.text()
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


def test_the_dashboards_stop_ends_a_blocking_run_as_an_interrupt(start_method):
    """``pipe.dashboard()`` shown, then ``pipe.run(...)`` in the next cell: Stop clicked while the
    run holds the kernel's main thread ends it with its results so far, not 12 s later."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP + "pipe = mpkit.Pipeline('stoppable').stage(slow, workers=2)\n")
        shown = kernel.start("d = pipe.dashboard(); d")
        stop_id = _cancel_button(kernel, shown, description="Stop")
        kernel.collect(shown)
        msg_id = kernel.start("out = pipe.run(range(400), progress=False)")
        _wait_for_output(kernel, msg_id, "item 5 done")
        _click(kernel, stop_id)
        cell = kernel.collect(msg_id, timeout=60)
        assert cell.error is not None and cell.error["ename"] == "MapInterrupted", cell.error
        check = kernel.run(
            "exc = sys.last_value\n"
            "print(0 < len(exc.results) < 400, sorted(exc.results + [10 * i for i in exc.pending]) == "
            "[10 * i for i in range(400)], pipe.stats().outcome)")
        assert check.text().split() == ["True", "True", "interrupted"], check.text()
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


def test_a_stop_click_is_handled_once():
    """One click on the dashboard's Stop calls its stop once: the click was taken twice in a
    kernel, where it arrives (click_now) and again by the button's on_click once the kernel's
    main thread handled the message."""
    kernel = KernelSession()
    try:
        shown = kernel.start("from mpkit.widgets._dashboard import Dashboard\ncalls = []\n"
                             "dash = Dashboard('once', on_stop=lambda: calls.append('stop'))\ndash")
        stop_id = _cancel_button(kernel, shown, description="Stop")
        kernel.collect(shown)
        _click(kernel, stop_id)
        # the shell channel keeps its order: this cell runs after the click was handled in full
        assert kernel.run("print(calls)").text().strip() == "['stop']"
    finally:
        kernel.close()
