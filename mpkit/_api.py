"""The user-facing layer: the engine with front-ends chosen for where it runs.

    mpkit.map / mpkit.imap ─► the default pool (engine) ─ progress= resolved here ─► a bar (widgets)
    mpkit.Pool             = engine Pool      + front_end: a bar in IPython / Jupyter
    mpkit.Pool(cluster=c)  = engine.dask.Pool + the same front_end (Dask imported only then)
    mpkit.Pipeline         = engine Pipeline  + front_end: a dashboard in Jupyter, text in a terminal,
                                              + dashboard() and timeline()

The engine imports no front-end; it calls the ``front_end`` these set (``mpkit.engine.MapFrontEnd``,
``PipelineFrontEnd``), and the widgets are imported only when one is shown.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import engine
from .engine import _default
from .engine._arguments import check_cluster, check_map
from .engine._errors import ResultList
from .engine.process._manager import INIT_TIMEOUT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .widgets._dashboard import Dashboard


def _map_front_end(progress: bool | None):
    """``mpkit.widgets``' choice of bar (imported only now: ``import mpkit`` stays light)."""
    from .widgets._live import map_front_end

    return map_front_end(progress)


def _pipeline_front_end(progress: bool | None, title: str):
    from .widgets._live import pipeline_front_end

    return pipeline_front_end(progress, title)


def _progress_for(progress):
    """``progress=`` of mpkit.map for the default pool (which has no front-end): a factory or False."""
    if progress is None or isinstance(progress, bool):
        return _map_front_end(progress) or False
    return progress


class _PoolType(type):
    """``mpkit.Pool``'s type: a pool that ``Pool(cluster=...)`` made (a Dask pool, the same map/imap
    on another class) is an instance of ``mpkit.Pool`` too, as a user who made it expects."""

    def __instancecheck__(cls, obj) -> bool:
        return super().__instancecheck__(obj) or (cls is Pool and _is_dask_pool(type(obj)))

    def __subclasscheck__(cls, sub) -> bool:
        return super().__subclasscheck__(sub) or (cls is Pool and _is_dask_pool(sub))


def _is_dask_pool(klass) -> bool:
    return _DaskPool is not None and isinstance(klass, type) and issubclass(klass, _DaskPool)


class Pool(engine.Pool, metaclass=_PoolType):
    __doc__ = engine.Pool.__doc__ + """
    ``progress=`` of its maps shows a bar by default under IPython and Jupyter (``mpkit.widgets``);
    the engine's ``mpkit.engine.Pool`` shows none unless given a factory.

    ``cluster=`` (a ``distributed.Client``, a scheduler address, or ``"local"``; default: what
    :func:`use` or ``MPKIT_CLUSTER`` set, else none) runs the pool on a Dask cluster instead of
    local processes: ``Pool(cluster=...)`` is then a ``mpkit.engine.dask.Pool``, with the same
    map/imap (see its docstring for what differs).
    """
    front_end = staticmethod(_map_front_end)

    def __new__(cls, *args, cluster: Any = None, **kwargs):
        cluster = _default.cluster_for(cluster)
        if cluster is None:
            return super().__new__(cls)
        check_cluster(cluster, kwargs.get("start_method"))
        local_only = sorted(set(kwargs) - {"init"})
        if local_only:
            raise TypeError(f"{', '.join(local_only)} {'is' if len(local_only) == 1 else 'are'} about local "
                            f"worker processes, not a Dask cluster (cluster={cluster!r}). Fix: leave "
                            f"{'it' if len(local_only) == 1 else 'them'} out, or leave out cluster=.")
        return _dask_pool_class()(*args, cluster=cluster, **kwargs)

    def __init__(self, *args, cluster: Any = None, **kwargs):
        super().__init__(*args, **kwargs)


def _dask_pool_class():
    """``mpkit.engine.dask.Pool`` with mpkit.Pool's progress bar (Dask imported only now)."""
    global _DaskPool
    if _DaskPool is None:
        dask = _default.dask_backend()
        _DaskPool = type("Pool", (dask.Pool,), {"front_end": staticmethod(_map_front_end),
                                                "__module__": __name__, "__doc__": dask.Pool.__doc__})
    return _DaskPool


_DaskPool = None


class Pipeline(engine.Pipeline):
    __doc__ = engine.Pipeline.__doc__ + """

    A blocking ``run()`` shows a live dashboard in Jupyter, or a status line in a terminal;
    :meth:`dashboard` and :meth:`timeline` show it on demand.
    """
    front_end = staticmethod(_pipeline_front_end)

    def dashboard(self) -> Dashboard:
        """A live ipywidgets panel of this pipeline; shown by the runs and services that follow.
        When the run or service it shows ends, it becomes a static HTML summary (kept in the saved
        notebook) and its widgets are closed."""
        from .widgets._live import dashboard_for

        return dashboard_for(self)

    def timeline(self) -> Figure:
        """A matplotlib figure of queue depth and throughput per stage over the last run."""
        from .widgets._timeline import timeline

        return timeline(self.history())


def map(fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
        ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
        init: Callable[[], Any] | None = None, init_timeout: float | None = None,
        progress: bool | None = None, start_method: str | None = None,
        max_tasks_per_child: int | None = None, cluster: Any = None) -> ResultList:
    """Apply ``fn`` to every item in worker processes and return the results as a list.

    - ``fn`` may be defined in a notebook cell: it is sent to the workers by value (cloudpickle).
    - ``workers``: processes to use (default: the CPUs available). The pool stays warm between calls.
    - ``chunksize``: items per message; ``"auto"`` measures the work and sizes chunks to ~20 ms.
    - ``ordered``: results in input order (default) or in the order they finish.
    - ``on_error``: ``"raise"`` the first error with the worker's traceback and the item;
      ``"skip"`` or ``"collect"`` return the successes, with ``.failures`` listing
      ``Failure(index, item, exception)`` for the rest.
    - ``retries``: attempts to repeat an item after an exception, a crash of its worker, or a timeout.
    - ``timeout``: seconds an item may run; past it its worker is killed and replaced.
    - ``init``: called once in each worker process before its first item (load a model there).
      Globals it sets are the globals ``fn`` reads in that worker.
    - ``init_timeout``: seconds a new worker may spend in ``init`` (default 300).
    - ``progress``: a progress bar; by default shown in IPython and Jupyter, not in scripts.
    - ``start_method``: ``"forkserver"`` (Linux default) or ``"spawn"``; never ``"fork"`` in a kernel.
    - ``max_tasks_per_child``: replace each worker by a fresh process after this many items (a
      library that leaks memory); no item is lost or re-run for it.
    - ``cluster``: run on a Dask cluster instead: a ``distributed.Client``, a scheduler address
      (``"tcp://127.0.0.1:8786"``) or ``"local"``; :func:`use` or ``MPKIT_CLUSTER`` set the default.
    """
    __tracebackhide__ = True
    check_map(fn, workers=workers, chunksize=chunksize, ordered=ordered, on_error=on_error, retries=retries,
              timeout=timeout, progress=progress, init=init, start_method=start_method)
    check_cluster(_default.cluster_for(cluster), start_method)
    pool = _default.acquire(workers, init, start_method, cluster)  # held until the map ends: see _default
    try:
        _set_init_timeout(pool, init_timeout)
        return pool.map(fn, items, workers=workers, chunksize=chunksize, ordered=ordered, on_error=on_error,
                        retries=retries, timeout=timeout, progress=_progress_for(progress),
                        max_tasks_per_child=max_tasks_per_child)
    finally:
        _default.release(pool)


def imap(fn: Callable, items: Iterable, *, workers: int | None = None, chunksize: int | str = "auto",
         ordered: bool = True, on_error: str = "raise", retries: int = 0, timeout: float | None = None,
         init: Callable[[], Any] | None = None, init_timeout: float | None = None,
         progress: bool | None = None, start_method: str | None = None,
         max_tasks_per_child: int | None = None, cluster: Any = None) -> Iterator:
    """Like :func:`map`, but yield results as they come, taking items only as workers need them.

    Memory stays flat on an endless generator. With ``on_error="collect"`` a failed item yields
    its ``Failure`` in place of a result; with ``"skip"`` it yields nothing.
    """
    __tracebackhide__ = True
    check_map(fn, workers=workers, chunksize=chunksize, ordered=ordered, on_error=on_error, retries=retries,
              timeout=timeout, progress=progress, init=init, start_method=start_method)
    check_cluster(_default.cluster_for(cluster), start_method)
    pool = _default.acquire(workers, init, start_method, cluster)
    try:
        _set_init_timeout(pool, init_timeout)
        results = pool.imap(fn, items, workers=workers, chunksize=chunksize, ordered=ordered,
                            on_error=on_error, retries=retries, timeout=timeout,
                            progress=_progress_for(progress), max_tasks_per_child=max_tasks_per_child)
    except BaseException:
        _default.release(pool)
        raise
    return _Leased(results, pool)


def _set_init_timeout(pool, init_timeout: float | None) -> None:
    """init_timeout= of a local pool; a Dask pool runs init in a task (timeout= does not cover it)."""
    if hasattr(pool, "set_init_timeout"):
        pool.set_init_timeout(INIT_TIMEOUT if init_timeout is None else init_timeout)
    elif init_timeout is not None:
        raise ValueError(f"init_timeout={init_timeout!r} bounds how long a local worker process may spend in "
                         f"init=; on a Dask cluster ({pool.where}) init= runs inside the first task of each "
                         "worker, which nothing bounds but timeout= of the items. Fix: leave init_timeout out "
                         "on a cluster, or run this map without cluster=.")


def use(cluster: Any) -> None:
    """Run every following :func:`map`, :func:`imap` and :class:`Pool` on a Dask cluster (a
    ``distributed.Client``, a scheduler address, or ``"local"``) unless they say otherwise: a whole
    notebook moves with one line. ``use(None)`` goes back to local processes."""
    _default.use(cluster)


class _Leased:
    """An imap's results, holding its pool until they are exhausted, closed or dropped."""

    def __init__(self, results: Iterator, pool):
        self._results, self._pool = results, pool

    def __iter__(self) -> "_Leased":
        return self

    def __next__(self):
        __tracebackhide__ = True
        if self._pool is None:
            raise StopIteration
        try:
            return next(self._results)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop early: the items still running are cancelled, the pool stays warm."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                self._results.close()
            finally:
                _default.release(pool)

    def __del__(self):
        self.close()


def shutdown() -> None:
    """Stop every worker mpkit started, for :func:`map`, :func:`imap` and every open ``Pool``.

    Also done at interpreter exit.
    """
    _default.shutdown()
