"""How a real pipeline's dashboard ends: finished, failed, interrupted (a real SIGINT) and
stopped each end in their own state, with the final counts (cancelled included), the run's mean
rates, and nothing still busy, queued or pending."""
from __future__ import annotations

import os
import re
import signal
import threading

import pytest

from mpkit import Pipeline
from mpkit.engine import MapInterrupted
from tests.pipeline_tasks import fail_odd, slow
from tests.proctree import wait_until
from tests.widgets.shown import header, stages, text

pytest.importorskip("ipywidgets")
from mpkit.widgets._dashboard import Dashboard


def watched(pipe: Pipeline) -> Dashboard:
    return pipe.observe(Dashboard(pipe.name, on_stop=lambda: None))


def check_end(dash: Dashboard, outcome: str) -> None:
    assert wait_until(lambda: dash.closed, 60), "the dashboard was never closed"
    final = dash.final
    assert final.outcome == outcome and final.accounted and final.pending == 0, final
    head, cards = text(header(dash.panel.value)), text(stages(dash.panel.value))
    assert f"{outcome} " in head and f"mpkit-state-{outcome}" in header(dash.panel.value)
    assert f"cancelled {final.cancelled:,}" in head and "pending" not in head
    assert "busy" not in cards and "queued" not in cards
    assert re.search(r'class="mpkit-stage [^"]*mpkit-bottleneck', stages(dash.panel.value)) is None
    first = final.stages[0]
    if first.done:                                    # the run's mean rate, not a decayed 0.0
        assert "mean 0.0 items/s" not in cards
    assert dash.stop_button.disabled and f"mpkit-summary-{outcome}" in dash.summary()


def test_finished_run(start_method):
    pipe = Pipeline("fin").stage(slow, workers=2).stage(slow, workers=1, name="after")
    dash = watched(pipe)
    assert len(pipe.run(range(30))) == 30
    check_end(dash, "finished")
    assert "30 / 30 100%" in text(header(dash.panel.value))


def test_the_summary_names_the_first_errors_and_counts_the_rest(start_method):
    pipe = Pipeline("some bad").stage(fail_odd, workers=2)
    dash = watched(pipe)
    out = pipe.run(range(20), on_error="collect", ordered=True)
    assert len(out) == 10 and len(out.failures) == 10
    check_end(dash, "finished")
    summary = text(dash.summary())
    shown = re.findall(r"item (\d+): ValueError: odd item (\d+)", summary)
    assert len(shown) == 3 and all(a == b and int(a) % 2 for a, b in shown), summary
    assert "and 7 more" in summary, summary


def test_failed_run(start_method):
    pipe = Pipeline("bad").stage(fail_odd, workers=2)
    dash = watched(pipe)
    with pytest.raises(Exception):
        pipe.run(range(50))
    check_end(dash, "failed")


def test_interrupted_run(start_method):
    pipe = Pipeline("int").stage(slow, workers=2)
    dash = watched(pipe)

    def interrupt():
        wait_until(lambda: pipe.stats().completed >= 5, 60)
        os.kill(os.getpid(), signal.SIGINT)                       # what the kernel's interrupt sends

    killer = threading.Thread(target=interrupt)
    killer.start()
    try:
        with pytest.raises(MapInterrupted):
            pipe.run((slow(i, 0) for i in range(100_000)), progress=False)
    finally:
        killer.join(60)
    check_end(dash, "interrupted")
    assert dash.final.cancelled > 0


def test_stopped_service(start_method):
    pipe = Pipeline("svc").stage(slow, workers=2)
    dash = watched(pipe)
    svc = pipe.start()
    futures = [svc.submit(i) for i in range(200)]
    wait_until(lambda: pipe.stats().completed >= 5, 60)
    svc.stop(drain=False, timeout=60)
    check_end(dash, "stopped")
    assert dash.final.cancelled > 0 and any(f.cancelled() for f in futures)


@pytest.mark.parametrize("ending", ["stopped service", "finished run"])
def test_a_dashboard_shown_after_the_end_is_its_summary_for_good(start_method, ending):
    """``pipe.dashboard()`` in a cell after the service was stopped (or the run finished) shows
    that end: the static summary, not the live panel saying the summary will replace it when the
    run ends (which had happened already: nothing ever replaced it). It makes no widget, and the
    next run does not take it over: it stays that end's summary, and the run shows its own."""
    from ipywidgets.widgets.widget import _instances

    pipe = Pipeline("late").stage(slow, workers=2)
    if ending == "stopped service":
        svc = pipe.start()
        assert [f.result(timeout=60) for f in [svc.submit(i) for i in range(10)]] == list(range(10))
        svc.stop(timeout=60)
        outcome = "stopped"
    else:
        assert len(pipe.run(range(10), progress=False)) == 10
        outcome = "finished"
    models = len(_instances)
    dash = pipe.dashboard()
    shown = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in shown and len(_instances) == models
    assert f"mpkit-summary-{outcome}" in shown["text/html"] and "completed 10" in text(shown["text/html"])
    assert dash.closed and dash.final.outcome == outcome
    later = watched(pipe)                                    # what the next run shows
    assert len(pipe.run(range(20), progress=False)) == 20
    check_end(later, "finished")
    assert "completed 20" in text(later.summary())
    assert "completed 10" in text(dash.summary()) and f"mpkit-summary-{outcome}" in dash.summary()
