"""Task functions that start processes of their own, as data-science code does: a ``subprocess``
(ffmpeg, a CLI tool), a multiprocessing child, a daemon in a session of its own.

Importable, so workers find them by reference. Each records the pids it started in a file, so a
test can check that they are gone once mpkit has stopped the task.
"""
import json
import multiprocessing as mp
import os
import subprocess
import time

#: Long enough to outlive any test; they are killed (by mpkit, or by the test's clean-up).
CHILD_SECONDS = 120


def _write(path, data) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read(path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def start_children(path, kinds=("subprocess", "session", "orphan", "multiprocessing")) -> dict:
    """Start one sleeping child of each kind; record ``{"worker": pid, kind: pid, ...}`` in ``path``."""
    pids = {"worker": os.getpid()}
    for kind in kinds:
        if kind == "subprocess":
            pids[kind] = subprocess.Popen(["sleep", str(CHILD_SECONDS)]).pid
        elif kind == "session":  # a daemon: it leaves the worker's process group
            pids[kind] = subprocess.Popen(["sleep", str(CHILD_SECONDS)], start_new_session=True).pid
        elif kind == "orphan":  # a shell that starts a background job and exits at once
            out = subprocess.run(["sh", "-c", f"sleep {CHILD_SECONDS} >/dev/null 2>&1 & echo $!"],
                                 capture_output=True, text=True, check=True)
            pids[kind] = int(out.stdout.strip())
        elif kind == "multiprocessing":
            child = mp.get_context("fork").Process(target=time.sleep, args=(CHILD_SECONDS,))
            child.start()
            pids[kind] = child.pid
    _write(path, pids)
    return pids


def children_then_hang(item, path):
    """item: (name, action). "hang": start children, then sleep; "fail": wait until the item named
    "hang" has recorded its children, then raise; "return": start children and return at once."""
    name, action = item
    if action == "fail":
        deadline = time.monotonic() + 30
        while read(f"{path}.hang") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError(f"{name} fails")
    pids = start_children(f"{path}.{name}")
    if action == "hang":
        time.sleep(CHILD_SECONDS)
    return pids


def record_pid(x, path):
    """Append this worker's pid to ``path.x`` (one line per run of the item); return the pid."""
    with open(f"{path}.{x}", "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def runs_of(path, x) -> list[int]:
    try:
        with open(f"{path}.{x}") as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def leave_zombie(x):
    """A shell that starts a short background job and exits: the job, adopted by the worker,
    ends and stays its zombie (nobody else may wait for it)."""
    subprocess.run(["sh", "-c", "true & exit 0"], check=True)
    time.sleep(0.02)
    return os.getpid()
