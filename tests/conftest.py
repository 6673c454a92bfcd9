"""Shared fixtures: every test runs leak-checked, multiprocess tests under spawn and forkserver."""
from __future__ import annotations

import os
import signal

import psutil
import pytest

import mpkit
from tests.dask_cluster import kept_processes
from tests.proctree import wait_until, workers_of

START_METHODS = ["spawn", "forkserver"]


def live_children() -> list[psutil.Process]:
    """Descendant processes of this test process, other than multiprocessing's session helpers
    (the resource tracker and the fork server, direct children): a forkserver worker, a child
    of the fork server, counts. A Dask cluster that a module-scoped fixture keeps for its tests
    (tests/dask_cluster.py) does not; that fixture checks its processes are gone at its end."""
    kept = kept_processes()
    return [p for p in workers_of(os.getpid()) if p.pid not in kept]


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


@pytest.fixture(autouse=True)
def sigint_left_as_it_was():
    """Fail a test after which this process handles SIGINT differently (a handler left installed,
    SIGINT ignored or blocked in the main thread): every later interrupt test, and every child it
    starts, would inherit that. The state is put back for the next test."""
    handler = signal.getsignal(signal.SIGINT)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    now_handler, now_mask = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    # installed again whatever Python reports: a C library (an event loop, a browser driver) may
    # have changed SIGINT's disposition below Python, where getsignal() cannot see it
    if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
        signal.signal(signal.SIGINT, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if now_handler is not handler or now_mask != mask:
        pytest.fail(f"the test left SIGINT's handler {now_handler!r} (was {handler!r}) or blocked signals "
                    f"{sorted(now_mask)} (were {sorted(mask)}) in the test process")


@pytest.fixture(params=START_METHODS)
def start_method(request, monkeypatch):
    """Run the test under each start method, for explicit pools and for mpkit.map alike."""
    monkeypatch.setenv("MPKIT_START_METHOD", request.param)
    return request.param


@pytest.fixture
def pool(start_method):
    with mpkit.Pool(2, start_method=start_method) as p:
        yield p


@pytest.fixture(params=START_METHODS + ["dask"])
def any_pool(request, monkeypatch):
    """The same map behaviour on each backend: a 2-worker local pool under each start method, and a
    pool on a real 2-worker Dask LocalCluster (this module's ``dask_client``)."""
    if request.param == "dask":
        with mpkit.Pool(cluster=request.getfixturevalue("dask_client")) as p:
            yield p
        return
    monkeypatch.setenv("MPKIT_START_METHOD", request.param)
    with mpkit.Pool(2, start_method=request.param) as p:
        yield p


@pytest.fixture(params=START_METHODS + ["dask"])
def any_backend(request, monkeypatch):
    """The same pipeline behaviour on each backend: local processes under each start method, and
    the 2-worker Dask LocalCluster of ``dask_client``, made the default with ``mpkit.use()`` (as
    a notebook moves with one line). Yields the start method, or "dask"."""
    if request.param == "dask":
        client = request.getfixturevalue("dask_client")

        def started():  # event topics of mpkit pools whose tasks began on a Dask worker
            return {topic for topic, events in client.get_events().items()
                    if topic.startswith("mpkit-") and any(e[1][0] == "start" for e in events)}
        before = started()
        mpkit.use(client)
        try:
            yield "dask"
        finally:
            mpkit.use(None)
            mpkit.shutdown()
        # the test really ran on the cluster, not on local processes
        assert started() - before, "no mpkit task ran on Dask"
        return
    monkeypatch.setenv("MPKIT_START_METHOD", request.param)
    yield request.param


@pytest.fixture(scope="module")
def _dask_cluster():
    pytest.importorskip("distributed")
    from tests.dask_cluster import local_cluster

    with local_cluster() as client:
        yield client


@pytest.fixture
def dask_client(_dask_cluster):
    """A real LocalCluster (2 single-threaded worker processes on 127.0.0.1) and a Client to it,
    shared by the tests of one module (it takes ~2 s to start); skipped without the dask extra.
    Each test gets it with both workers up: one a test before killed or restarted is replaced
    first (a loaded machine takes seconds), so a test does not wait on a cluster without workers."""
    from tests.dask_cluster import START_TIMEOUT

    _dask_cluster.wait_for_workers(2, timeout=START_TIMEOUT)
    return _dask_cluster
