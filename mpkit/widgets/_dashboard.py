"""A live ipywidgets panel for one pipeline, fed only by ``PipelineStats`` snapshots.

    Dashboard (.mpkit-dashboard)
    +----------------------------------------------------------------------------+
    | title  running  12.3s  submitted 100  completed 80  failed 1 ...   [Stop]   |  .mpkit-header
    | +-- parse --------+  ->  +-- batch:embed --+  ->  +-- embed ==========+      |  .mpkit-stages
    | | busy 2/2        |      | holding 3       |      | busy 4/4          |      |
    | | [##---] 2/8     |      | [-----] 0/64    |      | [#####] 8/8       |      |
    | +-----------------+      +-----------------+      +== bottleneck =====+      |
    +----------------------------------------------------------------------------+

A ``mpkit.engine.PipelineObserver``: the engine (from an observer thread of its own) or a poller
calls ``update(stats)`` at most ``SNAPSHOT_HZ`` times a second and ``close(stats)`` once; the controls only call back (``on_stop()``, ``on_scale(name, n)``), so this
module never touches a queue or a process. Cards are built from the first snapshot that has
stages and rebuilt only if the stage names change. ipywidgets is imported when a Dashboard is made.
"""
from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from ..engine._pipeline_stats import PipelineStats
from . import _format as fmt
from ._stage_card import StageCard, close_tree, set_if_changed

#: Colour of the state text; a state not listed keeps the default colour.
STATE_COLORS = {"running": "#1f77b4", "stopping": "#e67e22", "stopped": "#2e7d32",
                "failed": "#d9534f"}
TOTALS = ("submitted", "completed", "failed", "dropped", "cancelled", "pending")
DONE_STATES = ("stopped", "failed")


class Dashboard:
    """One pipeline's panel: a header line with totals, then one card per stage, in order.

    ``on_stop()`` adds a Stop button; ``on_scale(stage_name, n)`` adds a worker-count input to
    every process stage (not to batchers). Display it with a bare ``dash`` in a cell.
    """

    def __init__(self, title: str, on_stop: Callable[[], Any] | None = None,
                 on_scale: Callable[[str, int], Any] | None = None):
        import ipywidgets as w

        self._w = w
        self.title = title
        self._on_stop, self._on_scale = on_stop, on_scale
        self.cards: list[StageCard] = []
        self.closed = False

        def label(css: str, value: str = "") -> Any:
            widget = w.Label(value)
            widget.add_class(css)
            return widget

        self._title = w.HTML(f"<b>{html.escape(title)}</b>")
        self._title.add_class("mpkit-title")
        self.state = label("mpkit-state", "ready")
        self.state.style.font_weight = "bold"
        self.elapsed = label("mpkit-elapsed", fmt.elapsed(0.0))
        self.totals = {name: label(f"mpkit-{name}", f"{name} 0") for name in TOTALS}
        header = [self._title, self.state, self.elapsed, *self.totals.values()]

        self.stop_button = None
        if on_stop is not None:
            self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop",
                                        tooltip="Stop the pipeline",
                                        layout=w.Layout(width="auto"))
            self.stop_button.add_class("mpkit-stop")
            self.stop_button.on_click(self._stop_clicked)
            header.append(self.stop_button)

        self.header = w.HBox(header, layout=w.Layout(grid_gap="0 12px", align_items="center",
                                                     flex_flow="row wrap"))
        self.header.add_class("mpkit-header")
        self.stages = w.HBox([], layout=w.Layout(flex_flow="row wrap", align_items="stretch"))
        self.stages.add_class("mpkit-stages")
        self.widget = w.VBox([self.header, self.stages],
                             layout=w.Layout(border="1px solid #e0e0e0", padding="4px"))
        self.widget.add_class("mpkit-dashboard")

    # -- snapshots ---------------------------------------------------------------------------

    def update(self, stats: PipelineStats) -> None:
        """Show one snapshot; only the traits whose value changed are set. Ignored once closed."""
        if self.closed:
            return
        title = self.title if stats.name in ("", self.title) else f"{self.title} ({stats.name})"
        set_if_changed(self._title, "value", f"<b>{html.escape(title)}</b>")
        set_if_changed(self.state, "value", stats.state)
        set_if_changed(self.state.style, "text_color", STATE_COLORS.get(stats.state))
        set_if_changed(self.elapsed, "value", fmt.elapsed(stats.elapsed))
        for name, widget in self.totals.items():
            text = f"{name} {getattr(stats, name)}"
            if name == "completed" and stats.results != stats.completed:
                text += f" (results {stats.results})"
            set_if_changed(widget, "value", text)
            if name == "failed":
                set_if_changed(widget.style, "text_color", "#d9534f" if stats.failed else None)

        if [c.name for c in self.cards] != [s.name for s in stats.stages]:
            self._build_cards(stats)
        else:
            for card, stage in zip(self.cards, stats.stages):
                card.update(stage)

        if self.stop_button is not None:
            if stats.state == "stopping":
                self._show_stopping()
            elif stats.state in DONE_STATES:
                set_if_changed(self.stop_button, "description", stats.state)
                set_if_changed(self.stop_button, "disabled", True)

    def close(self, stats: PipelineStats) -> None:
        """The final snapshot: show it, disable the controls, colour the frame by the outcome."""
        if self.closed:
            return
        self.update(stats)
        self.closed = True
        if self.stop_button is not None:
            set_if_changed(self.stop_button, "disabled", True)
            if stats.state not in ("stopping", *DONE_STATES):
                set_if_changed(self.stop_button, "description", "finished")
        for card in self.cards:
            card.disable()
        bad = stats.state == "failed" or stats.failed > 0
        set_if_changed(self.widget.layout, "border", f"2px solid {'#d9534f' if bad else '#5cb85c'}")
        self.widget.add_class("mpkit-closed")

    # -- display -----------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- internals ---------------------------------------------------------------------------

    def _build_cards(self, stats: PipelineStats) -> None:
        for child in self.stages.children:
            close_tree(child)
        self.cards = [StageCard(stage, self._on_scale) for stage in stats.stages]
        children: list[Any] = []
        for i, card in enumerate(self.cards):
            if i:
                arrow = self._w.Label("\u2192", layout=self._w.Layout(align_self="center"))
                arrow.add_class("mpkit-arrow")
                children.append(arrow)
            children.append(card.widget)
        self.stages.children = tuple(children)

    def _stop_clicked(self, _button: Any) -> None:
        self._show_stopping()
        if self._on_stop is not None:
            self._on_stop()

    def _show_stopping(self) -> None:
        set_if_changed(self.stop_button, "description", "stopping\u2026")
        set_if_changed(self.stop_button, "disabled", True)
