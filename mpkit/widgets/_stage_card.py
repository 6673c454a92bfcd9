"""One stage's card in the pipeline dashboard, drawn as HTML from one ``StageStats``.

    .mpkit-stage .mpkit-stage-<name> .mpkit-kind-<stage|batch> (+ .mpkit-bottleneck)
    +-- 260 px, always ------------------+
    | embed  stage          bottleneck   |  name, kind, the badge (CSS: hidden, never removed)
    | 1 of 2 workers busy                |  workers, in words
    | [#######-----]  5 / 8 queued       |  the input channel: a bar of fixed width
    | in 120 · out 118                   |  counts
    | 45.2 items/s · 12.3 ms/item        |  speed (at the end: the run's mean rate)
    | errors 0 · dropped 0 · cancelled 0 |  red (.mpkit-err) once an item failed
    | cpu 180% · mem 210 MB              |  all its workers (each in the tooltip)
    +------------------------------------+

Every card has the same size, the same lines, the same border width whatever its numbers: the
bottleneck and the end are colours and text (state), never geometry, so nothing on the page
moves while the numbers change. Digits are tabular and every line is cut, not wrapped, at the
card's edge. The dashboard sends all cards and its header as one ``HTML`` widget value, which
costs one comm message per snapshot that changed anything.
"""
from __future__ import annotations

import html
import re
from typing import Any

from ..engine._pipeline_stats import StageStats
from . import _format as fmt

#: Upper bound of the worker-count input; the engine decides what it accepts.
MAX_WORKERS = 1024
BOTTLENECK_COLOR = "#e67e22"   # orange: the stage that holds the pipeline back
ERROR_COLOR = "#d9534f"        # tqdm.notebook's 'danger' red

#: Widths of the number boxes, in digits (see num()).
NUM_WIDTHS = (3, 4, 5, 6)
#: The cards' style, sent once (the dashboard's style widget), so a snapshot sends only classes
#: and figures. The card width fits "scaling 12 → 16 workers (12 busy)"; the border is 2px in
#: every state, only its colour changes; lines are cut at the edge, never wrapped.
CSS = f"""
.mpkit-dashboard .mpkit-cards{{display:flex;flex-wrap:nowrap;align-items:stretch;overflow-x:auto;padding:2px 0}}
.mpkit-dashboard .mpkit-stage{{box-sizing:border-box;width:260px;flex:0 0 260px;border:2px solid #c8c8c8;
  border-radius:4px;padding:3px 8px;font-variant-numeric:tabular-nums}}
.mpkit-dashboard .mpkit-stage.mpkit-bottleneck{{border-color:{BOTTLENECK_COLOR}}}
.mpkit-dashboard .mpkit-stage>p{{margin:0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;height:1.45em;
  line-height:1.45em}}
.mpkit-dashboard .mpkit-stage>p:first-child::after{{content:"bottleneck";float:right;font-weight:bold;
  color:{BOTTLENECK_COLOR};visibility:hidden}}
.mpkit-dashboard .mpkit-bottleneck>p:first-child::after{{visibility:visible}}
.mpkit-dashboard .mpkit-kind{{color:#777777}}
.mpkit-dashboard .mpkit-err{{color:{ERROR_COLOR}}}
{",".join(f".mpkit-dashboard n-{w}" for w in NUM_WIDTHS)}{{display:inline-block;text-align:right}}
{"".join(f".mpkit-dashboard n-{w}{{min-width:{w}ch}}" for w in NUM_WIDTHS)}
.mpkit-dashboard .mpkit-bar{{display:inline-block;vertical-align:middle;width:110px;height:9px;
  background:#eeeeee;border-radius:2px;overflow:hidden}}
.mpkit-dashboard .mpkit-bar>span{{display:block;height:9px;background:#5b9bd5}}
.mpkit-dashboard .mpkit-bar.mpkit-full>span{{background:{BOTTLENECK_COLOR}}}
.mpkit-dashboard .mpkit-arrow{{flex:0 0 22px;align-self:center;text-align:center;color:#999999}}
"""


def set_if_changed(obj: Any, name: str, value: Any) -> bool:
    """Set a trait only when its value differs, so an unchanged figure costs no comm message."""
    if getattr(obj, name) != value:
        setattr(obj, name, value)
        return True
    return False


def close_tree(widget: Any) -> None:
    """Close a widget, everything inside it, and their layout and style models (their comms too)."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    for part in ("layout", "style"):
        model = getattr(widget, part, None)
        if model is not None and hasattr(model, "close"):
            model.close()
    widget.close()


def css_name(stage_name: str) -> str:
    """The card's per-stage CSS class: ``mpkit-stage-<name>``, other characters turned into ``-``."""
    return "mpkit-stage-" + re.sub(r"[^A-Za-z0-9_-]", "-", stage_name)


def num(n: int | float | str, width: int = 5) -> str:
    """A figure in a box at least ``width`` digits wide, right-aligned: growing from 9 to 10 does
    not push what follows. The box is an element of its own name, ``<n-5>`` (an undefined custom
    element: an inline box that CSS sizes), half the bytes of a ``<span class=...>``: a snapshot
    holds some twenty figures."""
    text = n if isinstance(n, str) else f"{n:,}"
    return f"<n-{width}>{html.escape(text)}</n-{width}>"


def queue_bar(queued: int, capacity: int, css: str = "") -> str:
    """The input channel's fill as a bar of fixed width (orange when full)."""
    fill = min(1.0, queued / capacity) if capacity else 0.0
    full = " mpkit-full" if capacity and queued >= capacity else ""
    return f'<span class="mpkit-bar{full}{css}"><span style="width:{fill * 100:.0f}%"></span></span>'


def card_html(s: StageStats, elapsed: float, ended: bool) -> str:
    """One card. ``ended``: the run or service is over, so no worker is busy, nothing is queued,
    no stage holds anything back, and the rate is the run's mean."""
    bottleneck = s.bottleneck and not ended
    classes = f"mpkit-stage {css_name(s.name)} mpkit-kind-{s.kind}" + (" mpkit-bottleneck" if bottleneck else "")
    kind = "batcher" if s.kind == "batch" else "stage"
    head = f"<b>{html.escape(s.name)}</b> <span class=mpkit-kind>{kind}</span>"
    if ended:
        workers = "batcher, ended" if s.kind == "batch" else f"ended ({plural_workers(s)})"
        left = s.queued + s.in_flight
        queue = f"{left:,} left inside" if left else "nothing left inside"
        speed = f"mean {num(fmt.rate(fmt.mean_rate(s, elapsed)), 5)} items/s"
    else:
        workers = fmt.workers_words(s)
        queue = f"{queue_bar(s.queued, s.capacity)} {num(s.queued, 4)} / {s.capacity:,} queued"
        speed = f"{num(fmt.rate(s.rate), 5)} items/s"
    if s.kind != "batch":
        speed += f" \u00b7 {num(fmt.mean_ms(s.mean_seconds), 4)} ms/item"
    if s.kind == "batch":
        usage, tip = "in the router, no worker", ""
    elif ended or not s.usage:
        usage, tip = "cpu \u2013 \u00b7 mem \u2013", ""
    else:
        usage = f"cpu {num(fmt.cpu(s.cpu_percent), 4)} \u00b7 mem {num(fmt.memory(s.rss), 6)}"
        tip = " title=\"" + html.escape("; ".join(
            f"worker {u.id} (pid {u.pid}, {u.state}): cpu {fmt.cpu(u.cpu_percent)}, mem {fmt.memory(u.rss)}"
            for u in s.usage)) + "\""
    # one <p> a line (fewer bytes than a <div>), in this order; the badge is the first line's
    # ::after (CSS), so it costs nothing in a snapshot and takes its place whether shown or not
    lines = (head, html.escape(workers), queue,
             f"in {num(s.received, 5)} \u00b7 out {num(s.emitted, 5)}", speed,
             f"errors {s.failed:,} \u00b7 dropped {s.dropped:,} \u00b7 cancelled {s.cancelled:,}", usage)
    attrs = ("", "", "", "", "", " class=mpkit-err" if s.failed else "", tip)
    body = "".join(f"<p{attr}>{text}</p>" for attr, text in zip(attrs, lines))
    return f'<div class="{classes}">{body}</div>'


def plural_workers(s: StageStats) -> str:
    return fmt.plural(s.target_workers, "worker")
