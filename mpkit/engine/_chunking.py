"""How many items go into one message to a worker.

Sending an item costs a pickling and a pipe write however small the item is; sending a chunk of
them costs about the same per chunk. Big chunks amortize that cost; small chunks keep every
worker busy to the end. ``ChunkSizer`` measures the time per item from the chunks that come back
and aims each chunk at ``TARGET_CHUNK_SECONDS`` of work, capped so that the tail of a map of known
length is still shared among the workers.

It measures bytes too: the pickled size per item of the chunks it cuts (``observe_payload``) and of
the results that come back (``observe``), and caps a chunk at ``TARGET_CHUNK_BYTES`` of the larger,
so that a cheap function over large items (``np.mean`` of 1 MB arrays) makes chunks of a few items,
not messages of hundreds of MB that a worker waits for while the notebook pickles them.

A size is chosen before the chunk's items are read, so it cannot know them: an input of small
items that turns into large ones (ids, then frames) would put thousands of large items in the
chunk that follows the change. ``Cutter`` closes a chunk of ``"auto"`` size at the item that takes
its pickle past ``TARGET_CHUNK_BYTES`` instead, whatever the size said:

    input ─► a list, tuple or range (its items exist already): read ``size`` of them, pickle them
    │        as one list with the bytes counted where the pickler writes (every 64 KB, each large
    │        buffer); past the cap, pickle again as many as fit, and keep the rest for the next chunk
    └──────► any other iterator (a generator): the pickler itself reads the items, one by one as it
             pickles them, and stops reading at the cap; what it read (at most two items past the
             cap) is pickled again, as many as fit, and the rest kept for the next chunk

So the cap costs nothing per item on a list (no Python call per item: 200,000 trivial items map in
the same time), about 15 ns per item on a generator (two C calls), and a second pickling only for
a chunk that went past it. The items of a chunk are always the ones its pickle holds.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator

from . import _serialize

#: Work per chunk the sizer aims at. The fixed cost of a chunk (two pickles, two pipe writes, a
#: few dict operations) is 50-100 us, so 20 ms keeps it under 0.5% while a worker that gets the
#: last chunk finishes at most ~20 ms after the others.
TARGET_CHUNK_SECONDS = 0.02
#: Chunks in flight are cut into about this many pieces per worker for the remaining items, the
#: same tail balance as ``multiprocessing.Pool.map``'s default chunksize.
TAIL_SPLIT = 4
#: Bound on a chunk when the total is unknown (a generator): keeps imap's memory flat.
MAX_CHUNK = 10_000
#: The tail split never cuts a chunk below this much work: a chunk of tiny tasks costs more to
#: send than to run, and a few milliseconds of imbalance at the end cost less than many chunks.
MIN_CHUNK_SECONDS = 0.002
#: Bytes per chunk, items or results, whichever is larger. A chunk costs ~0.3 ms of fixed work
#: (two messages, a shared-memory segment each way, on a loaded 2-core VM) and moving its data
#: ~1 ms per MB, so 8 MB keeps the fixed cost under 5%, while the in-flight and waiting chunks of
#: a map (PREFETCH per worker, two per worker waiting) stay at tens of MB, not GB.
TARGET_CHUNK_BYTES = 8 << 20


class ChunkSizer:
    def __init__(self, chunksize: int | str, workers: int, total: int | None,
                 seconds_per_item: float | None = None, target_seconds: float = TARGET_CHUNK_SECONDS):
        if chunksize != "auto" and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be 'auto' or a positive int, not {chunksize!r}")
        self.fixed = None if chunksize == "auto" else chunksize
        self.workers = workers
        self.total = total
        #: work per chunk aimed at: TARGET_CHUNK_SECONDS, or a backend's own (a chunk's fixed cost
        #: differs: ~0.1 ms through a pipe, a few ms as a Dask task); the tail's floor scales with it
        self.target_seconds = target_seconds
        self.min_seconds = MIN_CHUNK_SECONDS * target_seconds / TARGET_CHUNK_SECONDS
        #: measured time per item; a warm pool passes what the last map of the same function saw
        self.seconds_per_item: float | None = seconds_per_item
        #: pickled bytes per item, of the items sent and of the results that came back (largest seen
        #: lately: a chunk is cut before its items are read, so one large item must not surprise it)
        self.payload_bytes_per_item = 0.0
        self.result_bytes_per_item = 0.0

    def observe(self, items: int, seconds: float, nbytes: int | None = None) -> None:
        """Feed back a chunk's compute time as measured in the worker (and its results' size)."""
        if items <= 0:
            return
        sample = max(seconds / items, 1e-8)
        old = self.seconds_per_item
        self.seconds_per_item = sample if old is None else 0.7 * old + 0.3 * sample
        if nbytes is not None:
            self.result_bytes_per_item = _decaying_max(self.result_bytes_per_item, nbytes / items)

    def observe_payload(self, items: int, nbytes: int) -> None:
        """Feed back the pickled size of a chunk just cut."""
        if items > 0:
            self.payload_bytes_per_item = _decaying_max(self.payload_bytes_per_item, nbytes / items)

    @property
    def bytes_per_item(self) -> float:
        """What an item costs in the notebook's memory while it is on its way: it and its result."""
        return self.payload_bytes_per_item + self.result_bytes_per_item

    def next_size(self, fed: int) -> int:
        """Size of the next chunk, given how many items were already cut into chunks."""
        if self.fixed is not None:
            return self.fixed
        if self.seconds_per_item is None:
            return 1  # nothing measured yet: a long task must not sit behind others in one chunk
        size = self.target_seconds / self.seconds_per_item
        if self.total is not None:
            remaining = max(self.total - fed, 1)
            tail = max(remaining / (self.workers * TAIL_SPLIT), self.min_seconds / self.seconds_per_item)
            size = min(size, math.ceil(tail))
        else:
            size = min(size, MAX_CHUNK)
        largest = max(self.payload_bytes_per_item, self.result_bytes_per_item)
        if largest > 0:
            size = min(size, TARGET_CHUNK_BYTES / largest)
        return max(1, int(size))


def _decaying_max(old: float, sample: float) -> float:
    """Up at once to a larger sample, down slowly (a tenth of the way) to smaller ones."""
    return sample if sample >= old else 0.9 * old + 0.1 * sample


#: Iterators over items that exist already (the caller holds them): reading ahead of the cap costs
#: no memory, so they are read whole and the pickle alone is capped.
_HELD = tuple({type(iter(x)) for x in ([], (), range(0), range(1 << 64))})


class Cutter:
    """The items of a map's next chunks, read from its input, and their pickle, capped in bytes."""

    def __init__(self, source: Iterator):
        self._source = source
        self._held = type(source) in _HELD
        self._left: list = []     # items read for a chunk that did not fit in it: the next chunk's
        self._drained = False     # the input gave its last item

    @property
    def exhausted(self) -> bool:
        """Every item of the input is in a chunk cut already."""
        return self._drained and not self._left

    def cut(self, size: int, cap: int | None) -> tuple[list, _serialize.Pickled | None]:
        """Up to ``size`` items, and their pickle: at most ``cap`` bytes and the item that went past
        (None: ``size`` items, uncapped). The pickle is None when an item cannot be pickled (the
        caller finds which); an exception raised by the input itself is raised."""
        if self._left:
            items, self._left = self._left[:size], self._left[size:]
        elif cap is None or self._held:
            items = list(itertools.islice(self._source, size))
            self._drained = len(items) < size
        else:
            return self._read_capped(size, cap)
        if cap is None or not items:
            return items, None
        try:
            return items, _serialize.pack_capped(items, cap)
        except _serialize.Full:
            return self._fit(items, cap)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            return items, None

    def _read_capped(self, size: int, cap: int) -> tuple[list, _serialize.Pickled | None]:
        stream = _serialize.Items(itertools.islice(self._source, size))
        try:
            pickled = _serialize.pack_capped(stream, cap)
        except _serialize.Full:
            return self._fit(stream.read, cap)
        except BaseException as exc:
            # The input raised while the pickler read it, or an item cannot be pickled: the items
            # read before pickle alone when the input is to blame.
            if isinstance(exc, KeyboardInterrupt) or _picklable(stream.read):
                raise
            return stream.read, None
        self._drained = len(stream.read) < size
        return stream.read, pickled

    def _fit(self, items: list, cap: int) -> tuple[list, _serialize.Pickled]:
        taken, pickled = _serialize.pack_upto(items, cap)
        self._left[:0] = items[taken:]
        return items[:taken], pickled


def _picklable(items: list) -> bool:
    try:
        _serialize.pack(items)
    except Exception:
        return False
    return True
