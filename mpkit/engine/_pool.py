"""A warm pool of worker processes, driven by one manager thread.

    map()/imap() in the calling thread          manager thread                 worker processes
    ─────────────────────────────────          ──────────────                 ────────────────
    Run.feed(): items ─► pending chunks ──────► dispatch: PREFETCH chunks ───► worker 0 ─┐
                                       wake ──► per worker, FN sent first ───► worker 1 ─┤ one duplex
    Run.results ◄── done / failures ◄───────── wait(pipes + sentinels) ◄──────────────────┘ pipe each
    OutputRelay ──► cell output        ◄───────  "out" messages
                                                 a sentinel fires: the worker died → the chunk it
                                                 was running is split, retried or failed; the
                                                 chunks it had not started go back to pending

The pool stays alive between maps (warm workers: the next call starts at once); a worker idle for
``idle_timeout`` seconds exits on its own, and the pool starts workers again when work comes.
Stopping a map early (an error raised, an interrupt, an abandoned ``imap``) kills the workers busy
with its items, so nothing keeps running that nobody waits for; idle workers stay warm.
"""
from __future__ import annotations

import atexit
import hashlib
import itertools
import multiprocessing as mp
import os
import pickle
import socket
import sys
import threading
import time
import weakref
from collections import deque
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable, Iterable, Iterator

import cloudpickle

from . import _worker
from ._errors import MapInterrupted, RemoteTraceback, ResultList, WorkerInitError, _short_repr
from ._output import OutputRelay
from ._run import MapStats, Run

#: Chunks a worker holds at once: one running, one waiting in its inbox, so it never waits for
#: the manager between chunks. More would only make the tail of a map less even.
PREFETCH = 2
#: Seconds an idle worker waits for work before it exits. Long enough that cells run a few
#: minutes apart find the pool warm; short enough that a forgotten kernel frees its memory.
IDLE_TIMEOUT = 600.0
#: How often the calling thread wakes to show progress and output when nothing else happens.
TICK = 0.1
#: Seconds given to workers to leave on their own at shutdown before they are killed.
STOP_GRACE = 1.0

_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


def default_start_method() -> str:
    """forkserver on Linux, spawn elsewhere: never fork a process that runs a Jupyter kernel.

    A forked child inherits the kernel's threads' locks in whatever state they were (ZMQ, the
    output thread), which deadlocks at random. forkserver forks from a clean single-threaded
    server instead, and is Python 3.14's default on Linux.
    """
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _Worker:
    __slots__ = ("id", "process", "conn", "in_flight", "fns", "stopping", "timed_out", "pid")

    def __init__(self, wid: int, process, conn):
        self.id, self.process, self.conn = wid, process, conn
        self.pid = process.pid
        self.in_flight: deque = deque()
        self.fns: set[str] = set()
        self.stopping = False       # killed on purpose: what it held is not to blame
        self.timed_out = None       # the chunk it was killed for


class Pool:
    """Worker processes that stay warm between calls, with map/imap over them.

    ``workers`` processes (default: the CPUs this process may use) are started with
    ``start_method`` (default :func:`default_start_method`). ``init``, if given, runs once in each
    new worker before any item: load a model or open a connection there. Use as a context manager,
    or call :meth:`shutdown`; pools still open at interpreter exit are shut down then.
    """

    def __init__(self, workers: int | None = None, *, start_method: str | None = None,
                 init: Callable[[], Any] | None = None, idle_timeout: float = IDLE_TIMEOUT):
        workers = default_workers() if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive whole number, not {workers!r}")
        self.start_method = start_method or default_start_method()
        if self.start_method not in mp.get_all_start_methods():
            raise ValueError(f"start_method {self.start_method!r} is not available here; choose one of "
                             f"{', '.join(mp.get_all_start_methods())}")
        self.size = workers
        self.idle_timeout = idle_timeout
        self.init = init
        self._init_payload = cloudpickle.dumps(init) if init is not None else None
        self._ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            self._ctx.set_forkserver_preload(["mpkit.engine._worker"])
        self.output = OutputRelay()
        self._workers: dict[int, _Worker] = {}
        self._ids = itertools.count(1)
        self._runs: list[Run] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._manager: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._init_error: BaseException | None = None
        self._broken: BaseException | None = None
        _live_pools.add(self)

    # ---- public ------------------------------------------------------------------------------
    def map(self, fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
            ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
            progress=None) -> ResultList:
        """``fn`` applied to every item in worker processes; a :class:`ResultList` in input order.

        See :func:`mpkit.map` for the arguments.
        """
        __tracebackhide__ = True
        total = _length(items)
        run = self._new_run(fn, items, total, workers, chunksize, ordered, on_error, retries, timeout)
        done: list[tuple[Any, list]] = []
        failures = []
        batches = self._drive(run, progress)
        try:
            for batch in batches:
                if isinstance(batch, tuple):
                    done.append(batch)
                elif isinstance(batch, _Fatal):
                    batches.close()  # cancel the run before the error reaches the caller
                    raise batch.exc
                else:
                    failures.append(batch)
        except KeyboardInterrupt:
            batches.close()
            raise _interrupted(run, done, failures) from None
        finally:
            batches.close()
        return _assemble(done, failures, ordered)

    def imap(self, fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
             ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
             progress=None) -> Iterator:
        """Like :meth:`map`, lazily: items are taken from ``items`` only as workers need them.

        At most a few chunks per worker are in flight, and with ``ordered=True`` results waiting
        for an earlier slow item are bounded too, so an endless generator works in flat memory.
        With ``on_error="collect"`` a failed item yields its :class:`Failure` in its place.
        """
        __tracebackhide__ = True
        run = self._new_run(fn, items, _length(items), workers, chunksize, ordered, on_error, retries, timeout)
        return self._imap(run, progress)

    def shutdown(self, wait: bool = True) -> None:
        """Stop every worker of this pool; running maps are cancelled. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            runs = list(self._runs)
        for run in runs:
            with run.cond:
                run.cancelled = True
                run.set_fatal(RuntimeError("the pool was shut down while this map ran"))
        self._wake()
        if self._manager is not None and self._manager is not threading.current_thread():
            self._manager.join(timeout=5)
        workers = list(self._workers.values())
        for w in workers:
            try:
                w.conn.send_bytes(pickle.dumps((_worker.STOP,)))
            except OSError:
                pass
        deadline = time.monotonic() + (STOP_GRACE if wait else 0)
        for w in workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self._workers.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._closed = True
        _live_pools.discard(self)

    def pids(self) -> list[int]:
        """Process ids of the workers alive now."""
        return [w.pid for w in list(self._workers.values()) if w.process.is_alive()]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._workers)}/{self.size} workers alive"
        return f"<mpkit.Pool {self.start_method}, {state}>"

    def resize(self, workers: int) -> None:
        """Change how many workers the pool keeps; extra ones leave when idle work runs out."""
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive whole number, not {workers!r}")
        self.size = workers
        self._wake()

    # ---- calling thread ----------------------------------------------------------------------
    def _new_run(self, fn, items, total, workers, chunksize, ordered, on_error, retries, timeout) -> Run:
        __tracebackhide__ = True
        if self._closed or self._closing:
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
            fn_payload = cloudpickle.dumps(fn)
        except Exception as exc:
            raise TypeError(f"the function {_short_repr(fn)} cannot be pickled to send it to the workers: "
                            f"{type(exc).__name__}: {exc}. Fix: define it at the top level of a "
                            "module or cell, not around an open file, lock or connection.") from None
        fn_id = hashlib.blake2b(fn_payload, digest_size=10).hexdigest()
        n = min(workers or self.size, self.size)
        run = Run(fn, iterator, total, workers=n, chunksize=chunksize, ordered=ordered,
                  on_error=on_error, retries=retries, timeout=timeout, fn_id=fn_id,
                  fn_payload=pickle.dumps((_worker.FN, fn_id, fn_payload, list(sys.path), os.getcwd())))
        return run

    def _imap(self, run: Run, progress):
        __tracebackhide__ = True
        if run.ordered:
            waiting: dict[int, Any] = {}
            next_index = 0
            # bound on results held for an earlier slow item: enough to keep every worker busy
            run.max_ahead = max(run.max_workers * 4 * 64, 1024)
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
        with self._lock:
            self._runs.append(run)
        self._start_manager()
        max_pending = 2 * run.max_workers
        max_ahead = getattr(run, "max_ahead", None)
        last_shown = 0.0
        try:
            while True:
                before = run.submitted
                run.feed(max_pending, max_ahead, consumed() if consumed else 0)
                if run.submitted != before or run.exhausted:
                    self._wake()
                with run.cond:
                    if not (run.done or run.failures or run.fatal or run.complete or self._broken):
                        run.cond.wait(TICK)
                    batches, run.done = list(run.done), type(run.done)()
                    failures, run.failures = list(run.failures), type(run.failures)()
                    fatal = run.fatal or self._broken
                    finished = run.complete
                now = time.monotonic()
                if now - last_shown >= TICK or finished or fatal:
                    last_shown = now
                    self._show(run, progress)
                if fatal is not None:
                    yield _Fatal(fatal)
                    return
                if run.on_error != "raise":
                    yield from failures
                yield from batches
                if finished and not run.done and not run.failures:
                    break
        finally:
            if not run.complete:
                self._cancel(run)
            with self._lock:
                if run in self._runs:
                    self._runs.remove(run)
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
        self._wake()
        deadline = time.monotonic() + 3.0
        with run.cond:
            while run.in_flight and time.monotonic() < deadline and self._manager_alive():
                run.cond.wait(0.05)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _manager_alive(self) -> bool:
        return self._manager is not None and self._manager.is_alive()

    def _start_manager(self) -> None:
        with self._lock:
            if self._manager is None or not self._manager.is_alive():
                self._manager = threading.Thread(target=self._manage, name="mpkit-pool-manager", daemon=True)
                self._manager.start()

    # ---- manager thread ----------------------------------------------------------------------
    def _manage(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        return
                    runs = list(self._runs)
                self._reap_cancelled(runs)
                active = [r for r in runs if not r.cancelled and r.fatal is None]
                if any(r.pending or r.in_flight for r in active) and self._init_error is None:
                    self._ensure_workers()
                self._dispatch(active)
                self._update_stats(runs)
                waitables: list = [self._wake_r]
                for w in self._workers.values():
                    waitables += (w.conn, w.process.sentinel)
                for obj in mp_wait(waitables, timeout=self._next_deadline(active)):
                    if obj is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                    else:
                        self._service(obj)
                self._check_timeouts()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self._broken = RuntimeError(f"mpkit's pool manager failed ({type(exc).__name__}: {exc}); "
                                        "this is a bug in mpkit. mpkit.shutdown() resets the pool.")
            self._broken.__cause__ = exc
            for run in list(self._runs):
                with run.cond:
                    run.cond.notify_all()

    def _ensure_workers(self) -> None:
        alive = [w for w in self._workers.values() if not w.stopping]
        for _ in range(self.size - len(alive)):
            self._start_worker()

    def _start_worker(self) -> None:
        wid = next(self._ids)
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        init = None
        if self._init_payload is not None:
            init = cloudpickle.dumps((cloudpickle.loads(self._init_payload), list(sys.path), os.getcwd()))
        process = self._ctx.Process(target=_worker.main, args=(child_conn, wid, init, self.idle_timeout),
                                    name=f"mpkit-worker-{wid}")
        process.start()
        child_conn.close()
        self._workers[wid] = _Worker(wid, process, parent_conn)

    def _dispatch(self, runs: list[Run]) -> None:
        if not runs:
            return
        workers = [w for w in self._workers.values() if not w.stopping]
        progressed = True
        while progressed:
            progressed = False
            for run in runs:
                limit = 1 if run.timeout is not None else PREFETCH
                holders = sum(1 for w in workers if any(c.run is run for c in w.in_flight))
                for w in sorted(workers, key=lambda w: len(w.in_flight)):
                    if len(w.in_flight) >= limit:
                        continue
                    if run.timeout is not None and w.in_flight:
                        continue
                    mine = any(c.run is run for c in w.in_flight)
                    if not mine and holders >= run.max_workers:
                        continue
                    with run.cond:
                        chunk = run.take()
                        if chunk is None:
                            break
                        run.in_flight += 1
                    if not mine:
                        holders += 1
                    self._send(w, chunk)
                    progressed = True

    def _send(self, w: _Worker, chunk) -> None:
        run = chunk.run
        w.in_flight.append(chunk)
        chunk.started = time.monotonic()
        try:
            if run.fn_id not in w.fns:
                w.conn.send_bytes(run.fn_payload)
                w.fns.add(run.fn_id)
            w.conn.send_bytes(pickle.dumps((_worker.RUN, chunk.id, run.fn_id, chunk.payload), _worker.PROTOCOL))
        except OSError:
            pass  # the worker died; its sentinel fires and what it held is handled in _bury

    def _service(self, obj) -> None:
        for w in list(self._workers.values()):
            if obj is w.conn:
                self._read(w)
                return
            if obj == w.process.sentinel:
                self._read(w)
                self._bury(w)
                return

    def _read(self, w: _Worker) -> None:
        try:
            while w.conn.poll():
                self._handle(w, pickle.loads(w.conn.recv_bytes()))
        except (EOFError, OSError):
            pass

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == _worker.OUT:
            self.output.add(w.id, msg[1])
        elif kind == _worker.DONE:
            _, chunk_id, results_bytes, failures, seconds = msg
            chunk = self._pop(w, chunk_id)
            run = chunk.run
            with run.cond:
                run.in_flight -= 1
                if not run.cancelled:
                    run.chunk_done(chunk, results_bytes, failures, seconds, w.id)
                run.cond.notify_all()
            if w.in_flight:
                w.in_flight[0].started = time.monotonic()
        elif kind in (_worker.UNDECODABLE, _worker.FN_ERROR):
            _, chunk_id, text, frames = msg
            chunk = self._pop(w, chunk_id)
            run = chunk.run
            with run.cond:
                run.in_flight -= 1
                if run.cancelled:
                    pass
                elif kind == _worker.UNDECODABLE:
                    run.undecodable(chunk, text)
                else:
                    err = RuntimeError(
                        f"the function {run.fn_name} could not be loaded in worker {w.id}: {text}. "
                        "Cause: it refers to a module the worker cannot import. Fix: make the module "
                        "importable there (install it, or put it on sys.path before the call), or "
                        "define the function in the notebook or with %%mp_pool.")
                    err.__cause__ = RemoteTraceback(f"loading {run.fn_name} in worker {w.id}", frames, text)
                    run.set_fatal(err)
                run.cond.notify_all()
            if w.in_flight:
                w.in_flight[0].started = time.monotonic()
        elif kind == _worker.INIT_ERROR:
            _, text, frames = msg
            err = WorkerInitError(f"init={_short_repr(self.init)} failed in a new worker, so no item can "
                                  f"run: {text}. Fix the init function and call again.")
            err.__cause__ = RemoteTraceback(f"init in worker {w.id}", frames, text)
            self._init_error = err
            for run in list(self._runs):
                with run.cond:
                    run.set_fatal(err)

    def _pop(self, w: _Worker, chunk_id: int):
        chunk = w.in_flight.popleft()
        assert chunk.id == chunk_id, "worker answered out of order"
        return chunk

    def _bury(self, w: _Worker) -> None:
        """A worker process ended: account for every chunk it held."""
        w.process.join(timeout=1)
        exitcode = w.process.exitcode
        del self._workers[w.id]
        w.conn.close()
        chunks = list(w.in_flight)
        for position, chunk in enumerate(chunks):
            run = chunk.run
            with run.cond:
                run.in_flight -= 1
                if run.cancelled:
                    pass
                elif position > 0 or w.stopping and w.timed_out is None or exitcode == _worker.CLEAN_EXIT \
                        or exitcode == _worker.INIT_FAILED_EXIT:
                    run.requeue(chunk)           # never started, or not its fault
                elif w.timed_out is chunk:
                    run.timed_out(chunk)
                else:
                    run.crashed(chunk, exitcode, w.pid)
                run.cond.notify_all()

    def _reap_cancelled(self, runs: list[Run]) -> None:
        for run in runs:
            if not (run.cancelled or run.fatal is not None):
                continue
            for w in self._workers.values():
                if not w.stopping and any(c.run is run for c in w.in_flight):
                    w.stopping = True
                    w.process.kill()

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if w.in_flight and not w.stopping:
                chunk = w.in_flight[0]
                limit = chunk.run.timeout
                if limit is not None and now - chunk.started > limit:
                    w.stopping = True
                    w.timed_out = chunk
                    w.process.kill()

    def _next_deadline(self, runs: list[Run]) -> float | None:
        timeouts = [r.timeout for r in runs if r.timeout is not None]
        if not timeouts:
            return None if not runs else 1.0
        return min(0.05, min(timeouts) / 4)

    def _update_stats(self, runs: list[Run]) -> None:
        alive = len(self._workers)
        for run in runs:
            run.pool_workers = alive
            run.busy_workers = sum(1 for w in self._workers.values() if any(c.run is run for c in w.in_flight))


_SKIPPED = object()


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
    if not ordered:
        return ResultList([v for _, values in done for v in values], failures)
    size = max((indices[-1] + 1 for indices, _ in done if len(indices)), default=0)
    out: list = [_SKIPPED] * size
    for indices, values in done:
        if isinstance(indices, range):
            out[indices.start:indices.stop] = values
        else:
            for i, v in zip(indices, values):
                out[i] = v
    if sum(len(values) for _, values in done) != size:
        out = [v for v in out if v is not _SKIPPED]
    return ResultList(out, failures)


def _interrupted(run: Run, done, failures) -> MapInterrupted:
    finished = {i for indices, _ in done for i in indices} | {f.index for f in failures}
    pending = [i for i in range(run.submitted) if i not in finished]
    return MapInterrupted(_assemble(done, failures, run.ordered), pending, run.total)


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_live_pools):
        pool.shutdown(wait=False)
