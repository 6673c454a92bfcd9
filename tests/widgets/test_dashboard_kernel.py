"""The pipeline dashboard in real Jupyter kernels, seen as a front-end sees it: every comm and
display message the kernel sends is replayed into the models and outputs a page would hold.

- ``svc = pipe.start(); pipe.dashboard()`` in fresh kernels: the models on the page are the ones
  the snapshots update (every model of the panel exists before the panel is displayed, and its
  tree never changes after), and the page ends with the summary of the run.
- The end of a run or service turns the output into static HTML and closes every model: twenty
  pipelines with dashboards leave the kernel's widget count where it was.
"""
from __future__ import annotations

import queue
import time

import pytest

from tests.kernels import KernelSession
from tests.widgets.shown import stages, text

pytest.importorskip("ipywidgets")

WIDGET = "application/vnd.jupyter.widget-view+json"
#: Fresh kernels per start method for the race: 10 x (spawn, forkserver) = 20 runs.
RACE_RUNS = 10
ITEMS = 200

STAGES = """
from mpkit import Pipeline
from tests.pipeline_tasks import slow, batch_identity
pipe = (Pipeline("inference").stage(slow, workers=2, name="preprocess")
        .batch(max_size=16, max_wait=0.2).stage(batch_identity, workers=1, name="model"))
"""


class FrontEnd:
    """What a page makes of a kernel's iopub messages: widget models, and the outputs of cells
    (a display with a ``display_id`` is replaced by its ``update_display_data``)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.models: dict[str, dict] = {}
        self.opened: dict[str, int] = {}       # model id -> index of its comm_open
        self.closed: set[str] = set()
        self.children_changed: dict[str, list[int]] = {}
        self.outputs: list[dict] = []          # {"data": ..., "display_id": ..., "index": ...}

    def feed(self, msg: dict) -> None:
        i = len(self.messages)
        self.messages.append(msg)
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content.get("target_name") == "jupyter.widget":
            self.models[content["comm_id"]] = dict(content["data"]["state"])
            self.opened[content["comm_id"]] = i
        elif kind == "comm_msg" and content["data"].get("method") == "update":
            model = self.models.get(content["comm_id"])
            if model is not None:
                state = content["data"]["state"]
                model.update(state)
                if "children" in state:
                    self.children_changed.setdefault(content["comm_id"], []).append(i)
        elif kind == "comm_close":
            self.closed.add(content["comm_id"])
        elif kind in ("display_data", "execute_result"):
            display_id = (content.get("transient") or {}).get("display_id")
            self.outputs.append({"data": dict(content["data"]), "display_id": display_id, "index": i,
                                 "cell": msg.get("parent_header", {}).get("msg_id")})
        elif kind == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            for out in self.outputs:
                if display_id is not None and out["display_id"] == display_id:
                    out["data"] = dict(content["data"])

    def tree(self, model_id: str) -> list[str]:
        """A model and every model its children (and theirs) name, as the page would draw them."""
        found = [model_id]
        for child in self.models.get(model_id, {}).get("children", []):
            found += self.tree(child.replace("IPY_MODEL_", ""))
        return found

    def with_class(self, ids: list[str], css: str) -> list[str]:
        return [m for m in ids if css in self.models.get(m, {}).get("_dom_classes", [])]


def record(kernel: KernelSession) -> FrontEnd:
    front = FrontEnd()
    get = kernel.kc.get_iopub_msg

    def recording(*args, **kwargs):
        msg = get(*args, **kwargs)
        front.feed(msg)
        return msg

    kernel.kc.get_iopub_msg = recording
    return front


def drain(kernel: KernelSession, quiet: float = 1.5) -> None:
    """Read what the kernel's threads sent after the last cell went idle."""
    while True:
        try:
            kernel.kc.get_iopub_msg(timeout=quiet)
        except queue.Empty:
            return


def one_service_run(kernel: KernelSession) -> FrontEnd:
    front = record(kernel)
    kernel.run("%load_ext mpkit")
    kernel.run(STAGES)
    kernel.run("svc = pipe.start()\npipe.dashboard()")
    kernel.run(f"futures = [svc.submit(i) for i in range({ITEMS})]\n"
               "results = [f.result(timeout=120) for f in futures]\n"
               "import time; time.sleep(0.5)  # a few snapshots of the drained pipeline", timeout=180)
    kernel.run("stats = svc.stop(timeout=60)\nassert stats.state == 'stopped', stats", timeout=90)
    drain(kernel)
    return front


def test_the_cards_on_the_page_are_the_ones_updated_in_fresh_kernels(start_method):
    for run in range(RACE_RUNS):
        kernel = KernelSession()
        try:
            front = one_service_run(kernel)
        finally:
            kernel.close()
        shown = [o for o in front.outputs if o["display_id"] is not None
                 or WIDGET in o["data"]]
        assert len(shown) == 1, f"run {run}: the dashboard cell showed {len(shown)} outputs"
        out = shown[0]
        # the page drew the panel from the display message: everything in it existed by then,
        # and the tree it drew is the one the snapshots update afterwards
        first = front.messages[out["index"]]["content"]["data"][WIDGET]["model_id"]
        models = front.tree(first)
        late = [m for m in models if m not in front.opened or front.opened[m] > out["index"]]
        assert late == [], f"run {run}: {len(late)} models of the panel were made after it was shown"
        changed = [m for m in models if any(i > out["index"] for i in front.children_changed.get(m, []))]
        assert changed == [], f"run {run}: the panel's tree changed after it was shown"
        (panel,) = front.with_class(models, "mpkit-panel")
        last = text(stages(front.models[panel]["value"]))
        assert f"in {ITEMS} \u00b7 out {ITEMS}" in last, f"run {run}: the cards ended as {last!r}"
        # the end: a static summary in place of the widget, every model closed
        assert WIDGET not in out["data"] and "mpkit-summary" in out["data"]["text/html"], \
            f"run {run}: the output at the end is {sorted(out['data'])}"
        summary = text(out["data"]["text/html"])
        assert "stopped" in summary and f"completed {ITEMS}" in summary, summary
        assert set(models) <= front.closed, f"run {run}: models left open after the end"


TWENTY = """
import ipywidgets
from ipywidgets.widgets.widget import _instances
from mpkit import Pipeline
from tests.pipeline_tasks import slow
baseline = len(_instances)
for i in range(20):
    pipe = Pipeline(f"p{i}").stage(slow, workers=1)
    if i % 2:
        display(pipe.dashboard())          # attached, shown by the run that follows
    out = pipe.run(range(5))               # else run() shows a dashboard of its own
    assert len(out) == 5
    display(pipe.dashboard())              # and one shown after the end: its summary
import gc, time
deadline = time.monotonic() + 30
while len(_instances) != baseline and time.monotonic() < deadline:
    time.sleep(0.1); gc.collect()
print("widgets", baseline, len(_instances))
"""


def test_twenty_pipelines_with_dashboards_leave_no_widget_in_the_kernel(start_method):
    kernel = KernelSession()
    try:
        front = record(kernel)
        kernel.run("%load_ext mpkit")
        cell = kernel.run(TWENTY, timeout=300)
        drain(kernel)
    finally:
        kernel.close()
    baseline, after = map(int, cell.text().split()[1:3])
    assert after == baseline, f"{after - baseline} widgets alive after 20 pipelines with dashboards"
    assert len([o for o in front.outputs if o["display_id"]]) == 20
    after_end = [o for o in front.outputs if not o["display_id"] and "mpkit-summary" in o["data"].get("text/html", "")]
    assert len(after_end) == 20 and not any(WIDGET in o["data"] for o in after_end)
    for out in front.outputs:                        # what a saved notebook keeps: the summaries
        if out["display_id"]:
            assert WIDGET not in out["data"] and "mpkit-summary" in out["data"]["text/html"]
            assert "finished" in text(out["data"]["text/html"])


def test_a_dashboard_shown_after_a_run_keeps_its_summary_and_the_next_run_shows_its_own(start_method):
    """Cell 2 shows ``pipe.dashboard()`` after run 1 ended: run 1's summary, for good. Run 2, in
    cell 4, shows its own live dashboard under cell 4, which ends as run 2's summary; cell 2
    still shows run 1's (a summary string taken in cell 3 does not take over either)."""
    kernel = KernelSession()
    try:
        front = record(kernel)
        kernel.run("%load_ext mpkit\nfrom mpkit import Pipeline\nfrom tests.pipeline_tasks import slow\n"
                   "pipe = Pipeline('p').stage(slow, workers=1, name='a')\nout = pipe.run(range(10))")
        shown_after_end = kernel.start("pipe.dashboard()")
        kernel.collect(shown_after_end)
        kernel.run("s = pipe.dashboard().summary()\nassert 'completed 10' in s")
        second_run = kernel.start("out = pipe.run(range(30))\nassert len(out) == 30")
        assert kernel.collect(second_run, timeout=120).status == "ok"
        drain(kernel)
    finally:
        kernel.close()
    (first,) = [o for o in front.outputs if o["cell"] == shown_after_end]
    assert WIDGET not in first["data"], "the dashboard shown after the end is a live widget"
    assert "completed 10" in text(first["data"]["text/html"]), text(first["data"]["text/html"])
    own = [o for o in front.outputs if o["cell"] == second_run]
    assert len(own) == 1 and own[0]["display_id"], f"run 2's cell showed {len(own)} outputs"
    assert "finished" in text(own[0]["data"]["text/html"]) and "completed 30" in text(own[0]["data"]["text/html"])
