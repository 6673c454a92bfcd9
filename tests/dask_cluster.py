"""Real Dask clusters for tests: a LocalCluster on 127.0.0.1, or a `dask scheduler` and workers
started from the command line on free loopback ports. Both are stopped (and checked gone) by
the fixture that started them; while they run, their processes are in ``KEPT``, which the
leak check of tests/conftest.py leaves alone."""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys

import psutil

from tests.proctree import REPO, alive, child_env, descendants, wait_until, workers_of

#: pids of processes a fixture keeps alive across tests on purpose (with their descendants)
KEPT: set[int] = set()
#: clusters kept alive by a fixture: each gives the pids of its worker processes now (a nanny of a
#: LocalCluster lives in this process, and the worker it starts again after a death is a new child)
KEPT_CLUSTERS: list = []
#: Seconds a cluster may take to start on a loaded 2-core machine (one start is ~2 s idle).
START_TIMEOUT = 60.0
#: A LocalCluster closes a worker's nanny for good when, this long after the worker left the
#: scheduler (Dask's default: 15 s), no worker of its name is back. A module's tests restart
#: workers often (timeouts, interrupts, kills), so that check could fall in the gap of the next
#: restart and leave the cluster one worker short for the tests after it.
LOST_WORKER_TIMEOUT = "1h"


def kept_processes() -> set[int]:
    kept = set(KEPT)
    for pids in list(KEPT_CLUSTERS):
        kept |= pids()
    return kept | {p.pid for pid in list(kept) for p in descendants(pid)}


def _local_worker_pids(cluster) -> set[int]:
    pids = set()
    for nanny in list(cluster.workers.values()):
        process = getattr(nanny, "process", None)
        pid = getattr(process, "pid", None)
        if pid:
            pids.add(pid)
    return pids


@contextlib.contextmanager
def local_cluster(workers: int = 2, allowed_failures: int = 0):
    """A LocalCluster(processes=True) on loopback and a Client to it; allowed_failures=0 as on the
    cluster mpkit starts itself for cluster="local" (Dask reports a worker death at once)."""
    import dask
    from distributed import Client, LocalCluster

    # read on the cluster's thread when a worker leaves: set for the cluster's whole life
    with dask.config.set({"distributed.deploy.lost-worker-timeout": LOST_WORKER_TIMEOUT}):
        with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=40,
                                   scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        client = Client(cluster, timeout=START_TIMEOUT)
        pids = functools.partial(_local_worker_pids, cluster)
        KEPT_CLUSTERS.append(pids)
        try:
            yield client
        finally:
            procs = [psutil.Process(pid) for pid in kept_processes() & {p.pid for p in workers_of(os.getpid())}]
            client.close(timeout=10)
            cluster.close(timeout=10)
            KEPT_CLUSTERS.remove(pids)
            left = wait_until(lambda: not [p for p in procs if alive(p)], timeout=20)
            assert left, f"the LocalCluster left processes: {[p.pid for p in procs if alive(p)]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_command() -> list[str]:
    """The `dask` command of this Python's environment (its `dask scheduler`, `dask worker`)."""
    script = os.path.join(os.path.dirname(sys.executable), "dask")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def command_line_cluster(workers: int = 2):
    """`dask scheduler` and `dask worker` processes, as a user starts them, on free loopback ports;
    yields the scheduler's address. Stopped by pid (and their trees) at the end."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = child_env()
    dask = _dask_command()
    procs = [subprocess.Popen(dask + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--dashboard-address", "127.0.0.1:0", "--no-show"], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen(
                dask + ["worker", address, "--nthreads", "1",
                 "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard"],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        KEPT.update(p.pid for p in procs)
        yield address
    finally:
        tree = [psutil.Process(p.pid) for p in procs if psutil.pid_exists(p.pid)]
        tree += [c for p in list(tree) for c in descendants(p.pid)]
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for c in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                if alive(c):
                    c.kill()
        KEPT.difference_update(p.pid for p in procs)
