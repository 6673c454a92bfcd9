"""How a map's bar ends in a real kernel, as the saved notebook keeps it: the final bar in static
HTML, green only for a map that finished, red and saying "interrupted" (no ETA) for one that was
stopped, in every kernel (with or without the Cancel button), leaving no widget model behind."""
from __future__ import annotations

import re

import pytest

from mpkit.widgets._progress import BAR_COLORS
from tests.kernels import KernelSession
from tests.widgets.test_cancel_button import SETUP, _wait_for_output

pytestmark = pytest.mark.timeout(240)
pytest.importorskip("ipywidgets")

WIDGET = "application/vnd.jupyter.widget-view+json"


def final_bar(cell, live_seen: bool = True) -> dict:
    """The last output of the cell, the final bar; ``live_seen``: the cell's messages were all
    collected, so its first display, the live bar, is there too."""
    assert cell.displays and (not live_seen or WIDGET in cell.displays[0]), "the map showed no live bar"
    last = cell.displays[-1]
    assert WIDGET not in last and 'class="mpkit-map-bar"' in last.get("text/html", ""), last
    return last


def test_a_finished_map_over_a_generator_ends_green(start_method):
    """A generator has no length: its map finished all the same, so its bar is not the red of a
    failed one ("40/?" in red read as a failure)."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP)
        cell = kernel.run("out = mpkit.map(slow, (i for i in range(40)), workers=2)\nassert len(out) == 40")
        last = final_bar(cell)
        assert BAR_COLORS["success"] in last["text/html"] and BAR_COLORS["danger"] not in last["text/html"], last
        assert "40" in last["text/plain"] and "interrupted" not in last["text/plain"], last
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


def test_an_interrupted_map_ends_red_saying_so_without_an_eta(start_method):
    """The kernel's interrupt (a real SIGINT) mid-map: the bar a saved notebook keeps says
    "interrupted", is red, and tells no time left to a map that has stopped."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP)
        msg_id = kernel.start("out = mpkit.map(slow, range(400), workers=2)")
        _wait_for_output(kernel, msg_id, "item 5 done")
        kernel.km.interrupt_kernel()
        cell = kernel.collect(msg_id, timeout=90)
        assert cell.error is not None and cell.error["ename"] == "MapInterrupted", cell.error
        last = final_bar(cell, live_seen=False)   # its first outputs were read while waiting
        assert "interrupted" in last["text/plain"] and "interrupted" in last["text/html"], last
        assert "<" not in last["text/plain"] and "?" not in last["text/plain"], last   # no ETA: [00:03<00:05]
        assert BAR_COLORS["danger"] in last["text/html"], last
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


NO_SUBSHELLS = '''
import mpkit.widgets._progress as progress
progress._routes_while_a_cell_runs = lambda: False   # a kernel without a shell-channel thread (ipykernel 6, Colab)
from ipywidgets.widgets.widget import _instances
base = len(_instances)
'''


def test_a_kernel_that_cannot_take_clicks_mid_cell_keeps_the_static_bar_too(start_method):
    """Where clicks cannot arrive while a cell runs the bar has no Cancel button; it still ends
    as the static final bar (not tqdm's widget, which needs the kernel to draw it), and leaves
    no widget model behind (it left 11 per map)."""
    kernel = KernelSession()
    try:
        kernel.run(SETUP + NO_SUBSHELLS)
        cell = kernel.run("out = mpkit.map(slow, range(30), workers=2)")
        last = final_bar(cell)
        assert "30/30" in last["text/plain"] and "width:100%" in last["text/html"], last
        assert not any("Button" in str(d.get("text/plain")) for d in cell.displays), cell.displays
        left = kernel.run("print(len(_instances) - base)").text().strip()
        assert left == "0", f"a map's bar left {left} widget models in the kernel"
        kernel.run("mpkit.shutdown()")
    finally:
        kernel.close()


def test_the_final_bar_keeps_only_styles_an_untrusted_notebook_allows():
    """JupyterLab's sanitiser drops ``flex`` and ``gap`` from the HTML of an untrusted notebook;
    the bar's track was sized by them and shrank to nothing. It has a fixed width."""
    pytest.importorskip("tqdm")
    import ipywidgets as w

    from mpkit.widgets._progress import final_bar_html

    bar = w.HBox([w.HTML("f: 50%"), w.IntProgress(value=5, max=10, bar_style="success"), w.HTML("5/10")])
    shown = final_bar_html(bar)
    styles = ";".join(re.findall(r'style="([^"]*)"', shown))
    properties = {p.split(":")[0].strip() for p in styles.split(";") if p.strip()}
    assert not properties & {"flex", "gap", "flex-grow", "flex-shrink"}, properties
    track = re.search(r'style="(display:inline-block[^"]*)"', shown).group(1)
    assert re.search(r"(^|;)width:\d+px", track), track
    for part in (bar, *bar.children):
        part.close()
