"""``--share`` values that travel once, through shared memory, instead of once per worker.

    notebook: %%mp_pool ... --share big        worker (each of them)
    ─────────────────────────────────────      ─────────────────────────────────────────────────
    pickle(shared, protocol 5): the pickle     SharedValues unpickled: a name and offsets
    stream, and the raw buffers of numpy       attach the segment ─► pickle.loads(stream,
    arrays (also inside DataFrames) apart         buffers=read-only views of the segment)
    both copied once into one segment of       numpy data is the segment's own memory: no copy,
    /dev/shm ─► SharedValues(name, offsets)    read-only (writing raises); other objects are
                                               rebuilt from the stream (one copy each)
    the map ends ─► release(): unlinked        the segment stays mapped while a worker uses it

Small shares (under ``SHARE_BYTES``) are pickled with the function as before. The segment is
registered with multiprocessing's resource tracker when it is made, so it is removed even if the
notebook is killed with SIGKILL (the tracker outlives it and unlinks what is left).

On Linux /dev/shm is a tmpfs that takes its pages when they are first written: a segment larger
than its free space (a container's /dev/shm is 64 MB by default) would kill the notebook with
SIGBUS half-way through the copy. So the segment's memory is reserved first (posix_fallocate);
one that does not fit raises ``OSError`` here, and the caller sends the values with the function.
"""
from __future__ import annotations

import os
import pickle
import weakref
from multiprocessing import shared_memory
from typing import Any

import cloudpickle

#: Below this many bytes a share is pickled with the function: a segment costs a file in
#: /dev/shm and a few system calls, which only pays off once the data would be copied per worker.
SHARE_BYTES = 1 << 20
#: Buffers start at multiples of this in the segment: numpy's widest dtypes and cache lines.
ALIGN = 64


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class SharedValues:
    """``--share`` values in one shared-memory segment; pickles as its name and layout."""

    def __init__(self, values: dict[str, Any]):
        buffers: list[pickle.PickleBuffer] = []
        stream = cloudpickle.dumps(values, protocol=5, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        layout, offset = [], _aligned(len(stream))
        for view in views:
            layout.append((offset, view.nbytes))
            offset = _aligned(offset + view.nbytes)
        self._segment = shared_memory.SharedMemory(create=True, size=max(offset, 1))
        try:
            _reserve(self._segment.name, max(offset, 1))
        except OSError:
            _unlink(self._segment)
            raise
        self.name, self.stream_size, self.layout = self._segment.name, len(stream), layout
        buf = self._segment.buf
        buf[:len(stream)] = stream
        for (start, size), view in zip(layout, views):
            buf[start:start + size] = view
        del buf, views, buffers, stream
        self._finalizer = weakref.finalize(self, _unlink, self._segment)

    @staticmethod
    def worth_it(values: dict[str, Any]) -> bool:
        """True if the values hold enough raw data (numpy buffers, bytes) to go through a segment."""
        total = 0
        for value in values.values():
            nbytes = getattr(value, "nbytes", None)
            if isinstance(nbytes, int):
                total += nbytes
            elif isinstance(value, (bytes, bytearray)):
                total += len(value)
            elif hasattr(value, "memory_usage"):  # a DataFrame
                try:
                    total += int(value.memory_usage(deep=False).sum())
                except Exception:
                    pass
        return total >= SHARE_BYTES

    def release(self) -> None:
        """Unlink the segment (workers that mapped it keep their view until they drop it)."""
        self._finalizer()

    def __reduce__(self):
        return _attach, (self.name, self.stream_size, self.layout)


def _reserve(name: str, size: int) -> None:
    """Take a new segment's memory now (see the module docstring): ENOSPC here, not SIGBUS later."""
    path = os.path.join("/dev/shm", name.lstrip("/"))
    if not hasattr(os, "posix_fallocate") or not os.path.exists(path):
        return  # not Linux: no tmpfs taking pages on first write
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def free_bytes() -> int | None:
    """Free bytes in /dev/shm, if there is one."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _unlink(segment: shared_memory.SharedMemory) -> None:
    try:
        segment.close()
    except BufferError:
        pass  # a view is still exported here; the mapping goes with the process
    try:
        segment.unlink()
    except FileNotFoundError:
        pass


class _Attached(dict):
    """The shared values as rebuilt in a worker, holding the segment their arrays point into."""

    __slots__ = ("segment",)


def _attach(name: str, stream_size: int, layout: list[tuple[int, int]]) -> dict[str, Any]:
    """In a worker: map the segment and rebuild the values, numpy data pointing into it."""
    try:
        segment = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        raise RuntimeError(f"the shared values of this cell (segment {name}) are gone: the %%mp_pool "
                           "call that shared them has ended. Run the cell again.") from None
    view = segment.buf.toreadonly()
    values = pickle.loads(bytes(view[:stream_size]), buffers=[view[s:s + n] for s, n in layout])
    out = _Attached(values)
    out.segment = segment  # the arrays point into its mapping: keep it as long as they live
    return out
