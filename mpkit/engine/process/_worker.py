"""The worker process: a loop that runs chunks of items and sends back their results.

    notebook process (pool manager thread)          worker process
    ──────────────────────────────────────          ───────────────────────────────────────────
    ("context", sys.path, cwd, environ) ──pipe──►   receiver thread ─► inbox ─► main loop:
    ("fn", fn_id, payload) / ("forget", fn_id) ──►                      unpickle, call fn per
    ("run", chunk_id, fn_id, items, batch) ─────►                       item, catch exceptions
    ("cancel", chunk ids) ──► the receiver notes them: such a chunk is skipped, or cut short
                              between two items (its "done" says how far it got)
    ◄──pipe── ("out", parts, dropped lines, dropped chars)   output thread: every OUTPUT_INTERVAL,
              and before a result; fds 1 and 2 (os.write, subprocesses) feed it too (_capture)
    ◄──pipe── ("part", chunk_id, offset, results, failures, seconds)   every PART_SECONDS of work
    ◄──pipe── ("done", chunk_id, offset, results, failures, seconds)   the rest, at the chunk's end
              slot (shared memory): (chunk id, item running now) ──► read by the manager after a death
    large buffers of "run" items and of "part"/"done" results: a memfd segment whose fd follows
    its message on the same socket (``_wire``), mapped by the receiver; every other message is
    a plain pickle

One duplex pipe per worker, so the manager always knows which items a worker holds: when the
process dies, exactly those are retried or reported. Results come back while a chunk runs, and the
worker notes in its shared ``slot`` which item it is running, so after a crash the manager knows
which item was running (the only one blamed), which ones finished (their results kept, or for the
last ``PART_SECONDS`` re-run) and which never started. The manager decides which functions a
worker keeps (``forget``), so the two never disagree. The receiver thread reads ahead into an
inbox so the manager never blocks writing to a busy worker, and it doubles as a watchdog: EOF on
the pipe means the notebook process is gone (killed, OOM), and the worker exits at once instead of
living on as an orphan. SIGINT is ignored here, and the worker leads a process group of its own
(``_proctree``), so a terminal's Ctrl-C reaches neither it nor what its tasks start: the notebook
decides what an interrupt stops, and the pool kills a worker with its whole group.
"""
from __future__ import annotations

import io
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback

from .. import _serialize
from . import _capture, _proctree, _wire
from .._errors import _PACKAGE_DIR, ExceptionRecord, Reborn, unpicklable_result
from .._item import call_batch

# Message kinds, parent -> worker.
CONTEXT, FN, FORGET, RUN, STOP, CANCEL = "context", "fn", "forget", "run", "stop", "cancel"
# Message kinds, worker -> parent.
READY, OUT, PART, DONE, FN_ERROR, UNDECODABLE, INIT_ERROR, BYE = (
    "ready", "out", "part", "done", "fn_error", "undecodable", "init_error", "bye")

#: How often buffered print() output is sent to the notebook. Short enough to feel live, long
#: enough that a chatty worker costs a few messages a second, not one per print.
OUTPUT_INTERVAL = 0.1
#: Output kept per interval before lines are dropped (and counted): a worker printing in a tight
#: loop must not grow memory without bound while the notebook catches up.
OUTPUT_BUFFER_LIMIT = 1 << 20
#: Results of a chunk are sent back at least this often while it runs: what a crash can cost
#: again (items that finished but whose results were not sent yet) is at most this much work,
#: while a chunk of 20 ms (``_chunking``) still comes back as one message.
PART_SECONDS = 0.05
#: Clock reads per PART_SECONDS while a chunk runs (a part goes out at most 1/CLOCK_READS late).
CLOCK_READS = 8
#: Slot values: the item running now is ``slot[1] >= 0``; sending results from offset k is -1-k.
SLOT_CHUNK, SLOT_ITEM = 0, 1
#: ``slot[SLOT_CHUNK]`` while a function is being unpickled: a death then is the function's fault.
LOADING = -2
#: Exit code of a worker that leaves on its own. A task may exit with any code too (os._exit(0)),
#: so the code proves nothing: a worker that leaves on purpose says BYE first, and only then is
#: nothing it held blamed.
CLEAN_EXIT = 0
INIT_FAILED_EXIT = 3
#: Exit code of a worker that could not take a message (no memory to map or unpickle it).
LOST_EXIT = 4

PROTOCOL = pickle.HIGHEST_PROTOCOL


dumps = _serialize.dumps


class _Sender:
    """Serialises sends from the main loop and the output thread onto the one pipe."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            self._conn.send_bytes(data)

    def send_message(self, msg: tuple) -> None:
        """A message whose large buffers go through shared memory (``_wire``): the frame and its
        fd leave under the lock, so the output thread cannot come between them."""
        with self._lock:
            _wire.send(self._conn, msg)


class _CapturedStream(io.TextIOBase):
    """sys.stdout / sys.stderr in a worker: text is buffered and forwarded to the notebook."""

    def __init__(self, name: str, relay: "_OutputRelay"):
        self.name = name
        self._relay = relay

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._relay.add(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def encoding(self) -> str:
        return "utf-8"


class _OutputRelay:
    """Buffers a worker's output; past OUTPUT_BUFFER_LIMIT in one interval it drops text until
    the next flush and counts the lines and characters, which the notebook side reports with its
    own cuts."""

    def __init__(self, sender: _Sender):
        self._sender = sender
        self._lock = threading.Lock()
        self._parts: list[tuple[str, str]] = []
        self._size = 0
        self._dropping = False
        self._dropped = 0        # whole lines dropped in this interval
        self._dropped_tail = False  # and a line begun but not ended
        self._dropped_chars = 0  # the size of what was dropped: a huge line is one "line"
        self.before_flush = None  # drains the captured file descriptors (_capture)

    def add(self, stream: str, text: str) -> None:
        with self._lock:
            if self._dropping or self._size + len(text) > OUTPUT_BUFFER_LIMIT:
                if not self._dropping and self._parts and not self._parts[-1][1].endswith("\n"):
                    self._parts.append((self._parts[-1][0], "\n"))  # end the line cut short
                self._dropping = True
                self._dropped_chars += len(text)
                self._dropped += text.count("\n")
                self._dropped_tail = not text.endswith("\n")
                return
            self._parts.append((stream, text))
            self._size += len(text)

    def flush(self) -> None:
        if self.before_flush is not None:
            self.before_flush()
        with self._lock:
            parts, dropped, chars = self._parts, self._dropped + self._dropped_tail, self._dropped_chars
            self._parts, self._size, self._dropped, self._dropped_tail = [], 0, 0, False
            self._dropping, self._dropped_chars = False, 0
        if parts or dropped:
            self._sender.send(pickle.dumps((OUT, parts, dropped, chars), PROTOCOL))

    def run_forever(self) -> None:
        while True:
            time.sleep(OUTPUT_INTERVAL)
            try:
                self.flush()
            except OSError:
                os._exit(CLEAN_EXIT)  # the notebook process is gone


#: Chunk ids noted as cancelled that a worker keeps at most: an id whose chunk had ended when its
#: "cancel" came stays noted; a few per cancelled map, so the bound is only a backstop.
CANCELLED_KEPT = 1024


def _receive_forever(conn, inbox: queue.SimpleQueue, cancelled: set[int]) -> None:
    while True:
        try:
            msg = _wire.receive(conn)  # with its shared memory, taken right after the frame
        except _wire.ReceiveError:
            os._exit(LOST_EXIT)  # a chunk that cannot be taken: the manager accounts for it as a death
        except (EOFError, OSError):
            os._exit(CLEAN_EXIT)  # the notebook process is gone: never outlive it
        except BaseException:  # no memory for the message: a silent receiver would hang the worker
            os._exit(LOST_EXIT)
        if msg[0] == CANCEL:  # noted at once, even while the main loop runs a chunk
            if len(cancelled) > CANCELLED_KEPT:
                cancelled.clear()
            cancelled.update(msg[1])
            continue
        inbox.put(msg)


def _in_mpkit(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR)


def _frames(tb) -> list[tuple[str, int, str, str | None]]:
    return [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(tb)]


#: Exceptions sent back for one failure: the chain (``raise X from err`` nests one per link) and
#: the members of exception groups. Real chains are a few links long; the bound keeps a runaway
#: chain or a group of thousands from growing the message without end.
MAX_CHAIN = 32


def _describe_exception(exc: BaseException, skip_frames: int = 1, whole: bool = False):
    """(pickled ExceptionRecord, 'Type: message' text, frames) for sending to the parent.

    The record holds the chain too: each ``__cause__`` and ``__context__`` with its own frames,
    pickled apart, so a link that cannot cross (a lock inside) costs only that link its type.
    mpkit's own frames before the user's are left out, unless ``whole``: a function that could not
    be loaded keeps them, since they tell the parent whether a stage object failed to build.
    """
    memo: dict[int, ExceptionRecord | None] = {}
    record = _record(exc, skip_frames, memo, whole)
    return pickle.dumps(record, PROTOCOL), record.text, record.frames


def _exception_bytes(exc: BaseException) -> bytes | None:
    """The exception's pickle, checked to unpickle here; an exception whose ``__init__`` takes other
    arguments than its ``args`` (``MyError(path, line)`` with one message) pickles but cannot be
    rebuilt, so it goes as its class, args and attributes, rebuilt without calling ``__init__``,
    and arrives as its own type. None: it cannot cross at all (a lock inside)."""
    for value in (exc, Reborn(exc)):
        try:
            data = dumps(value)
            pickle.loads(data)
            return data
        except BaseException:
            continue
    return None


def _record(exc: BaseException, skip_frames: int, memo: dict, whole: bool = False) -> ExceptionRecord:
    memo[id(exc)] = None  # in progress: a chain that loops back to it ends there
    exc_bytes = _exception_bytes(exc)
    text = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    tb = exc.__traceback__
    for _ in range(skip_frames):  # drop the worker's own frame, keep the user's
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    # and mpkit's frames between it and the user's code (a pipeline stage's call wrapper)
    while not whole and tb is not None and tb.tb_next is not None and _in_mpkit(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next

    def link(other):
        if other is None or len(memo) >= MAX_CHAIN:
            return None
        if id(other) in memo:
            return memo[id(other)]
        return _record(other, 0, memo, whole)

    cause, context = link(exc.__cause__), link(exc.__context__)
    members, message = (), None
    if isinstance(exc, BaseExceptionGroup):  # asyncio.TaskGroup and friends: each member too
        members = tuple(m for m in (link(e) for e in exc.exceptions) if m is not None)
        message = exc.message
    record = ExceptionRecord(exc_bytes, text, _frames(tb), cause, context, exc.__suppress_context__,
                             members, message)
    memo[id(exc)] = record
    return record


def _apply_context(sys_path: list[str], cwd: str, environ: dict[str, str]) -> None:
    """Take the notebook's sys.path, working directory and environment variables exactly as they
    are at this call (removed variables too): a warm worker, or a forkserver worker, would
    otherwise see them as they were when it (or the server) started."""
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    if sys.path != sys_path:
        sys.path[:] = sys_path
    if cwd and os.getcwd() != cwd:
        try:
            os.chdir(cwd)
        except OSError:
            pass


class _ChunkRunner:
    """Runs one chunk, sending its results back in parts (``PART_SECONDS``) and noting in the
    shared slot which item runs now. A chunk the manager cancels (its map ended: an error, an
    interrupt) stops between two items, so the worker stays warm for the next map."""

    def __init__(self, sender: "_Sender", relay: "_OutputRelay", slot, cancelled: set[int]):
        # a memoryview of the shared array: a store costs a third of a ctypes item assignment
        self.sender, self.relay, self.slot = sender, relay, memoryview(slot).cast("B").cast("q")
        self.cancelled = cancelled  # filled by the receiver thread

    def run(self, chunk_id: int, fn, items: list, batch: bool) -> None:
        slot = self.slot
        slot[SLOT_CHUNK] = chunk_id
        if batch:  # a pipeline stage after .batch(): one call for the list, one result per item
            slot[SLOT_ITEM] = 0
            start = time.perf_counter()
            results, failures = call_batch(fn, items, _describe_exception)
            self.cancelled.discard(chunk_id)  # one call: it cannot stop halfway
            self._send(DONE, chunk_id, 0, results, failures, time.perf_counter() - start)
            return
        results, failures = [], []
        cancelled = self.cancelled
        append, clock, count = results.append, time.perf_counter, len(items)
        sent = 0                                  # offset of the first item not sent back yet
        start = last = clock()
        look_at = 0                               # the offset after which the clock is read next
        for offset, item in enumerate(items):
            slot[1] = offset                      # SLOT_ITEM, as a literal: this loop is the hot path
            try:
                append(fn(item))
            except BaseException as exc:  # SystemExit from a task is a task failure, not a worker exit
                append(None)
                failures.append((offset, *_describe_exception(exc)))
            if offset >= look_at:
                # Reading the clock after every item would double the cost of tiny items: read
                # it about CLOCK_READS times per part, from the rate of the chunk so far.
                if cancelled and chunk_id in cancelled:
                    break  # its map is over: the rest is not wanted
                now = clock()
                if now - last >= PART_SECONDS and offset + 1 < count:
                    self._send(PART, chunk_id, sent, results, failures, now - last)
                    results, failures, sent, last = [], [], offset + 1, now
                    append = results.append
                per_second = (offset + 1) / max(now - start, 1e-9)
                look_at = offset + max(1, int(per_second * PART_SECONDS / CLOCK_READS))
        cancelled.discard(chunk_id)
        self._send(DONE, chunk_id, sent, results, failures, clock() - last)

    def _send(self, kind: str, chunk_id: int, offset: int, results, failures, seconds: float) -> None:
        self.slot[SLOT_ITEM] = -1 - offset        # a death from here on: while sending these results
        self.relay.flush()
        self.sender.send_message(_results_message(kind, chunk_id, offset, results, failures, seconds))


def _results_message(kind, chunk_id, offset, results, failures, seconds) -> tuple:
    """A "part" or "done" message; results are pickled apart so the parent can blame a bad one.
    Failure offsets are relative to the chunk."""
    try:
        results_bytes = _serialize.pack(results)
    except BaseException:
        results_bytes = None
    if results_bytes is None:
        # Find the results that cannot be pickled and report them as failures of their items.
        failed = {f[0] for f in failures}
        for position, value in enumerate(results):
            if offset + position in failed:
                continue
            try:
                dumps(value)
            except BaseException as exc:
                results[position] = None
                err = unpicklable_result(value, exc)
                failures.append((offset + position, pickle.dumps(err, PROTOCOL), f"SerializationError: {err}", []))
        failures.sort(key=lambda f: f[0])
        results_bytes = _serialize.pack(results)
    return kind, chunk_id, offset, results_bytes, failures, seconds


def _leave(relay: _OutputRelay, sender: _Sender) -> None:
    """Exit on purpose (idle, or asked to stop), telling the parent first."""
    try:
        relay.flush()
        sender.send(pickle.dumps((BYE,), PROTOCOL))
    finally:
        _proctree.end_descendants()  # what its tasks started leaves with it
        os._exit(CLEAN_EXIT)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent goes (the notebook under spawn,
    the forkserver, which leaves with the notebook, under forkserver). The pipe watchdog needs the
    GIL; this does not, so a task stuck in C code that holds the GIL cannot outlive the notebook."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the pipe watchdog still works
    # A forkserver child inherits the server's "alive" pipe, and the server leaves only when every
    # holder has closed it: let go of it, or a worker and the server would wait for each other.
    from multiprocessing import forkserver

    alive = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive is not None:
        try:
            os.close(alive)
        except OSError:
            pass
        forkserver._forkserver._forkserver_alive_fd = None


def main(conn, worker_id: int, init_payload: bytes | None, context: tuple | None, idle_timeout: float,
         slot) -> None:
    """Entry point of a worker process (the target given to multiprocessing)."""
    _die_with_parent()
    _proctree.lead_group()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the manager thread
    _serialize.become_worker()
    sender = _Sender(conn)
    relay = _OutputRelay(sender)
    sys.stdout = _CapturedStream("stdout", relay)
    sys.stderr = _CapturedStream("stderr", relay)
    relay.before_flush = _capture.Capture(relay.add).drain  # os.write(1, ...), subprocesses
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    cancelled: set[int] = set()  # chunk ids the manager no longer wants (their map ended)
    threading.Thread(target=_receive_forever, args=(conn, inbox, cancelled), daemon=True,
                     name="mpkit-receiver").start()
    threading.Thread(target=relay.run_forever, daemon=True, name="mpkit-output").start()

    if context is not None:
        _apply_context(*context)
    if init_payload is not None:
        try:
            init_fn = _serialize.loads(init_payload)
            init_fn()
        except BaseException as exc:
            relay.flush()
            sender.send(pickle.dumps((INIT_ERROR, *_describe_exception(exc, skip_frames=0)), PROTOCOL))
            os._exit(INIT_FAILED_EXIT)
    relay.flush()
    sender.send(pickle.dumps((READY, os.getpid()), PROTOCOL))

    runner = _ChunkRunner(sender, relay, slot, cancelled)
    functions: dict[str, object] = {}   # kept until the manager says "forget"
    broken: dict[str, tuple] = {}
    while True:
        try:
            msg = inbox.get(timeout=idle_timeout)  # unpickled by the receiver: str, int, bytes, Pickled
        except queue.Empty:
            _leave(relay, sender)
        kind = msg[0]
        if kind == RUN:
            _, chunk_id, fn_id, items_bytes, batch = msg
            if chunk_id in cancelled:  # its map ended before it started: answered, not run
                cancelled.discard(chunk_id)
                del items_bytes, msg
                sender.send_message(_results_message(DONE, chunk_id, 0, [], [], 0.0))
                continue
            fn = functions.get(fn_id)
            if fn is None:
                described = broken.get(fn_id, (None, "the function was never sent to this worker", []))
                sender.send(pickle.dumps((FN_ERROR, chunk_id, *described), PROTOCOL))
                continue
            try:
                items = _serialize.unpack(items_bytes)
            except BaseException as exc:
                _, text, frames = _describe_exception(exc, skip_frames=0)
                sender.send(pickle.dumps((UNDECODABLE, chunk_id, text, frames), PROTOCOL))
                continue
            del items_bytes, msg  # the shared memory goes with the last array that points into it
            runner.run(chunk_id, fn, items, batch)
            del items
        elif kind == FN:
            _, fn_id, payload = msg
            slot[SLOT_CHUNK] = LOADING
            try:
                functions[fn_id] = _serialize.loads(payload)
                broken.pop(fn_id, None)
            except BaseException as exc:
                broken[fn_id] = _describe_exception(exc, skip_frames=0, whole=True)
            slot[SLOT_CHUNK] = -1
        elif kind == FORGET:
            functions.pop(msg[1], None)
            broken.pop(msg[1], None)
        elif kind == CONTEXT:
            _apply_context(*msg[1:])
        elif kind == STOP:
            _leave(relay, sender)

