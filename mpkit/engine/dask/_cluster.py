"""``cluster=``: what the user names, turned into a connected ``distributed.Client``.

    cluster=Client(...)            ─► used as is (the user's: never closed by mpkit)
    cluster="tcp://host:8786"      ─► Client(address), owned and closed by mpkit
                                      (neither is made Dask's default client: dask.compute in
                                      the notebook goes where it went before)
    cluster="local"                ─► LocalCluster on 127.0.0.1 sized to this machine + Client,
                                      both owned and closed by mpkit

Before any task, every worker is asked (``client.run``) which Python it runs and whether it can
import mpkit: cloudpickle's bytes of a notebook function only load in the same Python minor
version, and the chunk task is mpkit's own function. A worker that cannot is refused here with a
message, rather than failing every task later in its own log.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster

#: Seconds to reach a scheduler or to start a LocalCluster. A cluster being started by a job
#: queue takes longer; then connect a Client yourself (it waits as you tell it) and pass it.
CONNECT_TIMEOUT = 30.0
#: Dask reschedules a task whose worker died this many times before it gives up (KilledWorker).
#: On the LocalCluster mpkit starts it is 0: mpkit itself retries and blames (retries=, one item
#: at a time after a death), so a segfaulting item kills one worker per try, not four.
LOCAL_ALLOWED_FAILURES = 0
#: Dask's own settings of the LocalCluster mpkit starts, besides LOCAL_ALLOWED_FAILURES. Each
#: worker's statistical profiler samples every thread's stack every 10 ms for Dask's dashboard,
#: which mpkit does not start: off, the inference pipeline (bench_dask) went from 0.35-0.59x to
#: 0.80-0.81x the items/s of local processes on a loaded 2-core machine (the model thread shares
#: the GIL with the sampler). A cluster of your own keeps its settings.
LOCAL_CONFIG = {"distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
                "distributed.worker.profile.enabled": False}
#: Asked of each worker by client.run: its Python version and whether it can import mpkit. An
#: expression of builtins, so it runs even where mpkit is missing.
_PROBE = ("(__import__('sys').version.split()[0], __import__('sys').executable, "
          "__import__('importlib.util').util.find_spec('mpkit') is not None)")


@dataclass
class Connection:
    client: Client
    cluster: LocalCluster | None   # the LocalCluster mpkit started, if any
    owned: bool                    # the client is mpkit's to close

    def close(self) -> None:
        if self.owned:
            try:
                self.client.close(timeout=10)
            except Exception:
                pass
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:
                pass


def describe(cluster: Any) -> str:
    """How a cluster= value is shown in messages and reprs."""
    if isinstance(cluster, str):
        return cluster
    return f"{type(cluster).__name__} {getattr(cluster, 'scheduler', None) and cluster.scheduler.address}"


def connect(cluster: Any) -> Connection:
    """A Connection for ``cluster=`` (see the module doc), its workers checked."""
    if isinstance(cluster, Client):
        conn = Connection(cluster, None, owned=False)
    elif cluster == "local":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        with dask.config.set(LOCAL_CONFIG):
            local = LocalCluster(n_workers=cpus, threads_per_worker=1, processes=True, host="127.0.0.1",
                                 dashboard_address=None, silence_logs=40,
                                 # its HTTP server (health, metrics) on a free loopback port, not 8787
                                 scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        try:
            conn = Connection(Client(local, timeout=CONNECT_TIMEOUT, set_as_default=False), local, owned=True)
        except BaseException:
            local.close()
            raise
    elif isinstance(cluster, str):
        try:
            client = Client(cluster, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"could not reach a Dask scheduler at {cluster!r} within {CONNECT_TIMEOUT:g} s "
                f"({type(exc).__name__}: {exc}). Fix: start one (`dask scheduler`, then `dask worker "
                f"{cluster}`), check the address and port, or use cluster=\"local\" for a cluster on "
                "this machine.") from None
        conn = Connection(client, None, owned=True)
    else:
        raise TypeError(f"cluster= takes a distributed.Client, a scheduler address such as "
                        f"'tcp://127.0.0.1:8786', or 'local'; got {type(cluster).__name__} {cluster!r}")
    try:
        check_workers(conn.client)
    except BaseException:
        conn.close()
        raise
    return conn


def check_workers(client: Client) -> None:
    """Refuse workers on another Python minor version than this one, or without mpkit."""
    answers = client.run(eval, _PROBE, on_error="return")
    here = sys.version.split()[0]
    for address, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            continue  # a worker leaving (its nanny restarts it, the same environment): not a refusal
        version, executable, has_mpkit = answer
        if version.split(".")[:2] != here.split(".")[:2]:
            raise RuntimeError(
                f"the Dask worker at {address} runs Python {version} ({executable}), this notebook "
                f"Python {here} ({sys.executable}): notebook functions are sent as cloudpickle bytes, "
                "which load only in the same Python minor version. Fix: start the workers from the "
                "notebook's environment (the same Python, with mpkit and your packages installed).")
        if not has_mpkit:
            raise RuntimeError(
                f"the Dask worker at {address} ({executable}) cannot import mpkit, which runs each "
                "chunk there. Fix: install mpkit in the workers' environment (pip install "
                "\"mpkit[dask]\"), the same version as the notebook's.")
