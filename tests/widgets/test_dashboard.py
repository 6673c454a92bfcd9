"""The pipeline dashboard: ipywidgets fed hand-built PipelineStats, no kernel and no engine."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import traitlets

from mpkit.engine._pipeline_stats import PipelineStats
from tests.widgets.pipeline_snapshots import three_stages, with_stage
from tests.widgets.shown import header, stages, text

ipywidgets = pytest.importorskip("ipywidgets")
from mpkit.widgets._dashboard import CSS, Dashboard
from mpkit.widgets._summary import summary_html


def tree(widget):
    """The widget, every descendant, and their layout and style models."""
    yield widget
    for part in ("layout", "style"):
        if isinstance(getattr(widget, part, None), ipywidgets.Widget):
            yield getattr(widget, part)
    for child in getattr(widget, "children", ()):
        yield from tree(child)


def cards(dash) -> list[str]:
    """Each card's HTML, in order."""
    return re.findall(r'<div class="mpkit-stage .*?</p></div>', stages(dash.panel.value))


def card(dash, name) -> str:
    (found,) = [c for c in cards(dash) if f"mpkit-stage-{name} " in c]
    return found


def count_changes(dash):
    changes = []
    for widget in tree(dash.widget):
        widget.observe(changes.append, names=traitlets.All)
    return changes


def live_widgets() -> int:
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


def test_cards_show_each_snapshot():
    dash = Dashboard("demo")
    for step in (1, 2, 3):
        stats = three_stages(step)
        dash.update(stats)
        assert [re.search(r"mpkit-stage-(\S+)", c).group(1) for c in cards(dash)] == [
            "parse", "batch-embed", "embed"]                                 # in order
        parse = text(card(dash, "parse"))
        assert f"{min(8, step)} / 8 queued" in parse
        assert f"in {10 * step} \u00b7 out {10 * step}" in parse
        assert f"{5.0 * step:.1f} items/s \u00b7 12.3 ms/item" in parse
        assert "1 of 2 workers busy" in parse
        embed = text(card(dash, "embed"))
        assert f"errors {step // 2} \u00b7 dropped 1" in embed
        assert "mpkit-full" in card(dash, "embed")                         # a full input
        head = text(header(dash.panel.value))
        assert head.startswith(f"demo running {1.0 + step:.1f}s")
        for name in ("completed", "pending", "failed"):
            assert f"{name} {getattr(stats, name)}" in head


def test_batcher_card():
    dash = Dashboard("demo", on_scale=lambda name, n: None, workers={"parse": 2, "embed": 4})
    dash.update(three_stages(1))
    batcher = card(dash, "batch-embed")
    assert "mpkit-kind-batch" in batcher and "batcher" in text(batcher)
    assert "2 / 64 queued" in text(batcher) and "ms/item" not in batcher
    assert sorted(dash.scales) == ["embed", "parse"]                     # not the batcher


def test_workers_in_words():
    dash = Dashboard("demo")
    dash.update(with_stage(three_stages(1), "embed", workers=0, target_workers=2, busy=0))
    assert "starting 2 workers" in text(card(dash, "embed"))
    dash.update(with_stage(three_stages(1), "embed", workers=2, target_workers=4, busy=1))
    assert "scaling 2 \u2192 4 workers (1 busy)" in text(card(dash, "embed"))
    assert "->" not in stages(dash.panel.value)


def test_bottleneck_is_a_class_and_a_visible_badge_not_geometry():
    dash = Dashboard("demo")
    dash.update(three_stages(0))
    plain = card(dash, "embed")
    assert "mpkit-bottleneck " not in plain and 'mpkit-bottleneck"' not in plain
    dash.update(replace(three_stages(0), stages=tuple(
        replace(s, bottleneck=s.name == "embed") for s in three_stages(0).stages)))
    marked = card(dash, "embed")
    assert "mpkit-bottleneck" in marked.split(">")[0]
    # the same lines, the badge always there (hidden by CSS when not marked), one border width
    assert marked.replace(" mpkit-bottleneck", "", 1) == plain
    assert re.findall(r"border:\s*(\d+)px", CSS) == ["2"]


def test_an_update_sets_only_the_one_html_value_and_makes_no_widget():
    dash = Dashboard("demo", on_stop=lambda: None, on_scale=lambda name, n: None,
                     workers={"parse": 2, "embed": 4})
    stats = three_stages(2)
    dash.update(stats)
    changes = count_changes(dash)
    before = live_widgets()
    dash.update(stats)
    assert changes == []                                      # the same snapshot: nothing sent
    dash.update(with_stage(stats, "parse", received=21))
    assert [(c["owner"], c["name"]) for c in changes] == [(dash.panel, "value")]
    changes.clear()
    for step in range(3, 30):
        dash.update(three_stages(step))
    assert {(c["owner"], c["name"]) for c in changes} == {(dash.panel, "value")}
    assert live_widgets() == before


def test_stop_button_calls_on_stop():
    calls = []
    dash = Dashboard("demo", on_stop=lambda: calls.append("stop"))
    dash.update(three_stages(1))
    button = dash.stop_button
    assert (button.description, button.disabled) == ("Stop", False)
    button.click()
    assert calls == ["stop"]
    assert button.description == "stopping\u2026" and button.disabled


def test_no_controls_without_callbacks():
    dash = Dashboard("demo", workers={"parse": 2})
    dash.update(three_stages(1))
    assert dash.stop_button is None and dash.scales == {} and dash.controls is None


def test_scale_input_calls_on_scale_only_for_user_changes():
    calls = []
    dash = Dashboard("demo", on_scale=lambda name, n: calls.append((name, n)), workers={"embed": 4})
    dash.update(three_stages(1))
    scale = dash.scales["embed"]
    assert scale.value == 4
    scale.value = 6                                            # as the browser would set it
    assert calls == [("embed", 6)]
    dash.update(three_stages(1))                               # the engine has not caught up:
    assert scale.value == 6                                    # the user's value stays
    dash.update(with_stage(three_stages(1), "embed", target_workers=6, workers=5))
    assert "scaling 5 \u2192 6 workers" in text(card(dash, "embed"))
    dash.update(with_stage(three_stages(1), "embed", target_workers=3))  # scaled elsewhere
    assert scale.value == 3
    assert calls == [("embed", 6)]                             # snapshots never call back
    poller = threading.Thread(target=dash.update,                # nor from the engine's thread
                              args=(with_stage(three_stages(1), "embed", target_workers=5),))
    poller.start()
    poller.join(10)
    assert scale.value == 5 and calls == [("embed", 6)]


def test_overall_progress_with_a_total():
    dash = Dashboard("demo")
    dash.update(replace(three_stages(4), total=100))           # 24 + 2 + 1 ended after 5 s
    head = text(header(dash.panel.value))
    assert "27 / 100 27%" in head
    assert "ETA 13.5s" in head                               # 73 left at 5.4 items/s
    dash.update(three_stages(4))                               # no len(): done / submitted
    assert "done 27 of 45 submitted" in text(header(dash.panel.value))


def ended(outcome: str, **totals) -> PipelineStats:
    """A final snapshot: nothing inside, the live rates decayed to zero."""
    stats = three_stages(3)
    stages = tuple(replace(s, busy=0, queued=0, in_flight=0, rate=0.0, bottleneck=False)
                   for s in stats.stages)
    return replace(stats, stages=stages, state="failed" if outcome == "failed" else "stopped",
                   outcome=outcome, pending=0, elapsed=10.0, **totals)


@pytest.mark.parametrize("outcome", ["finished", "failed", "interrupted", "stopped"])
def test_end_states_look_different_and_tell_the_truth(outcome):
    dash = Dashboard("demo", on_stop=lambda: None, on_scale=lambda name, n: None,
                     workers={"parse": 2, "embed": 4})
    dash.update(three_stages(3))
    final = ended(outcome, cancelled=4, total=40)
    dash.close(final)
    head = text(header(dash.panel.value))
    assert f"mpkit-state-{outcome}" in header(dash.panel.value) and f"demo {outcome} 10.0s" in head
    assert "cancelled 4" in head and "pending" not in head and "ETA" not in head
    shown = text(stages(dash.panel.value))
    assert "busy" not in shown and "queued" not in shown
    assert re.search(r'class="mpkit-stage [^"]*mpkit-bottleneck', stages(dash.panel.value)) is None
    assert "mean 3.0 items/s" in text(card(dash, "parse"))     # 30 items in 10 s, not 0.0
    assert dash.stop_button.disabled and dash.stop_button.description == outcome
    html_summary = dash.summary()
    assert f"mpkit-summary-{outcome}" in html_summary and "cancelled 4" in text(html_summary)
    states = {o: ended(o) for o in ("finished", "failed", "interrupted", "stopped")}
    colours = {re.search(r"border:2px solid (#\w+)", summary_html("demo", s)).group(1)
               for s in states.values()}
    assert len(colours) == 4                                    # four outcomes, four colours


def test_close_replaces_the_panel_by_a_static_summary_and_closes_every_model():
    before = live_widgets()
    dash = Dashboard("demo", on_stop=lambda: None, on_scale=lambda name, n: None,
                     workers={"parse": 2, "embed": 4})
    models = list(tree(dash.widget))
    assert live_widgets() == before + len(models)
    for step in range(1, 6):
        dash.update(three_stages(step))
    dash.close(ended("finished"))
    assert live_widgets() == before
    assert all(m.comm is None for m in models)
    dash.update(three_stages(3))                                # later snapshots: ignored
    dash.close(three_stages(3))
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    summary = bundle["text/html"]
    assert "<svg" in summary and "<script" not in summary       # static: no kernel, no JS
    assert "finished after 10.0s" in text(summary)
    assert "pipeline 'demo' finished after 10.0s" in bundle["text/plain"]   # its outcome, as the HTML says


def test_displays_as_a_widget_with_an_html_fallback():
    dash = Dashboard("demo <b>")
    bundle = dash._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.widget.model_id
    assert "&lt;b&gt;" in bundle["text/html"] and "&lt;b&gt;" in header(dash.panel.value)


def test_import_mpkit_does_not_import_ipywidgets():
    code = ("import sys, mpkit, mpkit.widgets._dashboard, mpkit.widgets._status, "
            "mpkit.widgets._timeline; "
            "assert 'ipywidgets' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_idle_panel_does_not_resend_every_card_for_its_clock():
    """An idle service's snapshots differ only in the elapsed time: the panel (header and every
    card, 3.4 KB) was sent again ten times a second for it. The clock now moves at most about
    once a second, while a count that changed is sent at once."""
    dash = Dashboard("demo", on_stop=lambda: None)
    stats = three_stages(2)
    dash.update(stats)
    changes = count_changes(dash)
    for tick in range(1, 10):                                # a tenth of a second apart
        dash.update(replace(stats, elapsed=stats.elapsed + tick / 10))
    assert len(changes) <= 1, [text(c["new"])[:40] for c in changes]
    changes.clear()
    dash.update(with_stage(replace(stats, elapsed=stats.elapsed + 1.0), "parse", received=21))
    assert [(c["owner"], c["name"]) for c in changes] == [(dash.panel, "value")]
    assert "in 21" in text(dash.panel.value)
    dash.close(replace(stats, elapsed=stats.elapsed + 1.5, outcome="finished", state="stopped"))
    assert "4.5s" in text(header(dash.panel.value))           # the end's own time, always
