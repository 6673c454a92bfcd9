"""One map over a pool: items cut into chunks, results and failures gathered, every item counted.

    calling thread (map / imap)                     pool manager thread
    ───────────────────────────                     ───────────────────
    feed(): items ─► Chunk(indices, payload) ─► pending ─► dispatched to a worker
                                                          │
    results() ◄── done: [(indices, results)] ◄────────────┘ complete() / crashed() / timed_out()
              ◄── failures: [Failure]                        retry: chunk back to the front of pending

Results of a chunk come back in parts while it runs (``PART_SECONDS`` of the backend's worker). When its worker
dies, the worker's shared slot says which item was running: only that item is blamed (retried or
failed); the items before it whose results had not come back yet (at most the last part's worth of
work) are sent again, and the items after it, which never started, are sent again unchanged. So a
crash in the middle of 25,000 items is pinned on the one item that caused it without re-running
its neighbours, ``retries=0`` runs no item twice but for that short window, and nothing is ever
lost: each index ends as exactly one result or one failure.

Where the slot cannot tell (a death while unpickling the chunk, before any item ran, or while
pickling results back), the chunk is split into single items and sent again without counting an
attempt; a batch (one call for many items) that kills its worker fails as a whole, or with
``retries=`` is split so that each item gets its own tries.
"""
from __future__ import annotations

import itertools
import pickle
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from . import _serialize
from ._arguments import ON_ERROR, check_run  # noqa: F401 - _pipeline imports ON_ERROR from here
from ._chunking import TARGET_CHUNK_BYTES, TARGET_CHUNK_SECONDS, ChunkSizer, Cutter
from ._errors import (ExceptionRecord, Failure, RemoteError, SerializationError, TaskTimeout,
                      WorkerDied, _short_repr)

#: The file name cloudpickle gives code it sends by value.
DYNAMIC_CODE = "<dynamic-code>"
_chunk_ids = itertools.count()


@dataclass(frozen=True)
class MapStats:
    """A frozen snapshot of a map's progress, for progress bars and dashboards."""

    total: int | None      #: items in the input, when it has a length
    submitted: int         #: items taken from the input so far
    done: int              #: items finished with a result
    failed: int            #: items finished with an error (after retries)
    retried: int           #: attempts repeated after an error, crash or timeout
    workers: int           #: worker processes alive in the pool
    busy: int              #: workers holding items of this map
    elapsed: float         #: seconds since the map started
    #: workers this map may use at most: its ``workers=``, or the pool's size (``workers`` may be more)
    max_workers: int = 0
    #: how it ended, in the last snapshot only: "finished" (every item done or failed and
    #: collected), "failed" (an error ended it), "interrupted" (the kernel's interrupt or the
    #: bar's Cancel), "cancelled" (the loop over imap left early); "" while it runs
    outcome: str = ""

    @property
    def rate(self) -> float:
        """Finished items per second so far."""
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(eq=False)
class Chunk:
    run: "Run"
    indices: range | list[int]
    items: list
    payload: _serialize.Pickled
    attempts: int = 1
    batch: bool = False    # a pipeline micro-batch: one call with the list
    reported: int = 0      # items whose outcome came back already (parts of a running chunk)
    id: int = field(default_factory=lambda: next(_chunk_ids))
    started: float = 0.0   # when its worker began it (timeouts); set by the manager


class Run:
    def __init__(self, fn: Callable, items: Iterator, total: int | None, *, workers: int,
                 chunksize: int | str, ordered: bool, on_error: str, retries: int,
                 timeout: float | None, fn_id: str, fn_payload: bytes, context: bytes, context_id: str,
                 fn_globals: bool = False, seconds_per_item: float | None = None, cond: threading.Condition | None = None,
                 copy_buffers: bool = False, chunk_seconds: float = TARGET_CHUNK_SECONDS,
                 timed_in_chunks: bool = False):
        check_run(chunksize, on_error, retries, timeout)
        self.fn_name = getattr(fn, "__qualname__", repr(fn))
        self.code_files = _code_files(fn)
        self.fn_id, self.fn_payload = fn_id, fn_payload
        self.fn_globals = fn_globals  # sent by value with notebook globals: re-sent after another's
        self.context, self.context_id = context, context_id  # the notebook's sys.path, cwd, env now
        self.max_workers = workers
        self.ordered, self.on_error, self.retries, self.timeout = ordered, on_error, retries, timeout
        #: timeout= on a backend that stops a late item's worker: one item per chunk, so that the
        #: kill stops that item alone; a backend whose task times each item of its chunk itself
        #: (``timed_in_chunks``, Dask's) cuts chunks as without a timeout
        one_by_one = timeout is not None and not timed_in_chunks
        self.sizer = ChunkSizer(1 if one_by_one else chunksize, workers, total, seconds_per_item,
                                chunk_seconds)
        self.total = total
        self._cutter = Cutter(items)
        #: items come from an iterator that may hand out one buffer refilled (a generator of frames
        #: read into the same array): a chunk copies their large buffers when it is cut, and keeps
        #: the copies, so neither the send nor a retry reads what the buffer holds later
        self.copy_buffers = copy_buffers
        self.cond = cond or threading.Condition()  # a pipeline shares one among its stages
        self.pending: deque[Chunk] = deque()   # guarded by cond
        self.done: deque[tuple[range | list[int], list]] = deque()
        self.failures: deque[Failure] = deque()
        self.fatal: BaseException | None = None   # the map cannot go on (function not loadable...)
        self.cancelled = False
        self.outcome = ""                        # set by the map driver as the map ends (MapStats.outcome)
        self.max_tasks_per_child: int | None = None  # this map's own; else the pool's
        self.in_flight = 0                       # chunks held by workers, kept by the manager
        self.submitted = self.finished = self.failed = self.retried = 0
        self.exhausted = False
        self.started = time.perf_counter()
        self.busy_workers = 0
        self.pool_workers = 0
        self.busy_seconds = 0.0                  # compute time reported by workers
        #: a short repr of an item for messages (a pipeline's items are still pickled here)
        self.describe: Callable[[Any], str] = _short_repr
        #: a pipeline's run: each ``done`` entry carries its results' message too (None if some of
        #: its items failed), which the next stage can send on as its chunk, unopened
        self.forwards = False

    # ---- a pipeline's router (under self.cond) ---------------------------------------------
    def submit(self, keys: list, items: list, batch: bool = False) -> None:
        """Queue items that the caller took from elsewhere (a pipeline channel), as one chunk."""
        self.submitted += len(items)
        chunk = self._make_chunk(keys, items)
        if chunk is not None:
            chunk.batch = batch
            self.pending.append(chunk)

    def submit_encoded(self, keys: list, items: list, payload: _serialize.Pickled, batch: bool = False) -> None:
        """Like :meth:`submit`, for items the caller pickled one by one already, with the chunk's
        message made by the caller too (``payload``: what the worker unpickles into ``items``'s
        stand-ins); a retry or a split re-packs ``items`` as usual."""
        self.submitted += len(items)
        self.pending.append(Chunk(self, keys, items, payload, batch=batch))

    # ---- calling thread ---------------------------------------------------------------------
    def feed(self, max_pending: int, max_ahead: int | None = None, consumed: int = 0,
             max_bytes: int | None = None) -> None:
        """Cut items from the input into pickled chunks until ``max_pending`` chunks wait, or
        chunks of ``max_bytes`` (one at least), or ``max_ahead`` items beyond ``consumed``."""
        while not self.exhausted:
            with self.cond:
                if len(self.pending) >= max_pending or self.cancelled:
                    return
                if max_bytes is not None and self.pending and self.pending_bytes() >= max_bytes:
                    return
            if max_ahead is not None and self.submitted - consumed >= max_ahead:
                return
            size = self.sizer.next_size(self.submitted)
            # "auto" chunks are capped in bytes too, whatever the size said (the items may have
            # grown since it was measured); a chunksize given is items per message, as asked
            batch, payload = self._cutter.cut(size, TARGET_CHUNK_BYTES if self.sizer.fixed is None else None)
            self.exhausted = self._cutter.exhausted
            if not batch:
                return
            start = self.submitted
            self.submitted += len(batch)
            chunk = self._make_chunk(range(start, start + len(batch)), batch, payload)
            if chunk is not None:
                with self.cond:
                    self.pending.append(chunk)

    def _make_chunk(self, indices, items, payload: _serialize.Pickled | None = None) -> Chunk | None:
        """A chunk of ``items``, pickled here unless ``payload`` is their pickle already; items that
        cannot be pickled fail, each with the reason, and the others go."""
        try:
            if payload is None:
                payload = _serialize.pack(items)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
        else:
            self.sizer.observe_payload(len(items), payload.nbytes)
            if self.copy_buffers and payload.buffers:
                payload = _serialize.Pickled(payload.data, [bytearray(b) for b in payload.buffers])
                items = _serialize.unpack(payload)  # views of the copies: retries send them again
            return Chunk(self, indices, items, payload)
        # Pickle item by item to name the ones that cannot cross, and send the rest.
        good_idx, good = [], []
        for index, item in zip(indices, items):
            try:
                _serialize.dumps(item)  # only to name the items that cannot cross
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                err = SerializationError(
                    f"item {index} ({_short_repr(item)}) cannot be pickled to send it to a worker: "
                    f"{type(exc).__name__}: {exc}. Fix: pass plain data (paths, numbers, strings, "
                    "dicts) and open files, connections or models inside the function.")
                with self.cond:
                    self._fail(index, item, err, None)
            else:
                good_idx.append(index)
                good.append(item)
        return Chunk(self, good_idx, good, _serialize.pack(good)) if good else None

    def _named(self, index, item) -> str:
        """``index (item)`` for messages: a pipeline's key shows its position in the input."""
        if isinstance(index, tuple):
            index = index[0] if len(index) == 1 else f"{index[0]} (output {', '.join(map(str, index[1:]))})"
        return f"{index} ({self.describe(item)})"

    def _frames(self, frames):
        """Give frames of functions sent by value their notebook file back (cloudpickle drops it)."""
        return [(self.code_files.get(name, filename) if filename == DYNAMIC_CODE else filename, lineno, name, line)
                for filename, lineno, name, line in frames]

    def snapshot(self) -> MapStats:
        # busy_workers is the backend's count as of its last pass; no chunk held means none busy
        busy = self.busy_workers if self.in_flight else 0
        return MapStats(self.total, self.submitted, self.finished, self.failed, self.retried,
                        self.pool_workers, busy, time.perf_counter() - self.started, self.max_workers,
                        self.outcome)

    def pending_bytes(self) -> int:
        """Pickled size of the chunks waiting for a worker (under cond)."""
        return sum(chunk.payload.nbytes for chunk in self.pending)

    @property
    def complete(self) -> bool:
        return self.exhausted and not self.pending and self.in_flight == 0

    # ---- manager thread (all under self.cond) ---------------------------------------------
    def take(self, most: int | None = None) -> Chunk | None:
        """The next chunk, cut to ``most`` items (a worker near max_tasks_per_child); the rest
        stays first in line. A micro-batch is one call: it goes whole."""
        if not self.pending or self.cancelled:
            return None
        chunk = self.pending.popleft()
        if most is not None and 0 < most < len(chunk.indices) and not chunk.batch:
            rest = Chunk(self, chunk.indices[most:], chunk.items[most:], _serialize.pack(chunk.items[most:]),
                         chunk.attempts)
            self.pending.appendleft(rest)
            chunk = Chunk(self, chunk.indices[:most], chunk.items[:most], _serialize.pack(chunk.items[:most]),
                          chunk.attempts)
        return chunk

    def chunk_done(self, chunk: Chunk, offset: int, results_bytes: bytes, failures: list, seconds: float,
                   worker_id: int) -> None:
        """Results of ``chunk``'s items from ``offset`` on (a part, or the rest at its end)."""
        try:
            results = _serialize.unpack(results_bytes)
        except BaseException as exc:
            self._undecodable(chunk, "its result could not be unpickled in this process", exc, offset)
            return
        chunk.reported = offset + len(results)
        self.sizer.observe(len(results), seconds, results_bytes.nbytes)
        self.busy_seconds += seconds
        whole = offset == 0 and len(results) == len(chunk.indices)
        indices = chunk.indices if whole else chunk.indices[offset:offset + len(results)]
        if failures:
            items = chunk.items[offset:offset + len(results)]
            failed = set()
            for position, exc_bytes, text, frames in failures:
                position -= offset
                failed.add(position)
                index, item = indices[position], items[position]
                self._error(chunk, index, item, _rebuild(exc_bytes, text, self._frames(frames), worker_id, index, self.describe(item),
                                                           self._frames))
            keep = [o for o in range(len(indices)) if o not in failed]
            if keep:
                kept = ([indices[o] for o in keep], [results[o] for o in keep])
                self.done.append((*kept, None) if self.forwards else kept)
                self.finished += len(keep)
        elif results:
            self.done.append((indices, results, results_bytes) if self.forwards else (indices, results))
            self.finished += len(results)
        self.cond.notify_all()

    def crashed(self, chunk: Chunk, exitcode: int | None, pid: int | None, running: int | None) -> None:
        """The worker holding this chunk died while running it. ``running`` is the offset of the
        item it was running (from its slot), ``-1 - k`` if it died sending results from offset k,
        or None if no item of this chunk had started."""
        rest = chunk.reported
        if chunk.batch and running is not None and running >= 0:
            if chunk.attempts <= self.retries:
                self.retried += len(chunk.indices)
                # Split to find the culprit: that is not an item's own try (it may not be its
                # fault); a batch of one that kills its worker is, and is retried as such.
                self._split(chunk, chunk.attempts + (len(chunk.indices) == 1))
                return
            for index, item in zip(chunk.indices, chunk.items):
                self._fail(index, item, WorkerDied(exitcode, pid, f"{self._named(index, item)} in a batch of "
                                                   f"{len(chunk.indices)}", chunk.attempts), chunk)
            return
        if running is None or running < 0:
            # Before its first item (unpickling the chunk) or while sending results: which item
            # is to blame cannot be known. Items one by one find it (they ran no code yet, or
            # finished: at most a part's worth of work runs again).
            start = rest if running is None else -1 - running
            if len(chunk.indices) - start == 1:
                index, item = chunk.indices[start], chunk.items[start]
                self._error(chunk, index, item, WorkerDied(exitcode, pid, self._named(index, item),
                                                           chunk.attempts))
            else:
                self._split(chunk, chunk.attempts, start)
            return
        index, item = chunk.indices[running], chunk.items[running]
        after = self._sub_chunk(chunk, running + 1)
        if after is not None:
            self.pending.appendleft(after)        # never started: sent again as they were
        self._error(chunk, index, item, WorkerDied(exitcode, pid, self._named(index, item), chunk.attempts))
        before = self._sub_chunk(chunk, rest, running)
        if before is not None:
            self.pending.appendleft(before)       # finished, results lost with the worker: run again

    def _sub_chunk(self, chunk: Chunk, start: int, stop: int | None = None) -> Chunk | None:
        indices, items = chunk.indices[start:stop], chunk.items[start:stop]
        if not len(indices):
            return None
        return Chunk(self, indices, items, _serialize.pack(items), chunk.attempts, batch=chunk.batch)

    def timed_out(self, chunk: Chunk, offset: int = 0) -> None:
        """The item at ``offset`` of ``chunk`` ran past the timeout: it is retried or fails; the
        items after it, which never started, are sent again unchanged (the results of those
        before it came back already: ``chunk_done``)."""
        if chunk.batch and len(chunk.indices) > 1:
            self._batch_timed_out(chunk)
            return
        after = self._sub_chunk(chunk, offset + 1)
        if after is not None:
            self.pending.appendleft(after)
        index, item = chunk.indices[offset], chunk.items[offset]
        self._error(chunk, index, item, TaskTimeout(self.timeout, self._named(index, item), chunk.attempts))

    def _batch_timed_out(self, chunk: Chunk) -> None:
        """A pipeline micro-batch is one call on the whole list: when the call times out, every item
        of it did. The batch is tried again whole (retries=), or each of its items fails, once."""
        if chunk.attempts <= self.retries:
            self.retried += len(chunk.indices)
            self.pending.appendleft(Chunk(self, chunk.indices, chunk.items, chunk.payload, chunk.attempts + 1,
                                          batch=True))
            return
        for index, item in zip(chunk.indices, chunk.items):
            where = f"{self._named(index, item)} in a batch of {len(chunk.indices)}"
            self._fail(index, item, TaskTimeout(self.timeout, where, chunk.attempts), chunk)

    def undecodable(self, chunk: Chunk, text: str) -> None:
        self._undecodable(chunk, "it could not be unpickled in the worker", RemoteError(text))

    def requeue(self, chunk: Chunk) -> None:
        """Send a chunk again without counting an attempt (its worker left through no fault of it)."""
        rest = chunk if not chunk.reported else self._sub_chunk(chunk, chunk.reported)
        if rest is not None:
            self.pending.appendleft(rest)

    def set_fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.cond.notify_all()

    def pool_closed(self) -> None:
        """Its pool was shut down while it ran (any thread; takes cond): it ends with that error."""
        with self.cond:
            self.cancelled = True
            self.set_fatal(RuntimeError("the pool was shut down while this map ran"))

    def _undecodable(self, chunk: Chunk, what: str, exc: BaseException, start: int = 0) -> None:
        if len(chunk.indices) - start > 1:
            self._split(chunk, chunk.attempts, start)
            return
        index, item = chunk.indices[start], chunk.items[start]
        err = SerializationError(f"item {self._named(index, item)}: {what}: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        self._fail(index, item, err, chunk)

    def _split(self, chunk: Chunk, attempts: int = 1, start: int = 0) -> None:
        singles = [Chunk(self, [i], [x], _serialize.pack([x]), attempts, batch=chunk.batch)
                   for i, x in zip(chunk.indices[start:], chunk.items[start:])]
        self.pending.extendleft(reversed(singles))

    def _error(self, chunk: Chunk, index: int, item: Any, exc: BaseException) -> None:
        if chunk.attempts <= self.retries:
            self.retried += 1
            self.pending.appendleft(Chunk(self, [index], [item], _serialize.pack([item]), chunk.attempts + 1,
                                          batch=chunk.batch))
        else:
            self._fail(index, item, exc, chunk)

    def _fail(self, index: int, item: Any, exc: BaseException, chunk: Chunk | None) -> None:
        if chunk is not None and chunk.attempts > 1 and not isinstance(exc, (WorkerDied, TaskTimeout)):
            try:
                exc.add_note(f"(failed on all {chunk.attempts} tries, retries={self.retries})")
            except Exception:
                pass
        self.failures.append(Failure(index, item, exc))
        self.failed += 1
        if self.on_error == "raise" and self.fatal is None:
            self.fatal = exc
        self.cond.notify_all()


def _rebuild(described, text, frames, worker_id, index, shown: str, fix_frames=None) -> BaseException:
    """A worker's exception in this process, from ``_worker._describe_exception`` (a pickled
    :class:`ExceptionRecord`, chain included) or from a bare pickled exception (``None`` when it
    could not be pickled), with a note naming the worker and the item."""
    record = None
    if described is not None:
        try:
            record = pickle.loads(described)
        except BaseException:
            record = None
    if isinstance(record, BaseException):  # a bare exception: no chain, no record
        record = ExceptionRecord(described, text, frames)
    elif not isinstance(record, ExceptionRecord):
        record = ExceptionRecord(None, text, frames)
    else:
        record = replace(record, frames=frames)  # the caller's frames are already fixed
    exc = record.rebuild(fix_frames)
    if isinstance(index, tuple):  # a pipeline's item: its position in the input comes first
        index = index[0]
    try:
        exc.add_note(f"(raised in mpkit worker {worker_id} on item {index}: {shown})")
    except Exception:
        pass
    return exc


def _code_files(fn) -> dict[str, str]:
    """Function name -> source file, for the code fn runs: its own, the functions nested in it,
    the methods of a class (or of a stage's class), and the global functions it calls."""
    out: dict[str, str] = {}
    todo = []
    target = getattr(fn, "factory", fn)  # a pipeline stage's class or factory
    if isinstance(target, type):
        todo += [v.__code__ for k in target.__mro__[:-1] for v in vars(k).values() if hasattr(v, "__code__")]
        globs = getattr(next((v for v in vars(target).values() if hasattr(v, "__globals__")), None),
                        "__globals__", {})
    else:
        code = getattr(target, "__code__", None) or getattr(getattr(target, "__call__", None), "__code__", None)
        todo += [code] if code is not None else []
        globs = getattr(target, "__globals__", {})
    while todo:
        code = todo.pop()
        if code.co_name in out:
            continue
        out[code.co_name] = code.co_filename
        todo.extend(c for c in code.co_consts if hasattr(c, "co_filename"))
        for name in code.co_names:
            other = getattr(globs.get(name), "__code__", None)
            if other is not None:
                todo.append(other)
    return out
