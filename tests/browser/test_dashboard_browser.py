"""The pipeline dashboard in a real JupyterLab page: its figures move while the pipeline runs.

A two-stage pipeline whose second stage is a little slower than the first, so the second stage's
queue grows through the run and its counters climb; the test reads the dashboard's widgets from
the page (by their CSS classes) while the cell still runs, then once it has finished.
Two ways to show it: the blocking ``run()`` (which displays its own dashboard) and a background
service with ``pipe.dashboard()`` fed by the service's router thread. Then the pipeline demo
notebook, run from top to bottom in JupyterLab as a user would.
"""
from __future__ import annotations

import re
import time

import pytest

from tests.browser._lab import KERNEL_TIMEOUT, copy_into, write_notebook
from tests.proctree import REPO

mpkit = pytest.importorskip("mpkit")
if not hasattr(mpkit, "Pipeline") or not hasattr(mpkit.Pipeline, "dashboard"):
    pytest.skip("mpkit.Pipeline with .dashboard() is not there yet", allow_module_level=True)

pytestmark = pytest.mark.timeout(420)

ITEMS = 200
SETUP = """\
import time
from mpkit import Pipeline

def parse(x):          # 25 items/s
    time.sleep(0.04)
    return x

def score(x):          # 20 items/s: its queue grows by about 5 items a second
    time.sleep(0.05)
    return 2 * x

pipe = (Pipeline("browser-probe")
        .stage(parse, workers=1, maxsize=16)
        .stage(score, workers=1, maxsize=64))
"""
BLOCKING_RUN = f"""\
out = pipe.run(range({ITEMS}))
print("results", len(out))
"""
SERVICE_START = """\
svc = pipe.start()
pipe.dashboard()
"""
SERVICE_FEED = f"""\
futures = []
try:
    for burst in range(5):                   # {ITEMS} requests in bursts, about 1.5 s apart
        for i in range(burst * {ITEMS // 5}, (burst + 1) * {ITEMS // 5}):
            futures.append(svc.submit(i, timeout=30))
        time.sleep(1.5)
except TimeoutError:
    # a service that failed takes no more items: show why it failed
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            raise f.exception()
    raise
results = [f.result(timeout=120) for f in futures]
final = svc.stop()
print("results", len(results), final.state)
"""
NOTEBOOKS = {
    "run": [SETUP, BLOCKING_RUN],
    "service": [SETUP, SERVICE_START, SERVICE_FEED],
}

READ_DASHBOARD = """\
(stage) => {
    const dash = document.querySelector('.mpkit-dashboard');
    if (!dash) return null;
    const text = (root, css) => {
        const el = root && root.querySelector(css);
        return el ? el.textContent.trim() : null;
    };
    const card = dash.querySelector('.mpkit-stage-' + stage);
    const bar = card && card.querySelector('.mpkit-queue-bar .progress-bar');
    return {
        state: text(dash, '.mpkit-state'),
        completed: text(dash, '.mpkit-completed'),
        submitted: text(dash, '.mpkit-submitted'),
        stages: dash.querySelectorAll('.mpkit-stage').length,
        queued: text(card, '.mpkit-queued'),
        received: text(card, '.mpkit-received'),
        emitted: text(card, '.mpkit-emitted'),
        rate: text(card, '.mpkit-rate'),
        bar: bar ? bar.style.width : null,
    };
}"""


def _number(text: str | None) -> int | None:
    """The first whole number in a label ('in 12' -> 12, '5/64 queued' -> 5)."""
    m = re.search(r"\d[\d,]*", text or "")
    return int(m.group().replace(",", "")) if m else None


def _read(browser, stage: str) -> dict | None:
    r = browser.page.evaluate(READ_DASHBOARD, stage)
    if r is None or r["received"] is None:
        return None
    r["running"] = browser.run_all_result() == "running"
    for key in ("completed", "submitted", "queued", "received", "emitted"):
        r[key + "_n"] = _number(r[key])
    return r


def _outputs(browser) -> str:
    """The cells' outputs as the page shows them (the end of each), for failure messages."""
    return "\n---\n".join(t[-1500:] for t in browser.texts(".jp-OutputArea-output"))


@pytest.mark.parametrize("how", sorted(NOTEBOOKS))
def test_dashboard_figures_change_on_the_page_while_the_pipeline_runs(lab, browser, how):
    name = write_notebook(lab.root / f"dashboard_{how}.ipynb", NOTEBOOKS[how]).name
    browser.open_notebook(lab, name)
    browser.run_all()

    # Sample the page while the cells run, until the figures have visibly moved.
    samples: list[dict] = []
    shot = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = _read(browser, "score")
        if r is not None and r["running"] and r["state"] == "running":
            samples.append(r)
            queue_depths = {s["queued_n"] for s in samples}
            first, last = samples[0], samples[-1]
            if (len(queue_depths) >= 3 and last["received_n"] > first["received_n"]
                    and last["emitted_n"] > first["emitted_n"]
                    and last["completed_n"] > first["completed_n"]):
                shot = browser.screenshot(f"dashboard_{how}_running.png")
                break
        elif (r is not None and r["state"] == "failed") or browser.run_all_result() != "running":
            break
        time.sleep(0.25)

    trail = "\n".join(f"{s['state']} | {s['queued']} | {s['received']} | {s['emitted']} | "
                      f"{s['completed']} | {s['bar']}" for s in samples[-15:])
    if shot is None:
        browser.screenshot(f"dashboard_{how}_failed.png")
        outputs = _outputs(browser)
        assert samples, ("the dashboard never showed a running pipeline; run-all: "
                         f"{browser.run_all_result()}; cell outputs:\n{outputs}")
        pytest.fail(f"the figures did not move while running (run-all: {browser.run_all_result()});"
                    f" last samples:\n{trail}\ncell outputs:\n{outputs}")
    assert samples[0]["stages"] == 2
    assert browser.run_all_result() == "running", "the readings must come while the cells run"

    # The end: every cell ran, the dashboard shows the whole stream.
    outcome = browser.wait_run_all(120)
    end = _read(browser, "score")
    browser.screenshot(f"dashboard_{how}_done.png")
    assert outcome == "ok", f"run-all ended with {outcome}; cell outputs:\n{_outputs(browser)}"
    browser.wait_kernel_idle(KERNEL_TIMEOUT)
    assert end["state"] == "stopped", end
    assert end["completed_n"] == ITEMS, end
    assert end["received_n"] == end["emitted_n"] == ITEMS, end
    assert end["queued_n"] == 0, end
    assert not browser.blocked, f"the page tried to leave loopback: {browser.blocked[:5]}"


DEMO = REPO / "demo_notebooks" / "02_pipeline_dashboard.ipynb"
READ_DASHBOARDS = """\
() => Array.from(document.querySelectorAll('.mpkit-dashboard')).map((d) => {
    const text = (css) => { const el = d.querySelector(css); return el ? el.textContent.trim() : ''; };
    return {state: text('.mpkit-state'), submitted: text('.mpkit-submitted'),
            completed: text('.mpkit-completed'), failed: text('.mpkit-failed'),
            pending: text('.mpkit-pending'), stages: d.querySelectorAll('.mpkit-stage').length,
            closed: d.classList.contains('mpkit-closed')};
})"""


@pytest.mark.skipif(not DEMO.exists(), reason="demo_notebooks/02_pipeline_dashboard.ipynb is not there")
def test_pipeline_demo_notebook_runs_in_jupyterlab(lab, browser):
    name = copy_into(lab.root, DEMO)
    browser.open_notebook(lab, name)
    browser.run_all()

    # The service's dashboard while requests flow: its completed count climbs.
    running: list[int] = []
    shot = None
    deadline = time.monotonic() + 240
    while browser.run_all_result() == "running" and time.monotonic() < deadline:
        dashboards = browser.page.evaluate(READ_DASHBOARDS)
        if dashboards and dashboards[0]["state"] == "running":
            running.append(_number(dashboards[0]["completed"]))
            if shot is None and len(set(running)) >= 2:
                browser.page.locator(".mpkit-dashboard").first.scroll_into_view_if_needed(timeout=5_000)
                shot = browser.screenshot("demo_pipeline_running.png")
        time.sleep(0.2)

    outcome = browser.wait_run_all(60)
    final = browser.page.evaluate(READ_DASHBOARDS)
    browser.page.locator(".mpkit-dashboard").last.scroll_into_view_if_needed(timeout=5_000)
    browser.screenshot("demo_pipeline_done.png")
    assert outcome == "ok", f"run-all ended with {outcome}; cell outputs:\n{_outputs(browser)}"
    assert len(set(running)) >= 2, f"the service's completed count never moved on the page: {running}"

    # One dashboard for the service, one for the blocking run; both closed with every item done.
    assert len(final) == 2, final
    for dash in final:
        assert dash["state"] == "stopped" and dash["closed"], dash
        assert dash["stages"] == 3, dash                     # preprocess -> batcher -> model
        assert _number(dash["completed"]) == _number(dash["submitted"]) > 0, dash
        assert _number(dash["failed"]) == 0 and _number(dash["pending"]) == 0, dash
    assert not browser.blocked, f"the page tried to leave loopback: {browser.blocked[:5]}"

    # The last cell's timeline is a picture on the page, not a figure's text repr.
    images = browser.page.locator(".jp-RenderedImage img, .jp-RenderedSVG svg").count()
    if not images and "<Figure size" in _outputs(browser):
        pytest.xfail("pipe.timeline() returns a bare matplotlib Figure, which a kernel without "
                     "pyplot shows as '<Figure size ...>' text, not as an image")
    assert images, "the timeline figure is not on the page"
