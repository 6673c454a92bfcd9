"""The pipeline dashboard in a real page, JupyterLab and Notebook 7 (one server per app for the
module): its cards update while a service runs and do not move while their numbers change; a
run that finishes, fails or is interrupted, and a service stopped with its Stop button, each end
in their own state; the saved notebook shows the static summaries with no kernel at all.

Screenshots of every state go to tests/artifacts; the JupyterLab run also copies one of the live
dashboard and one of a ``%%mp_pool`` progress bar to docs/, which the README shows.
"""
from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from tests.browser._lab import ARTIFACTS, KERNEL_TIMEOUT, LabBrowser, copy_into, write_notebook
from tests.proctree import REPO

pytestmark = pytest.mark.timeout(600)

WIDGET = "application/vnd.jupyter.widget-view+json"
CELLS = ".jp-Notebook:visible .jp-Cell"      # the open notebook's cells
DOCS = REPO / "docs"
ITEMS = 200
SETUP = """\
import threading, time
from mpkit import Pipeline

def parse(x):          # 25 items/s
    time.sleep(0.04)
    return x

def score(x):          # 20 items/s: its queue grows by about 5 items a second
    time.sleep(0.05)
    return 2 * x

def bad(x):
    if x == 30:
        raise ValueError(f"item {x} is bad")
    time.sleep(0.02)
    return x
"""
SERVICE_START = """\
pipe = Pipeline("browser-probe").stage(parse, workers=1, maxsize=16).stage(score, workers=1, maxsize=64)
svc = pipe.start()
pipe.dashboard()
"""
SERVICE_FEED = f"""\
futures = []
for burst in range(5):                   # {ITEMS} requests in bursts, about 1.5 s apart
    for i in range(burst * {ITEMS // 5}, (burst + 1) * {ITEMS // 5}):
        futures.append(svc.submit(i, timeout=30))
    time.sleep(1.5)
results = [f.result(timeout=120) for f in futures]
final = svc.stop()
print("results", len(results), final.state)
"""
FINISHED = "out = Pipeline('finishes').stage(parse, workers=2).run(range(60))"
FAILED = "Pipeline('fails').stage(bad, workers=2).run(range(200))"
INTERRUPTED = "Pipeline('interrupted').stage(parse, workers=2).run(range(100_000))"
STOPPED = """\
stop_pipe = Pipeline('stopped').stage(parse, workers=2)
stop_svc = stop_pipe.start()
def feed():
    try:
        for i in range(5000):
            stop_svc.submit(i)
    except RuntimeError:                 # the service was stopped: it takes no more
        pass
threading.Thread(target=feed, daemon=True).start()
stop_pipe.dashboard()
"""

READ_CELL = """\
(i) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cell = panel && panel.node.querySelectorAll('.jp-Cell')[i];
    if (!cell) return null;
    const flat = (el) => el ? el.textContent.replace(/\\s+/g, ' ').trim() : null;
    const box = (el, origin) => {
        const r = el.getBoundingClientRect();
        return [r.x - origin.x, r.y - origin.y, r.width, r.height].map(Math.round);
    };
    const dash = cell.querySelector('.mpkit-dashboard');
    const summary = cell.querySelector('.mpkit-summary');
    const result = {live: !!dash, summary: flat(summary),
                    outcome: summary ? (summary.className.match(/mpkit-summary-(\\w+)/) || [])[1] : null};
    if (dash) {
        const origin = dash.getBoundingClientRect();
        result.state = flat(dash.querySelector('.mpkit-state'));
        result.header = flat(dash.querySelector('.mpkit-header'));
        result.cards = Array.from(dash.querySelectorAll('.mpkit-stage')).map(flat);
        result.boxes = [[0, 0, Math.round(origin.width), Math.round(origin.height)]].concat(
            Array.from(dash.querySelectorAll('.mpkit-stage, .mpkit-arrow, .mpkit-header, .mpkit-stop'))
                .map((el) => box(el, origin)));
    }
    return result;
}"""


def read(browser: LabBrowser, cell: int) -> dict:
    return browser.page.evaluate(READ_CELL, cell) or {}


def number(pattern: str, text: str | None) -> int | None:
    m = re.search(pattern, text or "")
    return int(m.group(1).replace(",", "")) if m else None


def wait_for(browser: LabBrowser, cell: int, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        last = read(browser, cell)
        if predicate(last):
            return last
        time.sleep(0.2)
    browser.screenshot(f"timeout_{what.replace(' ', '_')}.png")
    raise AssertionError(f"{what}: not within {timeout} s; the cell shows {last}")


def shoot(browser: LabBrowser, name: str, cell: int, css: str):
    """A screenshot of one element of a cell's output, under tests/artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    browser.page.locator(CELLS).nth(cell).locator(css).first.screenshot(
        path=str(path), timeout=30_000)
    return path


def scroll_to(browser: LabBrowser, cell: int) -> None:
    browser.page.locator(CELLS).nth(cell).scroll_into_view_if_needed(timeout=10_000)


@pytest.fixture
def page(app_server):
    browser = LabBrowser()
    try:
        yield browser
    finally:
        browser.close()
        app_server.shutdown_kernels()


def test_cards_update_and_stay_in_place_while_a_service_runs(app_server, page):
    app = app_server.app
    name = write_notebook(app_server.root / "service.ipynb", [SETUP, SERVICE_START, SERVICE_FEED]).name
    page.open_notebook(app_server, name)
    page.run_cell(0)
    page.run_cell(1)
    page.run_cell(2, wait=None)
    scroll_to(page, 1)

    samples = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = read(page, 1)
        if r.get("live") and r.get("state") == "running" and len(r["cards"]) == 2:
            samples.append(r)
            seen = {number(r"in (\d[\d,]*)", s["cards"][1]) for s in samples}
            if len(seen) >= 4:
                break
        elif r.get("summary"):
            break
        time.sleep(0.25)
    assert samples, f"the page never showed the running dashboard: {read(page, 1)}"
    received = [number(r"in (\d[\d,]*)", s["cards"][1]) for s in samples]
    assert len(set(received)) >= 4 and received == sorted(received), \
        f"the cards on the page did not follow the service: {received}"
    # the numbers changed, the geometry did not: the panel, every card, arrow and the header
    assert len({json.dumps(s["boxes"]) for s in samples}) == 1, \
        "boxes moved while the numbers changed:\n" + "\n".join(json.dumps(s["boxes"]) for s in samples[:10])
    shot = shoot(page, f"dashboard_{app}_running.png", 1, ".mpkit-dashboard")
    if app == "lab":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / "dashboard.png")

    page.wait_kernel_idle(KERNEL_TIMEOUT + 60)
    end = wait_for(page, 1, lambda r: r.get("summary"), 30, "the service's summary")
    assert not end["live"] and end["outcome"] == "stopped", end
    assert f"completed {ITEMS}" in end["summary"] and "cancelled 0" in end["summary"], end
    scroll_to(page, 1)
    page.screenshot(f"dashboard_{app}_service_stopped.png")
    assert not page.blocked, f"the page tried to leave loopback: {page.blocked[:5]}"


def test_end_states_and_the_saved_notebook_without_a_kernel(app_server, page):
    app = app_server.app
    cells = [SETUP, FINISHED, FAILED, INTERRUPTED, STOPPED]
    name = write_notebook(app_server.root / "ends.ipynb", cells).name
    page.open_notebook(app_server, name)
    page.run_cell(0)

    page.run_cell(1)
    finished = wait_for(page, 1, lambda r: r.get("summary"), 30, "the finished summary")
    assert finished["outcome"] == "finished" and "completed 60" in finished["summary"], finished

    page.run_cell(2)
    failed = wait_for(page, 2, lambda r: r.get("summary"), 30, "the failed summary")
    assert failed["outcome"] == "failed" and "failed 1" in failed["summary"], failed

    page.run_cell(3, wait=None)
    wait_for(page, 3, lambda r: r.get("live") and (number(r"completed (\d[\d,]*)", r.get("header")) or 0) >= 10,
             60, "the interrupted run's progress")
    page.command("notebook:interrupt-kernel")
    page.wait_kernel_idle(KERNEL_TIMEOUT)
    interrupted = wait_for(page, 3, lambda r: r.get("summary"), 30, "the interrupted summary")
    assert interrupted["outcome"] == "interrupted", interrupted
    assert (number(r"cancelled (\d[\d,]*)", interrupted["summary"]) or 0) > 0, interrupted

    page.run_cell(4)
    wait_for(page, 4, lambda r: r.get("live") and (number(r"completed (\d[\d,]*)", r.get("header")) or 0) >= 10,
             60, "the service's progress")
    scroll_to(page, 4)
    page.page.locator(CELLS).nth(4).locator(".mpkit-stop").click(timeout=10_000)
    stopped = wait_for(page, 4, lambda r: r.get("summary"), 60, "the stopped summary")
    assert stopped["outcome"] == "stopped", stopped
    assert (number(r"cancelled (\d[\d,]*)", stopped["summary"]) or 0) > 0, stopped

    for cell, outcome in ((1, "finished"), (2, "failed"), (3, "interrupted"), (4, "stopped")):
        scroll_to(page, cell)
        shoot(page, f"dashboard_{app}_{outcome}.png", cell, ".mpkit-summary")

    # Saved, then read with no kernel: the outputs are the summaries, no widget left to miss.
    page.command("docmanager:save")
    deadline = time.monotonic() + 30
    saved = {}
    while time.monotonic() < deadline:
        saved = json.loads((app_server.root / name).read_text())
        if sum("mpkit-summary" in json.dumps(c.get("outputs", [])) for c in saved["cells"]) == 4:
            break
        time.sleep(0.5)
    outputs = [o for c in saved["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if WIDGET in o.get("data", {})], "the saved notebook still holds widgets"
    assert sum("mpkit-summary" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs) == 4

    from nbconvert import HTMLExporter

    # as nbviewer renders it: HTML from the saved file, no kernel, no widget manager, no script
    body, _ = HTMLExporter(template_name="basic").from_filename(str(app_server.root / name))
    offline = page.context.new_page()
    try:
        offline.set_content(body, timeout=60_000)
        states = offline.evaluate(
            "() => Array.from(document.querySelectorAll('.mpkit-summary')).map((s) => s.className)")
        assert [re.search(r"mpkit-summary-(\w+)", s).group(1) for s in states] == \
            ["finished", "failed", "interrupted", "stopped"], states
        assert offline.locator(".mpkit-summary svg polyline").count() >= 4
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        offline.screenshot(path=str(ARTIFACTS / f"dashboard_{app}_saved_no_kernel.png"), full_page=True)
    finally:
        offline.close()
    assert not page.blocked, f"the page tried to leave loopback: {page.blocked[:5]}"


PROGRESS = """\
%%mp_pool range(40) -n 2 -o lengths
import time

def measure(i):
    time.sleep(0.15)
    return i
"""


def test_a_progress_bar_picture_for_the_readme(app_server, page):
    if app_server.app != "lab":
        pytest.skip("the README's picture is taken in JupyterLab")
    name = write_notebook(app_server.root / "progress.ipynb", ["%load_ext mpkit", PROGRESS]).name
    page.open_notebook(app_server, name)
    page.run_cell(0)
    page.run_cell(1, wait=None)
    page.page.locator(CELLS).nth(1).locator(".widget-hprogress, .jp-OutputArea-output") \
        .first.wait_for(timeout=60_000)
    page.wait_kernel_idle(KERNEL_TIMEOUT)
    # the finished bar stays on the page (it was hidden at the end: the picture was an empty line)
    final = page.page.locator(CELLS).nth(1).locator(".mpkit-map-bar")
    final.wait_for(state="visible", timeout=30_000)
    assert "40/40" in final.inner_text(), final.inner_text()
    shot = shoot(page, "progress_bar.png", 1, ".jp-OutputArea")
    DOCS.mkdir(exist_ok=True)
    shutil.copyfile(shot, DOCS / "progress.png")


DEMO = REPO / "demo_notebooks" / "02_pipeline_dashboard.ipynb"


@pytest.mark.skipif(not DEMO.exists(), reason="demo_notebooks/02_pipeline_dashboard.ipynb is not there")
def test_pipeline_demo_notebook_runs_and_ends_with_its_summaries(app_server, page):
    if app_server.app != "lab":
        pytest.skip("the demo runs once, in JupyterLab")
    name = copy_into(app_server.root, DEMO)
    page.open_notebook(app_server, name)
    page.run_all()
    outcome = page.wait_run_all(300)
    assert outcome == "ok", f"run-all ended with {outcome}"
    page.wait_kernel_idle(KERNEL_TIMEOUT)
    summaries = page.page.evaluate(
        "() => Array.from(document.querySelectorAll('.mpkit-summary')).map((s) => s.className)")
    assert [re.search(r"mpkit-summary-(\w+)", s).group(1) for s in summaries] == ["stopped", "finished"], summaries
    assert page.page.locator(".mpkit-dashboard").count() == 0
    page.page.locator(".mpkit-summary").last.scroll_into_view_if_needed(timeout=5_000)
    page.screenshot("demo_pipeline_done.png")
    assert not page.blocked, f"the page tried to leave loopback: {page.blocked[:5]}"


TRACK = """\
() => {
    const bar = document.querySelector('.jp-Notebook:not(.lm-mod-hidden) .mpkit-map-bar, .mpkit-map-bar');
    if (!bar) return null;
    const track = bar.children[1], fill = track && track.firstElementChild;
    return {track: track ? track.getBoundingClientRect().width : 0,
            fill: fill ? fill.getBoundingClientRect().width : 0, text: bar.textContent};
}"""


def test_the_saved_progress_bar_keeps_its_width_in_an_untrusted_notebook(app_server, page):
    """A notebook received from someone else is untrusted: the app sanitises its HTML outputs,
    dropping the inline styles it does not allow (``flex``, ``gap``). The final bar of a map, as
    saved, still draws its track and its fill (they shrank to nothing)."""
    pytest.importorskip("tqdm")
    from tqdm.notebook import tqdm_notebook

    from mpkit.widgets._progress import final_bar_html

    bar = tqdm_notebook(total=40, desc="measure", unit="item", display=False)
    bar.update(40)
    bar.close()
    output = {"output_type": "display_data", "metadata": {},
              "data": {"text/html": final_bar_html(bar.container), "text/plain": str(bar)}}
    for part in bar.container.children:
        part.close()
    bar.container.close()
    path = write_notebook(app_server.root / "untrusted_bar.ipynb", ["out = mpkit.map(measure, range(40))"])
    nb = json.loads(path.read_text())
    nb["cells"][0]["outputs"] = [output]          # as another user's saved notebook: no signature
    path.write_text(json.dumps(nb, indent=1))
    page.open_notebook(app_server, path.name)
    page.page.locator(CELLS).nth(0).locator(".mpkit-map-bar").wait_for(state="visible", timeout=30_000)
    trusted = page.page.evaluate("() => { const m = window.jupyterapp.shell.currentWidget.content.model;"
                                 " const c = m.cells.get ? m.cells.get(0) : m.cells.at(0); return c.trusted; }")
    assert trusted is False, "the notebook opened trusted: its outputs were not sanitised"
    shown = page.page.evaluate(TRACK)
    assert shown and "40/40" in shown["text"], shown
    assert shown["track"] >= 100 and shown["fill"] >= 0.95 * shown["track"], shown
    scroll_to(page, 0)
    shoot(page, f"progress_bar_{app_server.app}_untrusted.png", 0, ".mpkit-map-bar")
