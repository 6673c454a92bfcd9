"""Process-tree tools for tests that watch real processes: who is a worker, who is left over.

Under spawn a worker is a child of the process that runs the map; under forkserver it is a child
of the fork server, itself a child of that process. The resource tracker (and the fork server)
are multiprocessing's helpers, not workers: they leave when their parent does.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

_WORKER_TAG = re.compile(r"^\[w\d+\] ")
#: The repository root, put on PYTHONPATH of subprocesses and kernels so they import this mpkit.
REPO = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """os.environ (with MPKIT_START_METHOD as the start_method fixture set it) plus the repo on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def alive(proc: psutil.Process) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if alive(p)]
    except psutil.NoSuchProcess:
        return []


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def is_helper(proc: psutil.Process, root_pid: int) -> bool:
    """multiprocessing's session helpers of ``root``: its resource tracker and its fork server,
    each a direct child of ``root``. Anything deeper (a forkserver worker has the fork server's
    command line, a task's child has anything) is not a helper."""
    try:
        if proc.ppid() != root_pid:
            return False
    except psutil.Error:
        return False
    cmd = _cmdline(proc)
    return "multiprocessing.resource_tracker" in cmd or "multiprocessing.forkserver" in cmd


def workers_of(pid: int) -> list[psutil.Process]:
    """mpkit worker processes in the tree under ``pid`` (every descendant but mp's helpers)."""
    return [p for p in descendants(pid) if not is_helper(p, pid)]


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def survivors(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes of ``procs`` still alive after waiting up to ``timeout`` seconds for them to go."""
    wait_until(lambda: not any(alive(p) for p in procs), timeout)
    return [p for p in procs if alive(p)]


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"pid {p.pid} (parent {p.ppid()}, {p.status()}): {_cmdline(p)[:100]}")
        except psutil.Error:
            lines.append(f"pid {p.pid} (gone)")
    return "\n".join(lines)


def kill_all(procs: list[psutil.Process]) -> None:
    """Clean up after a failed assertion, so one failure does not leak into the machine."""
    for p in procs:
        try:
            if alive(p):
                p.kill()
        except psutil.Error:
            pass


class Script:
    """A Python child in its own session (its own process group, as Jupyter starts kernels).

    It talks in lines: ``expect(prefix)`` reads stdout lines until one starts with ``prefix``
    (after the ``[wN] `` tag of a line a worker wrote, which mpkit's output relay adds)
    (with a timeout, from a reader thread so a silent child cannot hang the test).
    """

    def __init__(self, code: str):
        import queue
        import threading

        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=child_env(), cwd=str(REPO), start_new_session=True)
        self.pid = self.proc.pid
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.seen: list[str] = []
        self._stderr: list[str] = []
        self._tracked: list[psutil.Process] = []

        def pump(stream, sink):
            try:
                for line in stream:
                    sink(line.rstrip("\n"))
            finally:
                if stream is self.proc.stdout:
                    self.lines.put(None)
                stream.close()

        threading.Thread(target=pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=pump, args=(self.proc.stderr, self._stderr.append), daemon=True).start()

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        import queue

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} within {timeout} s; stdout so far:\n"
                                     + "\n".join(self.seen) + "\nstderr:\n" + self.stderr) from None
            if line is None:
                raise AssertionError(f"the script ended (exit code {self.proc.poll()}) before printing "
                                     f"{prefix!r}; stdout:\n" + "\n".join(self.seen) + "\nstderr:\n" + self.stderr)
            self.seen.append(line)
            line = _WORKER_TAG.sub("", line, count=1)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def track(self, procs: list[psutil.Process]) -> list[psutil.Process]:
        """Processes to kill at :meth:`close` even if they left the script's tree (re-parented)."""
        self._tracked += procs
        return procs

    def close(self) -> None:
        """Kill the script's whole tree if it is still there (test clean-up)."""
        tree = descendants(self.pid) + self._tracked
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        kill_all(tree)
        try:
            self.proc.stdin.close()
        except OSError:
            pass  # stdout and stderr are closed by their reader threads at EOF
