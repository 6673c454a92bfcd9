"""One stage's card in the pipeline dashboard: a small ipywidgets panel over one ``StageStats``.

    card  .mpkit-stage .mpkit-stage-<name> .mpkit-kind-<stage|batch> (+ .mpkit-bottleneck)
    +------------------------------------------------------------------+
    | embed  [stage]  [bottleneck]                    .mpkit-name ...   |
    | busy 2/3->4   [workers: 4]                .mpkit-workers .mpkit-scale
    | [#######-----]  5/8 queued           .mpkit-queue-bar .mpkit-queued
    | in 120  out 118  45.2 items/s  12.3 ms/item  .mpkit-received ...  |
    | errors 0  dropped 0                        .mpkit-failed .mpkit-dropped
    +------------------------------------------------------------------+

Every update goes through :func:`set_if_changed`, so a snapshot that changed one count sends one
trait change to the browser, not thirty. ipywidgets is imported only when a card is built.
"""
from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable
from typing import Any

from ..engine._pipeline_stats import StageStats
from . import _format as fmt

BORDER = "1px solid #c8c8c8"
BOTTLENECK_BORDER = "3px solid #e67e22"   # orange: the stage that holds the pipeline back
ERROR_COLOR = "#d9534f"                   # tqdm.notebook's 'danger' red
#: Upper bound of the worker-count input; the engine decides what it accepts.
MAX_WORKERS = 1024


def set_if_changed(obj: Any, name: str, value: Any) -> bool:
    """Set a trait only when its value differs, so an unchanged figure costs no comm message."""
    if getattr(obj, name) != value:
        setattr(obj, name, value)
        return True
    return False


def close_tree(widget: Any) -> None:
    """Close a widget and everything inside it (their comms too)."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()


def css_name(stage_name: str) -> str:
    """The card's per-stage CSS class: ``mpkit-stage-<name>``, other characters turned into ``-``."""
    return "mpkit-stage-" + re.sub(r"[^A-Za-z0-9_-]", "-", stage_name)


class StageCard:
    """The widgets of one stage; :meth:`update` copies a snapshot into them."""

    def __init__(self, stage: StageStats, on_scale: Callable[[str, int], Any] | None = None):
        import ipywidgets as w

        self.name, self.kind = stage.name, stage.kind
        self._on_scale = on_scale
        self._target: int | None = None   # last target_workers seen in a snapshot
        self._writer: int | None = None   # the thread inside update() writing the scale input

        def label(css: str) -> Any:
            widget = w.Label("")
            widget.add_class(css)
            return widget

        title = w.HTML(f"<b>{html.escape(stage.name)}</b>")
        title.add_class("mpkit-name")
        kind = label("mpkit-kind")
        kind.value = "batcher" if stage.kind == "batch" else "stage"
        kind.style.text_color = "#777777"
        self.badge = label("mpkit-bottleneck-badge")
        self.badge.style.text_color = "#e67e22"
        self.badge.style.font_weight = "bold"
        self.workers = label("mpkit-workers")
        self.bar = w.IntProgress(value=0, min=0, max=max(1, stage.capacity),
                                 layout=w.Layout(width="140px"))
        self.bar.add_class("mpkit-queue-bar")
        self.queued = label("mpkit-queued")
        self.received, self.emitted = label("mpkit-received"), label("mpkit-emitted")
        self.rate, self.mean = label("mpkit-rate"), label("mpkit-mean")
        self.failed, self.dropped = label("mpkit-failed"), label("mpkit-dropped")

        self.scale = None
        if on_scale is not None and stage.kind == "stage":
            self.scale = w.BoundedIntText(
                value=max(1, stage.target_workers), min=1, max=MAX_WORKERS, description="workers",
                style={"description_width": "initial"}, layout=w.Layout(width="9em"))
            self.scale.add_class("mpkit-scale")
            self._target = stage.target_workers
            self.scale.observe(self._scaled, names="value")

        worker_row = [self.workers] + ([self.scale] if self.scale is not None else [])
        gap = w.Layout(grid_gap="0 10px", flex_flow="row wrap")
        self.widget = w.VBox(
            [w.HBox([title, kind, self.badge], layout=gap),
             w.HBox(worker_row, layout=gap),
             w.HBox([self.bar, self.queued], layout=gap),
             w.HBox([self.received, self.emitted, self.rate, self.mean], layout=gap),
             w.HBox([self.failed, self.dropped], layout=gap)],
            layout=w.Layout(border=BORDER, padding="2px 8px", margin="2px", min_width="250px"))
        for css in ("mpkit-stage", css_name(stage.name), f"mpkit-kind-{stage.kind}"):
            self.widget.add_class(css)
        self.update(stage)

    def update(self, s: StageStats) -> None:
        set_if_changed(self.workers, "value",
                       f"holding {s.in_flight}" if s.kind == "batch" else f"busy {fmt.workers(s)}")
        # max before value: IntProgress clamps value into [min, max].
        set_if_changed(self.bar, "max", max(1, s.capacity))
        set_if_changed(self.bar, "value", min(s.queued, max(1, s.capacity)))
        set_if_changed(self.bar, "bar_style",
                       "warning" if s.capacity and s.queued >= s.capacity else "")
        set_if_changed(self.queued, "value", f"{fmt.queue(s)} queued")
        set_if_changed(self.received, "value", f"in {s.received}")
        set_if_changed(self.emitted, "value", f"out {s.emitted}")
        set_if_changed(self.rate, "value", f"{fmt.rate(s.rate)} items/s")
        set_if_changed(self.mean, "value", f"{fmt.mean_ms(s.mean_seconds)} ms/item")
        set_if_changed(self.failed, "value", f"errors {s.failed}")
        set_if_changed(self.failed.style, "text_color", ERROR_COLOR if s.failed else None)
        set_if_changed(self.dropped, "value", f"dropped {s.dropped}")
        self._mark_bottleneck(s.bottleneck)
        if self.scale is not None and s.target_workers != self._target:
            # Follow the engine's target only when it moves, so a value the user is still
            # typing is not overwritten by the previous target.
            # Observers run on the thread that sets the trait: a change made by this thread
            # now is the snapshot's, while the user's arrives on the kernel's thread.
            self._target = s.target_workers
            self._writer = threading.get_ident()
            try:
                set_if_changed(self.scale, "value", max(1, s.target_workers))
            finally:
                self._writer = None

    def disable(self) -> None:
        if self.scale is not None:
            set_if_changed(self.scale, "disabled", True)

    def _mark_bottleneck(self, bottleneck: bool) -> None:
        set_if_changed(self.badge, "value", "bottleneck" if bottleneck else "")
        set_if_changed(self.widget.layout, "border", BOTTLENECK_BORDER if bottleneck else BORDER)
        if bottleneck:
            self.widget.add_class("mpkit-bottleneck")      # both are no-ops when nothing changes
        else:
            self.widget.remove_class("mpkit-bottleneck")

    def _scaled(self, change: dict) -> None:
        if self._writer != threading.get_ident() and self._on_scale is not None:
            self._on_scale(self.name, int(change["new"]))
