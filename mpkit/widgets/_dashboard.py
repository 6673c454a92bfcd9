"""A live ipywidgets panel for one pipeline, fed only by ``PipelineStats`` snapshots.

    Dashboard (.mpkit-dashboard): a VBox of built-in models, all made in __init__
    +-----------------------------------------------------------------------------+
    | inference [running] 12.3s  [####----] 80 / 100 80% ETA 0:03  completed 80 .. |  HTML .mpkit-panel:
    | +-- preprocess --+  ->  +-- batch 128 --+  ->  +-- model ====== bottleneck+   |   .mpkit-header and
    | | 2 of 2 busy    |      | batching      |      | 1 of 1 busy               |   every card (one
    | +----------------+      +---------------+      +---------------------------+   value: _stage_card)
    | [Stop]  preprocess workers [2]  model workers [1]                             |  HBox .mpkit-controls
    +-----------------------------------------------------------------------------+
            │ run or service ends: close(final)
            ▼
    every display of it becomes a static HTML summary (_summary), and its models are closed

A ``mpkit.engine.PipelineObserver``: the engine (from an observer thread of its own) or a poller
calls ``update(stats)`` at most ``SNAPSHOT_HZ`` times a second and ``close(stats)`` once; the
controls only call back (``on_stop()``, ``on_scale(name, n)``), so this module never touches a
queue or a process. Every widget is made in ``__init__``, in the caller's thread, before the
panel is displayed; an update only sets the one HTML value (and a scale input when the engine's
target moved), so the page always shows the very models being updated, whatever thread updates
them, and a snapshot costs one comm message (each has ~600 bytes of envelope: the header and the
cards as two values cost a third more than as one); one that only moves the clock is sent at
most once a second (``CLOCK_EVERY``). The panel is displayed with a ``display_id``: at the end each of its outputs is replaced by
the summary, which stays in the saved notebook, and the models are closed (none piles up in the
kernel). A panel made after a run or service ended (``Dashboard.of_ended``) is that end's summary
from the start: it makes no widget model, is closed at once and follows no later run, so each
run's summary stays where it was shown and the next run shows its own progress under the cell
that runs it. ipywidgets is imported when a live Dashboard is made.
"""
from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..engine._pipeline_stats import PipelineStats
from . import _format as fmt
from ._progress import click_now
from ._stage_card import CSS as CARD_CSS
from ._stage_card import MAX_WORKERS, card_html, close_tree, num, queue_bar, set_if_changed
from ._summary import BADGE_STYLE, STATE_COLORS, shown_state, summary_html

#: Snapshots kept for the summary's figures; when full, every other one is dropped (the figures
#: lose detail evenly, never the start of the run). 400 points are plenty for 300 pixels.
HISTORY_POINTS = 400
#: Seconds between two sends of a panel whose only change is its clock (the elapsed time and the
#: ETA): an idle service's snapshots, ten a second, resent the whole panel (3.4 KB) each time.
#: A person reads a clock ticking once a second; any other change is sent at once.
CLOCK_EVERY = 1.0
#: What changes with the clock alone (start, end), left out when telling whether anything else did.
_CLOCK = (("<span class=mpkit-elapsed>", "</span>"), (" ETA <n-6>", "</n-6>"))
STOPPING = "stopping\u2026"
SEP = " \u00b7 "
#: The header's style (with the cards'), sent once in a widget of its own.
CSS = CARD_CSS + "".join(
    f".mpkit-dashboard .mpkit-state-{state}{{background:{color}}}\n" for state, color in STATE_COLORS.items()) + """
.mpkit-dashboard .mpkit-header{display:flex;align-items:center;gap:0 14px;white-space:nowrap;overflow:hidden;
  font-variant-numeric:tabular-nums}
.mpkit-dashboard .mpkit-title{display:inline-block;max-width:16em;overflow:hidden;text-overflow:ellipsis}
.mpkit-dashboard .mpkit-state{""" + BADGE_STYLE + """}
.mpkit-dashboard .mpkit-bar.mpkit-wide{width:120px}
"""


def header_html(title: str, stats: PipelineStats) -> str:
    """The header line: title, state, elapsed time, overall progress, totals."""
    state = shown_state(stats)
    ended = bool(stats.outcome)
    parts = [f"<b class=mpkit-title>{html.escape(title)}</b>",
             f'<span class="mpkit-state mpkit-state-{html.escape(state)}">{html.escape(state)}</span>',
             f"<span class=mpkit-elapsed>{num(fmt.elapsed(stats.elapsed), 6)}</span>"]
    done, total = stats.ended, stats.total
    if total:
        pct = min(100.0, 100.0 * done / total)
        progress = f"{queue_bar(done, total, ' mpkit-wide')} {num(done, 5)} / {total:,} {num(f'{pct:.0f}%', 4)}"
        if not ended:
            rate = done / stats.elapsed if stats.elapsed > 0 else 0.0
            left = fmt.eta((total - done) / rate) if rate > 0 and done < total else "\u2013"
            progress += f" ETA {num(left, 6)}"
    else:
        progress = f"done {num(done, 5)} of {stats.submitted:,} submitted"
    parts.append(f"<span class=mpkit-progress>{progress}</span>")
    totals = [f"completed {num(stats.completed, 5)}",
              f'<span{" class=mpkit-err" if stats.failed else ""}>failed {num(stats.failed, 3)}</span>',
              f"dropped {num(stats.dropped, 3)}", f"cancelled {num(stats.cancelled, 3)}"]
    if not ended:
        totals.append(f"pending {num(stats.pending, 4)}")
    if stats.results != stats.completed:
        totals.append(f"results {num(stats.results, 5)}")
    parts.append(f"<span class=mpkit-totals>{SEP.join(totals)}</span>")
    return f'<div class=mpkit-header>{"".join(parts)}</div>'


def stages_html(stats: PipelineStats) -> str:
    """Every stage's card in one row, arrows between them; the row scrolls, it never wraps."""
    ended = bool(stats.outcome)
    arrow = "<span class=mpkit-arrow>\u2192</span>"
    cards = arrow.join(card_html(s, stats.elapsed, ended) for s in stats.stages)
    return f"<div class=mpkit-cards>{cards}</div>"


def panel_html(title: str, stats: PipelineStats) -> str:
    """The header, then the cards: the one value a snapshot sets."""
    return header_html(title, stats) + stages_html(stats)


def _unclocked(panel: str) -> str:
    """The panel's HTML without its elapsed time and ETA (a few finds: a regex costs 20 us)."""
    for start, end in _CLOCK:
        i = panel.find(start)
        if i >= 0:
            j = panel.find(end, i + len(start))
            panel = panel[:i] + panel[j + len(end):]
    return panel


class Dashboard:
    """One pipeline's panel: a header with totals and progress, one card per stage, controls.

    ``on_stop()`` adds a Stop button; ``on_scale(stage_name, n)`` adds a worker-count input for
    each stage of ``workers`` (``{stage name: workers now}``, process stages that can be scaled).
    Display it with a bare ``dash`` in a cell (or ``display(dash)``).
    """

    def __init__(self, title: str, on_stop: Callable[[], Any] | None = None,
                 on_scale: Callable[[str, int], Any] | None = None,
                 workers: Mapping[str, int] | None = None):
        import ipywidgets as w

        self._start(title)
        self._on_stop, self._on_scale = on_stop, on_scale

        ready = PipelineStats(title, "ready", 0.0, 0, 0, 0, 0, 0, 0, ())
        self.style = w.HTML(f"<style>{CSS}</style>")   # sent once; updates send classes and figures
        self.style.add_class("mpkit-style")
        self.panel = w.HTML(panel_html(title, ready))
        self.panel.add_class("mpkit-panel")
        controls: list[Any] = []
        self.stop_button = None
        if on_stop is not None:
            self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop",
                                        tooltip="Stop the pipeline", layout=w.Layout(width="8em"))
            self.stop_button.add_class("mpkit-stop")
            # a blocking run() holds the kernel's main thread: its click is taken where it arrives,
            # and only there (on_click too would take it twice); on_click where that cannot be
            if not click_now(self.stop_button, lambda: self._stop_clicked(self.stop_button)):
                self.stop_button.on_click(self._stop_clicked)
            controls.append(self.stop_button)
        self.scales: dict[str, Any] = {}
        if on_scale is not None:
            for name, n in (workers or {}).items():
                scale = w.BoundedIntText(value=max(1, n), min=1, max=MAX_WORKERS,
                                         description=f"{name} workers",
                                         style={"description_width": "initial"},
                                         layout=w.Layout(width="auto"))
                scale.add_class("mpkit-scale")
                scale.observe(self._scaled(name), names="value")
                self.scales[name] = scale
                self._targets[name] = n
                controls.append(scale)
        parts = [self.style, self.panel]
        self.controls = None
        if controls:
            self.controls = w.HBox(controls, layout=w.Layout(grid_gap="0 16px", align_items="center"))
            self.controls.add_class("mpkit-controls")
            parts.append(self.controls)
        self.widget = w.VBox(parts, layout=w.Layout(border="1px solid #e0e0e0", padding="4px"))
        self.widget.add_class("mpkit-dashboard")

    @classmethod
    def of_ended(cls, title: str, history: Sequence[PipelineStats], final: PipelineStats) -> "Dashboard":
        """The panel of a run or service that ended already: its summary, closed from the start
        (no widget model is made, nothing to close later), attached to no pipeline."""
        dash = cls.__new__(cls)
        dash._start(title)
        dash._on_stop = dash._on_scale = None
        dash.style = dash.panel = dash.stop_button = dash.controls = dash.widget = None
        dash.scales = {}
        for stats in history:
            dash._keep(stats)
        dash._keep(final, last=True)
        dash.closed, dash.final = True, final
        return dash

    def _start(self, title: str) -> None:
        """The state of a panel before any snapshot, live or not."""
        self.title = title
        self.closed = False
        self.final: PipelineStats | None = None
        self._lock = threading.RLock()
        self._history: list[PipelineStats] = []
        self._step = 1                       # keep every _step-th snapshot (doubles when full)
        self._seen = 0
        self._handles: list[Any] = []        # one DisplayHandle per display of the panel
        self._targets: dict[str, int] = {}   # last target_workers seen per stage
        self._writer: int | None = None      # the thread inside update() writing a scale input
        self._sent_unclocked = ""            # the panel's value last sent, without its clock
        self._sent_at = 0.0                  # when it was sent (time.monotonic())

    # -- snapshots ---------------------------------------------------------------------------

    def update(self, stats: PipelineStats) -> None:
        """Show one snapshot: the header's and the cards' HTML, sent only if it changed."""
        with self._lock:
            if self.closed:
                return
            self._keep(stats)
            self._show(stats)

    def close(self, stats: PipelineStats) -> None:
        """The final snapshot: every display of the panel becomes the static summary, and every
        widget model of it is closed. Later updates and closes do nothing."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.final = stats
            self._keep(stats, last=True)
            self._show(stats, final=True)
            summary = self._summary_bundle()
            for handle in self._handles:
                handle.update(summary, raw=True)
            close_tree(self.widget)

    def summary(self) -> str:
        """The static HTML summary of the last snapshot seen (the final one once closed)."""
        with self._lock:
            last = self._last()
            if last is None:
                return ""
            return summary_html(self.title, last, self._history)

    # -- display -----------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython.display import display

        with self._lock:
            if self.closed:
                display(self._summary_bundle(), raw=True)
                return
            handle = display(self._bundle(), raw=True, display_id=True)
            if handle is not None:
                self._handles.append(handle)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self._bundle()

    def _bundle(self) -> dict:
        """The summary once closed, else the live panel."""
        return self._summary_bundle() if self.closed else self._live_bundle()

    def _live_bundle(self) -> dict:
        bundle = dict(self.widget._repr_mimebundle_())
        # shown where widgets cannot be (a notebook saved while it runs, opened elsewhere)
        bundle["text/html"] = (f"<p>Live dashboard of pipeline <b>{html.escape(self.title)}</b>: "
                               "it shows in Jupyter while its kernel runs; the summary replaces it "
                               "when the run or service ends.</p>")
        return bundle

    def _summary_bundle(self) -> dict:
        from ._status import summary

        last = self._last()
        if last is None:
            return {"text/plain": f"pipeline {self.title!r}: no run yet"}
        return {"text/html": summary_html(self.title, last, self._history),
                "text/plain": summary(self.title, last)}

    # -- internals ---------------------------------------------------------------------------

    def _last(self) -> PipelineStats | None:
        """The final snapshot once closed, else the last one seen (None before any)."""
        return self.final or (self._history[-1] if self._history else None)

    def _keep(self, stats: PipelineStats, last: bool = False) -> None:
        """History for the summary's figures, thinned evenly to at most HISTORY_POINTS."""
        self._seen += 1
        if last or self._seen % self._step == 0:
            self._history.append(stats)
        if len(self._history) > HISTORY_POINTS:
            self._history = self._history[::2]
            self._step *= 2

    def _show(self, stats: PipelineStats, final: bool = False) -> None:
        title = self.title if stats.name in ("", self.title) else f"{self.title} ({stats.name})"
        self._send(panel_html(title, stats), final)
        ended = bool(stats.outcome)
        for stage in stats.stages:
            scale = self.scales.get(stage.name)
            if scale is None or stage.kind != "stage":
                continue
            if ended:
                set_if_changed(scale, "disabled", True)
            elif stage.target_workers != self._targets.get(stage.name):
                # Follow the engine's target only when it moves, so a value the user is still
                # typing is not overwritten by the previous target. Observers run on the thread
                # that sets the trait: a change made by this thread now is the snapshot's.
                self._targets[stage.name] = stage.target_workers
                self._writer = threading.get_ident()
                try:
                    set_if_changed(scale, "value", max(1, stage.target_workers))
                finally:
                    self._writer = None
        if self.stop_button is not None:
            if ended:
                set_if_changed(self.stop_button, "description", shown_state(stats))
                set_if_changed(self.stop_button, "disabled", True)
            elif stats.state == "stopping":
                self._show_stopping()

    def _send(self, value: str, final: bool) -> None:
        """Set the panel's value, unless only its clock moved and it was sent under CLOCK_EVERY
        seconds ago (the final snapshot is always sent)."""
        if value == self.panel.value:
            return
        unclocked, now = _unclocked(value), time.monotonic()
        if not final and unclocked == self._sent_unclocked and now - self._sent_at < CLOCK_EVERY:
            return
        self.panel.value = value
        self._sent_unclocked, self._sent_at = unclocked, now

    def _scaled(self, name: str) -> Callable[[dict], None]:
        def changed(change: dict) -> None:
            if self._writer != threading.get_ident() and self._on_scale is not None:
                self._on_scale(name, int(change["new"]))
        return changed

    def _stop_clicked(self, _button: Any) -> None:
        self._show_stopping()
        if self._on_stop is not None:
            self._on_stop()

    def _show_stopping(self) -> None:
        set_if_changed(self.stop_button, "description", STOPPING)
        set_if_changed(self.stop_button, "disabled", True)
