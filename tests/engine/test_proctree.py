"""A task's own processes end with it: a timeout, a cancel, an interrupt, a shutdown, a worker
killed from outside. What a task starts (a subprocess, a multiprocessing child, a daemon in its own
session, a shell's background job) must never be left running, re-parented to PID 1.
"""
from __future__ import annotations

import functools
import os
import signal
import threading

import psutil
import pytest

import mpkit
from tests import tree_tasks
from tests.proctree import alive, describe, kill_all, survivors, wait_until

pytestmark = pytest.mark.timeout(120)



def _recorded(path, name="hang", timeout=60.0) -> dict:
    pids = wait_until(lambda: tree_tasks.read(f"{path}.{name}"), timeout)
    assert pids, f"the task did not record its children within {timeout} s"
    return pids


def _assert_tree_gone(pids: dict) -> None:
    procs, kinds = [], {}
    for kind, pid in pids.items():
        try:
            procs.append(psutil.Process(pid))
            kinds[pid] = kind
        except psutil.NoSuchProcess:
            pass
    try:
        left = survivors(procs, timeout=15.0)
        assert not left, "the task's processes outlived it:\n" + "\n".join(
            f"{kinds[p.pid]}: {describe([p])}" for p in left)
    finally:
        kill_all(procs)


def _task(path):
    return functools.partial(tree_tasks.children_then_hang, path=path)


def _run_in_thread(call):
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - looked at by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_timeout_ends_the_tasks_children(pool, tmp_path):
    path = str(tmp_path / "pids")
    results = pool.map(_task(path), [("hang", "hang")], timeout=8, on_error="collect", progress=False)
    assert isinstance(results.failures[0].exception, mpkit.TaskTimeout), results.failures
    _assert_tree_gone(_recorded(path))


def test_abandoned_imap_ends_the_tasks_children(pool, tmp_path):
    path = str(tmp_path / "pids")
    results = pool.imap(_task(path), [("quick", "return"), ("hang", "hang")],
                        progress=False)
    assert next(results)["worker"] > 0
    pids = _recorded(path)
    results.close()  # the cell moved on: nobody waits for the hanging item any more
    _assert_tree_gone(pids)
    pool.shutdown()  # the worker that ran the quick item was idle, and stays warm until here
    _assert_tree_gone(tree_tasks.read(f"{path}.quick"))


def test_an_error_raised_early_ends_the_other_tasks_children(pool, tmp_path):
    path = str(tmp_path / "pids")
    with pytest.raises(ValueError, match="fail fails"):
        pool.map(_task(path), [("hang", "hang"), ("fail", "fail")],
                 chunksize=1, progress=False)
    _assert_tree_gone(_recorded(path))


def test_interrupt_ends_the_tasks_children(pool, tmp_path):
    path = str(tmp_path / "pids")

    class InterruptOnceRecorded:  # a Ctrl-C in the map's loop, once the task's children run
        def __call__(self, description, total):
            return self

        def update(self, stats):
            if tree_tasks.read(f"{path}.hang") is not None:
                raise KeyboardInterrupt

        def write(self, text, stream):
            pass

        def close(self, stats):
            pass

    with pytest.raises(mpkit.MapInterrupted):
        pool.map(_task(path), [("hang", "hang")],
                 progress=InterruptOnceRecorded())
    _assert_tree_gone(_recorded(path))


def test_shutdown_ends_a_running_tasks_children(start_method, tmp_path):
    path = str(tmp_path / "pids")
    pool = mpkit.Pool(2, start_method=start_method)
    thread, box = _run_in_thread(lambda: pool.map(_task(path),
                                                  [("hang", "hang")], progress=False))
    try:
        pids = _recorded(path)
    finally:
        pool.shutdown()
    thread.join(timeout=30)
    assert isinstance(box.get("error"), RuntimeError), box
    _assert_tree_gone(pids)


def test_shutdown_ends_children_a_finished_task_left_running(start_method, tmp_path):
    """A task that starts a helper process and returns: the helper goes with the worker."""
    path = str(tmp_path / "pids")
    with mpkit.Pool(1, start_method=start_method) as pool:
        [pids] = pool.map(_task(path), [("left", "return")], progress=False)
        assert all(alive(psutil.Process(pid)) for pid in pids.values())
    _assert_tree_gone(pids)


def test_worker_killed_from_outside_takes_its_children(pool, tmp_path):
    """kill -9 of a worker (the OOM killer): its children must not live on as orphans."""
    path = str(tmp_path / "pids")
    thread, box = _run_in_thread(lambda: pool.map(_task(path),
                                                  [("hang", "hang")], on_error="collect", progress=False))
    pids = _recorded(path)
    trees = pool._manager.trees
    # the child in a session of its own is found only from the manager's snapshots once the
    # worker is dead: wait until one has seen it (at most a few SNAPSHOT_SECONDS)
    assert wait_until(lambda: pids["session"] in trees.known(pids["worker"]), timeout=30)
    os.kill(pids["worker"], signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the map did not end after its worker was killed"
    results = box["value"]
    assert isinstance(results.failures[0].exception, mpkit.WorkerDied), results.failures
    _assert_tree_gone(pids)


def test_a_worker_full_of_its_tasks_zombies_is_replaced(start_method):
    """Each item leaves an exited orphan (a shell's background job): the worker adopts them as
    zombies, and past a bound it is replaced, so a long map cannot fill the process table."""
    from mpkit.engine.process._proctree import MAX_ZOMBIES

    with mpkit.Pool(1, start_method=start_method) as pool:
        pids = pool.map(tree_tasks.leave_zombie, range(3 * MAX_ZOMBIES), chunksize=1, progress=False)
    assert len(pids) == 3 * MAX_ZOMBIES
    assert len(set(pids)) >= 2, "the worker was never replaced"
