"""Checks of what users pass to ``map``, ``imap``, ``Pool`` and ``Pipeline``: one paragraph per mistake.

    mpkit.map(fn, items, timeout="5")  ──► check_map() ──► TypeError: what was given, what is
    Pool(...) / pool.imap(...)          ──► check_*()      accepted, and the fix, with the values
    Pipeline.stage / batch / run / start

Every check runs at the call, before a process starts or an item is taken (``imap`` too: not at
the first ``next()``). A value of the wrong kind raises ``TypeError``, one of the right kind but
out of range ``ValueError``, as Python's own functions do. ``bool`` is an ``int`` in Python, so
``workers=True`` would silently mean one worker: it is refused wherever a count is expected.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
import multiprocessing as mp
import threading
from numbers import Real
from typing import Any, Callable

from ._errors import _short_repr

#: What ``on_error=`` takes: raise the first error, or return the results with the failures listed.
ON_ERROR = ("raise", "skip", "collect")


def _given(name: str, value: Any) -> str:
    """``timeout='5' (a str)``: the argument as the user wrote it, with its type."""
    return f"{name}={_short_repr(value, 60)} (a {type(value).__name__})"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _cpus() -> int:
    from .process._pool import default_workers

    return default_workers()


def check_workers(workers: Any, name: str = "workers", optional: bool = True) -> None:
    """A number of worker processes: a whole number >= 1 (or None, for one per CPU)."""
    if workers is None and optional:
        return
    if _is_count(workers) and workers >= 1:
        return
    accepted = (f"{name}= takes a whole number of processes >= 1"
                + (f", or None for one per CPU ({_cpus()} here)" if optional else ""))
    if isinstance(workers, bool):
        raise TypeError(f"{_given(name, workers)} is not a number of processes (True would count as 1); "
                        f"{accepted}. Fix: {name}={_cpus()}" + (", or leave it out." if optional else "."))
    if _is_count(workers):
        raise ValueError(f"{name}={workers} leaves no process to run the items; {accepted}. "
                         f"Fix: {name}=1 or more.")
    fix = f"{name}=int({name})" if isinstance(workers, Real) else f"{name}={_cpus()}"
    raise TypeError(f"{_given(name, workers)} is not a whole number; {accepted}. Fix: {fix}.")


def check_count(value: Any, name: str, what: str, minimum: int, example: int) -> None:
    """A whole number >= ``minimum`` (retries, maxsize, max_size): not a bool, not a float."""
    if _is_count(value) and value >= minimum:
        return
    accepted = f"{name}= is {what}: a whole number >= {minimum}"
    if _is_count(value):
        raise ValueError(f"{name}={value} is below {minimum}; {accepted}. Fix: {name}={example}.")
    raise TypeError(f"{_given(name, value)} is not a whole number; {accepted}. Fix: {name}={example}.")


def check_seconds(value: Any, name: str, what: str, *, zero: bool = False, none: str | None = None,
                  maximum: float | None = None) -> None:
    """A number of seconds > 0 (>= 0 with ``zero``), or None when ``none`` says what None means;
    at most ``maximum`` where the value ends up in a blocking wait (which refuses larger ones)."""
    if value is None and none is not None:
        return
    ok_number = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok_number and maximum is not None and value > maximum:
        raise ValueError(f"{name}={value!r} is more than this platform can wait ({maximum:.0f} s); {name}= "
                         f"takes {what}. Fix: {name}=86400 (a day) or any smaller number of seconds.")
    if ok_number and (value > 0 or (zero and value == 0)):
        return
    bound = ">= 0" if zero else "greater than 0"
    accepted = f"{name}= takes {what}, a number {bound}" + (f", or None for {none}" if none else "")
    if ok_number:
        raise ValueError(f"{name}={value!r} is not {bound}; {accepted}. Fix: "
                         + (f"{name}=None, or " if none else "") + f"a positive number such as {name}=60.")
    fix = f"{name}=60"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if number > 0 or (zero and number == 0):
                fix = f"{name}={value.strip()} (a number, without quotes)"
    raise TypeError(f"{_given(name, value)} is not a number; {accepted}. Fix: {fix}.")


def check_flag(value: Any, name: str, meaning: str) -> None:
    """A plain True or False: ``ordered="no"`` is a non-empty string, which Python counts as true."""
    if isinstance(value, bool):
        return
    truth = "true" if value else "false"
    raise TypeError(f"{_given(name, value)} is not True or False (Python would count it as {truth}); "
                    f"{name}= takes {meaning}. Fix: {name}=True or {name}=False.")


def check_on_error(on_error: Any) -> None:
    if isinstance(on_error, str) and on_error in ON_ERROR:
        return
    close = difflib.get_close_matches(on_error, ON_ERROR, n=1) if isinstance(on_error, str) else []
    fix = f"on_error={close[0]!r}" if close else "on_error='skip' to carry on past failures"
    raise ValueError(f"on_error must be one of 'raise', 'skip', 'collect', not {_given('', on_error)[1:]}: 'raise' "
                     "raises the first error (the default), 'skip' returns the results of the other items, "
                     "'collect' does too and lists the failed ones in .failures of the result. "
                     f"Fix: {fix}.")


def check_chunksize(chunksize: Any, timeout: Any = None) -> None:
    accepted = ("chunksize= takes 'auto' (chunks sized from the measured work, the default) or a whole "
                "number of items >= 1 sent to a worker in one message")
    if not (isinstance(chunksize, str) and chunksize == "auto"):
        if not _is_count(chunksize):
            raise TypeError(f"{_given('chunksize', chunksize)} is neither 'auto' nor a whole number; "
                            f"{accepted}. Fix: chunksize='auto'.")
        if chunksize < 1:
            raise ValueError(f"chunksize={chunksize} would send no items; {accepted}. Fix: chunksize='auto'.")
    if timeout is not None and chunksize not in ("auto", 1):
        raise ValueError(f"timeout={timeout!r} bounds each item, so mpkit cuts the chunks itself (one "
                         f"item per message on local processes, timed item by item on Dask), but "
                         f"chunksize={chunksize!r} asks for {chunksize} per message. Fix: drop chunksize= "
                         "(or drop timeout=).")


def check_progress(progress: Any, factory: bool = True) -> None:
    """True (a bar), False, None (a bar under IPython only), or a factory (description, total) -> bar."""
    if progress is None or isinstance(progress, bool) or (factory and callable(progress)):
        return
    accepted = ("progress= takes True (a progress bar), False (none), or None (a bar in IPython and "
                "Jupyter only, the default)" + (", or a factory (description, total) -> bar" if factory else ""))
    raise TypeError(f"{_given('progress', progress)} is none of these; {accepted}. "
                    f"Fix: progress={bool(progress)}.")


def check_start_method(start_method: Any) -> None:
    if start_method is None:
        return
    methods = mp.get_all_start_methods()
    if isinstance(start_method, str) and start_method in methods:
        return
    raise ValueError(f"{_given('start_method', start_method)} is not a start method this machine offers; "
                     f"start_method= takes one of {', '.join(map(repr, methods))}, or None for the default "
                     "(forkserver on Linux, spawn elsewhere). Fix: leave it out.")


def check_cluster(cluster: Any, start_method: Any = None) -> None:
    """``cluster=``: a distributed.Client, a scheduler address, "local", or None (checked without
    importing Dask: a Client is known by its class)."""
    if cluster is None:
        return
    is_client = any(k.__module__.startswith("distributed") and k.__name__ == "Client" for k in type(cluster).__mro__)
    if not is_client and not (isinstance(cluster, str) and (cluster == "local" or "://" in cluster or ":" in cluster)):
        raise TypeError(f"{_given('cluster', cluster)} is not a cluster; cluster= takes a distributed.Client, "
                        "a scheduler address such as 'tcp://127.0.0.1:8786', 'local' (a Dask cluster on this "
                        "machine) or None (worker processes here, the default). Fix: cluster='local'.")
    if start_method is not None:
        raise ValueError(f"start_method={start_method!r} and cluster= were both given: a start method is how "
                         "local worker processes start, and a Dask cluster starts its own. Fix: leave out "
                         "start_method=.")


def _name_of(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or _short_repr(fn, 60)


def _short_name(fn: Any) -> str:
    """How the user calls ``fn`` in their code: its name, or ``fn`` for an object or a lambda."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", "fn")
    return name if name.isidentifier() else "fn"


def _called(fn: Any) -> Any:
    """What calling ``fn`` runs: the function itself, or a callable object's ``__call__``."""
    if inspect.isroutine(fn) or isinstance(fn, type):
        return fn
    return getattr(type(fn), "__call__", fn)


def check_function(fn: Any, what: str = "fn", *, generators: bool = False) -> None:
    """A plain callable a worker can call per item (or per batch): not a coroutine function, and
    not a generator function unless its yields are what the caller collects (``generators``)."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable (a function, a class, or an object with __call__) to "
                        f"call on each item, not {type(fn).__name__} {_short_repr(fn, 60)}. Fix: pass the "
                        "function itself, without calling it (f, not f(x)).")
    runs = (fn, _called(fn))  # inspect sees through functools.partial; a callable object's __call__
    name = _name_of(fn)
    if any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in runs):
        raise TypeError(f"{what} {name} is an async function (async def): a worker calls it as a plain "
                        "function, so each call would only create a coroutine and nothing would run. "
                        "mpkit does not run coroutines. Fix: wrap it in a plain function that runs it, "
                        f"def run_one(item): return asyncio.run({_short_name(fn)}(item)), "
                        "and map run_one.")
    if any(inspect.isgeneratorfunction(f) for f in runs) and not generators:
        raise TypeError(f"{what} {name} is a generator function (it yields): each call returns a generator "
                        "object, which cannot be pickled to send it back from the worker, so every item "
                        "would fail. Fix: return a list instead (return list(...)), or use "
                        "Pipeline().stage(fn, many=True), where each yielded value becomes an item.")


def check_init(init: Any) -> None:
    if init is None:
        return
    if not callable(init):
        raise TypeError(f"{_given('init', init)} is not callable; init= takes a function called with no "
                        "arguments once in each worker before its first item (load a model there), or "
                        "None. Fix: pass the function itself, init=setup, not init=setup().")
    check_function(init, "init")


def check_map(fn: Any, *, workers: Any, chunksize: Any, ordered: Any, on_error: Any, retries: Any,
              timeout: Any, progress: Any, init: Any = None, start_method: Any = None,
              progress_factory: bool = True) -> None:
    """Everything ``map`` and ``imap`` take (``mpkit.map``'s and a ``Pool``'s)."""
    check_function(fn)
    check_workers(workers)
    check_run(chunksize, on_error, retries, timeout)
    check_flag(ordered, "ordered", "True (results in input order, the default) or False (in the order "
               "they finish)")
    check_progress(progress, progress_factory)
    check_init(init)
    check_start_method(start_method)


def check_run(chunksize: Any, on_error: Any, retries: Any, timeout: Any) -> None:
    """What one run of a function over items takes: a map's, or a pipeline stage's."""
    check_on_error(on_error)
    check_count(retries, "retries", "how many more times an item is tried after an error, a crash of "
                "its worker or a timeout", 0, 1)
    check_seconds(timeout, "timeout", "the seconds one item may run before its worker is stopped",
                  none="no limit")
    check_chunksize(chunksize, timeout)


def check_pool(workers: Any, start_method: Any, init: Any, idle_timeout: Any) -> None:
    check_workers(workers)
    check_start_method(start_method)
    check_init(init)
    check_seconds(idle_timeout, "idle_timeout", "the seconds an idle worker waits for work before it exits",
                  maximum=threading.TIMEOUT_MAX)


def check_stage(fn: Callable, *, workers: Any, name: Any, factory: Any, many: Any, maxsize: Any,
                retries: Any, timeout: Any, batched: bool) -> None:
    """``Pipeline.stage``: a generator function is fine with ``many=True`` (its yields are the
    results) and after ``.batch()`` (its yields are the batch's results, in order)."""
    if many is not None:
        check_flag(many, "many", "True when the stage returns an iterable of results per item, False "
                   "(the default) when it returns one result")
    if factory is not None:
        check_flag(factory, "factory", "True to build fn() once in each worker and call the object, "
                   "False to call fn per item, or None to decide by whether fn is a class")
    if not (factory or isinstance(fn, type)):
        check_function(fn, "the stage function", generators=bool(many) or batched)
    elif isinstance(fn, type) and inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        raise TypeError(f"the stage class {fn.__name__} has an async __call__ (async def): a worker calls its "
                        "object as a plain function, so each call would only create a coroutine. mpkit does "
                        "not run coroutines. Fix: make __call__ a plain def that runs the async code, "
                        "return asyncio.run(self.predict(item)).")
    check_workers(workers, optional=False)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{_given('name', name)} is not a string; name= takes the stage's name as shown "
                        "in stats and the dashboard. Fix: name='resize' (or leave it out).")
    check_count(maxsize, "maxsize", "how many items the stage's input channel holds", 1, 1024)
    check_count(retries, "retries", "how many more times an item is tried after an error, a crash of "
                "its worker or a timeout", 0, 1)
    check_seconds(timeout, "timeout", "the seconds one item (or one batch) may run before its worker is "
                  "stopped", none="no limit")


def check_batch(max_size: Any, max_wait: Any) -> None:
    check_count(max_size, "max_size", "how many items a batch holds at most", 1, 64)
    check_seconds(max_wait, "max_wait", "the seconds a batch waits for more items after its first", zero=True)


def check_pipeline_run(on_error: Any, start_method: Any, ordered: Any = False, progress: Any = None,
                       cluster: Any = None) -> None:
    check_on_error(on_error)
    check_flag(ordered, "ordered", "True (results in input order) or False (in the order they finish, "
               "the default)")
    check_progress(progress, factory=False)
    check_start_method(start_method)
    check_cluster(cluster, start_method)
