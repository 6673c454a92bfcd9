"""The manager thread: owns the worker processes and every pipe to them.

Only this thread touches a worker's pipe or process, so what each worker holds (``in_flight``)
is known without locks, and a death is accounted for in one place (``_bury``): the chunk the
worker was running is split, retried or failed; the chunks it had not started go back to
``pending``. Runs (one per map call) are shared with the calling threads under ``run.cond``. The
thread waits only in ``_wait``, for all of them at once, never on one worker's socket: a worker
that stops reading, or dies halfway through a message while a process its task forked holds the
socket open, would stop the whole pool.

    wait(wake socket, worker pipes, process sentinels; pipes with something left to send)
      ├─ wake: a run was added, fed, or cancelled ─► dispatch pending chunks, PREFETCH per worker
      ├─ pipe: "part" / "done" / "out" / "fn_error" / "undecodable" / "init_error" ─► the run, the relay
      │        ("run" out and "part"/"done" back go through ``_wire``: large buffers in shared memory;
      │        read by a ``_wire.Reader``, which takes what arrived and never waits for the rest)
      ├─ pipe can take more: the rest of what its ``_wire.Writer`` could not write at once
      └─ sentinel: a worker ended ─► _bury (its shared slot names the item it was running; the
                                            processes its tasks started end too: _proctree)
    then: tell workers holding chunks of a run that ended (an error, an interrupt) to drop them
    ("cancel": they stop between two items and stay warm); kill workers past a timeout or
    init_timeout, or still in an item of such a run CANCEL_GRACE later, each with its whole
    process tree (Trees.end), and start their replacements at once, so the pool stays warm;
    retire workers past max_tasks_per_child; start workers as the work needs them (the first
    WARM_WORKERS at once, then one per waiting chunk), up to size

Before a chunk, a worker is sent what it lacks: the notebook's context (sys.path, cwd, environment)
when the run's differs from the one it has, and the run's function when it does not hold it. The
manager alone decides which functions a worker keeps (``FN_CACHE_SIZE``, least recently used
first, evicted with a "forget" message), so its view and the worker's never disagree.

A failed start (init raised, or ``MAX_FAILED_STARTS`` workers in a row died before they were ready,
or init ran past ``init_timeout``) fails the maps running then; the next map tries again, so a cause
that went away (a missing file now there) needs no ``mpkit.shutdown()``.
"""
from __future__ import annotations

import itertools
import os
import pickle
import selectors
import signal
import socket
import threading
import time
from collections import OrderedDict, deque

from .. import _serialize
from . import _wire, _worker
from .._errors import WorkerInitError, _cause, _short_repr, describe_exit, stage_build_failed
from .._output import OutputRelay
from ._proctree import Trees
from .._run import Run

#: Chunks a worker holds at once: one running, one waiting in its inbox, so it never waits for
#: the manager between chunks. More would only make the tail of a map less even.
PREFETCH = 2
#: Seconds given to workers to leave on their own at shutdown before they are killed.
STOP_GRACE = 1.0
#: Workers a pool starts as soon as there is work, without waiting for chunks to queue up: as
#: many as CPUs, what CPU-bound work can use; the rest of a bigger pool starts on demand.
WARM_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
#: Workers that may be starting together (started, not yet ready). Starting a worker costs a
#: process's imports in CPU time, so more at once than CPUs only slows each down; it also keeps
#: workers=200 on a laptop from starting 200 processes before the first item runs.
STARTS_AT_ONCE = max(2, WARM_WORKERS)
#: A worker counts as starting this long at most: one whose init= waits on the network must not
#: hold back the others' start.
STARTING_SECONDS = 2.0
#: New workers that may die before they are ready, in a row, before the pool gives up: a crash in
#: init would otherwise restart workers forever.
MAX_FAILED_STARTS = 3
#: Functions a worker keeps unpickled; a warm pool sees a few per session, rarely more. Past it the
#: least recently used is forgotten (and sent again if it comes back).
FN_CACHE_SIZE = 16
#: Default seconds a new worker may spend in ``init`` (and start-up) before it is given up: long
#: enough to load a large model from disk, short enough that a hung init is reported in a session.
INIT_TIMEOUT = 300.0
#: Seconds a worker told to drop the chunks of a map that ended may take to get to the end of the
#: item it runs; past it the worker is killed (with what the item started) and replaced. Most
#: items take milliseconds, so the worker is kept warm; an interrupt still returns within a second.
CANCEL_GRACE = 0.5
#: After a worker could not even be started (a fork server killed by an interrupt while it booted),
#: wait this long before the next try, so that MAX_FAILED_STARTS tries span a real recovery time.
START_BACKOFF = 0.25


class _Worker:
    __slots__ = ("id", "process", "conn", "in_flight", "fns", "context_id", "stopping", "timed_out", "pid",
                 "ready", "left", "slot", "started", "tasks", "spent", "globals_from", "reader", "writer",
                 "dropped", "dropped_at")

    def __init__(self, wid: int, process, conn, slot, context_id: str | None):
        self.id, self.process, self.conn, self.slot = wid, process, conn, slot
        self.reader = _wire.Reader(conn)  # what the worker sent, taken without waiting for the rest
        self.writer = _wire.Writer(conn)  # what is sent to it, written as far as its socket takes it
        self.pid = process.pid
        self.in_flight: deque = deque()
        self.fns: OrderedDict[str, None] = OrderedDict()  # what the worker holds, least recent first
        self.context_id = context_id  # the notebook context it has
        self.globals_from: str | None = None  # the function whose notebook globals it took last
        self.started = time.monotonic()
        self.stopping = False       # killed on purpose: what it held is not to blame
        self.timed_out = None       # the chunk it was killed for
        self.ready = False          # init done: timeouts count from here, not from the start
        self.left = False           # said BYE: it exits on purpose, what it held is not to blame
        self.tasks = 0              # items sent to it, retries included (max_tasks_per_child)
        self.spent = False          # it reached max_tasks_per_child: no more work, replaced
        self.dropped: set[int] = set()  # chunk ids it was told to drop (their results are not wanted)
        self.dropped_at: float | None = None  # when it was first told, for CANCEL_GRACE



class Manager:
    """Starts, feeds, watches and stops the worker processes of one pool."""

    def __init__(self, ctx, size: int, init, idle_timeout: float, output: OutputRelay,
                 init_timeout: float = INIT_TIMEOUT, max_tasks_per_child: int | None = None):
        self.ctx, self.size, self.idle_timeout, self.output = ctx, size, idle_timeout, output
        self.max_tasks_per_child = max_tasks_per_child  # a run's own setting comes first
        self.init = init
        self.init_timeout = init_timeout
        self._init_payload = _serialize.dumps(init) if init is not None else None
        self._context: tuple[bytes, str] | None = None  # (payload, id) of the latest run's context
        self.workers: dict[int, _Worker] = {}
        self.runs: list[Run] = []
        self.lock = threading.Lock()
        self.init_error: BaseException | None = None
        self.broken: BaseException | None = None
        self._ids = itertools.count(1)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failed_starts = 0  # workers in a row that ended before they were ready
        self._next_start = 0.0   # monotonic time before which no worker is started (START_BACKOFF)
        self.trees = Trees()     # each worker's processes, killed with it
        self._to_replace = 0     # workers killed for a timeout or a cancel, not yet replaced

    # ---- any thread ----------------------------------------------------------------------------
    def add(self, run: Run) -> None:
        with self.lock:
            self.runs.append(run)
            self._context = (run.context, run.context_id)
            if self.init_error is not None:  # a new call tries again: the cause may be gone
                self.init_error = None
                self._failed_starts = 0
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._manage, name="mpkit-pool-manager", daemon=True)
                self._thread.start()
        self.wake()

    def remove(self, run: Run) -> None:
        with self.lock:
            if run in self.runs:
                self.runs.remove(run)

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the socket buffer is full (a wake-up is pending anyway) or closed

    def resize(self, workers: int) -> None:
        self.size = workers
        self.wake()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pids(self) -> list[int]:
        return [w.pid for w in list(self.workers.values()) if w.process.is_alive()]

    def close(self, wait: bool) -> None:
        """Stop the thread, then every worker: politely first, killed after STOP_GRACE."""
        # Under spawn a worker dies with the thread that started it (PR_SET_PDEATHSIG): note what
        # its tasks started before that thread ends, so that what left its group is found too.
        self.trees.watch([w.pid for w in list(self.workers.values())], now=True)
        with self.lock:
            self._closing = True
            runs = list(self.runs)
        for run in runs:
            run.pool_closed()
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        workers = list(self.workers.values())
        for w in workers:
            try:
                w.writer.send_bytes(pickle.dumps((_worker.STOP,)))  # after what it has not taken yet
            except OSError:
                pass
        deadline = time.monotonic() + (STOP_GRACE if wait else 0)
        for w in workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for w in workers:
            self.trees.end(w.pid, w.process)  # also what a worker that left on its own left running
            w.process.join(timeout=5)
            w.reader.close()
            w.writer.close()
            w.conn.close()
        self.workers.clear()
        self._wake_r.close()
        self._wake_w.close()

    # ---- manager thread ------------------------------------------------------------------------
    def _manage(self) -> None:
        # Workers start from this thread: under forkserver they inherit its signal mask, so a
        # kernel interrupt sent to the process group cannot kill them while they boot (the worker
        # ignores SIGINT, then unblocks it). Under spawn the mask is reset; see _bury.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            while True:
                with self.lock:
                    if self._closing:
                        return
                    runs = list(self.runs)
                self._reap_cancelled()
                active = [r for r in runs if not r.cancelled and r.fatal is None]
                if self.init_error is not None:  # no worker can start: say so to every new map
                    for run in active:
                        with run.cond:
                            run.set_fatal(self.init_error)
                    active = []
                if any(r.pending or r.in_flight for r in active) and self.init_error is None:
                    self._ensure_workers(active)
                self._replace_killed()
                self._retire_extra()
                self._dispatch(active)
                self._retire_spent()
                self._update_stats(runs)
                for obj, writable in self._wait(self._next_deadline(active)):
                    if obj is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                    elif writable:
                        self._flush(obj)
                    else:
                        self._service(obj)
                self._check_timeouts()
                self._notice_exits()
                self.trees.watch([w.pid for w in self.workers.values() if w.in_flight])
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self.broken = RuntimeError(f"mpkit's pool manager failed ({type(exc).__name__}: {exc}); "
                                        "this is a bug in mpkit. mpkit.shutdown() resets the pool.")
            self.broken.__cause__ = exc
            for run in list(self.runs):
                with run.cond:
                    run.cond.notify_all()

    def _wait(self, timeout: float | None) -> list:
        """(object, writable) pairs ready, within ``timeout``: the wake socket, workers' pipes with
        something to read, their process sentinels, and their pipes that can take more of what
        waits to be sent (``_wire.Writer``): the thread waits for them all, never on one."""
        with selectors.PollSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            for w in self.workers.values():
                write = selectors.EVENT_WRITE if w.writer.pending else 0
                selector.register(w.conn, selectors.EVENT_READ | write, w)
                selector.register(w.process.sentinel, selectors.EVENT_READ)
            ready = []
            for key, events in selector.select(timeout):
                if key.data is not None and events & selectors.EVENT_WRITE:
                    ready.append((key.data, True))
                if events & selectors.EVENT_READ:
                    ready.append((key.fileobj, False))
            return ready

    def _flush(self, w: _Worker) -> None:
        if w.id in self.workers:  # not buried meanwhile
            try:
                w.writer.flush()
            except OSError:
                pass  # the worker died; its sentinel fires and what it held is handled in _bury

    def _retire_extra(self) -> None:
        """After a resize down: idle workers beyond the size are asked to leave."""
        alive = [w for w in self.workers.values() if not w.stopping and not w.left and not w.spent]
        for w in [w for w in alive if not w.in_flight][: max(0, len(alive) - self.size)]:
            w.stopping = True
            try:
                w.writer.send_bytes(pickle.dumps((_worker.STOP,)))
            except OSError:
                pass

    def _retire_spent(self) -> None:
        """Workers that ran max_tasks_per_child items leave once they hold nothing (their
        replacement is already starting: _ensure_workers does not count them)."""
        for w in self.workers.values():
            if self.trees.crowded(w.pid):
                w.spent = True  # it holds its tasks' exited orphans: a fresh process is clean
            if w.spent and not w.in_flight and not w.stopping:
                w.stopping = True
                try:
                    w.writer.send_bytes(pickle.dumps((_worker.STOP,)))
                except OSError:
                    pass

    def _allowance(self, w: _Worker, run: Run) -> int | None:
        """Items ``w`` may still take for ``run`` before it is replaced (None: no limit)."""
        limit = run.max_tasks_per_child if run.max_tasks_per_child is not None else self.max_tasks_per_child
        if limit is None:
            return None
        left = limit - w.tasks
        if left <= 0:
            w.spent = True
        return left

    def _ensure_workers(self, runs: list[Run]) -> None:
        """While there is work: the pool up to WARM_WORKERS at once (a warm pool, as before);
        beyond that, workers as the work needs them: one per chunk that waits and that no idle
        worker can take. Never more than the pool's size, nor STARTS_AT_ONCE starting together."""
        alive = [w for w in self.workers.values() if not w.stopping and not w.spent]
        wanted = 0
        for run in runs:
            holders = sum(1 for w in alive if any(c.run is run for c in w.in_flight))
            wanted += min(len(run.pending), max(0, run.max_workers - holders))
        wanted = max(wanted - sum(1 for w in alive if not w.in_flight), min(self.size, WARM_WORKERS) - len(alive))
        now = time.monotonic()
        starting = sum(1 for w in alive if not w.ready and now - w.started < STARTING_SECONDS)
        for _ in range(min(self.size - len(alive), wanted, STARTS_AT_ONCE - starting)):
            if self.init_error is not None or time.monotonic() < self._next_start:
                return
            self._start_worker()

    def _start_worker(self) -> None:
        wid = next(self._ids)
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        slot = self.ctx.RawArray("q", 2)  # (chunk id, item running): read after a death
        slot[_worker.SLOT_CHUNK] = -1
        context = pickle.loads(self._context[0])[1:] if self._context is not None else None
        process = self.ctx.Process(target=_worker.main, name=f"mpkit-worker-{wid}",
                                   args=(child_conn, wid, self._init_payload, context, self.idle_timeout, slot))
        try:
            process.start()
        except Exception as exc:
            parent_conn.close()
            bootstrapping = "bootstrapping phase" in str(exc)
            self._failed_starts += 1  # e.g. a fork server killed by an interrupt: the next start makes a new one
            self._next_start = time.monotonic() + START_BACKOFF
            if bootstrapping or self._failed_starts >= MAX_FAILED_STARTS:
                hint = ("Cause: this script starts processes while it is being imported. Fix: put the "
                        "script's top-level code under `if __name__ == '__main__':`." if bootstrapping else "")
                self._start_failed(WorkerInitError(
                    f"could not start a worker process: {str(exc).strip()[:200]} {hint}".strip()))
            return
        finally:
            child_conn.close()
        self.workers[wid] = _Worker(wid, process, parent_conn, slot,
                                    self._context[1] if self._context is not None else None)
        self._to_replace = max(0, self._to_replace - 1)  # whoever started it, it takes a killed one's place

    def _start_failed(self, err: BaseException) -> None:
        """No worker can start: fail the maps running now (a new map tries again)."""
        self.init_error = err
        for run in list(self.runs):
            with run.cond:
                run.set_fatal(err)

    def _dispatch(self, runs: list[Run]) -> None:
        if not runs:
            return
        workers = [w for w in self.workers.values() if not w.stopping]
        progressed = True
        while progressed:
            progressed = False
            for run in runs:
                limit = 1 if run.timeout is not None else PREFETCH
                holders = sum(1 for w in workers if any(c.run is run for c in w.in_flight))
                for w in sorted(workers, key=lambda w: len(w.in_flight)):
                    if len(w.in_flight) >= limit or w.spent:
                        continue
                    mine = any(c.run is run for c in w.in_flight)
                    if not mine and holders >= run.max_workers:
                        continue
                    allowance = self._allowance(w, run)
                    if w.spent:
                        continue
                    with run.cond:
                        chunk = run.take(allowance)
                        if chunk is None:
                            break
                        run.in_flight += 1
                    w.tasks += len(chunk.indices)
                    self._allowance(w, run)  # spent now: it gets nothing more
                    if not mine:
                        holders += 1
                    self._send(w, chunk)
                    progressed = True

    def _send(self, w: _Worker, chunk) -> None:
        run = chunk.run
        w.in_flight.append(chunk)
        chunk.started = time.monotonic()
        try:
            if w.context_id != run.context_id:
                w.writer.send_bytes(run.context)
                w.context_id = run.context_id
            # A function with notebook globals is sent again when another one was sent after it:
            # that one may have changed the globals they share, and the notebook's values as this
            # run has them must win where they changed (see _serialize).
            if run.fn_id in w.fns and (not run.fn_globals or w.globals_from == run.fn_id):
                w.fns.move_to_end(run.fn_id)
            else:
                w.writer.send_bytes(run.fn_payload)
                w.fns[run.fn_id] = None
                w.fns.move_to_end(run.fn_id)
                if run.fn_globals:
                    w.globals_from = run.fn_id
                while len(w.fns) > FN_CACHE_SIZE:
                    old, _ = w.fns.popitem(last=False)
                    w.writer.send_bytes(pickle.dumps((_worker.FORGET, old), _worker.PROTOCOL))
            w.writer.send((_worker.RUN, chunk.id, run.fn_id, chunk.payload, chunk.batch))
        except OSError:
            pass  # the worker died; its sentinel fires and what it held is handled in _bury

    def _service(self, obj) -> None:
        for w in list(self.workers.values()):
            if obj is w.conn:
                self._read(w)
                return
            if obj == w.process.sentinel:
                self._read(w)
                self._bury(w)
                return

    def _read(self, w: _Worker) -> None:
        """Handle what the worker's socket holds now; never waits for the rest of a message."""
        try:
            for msg in w.reader.messages():
                self._handle(w, msg)
                del msg  # its results may point into shared memory: held no longer than handled
        except _wire.ReceiveError as exc:
            self._lost(w, exc)
        except OSError:
            pass  # the connection was reset: the worker is gone, its sentinel says so

    def _lost(self, w: _Worker, exc: OSError) -> None:
        """A worker's message came but its shared memory could not be taken: the maps it was
        serving end with the reason (waiting for a result that was lost would hang them)."""
        err = MemoryError(
            f"the results sent by worker {w.id} could not be received: {exc}. Cause: the notebook process "
            "is at its memory limit or out of file descriptors, most likely from holding many large results. "
            "Fix: hold fewer results at once (mpkit.imap and drop each one), or raise the limit "
            "(ulimit -n for files).")
        for chunk in w.in_flight:
            with chunk.run.cond:
                chunk.run.set_fatal(err)
        w.stopping = True
        w.process.kill()  # the process alone, now (its tree is ended in _bury): no fd needed for it

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == _worker.READY:
            w.ready = True
            self._failed_starts = 0
            if w.in_flight:
                w.in_flight[0].started = time.monotonic()
        elif kind == _worker.BYE:
            w.left = True
        elif kind == _worker.OUT:
            self.output.add(w.id, *msg[1:])
        elif kind == _worker.PART:
            _, chunk_id, offset, results_bytes, failures, seconds = msg
            chunk = w.in_flight[0]
            assert chunk.id == chunk_id, "worker answered out of order"
            with chunk.run.cond:
                if not chunk.run.cancelled and chunk_id not in w.dropped:
                    chunk.run.chunk_done(chunk, offset, results_bytes, failures, seconds, w.id)
        elif kind == _worker.DONE:
            _, chunk_id, offset, results_bytes, failures, seconds = msg
            chunk = self._answered(w, chunk_id)
            with chunk.run.cond:
                if not chunk.run.cancelled and chunk_id not in w.dropped:  # a dropped chunk may stop halfway
                    chunk.run.chunk_done(chunk, offset, results_bytes, failures, seconds, w.id)
                chunk.run.cond.notify_all()
        elif kind == _worker.UNDECODABLE:
            _, chunk_id, text, _frames = msg
            chunk = self._answered(w, chunk_id)
            with chunk.run.cond:
                if not chunk.run.cancelled:
                    chunk.run.undecodable(chunk, text)
                chunk.run.cond.notify_all()
        elif kind == _worker.FN_ERROR:
            _, chunk_id, described, text, frames = msg
            chunk = self._answered(w, chunk_id)
            with chunk.run.cond:
                if not chunk.run.cancelled:
                    chunk.run.set_fatal(self._load_error(chunk.run, w, described, text, frames))
                chunk.run.cond.notify_all()
        elif kind == _worker.INIT_ERROR:
            _, described, text, frames = msg
            err = WorkerInitError(f"init={_short_repr(self.init)} failed in a new worker, so no item can "
                                  f"run: {text}. Fix the init function and call again.")
            err.__cause__ = _cause(described, text, frames, f"(raised by init in mpkit worker {w.id})")
            self._start_failed(err)

    def _answered(self, w: _Worker, chunk_id: int):
        """The chunk a worker just answered (its oldest); the next one starts its clock now."""
        chunk = self._pop(w, chunk_id)
        if w.dropped and not any(c.id in w.dropped for c in w.in_flight):
            w.dropped_at = None  # it dropped all it was told to: nothing to kill it for
        with chunk.run.cond:
            chunk.run.in_flight -= 1
        if w.in_flight:
            w.in_flight[0].started = time.monotonic()
        return chunk

    @staticmethod
    def _load_error(run: Run, w: _Worker, described, text: str, frames) -> BaseException:
        """Why a worker could not load a run's function: a stage object that failed to build,
        or a function whose module the worker cannot import."""
        if stage_build_failed(frames):
            err: BaseException = WorkerInitError(
                f"building the stage object {run.fn_name}() failed in worker {w.id}: {text}. "
                "Fix the class's __init__ (or the factory); it runs once in each worker.")
        else:
            err = RuntimeError(
                f"the function {run.fn_name} could not be loaded in worker {w.id}: {text}. "
                "Cause: it refers to a module the worker cannot import. Fix: make the module "
                "importable there (install it, or put it on sys.path before the call), or "
                "define the function in the notebook or with %%mp_pool.")
        err.__cause__ = _cause(described, text, run._frames(frames), f"(raised loading {run.fn_name} in mpkit worker {w.id})")
        return err

    def _pop(self, w: _Worker, chunk_id: int):
        chunk = w.in_flight.popleft()
        assert chunk.id == chunk_id, "worker answered out of order"
        return chunk

    def _bury(self, w: _Worker) -> None:
        """A worker process ended: account for every chunk it held."""
        w.process.join(timeout=1)
        exitcode = w.process.exitcode
        self.trees.end(w.pid)  # what its tasks started dies with it
        del self.workers[w.id]
        w.reader.close()  # with what it holds of a message the worker did not finish
        w.writer.close()  # and what was not sent to it
        w.conn.close()
        interrupted = exitcode == -signal.SIGINT  # a kernel interrupt to the process group (spawn)
        if not w.ready and not w.stopping and not w.left and self.init_error is None and not interrupted:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                self._start_failed(WorkerInitError(
                    f"{self._failed_starts} new workers in a row ended before they were ready "
                    f"(the last: {describe_exit(exitcode)}). Cause: init= crashed the process, or the "
                    "worker could not start at all: a module imported at start-up failed, or a script "
                    "started processes at import time (no `if __name__ == '__main__':` guard). Fix: run "
                    "init in a plain Python process to see the crash, then call again."))
        chunks = list(w.in_flight)
        loading = w.ready and chunks and w.slot[_worker.SLOT_CHUNK] == _worker.LOADING
        for position, chunk in enumerate(chunks):
            run = chunk.run
            with run.cond:
                run.in_flight -= 1
                if run.cancelled:
                    pass
                elif loading and position == 0:  # unpickling the function killed it: no item is to blame
                    run.requeue(chunk)
                    run.set_fatal(WorkerInitError(
                        f"worker {w.id} died while loading the function {run.fn_name} ({describe_exit(exitcode)}), "
                        "before any item ran. Cause: something the function carries (a global it uses, a "
                        "default argument, a closure) kills the process when it is unpickled. Fix: create "
                        "that object inside the function or in init= instead."))
                elif position > 0 or w.left or (w.stopping and w.timed_out is None) or not w.ready:
                    run.requeue(chunk)           # never started, or not its fault
                elif w.timed_out is chunk:
                    run.timed_out(chunk)
                else:
                    run.crashed(chunk, exitcode, w.pid, self._running(w, chunk))
                run.cond.notify_all()

    @staticmethod
    def _running(w: _Worker, chunk) -> int | None:
        """What the dead worker's slot says it was doing with ``chunk`` (see Run.crashed)."""
        if w.slot[_worker.SLOT_CHUNK] != chunk.id:
            return None
        return w.slot[_worker.SLOT_ITEM]

    def _reap_cancelled(self) -> None:
        """Workers holding chunks of runs that ended (an error, an interrupt; the run may be
        removed already) are told to drop them; one still in such an item CANCEL_GRACE later is
        killed with its tree, and replaced (_replace_killed)."""
        now = time.monotonic()
        for w in self.workers.values():
            if w.stopping or not w.in_flight:
                continue
            ended = [c.id for c in w.in_flight if c.run.cancelled or c.run.fatal is not None]
            fresh = [i for i in ended if i not in w.dropped]
            if fresh:
                w.dropped.update(fresh)
                if w.dropped_at is None:
                    w.dropped_at = now
                try:
                    w.writer.send_bytes(pickle.dumps((_worker.CANCEL, fresh), _worker.PROTOCOL))
                except OSError:
                    pass  # the worker died; its sentinel fires and what it held is handled in _bury
            if ended and w.dropped_at is not None and now - w.dropped_at > CANCEL_GRACE:
                self._kill(w)

    def _kill(self, w: _Worker) -> None:
        """End a worker busy with an item nobody waits for any more (or past its timeout), with
        its tree; a new one is started in its place at once."""
        w.stopping = True
        self._to_replace += 1
        self.trees.end(w.pid, w.process)

    def _replace_killed(self) -> None:
        """Start replacements for workers killed on purpose, even when no map runs: the next map
        finds the pool at the size it had (a worker that merely left, idle, is not replaced)."""
        alive = [w for w in self.workers.values() if not w.stopping and not w.spent]
        if len(alive) >= self.size or self.init_error is not None:
            self._to_replace = 0  # full again, or no worker can start (the next map tries again)
        if self._to_replace <= 0:
            return
        now = time.monotonic()
        starting = sum(1 for w in alive if not w.ready and now - w.started < STARTING_SECONDS)
        if starting < STARTS_AT_ONCE and now >= self._next_start:
            self._start_worker()

    def _notice_exits(self) -> None:
        """Bury workers that ended although their sentinel did not fire: under spawn a task's
        forked child holds the sentinel pipe open, and the worker's death would go unnoticed
        until that child ends (it is killed with the worker's group in _bury)."""
        for w in list(self.workers.values()):
            if not w.process.is_alive():
                self._read(w)
                self._bury(w)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if not w.ready and not w.stopping and now - w.started > self.init_timeout:
                w.stopping = True
                self.trees.end(w.pid, w.process)
                what = f"init={_short_repr(self.init)}" if self.init is not None else "starting the worker"
                self._start_failed(WorkerInitError(
                    f"{what} did not finish within init_timeout={self.init_timeout:g} s in worker {w.id}, "
                    "so it was stopped. Cause: init waits for something that does not come (a lock, a "
                    "network resource, input()) or is slower than that. Fix: check init in a plain Python "
                    "process, or raise init_timeout= if it is only slow."))
        for w in self.workers.values():
            if w.in_flight and w.ready and not w.stopping:
                chunk = w.in_flight[0]
                limit = chunk.run.timeout
                if limit is not None and now - chunk.started > limit:
                    w.timed_out = chunk
                    self._kill(w)

    def _next_deadline(self, runs: list[Run]) -> float | None:
        timeouts = [r.timeout for r in runs if r.timeout is not None]
        starting = [w.started + self.init_timeout - time.monotonic()
                    for w in self.workers.values() if not w.ready and not w.stopping]
        deadline = None if not runs else 1.0
        if runs and self._next_start > time.monotonic():
            deadline = min(deadline, self._next_start - time.monotonic() + 0.01)
        if timeouts:
            deadline = min(0.05, min(timeouts) / 4)
        if starting:
            deadline = max(0.01, min(starting + ([deadline] if deadline is not None else [])))
        now = time.monotonic()
        graces = [w.dropped_at + CANCEL_GRACE - now for w in self.workers.values()
                  if w.dropped_at is not None and not w.stopping]
        if self._to_replace > 0:
            graces.append(max(self._next_start - now, STARTING_SECONDS / 4))
        if graces:
            deadline = max(0.01, min(graces + ([deadline] if deadline is not None else [])) + 0.01)
        return deadline

    def _update_stats(self, runs: list[Run]) -> None:
        alive = len(self.workers)
        for run in runs:
            run.pool_workers = alive
            run.busy_workers = sum(1 for w in self.workers.values() if any(c.run is run for c in w.in_flight))
