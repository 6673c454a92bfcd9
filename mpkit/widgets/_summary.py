"""A finished pipeline as static HTML: what its dashboard becomes when the run or service ends.

    <b>inference</b> [finished] after 12.3s · submitted 100 · completed 98 · failed 1 · ...
    +-------+---------+-----+-----+--------+---------+-----------+-----------+---------+
    | stage | workers | in  | out | failed | dropped | cancelled | items/s   | ms/item |   a table
    +-------+---------+-----+-----+--------+---------+-----------+-----------+---------+
    [svg: queued items per stage over time]  [svg: items/s per stage over time]

Plain HTML and an inline SVG, no script and no widget: it renders with no kernel (a reopened
notebook, nbviewer, an HTML export; GitHub keeps the table and text). Colours per outcome are
the dashboard's, so the saved output looks like the last state of the live one.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

from ..engine._pipeline_stats import PipelineStats
from . import _format as fmt
from ._timeline import stage_names

#: One colour an outcome or state; the dashboard's header uses the same.
STATE_COLORS = {"running": "#1f77b4", "stopping": "#e67e22", "finished": "#2e7d32",
                "failed": "#c62828", "interrupted": "#ef6c00", "stopped": "#546e7a",
                "ready": "#777777"}
#: Line colours of the stages in the figures (matplotlib's first ones, as timeline() draws them).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: The state badge's look: inline here (a saved notebook keeps no style sheet), and the live
#: dashboard's style sheet gives its ``.mpkit-state`` the same, so both read alike.
BADGE_STYLE = ("display:inline-block;min-width:6.5em;text-align:center;padding:0 6px;border-radius:3px;"
               "color:#ffffff;font-weight:bold")
#: Size of each small figure, in CSS pixels: readable, and two fit side by side in a notebook.
FIG_W, FIG_H = 300, 80


def shown_state(stats: PipelineStats) -> str:
    """``running`` / ``stopping`` while it runs, its outcome once it ended."""
    return stats.outcome or stats.state


def badge(state: str) -> str:
    color = STATE_COLORS.get(state, "#777777")
    return (f'<span class="mpkit-state mpkit-state-{html.escape(state)}" '
            f'style="{BADGE_STYLE};background:{color}">{html.escape(state)}</span>')


def summary_html(title: str, stats: PipelineStats, history: Sequence[PipelineStats] = ()) -> str:
    """The final report of one run or service: header, one table row per stage, two figures."""
    state = shown_state(stats)
    totals = " \u00b7 ".join(f"{name} {getattr(stats, name):,}"
                             for name in ("submitted", "completed", "failed", "dropped", "cancelled"))
    if stats.results != stats.completed:
        totals += f" \u00b7 results {stats.results:,}"
    went_through = stats.completed + stats.failed + stats.dropped   # not the cancelled: never run
    mean = went_through / stats.elapsed if stats.elapsed > 0 else 0.0
    head = (f'<div class="mpkit-summary-head"><b>{html.escape(title)}</b> {badge(state)} '
            f"after {fmt.elapsed(stats.elapsed)} \u00b7 {totals} \u00b7 "
            f"{fmt.rate(mean)} items/s</div>")
    columns = ("stage", "workers", "in", "out", "failed", "dropped", "cancelled", "items/s", "ms/item")
    cell = 'style="padding:1px 8px;text-align:right"'
    rows = ["<tr>" + "".join(f"<th {cell}>{c}</th>" for c in columns) + "</tr>"]
    for s in stats.stages:
        ms = fmt.mean_ms(s.mean_seconds) if s.kind == "stage" else ""
        workers = "batcher" if s.kind == "batch" else str(s.target_workers)
        values = (workers, f"{s.received:,}", f"{s.emitted:,}", f"{s.failed:,}", f"{s.dropped:,}",
                  f"{s.cancelled:,}", fmt.rate(fmt.mean_rate(s, stats.elapsed)), ms)
        color = ' style="color:#c62828"' if s.failed else ""
        rows.append(f"<tr{color}><td style=\"padding:1px 8px\">{html.escape(s.name)}</td>"
                    + "".join(f"<td {cell}>{v}</td>" for v in values) + "</tr>")
    table = ('<table class="mpkit-summary-table" style="border-collapse:collapse;'
             f'font-variant-numeric:tabular-nums;margin:4px 0">{"".join(rows)}</table>')
    figures = figures_html(history) if len(history) > 1 else ""
    border = STATE_COLORS.get(state, "#777777")
    return (f'<div class="mpkit-summary mpkit-summary-{html.escape(state)}" style="border:2px solid '
            f'{border};border-radius:4px;padding:4px 8px;font-size:13px">{head}{table}'
            f'{errors_html(stats)}{figures}</div>')


def errors_html(stats: PipelineStats) -> str:
    """The first failures' messages (``stats.errors``), and how many more there were."""
    if not stats.errors:
        return ""
    lines = [html.escape(text) for text in stats.errors]
    if stats.failed > len(stats.errors):
        lines.append(f"and {stats.failed - len(stats.errors):,} more: the run's result list holds every failure "
                     "(<code>.failures</code>)")
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f'<ul class="mpkit-summary-errors" style="color:#c62828;margin:2px 0 4px 0">{items}</ul>'


def figures_html(history: Sequence[PipelineStats]) -> str:
    """Queue depth and throughput per stage against time, as two small inline SVGs and a legend."""
    names = stage_names(history)
    t_end = max(history[-1].elapsed, 1e-9)
    series = {name: ([], []) for name in names}
    for stats in history:
        for stage in stats.stages:
            series[stage.name][0].append((stats.elapsed, stage.queued))
            series[stage.name][1].append((stats.elapsed, stage.rate))
    svgs = [_svg(f"queued items (max {_top(series, 0):,.0f})", series, 0, t_end, names),
            _svg(f"items/s (max {_top(series, 1):,.0f})", series, 1, t_end, names)]
    legend = " ".join(f'<span style="color:{PALETTE[i % len(PALETTE)]}">\u25a0</span> {html.escape(n)}'
                      for i, n in enumerate(names))
    return (f'<div class="mpkit-summary-figures" style="display:flex;gap:16px;flex-wrap:wrap">'
            f'{"".join(svgs)}</div><div style="font-size:12px">{legend} '
            f"\u00b7 0 to {fmt.elapsed(t_end)}</div>")


def _top(series: dict, which: int) -> float:
    return max((v for pts in series.values() for _, v in pts[which]), default=0.0)


def _svg(label: str, series: dict, which: int, t_end: float, names: list[str]) -> str:
    top = _top(series, which) or 1.0
    lines = []
    for i, name in enumerate(names):
        points = " ".join(f"{t / t_end * FIG_W:.1f},{FIG_H - v / top * (FIG_H - 4):.1f}"
                          for t, v in series[name][which])
        lines.append(f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.5" '
                     f'points="{points}"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{FIG_W}" height="{FIG_H + 16}" '
            f'viewBox="0 -16 {FIG_W} {FIG_H + 16}" role="img" aria-label="{html.escape(label)}">'
            f'<text x="0" y="-4" font-size="11" fill="#555555">{html.escape(label)}</text>'
            f'<rect x="0" y="0" width="{FIG_W}" height="{FIG_H}" fill="none" stroke="#dddddd"/>'
            f'{"".join(lines)}</svg>')
