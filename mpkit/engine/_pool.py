"""A warm pool of worker processes, driven by one manager thread.

    map()/imap() in the calling thread         Manager thread (_manager)        worker processes
    ──────────────────────────────────         ─────────────────────────        ────────────────
    Run.feed(): items ─► pending chunks ─wake─► dispatch, PREFETCH per worker ─► worker 1 ─┐ one
    _drive() ◄── done batches / failures ◄───── wait(pipes, sentinels) ◄───────── worker 2 ─┘ duplex
             ◄── OutputRelay (prints) ◄──────── "out" messages                             pipe each
    progress.update(MapStats) at most 10/s      a sentinel fires: the worker died, and what
                                                it held is split, retried or failed (_bury)

The pool stays alive between maps (warm workers: the next call starts at once); a worker idle for
``idle_timeout`` seconds exits on its own, and the pool starts workers again when work comes.
Stopping a map early (an error raised, an interrupt, an abandoned ``imap``) kills the workers busy
with its items, with every process their tasks started (``_proctree``), so nothing keeps running
that nobody waits for; idle workers stay warm.
"""
from __future__ import annotations

import atexit
import hashlib
import multiprocessing as mp
import os
import pickle
import sys
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator

from . import _arguments, _serialize, _sigterm, _worker
from ._errors import MapInterrupted, MpkitWarning, ResultList, _short_repr
from ._interrupts import held_interrupts
from ._manager import INIT_TIMEOUT, Manager
from ._output import OutputRelay
from ._chunking import MAX_CHUNK
from ._run import Run

#: Seconds an idle worker waits for work before it exits. Long enough that cells run a few
#: minutes apart find the pool warm; short enough that a forgotten kernel frees its memory.
IDLE_TIMEOUT = 600.0
#: Functions whose time per item a pool remembers, to size the first chunks of the next map.
TIMINGS_KEPT = 64
#: How often the calling thread wakes to show progress and output when nothing else happens.
TICK = 0.1

_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


def default_start_method() -> str:
    """forkserver on Linux, spawn elsewhere: never fork a process that runs a Jupyter kernel.

    The environment variable ``MPKIT_START_METHOD`` overrides it for a whole session.

    A forked child inherits the kernel's threads' locks in whatever state they were (ZMQ, the
    output thread), which deadlocks at random. forkserver forks from a clean single-threaded
    server instead, and is Python 3.14's default on Linux.
    """
    chosen = os.environ.get("MPKIT_START_METHOD")
    if chosen:
        return chosen
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Pool:
    """Worker processes that stay warm between calls, with map/imap over them.

    ``workers`` processes (default: the CPUs this process may use) are started with
    ``start_method`` (default :func:`default_start_method`). ``init``, if given, runs once in each
    new worker before any item: load a model or open a connection there; the globals it sets are
    those the mapped functions read. A worker still in ``init`` after ``init_timeout`` seconds is
    stopped and the map fails with ``WorkerInitError``. With ``max_tasks_per_child=N`` a worker is
    replaced by a fresh one after N items (a library that leaks memory). Use as a context manager,
    or call :meth:`shutdown`; pools still open at interpreter exit are shut down then.
    """

    def __init__(self, workers: int | None = None, *, start_method: str | None = None,
                 init: Callable[[], Any] | None = None, init_timeout: float = INIT_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, max_tasks_per_child: int | None = None):
        _arguments.check_pool(workers, start_method, init, idle_timeout)
        _check_max_tasks(max_tasks_per_child)
        workers = default_workers() if workers is None else workers
        self.start_method = start_method or default_start_method()
        if self.start_method not in mp.get_all_start_methods():
            raise ValueError(f"start_method {self.start_method!r} is not available here; choose one of "
                             f"{', '.join(mp.get_all_start_methods())}")
        if self.start_method == "fork":
            warnings.warn("start_method='fork' copies this process with its threads' locks in whatever "
                          "state they are; in a Jupyter kernel (which runs threads) that can deadlock. "
                          "Use 'forkserver' or 'spawn' unless you know the process has no threads.",
                          MpkitWarning, stacklevel=2)
        _warn_if_many(workers)
        self.size = workers
        self.idle_timeout = idle_timeout
        self.init = init
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # '__main__' is multiprocessing's own default (a script is imported once, by the
            # server, not by every worker); the worker module spares each worker its imports.
            ctx.set_forkserver_preload(["__main__", "mpkit.engine._worker"])
        self.output = OutputRelay()
        self._manager = Manager(ctx, workers, init, idle_timeout, self.output,
                                max_tasks_per_child=max_tasks_per_child)
        self.set_init_timeout(init_timeout)
        self._timings: dict[str, float] = {}  # function id -> seconds per item, last measured
        self._closed = False
        _live_pools.add(self)
        _sigterm.chain(_shutdown_all)  # SIGTERM (Jupyter's, kill's) also ends what workers started

    # ---- public ------------------------------------------------------------------------------
    def map(self, fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
            ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
            progress=None, max_tasks_per_child: int | None = None) -> ResultList:
        """``fn`` applied to every item in worker processes; a :class:`ResultList` in input order.

        See :func:`mpkit.map` for the arguments; ``progress`` may also be a factory
        ``(description, total) -> bar`` for a front-end of your own (see ``mpkit.widgets``).
        """
        __tracebackhide__ = True
        _arguments.check_map(fn, workers=workers, chunksize=chunksize, ordered=ordered, on_error=on_error,
                             retries=retries, timeout=timeout, progress=progress)
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
            with held_interrupts():  # pressed again while stopping: the results are kept all the same
                batches.close()
                interrupted = _interrupted(run, done, failures)
            raise interrupted from None
        finally:
            batches.close()  # cancels the run if it did not complete
        if fatal is not None:
            raise fatal
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
        run = self._new_run(fn, items, _length(items), workers, chunksize, ordered, on_error, retries, timeout)
        run.max_tasks_per_child = _check_max_tasks(max_tasks_per_child)
        return self._imap(run, progress)

    def shutdown(self, wait: bool = True) -> None:
        """Stop every worker of this pool; running maps are cancelled. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._manager.close(wait)
        _live_pools.discard(self)

    def pids(self) -> list[int]:
        """Process ids of the workers alive now."""
        return self._manager.pids()

    def workers(self) -> list[tuple[int, int, str]]:
        """``(worker id, pid, "busy" or "idle")`` for each worker alive now."""
        return [(w.id, w.pid, "busy" if w.in_flight else "idle")
                for w in list(self._manager.workers.values()) if w.process.is_alive()]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._manager.pids())}/{self.size} workers alive"
        return f"<mpkit.Pool {self.start_method}, {state}>"

    def set_init_timeout(self, seconds: float) -> None:
        """Seconds a new worker may spend in ``init`` before it is stopped and reported."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"init_timeout must be a number of seconds > 0, not {seconds!r}")
        self._manager.init_timeout = float(seconds)

    def resize(self, workers: int) -> None:
        """Change how many workers the pool keeps; extra ones leave when idle work runs out."""
        _arguments.check_workers(workers, optional=False)
        if workers > self.size:
            _warn_if_many(workers)
        self.size = self._manager.size = workers
        self._manager.wake()

    # ---- calling thread ----------------------------------------------------------------------
    def _open_run(self, fn: Callable, cond, *, retries: int = 0, timeout: float | None = None) -> Run:
        """A run fed by a pipeline's router (``Run.submit``) rather than from an iterable."""
        run = self._new_run(fn, (), None, None, "auto", False, "collect", retries, timeout, cond)
        self._manager.add(run)
        return run

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
        context = pickle.dumps((_worker.CONTEXT, list(sys.path), os.getcwd(), dict(os.environ)), _worker.PROTOCOL)
        run = Run(fn, iterator, total, workers=n, chunksize=chunksize, ordered=ordered,
                  on_error=on_error, retries=retries, timeout=timeout, fn_id=fn_id,
                  fn_payload=pickle.dumps((_worker.FN, fn_id, fn_payload), _worker.PROTOCOL), fn_globals=by_value,
                  context=context, context_id=hashlib.blake2b(context, digest_size=10).hexdigest(),
                  seconds_per_item=self._timings.get(fn_id), cond=cond)
        return run

    def _imap(self, run: Run, progress):
        __tracebackhide__ = True
        if run.ordered:
            waiting: dict[int, Any] = {}
            next_index = 0
            for batch in self._drive(run, progress, lambda: next_index):
                if isinstance(batch, _Fatal):
                    raise batch.exc
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
                    raise batch.exc
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
        manager = self._manager
        manager.add(run)
        progress = _progress_factory(progress)
        progress = progress(run.fn_name, run.total) if progress is not None else None
        max_pending = 2 * run.max_workers
        # ordered imap: results held back for an earlier slow item are bounded, so memory stays
        # flat; the bound leaves room for every worker's chunks in flight.
        max_ahead = max(run.max_workers * 4 * MAX_CHUNK, 1024) if consumed is not None else None
        last_shown = 0.0
        try:
            while True:
                before = run.submitted
                run.feed(max_pending, max_ahead, consumed() if consumed else 0)
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
                    self._show(run, progress)
                    yield _Fatal(fatal)
                    return
                now = time.monotonic()
                if now - last_shown >= TICK or finished:
                    last_shown = now
                    self._show(run, progress)
                if finished and not run.done and not run.failures:
                    break
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
            if progress is not None:
                progress.write(text, stream)
            else:
                (sys.stderr if stream == "stderr" else sys.stdout).write(text)
        if progress is not None:
            stats = run.snapshot()
            progress.close(stats) if final else progress.update(stats)

    def _cancel(self, run: Run) -> None:
        """Stop a run early: drop what waits, kill the workers busy with it, wait until they are gone."""
        with run.cond:
            run.cancelled = True
            run.pending.clear()
        self._manager.wake()
        deadline = time.monotonic() + 3.0
        with run.cond:
            while run.in_flight and time.monotonic() < deadline and self._manager.alive():
                run.cond.wait(0.05)


_SKIPPED = object()


#: Workers per CPU above which a pool warns. Work that waits on I/O (downloads, a database)
#: gains from a few workers per CPU; past this, processes mostly cost memory (each holds its own
#: interpreter, imports and data) and switching time, and threads or asyncio serve I/O better.
MANY_WORKERS_PER_CPU = 4


def _warn_if_many(workers: int) -> None:
    cpus = default_workers()
    if workers > MANY_WORKERS_PER_CPU * cpus:
        warnings.warn(f"workers={workers} is more than {MANY_WORKERS_PER_CPU}x the {cpus} CPUs this "
                      f"process may use: each worker is a process with its own memory, started as the "
                      f"work needs it. For CPU-bound work use at most {cpus}; for work that waits on "
                      "I/O, threads (concurrent.futures.ThreadPoolExecutor) cost far less.",
                      MpkitWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside mpkit: the user's call of map, imap, Pool..."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _check_max_tasks(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_tasks_per_child must be a positive whole number (items a worker runs "
                         f"before it is replaced by a fresh one) or None for no limit, not {value!r}")
    return value


def _progress_factory(progress):
    """``progress=`` as given to map: True/False/None (a bar by default only under IPython), or a
    factory ``(description, total) -> bar`` with ``update(stats)``, ``write(text, stream)`` and
    ``close(stats)``. The bar itself is a front-end (``mpkit.widgets``), imported only when used."""
    if progress is None or isinstance(progress, bool):
        from ..widgets._progress import progress_factory

        return progress_factory(progress)
    return progress


class _Fatal:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def _length(items) -> int | None:
    try:
        return len(items)
    except Exception:
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


def live_pools() -> list[Pool]:
    """The pools not yet shut down in this process."""
    return [pool for pool in list(_live_pools) if not pool.closed]


@atexit.register
def _shutdown_all() -> None:
    for pool in live_pools():
        pool.shutdown(wait=False)
