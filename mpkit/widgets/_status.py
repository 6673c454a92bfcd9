"""The dashboard's information as text: one live status line, then a summary table at the end.

For a terminal IPython or a script. On a terminal, ``update`` rewrites one line in place (``\\r``,
cut to the terminal width); on anything else (a log file, a CI console, a pipe) a rewritten line
would pile up as garbage, so it prints a whole line, at most once every ``LOG_INTERVAL`` seconds
and whenever the state changes. ``close`` prints one line per stage::

    pipeline 'demo' stopped after 12.3s: submitted 100, completed 98, failed 1, dropped 1, pending 0
      stage  workers  queued   in  out  failed  dropped  items/s  mean ms
      parse        2  0 of 8  100  100       0        0     45.2     12.3
      embed        4  0 of 8  100   98       1        1     12.0     80.1

Counts of workers and queues are written in words (``1 of 2 workers busy``, ``starting 2 workers``,
``3 of 8 queued``), never as bare figures like ``0/0->2``.
"""
from __future__ import annotations

import os
import shutil
import sys
from time import monotonic
from typing import TextIO

from ..engine._pipeline_stats import PipelineStats, StageStats
from . import _format as fmt

#: Seconds between lines on a stream that is not a terminal: a one-hour run logs ~1,800 lines.
LOG_INTERVAL = 2.0
COLUMNS = ("stage", "workers", "queued", "in", "out", "failed", "dropped", "items/s", "mean ms")


def status_line(title: str, stats: PipelineStats) -> str:
    """``title running 12.3s | 80 of 100 done, 1 failed, 19 pending | parse: 2 of 2 workers busy,
    2 of 8 queued, 45.2 items/s | ...``; ``embed (bottleneck):`` marks the stage holding it back."""
    totals = f"{stats.completed} of {stats.submitted} done"
    for name in ("failed", "dropped", "cancelled"):
        if getattr(stats, name):
            totals += f", {getattr(stats, name)} {name}"
    totals += f", {stats.pending} pending"
    parts = [f"{title} {stats.state} {fmt.elapsed(stats.elapsed)}", totals]
    for s in stats.stages:
        mark = " (bottleneck)" if s.bottleneck else ""
        parts.append(f"{s.name}{mark}: {fmt.workers_words(s)}, {fmt.queue(s)} queued, {fmt.rate(s.rate)} items/s")
    return " | ".join(parts)


def summary(title: str, stats: PipelineStats) -> str:
    """The final report: totals, then a table with one row per stage (no trailing newline)."""
    head = (f"pipeline {title!r} {stats.outcome or stats.state} after {fmt.elapsed(stats.elapsed)}: "
            f"submitted {stats.submitted}, completed {stats.completed}, failed {stats.failed}, "
            f"dropped {stats.dropped}, pending {stats.pending}")
    if stats.cancelled:
        head += f", cancelled {stats.cancelled}"
    if stats.results != stats.completed:
        head += f", results {stats.results}"
    rows = [COLUMNS] + [_row(s, bool(stats.outcome)) for s in stats.stages]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [head]
    for row, stage in zip(rows, (None, *stats.stages)):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        line = "  " + "  ".join(cells)
        if stage is not None and stage.bottleneck and not stats.outcome:  # none holds back an ended run
            line += "  <- bottleneck"
        lines.append(line)
    return "\n".join(lines)


def _row(s: StageStats, ended: bool) -> tuple[str, ...]:
    return (s.name, fmt.workers_cell(s, ended), fmt.queue(s), str(s.received), str(s.emitted), str(s.failed),
            str(s.dropped), fmt.rate(s.rate), fmt.mean_ms(s.mean_seconds))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


class TextStatus:
    """A live status line for one pipeline; ``stream`` defaults to ``sys.stderr`` at creation."""

    def __init__(self, title: str, stream: TextIO | None = None):
        self.title = title
        self.stream = sys.stderr if stream is None else stream
        self.tty = _is_tty(self.stream)
        self.closed = False
        self._shown = 0                     # length of the line now on screen (tty)
        self._last_log: float | None = None  # monotonic time of the last full line (non-tty)
        self._last_state: str | None = None

    def update(self, stats: PipelineStats) -> None:
        """Rewrite the status line (tty), or print it if ``LOG_INTERVAL`` has passed (non-tty)."""
        if self.closed:
            return
        line = status_line(self.title, stats)
        if self.tty:
            width = max(10, self._width() - 1)       # the last column would wrap on some terminals
            if len(line) > width:
                line = line[:width - 1] + "\u2026"
            self._write("\r" + line.ljust(self._shown))
            self._shown = len(line)
        else:
            now = monotonic()
            due = self._last_log is None or now - self._last_log >= LOG_INTERVAL
            if due or stats.state != self._last_state:
                self._last_log = now
                self._write(line + "\n")
        self._last_state = stats.state

    def close(self, stats: PipelineStats) -> None:
        """Clear the status line and print the final summary; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        clear = "\r" + " " * self._shown + "\r" if self.tty and self._shown else ""
        self._write(clear + summary(self.title, stats) + "\n")
        self._shown = 0

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):   # not a real file: $COLUMNS, or 80
            return shutil.get_terminal_size().columns

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
