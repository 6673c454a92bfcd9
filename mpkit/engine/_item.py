"""A pipeline item on its way: its own pickle, made once where the item is given.

    feeder thread               router (notebook)                      worker process (Codec)
    ─────────────               ─────────────────                      ──────────────────────
    taken(item) ───► pickle ─► segments of items, moved whole ─pipe─► unpickle each item, call the stage,
                               chunk_payload: the list of pickles,     pickle each result on its own
                               one pickle.dumps (C)
    decoded(value) ◄── the last stage's results ◄── the results' pickles ◄──────────────pipe─┘
    (caller's thread)           forwarded, never decoded (but for key= and a Failure's record)

An item travels as its pickle: a ``bytearray`` (on the way, a bytearray is always a pickle), or,
when it holds large buffers kept apart (pickle protocol 5), an ``Item`` (a ``_serialize.Pickled``),
so every item's size is known exactly (``size``); the feeder copies those buffers (``taken``) where
the caller may refill them once ``put`` returns. A chunk's message is the list of these pickles,
made by one C call whatever the number of items; the worker's Codec answers with the list of its
results' pickles, which the router hands to the next stage as they are. Atoms (``RAW``: str, bytes
under OUT_OF_BAND_BYTES, numbers, None) travel as themselves: a chunk's message pickles them in C,
and one pickle each would double their cost.
"""
from __future__ import annotations

import io
import pickle
import threading
from typing import Any, Callable

from . import _serialize
from ._errors import SerializationError, _short_repr, unpicklable_result


class Item(_serialize.Pickled):
    """A pipeline item (or result) on its way: its own pickle. Its repr is the item's, so that
    messages naming an item (a crash, a timeout) show the value, not its bytes."""

    __slots__ = ()

    def __reduce__(self):
        if not self.buffers:  # the common case, once per item per message: no generator
            return Item, (self.data,)
        return Item, (self.data, tuple(pickle.PickleBuffer(b) for b in self.buffers))

    def __repr__(self) -> str:
        try:
            return repr(_serialize.unpack(self))
        except Exception:
            return f"<item of {self.nbytes} bytes that cannot be unpickled here>"


class _Encoder(threading.local):
    """One pickler per thread, kept between items: making one costs 5x pickling a small item.
    Each item is pickled on its own all the same (memo and caches cleared): as ``pack`` does."""

    def __init__(self):
        self.file = io.BytesIO()
        self.buffers: list = []
        self.pickler = _serialize.Pickler(self.file, buffer_callback=self._keep_apart)

    def _keep_apart(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: copied in band
            return True
        if raw.nbytes < _serialize.OUT_OF_BAND_BYTES:
            return True
        self.buffers.append(raw)
        return False

    def encode(self, value) -> Item:
        file, pickler = self.file, self.pickler
        file.seek(0)
        file.truncate()
        pickler.forget()
        self.buffers = []
        try:
            pickler.dump(value)
        except BaseException:
            self.__init__()  # a pickler that failed half-way is not used again
            raise
        return Item(file.getvalue(), self.buffers)


_encoder = _Encoder()
#: Types whose pickle is the same from the C pickler alone (no class, function or buffer inside),
#: pickled without the notebook-aware pickler: paths, ids and byte strings are common items.
_ATOMS = frozenset({bytes, str, int, float, bool, type(None)})
#: Atoms that travel as themselves, not pickled: a chunk's message pickles them in C with the rest,
#: and pickling each on its own would triple what a tiny item costs (1 KB bytes items: 5.7 against
#: 15.5 us of notebook CPU each through two stages). bytes only under OUT_OF_BAND_BYTES: a larger
#: one goes as an Item whose buffer travels out of band (shared memory). Their size counts as
#: ATOM_BYTES, or a string's or bytes' length. A pickle on the way is a bytearray, never bytes.
RAW = frozenset({str, bytes, int, float, bool, type(None)})
_LARGE = _serialize.OUT_OF_BAND_BYTES
#: What a container's elements may be for it to be pickled by the C pickler alone (``travel``):
#: no bytes (a large one goes out of band through the notebook-aware pickler).
_FLAT = frozenset({str, int, float, bool, type(None)})
ATOM_BYTES = 16
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def encode(value) -> Item:
    """``value`` as an Item, pickled as ``_serialize.pack`` does (raises what pickling raises)."""
    cls = value.__class__
    if cls in _ATOMS:
        if cls is bytes and len(value) >= _LARGE:
            return _encoder.encode(_serialize._OutOfBand(value))  # its buffer out of band
        return Item(pickle.dumps(value, _PROTOCOL))
    return _encoder.encode(value)


def travel(value) -> tuple[Any, int]:
    """``value`` as it travels, and its size: an atom as itself (RAW), anything else as its
    pickle (a bytearray), or as an Item when its large buffers are kept apart."""
    cls = value.__class__
    if cls is str or cls is bytes:
        if cls is str or len(value) < _LARGE:
            return value, len(value)
    elif cls in RAW:
        return value, ATOM_BYTES
    elif (cls is dict and set(map(type, value.values())) <= _FLAT and set(map(type, value)) <= _FLAT) or \
            ((cls is tuple or cls is list) and set(map(type, value)) <= _FLAT):
        # a record of numbers and strings (a row, a parsed JSON line): the C pickler alone makes
        # the same pickle as the notebook-aware one, at a third of the cost
        data = bytearray(pickle.dumps(value, _PROTOCOL))
        return data, len(data)
    item = encode(value)
    if item.buffers:
        return item, item.nbytes
    data = bytearray(item.data)
    return data, len(data)


def taken(value) -> tuple[Any, int]:
    """``value`` as it travels (``travel``), taken as it is now: the memory of its large buffers
    is copied (a ``bytes`` cannot change: it is not), since the caller may refill it before the
    chunk holding the item is sent (a generator of frames read into one array, an array
    changed after ``submit()``). Costs one copy of the item's large buffers."""
    packed, nbytes = travel(value)
    if packed.__class__ is Item and packed.buffers:
        packed = Item(packed.data, [b if b.obj.__class__ is bytes else bytearray(b) for b in packed.buffers])
    return packed, nbytes


def chunk_payload(values: list) -> _serialize.Pickled:
    """The message of a chunk: the list of its items as they travel (pickles, atoms), pickled by
    one C call; with an Item among them, its buffers are kept apart (shared memory on the wire)."""
    if Item in set(map(type, values)):
        return _serialize.pack(values)
    return _serialize.Pickled(pickle.dumps(values, _PROTOCOL))


def shown(value, limit: int = 80) -> str:
    """A short repr of the item a pickle on its way stands for (for messages naming an item)."""
    if value.__class__ is bytearray or value.__class__ is Item:
        try:
            value = decoded(value)
        except Exception:  # noqa: BLE001 - it cannot be unpickled here: say what it is
            return f"<item of {size(value)} bytes that cannot be unpickled here>"
    return _short_repr(value, limit)


def decoded(value):
    """What an Item, a result's pickle (bytes), or a many= stage's list of them stands for."""
    if value.__class__ is bytearray:
        return pickle.loads(value)
    if value.__class__ is Item:
        return pickle.loads(value.data) if not value.buffers else _serialize.unpack(value)
    if value.__class__ is list:
        return [decoded(v) for v in value]
    return value


def undecodable(exc: BaseException) -> SerializationError:
    """Why a result that came back from a worker cannot be used in the notebook."""
    err = SerializationError(
        f"a result could not be unpickled in the notebook: {type(exc).__name__}: {exc}. Cause: it is an object "
        "of a class this process cannot import. Fix: return plain data, or define the class in the notebook "
        "or in a module the notebook can import.")
    err.__cause__ = exc
    return err


def size(value) -> int:
    """Bytes of an Item, a result's pickle (bytes), or a many= stage's list of them."""
    cls = value.__class__
    if cls is bytes or cls is bytearray:
        return len(value)
    if cls is Item:
        return len(value.data) if not value.buffers else value.nbytes
    if value.__class__ is list:
        return sum(size(v) for v in value)
    if value.__class__ is str:
        return len(value)
    return ATOM_BYTES


class Unpicklable:
    """In place of an item that could not be pickled where it was given: it fails at stage 0."""

    def __init__(self, item: Any, exc: BaseException):
        self.item = item
        self.error = SerializationError(
            f"the item {_short_repr(item, 80)} cannot be pickled to send it to a worker: {type(exc).__name__}: "
            f"{exc}. Fix: pass plain data (paths, numbers, strings, dicts) and open files, connections "
            "or models inside the stage.")
        self.error.__cause__ = exc


class BadOutput:
    """In a batch, the place of an item whose result cannot go on: not iterable in a many= stage
    (a TypeError with ``message``), or ``error`` (a result that cannot be pickled)."""

    def __init__(self, item: Any, message: str, error: BaseException | None = None):
        self.item, self.message, self.error = item, message, error


class Codec:
    """A stage's callable as its worker runs it: each item arrives as it travels (its pickle, or
    an atom; a batch as a list of them), is unpickled here, and each result leaves pickled on its
    own (``None`` for a dropped item, a list of pickles for a many= stage's outputs). So the
    notebook's router forwards results to the next stage without decoding them, and knows the
    size of every item. An item that cannot be unpickled, or a result that cannot be pickled,
    fails alone, with the reason."""

    def __init__(self, fn: Callable, stage: str, many: bool, batched: bool):
        self.fn, self.stage, self.many, self.batched = fn, stage, many, batched
        self.__qualname__ = getattr(fn, "__qualname__", repr(fn))

    @property
    def factory(self):  # what _run reads to find the stage's source files
        return getattr(self.fn, "factory", self.fn)

    def __reduce__(self):
        return Codec, (self.fn, self.stage, self.many, self.batched)

    def __call__(self, item):
        if not self.batched:
            return self._encode(self.fn(self._decode(item)))
        results = list(self.fn([self._decode(x) for x in item]))
        if len(results) != len(item):
            return results  # the worker reports the wrong length for the whole batch
        out = []
        for r, x in zip(results, item):
            try:
                out.append(self._encode(r) if r.__class__ is not BadOutput else BadOutput(x, r.message))
            except SerializationError as exc:  # this result cannot go back: only its item fails
                out.append(BadOutput(x, str(exc), exc))
        return out

    def _decode(self, item):
        try:
            if item.__class__ is bytearray:
                return pickle.loads(item)
            return _serialize.unpack(item) if isinstance(item, _serialize.Pickled) else item  # else an atom
        except Exception as exc:
            raise SerializationError(
                f"stage {self.stage!r} could not unpickle its item in the worker: {type(exc).__name__}: {exc}. "
                "Cause: the item refers to a class or module the worker cannot import. Fix: define the class "
                "in the notebook or in an importable module, or pass plain data.") from exc

    def _encode(self, result):
        if result is None:
            return None
        if self.many:
            return [self._pack(v) for v in result]
        return self._pack(result)

    def _pack(self, value) -> Item | bytearray:
        """A result as it travels (``travel``): its pickle, an atom as itself, or an Item."""
        try:
            return travel(value)[0]
        except Exception as exc:
            raise unpicklable_result(value, exc) from None



def call_batch(fn: Callable, items: list, describe: Callable) -> tuple[list, list]:
    """A micro-batch's one call, as a worker of any backend makes it: ``(results, failures)``, one
    result per item in order, or, when the call raised or returned another number of results,
    ``None`` for each and the same failure for every item (``describe(exc)``: how the worker
    sends an exception back, with this frame left out)."""
    try:
        results = list(fn(items))
        if len(results) != len(items):
            raise ValueError(f"a batched stage must return one result per item, in order: it got "
                             f"{len(items)} items and returned {len(results)} results")
        return results, []
    except BaseException as exc:  # SystemExit too: a task failure, not the worker's
        described = describe(exc)
        return [None] * len(items), [(o, *described) for o in range(len(items))]
