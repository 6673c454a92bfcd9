"""A pipeline running in the background: ``submit(x)`` returns a ``concurrent.futures.Future``.

    submit(x) ──► flow.incoming ──► router thread: flow.step() ... ──► the item's Future resolves
    (blocks while the first channel is full)                           with its result, None if a
                                                                       stage dropped it, or the error

The router thread takes snapshots ten times a second for the dashboard, whose Stop button calls
:meth:`Service.stop` (it takes effect within a router tick, 0.1 s).
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from ._pipeline_stats import SNAPSHOT_HZ, PipelineStats


class Service:
    def __init__(self, pipeline, flow):
        self.pipeline, self.flow = pipeline, flow
        self._futures: dict[int, Future] = {}
        self._accepting = True
        self._stop_now = False
        flow.source_closed = False
        flow.on_root_done = self._resolve
        pipeline._service = self
        self._thread = threading.Thread(target=self._route, name=f"mpkit-service-{flow.name}", daemon=True)
        self._thread.start()

    def submit(self, item: Any, timeout: float | None = None) -> Future:
        """Send ``item`` in; blocks while the first stage's channel is full (up to ``timeout`` s)."""
        flow = self.flow
        future: Future = Future()
        with flow.cond:
            if not self._accepting:
                raise RuntimeError(f"the service of pipeline {flow.name!r} is stopped; start a new one "
                                   "with pipeline.start()")
            first = flow.stages[0]
            room = lambda: len(flow.incoming) + len(first.inbox) + first.pending_items() < first.spec.maxsize  # noqa: E731
            if not flow.cond.wait_for(lambda: room() or not self._accepting, timeout):
                raise TimeoutError(f"the first stage of {flow.name!r} stayed full for {timeout} s")
            if not self._accepting:
                raise RuntimeError(f"the service of pipeline {flow.name!r} stopped while this item "
                                   f"waited for room" + (f": {flow.fatal!r}" if flow.fatal else ""))
            seq = flow.seq + len(flow.incoming)
            self._futures[seq] = future
            flow.incoming.append(item)
            flow.cond.notify_all()
        return future

    async def asubmit(self, item: Any) -> Any:
        """``await svc.asubmit(x)``: the result, for top-level await in notebooks."""
        loop = asyncio.get_running_loop()
        future = await loop.run_in_executor(None, self.submit, item)
        return await asyncio.wrap_future(future)

    def stats(self) -> PipelineStats:
        return self.flow.snapshot()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, drain: bool = True, timeout: float | None = None) -> PipelineStats:
        """Stop taking items; with ``drain`` wait for those inside to finish, else cancel them."""
        flow = self.flow
        with flow.cond:
            self._accepting = False
            flow.source_closed = True
            if not drain:
                self._stop_now = True
            flow.cond.notify_all()
        if threading.current_thread() is not self._thread and timeout != 0:
            self._thread.join(timeout)
        return flow.history[-1] if flow.history else flow.snapshot()

    def _resolve(self, root: int, outcome: str, payload: Any) -> None:
        future = self._futures.pop(root, None)
        if future is None or future.done():
            return
        if outcome == "failed":
            future.set_exception(payload)
        else:
            future.set_result(payload)

    def _route(self) -> None:
        flow = self.flow
        tick = 1.0 / SNAPSHOT_HZ
        try:
            while not self._stop_now and not (flow.source_closed and flow.finished):
                flow.step(flow.next_timeout(tick))
                if flow.fatal is not None and flow.on_error == "raise":
                    break
        except BaseException as exc:  # noqa: BLE001 - reported through every pending future
            flow.fatal = flow.fatal or exc
        finally:
            with flow.cond:  # submitters waiting for room must not wait forever
                self._accepting = False
                flow.cond.notify_all()
            killed = self._stop_now or flow.fatal is not None
            for future in list(self._futures.values()):
                if flow.fatal is not None and not self._stop_now:
                    future.set_exception(flow.fatal)
                else:
                    future.cancel()
            self._futures.clear()
            flow.close(kill=killed, state="failed" if flow.fatal is not None and not self._stop_now else "stopped")

    def __repr__(self) -> str:
        return f"<mpkit pipeline service {self.flow.name!r} ({'running' if self.running else 'stopped'})>"
