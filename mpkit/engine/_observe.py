"""The observer interface: how a front-end (progress bar, dashboard, text status) watches the engine.

    map()/imap(): calling thread ── MapStats ──────► ┐                    ┌─► observer.update(stats)
    pipeline: router thread ──── PipelineStats ────► ┤ Watcher: one slot, ├   (the watcher's thread,
                                 (≤ 10 a second)     │ the latest wins    │    never the engine's)
    end of the run ──────────── final snapshot ────► ┘ ── join ───────────┴─► observer.close(stats)
    map(): worker print()s ──────────────────────────────────────────────────► observer.write(text, stream)
                                                                              (the calling thread, in order)

A front-end gets frozen snapshots only (:class:`MapStats`, :class:`PipelineStats`), never a queue,
a run or a process, so it can neither slow nor break what it watches: the engine hands each
snapshot to a :class:`Watcher`, which calls the observer from a thread of its own. A slow observer
skips snapshots (it gets the latest when it is ready) while the workers go on; an observer that
raises an ``Exception`` is reported once through the ``mpkit`` logger and keeps getting
snapshots, while a ``KeyboardInterrupt`` (or ``SystemExit``) it raises is raised again in the
engine's thread (the map's caller, the pipeline's router) as if it had been raised there: it stops
the run. ``close`` comes once, after the last ``update`` returned (the engine waits up to
``CLOSE_WAIT`` for it).

The engine chooses no front-end: a pool's or a pipeline's ``front_end`` (a :data:`MapFrontEnd` or
:data:`PipelineFrontEnd`) turns ``progress=True/None`` into one, and ``mpkit.Pool`` /
``mpkit.Pipeline`` / ``mpkit.map`` set the default (a bar or dashboard in Jupyter, text in a terminal).
"""
from __future__ import annotations

import contextvars
import logging
import threading
from typing import Callable, Generic, Protocol, TypeVar, Union, runtime_checkable

from ._pipeline_stats import PipelineStats
from ._run import MapStats

#: Seconds the end of a run waits for an observer's running ``update`` before it calls ``close``:
#: long enough for any sane redraw on a loaded machine, short enough that a stuck front-end delays
#: the return of ``map()`` (or the end of a pipeline) by a few seconds at most.
CLOSE_WAIT = 5.0

_log = logging.getLogger("mpkit")


@runtime_checkable
class MapObserver(Protocol):
    """What ``progress=`` shows for one ``map`` / ``imap``: a bar, a log line, a panel of your own.

    ``update`` is called from a thread of mpkit's own (not the one running the map), at most ten
    times a second, skipping snapshots while an earlier call is still running; ``write`` from the
    thread running the map, in order, for every piece of worker output (``stream`` is ``"stdout"``
    or ``"stderr"``; show it, or the text is lost); ``close`` once at the end, with the final
    snapshot, after the last ``update`` returned. Each gets a frozen :class:`MapStats`.
    """

    def update(self, stats: MapStats) -> None: ...

    def write(self, text: str, stream: str) -> None: ...

    def close(self, stats: MapStats) -> None: ...


class MapObserverFactory(Protocol):
    """``progress=`` given to a map: called once as the map starts, in the thread running it (a
    notebook shows what it displays in the cell), with the function's name and the number of
    items (``None`` for an iterable without a length). A class with that ``__init__`` will do."""

    def __call__(self, description: str, total: int | None) -> MapObserver: ...


@runtime_checkable
class PipelineObserver(Protocol):
    """What watches a pipeline (``pipe.observe(obs)``): a dashboard, a status line, a logger.

    ``update`` is called from a thread of mpkit's own (not the router's), at most ten times a
    second while the pipeline runs, skipping snapshots while an earlier call still runs; ``close``
    once per run or service, with the final snapshot (every item accounted for), after the last
    ``update`` returned. An observer with a true ``closed`` attribute is left out of later runs.
    """

    def update(self, stats: PipelineStats) -> None: ...

    def close(self, stats: PipelineStats) -> None: ...


#: How a pool turns ``progress=True`` / ``None`` (the default) into a front-end: the factory of the
#: bar to show, or ``None`` for none. ``mpkit.Pool`` and ``mpkit.map`` show a bar in IPython.
MapFrontEnd = Callable[[Union[bool, None]], Union[MapObserverFactory, None]]
#: How a pipeline turns ``progress=True`` / ``None`` and its name into the live view of a blocking
#: ``run()``, or ``None``. ``mpkit.Pipeline`` shows a dashboard in Jupyter, a status line in a terminal.
PipelineFrontEnd = Callable[[Union[bool, None], str], Union[PipelineObserver, None]]

S = TypeVar("S", MapStats, PipelineStats)


class Watcher(Generic[S]):
    """Calls one observer off the engine's threads: ``update`` keeps only the latest snapshot for
    the watcher's thread (started on the first one), ``close`` waits for it, then closes. Make it
    in the thread whose output the observer's should join (the one calling map() or run())."""

    def __init__(self, observer, name: str):
        self.observer = observer
        self.name = name
        self._cond = threading.Condition()
        self._latest: S | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._reported = False
        self._raised: BaseException | None = None  # an interrupt the observer raised, for the engine
        # the thread runs in the context of the one that made the watcher (the cell's, in a
        # kernel), so what an observer prints goes where that thread's output goes
        self._context = contextvars.copy_context()

    def update(self, stats: S) -> None:
        """Hand over a snapshot; returns at once (a snapshot not yet shown is replaced). Raises
        here what the observer raised that is not an ``Exception`` (``KeyboardInterrupt``...)."""
        with self._cond:
            raised, self._raised = self._raised, None
            if raised is not None:
                raise raised
            if self._closing:
                return
            self._latest = stats
            if self._thread is None:
                self._thread = threading.Thread(target=self._context.run, args=(self._deliver,),
                                                daemon=True, name=f"mpkit-observer-{self.name}")
                self._thread.start()
            self._cond.notify()

    def write(self, text: str, stream: str) -> bool:
        """Give worker output to the observer, in this thread; False if it failed to take it."""
        return self._call("write", text, stream)

    def close(self, stats: S) -> None:
        """The final snapshot, once: after the updates handed over (up to ``CLOSE_WAIT`` s)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)
        self._call("close", stats)
        with self._cond:
            raised, self._raised = self._raised, None
        if raised is not None:
            raise raised

    @property
    def closed(self) -> bool:
        return self._closing

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._closing:
                    self._cond.wait()
                if self._latest is None:
                    return  # closing, every snapshot handed over delivered
                stats, self._latest = self._latest, None
            try:
                self._call("update", stats)
            except BaseException as exc:  # noqa: BLE001 - an interrupt or exit: the engine's thread raises it
                with self._cond:
                    self._raised = exc

    def _call(self, method: str, *args) -> bool:
        try:
            getattr(self.observer, method)(*args)
            return True
        except Exception:  # noqa: BLE001 - a broken front-end must not break what it watches
            if not self._reported:
                self._reported = True
                _log.error("mpkit: the front-end %r (%s) raised in %s(); the %s goes on, and later "
                           "errors of this front-end are not reported. Fix the front-end, or pass "
                           "progress=False.", self.observer, self.name, method, self.name, exc_info=True)
            return False
