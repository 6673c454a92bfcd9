"""What runs on a Dask worker: one task per chunk, its items and results as one pickled bytes.

    notebook (manager thread)                              Dask worker process, a task thread
    ─────────────────────────                              ──────────────────────────────────
    client.submit(run_chunk, topic, fn_id, fn_bytes, ─────► init= once per process (InitPlugin
                  items bytes, init name, python,            holds it; the first task runs it)
                  stage, batch)                              fn rebuilt from its cloudpickle bytes
                                                             (kept per fn_id; a pipeline stage's,
                                                             its class built, kept per run until
                                                             forget), called per item, or once
                                                             per chunk for a micro-batch
    subscribe_topic(topic) ◄── log_event: ("start", key, ─── when the task begins (timeouts,
                                          address, pid)      the pids workers() lists)
                           ◄── log_event: ("out", parts) ─── print() of this thread, every
                                                             OUTPUT_INTERVAL and before returning
                           ◄── log_event: ("end", key) ──── the task's thread is done with it
                                                             (a cancelled future says nothing of
                                                             the thread: only this does)
                           ◄── log_event: ("stuck", key, ─── timeout=: the items run in a thread
                                          address)           of their own, timed one by one by
                                                             the task's (_TimedItems); a late one
                                                             ends the task at once: "timed_out"
                                                             with the results before it; the
                                                             worker then refuses chunks until
                                                             the notebook restarts it
    future.result() ◄──── pickle.dumps((what it printed last, (kind, ...))): one bytes

Dask pickles a returned list element by element, and the function argument of ``submit`` by
reference when it can: so the task is this module's function (mpkit must be installed on the
workers, which the pool checks when it connects), while the user's function always travels as
mpkit's own cloudpickle bytes (``_serialize.dumps_code``) and is rebuilt here, never by Dask.

Only what the task thread prints is captured (``sys.stdout``/``sys.stderr`` route by thread): a
worker's own logs and other threads' output go where they always went. File descriptors 1 and 2
are not captured on Dask (they belong to the worker process, shared by every thread).
"""
from __future__ import annotations

import io
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from .. import _serialize
from .._item import call_batch
from ..process._worker import _describe_exception, _results_message

# Outcome kinds, task -> notebook (the first element of the returned pickle).
DONE, FN_ERROR, UNDECODABLE, INIT_ERROR, PYTHON = "done", "fn_error", "undecodable", "init_error", "python"
TIMED_OUT, REFUSED = "timed_out", "refused"
# Event kinds on the pool's topic.
START, OUT, STUCK, END = "start", "out", "stuck", "end"

#: How often a running task sends what it printed. Short enough to feel live; each send is one
#: event through the scheduler, so a chatty task costs a few events a second, not one per print.
OUTPUT_INTERVAL = 0.1
#: Characters of output one task keeps between sends; past it lines are dropped and counted.
OUTPUT_BUFFER_LIMIT = 1 << 20
#: Functions a worker process keeps rebuilt, least recently used dropped first (as the process
#: backend's workers: a session maps a few functions, rarely more).
FN_CACHE_SIZE = 16
PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Seconds a worker whose thread is stuck in a late item refuses mpkit chunks (they go back to the
#: notebook unrun, to be sent elsewhere) while its restart comes: the notebook asks the nanny at
#: once, which takes well under a second. Past this no restart came (the notebook went away, the
#: worker has no nanny): chunks run again beside the stuck thread rather than be refused for ever.
REFUSE_SECONDS = 30.0

_functions: OrderedDict[str, object] = OrderedDict()
_inits: dict[str, bytes] = {}        # plugin name -> init payload (registered by InitPlugin)
_inits_done: dict[str, BaseException | None] = {}
_init_lock = threading.Lock()
_stages: dict[str, object] = {}      # stage id -> its function or built object (``_load_stage``)
_stage_lock = threading.Lock()
_local = threading.local()           # .capture: the _Capture of the task this thread runs
_stuck: list = []                    # (thread, since) of items that ran past their timeout here


class InitPlugin(WorkerPlugin):
    """``init=`` of a Dask pool: Dask gives it to every worker, and to each one that joins later
    (a nanny's replacement too); the first mpkit task in the process runs it, in a task thread,
    so a slow init does not stall the worker's event loop and its prints are captured."""

    idempotent = False

    def __init__(self, name: str, payload: bytes):
        self.name, self.payload = name, payload

    def setup(self, worker) -> None:
        _inits[self.name] = self.payload


class InterruptShield(WorkerPlugin):
    """Jupyter interrupts a kernel with SIGINT to its whole process group, where the worker
    processes of a LocalCluster started in the kernel are too: a Dask worker dies of it (a
    KeyboardInterrupt in its event loop), with whatever it held. Workers in the notebook's
    process group on the notebook's machine ignore SIGINT: the notebook decides what an
    interrupt stops (as the process backend's workers do). Other workers are left as they are."""

    idempotent = True
    name = "mpkit-interrupt-shield"

    def __init__(self, host: str, pgid: int):
        self.host, self.pgid = host, pgid

    def setup(self, worker) -> None:
        try:
            if socket.gethostname() == self.host and os.getpgid(0) == self.pgid:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except (OSError, ValueError):  # not the main thread, or no process groups here
            pass


class _Capture:
    """What one task thread prints, sent to the notebook as events."""

    def __init__(self, worker, topic: str):
        self.worker, self.topic = worker, topic
        self.parts: list[list[str]] = []
        self.size = self.dropped = self.dropped_chars = 0
        self.last = time.monotonic()
        #: its task returned while a late item's thread still runs: what that thread prints now
        #: goes to the worker's own stream (its log), never to a later cell of the notebook
        self.closed = False

    def add(self, stream: str, text: str) -> None:
        if self.size + len(text) > OUTPUT_BUFFER_LIMIT:
            self.dropped += text.count("\n")
            self.dropped_chars += len(text)
        else:
            self.parts.append([stream, text])
            self.size += len(text)
        if time.monotonic() - self.last >= OUTPUT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if self.parts or self.dropped:
            self.worker.log_event(self.topic, [OUT, self.worker.address, *self.take()])

    def take(self) -> tuple[list, int, int]:
        """What was printed since the last send: (parts, lines dropped, characters dropped)."""
        out = (self.parts, self.dropped, self.dropped_chars)
        self.parts, self.size, self.dropped, self.dropped_chars = [], 0, 0, 0
        return out


class _ThreadStream(io.TextIOBase):
    """sys.stdout / sys.stderr of a Dask worker: a task thread's text goes to its capture,
    any other thread's to the stream that was there before."""

    def __init__(self, name: str, original):
        self.name, self.original = name, original

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        capture = getattr(_local, "capture", None)
        if capture is None or capture.closed:
            return self.original.write(text)
        capture.add(self.name, text)
        return len(text)

    def flush(self) -> None:
        capture = getattr(_local, "capture", None)
        if capture is None or capture.closed:
            self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:
        return "utf-8"


def _route_output() -> None:
    with _init_lock:
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _ThreadStream):
                setattr(sys, name, _ThreadStream(name, getattr(sys, name)))


def _load(fn_id: str, fn_bytes: bytes):
    fn = _functions.get(fn_id)
    if fn is None:
        fn = _serialize.loads(fn_bytes)
        _functions[fn_id] = fn
        while len(_functions) > FN_CACHE_SIZE:
            _functions.popitem(last=False)
    else:
        _functions.move_to_end(fn_id)
    return fn


def _load_stage(stage_id: str, fn_bytes: bytes):
    """A pipeline stage's function, or the object its class builds (``_stage.Built``), loaded once
    in this process for the stage's whole run: kept until ``forget`` (not dropped as functions
    are), as a model must not load twice. Tasks of one stage in two threads of a worker wait for
    the one that builds it."""
    fn = _stages.get(stage_id)
    if fn is None:
        with _stage_lock:
            fn = _stages.get(stage_id)
            if fn is None:
                fn = _stages[stage_id] = _serialize.loads(fn_bytes)
    return fn


async def forget(stage_ids: list[str]) -> None:
    """Drop the stages of a pipeline that ended (client.run, on each worker's event loop: a
    coroutine, so that the call need not wait for it)."""
    for stage_id in stage_ids:
        _stages.pop(stage_id, None)


def _run_init(name: str | None) -> BaseException | None:
    """Run the pool's init= in this process once (the first task does, the others wait)."""
    if name is None:
        return None
    with _init_lock:
        if name in _inits_done:
            return _inits_done[name]
        payload = _inits.get(name)
        if payload is None:
            err: BaseException | None = RuntimeError(
                "this Dask worker has no init= of the pool (its worker plugin was not registered here)")
        else:
            try:
                _serialize.loads(payload)()
                err = None
            except BaseException as exc:
                err = exc
        _inits_done[name] = err
        return err


def run_chunk(topic: str, fn_id: str, fn_bytes: bytes, items_bytes: bytes, init: str | None,
              python: tuple[int, int], stage: bool = False, batch: bool = False,
              timeout: float | None = None) -> bytes:
    """Run one chunk in this Dask worker: pickled (output printed at its end, outcome), one bytes.
    ``stage``: the function is a pipeline stage's (kept in ``_stages`` until its pipeline ends);
    ``batch``: the chunk is a micro-batch of one, called once with the list of its items;
    ``timeout``: the seconds each item (or the batch's call) may run (``_TimedItems``).

    What the task printed last travels with its outcome, not as an event: so it reaches the cell
    before the map returns, never in the next cell's output."""
    if tuple(sys.version_info[:2]) != tuple(python):
        return pickle.dumps((([], 0, 0), (PYTHON, sys.version.split()[0], sys.executable)), PROTOCOL)
    worker = get_worker()
    if _refusing(worker):
        return pickle.dumps((([], 0, 0), (REFUSED,)), PROTOCOL)
    worker.log_event(topic, [START, worker.get_current_task(), worker.address, os.getpid()])
    _route_output()
    capture = _local.capture = _Capture(worker, topic)
    try:
        outcome = _run(fn_id, fn_bytes, items_bytes, init, stage, batch, timeout, capture)
    finally:
        _local.capture = None
    if outcome[0] == TIMED_OUT:  # its thread runs on: the notebook restarts this worker
        worker.log_event(topic, [STUCK, worker.get_current_task(), worker.address])
    else:  # its thread is free: a task cancelled as it ran needs no restart
        worker.log_event(topic, [END, worker.get_current_task()])
    return pickle.dumps((capture.take(), outcome), PROTOCOL)


def _refusing(worker) -> bool:
    """A thread of this worker is stuck in a late item, and its nanny will start it again: the
    chunk is not run here (its items would be lost with the process, or run twice)."""
    now = time.monotonic()
    _stuck[:] = [(t, since) for t, since in _stuck if t.is_alive() and now - since < REFUSE_SECONDS]
    return bool(_stuck) and getattr(worker, "nanny", None) is not None


def _run(fn_id: str, fn_bytes: bytes, items_bytes: bytes, init: str | None, stage: bool = False,
         batch: bool = False, timeout: float | None = None, capture: _Capture | None = None) -> tuple:
    """The chunk's outcome: (DONE, results, failures, seconds), (TIMED_OUT, results, failures,
    seconds, offset of the late item), or why it could not run."""
    err = _run_init(init)
    if err is not None:
        return (INIT_ERROR, *_describe_exception(err, skip_frames=0))
    try:
        fn = _load_stage(fn_id, fn_bytes) if stage else _load(fn_id, fn_bytes)
    except BaseException as exc:
        return (FN_ERROR, *_describe_exception(exc, skip_frames=0, whole=True))
    try:
        items = _serialize.unpack(pickle.loads(items_bytes))
    except BaseException as exc:
        _, text, _frames = _describe_exception(exc, skip_frames=0)
        return (UNDECODABLE, text)
    if timeout is not None:
        return _TimedItems(fn, items, batch, capture).outcome(timeout)
    start = time.perf_counter()
    if batch:  # a pipeline stage after .batch(): one call for the list, one result per item
        results, failures = call_batch(fn, items, _describe_exception)
    else:
        results, failures = [], []
        for offset, item in enumerate(items):
            try:
                results.append(fn(item))
            except BaseException as exc:  # SystemExit too: a task failure, not the worker's
                results.append(None)
                failures.append((offset, *_describe_exception(exc)))
    return _done(DONE, results, failures, time.perf_counter() - start)


def _done(kind: str, results: list, failures: list, seconds: float, *rest) -> tuple:
    _, _, _, results_pickled, failures, _ = _results_message(kind, 0, 0, results, failures, seconds)
    return (kind, results_pickled, failures, seconds, *rest)


class _TimedItems:
    """A chunk's items with ``timeout=``: they run in a thread of their own, one after the other,
    while the task's thread times the item running now. When one runs late, the task returns at
    once with what it has: the results of the items before it, the late item's offset, and
    nothing of those after it, which never start here (the notebook sends them again). The late
    item's thread cannot be stopped: the notebook restarts this worker through its nanny.

        task thread: outcome() ──starts──► items thread: for each item, under lock: stop asked?
            waits on done, until the            else offset, since = this item, now; then fn(item)
            running item's since + timeout
            late: under lock stop, and take the results before ``offset``

    Per item this costs a lock and a clock read, not a message: 5,000 trivial items in chunks."""

    def __init__(self, fn, items: list, batch: bool, capture: _Capture | None):
        self.fn, self.items, self.batch, self.capture = fn, items, batch, capture
        self.results: list = []
        self.failures: list = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.offset = 0
        self.started = self.since = time.monotonic()
        self.stopped = self.finished = False
        self.seconds = 0.0

    def outcome(self, timeout: float) -> tuple:
        thread = threading.Thread(target=self._run, name="mpkit-timed-items", daemon=True)
        thread.start()
        while True:
            with self.lock:
                if self.finished:
                    break
                left = self.since + timeout - time.monotonic()
                if left <= 0:
                    self.stopped, late = True, self.offset
                    results = self.results[:late]  # those after it never start: they are not run
                    failures = [f for f in self.failures if f[0] < late]
                    seconds = self.since - self.started  # the items before it: what the sizer learns from
                    break
            self.done.wait(left)
        if not self.stopped:
            return _done(DONE, self.results, self.failures, self.seconds)
        _stuck.append((thread, time.monotonic()))
        if self.capture is not None:
            self.capture.closed = True  # the late item's later prints stay out of the notebook
        return _done(TIMED_OUT, results, failures, seconds, 0 if self.batch else late)

    def _run(self) -> None:
        _local.capture = self.capture
        try:
            if self.batch:
                self.results, self.failures = call_batch(self.fn, self.items, _describe_exception)
            else:
                self._items()
        finally:
            with self.lock:
                self.finished = not self.stopped
                self.seconds = time.monotonic() - self.started
            self.done.set()
            _local.capture = None

    def _items(self) -> None:
        fn, lock, clock = self.fn, self.lock, time.monotonic
        append, failures = self.results.append, self.failures
        for offset, item in enumerate(self.items):
            with lock:
                if self.stopped:
                    return
                self.offset, self.since = offset, clock()
            try:
                append(fn(item))
            except BaseException as exc:  # SystemExit too: a task failure, not the worker's
                append(None)
                failures.append((offset, *_describe_exception(exc)))
