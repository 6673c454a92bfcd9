"""A worker's file descriptors 1 and 2, captured like its print() output.

print() in a worker goes through ``sys.stdout`` (``_worker._CapturedStream``); text written below
Python (``os.write(1, ...)``, a C library's printf, a ``subprocess`` that inherits the worker's
stdout/stderr) goes to the file descriptors. Both end in the same relay, prefixed and capped:

    task: os.write(1, b"..."), subprocess ─► fd 1/2 = pipe ─► reader thread ─┐
    task: print(...) ─► sys.stdout ──────────────────────────────────────────┴► _OutputRelay
                                                                    (flushed every OUTPUT_INTERVAL)
    before each flush (and so before each result): C stdio buffers flushed, the pipes drained

Draining before a result means that what a task wrote before it returned reaches the notebook
before its result, as with print(). Text is decoded as UTF-8 (bad bytes replaced), incrementally,
so a character split across two reads is kept whole.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import select
import sys
import threading
from typing import Callable

#: Bytes read from a pipe at once: the pipe's own capacity on Linux, so a writer blocks no longer
#: than one read, and a 100 MB write costs ~1,600 reads, not millions.
READ_SIZE = 1 << 16


class _Pipe:
    """One captured file descriptor: the read end of the pipe that replaced it."""

    def __init__(self, fd: int, stream: str, add: Callable[[str, str], None]):
        self.stream, self._add = stream, add
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()   # the reader thread and drain() take turns
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.dup2(write, fd)              # fd now writes into the pipe (inherited by subprocesses)
        os.close(write)
        self.fd = read

    def drain(self) -> None:
        """Hand everything in the pipe now to the relay."""
        with self._lock:
            while True:
                try:
                    data = os.read(self.fd, READ_SIZE)
                except BlockingIOError:
                    return
                if not data:
                    return
                text = self._decoder.decode(data)
                if text:
                    self._add(self.stream, text)

    def run_forever(self) -> None:
        while True:
            try:
                select.select([self.fd], [], [])
                self.drain()
            except OSError:
                return


class Capture:
    """Fds 1 and 2 of this process, read into ``add(stream, text)``."""

    def __init__(self, add: Callable[[str, str], None]):
        self._pipes = [_Pipe(1, "stdout", add), _Pipe(2, "stderr", add)]
        self._fflush = _c_fflush()
        for pipe in self._pipes:
            threading.Thread(target=pipe.run_forever, daemon=True, name=f"mpkit-{pipe.stream}-fd").start()

    def drain(self) -> None:
        """Flush Python's real streams and C stdio buffers (printf), then read what the pipes hold."""
        for stream in (sys.__stdout__, sys.__stderr__):  # code that writes to the real streams
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        if self._fflush is not None:
            self._fflush(None)
        for pipe in self._pipes:
            pipe.drain()


def _c_fflush():
    try:
        fflush = ctypes.CDLL(None).fflush
        fflush.argtypes = [ctypes.c_void_p]
        return fflush
    except (OSError, AttributeError):
        return None
