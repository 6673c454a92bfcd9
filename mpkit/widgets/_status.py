"""The dashboard's information as text: one live status line, then a summary table at the end.

For a terminal IPython or a script. On a terminal, ``update`` rewrites one line in place (``\\r``,
cut to the terminal width); on anything else (a log file, a CI console, a pipe) a rewritten line
would pile up as garbage, so it prints a whole line, at most once every ``LOG_INTERVAL`` seconds
and whenever the state changes. The line is terse, the stage holding the run back first (a
terminal of 120 columns shows three stages whole)::

    demo 12.3s: 250/400 done, 1 failed; bottleneck embed: 4/4 busy, 150/1,024 queued, 45.2/s; parse 2/2 busy, write 1/1 busy

``close`` prints one line per stage::

    pipeline 'demo' finished after 12.3s: submitted 100, completed 98, failed 1, dropped 1, pending 0
      stage  workers  queued   in  out  failed  dropped  cancelled  items/s  mean ms
      parse        2  0 of 8  100  100       0        0          0      8.1     12.3
      embed        4  0 of 8  100   98       1        1          0      8.1     80.1

(the rates of an ended run are its means: items a stage finished over the run's time).

Counts of workers and queues always say what they count (``2/2 busy``, ``starting 2``, ``3 of 8
queued``), never bare figures like ``0/0->2``.
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
COLUMNS = ("stage", "workers", "queued", "in", "out", "failed", "dropped", "cancelled", "items/s", "mean ms")


def status_line(title: str, stats: PipelineStats) -> str:
    """``demo 12.3s: 250/400 done, 1 failed; bottleneck embed: 4/4 busy, 150/1,024 queued,
    45.2/s; parse 2/2 busy, write 1/1 busy``: terse enough for 120 columns with three stages, and
    the stage holding the run back first, so a terminal that cuts the line keeps it. The state
    shows when it is not "running" (``demo stopping 12.3s: ...``)."""
    done = f"{stats.completed:,}/{stats.total:,}" if stats.total else f"{stats.completed:,}"
    state = "" if stats.state == "running" else f" {stats.state}"     # a live line runs, unless it says not
    head = f"{title}{state} {fmt.elapsed(stats.elapsed)}: {done} done"
    for name in ("failed", "dropped", "cancelled"):
        if getattr(stats, name):
            head += f", {getattr(stats, name):,} {name}"
    slowest = [s for s in stats.stages if s.bottleneck]
    others = ", ".join(_brief(s) for s in stats.stages if not s.bottleneck)
    parts = [head] + [f"bottleneck {s.name}: {_brief(s, name=False)}, {s.queued:,}/{s.capacity:,} queued, "
                      f"{fmt.rate(s.rate)}/s" for s in slowest]
    return "; ".join(parts + ([others] if others else []))


def _brief(s: StageStats, name: bool = True) -> str:
    """A stage's workers in a few words: ``parse 2/2 busy``, ``parse starting 2``, ``parse
    scaling 2 → 4, 1 busy``; a batcher's queue: ``batch 4 / 0.1 s 3 queued``."""
    if s.kind == "batch":
        words = f"{s.queued:,} queued"
    elif s.workers == 0 and s.target_workers:
        words = f"starting {s.target_workers}"
    elif s.target_workers != s.workers:
        words = f"scaling {s.workers} \u2192 {s.target_workers}, {s.busy} busy"
    else:
        words = f"{s.busy}/{s.workers} busy"
    return f"{s.name} {words}" if name else words


def summary(title: str, stats: PipelineStats) -> str:
    """The final report: totals, then a table with one row per stage (no trailing newline)."""
    head = (f"pipeline {title!r} {stats.outcome or stats.state} after {fmt.elapsed(stats.elapsed)}: "
            f"submitted {stats.submitted}, completed {stats.completed}, failed {stats.failed}, "
            f"dropped {stats.dropped}, pending {stats.pending}")
    if stats.cancelled:
        head += f", cancelled {stats.cancelled}"
    if stats.results != stats.completed:
        head += f", results {stats.results}"
    rows = [COLUMNS] + [_row(s, bool(stats.outcome), stats.elapsed) for s in stats.stages]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [head]
    for row, stage in zip(rows, (None, *stats.stages)):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        line = "  " + "  ".join(cells)
        if stage is not None and stage.bottleneck and not stats.outcome:  # none holds back an ended run
            line += "  <- bottleneck"
        lines.append(line)
    return "\n".join(lines)


def _row(s: StageStats, ended: bool, elapsed: float) -> tuple[str, ...]:
    """One stage's cells; once the run ended its rate is the run's mean (the live one decayed)."""
    rate = fmt.mean_rate(s, elapsed) if ended else s.rate
    return (s.name, fmt.workers_cell(s, ended), fmt.queue(s), str(s.received), str(s.emitted), str(s.failed),
            str(s.dropped), str(s.cancelled), fmt.rate(rate), fmt.mean_ms(s.mean_seconds))


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
