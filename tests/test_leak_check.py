"""The suite's own leak check (tests/conftest.py) sees every process a test leaves behind."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

from tests.conftest import live_children
from tests.proctree import alive, descendants, describe, kill_all, wait_until


def _sleep(seconds):
    time.sleep(seconds)


def test_a_leaked_forkserver_worker_is_caught():
    """A forkserver worker has the fork server's command line; only the server itself (a direct
    child of this process) and the resource tracker are session helpers."""
    process = mp.get_context("forkserver").Process(target=_sleep, args=(60,))
    process.start()
    try:
        assert wait_until(lambda: any(p.pid == process.pid for p in descendants(os.getpid())), timeout=10)
        leaked = [p.pid for p in live_children()]
        assert process.pid in leaked, "the leak check missed a forkserver worker:\n" + describe(
            descendants(os.getpid()))
        helpers = [p for p in descendants(os.getpid()) if p.pid not in leaked]
        assert helpers, "the fork server itself should stay a helper"
        assert all(p.ppid() == os.getpid() for p in helpers), describe(helpers)
    finally:
        process.kill()
        process.join(timeout=10)
    assert not live_children(), describe(live_children())


def test_a_grandchild_of_a_worker_is_caught(tmp_path):
    """A process started by a task (here: a subprocess of a forkserver child) counts too."""
    process = mp.get_context("forkserver").Process(target=_spawn_sleeper, args=(str(tmp_path / "pid"),))
    process.start()
    try:
        pid_file = tmp_path / "pid"
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=20)
        grandchild = int(pid_file.read_text())
        assert grandchild in [p.pid for p in live_children()]
    finally:
        tree = descendants(process.pid)
        process.kill()
        process.join(timeout=10)
        kill_all(tree)
        wait_until(lambda: not any(alive(p) for p in tree), timeout=10)


def _spawn_sleeper(pid_path):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tmp = pid_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(child.pid))
    os.replace(tmp, pid_path)
    child.wait()
