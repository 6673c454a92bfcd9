"""The browser plumbing, with plain ipywidgets: a notebook run in JupyterLab in a real Chromium.

The kernel updates a progress bar and a label for about five seconds; the page must show the label
change while the cell runs, then show the final value once it is done.
"""
from __future__ import annotations

import time

import pytest

from tests.browser._lab import KERNEL_TIMEOUT, write_notebook

pytestmark = pytest.mark.timeout(360)   # server, browser and kernel start on a busy 2-core machine

STEPS = 50          # x 0.1 s: the cell runs about five seconds
PROBE_CELL = f"""\
import time
import ipywidgets as W
from IPython.display import display

bar = W.IntProgress(value=0, min=0, max={STEPS}, description="probe")
bar.add_class("mpkit-probe-bar")
label = W.Label("step 0")
label.add_class("mpkit-probe")
display(W.VBox([bar, label]))
for i in range(1, {STEPS} + 1):
    time.sleep(0.1)
    bar.value = i
    label.value = f"step {{i}}"
label.value = "done"
"""


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _step(texts: list[str]) -> int | None:
    """The step number the probe label shows, if it shows one."""
    if len(texts) == 1 and texts[0].strip().startswith("step "):
        try:
            return int(texts[0].split()[1])
        except ValueError:
            return None
    return None


def _bar_width(browser) -> str | None:
    """The probe progress bar's filled width as the page draws it (e.g. '24%')."""
    return browser.page.evaluate(
        """() => {
            const bar = document.querySelector('.mpkit-probe-bar .progress-bar');
            return bar ? bar.style.width : null;
        }""")


def test_widget_values_change_on_the_page_while_the_cell_runs(lab, browser):
    name = write_notebook(lab.root / "probe.ipynb", [PROBE_CELL]).name
    browser.open_notebook(lab, name)
    browser.run_all()

    # the widget appears once the kernel has displayed it; first reading while it counts
    first = _wait_for(lambda: _step(browser.texts(".mpkit-probe")), 60,
                      "the probe label to show a step")
    first_width = _bar_width(browser)
    # a later reading, still from the page, while the same cell is running
    second = _wait_for(lambda: (s := _step(browser.texts(".mpkit-probe"))) is not None and s >= first + 5 and s,
                       20, f"the probe label to move five steps past step {first}")
    # the bar's view draws its width on its own schedule: wait for it to move too
    second_width = _wait_for(lambda: (w := _bar_width(browser)) != first_width and w, 10,
                             f"the probe bar to move from {first_width}")
    shot = browser.screenshot("lab_widgets_running.png")
    assert browser.run_all_result() == "running", "the readings must come while the cell runs"
    assert second > first, (first, second)

    # the progress bar is a real ipywidgets view on the page, and it moved too
    assert first_width and second_width and first_width != second_width, (first_width, second_width)

    # the cell ends: final value, kernel idle
    assert browser.wait_run_all(60) == "ok"
    assert browser.texts(".mpkit-probe") == ["done"]
    browser.wait_kernel_idle(KERNEL_TIMEOUT)
    browser.screenshot("lab_widgets_done.png")
    assert shot.stat().st_size > 0
    assert not browser.blocked, f"the page tried to leave loopback: {browser.blocked[:5]}"
