"""The wire of the process backend: one message over a worker's duplex pipe, its large buffers
through shared memory.

    sender (the manager thread; in a worker, under its _Sender lock)    receiver
    ─────────────────────────────────────────────────────────────────   ───────────────────────────
    pickle(msg, protocol 5, buffer_callback): the out-of-band buffers
    of its Pickled parts (_serialize.pack), however nested, set apart
      fewer than SHM_BYTES in all: in band ──── frame: the pickle ───►  pickle.loads(frame)
      else: copied into ONE memfd segment (the small buffers together,
            then each large one at a page)
            frame: "S" + (offset, size) per buffer + pickle ──pipe──►  the frame (worker: recv_bytes();
            the segment's fd ──SCM_RIGHTS with an "F" byte, right after─►  manager: a Reader), then the fd
            the sender closes its fd at once                            mmap: the small buffers as one, each
                                                                        large one on its own (shared, but no
                                                                        one else holds it), fd closed;
                                                                        pickle.loads(frame, buffers=views of
                                                                        the mappings): arrays point into
                                                                        them, zero copy

Leak-free by construction: a memfd segment has no name (nothing in /dev/shm), and the kernel frees
its memory when the last fd or mapping of it goes. The fd in flight belongs to the socket until it
is received, so a SIGKILL of the sender, of the receiver, or of the notebook leaves nothing behind;
a mapping lives as long as the arrays that point into it, then is unmapped (a large result kept
holds its own memory, a small one at most the small buffers of its message). memfd memory counts
against the process's memory limit (cgroup), not against the size of /dev/shm.

A message and its fd travel as a pair on one socket: the two writes are made under the sender's
lock (a worker's main loop and output thread share its pipe; the manager is the only sender on its
side). A worker's receiver thread, which serves one peer, waits for the fd right after the frame
that announces it (``receive``). The manager thread serves every worker, so it never waits on a
socket: its ``Writer`` per worker writes what the socket takes and keeps the rest for when it can
take more, and its ``Reader`` per worker takes whatever bytes and fds have arrived, without
blocking, and keeps a message begun until the rest comes; a worker that dies halfway through a message (even
with a process its task forked holding the socket open, so that no end of file comes) leaves a
message that is dropped with it, and its death is accounted for as any other. Where memfd is
missing (not Linux) or fails (ENOMEM, EMFILE...), the buffers go in band, with a one-time
``MpkitWarning`` that says what it costs.
"""
from __future__ import annotations

import array
import ctypes
import errno
import mmap
import os
import pickle
import socket
import struct
import warnings
import weakref
from collections import deque

from .._errors import MpkitWarning

PROTOCOL = 5
#: Out-of-band bytes in one message from which they go through a memfd segment instead of the
#: pipe. A segment has a fixed cost (memfd_create, pwrite, sendmsg, recvmsg, mmap, munmap: ~40 us
#: in one process, ~0.2-0.3 ms between two on a loaded 2-core VM) and saves the pipe's copies.
#: Measured round trips (an array out, a number back, between two processes): 128 KB 266 us by
#: pipe vs 575 us by segment, 256 KB 819 vs 778 us, 1 MB 3.6 vs 1.6 ms, 4 MB 16.9 vs 5.9 ms.
SHM_BYTES = 256 << 10
#: Alignment of each buffer inside a segment: numpy's SIMD loops want it (a cache line).
_ALIGN = 64
#: Buffers of at least this many bytes are mapped on their own, each at a page of the segment, so
#: that one result kept does not keep its whole chunk's segment (a 1 MB result of a 64-result chunk
#: kept 64 MB). Smaller ones share one mapping at the segment's start: a small result kept holds at
#: most those of its message (a few MB: the chunk caps), and a notebook holding tens of thousands
#: of them stays under the kernel's limit on mappings (vm.max_map_count, 65,530 by default, which
#: 70,000 results of 64 KB mapped one by one exceeded).
OWN_MAPPING_BYTES = 1 << 20
_PAGE = mmap.PAGESIZE
_SHM = b"S"
_TABLE = struct.Struct("<I")
_ENTRY = struct.Struct("<QQ")
_memfd_create = getattr(os, "memfd_create", None)
_populate = getattr(mmap, "MAP_POPULATE", 0)  # fault the pages in at once, not one by one
_MAP_FAILED = ctypes.c_void_p(-1).value
if _memfd_create is not None:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_REMOVE = getattr(mmap, "MADV_REMOVE", None)
_warned = False  # the fallback is said once per process


class ReceiveError(OSError):
    """A message arrived but its shared memory could not be taken (no memory to map it, no fd
    left): the message is lost, the peer is not."""


def send(conn, msg: tuple) -> None:
    """Send ``msg`` on ``conn``; the caller holds the lock shared with other senders on it."""
    frame, fd = _encode(msg)
    try:
        conn.send_bytes(frame)
        if fd is not None:
            _send_fd(conn, fd)
    finally:
        if fd is not None:
            os.close(fd)


def receive(conn):
    """The next message on ``conn``, its shared-memory buffers mapped (EOFError: the peer is gone).
    Waits for it, and for the fd that follows a frame that announces one: for a thread that serves
    one peer (a worker's receiver); the manager, which serves them all, uses :class:`Reader`."""
    data = conn.recv_bytes()
    if data[:1] != _SHM:
        return pickle.loads(data)
    return _with_segment(data, _receive_fd(conn))


def _with_segment(frame, fd: int):
    """The message of an "S" frame, its buffers mapped from the segment ``fd`` (closed here)."""
    try:
        (count,) = _TABLE.unpack_from(frame, 1)
        start = 1 + _TABLE.size
        table = [_ENTRY.unpack_from(frame, start + i * _ENTRY.size) for i in range(count)]
        together = max((offset + nbytes for offset, nbytes in table if nbytes < OWN_MAPPING_BYTES), default=0)
        small = _map(fd, 0, together) if together else None
        buffers = [small[offset:offset + nbytes] if nbytes < OWN_MAPPING_BYTES else _map(fd, offset, nbytes)
                   for offset, nbytes in table]
    finally:
        os.close(fd)
    return pickle.loads(memoryview(frame)[start + count * _ENTRY.size:], buffers=buffers)


#: Bytes a Reader asks the socket for at once (and keeps as its buffer between messages): a few
#: results' messages per system call; a larger frame gets a buffer of its own size, read into in
#: place, and the buffer shrinks back after it.
READ_BYTES = 256 << 10
_HEADER = struct.Struct("!i")   # multiprocessing.Connection's framing: the size, big-endian
_LONG_HEADER = struct.Struct("!Q")  # after a size of -1: frames of 2 GB or more
_FDS_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class Reader:
    """The messages that have arrived on a connection, taken without ever waiting for more.

    The manager thread reads every worker's socket: one read that waits (a frame half written, the
    fd after an "S" frame) would stop the whole pool, and forever if the worker died there while a
    process its task forked keeps the socket open (no end of file comes then). So a Reader takes
    what the socket holds (``MSG_DONTWAIT``) and keeps the rest of a message for the next call; the
    manager calls it when the socket is readable, and drops it with the worker, whose death is
    accounted for as any other (a message cut short is as lost as one never sent).

    An fd travels with the 1-byte "F" message after the frame that announces it. The kernel ends a
    read right after the byte an fd came with, so each fd is known by the stream position just
    past its byte: an "F" byte with no fd there lost its fd (the sender could not send it, or this
    process could not take it), and so its message (:class:`ReceiveError`).
    """

    def __init__(self, conn):
        self._fd = conn.fileno()
        self._buffer = bytearray(READ_BYTES)
        self._start = self._end = 0     # what is not taken yet: _buffer[_start:_end]
        self._dropped = 0               # stream position of _buffer[0]
        self._need = 0                  # size of the frame begun, when the buffer holds less
        self._fds: deque[tuple[int, int | None]] = deque()  # (position past its byte, fd; None: lost)
        self._segment_frame: bytes | None = None  # an "S" frame whose "F" byte has not come yet

    def messages(self):
        """Each message complete now, decoded, in order; returns when the socket holds no more (or
        at its end). Raises :class:`ReceiveError` for one whose shared memory cannot be taken."""
        while True:
            message = self._next()
            if message is _AGAIN:
                continue
            if message is not _INCOMPLETE:
                yield message
                del message  # not held while the next one is read
            elif not self._fill():
                return

    def close(self) -> None:
        """Close the fds received for messages that will never be read."""
        while self._fds:
            fd = self._fds.popleft()[1]
            if fd is not None:
                os.close(fd)

    def _next(self):
        """The next message in the buffer; _INCOMPLETE, or _AGAIN after an "S" frame."""
        buffer, start, available = self._buffer, self._start, self._end - self._start
        if self._segment_frame is not None:
            if not available:
                return _INCOMPLETE
            frame, self._segment_frame = self._segment_frame, None
            self._start = start + 1
            fd = self._fd_at(self._dropped + start + 1)
            if fd is None or buffer[start] != _FD_BYTE:
                if fd is not None:
                    os.close(fd)
                raise ReceiveError(errno.EMFILE, "the shared memory of a message did not come with it (this "
                                   "process or the sender has too many open files)")
            return _with_segment(frame, fd)
        if available < _HEADER.size:
            return _INCOMPLETE
        (size,) = _HEADER.unpack_from(buffer, start)
        head = _HEADER.size
        if size == -1:
            if available < head + _LONG_HEADER.size:
                return _INCOMPLETE
            (size,) = _LONG_HEADER.unpack_from(buffer, start + head)
            head += _LONG_HEADER.size
        if available < head + size:
            self._need = head + size
            return _INCOMPLETE
        self._start = start + head + size
        with memoryview(buffer) as view, view[start + head:start + head + size] as frame:
            if frame[:1] == _SHM:
                self._segment_frame = bytes(frame)  # the buffer is reused before its fd comes
                return _AGAIN
            return pickle.loads(frame)

    def _fill(self) -> bool:
        """Read what the socket holds into the buffer (False: nothing now, or its end)."""
        self._make_room()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self._fd)
        try:
            with memoryview(self._buffer) as view, view[self._end:] as space:
                nbytes, ancillary, flags, _ = sock.recvmsg_into([space], _FDS_SPACE, socket.MSG_DONTWAIT | _CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return False
        finally:
            sock.detach()  # the fd stays the connection's
        self._end += nbytes
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if flags & socket.MSG_CTRUNC or len(fds) > 1:  # one fd per read: more is no message of ours
            for fd in fds:
                os.close(fd)
            self._fds.append((self._dropped + self._end, None))
        elif fds:
            self._fds.append((self._dropped + self._end, fds[0]))
        return nbytes > 0

    def _make_room(self) -> None:
        """Move what is not taken to the buffer's start, in a buffer large enough for the frame
        begun (back to READ_BYTES once a larger one is taken)."""
        rest = self._end - self._start
        size = max(READ_BYTES, self._need, rest + 1)
        self._dropped += self._start
        if size != len(self._buffer) and (size > len(self._buffer) or not rest):
            grown = bytearray(size)  # zeroed lazily by the kernel: a large frame costs one copy, into it
            grown[:rest] = self._buffer[self._start:self._end]
            self._buffer = grown
        elif self._start:
            self._buffer[:rest] = self._buffer[self._start:self._end]
        self._start, self._end, self._need = 0, rest, 0

    def _fd_at(self, position: int) -> int | None:
        """The fd that came with the byte just before ``position`` (None: none did)."""
        while self._fds and self._fds[0][0] < position:  # came with no "F" byte: not a message's
            fd = self._fds.popleft()[1]
            if fd is not None:
                os.close(fd)
        if self._fds and self._fds[0][0] == position:
            return self._fds.popleft()[1]
        return None


class Writer:
    """Messages to a peer, written as far as its socket takes them now; the rest waits, in order,
    for :meth:`flush` (when the socket can take more: ``pending`` says to wait for that).

    The manager's side of :func:`send`, for the same reason as :class:`Reader`: a worker that does
    not read (dead, while a process its task forked keeps the socket open; or a task holding the
    GIL) must not stop the thread that serves every worker on a message larger than the socket's
    buffer. The framing is ``multiprocessing.Connection``'s, which the worker reads.
    """

    def __init__(self, conn):
        self._fd = conn.fileno()
        self._queue: deque[tuple[memoryview, int | None]] = deque()  # (bytes to write, fd to pass with them)

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def send(self, msg: tuple) -> None:
        """``msg`` as :func:`send` writes it; OSError: the peer is gone."""
        frame, fd = _encode(msg)
        self.send_bytes(frame, fd)

    def send_bytes(self, data: bytes, fd: int | None = None) -> None:
        """A frame (and the fd to pass after it, owned from now on); OSError: the peer is gone."""
        size = len(data)
        header = _HEADER.pack(size) if size <= 0x7fffffff else _HEADER.pack(-1) + _LONG_HEADER.pack(size)
        if size < _SMALL_FRAME:
            self._queue.append((memoryview(header + data), None))  # one write
        else:
            self._queue += ((memoryview(header), None), (memoryview(data), None))
        if fd is not None:
            self._queue.append((memoryview(b"F"), fd))
        self.flush()

    def flush(self) -> None:
        """Write what the socket takes now; OSError: the peer is gone."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self._fd)
        try:
            while self._queue:
                data, fd = self._queue[0]
                try:
                    if fd is None:
                        written = sock.send(data, socket.MSG_DONTWAIT)
                    else:
                        written = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                         array.array("i", [fd]))], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if fd is None or exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                        raise  # the peer is gone
                    # the fd cannot go (too many in flight, no memory): the byte goes alone, and
                    # the receiver learns that its message is lost
                    self._queue[0] = (data, None)
                    os.close(fd)
                    continue
                if written == len(data):
                    self._queue.popleft()
                    if fd is not None:
                        os.close(fd)
                else:
                    self._queue[0] = (data[written:], fd)
        finally:
            sock.detach()  # the fd stays the connection's

    def close(self) -> None:
        """Close the fds of messages that will never be sent."""
        while self._queue:
            fd = self._queue.popleft()[1]
            if fd is not None:
                os.close(fd)


#: Frames smaller than this go out with their header in one write (a copy costs less than a call).
_SMALL_FRAME = 16 << 10


_INCOMPLETE, _AGAIN = object(), object()
_FD_BYTE = ord("F")


def _encode(msg: tuple) -> tuple[bytes, int | None]:
    """The frame for ``msg`` and the fd of its shared-memory segment (None: all in band)."""
    buffers: list[memoryview] = []

    def set_apart(buffer: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buffer.raw())
        except BufferError:  # not contiguous: copied in band
            return True
        return False

    data = pickle.dumps(msg, PROTOCOL, buffer_callback=set_apart)
    if not buffers:  # the usual small message: no buffer in it, nothing set apart
        return data, None
    nbytes = sum(buffer.nbytes for buffer in buffers)
    if nbytes < SHM_BYTES or _memfd_create is None:
        if nbytes >= SHM_BYTES:
            _fall_back(f"os.memfd_create does not exist on this platform ({os.name})", nbytes)
        return pickle.dumps(msg, PROTOCOL), None  # again, in band: copying them costs less here
    try:
        fd, table = _segment(buffers)
    except OSError as exc:
        _fall_back(f"{type(exc).__name__}: {exc}", nbytes)
        return pickle.dumps(msg, PROTOCOL), None
    head = _SHM + _TABLE.pack(len(table)) + b"".join(_ENTRY.pack(*entry) for entry in table)
    return head + data, fd


def _segment(buffers: list[memoryview]) -> tuple[int, list[tuple[int, int]]]:
    """A memfd holding ``buffers`` at aligned offsets, and (offset, size) of each: those under
    OWN_MAPPING_BYTES first, together, then each larger one at a page of its own."""
    table: list = [None] * len(buffers)
    size = 0
    for own, align in ((False, _ALIGN), (True, _PAGE)):
        for i, buffer in enumerate(buffers):
            if (buffer.nbytes >= OWN_MAPPING_BYTES) == own:
                size = -(-size // align) * align
                table[i] = (size, buffer.nbytes)
                size += buffer.nbytes
    fd = _memfd_create("mpkit", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        for (offset, nbytes), buffer in zip(table, buffers):
            written = 0
            while written < nbytes:
                written += os.pwrite(fd, buffer[written:], offset + written)
    except BaseException:
        os.close(fd)
        raise
    return fd, table


def _map(fd: int, offset: int, size: int) -> memoryview:
    """``size`` bytes of the segment from ``offset`` (0 or a page boundary) mapped, as a memoryview that
    unmaps them when the last view of it goes. Not ``mmap.mmap``: it keeps a dup of the fd open for
    the mapping's life, so a notebook holding many results would run out of fds.

    Shared, not private: the sender closed its fd and the receiver closes its own once mapped, so
    the mapping is the segment's only holder and the arrays are the receiver's to change. A private
    (copy-on-write) mapping would keep the segment's pages and add a copy of each page written: a
    result changed in place (``r -= r.mean()``) would cost its memory twice, out of sight of RSS.
    (A child the process forks shares these pages, as it would a ``MAP_SHARED`` array of its own.)"""
    if size == 0:
        return memoryview(bytearray())  # nothing to map (mmap refuses a length of 0)
    address = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _populate, fd, offset)
    if address is None or address == _MAP_FAILED:
        number = ctypes.get_errno()
        limit = " (no memory left, or vm.max_map_count mappings reached)" if number == errno.ENOMEM else ""
        raise ReceiveError(number, f"mapping a shared-memory segment of {size} bytes failed: "
                                   f"{os.strerror(number)}{limit}")
    memory = (ctypes.c_ubyte * size).from_address(address)
    # not at exit: an array still alive then would point into unmapped memory (the kernel unmaps
    # everything when the process ends anyway)
    weakref.finalize(memory, _unmap, address, size).atexit = False
    return memoryview(memory).cast("B")


def _unmap(address: int, size: int) -> None:
    """Unmap a part of a segment and free its pages: a segment lives while any part of it is
    mapped, so without MADV_REMOVE (a hole punched in the segment) the memory of results already
    dropped would stay held by one result of the same message that is kept."""
    if _REMOVE is not None:
        _libc.madvise(address, size, _REMOVE)
    _libc.munmap(address, size)

def _send_fd(conn, fd: int) -> None:
    sock = socket.socket(fileno=conn.fileno())
    try:
        try:
            sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                raise  # the peer is gone
            # The frame is out; the fd cannot follow (too many fds in flight, no memory): the byte
            # goes alone, so that the receiver, which waits for it, learns the message is lost.
            sock.sendall(b"F")
            raise
    finally:
        sock.detach()  # the fd stays the connection's


def _receive_fd(conn) -> int:
    sock = socket.socket(fileno=conn.fileno())
    try:
        data, ancillary, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(array.array("i").itemsize))
    finally:
        sock.detach()
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not data and not fds:
        raise EOFError("the peer left between a message and its shared memory")
    if flags & socket.MSG_CTRUNC or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ReceiveError(errno.EMFILE, "the shared memory of a message could not be received (this process "
                                    "has too many open files)")
    return fds[0]


def _fall_back(why: str, nbytes: int) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    if _memfd_create is None:
        cause = "This system has no memfd (it is Linux only), so this stays so."
    else:
        cause = ("Cause: the process is at its memory limit (a container's or cgroup's) or out of file "
                 "descriptors (ulimit -n). Each message tries shared memory again.")
    try:
        warnings.warn(
            f"mpkit could not use shared memory for a message of {nbytes / 1e6:.1f} MB of arrays or bytes "
            f"({why}), so large data goes through the worker pipes instead: results stay right, but each "
            f"GB costs about 3 s more (more copies, in the notebook's CPU). {cause} This is said once.",
            MpkitWarning, stacklevel=2)
    except Warning:
        pass  # warnings turned into errors: the manager thread must not fail for a warning
