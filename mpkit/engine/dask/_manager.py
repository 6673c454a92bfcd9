"""The Dask backend's manager thread: Run chunks in, one Dask task each, outcomes back into the Run.

    Run.pending ──take()──► client.submit(_task.run_chunk, ..., items bytes)  up to PREFETCH per
                            (a future per chunk, key "mpkit-<fn>-<pool>-<n>")  thread of the run
                            (a pipeline lane's: workers= its lane's, ``lane.place()``)
    inbox (SimpleQueue) ◄── a future's result or error, fetched on the client's event loop
                            as soon as it is done (many at once, never by this thread)
                        ◄── "start" / "out" events of the pool's topic (subscribe_topic)
                        ◄── wake(): pending grew, a run was cancelled
    then per outcome:  done ─► run.chunk_done / fn_error, init_error ─► run.set_fatal
                       KilledWorker (the task's worker died, past Dask's allowed failures)
                          ─► a chunk of many items is split and sent again (run.crashed); a single
                             item is sent again once, and blamed if its worker dies again (_killed)
                       timed_out (the task timed each item and returned at a late one) ─►
                          run.chunk_done for the items before it, run.timed_out for it and the
                          items after it; its "stuck" event ─► the worker is restarted through
                          its nanny (a Dask thread cannot be killed); refused (that worker, still
                          stuck, ran nothing of it) ─► sent again as it was
                       a task past its items' timeouts and LATE_GRACE (its wrapper could not
                          answer: an item holding the GIL) ─► timed out, or split, and restarted
                       the scheduler gone ─► ``broken``: every waiting map ends with that error
                       a pipeline lane's chunk pinned to workers that are all gone, which Dask
                          did not end ─► cancelled and sent again (_check_placement)

Only this thread submits, cancels and reads futures; runs are shared with the calling threads
under ``run.cond`` as the Backend contract (``_backend``) says.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass, field

from distributed import Client
from distributed.client import FutureCancelledError

from .._errors import WorkerInitError, _cause, stage_build_failed
from .._output import OutputRelay
from .._run import Chunk, Run
from . import _task

#: Chunks a run keeps submitted per Dask thread: one running, the others waiting on the worker or
#: the scheduler, so a thread never waits for a round trip between chunks. Two left threads idle
#: for the scheduler's round trips at the end of short chunks: 20,000 x 200 us items reached 69% of
#: the ideal with 2, 91% with 4 (bench_dask). A worker's death sends its chunks again, one by one.
PREFETCH = 4
#: How often the manager looks at the cluster (workers alive, the scheduler still there) when
#: nothing else happens.
POLL = 0.5
#: Seconds a running task of a cancelled map (an error raised, an interrupt) may take to end
#: before its worker is restarted: a chunk is ~20 ms of work, so most end on their own and the
#: worker stays warm; a long item is stopped within a second.
CANCEL_GRACE = 1.0
#: Seconds a task cancelled while it seemed to wait is watched for a late "start" event (it had
#: begun on its worker; the event was still on its way on a loaded machine): one that comes within
#: this gets the task CANCEL_GRACE, then its worker is restarted. Its future's own end (the cancel)
#: comes at once and says nothing of the thread, so the watch outlives it.
UNSEEN_SECONDS = 30.0
#: Seconds to fetch a finished chunk's result. A result held by a worker that died just then
#: cannot come (Dask would try to reach it for its connect timeout, 30 s): past this the chunk is
#: sent again, through no fault of its own. Long enough for a result of hundreds of MB.
FETCH_TIMEOUT = 10.0
#: A function's pickle at least this large (a closure over a big array, a model's weights) is
#: scattered once per map and given to its tasks as a Dask future, so each worker fetches it once;
#: sent with every chunk instead, a 40 MB closure made 200,000 items take 50x as long. Smaller ones
#: go with each task: a future is one more dependency for the scheduler to track.
SCATTER_BYTES = 1 << 20
#: Seconds a lane's chunk whose pinned workers are all gone waits for Dask to end it
#: (KilledWorker, counted as a death) before mpkit sends it again itself. A worker's death reaches
#: the client within milliseconds on loopback; two POLLs leave room on a loaded machine.
ORPHAN_GRACE = 2 * POLL
#: Seconds past its items' timeouts that a task may take to answer before the manager steps in. The
#: task times each item itself and returns at the first late one within milliseconds; it cannot
#: when an item holds the GIL (C code that never releases it) or its worker is wedged. Long enough
#: for a result's trip back on a loaded machine.
LATE_GRACE = 5.0
#: Seconds after mpkit restarts a worker (an item past its timeout, a cancelled map's item) during
#: which a task that dies with that worker is known innocent: sent again whole, no try counted.
RESTART_BLAMELESS = 30.0


class ClusterLost(ConnectionError):
    """The Dask scheduler went away (or the client was closed) while maps ran.

    ``results``: what a ``map`` had received before, a ResultList in input order (an ``imap``
    handed those over already)."""

    keeps_results = True   # BasePool.map sets .results
    results = None


@dataclass(eq=False)
class _Task:
    run: Run
    chunk: Chunk
    future: object
    started: float | None = None
    worker: str | None = None
    dropped: bool = False   # its outcome no longer counts (timed out, cancelled)
    alone: bool = False     # a suspect of a worker death, run with no other chunk of its run
    where: list | None = None  # the workers it is pinned to (a pipeline lane's chunk)
    orphaned: float | None = None  # when its workers were first seen all gone
    key: str = field(default="")


class Manager:
    """Submits the chunks of a Dask pool's runs and records their outcomes."""

    def __init__(self, client: Client, output: OutputRelay, init_name: str | None):
        self.client, self.output, self.init_name = client, output, init_name
        self.broken: BaseException | None = None
        self.runs: list[Run] = []
        self.lock = threading.Lock()
        self.topic = f"mpkit-{uuid.uuid4().hex[:12]}"
        self._keys = itertools.count()
        self._tasks: dict[str, _Task] = {}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._worker_ids: dict[str, int] = {}
        self._shipped: dict[int, object] = {}  # id(run) -> the future of its scattered function
        self.pids: dict[str, int] = {}  # worker address -> its pid, from its tasks' "start" events
        self._stopping: dict[str, tuple[_Task, float]] = {}  # key -> (task of a cancelled run, deadline)
        self._unseen: dict[str, tuple[_Task, float]] = {}  # key -> (a cancelled run's task cancelled
        # before its start was seen, until when a late start still counts: UNSEEN_SECONDS)
        self._suspects: set[tuple[int, int]] = set()  # (run, index) of single items on a worker that died
        self._stuck: dict[str, str] = {}  # key -> address of a task that timed out, until its result is here
        self._restarted: dict[str, float] = {}  # worker address -> when mpkit restarted it (RESTART_BLAMELESS)
        self._closing = False
        self._thread: threading.Thread | None = None
        self.size = self._alive = self.threads()
        self._looked = time.monotonic()
        self._placed: int | None = None  # workers a lane's chunks went to at its last submit or POLL
        #: a pipeline lane's pool (``_lanes.LanePool``): ``place()``, the workers its chunks go to,
        #: asked at each submit, and ``live()``, the workers alive; None for a map, whose chunks go
        #: wherever the scheduler puts them
        self.lane = None
        client.subscribe_topic(self.topic, lambda event: self._inbox.put(("event", event[1])))

    # ---- any thread --------------------------------------------------------------------------
    def threads(self) -> int:
        """Task threads of the cluster's workers now (at least 1: a cluster still starting)."""
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # the scheduler is gone: _check_cluster says so
            return 1
        return max(1, sum(w.get("nthreads", 1) for w in workers.values()))

    def add(self, run: Run) -> None:
        with self.lock:
            self.runs.append(run)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._manage, name="mpkit-dask-manager", daemon=True)
                self._thread.start()
        self.wake()

    def remove(self, run: Run) -> None:
        with self.lock:
            if run in self.runs:
                self.runs.remove(run)
            self._shipped.pop(id(run), None)  # the cluster forgets the function once no task needs it
        self.wake()

    def wake(self) -> None:
        self._inbox.put(("wake",))

    def resize(self, workers: int) -> None:
        self.size = workers
        self.wake()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def worker_id(self, address: str) -> int:
        """A small number for a Dask worker's address, in the order they were first seen (w1, w2...)."""
        with self.lock:
            return self._worker_ids.setdefault(address, len(self._worker_ids) + 1)

    def close(self, wait: bool) -> None:
        with self.lock:
            self._closing = True
            runs = list(self.runs)
        for run in runs:
            run.pool_closed()
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        try:
            self.client.unsubscribe_topic(self.topic)
        except Exception:
            pass

    # ---- manager thread ----------------------------------------------------------------------
    def _manage(self) -> None:
        try:
            while True:
                with self.lock:
                    closing = self._closing
                if closing:
                    self._close_tasks()
                    return
                with self.lock:
                    runs = list(self.runs)
                self._reap_cancelled()
                self._check_cluster(runs)
                self._check_placement()
                self._dispatch([r for r in runs if not r.cancelled and r.fatal is None])
                self._update_stats(runs)
                try:
                    msg = self._inbox.get(timeout=self._next_wait())
                except queue.Empty:
                    msg = None
                while msg is not None:
                    self._handle(msg)
                    try:
                        msg = self._inbox.get_nowait()
                    except queue.Empty:
                        msg = None
                self._check_timeouts()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            if self._cluster_gone():  # the client closed under a running map (submit raised)
                self._lost()
                return
            self.broken = RuntimeError(f"mpkit's Dask manager failed ({type(exc).__name__}: {exc}); "
                                        "this is a bug in mpkit. mpkit.shutdown() resets the pool.")
            self.broken.__cause__ = exc
            for run in list(self.runs):
                with run.cond:
                    run.cond.notify_all()

    def _dispatch(self, runs: list[Run]) -> None:
        threads = self.size
        for run in runs:
            if self.lane is None and run.max_workers < threads:
                # workers=n caps what runs at once: chunks submitted ahead would run on any free
                # thread of the cluster (a lane's are pinned to its n workers, so it may prefetch)
                limit = run.max_workers
            else:
                limit = PREFETCH * min(run.max_workers, threads)
            while True:
                with run.cond:
                    if run.in_flight >= limit or any(t.run is run and t.alone for t in self._tasks.values()):
                        break
                    alone = bool(run.pending) and self._suspect(run, run.pending[0])
                    if alone and run.in_flight:
                        break  # a suspect runs alone: wait until the others are done
                    chunk = run.take()
                    if chunk is None:
                        break
                    run.in_flight += 1
                self._submit(run, chunk, alone)

    def _submit(self, run: Run, chunk: Chunk, alone: bool = False) -> None:
        number = next(self._keys)
        key = f"mpkit-{_key_name(run.fn_name)}-{self.topic[6:]}-{number}"
        items = pickle.dumps(chunk.payload, _task.PROTOCOL)  # its large buffers in band: one bytes
        # A lane's chunks are pinned to its workers, strictly: a loose restriction lets Dask's work
        # stealing move them to any worker (a class stage would then build everywhere). A chunk
        # whose workers all died is sent again by _check_placement. Pinned tasks of equal priority
        # run newest first on a Dask worker (three chunks waiting ran 3, 2, 1): each is given a
        # lower priority than the one before, so a lane runs its chunks in the order it got them
        # (a keyed stage after it sees each key's items in input order), as a local worker does.
        where = self.lane.place() if self.lane is not None else None
        if where is not None:
            self._placed = len(where)
        future = self.client.submit(_task.run_chunk, self.topic, run.fn_id, self._function(run), items, self.init_name,
                                    tuple(sys.version_info[:2]), self.lane is not None, chunk.batch, run.timeout,
                                    key=key,
                                    pure=False, retries=0, workers=where or None, allow_other_workers=False,
                                    priority=-number if where else 0)
        task = _Task(run, chunk, future, key=key, alone=alone, where=where)
        self._tasks[key] = task
        future.add_done_callback(lambda f, key=key: self._fetch(key, f))

    def _function(self, run: Run):
        """The function's pickle as a task argument: the bytes, or a future of them (SCATTER_BYTES)."""
        if len(run.fn_payload) < SCATTER_BYTES:
            return run.fn_payload
        with self.lock:
            shipped = self._shipped.get(id(run))
        if shipped is None:
            shipped = self.client.scatter(run.fn_payload, hash=False)
            with self.lock:
                if run in self.runs:
                    self._shipped[id(run)] = shipped
        return shipped

    def _fetch(self, key: str, future) -> None:
        """A task ended (a thread of Dask's callbacks): fetch its result on the client's event loop,
        without waiting for it, so results of many chunks come back at once, while this thread
        dispatches; the result, or the error, goes to the inbox."""
        async def fetch():
            try:
                (value,) = await asyncio.wait_for(self.client._gather([future]), FETCH_TIMEOUT)
                self._inbox.put(("done", key, value, None))
            except BaseException as exc:  # the task's own error too (KilledWorker...)
                self._inbox.put(("done", key, None, exc))
        try:
            asyncio.run_coroutine_threadsafe(fetch(), self.client.loop.asyncio_loop)
        except Exception as exc:  # the client's loop is closed: the cluster is gone
            self._inbox.put(("done", key, None, exc))

    def _handle(self, msg) -> None:
        if msg[0] == "done":
            self._stopping.pop(msg[1], None)  # a cancelled run's task that ended in its grace
            stuck = self._stuck.pop(msg[1], None)
            if stuck is not None:
                self._restart([stuck])
            task = self._tasks.pop(msg[1], None)
            if task is not None:
                self._outcome(task, *msg[2:])
        elif msg[0] == "event":
            event = msg[1]
            if event[0] == _task.START:
                task = self._tasks.get(event[1])
                self.pids[event[2]] = event[3]
                if task is not None:
                    task.started, task.worker = time.monotonic(), event[2]
                late, _ = self._unseen.pop(event[1], (None, None))
                if late is not None:  # cancelled while waiting, but it had started: it gets the grace
                    late.started, late.worker = time.monotonic(), event[2]
                    self._stopping[late.key] = (late, time.monotonic() + CANCEL_GRACE)
            elif event[0] == _task.END:  # its thread ended it: if cancelled, the worker is kept
                self._unseen.pop(event[1], None)
                self._stopping.pop(event[1], None)
            elif event[0] == _task.STUCK:  # a thread there runs on in a late item: restart it
                # once the task's result is here (it is lost with the worker), or now if it came
                if event[1] in self._tasks or event[1] in self._stopping:
                    self._stuck[event[1]] = event[2]
                else:
                    self._restart([event[2]])
            elif event[0] == _task.OUT:
                _, address, parts, dropped, chars = event
                self.output.add(self.worker_id(address), [tuple(p) for p in parts], dropped, chars)

    def _outcome(self, task: _Task, value: bytes | None, error: BaseException | None) -> None:
        run, chunk = task.run, task.chunk
        if task.dropped:
            return
        data = exc = None
        lost = False
        if error is None:
            data = pickle.loads(value)
        elif isinstance(error, (CancelledError, FutureCancelledError)):
            exc = error
        elif type(error).__name__ == "KilledWorker" or not isinstance(error, (TimeoutError, OSError)):
            exc = error  # a worker death, or the task failed outside mpkit's wrapper
        else:  # the result could not be fetched (its worker just died): send it again
            lost = True
            self._cancel([task])
        # Let go of the future now: an error rebuilt below may keep this frame alive (its
        # traceback), and a future held keeps its result in a Dask worker's memory.
        task.future = error = None
        with run.cond:
            run.in_flight -= 1
            if run.cancelled:
                run.cond.notify_all()
                return
            if lost:
                run.requeue(chunk)
            elif data is not None:
                (parts, dropped, chars), outcome = data
                if task.worker and (parts or dropped):  # before its results: the cell shows it first
                    self.output.add(self.worker_id(task.worker), [tuple(p) for p in parts], dropped, chars)
                self._record(run, chunk, outcome, task.worker)
            elif type(exc).__name__ == "KilledWorker" and self._blameless(task, exc):
                run.requeue(chunk)  # mpkit restarted its worker, for another task: not its fault
            elif type(exc).__name__ == "KilledWorker":
                self._killed(run, chunk, task.alone, getattr(getattr(exc, "last_worker", None), "pid", None))
            elif self._cluster_gone():
                run.requeue(chunk)
                self._lost()
            else:
                err = RuntimeError(f"the Dask task of a chunk of {run.fn_name} failed outside mpkit's "
                                   f"wrapper: {type(exc).__name__}: {exc}. Cause: the worker could not "
                                   "run mpkit's task (see its log). Fix: check that the workers run "
                                   "the notebook's environment (mpkit installed, same packages).")
                err.__cause__ = exc
                run.set_fatal(err)
            run.cond.notify_all()

    def _record(self, run: Run, chunk: Chunk, data: tuple, address: str | None) -> None:
        kind = data[0]
        wid = self.worker_id(address) if address else 0
        if kind == _task.DONE:
            _, results, failures, seconds = data
            run.chunk_done(chunk, 0, results, failures, seconds, wid)
        elif kind == _task.TIMED_OUT:
            _, results, failures, seconds, late = data
            if late:
                run.chunk_done(chunk, 0, results, failures, seconds, wid)
            run.timed_out(chunk, late)
        elif kind == _task.REFUSED:
            run.requeue(chunk)
        elif kind == _task.FN_ERROR:
            run.requeue(chunk)
            run.set_fatal(_fn_error(run, data[1:], address))
        elif kind == _task.INIT_ERROR:
            run.requeue(chunk)
            err = WorkerInitError(f"init= failed in Dask worker {address}: {data[2]}. No item can run "
                                  "there. Fix the init function; the next map runs it again on workers "
                                  "that join.")
            err.__cause__ = _cause(*data[1:], f"(raised by init= in Dask worker {address})")
            run.set_fatal(err)
        elif kind == _task.UNDECODABLE:
            run.undecodable(chunk, data[1])
        elif kind == _task.PYTHON:
            run.requeue(chunk)
            run.set_fatal(RuntimeError(
                f"the Dask worker {address} runs Python {data[1]} ({data[2]}), this notebook Python "
                f"{sys.version.split()[0]}: notebook functions are sent as cloudpickle bytes, which load "
                "only in the same Python minor version. Fix: start the workers from the notebook's "
                "environment."))

    def _killed(self, run: Run, chunk: Chunk, alone: bool, pid: int | None) -> None:
        """The worker holding ``chunk`` died. Which of the tasks it held was running cannot be
        known (a task that finished just before may not have told the scheduler; a "start" event
        sent just before a segfault may never leave), so: a chunk of many items is split into
        single items, sent again without counting a try; a single item becomes a suspect, sent
        again without counting a try but alone (no other chunk of its map in flight), and blamed
        (WorkerDied, counted against retries=) if its worker dies then; its retries run alone
        too. So an item that kills its worker runs once more than retries= says, and never
        takes an innocent neighbour down with it.

        A pipeline's micro-batch is one call on the whole list, as locally, so it is never split
        for a suspicion: sent again whole, alone, and if its worker dies then, it crashed as a
        whole (retries= split it to find the culprit, else every item of it fails)."""
        if chunk.batch and len(chunk.indices) > 1:
            if alone:
                run.crashed(chunk, None, pid, 0)
            else:
                self._suspects.add((id(run), chunk.indices[0]))
                run.requeue(chunk)
            return
        if len(chunk.indices) > 1 or chunk.reported:
            run.crashed(chunk, None, pid, None)
            return
        self._suspects.add((id(run), chunk.indices[0]))  # kept: its retries run alone too
        if alone:
            run.crashed(chunk, None, pid, None)
        else:
            run.requeue(chunk)

    def _blameless(self, task: _Task, exc: BaseException) -> bool:
        """The task died with a worker mpkit restarted on purpose lately (a late item's, whose
        stuck thread made it refuse other chunks since): nothing of it ran, or it is innocent."""
        now = time.monotonic()
        for address, when in list(self._restarted.items()):
            if now - when > RESTART_BLAMELESS:
                del self._restarted[address]
        address = task.worker or getattr(getattr(exc, "last_worker", None), "address", None)
        return address in self._restarted

    def _suspect(self, run: Run, chunk: Chunk) -> bool:
        return (len(chunk.indices) == 1 or chunk.batch) and (id(run), chunk.indices[0]) in self._suspects

    def _reap_cancelled(self) -> None:
        """Tasks of a cancelled run: those waiting are cancelled; those running are given
        CANCEL_GRACE to end, and their workers are restarted past it (a thread cannot be stopped)."""
        cancelled = [t for t in self._tasks.values() if t.run.cancelled and not t.dropped]
        waiting = [t for t in cancelled if t.started is None]
        if waiting:
            self._cancel(waiting)
            # one may be running already, its "start" event still on its way (a loaded machine):
            # cancelling its future does not stop its thread, so it is watched for that event
            until = time.monotonic() + UNSEEN_SECONDS
            self._unseen.update((t.key, (t, until)) for t in waiting)
        now = time.monotonic()
        if self._unseen:
            for key in [k for k, (_, until) in self._unseen.items() if now >= until]:
                del self._unseen[key]  # never started: cancelled before its worker took it
        for task in cancelled:
            if task.started is not None:
                task.dropped = True
                self._tasks.pop(task.key, None)
                self._stopping[task.key] = (task, now + CANCEL_GRACE)
            with task.run.cond:
                task.run.in_flight -= 1
                task.run.cond.notify_all()
        late = [task for task, deadline in self._stopping.values() if now >= deadline]
        if late:
            for task in late:
                self._stopping.pop(task.key, None)
            self._cancel(late)
            self._restart(sorted({t.worker for t in late if t.worker}))

    def _close_tasks(self) -> None:
        """The pool is shut down (a pipeline's lanes when it ends, is interrupted or fails): tasks
        waiting are cancelled; those running get CANCEL_GRACE to end, and their workers are
        restarted past it, as for a cancelled map (a Dask thread cannot be stopped: a pipeline
        interrupted in a long call left its worker running it, and the next run waited for it)."""
        running = {t.key: t for t in self._tasks.values() if t.started is not None}
        running.update((key, task) for key, (task, _) in self._stopping.items())
        self._cancel([t for t in self._tasks.values() if t.started is None])
        deadline = time.monotonic() + CANCEL_GRACE
        while running and time.monotonic() < deadline and not self._cluster_gone():
            try:
                msg = self._inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if msg[0] == "done":
                running.pop(msg[1], None)
        late = list(running.values())
        self._stopping.clear()
        self._cancel(late)
        if not self._cluster_gone():
            self._restart(sorted({t.worker for t in late if t.worker}))

    def _cancel(self, tasks: list[_Task]) -> None:
        for task in tasks:
            task.dropped = True
            self._tasks.pop(task.key, None)
        futures = [t.future for t in tasks if t.future is not None]
        for task in tasks:
            task.future = None
        if not futures or self.client.status in ("closing", "closed"):
            return  # a closed client has nothing to cancel (and its cancel() waits for ever)
        # on the client's event loop, without waiting: this thread never blocks on the scheduler
        try:
            asyncio.run_coroutine_threadsafe(self.client._cancel(futures, force=True),
                                             self.client.loop.asyncio_loop)
        except Exception:  # the client's loop is closed: the cluster is gone, nothing runs there
            pass

    def _check_placement(self) -> None:
        """A lane's chunks pinned to workers that are all gone, and not ended by Dask (a cluster of
        your own reschedules a dead worker's tasks rather than fail them, and would keep them
        waiting for those addresses): cancelled and sent again, to the workers the lane has now.
        One that had started is handled as a death of its worker (``_killed``: split, suspected,
        blamed), so an item that kills every worker it runs on is not sent again forever. Left
        alone for ORPHAN_GRACE first: Dask's own KilledWorker for it may be on its way."""
        if self.lane is None:
            return
        now = time.monotonic()
        orphans = []
        live = None
        for task in list(self._tasks.values()):
            if not task.where or task.dropped or (task.future is not None and task.future.done()):
                continue
            if live is None:
                live = self.lane.live()  # once per pass: one lock, not one per task
            if not live or any(a in live for a in task.where):
                task.orphaned = None
            elif task.orphaned is None:
                task.orphaned = now
            elif now - task.orphaned >= ORPHAN_GRACE:
                orphans.append(task)
        if not orphans:
            return
        self._cancel(orphans)
        for task in orphans:
            run = task.run
            with run.cond:
                run.in_flight -= 1
                if run.cancelled:
                    pass
                elif task.started is not None:
                    self._killed(run, task.chunk, task.alone, self.pids.get(task.worker or ""))
                else:
                    run.requeue(task.chunk)
                run.cond.notify_all()

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        late = [t for t in self._tasks.values() if t.run.timeout is not None and t.started is not None
                and not t.dropped and now - t.started > _time_limit(t)]
        if not late:
            return
        self._cancel(late)
        for task in late:
            run, chunk = task.run, task.chunk
            with run.cond:
                run.in_flight -= 1
                if chunk.batch or len(chunk.indices) - chunk.reported == 1:
                    run.timed_out(chunk, chunk.reported)
                else:  # which of its items ran late cannot be known: each goes again, timed alone
                    run.crashed(chunk, None, self.pids.get(task.worker or ""), None)
                run.cond.notify_all()
        self._restart(sorted({t.worker for t in late if t.worker}))

    def _restart(self, addresses: list[str]) -> None:
        """Have the nannies of these Dask workers start them again: a task thread cannot be
        stopped, so the process ends (os._exit, from the worker's event loop) and its nanny starts
        a fresh one. (Client.restart_workers asks the worker to close first, which waits for the
        hung thread; it left a nanny closed for good in tests.) A worker without a nanny is left."""
        if not addresses:
            return
        now = time.monotonic()
        self._restarted.update((address, now) for address in addresses)

        def restart():  # off this thread: the call returns when the worker's connection drops
            try:
                info = self.client.scheduler_info(n_workers=-1).get("workers", {})
                nannied = [a for a in addresses if info.get(a, {}).get("nanny")]
                if nannied:
                    self.client.run(os._exit, 1, workers=nannied, on_error="ignore")
            except Exception:  # the worker or the scheduler is gone already
                pass
        threading.Thread(target=restart, name="mpkit-dask-restart", daemon=True).start()

    def _next_wait(self) -> float:
        now = time.monotonic()
        deadlines = [t.started + _time_limit(t) - now
                     for t in self._tasks.values() if t.started is not None and t.run.timeout is not None]
        deadlines += [deadline - now for _, deadline in self._stopping.values()]
        return max(0.01, min([POLL, *deadlines]))

    def _cluster_gone(self) -> bool:
        """The client lost its scheduler (it may be trying to reconnect: what it held is lost anyway)."""
        return self.client.status != "running"

    def _check_cluster(self, runs: list[Run]) -> None:
        if self.broken is None and self._cluster_gone() and any(r.in_flight or r.pending for r in runs):
            self._lost()

    def _lost(self) -> None:
        """The scheduler is gone: every map waiting on this pool ends with ClusterLost."""
        if self.broken is None and self.client.status in ("closing", "closed"):
            self.broken = ClusterLost(
                "the Dask client or its cluster was closed while mpkit used it (client.close(), "
                "cluster.close(), or the end of their `with` block); the results of a map that arrived "
                "before are in .results of this error (sys.last_value.results in IPython). Fix: close "
                "them after the map, pipeline or service that uses them ends, then run the map again "
                "with an open one.")
        if self.broken is None:
            self.broken = ClusterLost(
                f"the Dask scheduler at {self.client.scheduler.address if self.client.scheduler else '?'} "
                f"went away (client status {self.client.status!r}); the results of a map that arrived "
                "before are in .results of this error (sys.last_value.results in IPython). Fix: restart "
                "the scheduler and its workers, then run the map again (mpkit.shutdown() drops this "
                "connection; the next map makes a new one).")
        self._cancel(list(self._tasks.values()))
        for run in list(self.runs):
            with run.cond:
                run.in_flight = 0
                run.cond.notify_all()

    def _update_stats(self, runs: list[Run]) -> None:
        now = time.monotonic()
        if now - self._looked >= POLL or (self.lane is not None and self._placed is None):
            self._looked = now  # asking the scheduler is a round trip: at most every POLL
            self._alive = self.threads() if not self._cluster_gone() else 0
            if self.lane is not None:
                self._placed = len(self.lane.place())
        alive = min(self._alive, self._placed) if self.lane is not None else self._alive
        for run in runs:
            busy = sum(1 for t in self._tasks.values() if t.run is run and t.started is not None)
            with run.cond:
                run.pool_workers, run.busy_workers = alive, busy


def _fn_error(run: Run, described: tuple, address: str | None) -> BaseException:
    if stage_build_failed(described[2]):  # a pipeline's class stage
        err: BaseException = WorkerInitError(
            f"building the stage object {run.fn_name}() failed in the Dask worker {address}: {described[1]}. "
            "Fix the class's __init__ (or the factory); it runs once in each Dask worker the stage runs on.")
        err.__cause__ = _cause(*described, f"(raised building {run.fn_name} in Dask worker {address})")
        return err
    err = RuntimeError(f"{run.fn_name} could not be loaded in the Dask worker {address}: {described[1]}. "
                       "Cause: it uses a module or class the worker cannot import. Fix: install that "
                       "package in the workers' environment, or define what it needs in the notebook.")
    err.__cause__ = _cause(*described, f"(while loading {run.fn_name} in Dask worker {address})")
    return err


def _time_limit(task: _Task) -> float:
    """Seconds a started task may run before the manager stops it: ``timeout`` per item of its
    chunk, or once for a micro-batch, which is one call on the whole list (as ``timeout`` after
    .batch() says), and LATE_GRACE (the task itself answers at the first late item)."""
    return task.run.timeout * (1 if task.chunk.batch else max(1, len(task.chunk.indices))) + LATE_GRACE


def _key_name(name: str) -> str:
    """A function's name as the dashboard shows it in a task's key (its group before the dashes)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)[:40] or "fn"
