"""``%%mp_pool``: map a function written in the cell over items, in worker processes.

A thin adapter: parse the line, turn the cell into a module (``_cellmodule``), call ``mpkit.map``.
"""
from __future__ import annotations

import keyword
import math
import re

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring

from .. import _api
from ..engine._arguments import check_function
from ..engine._errors import raised_in_worker
from ._cellmodule import (CellError, CellFunction, CellModules, pick_function, register_cell_file,
                          top_level_functions)

_OPTION = re.compile(r"\s(-[a-zA-Z]\b|--[a-zA-Z][\w-]*)")
_UNDEFINED = re.compile(r"name '(\w+)' is not defined")
_SHARE_LIST = re.compile(r"(--share[ =]\S*,)\s+(?=\w)")


@magics_class
class PoolMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.cells = CellModules()

    @magic_arguments()
    @kwds(usage="%%mp_pool ITEMS [-n WORKERS] [-o OUT] [-f FUNC] [options]")  # shown after a "%"
    @argument("items", nargs="*",
              help="Python expression for the items, evaluated in the notebook (may hold spaces).")
    @argument("-n", "--workers", type=int, default=None, help="Worker processes (default: CPUs).")
    @argument("-o", "--out", default=None, help="Variable to store the results in.")
    @argument("-f", "--func", default=None, help="Function to map (default: the cell's last one).")
    @argument("--unordered", action="store_true", help="Results in the order they finish.")
    @argument("--chunksize", default="auto", help="Items per message to a worker (default: auto).")
    @argument("--on-error", choices=("raise", "skip", "collect"), default="raise",
              help="raise the first error; skip or collect failures (see RESULTS.failures).")
    @argument("--retries", type=int, default=0, help="Attempts after an error, crash or timeout.")
    @argument("--timeout", type=float, default=None, help="Seconds an item may run.")
    @argument("--share", default=None, metavar="NAME[,NAME...]",
              help="Notebook variables sent to the workers as globals of the cell.")
    @argument("--init", default=None, metavar="FUNC",
              help="A function of the cell run once in each worker before its first item (load a "
                   "model there); the globals it sets are the ones the mapped function reads.")
    @argument("--start-method", choices=("forkserver", "spawn"), default=None,
              help="How workers start (default: forkserver on Linux, spawn elsewhere).")
    @argument("--cluster", default=None, metavar="ADDRESS",
              help="Run on a Dask cluster: a scheduler address (tcp://host:8786), 'local', or the name of "
                   "a notebook variable holding a distributed.Client (default: mpkit.use / MPKIT_CLUSTER).")
    @argument("--no-progress", action="store_true", help="No progress bar.")
    @cell_magic
    def mp_pool(self, line: str, cell: str):
        """Map the cell's function over ITEMS in worker processes, with progress and worker output.

            %%mp_pool paths -n 4 -o results
            import pandas as pd
            def rows(path):
                return len(pd.read_excel(path))

        The cell becomes an importable module (spawn-safe); its functions are also defined in
        the notebook. Worker exceptions are raised here with the worker's traceback.
        """
        __tracebackhide__ = True
        expression, args = self._parse(line)
        items = self._evaluate(expression)
        chunksize = args.chunksize if args.chunksize == "auto" else self._int(args.chunksize, "--chunksize")
        self._check_options(args, chunksize)
        shared = self._shared(args.share)
        header = f"%%mp_pool {line}".strip()
        try:
            module_name, path, tree = self.cells.write(header, cell)
            name = pick_function(tree, args.func)
            if args.init is not None and args.init not in top_level_functions(tree):
                raise CellError(f"--init {args.init}: no function named {args.init!r} at the top level of this "
                                f"cell (functions defined here: {', '.join(top_level_functions(tree)) or 'none'}).")
        except CellError as exc:
            raise UsageError(str(exc)) from None
        register_cell_file(self.shell, path)  # before the import: an error there names the cell too
        module = self.cells.load(module_name)
        for key, value in vars(module).items():
            if not key.startswith("__") and callable(value) and getattr(value, "__module__", None) == module.__name__:
                self.shell.user_ns[key] = value
        try:
            check_function(getattr(module, name), f"the cell's function {name}")
        except TypeError as exc:
            raise UsageError(f"%%mp_pool: {exc}") from None
        fn = CellFunction(module, name, shared)
        init = CellFunction(module, args.init, shared) if args.init is not None else None
        try:
            results = _api.map(fn, items, workers=args.workers, chunksize=chunksize, ordered=not args.unordered,
                               on_error=args.on_error, retries=args.retries, timeout=args.timeout, init=init,
                               progress=not args.no_progress, start_method=args.start_method,
                               cluster=self._cluster(args.cluster))
        except (TypeError, ValueError) as exc:
            if not raised_in_worker(exc):
                self._unpicklable_share(shared)  # the function or its globals could not be sent
                if not type(exc).__module__.startswith("mpkit"):
                    raise UsageError(str(exc)) from None
            self._hint_share(exc)
            raise
        except KeyboardInterrupt as exc:
            if args.out and hasattr(exc, "results"):
                self.shell.user_ns[args.out] = exc.results
            raise
        except Exception as exc:
            self._hint_share(exc)
            raise
        finally:
            fn.release()  # the shared-memory copy of --share values
        for failure in getattr(results, "failures", ()):
            self._hint_share(failure.exception)
        if args.out:
            self.shell.user_ns[args.out] = results
            return None
        return results

    def _cluster(self, name: str | None):
        """--cluster: a notebook variable's value (a Client) if there is one by that name, else the text."""
        if name is not None and name.isidentifier() and name in self.shell.user_ns:
            return self.shell.user_ns[name]
        return name

    @staticmethod
    def _check_options(args, chunksize) -> None:
        """The numbers argparse let through: one line each, naming the flag and the fix."""
        if args.out is not None and not (args.out.isidentifier() and not keyword.iskeyword(args.out)):
            raise UsageError(f"-o {args.out}: the results are stored in the notebook variable named by -o, "
                             f"and {args.out!r} is not a valid Python variable name (letters, digits and _, "
                             "not starting with a digit, not a keyword such as 'for'). Fix: -o results.")
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"-n {args.workers}: the number of worker processes must be 1 or more. "
                             "Fix: -n 4, or leave -n out for one per CPU.")
        if args.retries < 0:
            raise UsageError(f"--retries {args.retries}: the number of extra attempts per item must be 0 or "
                             "more. Fix: --retries 1, or leave it out for none.")
        if args.timeout is not None and not (args.timeout > 0 and not math.isnan(args.timeout)):
            raise UsageError(f"--timeout {args.timeout:g}: the seconds one item may run must be more than 0. "
                             "Fix: --timeout 60, or leave it out for no limit.")
        if args.timeout is not None and chunksize not in ("auto", 1):
            raise UsageError(f"--timeout {args.timeout:g} bounds each item, so items are sent one at a time, "
                             f"but --chunksize {chunksize} asks for {chunksize} per message. Fix: drop "
                             "--chunksize (or --timeout).")

    @staticmethod
    def _unpicklable_share(shared: dict) -> None:
        """The function could not be pickled: if a --share value is why, say which one."""
        for name, value in shared.items():
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                raise UsageError(
                    f"--share {name}: the notebook variable {name!r} ({type(value).__name__}) cannot be "
                    f"pickled to send it to the workers: {type(exc).__name__}: {exc}. Fix: share plain data "
                    f"(numbers, strings, lists, dicts, arrays, DataFrames), or create the {type(value).__name__} "
                    "inside the cell's function, in each worker.") from None

    def _hint_share(self, exc: BaseException) -> None:
        """A NameError in a worker for a notebook variable: say that workers need --share for it."""
        match = _UNDEFINED.search(str(exc)) if isinstance(exc, NameError) else None
        if match and match.group(1) in self.shell.user_ns:
            exc.add_note(f"{match.group(1)!r} is a notebook variable, and workers do not see the "
                         f"notebook's variables: pass it with --share {match.group(1)}")

    def _parse(self, line: str):
        """Split ``EXPR OPTIONS``: the expression ends where the first option flag starts."""
        line = line.strip()
        for match in _OPTION.finditer(" " + line):
            head = line[: match.start()].strip()
            if self._compiles(head):
                return head, self._options(line[match.start():])
        if line.startswith("-"):
            if line.split()[0] in ("-h", "--help"):
                raise UsageError(self.mp_pool.__doc__)
            raise UsageError("%%mp_pool needs the items first: %%mp_pool ITEMS [options], e.g. "
                             "%%mp_pool paths -n 4 -o results")
        first = _OPTION.search(" " + line)
        if first is not None:
            raise UsageError(f"%%mp_pool: the items expression {line[:first.start()].strip()!r} is not "
                             "valid Python. Fix it; the options come after it.")
        return line, self._options("")

    def _options(self, text: str):
        while _SHARE_LIST.search(text):  # --share a, b: the names are one list
            text = _SHARE_LIST.sub(r"\1", text)
        args = parse_argstring(self.mp_pool, text)
        if args.items:
            raise UsageError(f"%%mp_pool: unexpected text after the options: {' '.join(args.items)!r}. "
                             "Put the items expression first, then the options.")
        return args

    @staticmethod
    def _compiles(expression: str) -> bool:
        try:
            compile(expression, "<items>", "eval")
            return True
        except SyntaxError:
            return False

    def _evaluate(self, expression: str):
        if not expression:
            raise UsageError("%%mp_pool needs the items to map over: %%mp_pool ITEMS [options], e.g. "
                             "%%mp_pool paths -n 4 -o results")
        if not self._compiles(expression):
            raise UsageError(f"%%mp_pool: the items expression {expression!r} is not valid Python.")
        try:
            items = self.shell.ev(expression)
        except Exception as exc:
            raise UsageError(f"%%mp_pool: evaluating the items {expression!r} failed: "
                             f"{type(exc).__name__}: {exc}") from None
        try:
            iter(items)
        except TypeError:
            raise UsageError(f"%%mp_pool: the items {expression!r} evaluate to {type(items).__name__} "
                             f"{items!r:.60}, which is not iterable. Give a list, range, generator or "
                             "other iterable.") from None
        return items

    def _shared(self, names: str | None) -> dict:
        if not names:
            return {}
        shared = {}
        for name in (n.strip() for n in names.split(",")):
            if not name:
                continue
            if name not in self.shell.user_ns:
                raise UsageError(f"--share {name}: there is no variable {name!r} in the notebook. "
                                 "Define it before running this cell, or check the spelling.")
            shared[name] = self.shell.user_ns[name]
        return shared

    @staticmethod
    def _int(text: str, flag: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise UsageError(f"{flag} takes 'auto' or a positive whole number, not {text!r}")
        return value
