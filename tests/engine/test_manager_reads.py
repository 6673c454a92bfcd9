"""The pool's one manager thread never waits on a worker's socket: a message cut short by its
worker's death (a frame whose shared memory never follows, a frame half written) is dropped, and the
death is handled as any other, even when a process the task forked keeps the socket open."""
from __future__ import annotations

import array
import os
import pickle
import select
import signal
import socket
import struct
import threading
from multiprocessing import Pipe

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import mpkit
from mpkit.engine import _serialize
from mpkit.engine.process import _wire
from tests import shm_tasks

#: Far longer than the map takes; the forked child of the task lives 120 s.
HANG_SECONDS = 60


def _map_in_thread(pool, fn, items, **kwargs):
    box: dict = {}

    def call():
        try:
            box["result"] = pool.map(fn, items, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, box


def _map_with_a_dying_worker(pool, task, folder) -> list:
    """The map of ``task`` (its worker dies while sending the result, once; retries=1 runs it again),
    failed with a message if it hangs, after the child holding the socket is killed to free it."""
    thread, box = _map_in_thread(pool, task, [str(folder)], retries=1)
    thread.join(HANG_SECONDS)
    hung = thread.is_alive()
    if hung:  # free the manager before failing: the child's end of the socket is the last one
        os.kill(int((folder / "child").read_text()), signal.SIGKILL)
        thread.join(HANG_SECONDS)
    assert not hung, "the pool's manager waited for the rest of a message its dead worker never sent"
    assert "error" not in box, box.get("error")
    assert pool.map(shm_tasks.length, [b"abc"]) == [3]  # the pool goes on
    return box["result"]


def test_a_worker_killed_between_a_frame_and_its_shared_memory_does_not_hang_the_pool(pool, tmp_path):
    [result] = _map_with_a_dying_worker(pool, shm_tasks.large_result_then_die_before_its_fd, tmp_path)
    assert np.array_equal(result, np.full(shm_tasks.MB // 8, 7.0))


def test_a_worker_killed_halfway_through_a_message_does_not_hang_the_pool(pool, tmp_path):
    [result] = _map_with_a_dying_worker(pool, shm_tasks.large_result_then_die_half_sent, tmp_path)
    assert result == "x" * shm_tasks.MB


def test_a_worker_killed_while_a_large_chunk_is_written_to_it_does_not_hang_the_pool(start_method, tmp_path):
    big = "y" * (256 << 20)  # in the message itself (a str), far larger than the socket's buffer
    with mpkit.Pool(1, start_method=start_method) as pool:  # both chunks go to the one worker
        thread, box = _map_in_thread(pool, shm_tasks.die_once_or_head, [("die", str(tmp_path)), (big, str(tmp_path))],
                                     chunksize=1, retries=1)
        thread.join(HANG_SECONDS)
        hung = thread.is_alive()
        if hung:
            os.kill(int((tmp_path / "child").read_text()), signal.SIGKILL)
            thread.join(HANG_SECONDS)
        assert not hung, "the pool's manager waited to write a chunk to a worker that had died"
        assert "error" not in box, box.get("error")
        assert box["result"] == ["die", "y" * 10]


# ---- the Reader on a real socket pair: what the manager does with bytes as they come ----------

def _wire_bytes(msg) -> tuple[bytes, int | None]:
    """What ``_wire.send`` writes for ``msg``: the framed message, and the fd of its segment."""
    frame, fd = _wire._encode(msg)
    return struct.pack("!i", len(frame)) + frame, fd


def _send_fd_byte(conn, fd: int | None) -> None:
    sock = socket.socket(fileno=conn.fileno())
    try:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        sock.sendmsg([b"F"], ancillary)
    finally:
        sock.detach()


_MESSAGES = st.lists(st.one_of(st.integers(), st.binary(max_size=3000),
                               st.integers(1, 4).map(lambda n: np.full(n * 40_000, n, dtype=np.float64))),
                     min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_MESSAGES, cuts=st.lists(st.integers(1, 400_000), max_size=8))
def test_the_reader_rebuilds_messages_from_any_pieces_and_never_waits(messages, cuts):
    sender, receiver = Pipe(duplex=True)
    reader = _wire.Reader(receiver)
    try:
        got = []
        for msg in messages:
            data, fd = _wire_bytes(("m", _serialize.pack(msg)))
            pieces = [data[a:b] for a, b in zip([0] + sorted(c for c in cuts if c < len(data)),
                                                sorted(c for c in cuts if c < len(data)) + [len(data)])]
            for piece in pieces:
                os.write(sender.fileno(), piece)
                got += list(reader.messages())  # returns with what is there: a part is kept for later
            if fd is not None:
                got += list(reader.messages())
                _send_fd_byte(sender, fd)
                os.close(fd)
            got += list(reader.messages())
        assert len(got) == len(messages)
        for (kind, payload), msg in zip(got, messages):
            value = _serialize.unpack(payload)
            assert kind == "m" and (np.array_equal(value, msg) if isinstance(msg, np.ndarray) else value == msg)
    finally:
        reader.close()
        sender.close()
        receiver.close()
    assert not [fd for fd in shm_tasks.open_fds() if fd.startswith("/memfd:")], "a segment's fd was left open"


def test_a_frame_whose_fd_does_not_come_is_a_lost_message_and_the_next_ones_still_arrive():
    sender, receiver = Pipe(duplex=True)
    reader = _wire.Reader(receiver)
    try:
        data, fd = _wire_bytes(("big", np.ones(100_000)))
        os.close(fd)
        os.write(sender.fileno(), data)
        _send_fd_byte(sender, None)  # what a sender that could not pass the fd sends
        os.write(sender.fileno(), _wire_bytes(("after", 1))[0])
        with pytest.raises(_wire.ReceiveError, match="did not come with it"):
            list(reader.messages())
        assert list(reader.messages()) == [("after", 1)]
    finally:
        reader.close()
        sender.close()
        receiver.close()


def test_the_writer_never_waits_for_a_peer_that_does_not_read_and_delivers_in_order_later():
    sender, receiver = Pipe(duplex=True)
    writer = _wire.Writer(sender)
    array_ = np.arange(100_000, dtype=np.float64)  # through shared memory: a frame, then its fd
    try:
        writer.send(("text", "z" * (8 << 20)))  # far more than the socket takes: the rest waits
        writer.send(("array", _serialize.pack(array_)))
        writer.send_bytes(pickle.dumps(("last",)))
        assert writer.pending, "8 MB went into a socket nobody reads"
        got: list = []
        reading = threading.Thread(target=lambda: got.extend(_wire.receive(receiver) for _ in range(3)), daemon=True)
        reading.start()
        while writer.pending:
            _, ready, _ = select.select([], [sender], [], HANG_SECONDS)
            assert ready, "the reader stopped taking what was written"
            writer.flush()
        reading.join(HANG_SECONDS)
        assert [m[0] for m in got] == ["text", "array", "last"]
        assert got[0][1] == "z" * (8 << 20) and np.array_equal(_serialize.unpack(got[1][1]), array_)
    finally:
        writer.close()
        sender.close()
        receiver.close()
