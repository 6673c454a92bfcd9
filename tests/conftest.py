"""Shared fixtures: every test runs leak-checked, multiprocess tests under spawn and forkserver."""
from __future__ import annotations

import psutil
import pytest

import mpkit
from tests.proctree import wait_until

START_METHODS = ["spawn", "forkserver"]
# Helpers multiprocessing keeps for the whole session: not leaks.
_SESSION_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _is_helper(proc: psutil.Process) -> bool:
    try:
        return any(h in " ".join(proc.cmdline()) for h in _SESSION_HELPERS)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return True


def live_children() -> list[psutil.Process]:
    """Descendant processes of this test process, other than multiprocessing's own helpers."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and not _is_helper(proc):
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Fail a test that leaves a child process behind (after mpkit's default pool is shut down)."""
    yield
    mpkit.shutdown()
    left = wait_until(lambda: not live_children(), timeout=10) or live_children()
    if left is not True and left:
        details = []
        for proc in left:
            try:
                details.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if details:
            pytest.fail("test left child processes behind:\n" + "\n".join(details))


@pytest.fixture(params=START_METHODS)
def start_method(request, monkeypatch):
    """Run the test under each start method, for explicit pools and for mpkit.map alike."""
    monkeypatch.setenv("MPKIT_START_METHOD", request.param)
    return request.param


@pytest.fixture
def pool(start_method):
    with mpkit.Pool(2, start_method=start_method) as p:
        yield p
