"""Task functions and probes for the shared-memory and byte-bound tests (importable by workers).

The probes look at what a process really holds, from /proc: which of its memory mappings are
shared-memory segments (memfd, "/memfd:<name> (deleted)" in /proc/<pid>/maps), which of its fds
point at one, and which mapping an array's data lives in.
"""
import os
import signal

import numpy as np

MB = 1 << 20


def _maps(pid="self"):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            yield start, end, fields[5].strip() if len(fields) > 5 else ""


def segment_size(address: int, pid="self") -> int:
    """Size of the memfd segment (the whole message's) that holds ``address`` (0: not in shared
    memory), whichever part of it is mapped there."""
    for start, end, name in _maps(pid):
        if start <= address < end:
            if not name.startswith("/memfd:"):
                return 0
            try:
                return os.stat(f"/proc/{pid}/map_files/{start:x}-{end:x}").st_size
            except OSError:
                return end - start  # map_files not readable here: the mapping's own size
    return 0


def array_segment(a: np.ndarray) -> int:
    """Size of the shared-memory mapping the array's data lives in (0: private memory)."""
    return segment_size(a.__array_interface__["data"][0])


def memfd_mappings(pid="self") -> int:
    """How many memfd mappings the process has."""
    return sum(1 for _, _, name in _maps(pid) if name.startswith("/memfd:"))


def memfd_mapped_bytes(pid="self") -> int:
    """Bytes of shared-memory segments the process has mapped (what its results hold on to)."""
    return sum(end - start for start, end, name in _maps(pid) if name.startswith("/memfd:"))


def memfd_held_bytes(pid="self") -> int:
    """Bytes of memory the shared-memory segments mapped by the process really hold (the pages each
    segment has, mapped or not: a segment lives as long as any part of it is mapped)."""
    held = {}
    for start, end, name in _maps(pid):
        if name.startswith("/memfd:"):
            try:
                st = os.stat(f"/proc/{pid}/map_files/{start:x}-{end:x}")
            except FileNotFoundError:
                continue  # unmapped since the listing (by another thread): it holds nothing now
            held[st.st_ino] = st.st_blocks * 512
    return sum(held.values())


def memfd_copied_bytes(pid="self") -> int:
    """Bytes of private copies made on top of the process's shared-memory mappings (copy on write:
    memory spent twice, once in the segment and once in the copy), from /proc/<pid>/smaps."""
    total, in_memfd = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                fields = line.split(maxsplit=5)
                in_memfd = len(fields) > 5 and fields[5].startswith("/memfd:")
            elif in_memfd and first == "Anonymous:":
                total += int(line.split()[1]) * 1024
    return total


def open_fds(pid="self") -> list[str]:
    """What each open fd of the process points at."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile (the listing's own fd)
    return out


def block(i, nbytes=MB):
    """A result of ``nbytes`` whose values say which item it is."""
    return np.full(nbytes // 8, i, dtype=np.float64)


def double_and_where(a):
    """2 * a, and the size of the shared-memory segment the argument arrived in (0: the pipe)."""
    return a * 2, array_segment(a)


def where(a):
    """The size of the shared-memory segment the argument arrived in, and its first value."""
    return array_segment(a), float(a[0])


def mean_or_die(a, path):
    """np.mean of the array; the first time it sees the item marked -1, kills its own worker
    (SIGKILL) while it holds the array and the next chunk in shared memory."""
    if a[0] == -1 and not os.path.exists(path):
        with open(path, "w") as f:
            f.write("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    if a[0] == -2:
        os.kill(os.getpid(), signal.SIGKILL)  # every time: reported as a WorkerDied
    return float(a.mean())


def mutate(a):
    """Tasks may write to the arrays they get, as to any argument."""
    a += 1
    return float(a[0])


def identity_with_type(x):
    return x, type(x).__name__


def slow_where(a):
    """``where`` after a short sleep, so that a map is still running when its notebook is killed."""
    import time

    time.sleep(0.05)
    return where(a)


def block_slow_first(i, nbytes=MB):
    """``block``; item 0 takes a few seconds, so every later result waits for it (ordered imap)."""
    import time

    if i == 0:
        time.sleep(3)
    return block(i, nbytes)


def first_value(a) -> float:
    return float(a.flat[0])


def one_buffer_refilled(n: int, size: int = 100_000):
    """A generator that hands out ONE array, refilled with i for the i-th item (frames read into a
    buffer): what a reader of video or audio writes."""
    buf = np.zeros(size)
    for i in range(n):
        buf[:] = i
        yield buf


def segment_of_array(x) -> int:
    """The size of the shared-memory segment an array argument arrived in; 0 at once for anything
    else, so that a map of small items stays cheap (its chunks grow to thousands of items)."""
    return array_segment(x) if isinstance(x, np.ndarray) else 0


def length(x) -> int:
    return len(x) if isinstance(x, (bytes, bytearray)) else 0


def _fork_a_socket_holder(folder: str) -> bool:
    """The first time (no ``folder``/child yet): fork a child that holds the worker's socket open
    (it inherits every fd) and sleeps; its pid goes to ``folder``/child. Whether it forked."""
    marker = os.path.join(folder, "child")
    if os.path.exists(marker):
        return False
    pid = os.fork()
    if pid == 0:  # the child: holds the socket as long as it lives
        import time

        time.sleep(120)
        os._exit(0)
    with open(marker, "w") as f:
        f.write(str(pid))
    return True


def large_result_then_die_before_its_fd(folder: str):
    """A 1 MB result (sent through shared memory); the first time, a forked child holds the socket
    and the worker is SIGKILLed right after the message's frame is out, before the fd of its shared
    memory follows it."""
    import sys

    if _fork_a_socket_holder(folder):
        def kill_before_the_fd(frame, event, arg):
            if event == "call" and frame.f_code.co_name == "_send_fd":
                os.kill(os.getpid(), signal.SIGKILL)

        sys.setprofile(kill_before_the_fd)
    return np.full(MB // 8, 7.0)


def large_result_then_die_half_sent(folder: str):
    """A 1 MB str result (in the message itself: no shared memory); the first time, a forked child
    holds the socket and the worker is SIGKILLed halfway through writing the message (its header
    and half its bytes are out, as when a kill lands during a large write)."""
    import struct
    import sys

    if _fork_a_socket_holder(folder):
        def kill_halfway(frame, event, arg):
            if event == "call" and frame.f_code.co_name == "_send_bytes":
                conn, buf = frame.f_locals["self"], frame.f_locals["buf"]
                data = struct.pack("!i", len(buf)) + bytes(buf[:len(buf) // 2])
                while data:
                    data = data[os.write(conn.fileno(), data):]
                os.kill(os.getpid(), signal.SIGKILL)

        sys.setprofile(kill_halfway)
    return "x" * MB


def die_once_or_head(arg) -> str:
    """``(x, folder)``: the first ``"die"`` forks a child that holds the worker's socket and SIGKILLs
    the worker at once (while the next chunk, a large one, is still being written to it); any other
    x gives its first ten characters back."""
    x, folder = arg
    if x == "die" and _fork_a_socket_holder(folder):
        os.kill(os.getpid(), signal.SIGKILL)
    return x[:10]
def frame_index_and_value(record: dict) -> tuple:
    """A pipeline stage over {"index": i, "frame": array}: (i, the frame's first value)."""
    return record["index"], float(record["frame"].flat[0])
