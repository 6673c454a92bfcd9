"""The worker process: a loop that runs chunks of items and sends back their results.

    notebook process (pool manager thread)          worker process
    ──────────────────────────────────────          ───────────────────────────────────────────
    ("fn", fn_id, payload, path, cwd, env)──pipe──► receiver thread ─► inbox ─► main loop:
    ("run", chunk_id, fn_id, items, batch)──pipe──►                     unpickle, call fn per
                                                                        item, catch exceptions
    ◄──pipe── ("out", parts, dropped lines, dropped chars)   output thread: every OUTPUT_INTERVAL,
              and before a result; fds 1 and 2 (os.write, subprocesses) feed it too (_capture)
    ◄──pipe── ("done", chunk_id, results, failures, seconds)

One duplex pipe per worker, so the manager always knows which items a worker holds: when the
process dies, exactly those are retried or reported. The receiver thread reads ahead into an
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

import cloudpickle

from . import _capture, _proctree
from ._errors import SerializationError

# Message kinds, parent -> worker.
FN, RUN, STOP = "fn", "run", "stop"
# Message kinds, worker -> parent.
READY, OUT, DONE, FN_ERROR, UNDECODABLE, INIT_ERROR, BYE = (
    "ready", "out", "done", "fn_error", "undecodable", "init_error", "bye")

#: How often buffered print() output is sent to the notebook. Short enough to feel live, long
#: enough that a chatty worker costs a few messages a second, not one per print.
OUTPUT_INTERVAL = 0.1
#: Output kept per interval before lines are dropped (and counted): a worker printing in a tight
#: loop must not grow memory without bound while the notebook catches up.
OUTPUT_BUFFER_LIMIT = 1 << 20
#: Functions a worker keeps unpickled; a warm pool sees a few per session, rarely more.
FN_CACHE_SIZE = 16
#: Exit code of a worker that leaves on its own. A task may exit with any code too (os._exit(0)),
#: so the code proves nothing: a worker that leaves on purpose says BYE first, and only then is
#: nothing it held blamed.
CLEAN_EXIT = 0
INIT_FAILED_EXIT = 3

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj) -> bytes:
    """Pickle with the fast C pickler; fall back to cloudpickle for lambdas and cell-defined objects."""
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, PROTOCOL)


class _Sender:
    """Serialises sends from the main loop and the output thread onto the one pipe."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            self._conn.send_bytes(data)


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


def _receive_forever(conn, inbox: queue.SimpleQueue) -> None:
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(CLEAN_EXIT)  # the notebook process is gone: never outlive it
        inbox.put(data)


def _frames(tb) -> list[tuple[str, int, str, str | None]]:
    return [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(tb)]


def _describe_exception(exc: BaseException, skip_frames: int = 1):
    """(pickled exception or None, 'Type: message' text, frames) for sending to the parent."""
    try:
        exc_bytes = dumps(exc)
        pickle.loads(exc_bytes)  # some exceptions pickle but cannot be rebuilt (custom __init__)
    except BaseException:
        exc_bytes = None
    text = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    tb = exc.__traceback__
    for _ in range(skip_frames):  # drop the worker's own frame, keep the user's
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return exc_bytes, text, _frames(tb)


def _apply_environment(sys_path: list[str], cwd: str, environ: dict[str, str]) -> None:
    """Take the notebook's sys.path, working directory and environment variables as they are now:
    a forkserver worker would otherwise see them as they were when the server started."""
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    for entry in sys_path:
        if entry not in sys.path:
            sys.path.append(entry)
    if cwd and os.getcwd() != cwd:
        try:
            os.chdir(cwd)
        except OSError:
            pass


def _run_chunk(fn, items, batch: bool = False):
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
            return [None] * len(items), [(o, *described) for o in range(len(items))], time.perf_counter() - start
        return results, failures, time.perf_counter() - start
    for offset, item in enumerate(items):
        try:
            results.append(fn(item))
        except BaseException as exc:  # SystemExit from a task is a task failure, not a worker exit
            results.append(None)
            failures.append((offset, *_describe_exception(exc)))
    return results, failures, time.perf_counter() - start


def _encode_done(chunk_id, results, failures, seconds) -> bytes:
    """The "done" message; results are pickled apart so the parent can blame a bad one."""
    try:
        results_bytes = pickle.dumps(results, PROTOCOL)
    except BaseException:
        results_bytes = None
    if results_bytes is None:
        # Find the results that cannot be pickled and report them as failures of their items.
        failed = {f[0] for f in failures}
        for offset, value in enumerate(results):
            if offset in failed:
                continue
            try:
                dumps(value)
            except BaseException as exc:
                results[offset] = None
                err = SerializationError(
                    f"the result of this item ({type(value).__name__}) could not be pickled to send it "
                    f"back: {type(exc).__name__}: {exc}. Fix: return plain data (numbers, strings, "
                    "lists, dicts, DataFrames), not open files, locks or generators.")
                failures.append((offset, pickle.dumps(err, PROTOCOL), f"SerializationError: {err}", []))
        failures.sort(key=lambda f: f[0])
        results_bytes = dumps(results)
    return pickle.dumps((DONE, chunk_id, results_bytes, failures, seconds), PROTOCOL)


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


def main(conn, worker_id: int, init_payload: bytes | None, idle_timeout: float) -> None:
    """Entry point of a worker process (the target given to multiprocessing)."""
    _die_with_parent()
    _proctree.lead_group()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sender = _Sender(conn)
    relay = _OutputRelay(sender)
    sys.stdout = _CapturedStream("stdout", relay)
    sys.stderr = _CapturedStream("stderr", relay)
    relay.before_flush = _capture.Capture(relay.add).drain  # os.write(1, ...), subprocesses
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_forever, args=(conn, inbox), daemon=True, name="mpkit-receiver").start()
    threading.Thread(target=relay.run_forever, daemon=True, name="mpkit-output").start()

    if init_payload is not None:
        try:
            init_fn, sys_path, cwd, environ = pickle.loads(init_payload)
            _apply_environment(sys_path, cwd, environ)
            init_fn()
        except BaseException as exc:
            relay.flush()
            _, text, frames = _describe_exception(exc, skip_frames=0)
            sender.send(pickle.dumps((INIT_ERROR, text, frames), PROTOCOL))
            os._exit(INIT_FAILED_EXIT)
    relay.flush()
    sender.send(pickle.dumps((READY, os.getpid()), PROTOCOL))

    functions: dict[str, object] = {}
    broken: dict[str, tuple] = {}
    while True:
        try:
            data = inbox.get(timeout=idle_timeout)
        except queue.Empty:
            _leave(relay, sender)
        msg = pickle.loads(data)  # the envelope holds only str, int and bytes: it always loads
        kind = msg[0]
        if kind == RUN:
            _, chunk_id, fn_id, items_bytes, batch = msg
            fn = functions.get(fn_id)
            if fn is None:
                text, frames = broken.get(fn_id, ("the function was never sent to this worker", []))
                sender.send(pickle.dumps((FN_ERROR, chunk_id, text, frames), PROTOCOL))
                continue
            try:
                items = pickle.loads(items_bytes)
            except BaseException as exc:
                _, text, frames = _describe_exception(exc, skip_frames=0)
                sender.send(pickle.dumps((UNDECODABLE, chunk_id, text, frames), PROTOCOL))
                continue
            del items_bytes
            results, failures, seconds = _run_chunk(fn, items, batch)
            del items
            relay.flush()
            sender.send(_encode_done(chunk_id, results, failures, seconds))
        elif kind == FN:
            _, fn_id, payload, sys_path, cwd, environ = msg
            _apply_environment(sys_path, cwd, environ)
            try:
                functions[fn_id] = pickle.loads(payload)
                broken.pop(fn_id, None)
            except BaseException as exc:
                _, text, frames = _describe_exception(exc, skip_frames=0)
                broken[fn_id] = (text, frames)
            while len(functions) > FN_CACHE_SIZE:
                functions.pop(next(iter(functions)))
        elif kind == STOP:
            _leave(relay, sender)



def build(factory):
    """Unpickled in a worker: build a pipeline stage's object there, once (a model loads here)."""
    return factory()
