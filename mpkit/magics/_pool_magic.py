"""``%%mp_pool``: map a function written in the cell over items, in worker processes.

A thin adapter: parse the line, turn the cell into a module (``_cellmodule``), call ``mpkit.map``.
"""
from __future__ import annotations

import re

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring

from .. import _api
from ._cellmodule import CellError, CellFunction, CellModules, pick_function, register_cell_file

_OPTION = re.compile(r"\s(-[a-zA-Z]\b|--[a-zA-Z][\w-]*)")
_UNDEFINED = re.compile(r"name '(\w+)' is not defined")
_SHARE_LIST = re.compile(r"(--share[ =]\S*,)\s+(?=\w)")


@magics_class
class PoolMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.cells = CellModules()

    @magic_arguments()
    @kwds(usage="%%%%mp_pool ITEMS [-n WORKERS] [-o OUT] [-f FUNC] [options]")
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
    @argument("--start-method", choices=("forkserver", "spawn"), default=None,
              help="How workers start (default: forkserver on Linux, spawn elsewhere).")
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
        shared = self._shared(args.share)
        header = f"%%mp_pool {line}".strip()
        try:
            module_name, path, tree = self.cells.write(header, cell)
            name = pick_function(tree, args.func)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        register_cell_file(self.shell, path)  # before the import: an error there names the cell too
        module = self.cells.load(module_name)
        for key, value in vars(module).items():
            if not key.startswith("__") and callable(value) and getattr(value, "__module__", None) == module.__name__:
                self.shell.user_ns[key] = value
        fn = CellFunction(module, name, shared)
        try:
            results = _api.map(fn, items, workers=args.workers, chunksize=chunksize, ordered=not args.unordered,
                               on_error=args.on_error, retries=args.retries, timeout=args.timeout,
                               progress=not args.no_progress, start_method=args.start_method)
        except (TypeError, ValueError) as exc:
            if exc.__cause__ is None and not type(exc).__module__.startswith("mpkit"):
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
