"""Magics for modules, pipelines and processes: ``%%mp_module``, ``%mp_dashboard``, ``%mp_ps``,
``%mp_stop``. Thin adapters: parse, then one call into the engine or a front-end."""
from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .. import shutdown
from ..engine import Pipeline, default_pool, live_pipelines, live_pools
from ..engine._default import dask_pools
from ..engine._usage import USAGE_INTERVAL, Usage, WorkerUsage
from ..widgets import _format as fmt
from ._cellmodule import CellError, register_cell_file


#: Seconds %mp_ps watches the workers no snapshot has read yet (a pool's: it keeps no readings),
#: to give their CPU in the unit a pipeline's snapshot gives it: a share of one core. Long enough
#: for a busy worker to show near 100%, short enough that the listing does not keep one waiting.
CPU_WINDOW = 0.25


def _usage_text(usage: WorkerUsage | None) -> str:
    """One worker's CPU and memory, as every row of %mp_ps writes them; nothing without a reading."""
    if usage is None:
        return ""
    return f"  cpu {fmt.cpu(usage.cpu_percent)} of a core  mem {fmt.memory(usage.rss)}"


def _worker_row(wid: int, pid: int, state: str, usage: WorkerUsage | None, indent: int = 4) -> str:
    """``worker 1  pid 4242  busy  cpu 98% of a core  mem 85 MB``; a pid not known yet (a Dask
    worker no task ran on) is said so, with no reading."""
    if not pid:
        return f"{' ' * indent}worker {wid}  pid not known yet  {state}"
    return f"{' ' * indent}worker {wid}  pid {pid}  {state}{_usage_text(usage)}"


def _read_usage(listings: dict[str, Callable[[], list[tuple[int, int, str]]]]) -> dict[int, WorkerUsage]:
    """``{pid: reading}`` of the workers of ``listings`` (as a pipeline's snapshot reads them,
    ``_usage.Usage``), CPU over one CPU_WINDOW for all at once."""
    if not listings:
        return {}
    usage = Usage()
    usage.sample(0.0, listings)                   # the first reading starts every worker's window
    time.sleep(CPU_WINDOW)
    return {u.pid: u for readings in usage.sample(USAGE_INTERVAL, listings).values() for u in readings}


def _stage_workers(pipe: Pipeline, stage: str) -> Callable[[], list[tuple[int, int, str]]]:
    """A listing of one running stage's workers, as ``_read_usage`` takes it."""
    return lambda: pipe.workers().get(stage, [])


def _stage_rows(pipe: Pipeline, usage: dict[int, WorkerUsage]) -> list[str]:
    """A running pipeline's stages (time per item, counts) and their workers' CPU and memory, as
    its last snapshot read them (CPU as a share of one core over the last second), else as read
    now (``usage``)."""
    workers = pipe.workers()
    rows: list[str] = []
    for stage in pipe.stats().stages if workers else ():
        if stage.kind != "stage":
            continue
        rows.append(f"    stage {stage.name}  {stage.mean_seconds * 1000:,.1f} ms/item  in {stage.received:,}  "
                    f"out {stage.emitted:,}  queued {stage.queued:,}"
                    + ("" if workers.get(stage.name) else "  (no worker started yet)"))
        read = {u.pid: u for u in stage.usage}
        rows += [_worker_row(wid, pid, state, read.get(pid) or usage.get(pid), indent=8)
                 for wid, pid, state in workers.get(stage.name, ())]
    return rows


@magics_class
class OpsMagics(Magics):
    def __init__(self, shell, cells):
        super().__init__(shell)
        self.cells = cells

    @magic_arguments()
    @argument("name", help="Module name: the cell is importable as NAME, here and in workers.")
    @cell_magic
    def mp_module(self, line: str, cell: str):
        """Make the cell an importable module NAME and import it into the notebook.

            %%mp_module stages
            class Model:
                def __init__(self): self.net = load()      # runs in each worker
                def __call__(self, batch): return self.net(batch)

        Then ``Pipeline().stage(stages.Model)``. Its functions and classes are sent to workers by
        value, so a cell changed and run again is what the next run uses.
        """
        args = parse_argstring(self.mp_module, line)
        name = args.name
        if not name.isidentifier():
            raise UsageError(f"%%mp_module {name}: a module name must be a Python identifier "
                             "(letters, digits, underscores; not starting with a digit)")
        existing = sys.modules.get(name)
        if existing is not None and not str(getattr(existing, "__file__", "")).startswith(self.cells.path):
            raise UsageError(f"%%mp_module {name}: a module named {name!r} is already imported from "
                             f"{getattr(existing, '__file__', 'elsewhere')}; choose another name")
        try:
            path, tree = self.cells.write_named(name, f"%%mp_module {line}".strip(), cell)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        register_cell_file(self.shell, path)
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        module = importlib.import_module(name)
        cloudpickle.register_pickle_by_value(module)
        self.shell.user_ns[name] = module

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="Pipeline name or variable (default: the latest).")
    @line_magic
    def mp_dashboard(self, line: str):
        """Show the live dashboard of a pipeline: by name, by variable, or the one used last."""
        args = parse_argstring(self.mp_dashboard, line)
        from ..widgets._live import dashboard_for

        return dashboard_for(self._pipeline(args.name))

    @line_magic
    def mp_ps(self, line: str = ""):
        """List the pools and pipelines alive in this kernel, with their workers' pids, states, CPU
        (a share of one core: 100% is one core busy) and resident memory."""
        default = default_pool()
        local = [pool for pool in live_pools() if not pool.output.label]   # labelled: a pipeline stage's
        remote = [pool for pool in dask_pools() if not pool.output.label]
        pipes = live_pipelines()
        # one reading for every local worker no snapshot has read: the pools', and the stages' of
        # a pipeline whose snapshot has none yet
        unread = {f"pool {i}": pool.workers for i, pool in enumerate(local)}
        for i, pipe in enumerate(pipes):
            for stage in pipe.stats().stages if pipe.state == "running" else ():
                if stage.kind == "stage" and not stage.usage:
                    unread[f"pipeline {i} {stage.name}"] = _stage_workers(pipe, stage.name)
        usage = _read_usage(unread)
        rows: list[str] = []
        for pool in local:
            label = "mpkit.map pool" if pool is default else "Pool"
            rows.append(f"{label} ({pool.start_method}, {fmt.plural(pool.size, 'worker')})")
            rows += [_worker_row(wid, pid, state, usage.get(pid)) for wid, pid, state in pool.workers()]
        for pool in remote:
            label = "mpkit.map pool" if pool is default else "Pool"
            rows.append(f"{label} (Dask {pool.where}, {fmt.plural(pool.size, 'thread')})")
            rows += [_worker_row(wid, pid, state, None) for wid, pid, state in pool.workers()]
        for pipe in pipes:
            rows.append(f"Pipeline {pipe.name!r} ({pipe.state}): {' -> '.join(pipe.stages)}")
            rows += _stage_rows(pipe, usage)
        print("\n".join(rows) if rows else "no mpkit pools or pipelines alive")

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="Pipeline to stop (name or variable).")
    @argument("--all", action="store_true", help="Stop every pipeline service and every pool.")
    @line_magic
    def mp_stop(self, line: str):
        """Stop a pipeline's background service by name, or everything with --all."""
        args = parse_argstring(self.mp_stop, line)
        if args.all:
            for pipe in live_pipelines():
                service = pipe.service
                if service is not None and service.running:
                    service.stop(drain=False, timeout=5)
            shutdown()
            return
        if args.name is None:
            raise UsageError("%mp_stop NAME stops a pipeline service; %mp_stop --all stops everything")
        pipe = self._pipeline(args.name)
        service = pipe.service
        if service is None or not service.running:
            raise UsageError(f"pipeline {pipe.name!r} has no running service (a blocking run stops "
                             "with the kernel's interrupt)")
        service.stop(drain=False, timeout=5)

    def _pipeline(self, name: str | None) -> Pipeline:
        """A notebook variable holding a pipeline, else the pipeline of that name (running ones
        first, then the one started last); with no name, the one started last."""
        pipes = live_pipelines()
        value = self.shell.user_ns.get(name) if name else None
        if isinstance(value, Pipeline):
            return value
        named = [p for p in pipes if name is None or p.name == name]
        if not named:
            if name is None:
                raise UsageError("no pipeline in this kernel yet; build one with mpkit.Pipeline(...)")
            known = ", ".join(sorted({repr(p.name) for p in pipes})) or "none"
            raise UsageError(f"no pipeline named {name!r} (pipelines alive: {known})")

        def recency(p: Pipeline):
            return (p.state == "running", p.started or 0.0)

        return max(named, key=recency)
