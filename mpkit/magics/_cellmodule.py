"""A notebook cell turned into a real, importable module file, so workers import it by name.

    %%mp_pool items            cell text ──► <dir>/mp_cell_<hash>.py ──► import in the kernel
    def f(x): ...                                   │                       (names copied to the
                                                    └──► workers import it   notebook namespace)
                                                         by name: spawn-safe

The module name is a hash of the cell's code, so a cell changed and run again is a new module
that warm workers import afresh; they never run the earlier version. Line 1 of the file is a
comment standing for the magic line, so line numbers in tracebacks are the cell's own.

The folder (``mpkit-cells-<kernel pid>-*`` in the temp dir) goes with the kernel: at exit, on
SIGTERM (``_sigterm``), and, after a SIGKILL or a crash, at the next start, which removes the
folders of kernels that no longer run.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from ..engine import MpkitWarning, _sigterm
from ._share import SharedValues, free_bytes

_PREFIX = "mpkit-cells-"
_FOLDER = re.compile(re.escape(_PREFIX) + r"(\d+)-")


class CellError(ValueError):
    """The cell cannot be used: a syntax error, or no function to run. The message says which."""


class CellModules:
    """Writes cells as modules into a temporary folder that lives as long as this object."""

    def __init__(self) -> None:
        sweep_stale_folders()
        self._dir = tempfile.TemporaryDirectory(prefix=f"{_PREFIX}{os.getpid()}-")
        self.path = self._dir.name
        _sigterm.chain(self._dir.cleanup)
        if self.path not in sys.path:
            sys.path.append(self.path)

    def write(self, header: str, code: str) -> tuple[str, str, ast.Module]:
        """Write the cell as a module file; returns its module name, file path and syntax tree."""
        source = f"# {header}\n{code}"
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            bad = (exc.text or "").strip()
            raise CellError(f"syntax error in the cell at line {exc.lineno}: {exc.msg}"
                            + (f": {bad}" if bad else "") + ". Fix that line and run the cell again.") from None
        name = "mp_cell_" + hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
        file = Path(self.path, name + ".py")
        if not file.exists():
            file.write_text(source, encoding="utf-8")
        return name, str(file), tree

    def write_named(self, name: str, header: str, code: str) -> tuple[str, ast.Module]:
        """Write the cell as module ``name`` (``%%mp_module``), replacing an earlier version."""
        source = f"# {header}\n{code}"
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise CellError(f"syntax error in the cell at line {exc.lineno}: {exc.msg}. Fix that line "
                            "and run the cell again.") from None
        file = Path(self.path, name + ".py")
        file.write_text(source, encoding="utf-8")
        return str(file), tree

    def load(self, name: str) -> ModuleType:
        """Import a module written by :meth:`write` (again, if an earlier folder held it)."""
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None) == str(Path(self.path, name + ".py")):
            return module
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def close(self) -> None:
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(self.path):
                del sys.modules[name]
        if self.path in sys.path:
            sys.path.remove(self.path)
        self._dir.cleanup()


def sweep_stale_folders(tmp: str | None = None) -> list[str]:
    """Remove this user's cell-module folders whose kernel no longer runs (killed with SIGKILL,
    crashed); return their paths. A folder whose pid runs again as a newer process is stale too."""
    removed = []
    tmp = tmp or tempfile.gettempdir()
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return removed
    for entry in entries:
        match = _FOLDER.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid():
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or _runs_since(pid, info.st_mtime):
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _runs_since(pid: int, moment: float) -> bool:
    """True if process ``pid`` runs and started before ``moment`` (so it may own a folder made then)."""
    try:
        return psutil.Process(pid).create_time() <= moment + 1.0
    except psutil.Error:
        return False


def top_level_functions(tree: ast.Module) -> list[str]:
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def pick_function(tree: ast.Module, name: str | None) -> str:
    """The function to map: ``name`` if given, else the last one the cell defines."""
    functions = top_level_functions(tree)
    if name is None:
        if not functions:
            raise CellError("this cell defines no function to map. Write `def f(item): ...` at the top "
                            "level of the cell (the last one is used), or name one with -f NAME.")
        return functions[-1]
    if name not in functions:
        known = ", ".join(functions) or "none"
        raise CellError(f"-f {name}: no function named {name!r} at the top level of this cell "
                        f"(functions defined here: {known}).")
    return name


def load_cell_function(module_name: str, function: str, shared: dict[str, Any]):
    """Import a cell module (in a worker), set the shared globals, return the function."""
    module = importlib.import_module(module_name)
    module.__dict__.update(shared)
    segment = getattr(shared, "segment", None)
    if segment is not None:  # numpy data in the globals points into it: keep it mapped
        module.__dict__["__mpkit_shared_segment__"] = segment
    return getattr(module, function)


class CellFunction:
    """A cell's function, pickled as (module name, function name, shared globals).

    A worker unpickles it by importing the cell's module, so the function is found by name (no
    code travels by value) and ``--share`` values land in that module's globals. Large values
    travel once, through shared memory (``_share``), made at the first pickling; call
    :meth:`release` when the map is over.
    """

    def __init__(self, module: ModuleType, function: str, shared: dict[str, Any]):
        self.module_name = module.__name__
        self.function = function
        self.shared = shared
        self.__qualname__ = self.__name__ = function
        module.__dict__.update(shared)
        self._fn = getattr(module, function)
        self._segment: SharedValues | None = None

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def release(self) -> None:
        """Free the shared-memory copy of the shared values (the map that used them is over)."""
        if self._segment is not None:
            self._segment.release()
            self._segment = None

    def __reduce__(self):
        shared: Any = self.shared
        if self._segment is None and shared and SharedValues.worth_it(shared):
            try:
                self._segment = SharedValues(shared)
            except OSError as exc:  # no room in /dev/shm: sent with the function, to each worker
                _no_room_warning(shared, exc)
        if self._segment is not None:
            shared = self._segment
        return load_cell_function, (self.module_name, self.function, shared)


def _no_room_warning(shared: dict[str, Any], exc: OSError) -> None:
    free = free_bytes()
    room = f"{free / 1e6:.0f} MB free" if free is not None else "no room"
    warnings.warn(f"--share {', '.join(shared)}: these values do not fit in shared memory (/dev/shm has {room}: "
                  f"{exc.strerror or exc}), so they are sent with the function, a copy to each worker. Results are "
                  "right; memory and start-up cost more. Fix: give the container a larger /dev/shm (docker run "
                  "--shm-size=2g, or a tmpfs mount), or share less.", MpkitWarning, stacklevel=2)


def register_cell_file(shell, path: str) -> None:
    """Make tracebacks name ``path`` as IPython names the running cell: ``Cell In[7], line 3``."""
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if names is None:
        return
    number = shell.execution_count
    frame = sys._getframe(1)
    while frame is not None:  # the cell that called the magic is a frame up the stack
        if frame.f_code.co_filename in names:
            number = names[frame.f_code.co_filename]
            break
        frame = frame.f_back
    names[path] = number
