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
from ..process._worker import _describe_exception, _results_message

# Outcome kinds, task -> notebook (the first element of the returned pickle).
DONE, FN_ERROR, UNDECODABLE, INIT_ERROR, PYTHON = "done", "fn_error", "undecodable", "init_error", "python"
# Event kinds on the pool's topic.
START, OUT = "start", "out"

#: How often a running task sends what it printed. Short enough to feel live; each send is one
#: event through the scheduler, so a chatty task costs a few events a second, not one per print.
OUTPUT_INTERVAL = 0.1
#: Characters of output one task keeps between sends; past it lines are dropped and counted.
OUTPUT_BUFFER_LIMIT = 1 << 20
#: Functions a worker process keeps rebuilt, least recently used dropped first (as the process
#: backend's workers: a session maps a few functions, rarely more).
FN_CACHE_SIZE = 16
PROTOCOL = pickle.HIGHEST_PROTOCOL

_functions: OrderedDict[str, object] = OrderedDict()
_inits: dict[str, bytes] = {}        # plugin name -> init payload (registered by InitPlugin)
_inits_done: dict[str, BaseException | None] = {}
_init_lock = threading.Lock()
_stages: dict[str, object] = {}      # stage id -> its function or built object (``_load_stage``)
_stage_lock = threading.Lock()
_local = threading.local()           # .capture: the _Capture of the task this thread runs


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
        if capture is None:
            return self.original.write(text)
        capture.add(self.name, text)
        return len(text)

    def flush(self) -> None:
        if getattr(_local, "capture", None) is None:
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
              python: tuple[int, int], stage: bool = False, batch: bool = False) -> bytes:
    """Run one chunk in this Dask worker: pickled (output printed at its end, outcome), one bytes.
    ``stage``: the function is a pipeline stage's (kept in ``_stages`` until its pipeline ends);
    ``batch``: the chunk is a micro-batch of one, called once with the list of its items.

    What the task printed last travels with its outcome, not as an event: so it reaches the cell
    before the map returns, never in the next cell's output."""
    if tuple(sys.version_info[:2]) != tuple(python):
        return pickle.dumps((([], 0, 0), (PYTHON, sys.version.split()[0], sys.executable)), PROTOCOL)
    worker = get_worker()
    worker.log_event(topic, [START, worker.get_current_task(), worker.address, os.getpid()])
    _route_output()
    capture = _local.capture = _Capture(worker, topic)
    try:
        outcome = _run(fn_id, fn_bytes, items_bytes, init, stage, batch)
    finally:
        _local.capture = None
    return pickle.dumps((capture.take(), outcome), PROTOCOL)


def _run(fn_id: str, fn_bytes: bytes, items_bytes: bytes, init: str | None, stage: bool = False,
         batch: bool = False) -> tuple:
    """The chunk's outcome: (DONE, results, failures, seconds) or why it could not run."""
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
    results, failures = [], []
    start = time.perf_counter()
    if batch:  # a pipeline stage after .batch(): one call for the list, one result per item
        try:
            results = list(fn(items))
            if len(results) != len(items):
                raise ValueError(f"a batched stage must return one result per item, in order: it got "
                                 f"{len(items)} items and returned {len(results)} results")
        except BaseException as exc:
            described = _describe_exception(exc)
            results, failures = [None] * len(items), [(o, *described) for o in range(len(items))]
        items = ()
    for offset, item in enumerate(items):
        try:
            results.append(fn(item))
        except BaseException as exc:  # SystemExit too: a task failure, not the worker's
            results.append(None)
            failures.append((offset, *_describe_exception(exc)))
    seconds = time.perf_counter() - start
    _, _, _, results_pickled, failures, _ = _results_message(DONE, 0, 0, results, failures, seconds)
    return (DONE, results_pickled, failures, seconds)
