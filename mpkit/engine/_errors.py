"""Errors that cross the process boundary, and the result list that accounts for failures.

A worker never raises into the notebook directly: it sends back the exception (pickled when it
can be) and the frames of its traceback. The notebook side rebuilds them here, so that the
exception the user sees is the worker's own type, chained to a :class:`RemoteTraceback` whose
text names the worker, the item and the cell lines that failed.
"""
from __future__ import annotations

import linecache
import signal
import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Failure", "ResultList", "RemoteTraceback", "RemoteError", "WorkerDied", "TaskTimeout",
    "SerializationError", "WorkerInitError", "MapInterrupted", "MpkitWarning",
]


def _short_repr(obj: Any, limit: int = 120) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} with a failing repr: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def frame_label(filename: str) -> str:
    """How a traceback names a file: IPython's ``Cell In[3]`` for notebook cells, else the path."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        named = shell.compile.format_code_name(filename)
        if named is not None:
            return " ".join(named)
    return f'File "{filename}"'


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, shown as the cause of the re-raised error.

    ``frames`` holds ``(filename, lineno, function, line)`` tuples as the worker saw them; lines the
    worker could not read (code typed in a notebook cell) are filled in from this process.
    """

    def __init__(self, header: str, frames: list[tuple[str, int, str, str | None]], exc_text: str):
        super().__init__(header)
        self.header = header
        self.frames = frames
        self.exc_text = exc_text

    def __str__(self) -> str:
        out = [self.header, "", "Traceback (most recent call last), in the worker:"]
        for filename, lineno, func, line in self.frames:
            out.append(f"  {frame_label(filename)}, line {lineno}, in {func}")
            line = line or linecache.getline(filename, lineno).strip()
            if line:
                out.append(f"    {line}")
        out.append(self.exc_text)
        return "\n".join(out)


class RemoteError(Exception):
    """Stands in for a worker exception that could not be pickled back to this process."""


class WorkerDied(RuntimeError):
    """A worker process ended while it held the item: killed, crashed, or called ``os._exit``."""

    def __init__(self, exitcode: int | None, pid: int | None, item_repr: str, attempts: int):
        self.exitcode = exitcode
        self.pid = pid
        super().__init__(
            f"worker process {pid} ended while running item {item_repr} ({describe_exit(exitcode)}); "
            f"tried {attempts} time{'s' if attempts != 1 else ''}. Likely causes: the function crashed "
            "in C code (segfault), called os._exit, or the machine ran out of memory and the OOM "
            "killer stopped it. Fix: look for a crash when running the function on this item alone; "
            "use fewer workers or smaller items if memory is short; retries=N tries it again."
        )


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, in words: 'exit code 3', 'killed by SIGKILL (...)'."""
    if exitcode is None:
        return "still running"
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = {
        "SIGKILL": "often the out-of-memory killer, or a kill -9",
        "SIGSEGV": "a segmentation fault, usually a bug in C code",
        "SIGABRT": "an abort, usually a failed assertion in C code",
        "SIGBUS": "a bus error, often a memory-mapped file that went away",
        "SIGTERM": "terminated from outside",
    }.get(name)
    return f"killed by {name}" + (f", {hint}" if hint else "")


class TaskTimeout(TimeoutError):
    """An item ran past ``timeout=``; its worker was killed and replaced."""

    def __init__(self, timeout: float, item_repr: str, attempts: int):
        self.timeout = timeout
        super().__init__(
            f"item {item_repr} ran longer than timeout={timeout:g} s; its worker was stopped and "
            f"replaced (tried {attempts} time{'s' if attempts != 1 else ''}). Fix: raise timeout=, "
            "or split the work into smaller items."
        )


class SerializationError(TypeError):
    """An argument or result could not be pickled (or unpickled) to cross between processes."""


class MpkitWarning(UserWarning):
    """Something the user should know that did not stop the work (items skipped, output cut)."""


class WorkerInitError(RuntimeError):
    """The ``init`` function failed in a new worker, so no item can run there."""


@dataclass(frozen=True)
class Failure:
    """One item that did not produce a result: its position in the input, the item, the error."""

    index: int
    item: Any
    exception: BaseException

    def __repr__(self) -> str:
        return f"Failure(index={self.index}, item={_short_repr(self.item, 60)}, exception={self.exception!r})"


class ResultList(list):
    """The results of a map, in input order, with ``.failures`` for the items that failed.

    Returned by ``on_error="collect"`` (and ``"skip"``, whose failures are counted here too):
    ``len(results) + len(results.failures)`` is the number of items given.
    """

    def __init__(self, results=(), failures=()):
        super().__init__(results)
        self.failures: list[Failure] = list(failures)

    def __repr__(self) -> str:
        base = super().__repr__()
        return f"{base} (+{len(self.failures)} failed)" if self.failures else base


class MapInterrupted(KeyboardInterrupt):
    """The map was interrupted (kernel interrupt, Ctrl-C); what finished is kept.

    ``results`` is a :class:`ResultList` of the results finished so far in input order, with the
    failures so far; ``pending`` lists the input indices that did not finish. In IPython the last
    exception is ``sys.last_value``, so ``sys.last_value.results`` reaches them after the fact.
    """

    def __init__(self, results: ResultList, pending: list[int], total: int | None):
        self.results = results
        self.pending = pending
        of = f" of {total}" if total is not None else ""
        super().__init__(
            f"interrupted after {len(results)}{of} items finished ({len(results.failures)} failed); "
            "the finished results are in .results of this exception (sys.last_value.results in IPython)"
        )
