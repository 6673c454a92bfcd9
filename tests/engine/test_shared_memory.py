"""Large arrays and bytes cross between the notebook and its workers through shared memory (memfd),
and nothing of it is left behind, whoever is killed.

What is looked at is what the processes really hold (``tests/shm_tasks``: /proc/<pid>/maps and
/proc/<pid>/fd), and /dev/shm, where a named segment would be left.
"""
from __future__ import annotations

import gc
import mmap
import os
import signal
import threading
from functools import partial
from multiprocessing import Pipe

import numpy as np
import psutil
from hypothesis import HealthCheck, given, settings, strategies as st

import mpkit
from mpkit.engine import _serialize
from mpkit.engine.process import _wire
from tests import helpers, shm_tasks
from tests.proctree import Script, describe, survivors, wait_until, workers_of

MB = shm_tasks.MB
PAGE = mmap.PAGESIZE


def _dev_shm() -> set[str]:
    """Names in /dev/shm, but multiprocessing's named semaphores: mpkit makes none, while other
    work in the same session does (a Dask LocalCluster's locks) and its resource tracker removes
    them in its own time, which would blame a test here for them."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.mp-")}


def _memfd_fds() -> list[str]:
    return [target for target in shm_tasks.open_fds() if target.startswith("/memfd:")]


def test_a_100_mb_array_goes_and_comes_back_through_shared_memory(pool):
    a = np.arange(100 * MB // 8, dtype=np.float64)
    [(doubled, arrived_in)] = pool.map(shm_tasks.double_and_where, [a])
    assert arrived_in >= a.nbytes, "the argument did not reach the worker through shared memory"
    assert shm_tasks.array_segment(doubled) >= a.nbytes, "the result did not come back through shared memory"
    assert doubled.dtype == a.dtype and doubled.shape == a.shape
    assert np.array_equal(doubled, a * 2)
    assert doubled.flags.writeable
    doubled[0] = -1.0  # the notebook owns its result: writing to it changes nothing elsewhere
    del doubled
    gc.collect()
    assert shm_tasks.memfd_mappings() == 0, "the result's shared memory outlived the result"

    # a task may write to its argument, as to any argument; the notebook's array is untouched
    small = np.zeros(MB // 8)
    assert pool.map(shm_tasks.mutate, [small, small]) == [1.0, 1.0]
    assert not small.any()


def test_a_generator_that_refills_one_array_gives_each_item_its_own_values(pool):
    # each item is taken as it was when the generator handed it out, even though the array's
    # memory travels out of band and the generator refills it before the chunk is sent
    got = list(pool.imap(shm_tasks.first_value, shm_tasks.one_buffer_refilled(40), chunksize=1))
    assert got == [float(i) for i in range(40)]


def test_large_bytes_and_bytearrays_cross_whole(pool):
    items = [b"a" * (3 * MB), bytearray(b"b" * (2 * MB)), b"small", 7]
    out = pool.map(shm_tasks.identity_with_type, items)
    assert [value for value, _ in out] == items
    assert [kind for _, kind in out] == ["bytes", "bytearray", "bytes", "int"]


def test_a_result_kept_holds_its_own_memory_not_its_whole_chunk(pool):
    # a notebook keeps the one result it wants of a map and drops the others
    out = pool.map(shm_tasks.block, range(64), chunksize=64, progress=False)  # 64 MB in one or a few messages
    best = out[7]
    assert shm_tasks.array_segment(best) >= 2 * MB, "the result did not come back with others in one segment"
    del out
    gc.collect()
    assert float(best[0]) == 7.0
    held = max(shm_tasks.memfd_mapped_bytes(), shm_tasks.memfd_held_bytes())
    assert held <= best.nbytes + 2 * PAGE, \
        f"a result of {best.nbytes / MB:.0f} MB kept {held / MB:.0f} MB of shared memory"
    del best
    gc.collect()
    assert shm_tasks.memfd_mappings() == 0


def test_the_same_large_bytes_in_many_items_cross_once(pool):
    # the same blob (a file read once) given to every item, sent back by each as is
    blob = b"z" * (4 * MB)
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    out = pool.map(helpers.identity, [blob] * 64, chunksize=64, progress=False)
    grown = process.memory_info().rss - before
    assert len(out) == 64 and all(x == blob for x in out)
    assert grown < 64 * MB, f"64 references to one 4 MB bytes came back as {grown / MB:.0f} MB more memory"


def test_a_result_changed_in_place_costs_no_second_copy(pool):
    [r] = pool.map(partial(shm_tasks.block, nbytes=64 * MB), [1], progress=False)
    assert shm_tasks.array_segment(r) >= 64 * MB, "the result did not come back through shared memory"
    r -= r.mean()  # in place, to save memory, as one does with large arrays
    r[0] = 5.0
    assert float(r[0]) == 5.0 and not r[1:].any()
    copied = shm_tasks.memfd_copied_bytes()
    assert copied <= 2 * PAGE, f"changing a 64 MB result in place made {copied / MB:.0f} MB of copies"


def test_many_small_results_held_take_few_memory_mappings(pool):
    # the kernel allows a process ~65,000 mappings (vm.max_map_count): 70,000 results of 64 KB held
    # must not need one each
    out = pool.map(partial(shm_tasks.block, nbytes=64 << 10), range(2000), progress=False)
    assert [float(r[0]) for r in out[::250]] == [float(i) for i in range(0, 2000, 250)]
    # a chunk under the wire's shared-memory threshold comes in band (the last, small one may):
    # most results, not each, come back through shared memory
    shared = sum(1 for r in out if shm_tasks.array_segment(r))
    assert shared >= len(out) // 2, f"only {shared} of 2,000 results came back through shared memory"
    mappings = shm_tasks.memfd_mappings()
    assert mappings <= 200, f"2,000 results of 64 KB held take {mappings} memory mappings"


def _warm(start_method: str) -> None:
    """Start what a first pool starts once per session (a fork server), to count fds after it."""
    with mpkit.Pool(1, start_method=start_method) as p:
        p.map(abs, [1])


def test_a_worker_killed_holding_shared_memory_is_accounted_and_leaves_nothing(start_method, tmp_path):
    _warm(start_method)
    gc.collect()
    shm_before, fds_before = _dev_shm(), len(shm_tasks.open_fds())
    arrays = [np.full(MB // 8, float(i)) for i in range(40)]
    arrays[10][0] = -1.0  # kills its worker the first time: retried, then fine
    arrays[25][0] = -2.0  # kills its worker every time: reported
    with mpkit.Pool(2, start_method=start_method) as p:
        out = p.map(partial(shm_tasks.mean_or_die, path=str(tmp_path / "killed")), arrays,
                    retries=1, on_error="collect", progress=False)
    assert (tmp_path / "killed").exists()
    assert [f.index for f in out.failures] == [25]
    assert isinstance(out.failures[0].exception, mpkit.WorkerDied)
    assert list(out) == [float(a.mean()) for i, a in enumerate(arrays) if i != 25]

    gc.collect()
    assert shm_tasks.memfd_mappings() == 0, "shared memory is still mapped in the notebook process"
    assert _memfd_fds() == [], "the notebook process still holds shared-memory fds"
    assert wait_until(lambda: len(shm_tasks.open_fds()) <= fds_before, timeout=10), \
        f"open fds: {fds_before} before the pool, now: {shm_tasks.open_fds()}"
    assert wait_until(lambda: _dev_shm() <= shm_before, timeout=10), f"left in /dev/shm: {_dev_shm() - shm_before}"


KILLED_NOTEBOOK = r'''
import os
import numpy as np
import mpkit
from tests import shm_tasks

print("pid", os.getpid(), flush=True)
arrays = [np.full(4 * shm_tasks.MB // 8, float(i)) for i in range(200)]
for i, (segment, first) in enumerate(mpkit.imap(shm_tasks.slow_where, arrays, workers=2, progress=False)):
    print("done", i, segment, flush=True)
'''


def test_a_killed_notebook_leaves_no_shared_memory_and_no_worker(start_method):
    shm_before = _dev_shm()
    script = Script(KILLED_NOTEBOOK)
    try:
        script.expect("pid ")
        for _ in range(4):
            done = script.expect("done ", timeout=60)
        assert int(done.split()[1]) > 0, "the items did not travel through shared memory"
        workers = script.track(workers_of(script.pid))
        assert len(workers) == 2, describe(workers)
        holding = wait_until(lambda: any(_maps_memfd(w.pid) for w in workers), timeout=10)
        assert holding, "no worker holds shared memory at the moment of the kill"

        os.kill(script.pid, signal.SIGKILL)  # the notebook alone, as the OOM killer does
        script.proc.wait(timeout=10)
        left = survivors(workers, timeout=10.0)
        assert not left, "workers outlived the killed notebook:\n" + describe(left)
        assert wait_until(lambda: _dev_shm() <= shm_before, timeout=10), f"left in /dev/shm: {_dev_shm() - shm_before}"
    finally:
        script.close()


def _maps_memfd(pid: int) -> int:
    try:
        return shm_tasks.memfd_mappings(pid)
    except OSError:
        return 0


NO_MEMFD = r'''
import errno, os

def memfd_create(name, flags=0):
    raise OSError(errno.ENOMEM, "Cannot allocate memory")

os.memfd_create = memfd_create  # as when the memory limit is reached: before mpkit is imported

import numpy as np
import mpkit
from tests import shm_tasks

arrays = [np.full(shm_tasks.MB // 8, float(i)) for i in range(6)]
for attempt in range(2):
    out = mpkit.map(shm_tasks.where, arrays, workers=2, progress=False)
    assert [first for _, first in out] == [float(i) for i in range(6)], out
    assert all(segment == 0 for segment, _ in out), ("the items came through shared memory", out)
print("ok", flush=True)
'''


def test_without_shared_memory_large_data_takes_the_pipe_after_one_warning(start_method):
    script = Script(NO_MEMFD)
    try:
        script.expect("ok", timeout=120)
        assert script.proc.wait(timeout=30) == 0, script.stderr
        said = script.stderr.count("could not use shared memory")
        assert said == 1, f"warned {said} times:\n{script.stderr}"
        assert "ENOMEM" in script.stderr or "Cannot allocate memory" in script.stderr, script.stderr
        assert "Traceback" not in script.stderr, script.stderr
    finally:
        script.close()


# ---- the wire alone: any message of arrays, bytes and small values comes back equal -------------

_sizes = st.sampled_from([0, 1, 1000, _serialize.OUT_OF_BAND_BYTES - 1, _serialize.OUT_OF_BAND_BYTES,
                          _wire.SHM_BYTES - 1, _wire.SHM_BYTES, _wire.OWN_MAPPING_BYTES - 1,
                          _wire.OWN_MAPPING_BYTES, 3 * MB + 5])
_values = st.one_of(
    st.integers(), st.text(max_size=20),
    st.builds(lambda n: np.arange(n // 8, dtype=np.float64), _sizes),
    st.builds(lambda n: np.arange(n, dtype=np.uint8)[::2], _sizes),  # not contiguous: in band
    st.builds(lambda n: b"x" * n, _sizes),
    st.builds(lambda n: bytearray(b"y" * n), _sizes),
)


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b) and b.flags.writeable
    return type(a) is type(b) and a == b


def _shapes(items) -> list[str]:
    """What the items are, short enough for a failure message."""
    return [f"{type(x).__name__}[{len(x) if hasattr(x, '__len__') else ''}]" for x in items]


def _memfds() -> int:
    return sum(1 for target in shm_tasks.open_fds() if target.startswith("/memfd:"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_values, max_size=6))
def test_any_message_crosses_the_wire_unchanged_and_leaves_no_fd(items):
    parent, child = Pipe(duplex=True)
    try:
        # memfd segments only: other threads of the test process (pools of earlier tests winding
        # down) open and close fds of their own meanwhile
        fds_before = _memfds()
        # a chunk's results, and items pickled one by one inside a list (as a router may send them)
        msg = ("done", 3, 0, _serialize.pack(items), [], 0.1, [_serialize.pack(x) for x in items])
        sender = threading.Thread(target=_wire.send, args=(child, msg))
        sender.start()  # a large frame fills the socket: it is read while it is written
        got = _wire.receive(parent)
        sender.join(timeout=30)
        assert got[:3] == msg[:3] and got[4:6] == msg[4:6]
        back = _serialize.unpack(got[3])
        assert len(back) == len(items) and all(_equal(a, b) for a, b in zip(items, back)), _shapes(items)
        one_by_one = [_serialize.unpack(p) for p in got[6]]
        assert all(_equal(a, b) for a, b in zip(items, one_by_one)) and len(one_by_one) == len(items)
        del one_by_one
        assert _memfds() == fds_before
    finally:
        parent.close()
        child.close()
    del got, back
    gc.collect()
    assert shm_tasks.memfd_mappings() == 0


OUT_OF_FDS = r'''
import os, resource
import mpkit
from tests import shm_tasks

pool = mpkit.Pool(1)
pool.map(shm_tasks.block, [0], progress=False)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
fillers = []  # the notebook is out of fds: a result's shared memory cannot be received
try:
    while True:
        fillers.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    pool.map(shm_tasks.block, [1], progress=False)
    print("no error", flush=True)
except MemoryError as exc:
    print("lost:", exc, flush=True)
for fd in fillers:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print("again", pool.map(shm_tasks.block, [2], progress=False)[0][0], flush=True)
pool.shutdown()
'''


def test_a_result_whose_shared_memory_cannot_be_received_fails_the_map_instead_of_hanging(start_method):
    script = Script(OUT_OF_FDS)
    try:
        said = script.expect("lost:", timeout=120)
        assert "too many open files" in said and "Fix:" in said, said
        assert script.expect("again", timeout=60) == "2.0"
        assert script.proc.wait(timeout=30) == 0, script.stderr
        assert "Traceback" not in script.stderr, script.stderr
    finally:
        script.close()
