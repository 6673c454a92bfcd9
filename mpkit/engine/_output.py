"""Worker print() output on its way to the cell that started the work.

Workers send their stdout/stderr text every few tenths of a second (see ``_worker``; what they
write to file descriptors 1 and 2, a subprocess's output too, see ``_capture``); the pool's
manager thread hands it to an :class:`OutputRelay`, and the thread that runs the map drains it and
writes it out, so output lands in the cell that is executing, prefixed with the worker's id.

A worker printing in a tight loop can produce megabytes a second, more than a notebook can show
(Jupyter drops output past its iopub rate limits, 1 MB/s by default, and warns). The relay lets
through ``BYTES_PER_SECOND`` and counts the lines and bytes it holds back (workers count what they
drop too), so the user sees that output was cut and by how much instead of a frozen page. A line
longer than ``MAX_LINE`` is shown cut there: a 100 MB write without a newline is one "line", so
its size is what the note reports.

A warning a worker prints names the file of the code that warned; for a notebook cell's code
(a ``%%mp_pool`` cell's module, a cell IPython knows) the relay names the cell instead, as
IPython's tracebacks do: ``Cell In[3], line 4: UserWarning: ...``, not a temporary file.
"""
from __future__ import annotations

import re
import threading
import time

from ._errors import cell_name

#: Output shown per second, all workers together: a fifth of Jupyter's default data rate limit.
BYTES_PER_SECOND = 200_000
#: While output is being cut, how often a note says how much.
NOTE_SECONDS = 1.0
#: A line without its newline is shown anyway once it has waited this long.
PARTIAL_LINE_SECONDS = 0.5
#: Characters of one line that are shown; the rest of it is counted, not kept. Longer than any
#: log line, short enough that a line never takes more than a third of a second's budget.
MAX_LINE = 64_000


#: The head of the line Python's warnings print: "<file>.py:<line>: <Category>: <message>".
_WARNING_AT = re.compile(r"(?P<path>[^\s:]+\.py):(?P<line>\d+): (?=\w+: )")


def name_cells(line: str) -> str:
    """``line`` with the file of a warning named as IPython names a cell, if it is one."""
    if ".py:" not in line:
        return line

    def named(match: re.Match) -> str:
        name = cell_name(match.group("path"))
        return f"{name}, line {match.group('line')}: " if name is not None else match.group(0)

    return _WARNING_AT.sub(named, line, count=1)


def _size(chars: int) -> str:
    return f"{chars / 1e6:.1f} MB" if chars >= 100_000 else f"{chars / 1e3:.1f} kB"


class OutputRelay:
    def __init__(self, label: str | None = None) -> None:
        self.label = label  #: shown before the worker id: "[preprocess w1]"
        self._lock = threading.Lock()
        self._lines: list[tuple[str, str]] = []          # (stream, prefixed line with "\n")
        self._partial: dict[tuple[int, str], tuple[str, float]] = {}
        self._budget = float(BYTES_PER_SECOND)
        self._last = time.monotonic()
        self._held_back = 0        # lines not shown since the last note
        self._held_back_chars = 0  # and their size, with the cut ends of overlong lines
        self._overlong: set[tuple[int, str]] = set()  # (worker, stream) in a line cut at MAX_LINE
        self._last_note = time.monotonic()

    def add(self, worker_id: int, parts: list[tuple[str, str]], dropped: int = 0,
            dropped_chars: int = 0) -> None:
        """Take text a worker printed, and the lines (and characters) it had to drop (manager thread)."""
        now = time.monotonic()
        with self._lock:
            self._held_back += dropped
            self._held_back_chars += dropped_chars
            for stream, text in parts:
                key = (worker_id, stream)
                if key in self._overlong:  # the rest of a line already shown cut
                    end = text.find("\n")
                    self._held_back_chars += len(text) if end < 0 else end
                    if end < 0:
                        continue
                    self._overlong.discard(key)
                    text = text[end + 1:]
                head, since = self._partial.pop(key, ("", now))
                text = head + text
                *complete, rest = text.split("\n")
                for line in complete:
                    self._lines.append((stream, f"{self._prefix(worker_id)}{self._cut(name_cells(line))}\n"))
                if len(rest) > MAX_LINE:
                    self._lines.append((stream, f"{self._prefix(worker_id)}{self._cut(rest)}\n"))
                    self._overlong.add(key)
                elif rest:
                    self._partial[key] = (rest, since)

    def _cut(self, line: str) -> str:
        if len(line) <= MAX_LINE:
            return line
        self._held_back_chars += len(line) - MAX_LINE
        return line[:MAX_LINE] + " [...]"

    def _prefix(self, worker_id: int) -> str:
        return f"[{self.label} w{worker_id}] " if self.label else f"[w{worker_id}] "

    def drain(self, final: bool = False) -> list[tuple[str, str]]:
        """Text to write now, as (stream, text) runs; call from the thread that runs the cell."""
        now = time.monotonic()
        with self._lock:
            for key, (rest, since) in list(self._partial.items()):
                if final or now - since >= PARTIAL_LINE_SECONDS:
                    del self._partial[key]
                    self._lines.append((key[1], f"{self._prefix(key[0])}{rest}\n"))
            lines, self._lines = self._lines, []
            self._budget = min(BYTES_PER_SECOND, self._budget + (now - self._last) * BYTES_PER_SECOND)
            self._last = now
            out: list[tuple[str, str]] = []
            for stream, line in lines:
                if len(line) > self._budget:
                    self._held_back += 1
                    self._held_back_chars += len(line)
                    continue
                self._budget -= len(line)
                if out and out[-1][0] == stream:
                    out[-1] = (stream, out[-1][1] + line)
                else:
                    out.append((stream, line))
            if (self._held_back or self._held_back_chars) and (final or now - self._last_note >= NOTE_SECONDS):
                self._last_note = now
                size = _size(self._held_back_chars)
                if self._held_back:
                    what = (f"{self._held_back:,} lines of worker output were not shown ({size}): workers "
                            f"printed more than {BYTES_PER_SECOND // 1000} kB/s")
                else:
                    what = (f"{size} of worker output were not shown: lines longer than "
                            f"{MAX_LINE // 1000} kB are cut")
                out.append(("stderr", f"[mpkit] {what}. Write large logs to a file instead.\n"))
                self._held_back = self._held_back_chars = 0
            return out
