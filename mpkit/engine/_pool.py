"""The map driver: ``map`` / ``imap`` over a backend's workers, whatever the backend.

    map()/imap() in the calling thread                 a backend (_backend.Backend)
    ──────────────────────────────────                 ────────────────────────────
    Run.feed(): items ─► Run.pending chunks ─wake()──► takes chunks, runs them on its workers,
    _drive() ◄── Run.done batches / Run.failures ◄──── reports each chunk back into the Run
             ◄── OutputRelay (prints) ◄─────────────── (chunk_done / crashed / timed_out ...)
    Watcher(progress bar) ◄── MapStats snapshots, at most 10/s ── the bar's own thread: update()
                        ◄── worker output, in order ─────────── this thread: write()

    bounds: chunks waiting for a worker: 2 per worker and PENDING_BYTES; ordered imap: items
    taken beyond the one the caller waits for, 4 chunks per worker and AHEAD_BYTES (from the
    measured bytes per item and per result)

``BasePool`` holds what does not depend on where workers run: the Run (the ledger of one map),
feeding it within bounds, handing results over in order, cancelling on an error or an interrupt,
and feeding the progress front-end (any ``_observe.MapObserver``; what ``progress=True`` shows is
the pool's ``front_end``: the engine has none, ``mpkit.Pool`` and ``mpkit.map`` set one). A
backend's pool (``process.Pool``) subclasses it and adds how workers are started.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

from . import _arguments, _serialize
from ._backend import Backend
from ._chunking import MAX_CHUNK, TARGET_CHUNK_BYTES, TARGET_CHUNK_SECONDS
from ._errors import MapInterrupted, MpkitWarning, ResultList, _short_repr, without_mpkit_frames
from ._interrupts import held_interrupts
from ._observe import MapFrontEnd, Watcher
from ._output import OutputRelay
from ._run import Run

#: Functions whose time per item a pool remembers, to size the first chunks of the next map.
TIMINGS_KEPT = 64
#: How often the calling thread wakes to show progress and output when nothing else happens.
TICK = 0.1
#: Pickled bytes of the chunks a map keeps waiting for a worker (at least two chunks per worker
#: and one chunk in any case): enough that no worker waits for the notebook to pickle the next one,
#: little enough that a map of 100 MB items holds one of them, not a dozen.
PENDING_BYTES = 32 << 20
#: Bytes of items and results an ordered imap holds beyond the result the caller waits for (at
#: least four chunks per worker): past it no more items are taken until the caller catches up.
#: multiprocessing's imap has no bound; 64 MB keeps a lazily consumed stream of large results flat.
AHEAD_BYTES = 64 << 20
#: The message kind that carries the notebook's sys.path, cwd and environment to a worker.
CONTEXT = "context"


class BasePool:
    """map/imap over the workers of ``self._backend``; a backend's pool sets ``_backend``,
    ``output`` and ``size`` in its ``__init__`` after calling this one."""

    _backend: Backend
    output: OutputRelay
    size: int
    #: What ``progress=True`` / ``None`` shows (see ``_observe.MapFrontEnd``); the engine's pools
    #: have none (no bar by default, and ``progress=True`` asks for a factory). Set it on a
    #: subclass or an instance: ``mpkit.Pool`` shows a bar in IPython and Jupyter.
    front_end: MapFrontEnd | None = None
    #: Work per chunk "auto" aims at, from what a chunk costs this backend (see _chunking).
    chunk_seconds: float = TARGET_CHUNK_SECONDS
    #: True when the backend's task times each item of its chunk itself (and hands back the
    #: results before a late item): a map with ``timeout=`` is cut into chunks as any other. False:
    #: the backend stops a late item's whole worker, so such a map sends one item per chunk.
    timed_in_chunks: bool = False

    def __init__(self) -> None:
        self._timings: dict[str, float] = {}  # function id -> seconds per item, last measured
        self._closed = False

    # ---- public ------------------------------------------------------------------------------
    def map(self, fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
            ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
            progress=None, max_tasks_per_child: int | None = None) -> ResultList:
        """``fn`` applied to every item in worker processes; a :class:`ResultList` in input order.

        See :func:`mpkit.map` for the arguments; ``progress`` may also be a factory
        ``(description, total) -> bar`` for a front-end of your own (``mpkit.engine.MapObserver``).
        """
        __tracebackhide__ = True
        _arguments.check_map(fn, workers=workers, chunksize=chunksize, ordered=ordered, on_error=on_error,
                             retries=retries, timeout=timeout, progress=progress)
        progress = self._progress_factory(progress)
        total = _length(items)
        run = self._new_run(fn, items, total, workers, chunksize, ordered, on_error, retries, timeout)
        run.max_tasks_per_child = _check_max_tasks(max_tasks_per_child)
        done: list[tuple[Any, list]] = []
        failures = []
        batches = self._drive(run, progress)
        fatal = None
        try:
            for batch in batches:
                if isinstance(batch, tuple):
                    done.append(batch)
                elif isinstance(batch, _Fatal):
                    fatal = batch.exc
                    break
                else:
                    failures.append(batch)
        except KeyboardInterrupt:  # the user's interrupt, not a task's (those come as _Fatal)
            run.outcome = run.outcome or "interrupted"   # it may have landed here, outside _drive
            with held_interrupts():  # pressed again while stopping: the results are kept all the same
                batches.close()
                interrupted = _interrupted(run, done, failures)
            raise interrupted from None
        finally:
            batches.close()  # cancels the run if it did not complete
        if fatal is not None:
            if getattr(fatal, "keeps_results", False):  # the backend itself failed: what finished is kept
                fatal.results = _assemble(done, failures, ordered)
            raise without_mpkit_frames(fatal)
        if failures and on_error == "skip":
            first = min(failures, key=lambda f: f.index)
            warnings.warn(f"{len(failures)} of {run.submitted} items failed and were skipped (first: item "
                          f"{first.index}, {type(first.exception).__name__}: {first.exception}); "
                          "they are listed in .failures of the result", MpkitWarning, stacklevel=3)
        return _assemble(done, failures, ordered)

    def imap(self, fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
             ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
             progress=None, max_tasks_per_child: int | None = None) -> Iterator:
        """Like :meth:`map`, lazily: items are taken from ``items`` only as workers need them.

        At most a few chunks per worker are in flight, and with ``ordered=True`` results waiting
        for an earlier slow item are bounded too, so an endless generator works in flat memory.
        With ``on_error="collect"`` a failed item yields its :class:`Failure` in its place.
        """
        __tracebackhide__ = True
        _arguments.check_map(fn, workers=workers, chunksize=chunksize, ordered=ordered, on_error=on_error,
                             retries=retries, timeout=timeout, progress=progress)
        progress = self._progress_factory(progress)
        run = self._new_run(fn, items, _length(items), workers, chunksize, ordered, on_error, retries, timeout)
        run.max_tasks_per_child = _check_max_tasks(max_tasks_per_child)
        return self._imap(run, progress)

    def shutdown(self, wait: bool = True) -> None:
        """Stop every worker of this pool; running maps are cancelled. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._backend.close(wait)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "BasePool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- calling thread ----------------------------------------------------------------------
    # ---- what a pipeline's lane (_stage.Lane) uses ----------------------------------------------
    def open_run(self, fn: Callable, cond, *, retries: int = 0, timeout: float | None = None) -> Run:
        """A run fed by a pipeline's router (``Run.submit_encoded``) rather than from an iterable."""
        run = self._new_run(fn, (), None, None, "auto", False, "collect", retries, timeout, cond)
        self._backend.add(run)
        return run

    @property
    def broken(self) -> BaseException | None:
        """The error that stopped the backend itself (a bug in it), if any."""
        return self._backend.broken

    def wake(self) -> None:
        """Tell the backend that chunks are waiting."""
        self._backend.wake()

    def resize(self, workers: int) -> None:
        """Run on ``workers`` workers from now on."""
        raise NotImplementedError

    def workers(self) -> list[tuple[int, int, str]]:
        """(worker id, pid, "busy" or "idle") of each worker."""
        raise NotImplementedError

    def _new_run(self, fn, items, total, workers, chunksize, ordered, on_error, retries, timeout,
                 cond=None) -> Run:
        __tracebackhide__ = True
        if self._closed:
            raise RuntimeError("this pool was shut down; create a new one (or use mpkit.map, which "
                               "starts its pool again as needed)")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__} {_short_repr(fn)}")
        try:
            iterator = iter(items)
        except TypeError:
            raise TypeError(f"items must be iterable (a list, range, generator...), got "
                            f"{type(items).__name__} {_short_repr(items)}") from None
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive whole number, not {workers!r}")
        try:
            fn_payload, by_value = _serialize.dumps_code(fn)
        except Exception as exc:
            culprit = _serialize.unpicklable_global(getattr(fn, "func", fn))
            if culprit is not None:
                raise TypeError(f"the function {_short_repr(fn)} cannot be sent to the workers: it uses the "
                                f"global {culprit!r}, which cannot be pickled ({type(exc).__name__}: {exc}). "
                                f"Fix: create {culprit} inside the function, or in init= (it runs in each "
                                "worker), instead of in the notebook.") from None
            raise TypeError(f"the function {_short_repr(fn)} cannot be pickled to send it to the workers: "
                            f"{type(exc).__name__}: {exc}. Fix: define it at the top level of a "
                            "module or cell, not around an open file, lock or connection.") from None
        fn_id = hashlib.blake2b(fn_payload, digest_size=10).hexdigest()
        n = min(workers or self.size, self.size)
        context = pickle.dumps((CONTEXT, list(sys.path), os.getcwd(), dict(os.environ)), pickle.HIGHEST_PROTOCOL)
        run = Run(fn, iterator, total, workers=n, chunksize=chunksize, ordered=ordered,
                  on_error=on_error, retries=retries, timeout=timeout, fn_id=fn_id,
                  fn_payload=self._function_message(fn_id, fn_payload), fn_globals=by_value,
                  context=context, context_id=hashlib.blake2b(context, digest_size=10).hexdigest(),
                  seconds_per_item=self._timings.get(fn_id), cond=cond,
                  copy_buffers=not isinstance(items, (list, tuple, range)), chunk_seconds=self.chunk_seconds,
                  timed_in_chunks=self.timed_in_chunks)
        return run

    def _imap(self, run: Run, progress):
        __tracebackhide__ = True
        try:
            yield from self._imap_results(run, progress)
        except KeyboardInterrupt as exc:  # the kernel's interrupt or the bar's Cancel, maybe noted
            raise without_mpkit_frames(exc)  # in the bar's thread: shown from the caller's line

    def _imap_results(self, run: Run, progress):
        __tracebackhide__ = True
        if run.ordered:
            waiting: dict[int, Any] = {}
            next_index = 0
            for batch in self._drive(run, progress, lambda: next_index):
                if isinstance(batch, _Fatal):
                    raise without_mpkit_frames(batch.exc)
                if isinstance(batch, tuple):
                    waiting.update(zip(*batch))
                elif run.on_error == "collect":
                    waiting[batch.index] = batch
                else:
                    waiting[batch.index] = _SKIPPED
                while next_index in waiting:
                    value = waiting.pop(next_index)
                    next_index += 1
                    if value is not _SKIPPED:
                        yield value
        else:
            for batch in self._drive(run, progress):
                if isinstance(batch, _Fatal):
                    raise without_mpkit_frames(batch.exc)
                if isinstance(batch, tuple):
                    yield from batch[1]
                elif run.on_error == "collect":
                    yield batch

    def _drive(self, run: Run, progress, consumed: Callable[[], int] | None = None):
        """Feed the run and yield finished (indices, results) batches and Failures until done.

        An error that ends the run is yielded last as ``_Fatal`` for the caller to raise: raised
        from a plain function, IPython can hide mpkit's frames (``__tracebackhide__``), which it
        cannot do for a finished generator's frame.
        """
        __tracebackhide__ = True
        manager = self._backend
        progress = Watcher(progress(run.fn_name, run.total), run.fn_name) if progress is not None else None
        manager.add(run)
        max_pending = 2 * run.max_workers
        max_bytes = max(2 * run.max_workers * TARGET_CHUNK_BYTES, PENDING_BYTES)
        last_shown = 0.0
        try:
            while True:
                before = run.submitted
                run.feed(max_pending, _max_ahead(run) if consumed is not None else None,
                         consumed() if consumed else 0, max_bytes)
                if run.submitted != before:
                    manager.wake()
                with run.cond:
                    if not (run.done or run.failures or run.fatal or run.complete or manager.broken):
                        run.cond.wait(TICK)
                    batches, run.done = list(run.done), type(run.done)()
                    failures, run.failures = list(run.failures), type(run.failures)()
                    fatal = run.fatal or manager.broken
                    finished = run.complete
                # hand results over before anything else can raise (an interrupt in the progress
                # bar must not lose them); MapInterrupted is built from what was handed over
                if run.on_error != "raise":
                    yield from failures
                yield from batches
                if fatal is not None:
                    run.outcome = "failed"
                    self._show(run, progress)
                    yield _Fatal(fatal)
                    return
                now = time.monotonic()
                if now - last_shown >= TICK or finished:
                    last_shown = now
                    self._show(run, progress)
                if finished and not run.done and not run.failures:
                    run.outcome = "finished"
                    break
        except KeyboardInterrupt:
            run.outcome = run.outcome or "interrupted"
            raise
        except GeneratorExit:  # the caller left its loop (or an interrupt landed there: map set it)
            run.outcome = run.outcome or ("finished" if run.complete and run.fatal is None else "cancelled")
            raise
        except BaseException:
            run.outcome = run.outcome or "failed"
            raise
        finally:
            with held_interrupts():  # an interrupt must not leave busy workers or an open bar behind
                if not run.complete:
                    self._cancel(run)
                manager.remove(run)
                if run.sizer.seconds_per_item is not None:  # the next map of fn starts with big chunks
                    self._timings.pop(run.fn_id, None)
                    self._timings[run.fn_id] = run.sizer.seconds_per_item
                    while len(self._timings) > TIMINGS_KEPT:
                        self._timings.pop(next(iter(self._timings)))
                self._show(run, progress, final=True)

    def _show(self, run: Run, progress, final: bool = False) -> None:
        for stream, text in self.output.drain(final):
            if progress is None or not progress.write(text, stream):  # a broken bar: printed instead
                (sys.stderr if stream == "stderr" else sys.stdout).write(text)
        if progress is not None:
            stats = run.snapshot()
            progress.close(stats) if final else progress.update(stats)

    def _cancel(self, run: Run) -> None:
        """Stop a run early: drop what waits, kill the workers busy with it, wait until they are gone."""
        with run.cond:
            run.cancelled = True
            run.pending.clear()
        self._backend.wake()
        deadline = time.monotonic() + 3.0
        with run.cond:
            while run.in_flight and time.monotonic() < deadline and self._backend.alive():
                run.cond.wait(0.05)


    def _function_message(self, fn_id: str, payload: bytes):
        """What the backend sends a worker to give it a function (the backend's own format)."""
        return payload

    def _progress_factory(self, progress):
        """``progress=`` as given to map: a factory ``(description, total) -> MapObserver`` (used as
        is), or True/False/None, which this pool's ``front_end`` turns into one (or into none)."""
        if progress is not None and not isinstance(progress, bool):
            return progress
        if self.front_end is not None:
            return self.front_end(progress)
        if progress:
            raise ValueError("progress=True asks for a progress bar, but this pool has no front-end to "
                             "draw one (a pool of mpkit.engine, which imports no widgets). Fix: use "
                             "mpkit.Pool or mpkit.map, which show a bar, or pass progress=a factory (description, total) -> an object with update(stats), "
                             "write(text, stream) and close(stats) (mpkit.engine.MapObserver).")
        return None


_SKIPPED = object()


def _max_ahead(run: Run) -> int:
    """Ordered imap: items taken from the input beyond the one the caller waits for. Results held
    back for an earlier slow item are bounded in items and in bytes (from the sizes measured so
    far, items and results), so memory stays flat whatever the item size; the bound leaves room
    for every worker's chunks in flight."""
    items = max(run.max_workers * 4 * MAX_CHUNK, 1024)
    per_item = run.sizer.bytes_per_item
    if per_item <= 0:
        return items
    in_bytes = max(run.max_workers * 4 * TARGET_CHUNK_BYTES, AHEAD_BYTES) / per_item
    return max(1, min(items, int(in_bytes)))


def _check_max_tasks(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_tasks_per_child must be a positive whole number (items a worker runs "
                         f"before it is replaced by a fresh one) or None for no limit, not {value!r}")
    return value


class _Fatal:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def _length(items) -> int | None:
    """How many items a source holds (progress, ETA, chunk sizes); None if it cannot say."""
    try:
        return len(items)
    except Exception:  # noqa: BLE001 - no len() (a generator), or one that fails: no total known
        return None


def _assemble(done, failures, ordered) -> ResultList:
    """Results in input order (or arrival order), without the items that failed or never ran."""
    failures = sorted(failures, key=lambda f: f.index)
    out = ResultList(failures=failures)
    if not ordered:
        for _, values in done:
            out.extend(values)
        return out
    done = sorted(done, key=lambda batch: batch[0][0])
    expected = 0
    for indices, _ in done:  # the usual case: ranges that follow each other
        if not isinstance(indices, range) or indices.start != expected:
            break
        expected = indices.stop
    else:
        for _, values in done:
            out.extend(values)
        return out
    by_index = {}
    for indices, values in done:
        by_index.update(zip(indices, values))
    out.extend(by_index[i] for i in sorted(by_index))
    return out


def _interrupted(run: Run, done, failures) -> MapInterrupted:
    with run.cond:  # results that arrived after the last hand-over count too
        done = done + list(run.done)
        failures = failures + (list(run.failures) if run.on_error != "raise" else [])
    finished = {i for indices, _ in done for i in indices} | {f.index for f in failures}
    pending = [i for i in range(run.submitted) if i not in finished]
    if run.total is not None:
        pending.extend(range(run.submitted, run.total))  # never taken from the input
    return MapInterrupted(_assemble(done, failures, run.ordered), pending, run.total)


