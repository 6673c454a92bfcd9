"""Errors that cross the process boundary, and the result list that accounts for failures.

    worker: exc ──► ExceptionRecord(pickled exc or None, "Type: message", frames,
                                     cause=record, context=record, suppress_context)
            ──pipe──► notebook: ExceptionRecord.rebuild() ──► exc of its own type (RemoteError
                      when it cannot be unpickled), __traceback__ = the worker's frames,
                      __cause__ / __context__ = the rebuilt links of its chain

A worker never raises into the notebook directly: it sends back a record of the exception and of
every exception chained to it (``raise X from err``, an error raised while handling another). The
notebook side rebuilds each link with a traceback made of the worker's frames, so Python and
IPython show the chain as they show a local one: the inner exception with its frames, then the
outer one, with the notebook's frames above the worker's and a note naming the worker and item.
In IPython an error raised by a map is shown through :func:`shown_traceback` (IPython's
``_render_traceback_`` hook): the cell's frames and the worker's, without mpkit's own frames and
without the line through which IPython calls a cell magic (the cell's source as a string).
Errors whose frames travel without an exception (an ``init`` that failed) are chained to a
:class:`RemoteTraceback` instead. Every exception class here survives a pickle round trip.
"""
from __future__ import annotations

import functools
import inspect
import linecache
import os
import pickle
import signal
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Any, Callable

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


def cell_name(filename: str) -> str | None:
    """IPython's name for a notebook cell's file (``Cell In[3]``), or None if it is no cell."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if not names or filename not in names:
        return None
    named = shell.compile.format_code_name(filename)
    return " ".join(named) if named is not None else None


#: Where mpkit's own code is: its frames in the notebook are not shown with a map's error.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: The line through which IPython runs a cell magic: the cell's source shown as a string.
_MAGIC_CALL = "get_ipython().run_cell_magic("


def _shown_frame(tb: types.TracebackType) -> bool:
    """A frame a user should see with a map's error: a worker's, or the notebook's outside mpkit."""
    frame = tb.tb_frame
    if frame.f_globals is _WORKER_GLOBALS:
        return True
    if frame.f_code.co_filename.startswith(_PACKAGE_DIR) or frame.f_locals.get("__tracebackhide__"):
        return False
    return _MAGIC_CALL not in linecache.getline(frame.f_code.co_filename, tb.tb_lineno)


def visible_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without mpkit's frames (and IPython's, which hide themselves), and without the
    cell line that only calls a cell magic."""
    kept = []
    while tb is not None:
        if _shown_frame(tb):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for entry in reversed(kept):
        out = types.TracebackType(out, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return out


def shown_traceback(exc: BaseException) -> list[str]:
    """What IPython shows for an error a map raised: its usual display of ``exc`` and its chain,
    with the frames :func:`visible_traceback` keeps."""
    ipython = sys.modules.get("IPython")  # only IPython calls the hook: it is imported already
    shell = ipython.get_ipython() if ipython is not None else None
    tb = visible_traceback(exc.__traceback__)
    if shell is None:
        return traceback.format_exception(type(exc), exc, tb)
    return shell.InteractiveTB.structured_traceback(type(exc), exc, tb, tb_offset=0)


class _ShownWithoutMpkit:
    """IPython's ``_render_traceback_`` hook, set on an error a map raises whose class has none.
    Pickled with its exception (a cycle pickle resolves: an exception's state comes after it)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __call__(self) -> list[str]:
        return shown_traceback(self.exc)

    def __reduce__(self):
        return _ShownWithoutMpkit, (self.exc,)


def without_mpkit_frames(exc: BaseException) -> BaseException:
    """Mark an error about to be raised to the user so that IPython shows it without mpkit's
    frames (see :func:`shown_traceback`); returns ``exc``."""
    if getattr(type(exc), "_render_traceback_", None) is None and "_render_traceback_" not in vars(exc):
        try:
            exc._render_traceback_ = _ShownWithoutMpkit(exc)
        except (AttributeError, TypeError):  # an exception type with __slots__: shown as it is
            pass
    return exc


def frame_label(filename: str) -> str:
    """How a traceback names a file: IPython's ``Cell In[3]`` for notebook cells, else the path."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        named = shell.compile.format_code_name(filename)
        if named is not None:
            return " ".join(named)
    return f'File "{filename}"'


def _restore(cls, args, state):
    """Unpickle one of mpkit's exceptions without calling its ``__init__`` (whose arguments are
    not its ``args``): the message, the attributes and the notes come back as they were."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class _Picklable:
    """Mixin: pickle by state, so exceptions whose ``__init__`` takes other arguments than their
    message (``WorkerDied(exitcode, pid, ...)``) survive a round trip (a cache, a nested pool)."""

    def __reduce__(self):
        return _restore, (type(self), self.args, dict(vars(self)))

    def _render_traceback_(self) -> list[str]:
        """IPython's hook: shown without mpkit's frames (:func:`shown_traceback`)."""
        return shown_traceback(self)


class RemoteTraceback(_Picklable, Exception):
    """A worker's traceback that travels without its exception, shown as the cause of the error
    raised here: an ``init`` that failed, a function a worker could not load. (An item's error
    carries the worker's frames in its own ``__traceback__`` instead.)

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


class RemoteError(_Picklable, Exception):
    """Stands in for a worker exception that could not be pickled back to this process."""


class Reborn:
    """Pickles an exception as its class, ``args`` and attributes, rebuilt by ``_restore`` without
    calling its ``__init__``: for exceptions whose ``__init__`` does not take their ``args``."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return _restore, (type(exc), exc.args, dict(getattr(exc, "__dict__", {})))


Frame = tuple[str, int, str, "str | None"]  # (filename, lineno, function, line) as the worker saw it


@dataclass(frozen=True)
class ExceptionRecord:
    """An exception as it crosses back from a worker: pickled when it can be (else ``None``), its
    ``Type: message`` text, its frames, and the records of the exceptions chained to it. Built by
    the worker (``_worker._describe_exception``); a link seen twice (``raise X from err`` inside
    ``except ... as err`` makes ``err`` both cause and context) is one shared record."""

    pickled: bytes | None
    text: str
    frames: list[Frame]
    cause: "ExceptionRecord | None" = None
    context: "ExceptionRecord | None" = None
    suppress_context: bool = False
    members: "tuple[ExceptionRecord, ...]" = ()  # an exception group's exceptions
    group_message: str | None = None              # and its message

    def rebuild(self, fix_frames: Callable[[list[Frame]], list[Frame]] | None = None) -> BaseException:
        """The exception in this process: its own type where it can be unpickled (else a
        :class:`RemoteError` with its text), the worker's frames as its traceback, and its chain
        rebuilt the same way. ``fix_frames`` may correct file names (code sent by value)."""
        return self._rebuild({}, fix_frames)

    def _rebuild(self, memo: dict, fix_frames) -> BaseException:
        done = memo.get(id(self))
        if done is not None:
            return done
        exc = None
        if self.pickled is not None:
            try:
                exc = pickle.loads(self.pickled)
            except BaseException:
                exc = None
        grouped = isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == len(self.members)
        if not isinstance(exc, BaseException) or (self.members and not grouped):
            exc = RemoteError(self.text)
            if self.members:  # a group that cannot cross: a plain group of its rebuilt members
                members = [m._rebuild(memo, fix_frames) for m in self.members]
                exc = BaseExceptionGroup(self.group_message or self.text, members)
        memo[id(self)] = exc
        self._dress(exc, memo, fix_frames)
        if grouped:  # the unpickled group holds its members: give them their frames and chains
            for member, record in zip(exc.exceptions, self.members):
                if id(record) not in memo:
                    memo[id(record)] = member
                    record._dress(member, memo, fix_frames)
        return exc

    def _dress(self, exc: BaseException, memo: dict, fix_frames) -> None:
        frames = fix_frames(self.frames) if fix_frames is not None else self.frames
        exc.__traceback__ = worker_traceback(frames)
        exc.__cause__ = self.cause._rebuild(memo, fix_frames) if self.cause is not None else None
        exc.__context__ = self.context._rebuild(memo, fix_frames) if self.context is not None else None
        exc.__suppress_context__ = self.suppress_context


def _svarint(value: int) -> bytes:
    """A signed number as the location table of a code object stores it (6 bits a byte)."""
    value = value << 1 if value >= 0 else (-value) << 1 | 1
    out = bytearray()
    while value >= 64:
        out.append(64 | value & 63)
        value >>= 6
    out.append(value)
    return bytes(out)


def _at_line(code: types.CodeType, lineno: int) -> types.CodeType:
    """``code`` starting at line 1 of its file with every instruction on line ``lineno`` and no
    column range, so a traceback shows the worker's line without carets measured against our
    stand-in source. Starting at line 1 matters: IPython in a Jupyter kernel (stack_data) reads a
    frame's lines counted from its code's first line, and shows the wrong ones for a code object
    that claims to start at the failing line. Kept as it is if this Python's location table works
    otherwise (only the display suffers)."""
    units, table, delta = len(code.co_code) // 2, bytearray(), lineno - 1
    while units:
        n = min(units, 8)
        table += bytes((0x80 | 13 << 3 | (n - 1),)) + _svarint(delta)  # "line, no columns"
        units, delta = units - n, 0
    try:
        placed = code.replace(co_firstlineno=1, co_linetable=bytes(table))
        if all(p == (lineno, lineno, None, None) for p in placed.co_positions()):
            return placed
    except Exception:
        pass
    return code.replace(co_firstlineno=lineno)


#: The code each stand-in frame runs: a name lookup that fails, so the frame ends raising.
_FRAME_CODE = compile("_", "<mpkit worker>", "exec")
#: The globals of every stand-in frame: how :func:`raised_in_worker` recognises them.
_WORKER_GLOBALS: dict[str, Any] = {"__name__": "<mpkit worker>"}
#: Stand-in frames kept for reuse: a collect-mode map with thousands of failures in the same
#: function builds each distinct (file, line, function) once; a frame is a few hundred bytes.
FRAME_CACHE = 2048


@functools.lru_cache(maxsize=FRAME_CACHE)
def _frame(filename: str, lineno: int, name: str) -> types.TracebackType:
    code = _at_line(_FRAME_CODE.replace(co_filename=filename, co_name=name, co_qualname=name), max(lineno, 1))
    try:
        exec(code, _WORKER_GLOBALS)
    except NameError as exc:
        return exc.__traceback__.tb_next
    raise AssertionError("the stand-in frame did not raise")  # pragma: no cover


def worker_traceback(frames: list[Frame]) -> types.TracebackType | None:
    """A real traceback object whose frames stand for the worker's: Python's and IPython's
    traceback displays read file, line and function from it, and the line from the file."""
    tb = None
    for filename, lineno, name, _line in reversed(frames):
        try:
            entry = _frame(str(filename), int(lineno or 1), str(name))
        except Exception:  # a frame that cannot be stood for is left out, not the whole error
            continue
        tb = types.TracebackType(tb, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return tb


def remote_exception(described: bytes | None, text: str, frames: list) -> BaseException:
    """A worker's exception rebuilt in this process from ``_worker._describe_exception``'s record
    (its own type, the worker's frames as its traceback, its chain), or a :class:`RemoteError`."""
    try:
        record = pickle.loads(described) if described is not None else None
    except BaseException:
        record = None
    if not isinstance(record, ExceptionRecord):
        record = ExceptionRecord(None, text, frames)
    return record.rebuild()


def _cause(described, text: str, frames, note: str) -> BaseException:
    """The worker's own exception (chain and frames included), as the cause of mpkit's error."""
    exc = remote_exception(described, text, frames)
    try:
        exc.add_note(note)
    except Exception:
        pass
    return exc


def stage_build_failed(frames) -> bool:
    """The frames of a function a worker could not load show a pipeline's class stage failing to
    build its object (``_stage.build``), not a module the worker cannot import."""
    return any(f[2] == "build" and f[0].endswith("_stage.py") for f in frames)


def raised_in_worker(exc: BaseException) -> bool:
    """True for an exception rebuilt from a worker (its traceback holds the worker's frames)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals is _WORKER_GLOBALS:
            return True
        tb = tb.tb_next
    return False


class WorkerDied(_Picklable, RuntimeError):
    """A worker process ended while it held the item: killed, crashed, or called ``os._exit``."""

    def __init__(self, exitcode: int | None, pid: int | None, item_repr: str, attempts: int):
        self.exitcode = exitcode
        self.pid = pid
        super().__init__(
            f"worker process {pid} ended while running item {item_repr} "
            f"({describe_exit(exitcode) if exitcode is not None else 'how it ended is not known here'}); "
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


class TaskTimeout(_Picklable, TimeoutError):
    """An item ran past ``timeout=``; its worker was killed and replaced."""

    def __init__(self, timeout: float, item_repr: str, attempts: int):
        self.timeout = timeout
        super().__init__(
            f"item {item_repr} ran longer than timeout={timeout:g} s; its worker was stopped and "
            f"replaced (tried {attempts} time{'s' if attempts != 1 else ''}). Fix: raise timeout=, "
            "or split the work into smaller items."
        )


class SerializationError(_Picklable, TypeError):
    """An argument or result could not be pickled (or unpickled) to cross between processes."""


class MpkitWarning(UserWarning):
    """Something the user should know that did not stop the work (items skipped, output cut)."""


class WorkerInitError(_Picklable, RuntimeError):
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


class MapInterrupted(_Picklable, KeyboardInterrupt):
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

    def _render_traceback_(self) -> list[str]:
        """IPython's hook for showing an exception: shown as usual, with a second interrupt held
        until the cell ends, so that it cannot replace this one (and its results) in sys.last_value."""
        from ._interrupts import hold_while_shown

        hold_while_shown()
        return shown_traceback(self)


def unpicklable_result(value, exc: BaseException) -> SerializationError:
    """Why a result cannot go back, with the fix; a coroutine or generator says what made it."""
    said = (f"the result of this item ({type(value).__name__}) could not be pickled to send it back: "
            f"{type(exc).__name__}: {exc}. ")
    if inspect.iscoroutine(value):
        value.close()  # never awaited, and never will be: no warning about it in the output
        return SerializationError(
            said + "The function returned a coroutine (it is async, or calls an async function without "
            "awaiting it), and mpkit does not run coroutines. Fix: run it inside the function, "
            "return asyncio.run(coroutine), in a plain def.")
    if inspect.isgenerator(value):
        return SerializationError(said + "The function returned a generator (it yields, or returns one). "
                                  "Fix: return a list, return list(...).")
    return SerializationError(said + "Fix: return plain data (numbers, strings, lists, dicts, DataFrames), "
                              "not open files, locks or generators.")
