"""``Pipeline``: stages of worker processes, built up step by step, run or started as a service.

    pipe = (Pipeline("inference")
            .stage(preprocess, workers=2)          # a function: called per item
            .batch(max_size=128, max_wait=1.0)     # the next stage gets lists of up to 128 items
            .stage(Model, workers=1))              # a class: built once in each worker, then called
    results = pipe.run(items)                      # blocking
    svc = pipe.start(); fut = svc.submit(x)        # a background service with futures

A ``Pipeline`` is only a description (stage specs); each ``run()`` or ``start()`` builds a
``Flow`` (``_flow``) with its own worker processes and router thread, and tears it down at the
end. ``run()`` feeds the flow from the calling thread; a ``Service`` (``_service``) from whichever
threads call ``submit()``. Where the lanes' workers come from is chosen in one place,
``Pipeline._pools``: processes on this machine (``_process_pools``), or with ``cluster=`` (or
``use()`` / MPKIT_CLUSTER) Dask workers (``dask.Lanes``); the router is the same for both.

    pipe.observe(obs) ─► kept ─► each flow: Watcher(obs) ◄── PipelineStats, 10/s, from the router
                     └─► before any run: Watcher(obs) ◄── the stages, all at 0 (kept for the first flow)
    run(progress=...) ─► front_end(progress, name) ─► one more observer for that run only

Front-ends plug in through ``_observe``: ``observe()`` attaches any ``PipelineObserver``, and a
blocking ``run()`` with no observer attached shows what the pipeline's ``front_end`` makes of
``progress=``. The engine has no front-end of its own; ``mpkit.Pipeline`` (a dashboard in Jupyter,
a status line in a terminal, plus ``dashboard()`` and ``timeline()``) sets it.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ._arguments import check_batch, check_pipeline_run, check_stage, check_workers
from ._default import cluster_for, dask_backend
from ._errors import MapInterrupted, ResultList, _short_repr
from ._flow import Flow, FlowEnded
from ._interrupts import held_interrupts
from ._observe import PipelineFrontEnd, PipelineObserver, Watcher
from ._pool import _length
from .process._pool import _check_max_tasks
from ._pipeline_stats import PipelineStats, StageStats, batcher_name
from ._run import ON_ERROR

#: Items a channel between stages holds by default. Enough to keep a few workers' chunks of small
#: items flowing; small enough that large items (images, DataFrames) stay in the low hundreds of
#: MB. Lower it with ``maxsize=`` when items are big, raise it when they are tiny and the stage is
#: fast. If in doubt, keep it: a full channel only makes the producer wait.
DEFAULT_MAXSIZE = 1024

if TYPE_CHECKING:
    from ._service import Service

_live: "weakref.WeakSet[Pipeline]" = weakref.WeakSet()


@dataclass(frozen=True)
class StageSpec:
    target: Callable
    name: str
    workers: int
    factory: bool          # build target() once per worker, then call the object
    many: bool             # the stage returns an iterable of results per item
    maxsize: int           # bound of this stage's input channel
    batch: tuple[int, float] | None  # (max_size, max_wait) of the micro-batches it receives
    retries: int
    timeout: float | None
    key: Callable | None   # route by key: items of one key stay in order on one worker
    max_tasks_per_child: int | None = None  # replace a worker after this many items


def _ready_stages(specs) -> tuple[StageStats, ...]:
    """The stages of a pipeline that never ran, as a snapshot shows them (all counts 0), so that a
    dashboard shown before the first item draws its cards at once."""
    out = []
    for spec in specs:
        if spec.batch is not None:
            out.append(StageStats(batcher_name(spec.batch), "batch", 0, 0, 0, spec.maxsize,
                                  0, 0, 0, 0, 0, 0, 0, 0.0, 0.0))
        out.append(StageStats(spec.name, "stage", 0, spec.workers, 0, spec.maxsize, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0))
    return tuple(out)


class Pipeline:
    """A chain of process stages; see the module docstring."""

    #: What a blocking ``run(progress=...)`` shows when no observer is attached (see
    #: ``_observe.PipelineFrontEnd``); the engine's pipelines have none. ``mpkit.Pipeline`` sets one.
    front_end: PipelineFrontEnd | None = None

    def __init__(self, name: str = "pipeline"):
        self.name = name
        self._specs: list[StageSpec] = []
        self._batch: tuple[int, float] | None = None
        self._flow: Flow | None = None      # the running or last flow
        self._dashboards: list = []         # observers attached with observe() (dashboards among them)
        self._ready_watchers: dict[int, Watcher] = {}  # id(observer) -> its Watcher before a first run
        self._service = None                # the last service started (set by Service)
        _live.add(self)

    # ---- building ---------------------------------------------------------------------------
    def stage(self, fn: Callable, *, workers: int = 1, name: str | None = None, factory: bool | None = None,
              many: bool = False, maxsize: int = DEFAULT_MAXSIZE, retries: int = 0,
              timeout: float | None = None, key: Callable | None = None,
              max_tasks_per_child: int | None = None) -> "Pipeline":
        """Add a stage of ``workers`` processes running ``fn``.

        ``fn`` is a function called per item (or per list, after :meth:`batch`), or a class (or,
        with ``factory=True``, a zero-argument function) whose object is built once inside each
        worker and then called: load models there. Return a result, ``None`` to drop the item,
        or with ``many=True`` an iterable of results (a list, or a generator: ``fn`` may be a
        generator function; it is consumed in the worker). ``maxsize`` bounds the stage's input.
        ``timeout`` bounds one call: on an item, or after :meth:`batch` on a whole batch, whose
        items then all fail (or, with ``retries``, the batch is tried again).

        Items go to whichever worker is free. With ``key=fn``, items with the same ``fn(item)``
        always go to the same worker, in the order they came (e.g. the messages of one
        conversation), also after a crash or a retry; the stage then has one queue per worker,
        each worker holds one chunk at a time (one item at a time with ``retries``), and a batch
        holds items of one worker's keys. ``max_tasks_per_child=N``
        replaces a worker by a fresh one (its object built again) after N items.
        """
        if not callable(fn):
            raise TypeError(f"a stage must be a function or a class, not {type(fn).__name__} {_short_repr(fn)}")
        check_stage(fn, workers=workers, name=name, factory=factory, many=many, maxsize=maxsize, retries=retries,
                    timeout=timeout, batched=self._batch is not None)
        name = name or getattr(fn, "__name__", f"stage{len(self._specs)}")
        if any(s.name == name for s in self._specs):
            raise ValueError(f"two stages named {name!r}; give one another name with name=")
        build = isinstance(fn, type) if factory is None else factory
        if isinstance(fn, type) and not any("__call__" in vars(k) for k in fn.__mro__[:-1]):
            raise TypeError(f"the stage class {fn.__name__} has no __call__ method: its object is called "
                            "with each item (or each batch). Define __call__(self, item).")
        if self._batch is not None:
            maxsize = max(maxsize, self._batch[0])  # a full batch must fit in the channel
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of the item, not {type(key).__name__} {_short_repr(key)}")
        _check_max_tasks(max_tasks_per_child)
        self._specs.append(StageSpec(fn, name, workers, build, many, maxsize, self._batch, retries, timeout, key,
                                     max_tasks_per_child))
        self._batch = None
        return self

    def batch(self, max_size: int, max_wait: float = 1.0) -> "Pipeline":
        """Group items for the next stage into lists: a list goes out when it holds ``max_size``
        items, or ``max_wait`` seconds after its first item arrived, even if no other item comes,
        or at the end of the stream. The stage returns one result per item, in order."""
        check_batch(max_size, max_wait)
        self._batch = (max_size, float(max_wait))
        return self

    @property
    def stages(self) -> list[str]:
        return [s.name for s in self._specs]

    @property
    def specs(self) -> tuple[StageSpec, ...]:
        """The stages as built, in order: each a frozen ``StageSpec`` (name, workers, maxsize of its
        input channel, batch, retries, timeout, key...)."""
        return tuple(self._specs)

    # ---- running ----------------------------------------------------------------------------
    def run(self, items: Iterable, *, ordered: bool = False, on_error: str = "raise",
            progress: bool | None = None, start_method: str | None = None, cluster: Any = None) -> ResultList:
        """Send every item through the stages and return the results (input order if ``ordered``).

        ``items`` is read here, in the calling thread, one item at a time while the first stage
        has room, so a slow or endless source (a generator reading a socket) has each item
        moving at once. Blocks until the end of the stream; the dashboard (Jupyter) or a text
        status (terminal) shows it live. A blocking run cannot receive button clicks while its
        cell runs: stop it with the kernel's interrupt (it also ends a source waiting in
        ``next()``), which stops every stage within about two seconds and raises
        ``MapInterrupted`` with the results so far; the items that did not finish are counted as
        cancelled in ``stats()``.

        ``cluster``: run the stages on a Dask cluster (a ``distributed.Client``, a scheduler
        address, or ``"local"``; default: what ``mpkit.use()`` or ``MPKIT_CLUSTER`` set, else
        local worker processes; ``start_method=`` without ``cluster=`` means local processes even
        then). A stage's ``workers`` are then Dask workers its chunks are pinned to; channels,
        batching, order and counts stay here, in the notebook.
        """
        __tracebackhide__ = True
        check_pipeline_run(on_error, start_method, ordered, progress, cluster)
        try:
            source = iter(items)
        except TypeError:
            raise TypeError(f"items must be iterable, got {type(items).__name__} {_short_repr(items)}") from None
        flow = self._flow_for(on_error, ordered, start_method, progress, cluster=cluster)
        flow.copy_buffers = _may_refill(items)
        flow.total = _length(items)
        flow.start()
        try:
            # The source is read here, in the calling thread, never under the flow's lock: each item
            # moves on as soon as it is read, a slow source never holds the router back, and the
            # kernel's interrupt (which lands in this thread) ends even a next() blocked in recv().
            try:
                for item in source:
                    flow.put(item)
            except FlowEnded:
                pass  # a stage failed (on_error="raise") or cannot run: flow.fatal says why
            flow.close_input()
            flow.wait()
            if flow.interrupted:  # the dashboard's Stop button: ended as an interrupt would
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            with held_interrupts():  # a second interrupt while the stages stop keeps the results
                flow.interrupted = True
                flow.stop()
                flow.wait_quietly()
                interrupted = MapInterrupted(flow.result_list(), list(flow.ledger.cancelled_roots), None)
            raise interrupted from None
        except BaseException as exc:  # the source raised: the run ends with its error
            flow.fail(exc)
            flow.wait_quietly()
            raise
        if flow.fatal is not None:
            if getattr(flow.fatal, "keeps_results", False) and getattr(flow.fatal, "results", None) is None:
                # the backend itself failed (a Dask scheduler gone): what finished is kept, as a map's
                flow.fatal.results = flow.result_list()
            raise flow.fatal
        return flow.result_list()

    def imap(self, items: Iterable, *, ordered: bool = False, on_error: str = "raise",
             progress: bool | None = None, start_method: str | None = None, cluster: Any = None) -> Iterator:
        """Send every item through the stages and yield the results as they come out (in input
        order with ``ordered=True``), in flat memory: unlike :meth:`run`, nothing is kept.

        ``items`` is read in the loop's thread, only while fewer than the first stage's
        ``maxsize`` results (and ``RESULTS_BYTES``, 64 MB) wait for the loop, so a slow loop
        holds the source back instead of filling memory. A many= stage yields each output on its
        own. Failures follow ``on_error`` as in :meth:`run`: ``"raise"`` ends the stream with
        the first failure's error, ``"collect"`` yields its :class:`Failure` in the item's place,
        ``"skip"`` leaves it out (``stats()`` counts it either way). Leaving the loop early
        (``break``, an exception, an interrupt, ``close()``) stops the pipeline at once: what is
        inside is cancelled, counted in ``stats().cancelled``, and no process is left running.
        Nothing starts until the loop asks for the first result.
        """
        from ._stream import stream

        check_pipeline_run(on_error, start_method, ordered, progress, cluster)
        try:
            source = iter(items)
        except TypeError:
            raise TypeError(f"items must be iterable, got {type(items).__name__} {_short_repr(items)}") from None
        self._check_runnable(on_error)

        def results():
            flow = self._flow_for(on_error, ordered, start_method, progress, stream=True, cluster=cluster)
            flow.copy_buffers = _may_refill(items)
            yield from stream(flow, source, ordered=ordered, collect=on_error == "collect")

        return results()

    def start(self, *, on_error: str = "collect", start_method: str | None = None, cluster: Any = None):
        """Start the stages as a background service; ``submit(x)`` returns a Future.
        ``cluster``: on a Dask cluster, as for :meth:`run`."""
        from ._service import Service

        check_pipeline_run(on_error, start_method, cluster=cluster)
        flow = self._flow_for(on_error, False, start_method, progress=False, service=True, cluster=cluster)
        return Service(self, flow)

    def _flow_for(self, on_error, ordered, start_method, progress, service: bool = False,
                  stream: bool = False, cluster: Any = None) -> Flow:
        self._check_runnable(on_error)
        self._dashboards = [d for d in self._dashboards if not getattr(d, "closed", False)]
        observers = list(self._dashboards)  # a closed dashboard showed an earlier run: a new one shows this
        front = self._front_end_for(progress) if not observers else None
        if front is not None:
            observers.append(front)
        observers = [self._first_watcher(o) for o in observers]
        self._flow = Flow(self.name, self._specs, pools=self._pools(start_method, cluster), on_error=on_error,
                          ordered=ordered, observers=observers, service=service, stream=stream)
        return self._flow

    def _pools(self, start_method: str | None, cluster: Any):
        """Where the lanes' workers come from: Dask workers on ``cluster`` (or the default one
        ``mpkit.use()`` / MPKIT_CLUSTER set), else processes on this machine."""
        if cluster is None and start_method is not None:
            # a start method asks for local processes: it wins over use() / MPKIT_CLUSTER (a recipe's
            # pipeline that writes the notebook's files stays here); with cluster= too it is refused
            return _process_pools(start_method)
        cluster = cluster_for(cluster)
        if cluster is None:
            return _process_pools(start_method)
        for spec in self._specs:
            if spec.max_tasks_per_child is not None:
                raise ValueError(f"stage {spec.name!r} has max_tasks_per_child={spec.max_tasks_per_child}, "
                                 "which replaces local worker processes; a Dask worker is not replaced "
                                 f"after N items (cluster={_short_repr(cluster)}). Fix: leave it out, or "
                                 "run this pipeline without cluster= (and without mpkit.use()).")
        return dask_backend().Lanes(cluster)

    def _check_runnable(self, on_error: str) -> None:
        if not self._specs:
            raise ValueError(f"pipeline {self.name!r} has no stage; add one with .stage(fn)")
        if self._batch is not None:
            raise ValueError(f"pipeline {self.name!r} ends with .batch(): add the stage that receives the "
                             "batches after it, e.g. .batch(128).stage(Model)")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, not {on_error!r}")
        if self._flow is not None and self._flow.state == "running":
            raise RuntimeError(f"pipeline {self.name!r} is already running: {_what_runs(self)}")

    # ---- watching ---------------------------------------------------------------------------
    def stats(self) -> PipelineStats:
        """A snapshot of the running (or last) run: every item accounted for, per stage."""
        if self._flow is None:
            return PipelineStats(self.name, "ready", 0.0, 0, 0, 0, 0, 0, 0, _ready_stages(self._specs))
        return self._flow.snapshot()

    def history(self) -> list[PipelineStats]:
        """The snapshots of the last run, about ten a second."""
        return list(self._flow.history) if self._flow is not None else []

    @property
    def state(self) -> str:
        """``"ready"`` (never run), ``"running"``, ``"stopped"`` or ``"failed"``: of the last run or service."""
        return self._flow.state if self._flow is not None else "ready"

    @property
    def started(self) -> float | None:
        """When the last run or service started (``time.perf_counter()``), or None."""
        return self._flow.started if self._flow is not None else None

    def _interrupt_run(self) -> None:
        """End a blocking ``run()`` running now as an interrupt does (any thread: a Stop button)."""
        flow = self._flow
        if flow is not None and flow.running and not flow.service:
            flow.interrupt()

    @property
    def service(self) -> Service | None:
        """The service started last with :meth:`start` (running or not), or None."""
        return self._service

    def workers(self) -> dict[str, list[tuple[int, int, str]]]:
        """``{stage: [(worker id, pid, "busy" or "idle"), ...]}`` while it runs; ``{}`` otherwise."""
        flow = self._flow
        if flow is None or flow.state != "running":
            return {}
        return {stage.name: stage.workers() for stage in flow.stages}

    def observe(self, observer: PipelineObserver) -> PipelineObserver:
        """Attach a front-end: it gets a snapshot at once (of the running or last run, if any), the
        snapshots of the running flow, and those of every run and service after it, until it has a
        true ``closed`` attribute (see ``PipelineObserver``). While one is attached, ``run()``
        shows no front-end of its own. Returns ``observer``."""
        self._dashboards.append(observer)
        flow = self._flow
        if flow is not None and flow.state == "running":
            watcher = Watcher(observer, f"pipeline {self.name!r}")
            flow.observers.append(watcher)
            watcher.update(flow.snapshot())
        elif flow is not None:
            observer.update(flow.snapshot())  # the last run, as it ended (in this thread: nothing runs)
        else:  # the stages before any run, so a dashboard shown first draws them at once; the
            # run that follows goes on with the same watcher, so updates never overlap
            watcher = Watcher(observer, f"pipeline {self.name!r}")
            self._ready_watchers[id(observer)] = watcher
            watcher.update(self.stats())
        return observer

    def _first_watcher(self, observer) -> Watcher:
        """The watcher through which a run feeds ``observer``: the one that showed it the stages
        before the first run, if any, else a new one."""
        kept = self._ready_watchers.pop(id(observer), None)
        if kept is not None and kept.observer is observer:
            return kept
        return Watcher(observer, f"pipeline {self.name!r}")

    def scale(self, stage: str, workers: int) -> None:
        """Change a stage's worker count, live: workers are added, or retired when idle."""
        check_workers(workers, optional=False)
        if stage not in self.stages:
            raise KeyError(f"no stage named {stage!r}; stages: {', '.join(self.stages)}")
        if any(s.name == stage and s.key is not None for s in self._specs):
            raise ValueError(f"stage {stage!r} routes by key=, so items of a key stay on one worker: its "
                             "worker count is fixed when the pipeline starts")
        self._specs = [s if s.name != stage else _replace(s, workers=workers) for s in self._specs]
        if self._flow is not None and self._flow.state == "running":
            self._flow.scale(stage, workers)

    def _front_end_for(self, progress: bool | None) -> PipelineObserver | None:
        if self.front_end is not None:
            return self.front_end(progress, self.name)
        if progress:
            raise ValueError(f"progress=True asks for a live view of pipeline {self.name!r}, but it has no "
                             "front-end to draw one (a pipeline of mpkit.engine, which imports no widgets). "
                             "Fix: use mpkit.Pipeline (a dashboard in Jupyter, a status line in a terminal), "
                             "or attach a front-end of your own with pipe.observe(obj), obj having "
                             "update(stats) and close(stats) (mpkit.engine.PipelineObserver).")
        return None

    def __repr__(self) -> str:
        state = self._flow.state if self._flow is not None else "ready"
        chain = " -> ".join(s.name if s.batch is None else f"batch({s.batch[0]}) -> {s.name}" for s in self._specs)
        return f"<mpkit.Pipeline {self.name!r}: {chain or 'no stages'} ({state})>"


def _what_runs(pipe: Pipeline) -> str:
    """What holds a pipeline's running flow, and how to end it (for the message of a second start)."""
    flow = pipe._flow
    if pipe._service is not None and pipe._service.flow is flow:
        return "its service was started with start(); stop it first with svc.stop() (or pipe.service.stop())"
    if flow.stream:
        return ("an imap() stream of it is still open (a loop not finished, or a stream kept in a variable, "
                "as a cell run again leaves it); end it first with stream.close(), or finish its loop")
    return "a run() of it is going on in another thread; wait for it to end"


def _may_refill(items) -> bool:
    """Whether a source may hand out one buffer refilled (a generator of frames): not a list or tuple."""
    return not isinstance(items, (list, tuple, range))


def _replace(spec: StageSpec, **changes) -> StageSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def live_pipelines() -> list[Pipeline]:
    return list(_live)


def _process_pools(start_method: str | None):
    """A stage's lanes as pools of worker processes on this machine (the process backend)."""
    from .process._pool import Pool

    def pools(workers: int, spec) -> Pool:
        # idle workers stay for the run's life: a stage that waits for its input must not restart cold
        return Pool(workers, start_method=start_method, idle_timeout=24 * 3600,
                    max_tasks_per_child=spec.max_tasks_per_child)

    return pools
