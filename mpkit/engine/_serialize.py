"""How objects cross between the notebook and its workers: pickle, with notebook code by value.

    notebook process                                        worker process
    ────────────────                                        ──────────────
    dumps(items)   C pickler; classes and functions of         loads(bytes)
                   __main__ or a cell module by value ────►      classes rebuilt once (tracked)
    dumps(fn)                                                   functions rebuilt with
      a function of __main__ / of a cell module:                globals = ONE namespace per
      its code, and each global it uses with a token ─────►     origin ("__main__": the worker's
      (what the value was when it was sent)                     own __main__; a cell module: a
                                                                module object kept for life)

A notebook's functions share one namespace; so do their copies in a worker. ``init`` setting
``SCALE = 100``, a task appending to a global list, a helper called by both: every function sent
from the notebook reads and writes the same globals there, as in the notebook.

Each global a function uses travels with a token of its value in the notebook. The worker takes
the value only if the token differs from the one it took last time for that name, or the name is
new there. So a global the notebook changed reaches warm workers at the next call, while one the
notebook left alone keeps what ``init`` or earlier tasks made of it there (the latest writer wins).
Plain data goes through the C pickler untouched: the Python hook runs only for objects the C
pickler does not handle itself, and returns at once unless they are classes, functions or
modules, so lists of numbers, strings, dicts or arrays cost what pickle costs
(``benchmarks/bench_serialize.py``).
"""
from __future__ import annotations

import builtins
import copyreg
import dis
import hashlib
import io
import itertools
import pickle
import sys
import types
from functools import lru_cache

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Values up to this size (str, bytes) are their own token; bigger data is hashed.
SMALL_VALUE = 256
_ATOMS = (type(None), bool, int, float, complex)

#: origin name -> the namespace (module dict) of that origin in this process
_namespaces: dict[str, dict] = {}
#: origin name -> {global name -> token of the value last taken from the notebook}
_tokens: dict[str, dict[str, object]] = {}
#: origin name -> the module object standing for a cell module sent by value
_modules: dict[str, types.ModuleType] = {}
_worker_mode = False
_started_with: frozenset = frozenset()  # names in this worker's __main__ when it started
_ABSENT = ("absent",)


def _made_here(origin: str):
    """Whether a name of ``origin``'s namespace was made in this process (and not brought by the
    process's start, as a script's own globals are in a spawn worker's ``__main__``)."""
    if origin == "__main__" and _worker_mode:
        return lambda name: name not in _started_with
    return lambda name: True


def become_worker() -> None:
    """In a worker, functions of the notebook's ``__main__`` live in this process's own
    ``__main__``, so that a task's own pickling of a cell class finds it there too. (In the
    notebook, a function sent back never writes into the user's namespace: each origin gets a
    module of its own.)"""
    global _worker_mode, _started_with
    _worker_mode = True
    _started_with = frozenset(vars(sys.modules["__main__"]))


def dumps(obj) -> bytes:
    """Bytes for ``obj``, with the notebook's classes and functions by value (see the module doc)."""
    with io.BytesIO() as buffer:  # a file, not pickle.dumps: large buffers are written, not regrown
        Pickler(buffer).dump(obj)
        return buffer.getvalue()


#: Buffers (numpy arrays, pandas/Arrow columns, bytearrays) at least this big are kept apart
#: from the pickle by ``pack``, for a backend to move without copying them into a message.
#: Smaller ones cost less to copy than to set apart.
OUT_OF_BAND_BYTES = 1 << 16


class Pickled:
    """One object pickled, its large buffers kept apart (pickle protocol 5, out of band).

    ``data`` is the pickle; ``buffers`` the memory of the large buffers it refers to, in order. A
    Pickled inside a message pickles its buffers as ``PickleBuffer`` objects, so a transport that
    pickles messages with a ``buffer_callback`` sees every one of them, however nested.
    """

    __slots__ = ("data", "buffers")

    def __init__(self, data: bytes, buffers=()):
        self.data, self.buffers = data, tuple(buffers)

    @property
    def nbytes(self) -> int:
        return len(self.data) + sum(memoryview(b).nbytes for b in self.buffers)

    def __reduce__(self):
        data = self.data
        if len(data) >= OUT_OF_BAND_BYTES:  # a large pickle travels out of band too (a chunk of many items)
            data = pickle.PickleBuffer(data)
        return Pickled, (data, tuple(pickle.PickleBuffer(b) for b in self.buffers))

    def __repr__(self) -> str:
        return f"<Pickled {len(self.data)} bytes + {len(self.buffers)} buffers>"


#: ``pack`` looks through a list for large bytes only when its pickle holds at least this much per
#: element: the look costs ~50 ns an element, a quarter of mapping 200,000 trivial tasks (chunks of
#: 25,000 ints, 100 KB each), while a list of big bytes is far above it. One large bytes among
#: thousands of small items goes in band then: a copy through the pipe, not a wrong result.
SCAN_BYTES_PER_ITEM = 256


def pack(obj) -> Pickled:
    """``obj`` pickled as :func:`dumps` does, with buffers of OUT_OF_BAND_BYTES or more set apart.

    ``bytes`` and ``bytearray`` of that size among the elements of a list (a chunk's items, a
    worker's results) are set apart too: the C pickler writes them in band without asking, so a
    pickle that large is looked through for them, and made again if it holds one (a scan of every
    list would cost more than pickling a list of numbers).
    """
    return _bytes_apart(obj, _pack(obj))


def _bytes_apart(obj, pickled: Pickled) -> Pickled:
    """``pickled`` (of ``obj``) made again with the large bytes among a list's elements set apart."""
    if type(obj) is list and len(pickled.data) >= max(OUT_OF_BAND_BYTES, SCAN_BYTES_PER_ITEM * len(obj)) \
            and any(type(x) in _BYTES and len(x) >= OUT_OF_BAND_BYTES for x in obj):
        wrapped: dict[int, _OutOfBand] = {}  # one per object: the same bytes many times go once (memo)
        pickled = _pack([wrapped.setdefault(id(x), _OutOfBand(x))
                         if type(x) in _BYTES and len(x) >= OUT_OF_BAND_BYTES else x for x in obj])
    return pickled


def _pack(obj, file: io.BytesIO | None = None) -> Pickled:
    buffers: list = []
    file = io.BytesIO() if file is None else file
    count = file.add if isinstance(file, _Counting) else None

    def keep_apart(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: copied in band
            return True
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        buffers.append(raw)
        if count is not None:
            count(raw.nbytes)
        return False

    with file:
        Pickler(file, buffer_callback=keep_apart).dump(obj)
        return Pickled(file.getvalue(), buffers)


_BYTES = (bytes, bytearray)


class _OutOfBand:
    """A large ``bytes`` or ``bytearray`` in a list, pickled as a buffer (out of band). It comes
    back as its own type, copied once out of the buffer (a ``bytes`` owns its memory)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return type(self.value), (pickle.PickleBuffer(self.value),)


def unpack(pickled: Pickled):
    """The object back; its large buffers are used in place (arrays point into them)."""
    return pickle.loads(pickled.data, buffers=pickled.buffers)


class Full(Exception):
    """:func:`pack_capped` stopped: the pickle went past its cap (nothing of it is kept)."""


class Items:
    """Items still to be read from an iterator, pickled as a list: the pickler reads each one as it
    comes to it (``read`` keeps them, in order), so a pickle stopped at its cap stops the reading
    too. It unpickles as a plain list. The reading costs two C calls per item, no Python code."""

    __slots__ = ("read", "_source")

    def __init__(self, source):
        self.read: list = []
        self._source = itertools.filterfalse(self.read.append, source)  # append gives None: all pass

    def __reduce__(self):
        return list, (), None, self._source


class _Counting(io.BytesIO):
    """A pickle's file that counts the bytes the pickler writes into it and the buffers it sets
    apart (``nbytes``), and stops it with :class:`Full` past ``cap`` (None: never). The pickler
    writes every 64 KB frame, each large bytes and each buffer set apart as it comes: the count
    costs a call per 64 KB, not one per element."""

    def __init__(self, cap: int | None = None):
        super().__init__()
        self.cap, self.nbytes = cap, 0

    def write(self, data) -> int:
        written = super().write(data)
        self.add(written)
        return written

    def add(self, nbytes: int) -> None:
        self.nbytes += nbytes
        if self.cap is not None and self.nbytes > self.cap:
            raise Full(self.nbytes)


def pack_capped(obj: "list | Items", cap: int) -> Pickled:
    """:func:`pack` of a list, or of :class:`Items`, stopped with :class:`Full` once the pickle
    holds more than ``cap`` bytes, its buffers set apart included (counted as the pickler writes:
    at most 64 KB late)."""
    pickled = _pack(obj, _Counting(cap))
    return _bytes_apart(obj.read if isinstance(obj, Items) else obj, pickled)


def pack_upto(items: list, cap: int) -> tuple[int, Pickled]:
    """The first ``n`` of ``items`` pickled as a list, and ``n``: as many as fit in ``cap`` bytes,
    with the one that goes past (at least one). The pickler is asked for each item in Python, so
    this is for a list known not to fit (:func:`pack_capped` said :class:`Full`)."""
    file = _Counting()
    taken = 0

    def fitting():
        nonlocal taken
        for item in items:
            if taken and file.nbytes > cap:  # the pickler asks one item ahead of what it wrote
                return
            taken += 1
            yield item

    stream = Items(fitting())
    pickled = _bytes_apart(stream.read, _pack(stream, file))
    return taken, pickled


def dumps_code(fn) -> tuple[bytes, bool]:
    """``fn`` pickled, and whether it carries globals of the notebook (code sent by value)."""
    with io.BytesIO() as buffer:
        pickler = Pickler(buffer)
        pickler.dump(fn)
        return buffer.getvalue(), pickler.by_value


def unpicklable_global(fn) -> str | None:
    """The name of a global ``fn`` uses that cannot be pickled, to say which one in an error."""
    code = getattr(fn, "__code__", None)
    globals_ = getattr(fn, "__globals__", None)
    if code is None or globals_ is None:
        return None
    for name in _global_names(code):
        if name in globals_ and not isinstance(globals_[name], (types.FunctionType, type, types.ModuleType)):
            try:
                dumps(globals_[name])
            except Exception:
                return name
    return None
loads = pickle.loads


_CLOUD_REDUCERS = dict(cloudpickle.Pickler.dispatch_table.maps[0])


class Pickler(cloudpickle.Pickler):
    """cloudpickle, with the notebook's functions sharing one namespace on the other side."""

    def __init__(self, file, blobbing: set | None = None, buffer_callback=None):
        # cloudpickle's reducers ahead of copyreg's, as one plain dict (read by the C pickler when
        # it is initialised): cloudpickle's ChainMap is looked up in Python for every object,
        # which makes 10,000 datetimes cost 3x what pickle costs.
        self.dispatch_table = {**copyreg.dispatch_table, **_CLOUD_REDUCERS}
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self._blobbing = set() if blobbing is None else blobbing  # ids being hashed (recursion)
        self._blobs: dict[int, tuple] = {}  # id -> (token, blob): a global used twice is sent once
        self.by_value = False  # some code went by value, with the globals it uses

    def forget(self) -> None:
        """Pickle the next object as if this pickler were new (a pickler kept between objects:
        making one costs more than pickling a small object)."""
        self.clear_memo()
        self._blobs = {}  # globals sent by value are looked at afresh for each object

    def reducer_override(self, obj):
        # Called for every object the C pickler does not handle itself (not for ints, strings,
        # lists, dicts...). Only classes, functions and modules may need more than pickle does;
        # everything else goes straight back to the C pickler.
        if isinstance(obj, (type, types.FunctionType)):
            return super().reducer_override(obj)  # cloudpickle: by reference if importable, else by value
        if isinstance(obj, types.ModuleType) and _module_by_value(obj):
            self.by_value = True
            origin = _origin(vars(obj))
            return _module_namespace, (origin, obj.__name__), \
                (origin, self._globals_state(vars(obj), _public(vars(obj)))), None, None, _set_module_state
        return NotImplemented

    def _dynamic_function_reduce(self, func):  # cloudpickle's hook for functions sent by value
        self.by_value = True
        code = func.__code__
        origin = _origin(func.__globals__)
        closure = None if func.__closure__ is None else tuple(types.CellType() for _ in func.__closure__)
        cells = None if func.__closure__ is None else [_cell_value(c) for c in func.__closure__]
        state = {
            "origin": origin,
            "globals": self._globals_state(func.__globals__, _global_names(code)),
            "cells": cells,
            "attrs": {"__name__": func.__name__, "__qualname__": func.__qualname__,
                      "__module__": func.__module__, "__doc__": func.__doc__,
                      "__defaults__": func.__defaults__, "__kwdefaults__": func.__kwdefaults__,
                      "__annotations__": func.__annotations__, "__dict__": dict(func.__dict__)},
            "submodules": _submodules(code, func.__globals__),
        }
        return types.FunctionType, (code, _Namespace(origin), func.__name__, None, closure), state, \
            None, None, _set_function_state

    def _globals_state(self, namespace: dict, names) -> dict:
        out = {}
        for name in names:
            if name in namespace:
                if name != "__builtins__":
                    out[name] = self._tokened(namespace[name])
            else:  # not (or no longer) a global in the notebook: builtins, or deleted there
                out[name] = _ABSENT, None
        return out

    def _tokened(self, value):
        """(token, value) for a global: the value inline, or its pickled bytes for big data."""
        if isinstance(value, _ATOMS):  # repr: 0.0 and -0.0 are equal, nan is not equal to itself
            return ("v", type(value).__name__, repr(value) if isinstance(value, (float, complex)) else value), value
        if isinstance(value, (str, bytes)) and len(value) <= SMALL_VALUE:
            return ("v", type(value).__name__, value), value
        if isinstance(value, (types.FunctionType, type, types.ModuleType, types.BuiltinFunctionType)) \
                or id(value) in self._blobbing:
            # code and classes: their identity in the notebook says whether they changed
            return ("id", id(value), id(getattr(value, "__code__", None))), value
        known = self._blobs.get(id(value))
        if known is not None:
            return known
        self._blobbing.add(id(value))
        try:
            with io.BytesIO() as buffer:
                Pickler(buffer, self._blobbing).dump(value)
                data = buffer.getvalue()
        finally:
            self._blobbing.discard(id(value))
        # the object's identity too: `CACHE = {}` run again in the notebook is a new value there
        token = ("b", hashlib.blake2b(data, digest_size=16).digest(), id(value))
        self._blobs[id(value)] = out = (token, _Blob(data))
        return out


class _Blob:
    """A global's pickled value, unpickled in the worker only if it is taken."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return _Blob, (self.data,)


class _Namespace:
    """Pickles as "the namespace of this origin", whatever process unpickles it."""

    def __init__(self, origin: str):
        self.origin = origin

    def __reduce__(self):
        return namespace, (self.origin,)


def namespace(origin: str) -> dict:
    """The globals that functions of ``origin`` share in this process, made on first use."""
    ns = _namespaces.get(origin)
    if ns is None:
        if origin == "__main__" and _worker_mode:
            ns = vars(sys.modules["__main__"])
        else:
            ns = vars(types.ModuleType(origin.split("@")[0]))
        ns.setdefault("__builtins__", builtins)
        _namespaces[origin] = ns
        _tokens[origin] = {}
    return ns


def _module_namespace(origin: str, name: str) -> types.ModuleType:
    """A cell module sent by value: one module object per origin, over the shared namespace."""
    module = _modules.get(origin)
    if module is None:
        module = _modules[origin] = _ModuleView(name, namespace(origin))
    return module


class _ModuleView(types.ModuleType):
    """A module whose attributes are the shared namespace of its origin."""

    def __init__(self, origin: str, ns: dict):
        super().__init__(origin)
        object.__setattr__(self, "_ns", ns)

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "_ns")[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None

    def __setattr__(self, name, value):
        object.__getattribute__(self, "_ns")[name] = value


def _set_module_state(module, state) -> None:
    origin, shipped = state
    _take_globals(origin, shipped)


def _set_function_state(func, state) -> None:
    origin = state["origin"]
    _take_globals(origin, state["globals"])
    for cell, value in zip(func.__closure__ or (), state["cells"] or ()):
        if value is not _EMPTY_CELL:
            cell.cell_contents = value
    attrs = state["attrs"]
    func.__dict__.update(attrs.pop("__dict__"))
    for key, value in attrs.items():
        setattr(func, key, value)


def _take_globals(origin: str, shipped: dict) -> None:
    """Take the notebook's value of each global that changed there since this process last took
    it. A name the worker made itself (init, a task) is kept until the notebook changes it; a
    name deleted in the notebook is deleted here too."""
    ns = namespace(origin)
    taken = _tokens[origin]
    made_here = _made_here(origin)
    for name, (token, value) in shipped.items():
        before = taken.get(name)
        taken[name] = token
        if before == token:
            continue  # unchanged in the notebook: keep what init or earlier tasks made of it
        if token == _ABSENT:
            if before is not None and name in ns:
                del ns[name]  # the notebook deleted it
            continue
        if before is None and name in ns and made_here(name):
            continue  # made in this worker (init's globals()["model"] = ...): its value stands
        ns[name] = pickle.loads(value.data) if isinstance(value, _Blob) else value


class _EmptyCell:
    def __reduce__(self):
        return "_EMPTY_CELL"


_EMPTY_CELL = _EmptyCell()


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY_CELL


def _origin(globals_: dict) -> str:
    """The notebook's namespace is one for its life; a cell module run again is a new module, so
    its namespace is told apart by identity (code of the old version keeps the old globals)."""
    name = globals_.get("__name__")
    if name == "__main__":
        return name
    return f"{name if isinstance(name, str) else '<namespace>'}@{id(globals_):x}"


def _public(namespace: dict) -> list[str]:
    return [k for k in namespace if not (k.startswith("__") and k.endswith("__"))]


_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL"})


@lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object (and the code nested in it) uses as globals."""
    names: dict[str, None] = {}
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_OPS:
            names[instruction.argval] = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(_global_names(const)))
    return tuple(names)


def _submodules(code: types.CodeType, globals_: dict) -> list[types.ModuleType]:
    """Submodules the code reaches as attributes of a global module (``os.path``, ``xml.etree``):
    sent by reference so that the worker imports them too."""
    out = []
    attrs = set(_attribute_names(code))
    for name in _global_names(code):
        module = globals_.get(name)
        if isinstance(module, types.ModuleType):
            prefix = module.__name__ + "."
            out += [m for n, m in list(sys.modules.items())
                    if n.startswith(prefix) and n[len(prefix):].split(".")[0] in attrs]
    return out


@lru_cache(maxsize=4096)
def _attribute_names(code: types.CodeType) -> tuple[str, ...]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _attribute_names(const)
    return tuple(names)


def _module_by_value(module: types.ModuleType) -> bool:
    return module.__name__ == "__main__" or module.__name__ in _by_value_modules()


def _by_value_modules() -> set[str]:
    """Modules registered with ``cloudpickle.register_pickle_by_value`` (``%%mp_module`` cells)."""
    return getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", set())
