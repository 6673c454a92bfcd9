"""A map stopped from outside: Ctrl-C / Jupyter's interrupt, the parent killed, an imap abandoned.

The interrupt and kill tests run the map in a child Python in its own session and signal it as
Jupyter and the OOM killer do (SIGINT to the process group; SIGKILL to the parent alone). The
child reports on stdout: workers write ``done <i>`` straight to the inherited file descriptor 1
(not through mpkit's output relay, which is tested elsewhere), the parent prints JSON lines.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import mpkit
from tests import helpers, timed_tasks
from tests.proctree import Script, descendants, describe, survivors, wait_until, workers_of

#: The child: a map of 40 half-second items on 2 workers, then a short conversation on stdin.
SCRIPT = r'''
import json, os, sys, time
import mpkit

def slow(i):
    time.sleep(0.5)
    os.write(1, f"done {i}\n".encode())
    return i * 10

print("pid", os.getpid(), flush=True)
try:
    mpkit.map(slow, range(40), workers=2, progress=False)
except BaseException as exc:
    print("stopped", json.dumps({
        "type": type(exc).__name__,
        "keyboard_interrupt": isinstance(exc, KeyboardInterrupt),
        "map_interrupted": isinstance(exc, mpkit.MapInterrupted),
        "results": list(getattr(exc, "results", [])),
        "failures": len(getattr(getattr(exc, "results", None), "failures", [])),
        "pending": getattr(exc, "pending", None),
        "message": str(exc),
    }), flush=True)
else:
    print("stopped", json.dumps({"type": None}), flush=True)
if sys.stdin.readline().strip() == "again":
    print("again", json.dumps(mpkit.map(abs, range(-5, 5), workers=2, progress=False)), flush=True)
    sys.stdin.readline()
print("bye", flush=True)
'''

ITEMS = 40


def _wait_for_done_lines(script: Script, count: int, timeout: float = 60.0) -> set[int]:
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(done) < count:
        done.add(int(script.expect("done ", timeout=max(deadline - time.monotonic(), 0.1))))
    return done


def test_sigint_to_process_group_stops_map_and_keeps_results(start_method):
    script = Script(SCRIPT)
    try:
        script.expect("pid ")
        reported = _wait_for_done_lines(script, 6)
        busy = workers_of(script.pid)
        assert len(busy) == 2, describe(busy)

        started = time.monotonic()
        os.killpg(os.getpgid(script.pid), signal.SIGINT)  # what Jupyter's interrupt sends
        while True:
            line = script.expect("", timeout=30)  # skip "done" lines of items that were ending
            if line.startswith("stopped "):
                break
            if line.startswith("done "):
                reported.add(int(line.split()[1]))
        elapsed = time.monotonic() - started
        info = json.loads(line[len("stopped "):])

        assert elapsed < 5.0, f"the map took {elapsed:.1f} s to stop after SIGINT"
        assert info["type"] == "MapInterrupted" and info["keyboard_interrupt"], info
        results, pending = info["results"], info["pending"]
        finished = [r // 10 for r in results]
        # finished results, in input order, each for an item a worker did finish
        assert all(r % 10 == 0 for r in results)
        assert finished == sorted(set(finished))
        assert 2 <= len(finished) < ITEMS and set(finished) <= reported
        assert info["failures"] == 0
        # pending: every other index, those never sent to a worker included
        assert pending == sorted(set(pending)) and sorted(finished + pending) == list(range(ITEMS))
        assert f"{len(finished)} of {ITEMS} items finished" in info["message"]

        # the workers that were busy stopped running the map's items (those that were between two
        # items stay, warm): each item prints "done" before its result goes back, and the map ends
        # only once no worker holds any of its items, so no "done" line may follow "stopped"
        late = _lines_within(script, seconds=2.0)
        assert not [line for line in late if "done " in line], f"items still ran after the map stopped: {late}"

        # the pool is usable after the interrupt
        script.send("again")
        assert json.loads(script.expect("again ")) == [abs(x) for x in range(-5, 5)]

        # and when the script exits, nothing of its tree remains
        tree = descendants(script.pid)
        script.send("exit")
        script.expect("bye")
        assert script.proc.wait(timeout=20) == 0, script.stderr
        left = survivors(tree, timeout=10.0)
        assert not left, "processes outlived the script:\n" + describe(left)
        assert "Traceback" not in script.stderr, script.stderr
    finally:
        script.close()


def _lines_within(script: Script, seconds: float) -> list[str]:
    """The lines the script prints in the next ``seconds`` (none: an empty list)."""
    import queue

    lines, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = script.lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
    return lines


def _no_item_held(timeout: float = 5.0) -> bool:
    """No worker of the default pool holds an item (the manager's own record)."""
    pool = mpkit.engine._default.default_pool()
    return bool(wait_until(lambda: not any(w.in_flight for w in list(pool._manager.workers.values())),
                           timeout=timeout))


def test_sigkill_of_parent_alone_ends_every_worker(start_method):
    script = Script(SCRIPT)
    try:
        script.expect("pid ")
        _wait_for_done_lines(script, 2)
        workers = workers_of(script.pid)
        tree = script.track(descendants(script.pid))
        assert len(workers) == 2, describe(tree)

        os.kill(script.pid, signal.SIGKILL)  # the parent alone, as the OOM killer does
        script.proc.wait(timeout=10)

        left = survivors(workers, timeout=5.0)
        assert not left, "workers outlived their killed parent (orphans):\n" + describe(left)
        left = survivors(tree, timeout=10.0)
        assert not left, "multiprocessing helpers outlived the killed parent:\n" + describe(left)
    finally:
        script.close()


HOG_SCRIPT = r'''
import os, mpkit

def hog(i):
    with open({marker!r}, "w") as f:  # a file, not stdout: the output relay needs the GIL
        f.write(str(i))
    return sum(range(4_000_000_000))  # a minute of C code that never lets go of the GIL

print("pid", os.getpid(), flush=True)
mpkit.map(hog, range(4), workers=1, progress=False)
'''


def test_sigkill_of_parent_ends_a_worker_stuck_in_c_code(start_method, tmp_path):
    """The pipe watchdog needs the GIL; a task in C code that holds it must not outlive the parent."""
    marker = tmp_path / "hogging"
    script = Script(HOG_SCRIPT.format(marker=str(marker)))
    try:
        script.expect("pid ")
        assert wait_until(marker.exists, timeout=60), "the task did not start"
        time.sleep(0.3)  # into the C loop
        workers = script.track(workers_of(script.pid))
        script.track(descendants(script.pid))
        assert len(workers) == 1, describe(workers)

        os.kill(script.pid, signal.SIGKILL)
        script.proc.wait(timeout=10)
        left = survivors(workers, timeout=5.0)
        assert not left, "a worker outlived its killed parent (orphan):\n" + describe(left)
    finally:
        script.close()


def test_abandoned_imap_leaves_no_busy_worker(start_method):
    seen = []
    for pid in mpkit.imap(timed_tasks.slow_pid, range(ITEMS), workers=2, progress=False):
        seen.append(pid)
        if len(seen) == 3:
            busy = workers_of(os.getpid())
            break  # the generator is dropped here; nothing waits for the other items any more
    assert len(busy) == 2, describe(busy)
    assert _no_item_held(), "workers kept running the items of an abandoned imap"
    # what stays is a usable pool, warm: the workers that were between two items
    assert mpkit.map(helpers.square, range(10), workers=2, progress=False) == [x * x for x in range(10)]


def test_abandoned_imap_by_close_leaves_no_busy_worker(start_method):
    results = mpkit.imap(timed_tasks.slow_pid, range(ITEMS), workers=2, progress=False, ordered=False)
    next(results)
    busy = wait_until(lambda: len(workers_of(os.getpid())) == 2 and workers_of(os.getpid()), timeout=10)
    assert busy, describe(workers_of(os.getpid()))
    results.close()
    assert _no_item_held(), "workers kept running the items of a closed imap"


class _InterruptWhen:
    """A progress display that raises KeyboardInterrupt when ``when(stats)`` holds: a Ctrl-C that
    lands inside the map's loop (while it draws the bar), deterministically and in this process."""

    def __init__(self, when):
        self.when = when
        self.stats: mpkit.MapStats | None = None   # what the bar showed when the interrupt came

    def __call__(self, description, total):  # the factory Pool.map takes as progress=
        return self

    def update(self, stats: mpkit.MapStats) -> None:
        if self.stats is None and self.when(stats):
            self.stats = stats
            raise KeyboardInterrupt

    def write(self, text: str, stream: str) -> None:
        pass

    def close(self, stats: mpkit.MapStats) -> None:
        pass


def test_interrupt_keeps_finished_results_in_order(pool):
    bar = _InterruptWhen(lambda stats: stats.done >= 4)
    with pytest.raises(mpkit.MapInterrupted) as info:
        pool.map(timed_tasks.slow_identity, range(ITEMS), chunksize=1, progress=bar)
    exc = info.value
    assert isinstance(exc, KeyboardInterrupt) and bar.stats is not None
    assert len(exc.results) < ITEMS
    assert exc.results == sorted(set(exc.results)), "finished results are not in input order"
    assert exc.pending == sorted(set(exc.pending)) and not set(exc.results) & set(exc.pending)
    assert not exc.results.failures


def test_interrupt_while_progress_is_drawn_keeps_received_results(pool):
    bar = _InterruptWhen(lambda stats: stats.done == 20)  # Ctrl-C just as the last item comes in
    with pytest.raises(mpkit.MapInterrupted) as info:
        pool.map(timed_tasks.slow_identity, range(20), chunksize=1, progress=bar)
    assert bar.stats.done == 20
    assert info.value.results == list(range(20)), f"received results were dropped; pending={info.value.pending}"


def test_interrupt_pending_lists_every_unfinished_index(pool):
    """Also the items never taken from the input: re-running .pending must finish the work."""
    bar = _InterruptWhen(lambda stats: stats.done >= 4)
    with pytest.raises(mpkit.MapInterrupted) as info:
        pool.map(timed_tasks.slow_identity, range(ITEMS), chunksize=1, progress=bar)
    exc = info.value
    assert sorted(exc.results + exc.pending) == list(range(ITEMS))
