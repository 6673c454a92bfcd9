"""The seam between the engine and where workers run: what a backend does for a Run.

    map driver (_pool.BasePool)  ┐                    ┌► process backend (process/): worker
    pipeline lane (_stage.Lane)  ┴─ Run ─ Backend ────┤   processes on this machine
                                    chunks in,        └► Dask backend (dask/): one task per
                                    outcomes out          chunk on a Dask cluster

A Run (``_run``) is the ledger of one map or one pipeline stage: chunks wait in ``run.pending``,
outcomes are recorded with the Run's methods. A backend moves chunks between the two, and owns
everything about workers: starting them, the wire format, noticing a death, killing a hung item.

Contract, all under ``run.cond`` unless said otherwise:
- ``add(run)``: from now on take chunks from ``run.pending`` (``run.take()``) while
  ``run.max_workers`` workers may hold them; count each taken chunk in ``run.in_flight`` until its
  outcome is recorded. ``remove(run)`` stops that. ``wake()`` (no lock): pending grew, a run was
  cancelled, or the size changed.
- Each chunk ends as exactly one of: ``run.chunk_done(chunk, offset, results_bytes, failures,
  seconds, worker_id)`` (called once per part, the last with the rest), ``run.crashed(chunk,
  exitcode, pid, running)`` (the offset of the item that was running, if known),
  ``run.timed_out(chunk)``, ``run.undecodable(chunk, text)``, ``run.requeue(chunk)`` (its worker
  left through no fault of it), or ``run.set_fatal(exc)`` for the whole run (the function cannot
  be loaded, no worker can start). A cancelled run's chunks are dropped and their workers stopped.
- ``run.busy_workers`` / ``run.pool_workers`` are kept current for snapshots.
- ``output``: an ``OutputRelay`` the backend feeds with workers' prints; ``broken``: an error that
  means the backend itself failed (every run waiting on it gives up).
- ``resize(workers)``, ``close(wait)``, ``alive()``.
"""
from __future__ import annotations

from typing import Protocol

from ._output import OutputRelay
from ._run import Run


class Backend(Protocol):
    output: OutputRelay
    broken: BaseException | None
    size: int

    def add(self, run: Run) -> None: ...

    def remove(self, run: Run) -> None: ...

    def wake(self) -> None: ...

    def resize(self, workers: int) -> None: ...

    def alive(self) -> bool: ...

    def close(self, wait: bool) -> None: ...
