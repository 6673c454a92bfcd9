"""The direct-pipe baseline of bench_dataplane.py: a chain of processes joined by multiprocessing Pipes.

What a fair user would write by hand for "two identity stages", with no pool, no hub and no
bookkeeping: every item moves from one process straight to the next.

    this process                                                      this process
    feeder thread --Pipe--> stage 1 process --Pipe--> stage 2 process --Pipe--> sink (calling thread)
      lists of `batch` items     fn on each item         fn on each item      counts and checks items

- The source (a generator) is read by a feeder thread of this process, as mpkit's Pipeline.run reads
  it in the notebook, and the sink is this process too: items start and end where a notebook's do.
- Items travel in lists of ``batch`` (``conn.send``: pickled with multiprocessing's pickler), a
  list per message; the sender blocks while the pipe is full (the OS pipe buffer is the only
  bound, about 64 KiB, plus one message in each process), so memory stays flat.
- ``None`` ends the stream: each stage forwards it and exits.

Only the standard library and the task module: the stage processes import this module by name.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import time
from typing import Callable, Iterable

from benchmarks._dataplane_tasks import item_index

RECV_TIMEOUT = 120.0  # seconds the sink waits for one message before it calls the chain stuck


def _stage(inbox, outbox, fn: Callable) -> None:
    """One stage process: receive a list, apply ``fn`` to each item, send the list on."""
    while True:
        batch = inbox.recv()
        if batch is None:
            outbox.send(None)
            return
        outbox.send([fn(x) for x in batch])


def _feed(outbox, source: Iterable, batch: int, error: list) -> None:
    try:
        chunk = []
        for item in source:
            chunk.append(item)
            if len(chunk) >= batch:
                outbox.send(chunk)
                chunk = []
        if chunk:
            outbox.send(chunk)
    except BaseException as exc:  # noqa: BLE001 - reported by run_chain
        error.append(exc)
    finally:
        outbox.send(None)


def run_chain(source: Iterable, kind: str, fn: Callable, *, stages: int = 2, batch: int = 128,
              start_method: str = "forkserver", on_item: Callable | None = None) -> tuple[float, int]:
    """Send ``source`` through ``stages`` processes applying ``fn``; return (seconds, items received).

    Timed from starting the processes to the last item received (processes are started inside the
    timing, as a Pipeline.run starts its workers). Each item received is checked to be the next in
    order (``item_index``) and then dropped, after ``on_item(item)`` if given."""
    ctx = mp.get_context(start_method)
    start = time.perf_counter()
    pipes = [ctx.Pipe(duplex=False) for _ in range(stages + 1)]  # (reader, writer) per hop
    procs = [ctx.Process(target=_stage, args=(pipes[k][0], pipes[k + 1][1], fn), daemon=True,
                         name=f"direct-stage-{k + 1}") for k in range(stages)]
    error: list = []
    feeder = None
    try:
        for p in procs:
            p.start()
        for k in range(stages):  # the children hold these ends now; closing ours lets EOF show
            pipes[k][0].close()
            pipes[k + 1][1].close()
        feeder = threading.Thread(target=_feed, args=(pipes[0][1], source, batch, error),
                                  name="direct-feeder", daemon=True)
        feeder.start()
        sink, count = pipes[-1][0], 0
        while True:
            if not sink.poll(RECV_TIMEOUT):
                raise RuntimeError(f"direct pipes: nothing received for {RECV_TIMEOUT:.0f} s after "
                                   f"{count} items; a stage process is stuck or dead "
                                   f"(exit codes {[p.exitcode for p in procs]})")
            got = sink.recv()
            if got is None:
                break
            for item in got:
                if item_index(kind, item) != count:
                    raise AssertionError(f"direct pipes: item {count} arrived as {item_index(kind, item)}")
                if on_item is not None:
                    on_item(item)
                count += 1
            del got
        seconds = time.perf_counter() - start
        feeder.join(RECV_TIMEOUT)
        if error:
            raise error[0]
        return seconds, count
    finally:
        for p in procs:
            p.join(10.0)
            if p.is_alive():
                p.kill()
                p.join(10.0)
        for reader, writer in (pipes[0], pipes[-1]):
            for conn in (reader, writer):
                conn.close()
