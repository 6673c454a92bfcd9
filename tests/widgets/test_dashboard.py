"""The pipeline dashboard: ipywidgets fed hand-built PipelineStats, no kernel and no engine."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import traitlets

from tests.widgets.pipeline_snapshots import pipeline, stage, three_stages, with_stage

ipywidgets = pytest.importorskip("ipywidgets")
from mpkit.widgets._dashboard import Dashboard


def tree(widget):
    """The widget, every descendant, and their layout and style models."""
    yield widget
    for part in ("layout", "style"):
        if isinstance(getattr(widget, part, None), ipywidgets.Widget):
            yield getattr(widget, part)
    for child in getattr(widget, "children", ()):
        yield from tree(child)


def with_class(dash, css):
    return [w for w in tree(dash.widget) if css in getattr(w, "_dom_classes", ())]


def one(dash, css, within=None):
    found = with_class(dash, css) if within is None else [
        w for w in tree(within) if css in getattr(w, "_dom_classes", ())]
    assert len(found) == 1, f"{css}: {len(found)} widgets"
    return found[0]


def card(dash, name):
    return one(dash, f"mpkit-stage-{name}")


def count_changes(dash):
    changes = []
    for widget in tree(dash.widget):
        widget.observe(changes.append, names=traitlets.All)
    return changes


def test_cards_show_each_snapshot():
    dash = Dashboard("demo")
    for step in (1, 2, 3):
        stats = three_stages(step)
        dash.update(stats)
        assert with_class(dash, "mpkit-stage") == [
            card(dash, "parse"), card(dash, "batch-embed"), card(dash, "embed")]   # in order
        parse = card(dash, "parse")
        bar = one(dash, "mpkit-queue-bar", parse)
        assert (bar.value, bar.max) == (min(8, step), 8)
        assert one(dash, "mpkit-queued", parse).value == f"{min(8, step)}/8 queued"
        assert one(dash, "mpkit-received", parse).value == f"in {10 * step}"
        assert one(dash, "mpkit-emitted", parse).value == f"out {10 * step}"
        assert one(dash, "mpkit-rate", parse).value == f"{5.0 * step:.1f} items/s"
        assert one(dash, "mpkit-mean", parse).value == "12.3 ms/item"
        assert one(dash, "mpkit-workers", parse).value == "busy 1/2"
        embed = card(dash, "embed")
        assert one(dash, "mpkit-failed", embed).value == f"errors {step // 2}"
        assert one(dash, "mpkit-dropped", embed).value == "dropped 1"
        assert one(dash, "mpkit-queue-bar", embed).bar_style == "warning"   # a full input
        header = one(dash, "mpkit-header")
        assert one(dash, "mpkit-state", header).value == "running"
        assert one(dash, "mpkit-elapsed", header).value == f"{1.0 + step:.1f}s"
        assert one(dash, "mpkit-submitted", header).value == f"submitted {stats.submitted}"
        assert one(dash, "mpkit-completed", header).value == f"completed {stats.completed}"
        assert one(dash, "mpkit-pending", header).value == f"pending {stats.pending}"
        assert one(dash, "mpkit-failed", header).value == f"failed {stats.failed}"


def test_batcher_card():
    dash = Dashboard("demo", on_scale=lambda name, n: None)
    dash.update(three_stages(1))
    batcher = card(dash, "batch-embed")
    assert "mpkit-kind-batch" in batcher._dom_classes
    assert one(dash, "mpkit-kind", batcher).value == "batcher"
    assert one(dash, "mpkit-workers", batcher).value == "holding 3"
    assert (one(dash, "mpkit-queue-bar", batcher).max, one(dash, "mpkit-queued", batcher).value) \
        == (64, "2/64 queued")
    assert [w for w in tree(batcher) if "mpkit-scale" in getattr(w, "_dom_classes", ())] == []
    assert len(with_class(dash, "mpkit-scale")) == 2          # parse and embed, not the batcher


def test_bottleneck_is_marked_and_unmarked():
    dash = Dashboard("demo")
    dash.update(three_stages(0))
    assert with_class(dash, "mpkit-bottleneck") == []
    assert one(dash, "mpkit-bottleneck-badge", card(dash, "embed")).value == ""
    dash.update(three_stages(1))
    embed = card(dash, "embed")
    assert with_class(dash, "mpkit-bottleneck") == [embed]
    assert one(dash, "mpkit-bottleneck-badge", embed).value == "bottleneck"
    assert "e67e22" in embed.layout.border                        # orange frame
    assert "e67e22" not in card(dash, "parse").layout.border
    dash.update(with_stage(three_stages(1), "embed", bottleneck=False))
    assert with_class(dash, "mpkit-bottleneck") == []


def test_only_changed_traits_are_set():
    dash = Dashboard("demo", on_stop=lambda: None, on_scale=lambda name, n: None)
    stats = three_stages(2)
    dash.update(stats)
    changes = count_changes(dash)
    dash.update(stats)
    assert changes == []                                      # the same snapshot: nothing sent
    stats = with_stage(stats, "parse", received=21)
    dash.update(stats)
    assert [(c["owner"].value, c["name"]) for c in changes] == [("in 21", "value")]
    changes.clear()
    dash.update(with_stage(stats, "embed", bottleneck=False))
    # the badge text, the card's class list, and its frame (ipywidgets keeps four border sides)
    sides = {f"border_{side}" for side in ("top", "right", "bottom", "left")}
    assert sorted(c["name"] for c in changes) == sorted({"value", "_dom_classes"} | sides)
    assert all(c["owner"] in list(tree(card(dash, "embed"))) for c in changes)


def test_stop_button_calls_on_stop():
    calls = []
    dash = Dashboard("demo", on_stop=lambda: calls.append("stop"))
    dash.update(three_stages(1))
    button = one(dash, "mpkit-stop")
    assert (button.description, button.disabled) == ("Stop", False)
    button.click()
    assert calls == ["stop"]
    assert button.description == "stopping\u2026" and button.disabled
    dash.close(with_stage(three_stages(2), "embed"))
    assert button.disabled


def test_no_controls_without_callbacks():
    dash = Dashboard("demo")
    dash.update(three_stages(1))
    assert with_class(dash, "mpkit-stop") == [] and with_class(dash, "mpkit-scale") == []


def test_scale_input_calls_on_scale_only_for_user_changes():
    calls = []
    dash = Dashboard("demo", on_scale=lambda name, n: calls.append((name, n)))
    dash.update(three_stages(1))
    scale = one(dash, "mpkit-scale", card(dash, "embed"))
    assert scale.value == 4
    scale.value = 6                                            # as the browser would set it
    assert calls == [("embed", 6)]
    dash.update(three_stages(1))                               # the engine has not caught up:
    assert scale.value == 6                                    # the user's value stays
    dash.update(with_stage(three_stages(1), "embed", target_workers=6, workers=5))
    assert one(dash, "mpkit-workers", card(dash, "embed")).value == "busy 4/5->6"
    dash.update(with_stage(three_stages(1), "embed", target_workers=3))  # scaled elsewhere
    assert scale.value == 3
    assert calls == [("embed", 6)]                             # snapshots never call back
    poller = threading.Thread(target=dash.update,                # nor from the engine's thread
                              args=(with_stage(three_stages(1), "embed", target_workers=5),))
    poller.start()
    poller.join(10)
    assert scale.value == 5 and calls == [("embed", 6)]


def test_close_disables_controls_and_ignores_later_updates():
    dash = Dashboard("demo", on_stop=lambda: None, on_scale=lambda name, n: None)
    dash.update(three_stages(1))
    final = pipeline(stage("parse", received=10, emitted=10), stage("batch:embed", kind="batch"),
                     stage("embed"), state="stopped", elapsed=9.5, submitted=10, completed=10,
                     results=10)
    dash.close(final)
    assert one(dash, "mpkit-state").value == "stopped"
    assert one(dash, "mpkit-stop").disabled
    assert all(s.disabled for s in with_class(dash, "mpkit-scale"))
    assert "mpkit-closed" in dash.widget._dom_classes and "5cb85c" in dash.widget.layout.border
    dash.update(three_stages(3))
    assert one(dash, "mpkit-elapsed").value == "9.5s"


def test_failed_run_has_a_red_frame():
    dash = Dashboard("demo")
    dash.close(three_stages(2))              # closed without an update first; one failure
    assert "d9534f" in dash.widget.layout.border
    assert one(dash, "mpkit-failed", one(dash, "mpkit-header")).style.text_color == "#d9534f"


def test_cards_rebuilt_when_the_stages_change():
    dash = Dashboard("demo")
    dash.update(pipeline(state="ready"))
    assert with_class(dash, "mpkit-stage") == []
    dash.update(three_stages(1))
    assert len(with_class(dash, "mpkit-stage")) == 3
    assert len(with_class(dash, "mpkit-arrow")) == 2


def test_displays_as_a_widget():
    dash = Dashboard("demo <b>")
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.widget.model_id
    assert "&lt;b&gt;" in one(dash, "mpkit-title").value


def test_import_mpkit_does_not_import_ipywidgets():
    code = ("import sys, mpkit, mpkit.widgets._dashboard, mpkit.widgets._status, "
            "mpkit.widgets._timeline; "
            "assert 'ipywidgets' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
