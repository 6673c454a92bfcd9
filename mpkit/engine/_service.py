"""A pipeline running in the background: ``submit(x)`` returns a ``concurrent.futures.Future``.

    submit(x) ──► flow.put ──► router thread: stages ... ──► ledger: the item's Future is set ──► callback thread:
    (blocks while the                                        (result, None if dropped, its own      done-callbacks, in
     first channel is full)                                   error if it failed)                   the order set

The router sets each Future itself, so ``result()`` returns at once (the result arrives pickled,
and the first ``result()`` unpickles it in its own thread, off the router); the Future's done-callbacks
run in one small callback thread, in order, never in the router: a slow callback delays only the
callbacks after it, and a callback may ``submit()`` a follow-up (it waits for room while the
router goes on). An item's failure reaches only its own Future, whatever ``on_error`` is; the
service stops only when asked, or when a stage cannot run at all (its object fails to build, its
workers cannot start): then every Future still pending gets that error. The dashboard's Stop
button calls :meth:`Service.stop` (it takes effect within a router tick, 0.1 s).
"""
from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from ._errors import Failure
from ._flow import FlowEnded
from ._ledger import Encoded
from ._item import decoded, undecodable
from ._pipeline_stats import PipelineStats


class _Callbacks:
    """One thread that runs the done-callbacks of a service's futures, in order."""

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ended = False
        self._thread = threading.Thread(target=self._run, name=f"mpkit-callbacks-{name}", daemon=True)
        self._thread.start()

    def put(self, call: Callable[[], None]) -> None:
        with self._lock:
            if not self._ended:
                self._queue.put(call)
                return
        call()  # the service is over: in the caller's thread, as a plain Future does

    def close(self) -> None:
        """Run what is queued, then end."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is not None:
                call()  # Future._invoke_callbacks logs a callback's exception itself
                continue
            with self._lock:
                self._ended = True
            while True:  # what was queued before the end, behind the marker
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    return
                if call is not None:
                    call()


class _ServiceFuture(Future):
    """A Future whose done-callbacks run in the service's callback thread, not the one setting it,
    and that tells the router's ledger when its caller cancels it (``Ledger.cancels``)."""

    def __init__(self, callbacks: _Callbacks, ledger):
        super().__init__()
        self._mpkit_callbacks = callbacks
        self._mpkit_ledger = ledger

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self._mpkit_ledger.cancels += 1  # read by the router only to know whether to look
        return cancelled

    def _invoke_callbacks(self) -> None:
        # Callbacks are added under the Future's condition before it is set, so none can be
        # missed here; without any, nothing goes to the callback thread.
        if self._done_callbacks:
            self._mpkit_callbacks.put(super()._invoke_callbacks)

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        if value.__class__ is not Encoded:
            return value
        with self._condition:  # decoded once, by whichever thread asks first
            if self._result is value:
                try:
                    self._result = decoded(value.value)
                except Exception as exc:  # noqa: BLE001 - any unpickling error, with its reason
                    raise undecodable(exc) from exc
            return self._result


class Service:
    def __init__(self, pipeline, flow):
        self.pipeline, self.flow = pipeline, flow
        self._callbacks = _Callbacks(flow.name)
        flow.on_finish.append(self._callbacks.close)
        pipeline._service = self
        flow.start()

    def submit(self, item: Any, timeout: float | None = None) -> Future:
        """Send ``item`` in; blocks while the first stage's channel is full (up to ``timeout`` s)."""
        future = _ServiceFuture(self._callbacks, self.flow.ledger)
        try:
            self.flow.put(item, future, timeout)
        except FlowEnded:
            fatal = self.flow.fatal
            raise RuntimeError(f"the service of pipeline {self.flow.name!r} is stopped"
                               + (f" because of {type(fatal).__name__}: {fatal}" if fatal is not None else "")
                               + "; start a new one with pipeline.start()") from fatal
        return future

    async def asubmit(self, item: Any) -> Any:
        """``await svc.asubmit(x)``: the result, for top-level await in notebooks."""
        loop = asyncio.get_running_loop()
        future = await loop.run_in_executor(None, self.submit, item)
        return await asyncio.wrap_future(future)

    def stats(self) -> PipelineStats:
        return self.flow.snapshot()

    @property
    def failures(self) -> list[Failure]:
        """The most recent failures (up to ``RECENT_FAILURES``, oldest first); ``stats().failed``
        counts them all. Each failing item's error also went to its own Future."""
        return self.flow.failures

    @property
    def running(self) -> bool:
        return self.flow.running

    def stop(self, drain: bool = True, timeout: float | None = None) -> PipelineStats:
        """Stop taking items; with ``drain`` wait for those inside to finish, else cancel them
        (their futures are cancelled, and counted in ``stats().cancelled``)."""
        if drain:
            self.flow.close_input()
        else:
            self.flow.stop()
        if timeout == 0 or threading.current_thread() is self.flow._thread:
            return self.flow.last_snapshot()  # a click handler must return at once
        self.flow.wait(timeout)
        return self.flow.snapshot()

    def __repr__(self) -> str:
        return f"<mpkit pipeline service {self.flow.name!r} ({'running' if self.running else 'stopped'})>"
