"""A pipeline stage while it runs: what its workers call, its lanes, its channel and its counts.

    segments from the router ──► lane inbox ──► Run.pending (chunks) ──► the lane's Pool ──► Run.done
                                 (one per lane:  ◄─ held: items handed to the run, not answered yet ─┘
                                  key= picks it)                            ──► outbox ──► next stage

Items move through a stage in ``Segment`` s: the items that arrived together (or the results of one
chunk), with their keys and their bytes, so that the router's work per step is per segment, not
per item; a segment is cut only where a bound (chunk size, room downstream) falls inside it.

A stage has one lane of N workers, or with ``key=`` N lanes of one worker each. What a worker
calls is the stage's function, or, for a class or factory stage, the object that ``Built`` has it
build once; a many= stage's function is wrapped in ``Many``, which turns each result into a list
in the worker. Around either, ``_item.Codec`` unpickles each item in the worker and pickles each
result there on its own, so items cross the notebook as ``_item.Item`` objects (their pickle): the router
forwards them without decoding, and knows each one's size. Only the router thread touches a
stage; the manager threads touch its Runs, under the shared condition.
"""
from __future__ import annotations

import bisect
import itertools
import threading
from collections import deque
from typing import Any, Callable

from ._errors import _short_repr
from ._item import BadOutput, Codec, shown, size
from ._pipeline_stats import SNAPSHOT_HZ, StageStats, batcher_name
from ._pool import BasePool
from ._serialize import OUT_OF_BAND_BYTES

#: Where a stage's workers come from: ``pools(workers, spec)`` makes a pool (of any backend) for a
#: lane of ``workers`` workers of the stage ``spec`` (``_pipeline`` chooses the backend).
PoolFactory = Callable[[int, Any], BasePool]

#: Bytes a channel holds at most, besides its ``maxsize`` items (lane inboxes plus chunks no worker
#: took yet; the results a stage made and the next channel cannot take yet count against it too).
#: Memory must stay flat whatever the item size: 1,024 items of 1 MB would be 1 GB per channel.
#: 64 MB is a few hundred ms of copying at pipe speed, enough to keep workers of large items busy;
#: an item bigger than this still goes, alone.
CHANNEL_BYTES = 64 << 20
#: Bytes of items in one chunk (one message to a worker), at most; a chunk holds at least one
#: item. Larger chunks amortize nothing more once items are large, and each chunk is held twice
#: while it waits and runs (its items and their message). 1 MB items through two stages on 2
#: cores: 4 MB chunks moved 15-25% more items/s than 1 MB ones (a message's fixed costs: its
#: shared-memory segment, mapping, wake-ups).
CHUNK_BYTES = 4 << 20
#: Bytes of small items (under OUT_OF_BAND_BYTES: pickled into the chunk's message itself) in one
#: chunk, at most. 1 KB items through two stages on 2 cores: chunks of 4 MB of them kept the stages
#: in lockstep (4,000 items in one worker while the other waits) and their pickles out of the
#: CPU's caches: 47-50k items/s; 1 MB 55-81k, 512 KB 62-92k, 256 KB 47-55k (a message under
#: _wire.SHM_BYTES goes by pipe).
CHUNK_PICKLE_BYTES = 1 << 20

#: Types of items whose size is their len() (``Segment.sizes``).
_SIZED = frozenset({bytearray, bytes, str})

#: Items a worker of a many= stage holds at once. Each may fan out to any number of results, and
#: the notebook holds them all until the next channel takes them, so few; two keep the worker busy
#: while the router collects the last one. (Smaller chunks cost ~0.1 ms each: fine for fan-outs.)
FAN_OUT_ITEMS = 2


class Built:
    """A stage's class or factory, pickled so that the worker builds the object when it loads it."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self.__qualname__ = getattr(factory, "__qualname__", repr(factory))

    def __reduce__(self):
        return build, (self.factory,)

    def __call__(self, item):  # never called here: the worker gets the built object instead
        raise RuntimeError("a built stage runs only in its worker processes")


def build(factory):
    """Unpickled in a worker: build a pipeline stage's object there, once (a model loads here)."""
    return factory()


class Many:
    """A many= stage's function, run in the worker: each result becomes a list of outputs there
    (a generator is consumed in the worker), and a result that is not iterable fails its item."""

    def __init__(self, fn: Callable, stage: str, batched: bool):
        self.fn, self.stage, self.batched = fn, stage, batched
        self.__qualname__ = getattr(fn, "__qualname__", repr(fn))

    @property
    def factory(self):  # what _run reads to find the stage's source files
        return getattr(self.fn, "factory", self.fn)

    def __reduce__(self):
        return Many, (self.fn, self.stage, self.batched)

    def __call__(self, item):
        if not self.batched:
            return self._outputs(self.fn(item), item)
        results = list(self.fn(item))
        if len(results) != len(item):
            return results  # the worker reports the wrong length for the whole batch
        out = []
        for result, x in zip(results, item):
            try:
                out.append(self._outputs(result, x))
            except TypeError as exc:
                out.append(BadOutput(x, str(exc)))
        return out

    def _outputs(self, result, item):
        if result is None:
            return None
        try:
            iterator = iter(result)
        except TypeError:
            raise TypeError(f"stage {self.stage!r} has many=True, so it must return an iterable of results "
                            f"(a list, a generator) or None for each item, but for item {_short_repr(item, 80)} "
                            f"it returned {type(result).__name__} {_short_repr(result, 60)}. Fix: return "
                            f"[value] for one result, or drop many=True.") from None
        return list(iterator)


def stage_target(spec) -> Callable:
    target = Built(spec.target) if spec.factory else spec.target
    if spec.many:
        target = Many(target, spec.name, spec.batch is not None)
    return Codec(target, spec.name, spec.many, spec.batch is not None)


class Segment:
    """Items that move together: their keys, the items as they travel (``_item``), their bytes,
    and when they arrived (a micro-batch's ``max_wait`` counts from the oldest). Each item's size
    is looked at only where a bound falls inside the segment (``fits``, ``cut``): a mean would let
    a few large items among many small ones (images loaded among small records) go as one chunk
    far over CHUNK_BYTES, all to one worker.

    ``message``: the results' message from the worker that made them (``Run.forwards``), while
    the segment is whole: sent on unopened as the next stage's chunk, it spares the notebook
    pickling them again. Kept only within one router step (``drop_message``): a segment that waits
    would hold its items twice."""

    __slots__ = ("keys", "values", "nbytes", "since", "message", "sizes")

    def __init__(self, keys: list, values: list, nbytes: int, since: float = 0.0, message=None):
        self.keys, self.values, self.nbytes, self.since, self.message = keys, values, nbytes, since, message
        self.sizes: list[int] | None = None  # each item's bytes, once a bound fell inside

    def _sizes(self) -> list[int]:
        if self.sizes is None:
            values = self.values
            self.sizes = list(map(len, values)) if set(map(type, values)) <= _SIZED else list(map(size, values))
        return self.sizes

    def cut(self, count: int) -> "Segment":
        """The first ``count`` items, taken out of this segment, with their own bytes."""
        sizes = self._sizes()
        head = Segment(self.keys[:count], self.values[:count], sum(sizes[:count]), self.since)
        head.sizes = sizes[:count]
        self.keys, self.values = self.keys[count:], self.values[count:]  # new lists: a chunk may share these
        self.sizes = sizes[count:]
        self.nbytes -= head.nbytes
        self.message = None  # no longer the whole of it
        return head

    def fits(self, items: int, nbytes: float, least: int = 1) -> int:
        """How many of its first items fit in ``items`` and ``nbytes`` (``least`` at least: one
        for a chunk still empty, so that an item bigger than the bound goes alone)."""
        n = len(self.keys)
        if self.nbytes <= nbytes:
            return max(least, min(items, n))
        most = int(min(items, n))
        by_bytes = bisect.bisect_right(list(itertools.accumulate(itertools.islice(self._sizes(), most))), nbytes)
        return max(least, min(most, by_bytes))


class Fan:
    """The outputs of one item of a many= stage, handed on one by one as the next channel has room."""

    __slots__ = ("key", "values", "next")

    def __init__(self, key: tuple, values: list):
        self.key, self.values, self.next = key, values, 0

    def pop(self) -> tuple[tuple, Any]:
        j = self.next
        self.next += 1
        value = self.values[j]
        self.values[j] = None  # let it go as soon as it is handed on
        return (*self.key, j), value

    @property
    def left(self) -> int:
        return len(self.values) - self.next


class Lane:
    """A pool, the open run that feeds it, and the items waiting for it. A stage has one lane of N
    workers, or, with ``key=``, N lanes of one worker each, so that items of one key stay in order
    on one worker."""

    def __init__(self, spec, pool: BasePool, cond: threading.Condition, keyed: bool):
        self.keyed, self.fans_out = keyed, spec.many
        self.pool = pool
        self.pool.output.label = spec.name
        self.run = self.pool.open_run(stage_target(spec), cond, retries=spec.retries, timeout=spec.timeout)
        self.run.describe = shown     # messages naming an item show the item, not its pickle
        self.run.forwards = True      # results come with their message (see Segment.message)
        self.inbox: deque[Segment] = deque()
        self.inbox_count = 0          # items in the inbox
        self.inbox_bytes = 0          # and their bytes
        self.messages = 0             # segments put in with a message since the last drop_messages
        self.held = 0                 # items handed to the run and not answered yet

    @property
    def broken(self) -> BaseException | None:
        """The error that stopped the lane's backend itself (a bug in it), if any."""
        return self.pool.broken

    def wake(self) -> None:
        """Tell the backend that chunks are waiting."""
        self.pool.wake()

    def room(self) -> bool:
        if self.keyed:  # one chunk at a time: what a crash or a retry sends again cannot be overtaken
            return self.held == 0
        if self.fans_out:
            return self.held < FAN_OUT_ITEMS * self.pool.size
        return len(self.run.pending) < 2 * self.pool.size

    def put(self, segment: Segment) -> None:
        self.inbox.append(segment)
        self.inbox_count += len(segment.keys)
        self.inbox_bytes += segment.nbytes
        if segment.message is not None:
            self.messages += 1

    def take(self, most: int, whole: bool = False) -> tuple[list, list, Any]:
        """Keys and items of the next ``most`` inbox items, fewer if they pass CHUNK_BYTES or CHUNK_PICKLE_BYTES (one at
        least), unless ``whole`` (a micro-batch is the user's unit: it keeps its size); and their
        message, if they are one whole segment that has one (``Segment.message``)."""
        inbox, keys, values, nbytes, message = self.inbox, [], [], 0, None
        if whole:
            limit = float("inf")
        else:  # small items are pickled into the message: fewer of them (CHUNK_PICKLE_BYTES)
            first = inbox[0] if inbox else None
            large = first is not None and first.nbytes >= OUT_OF_BAND_BYTES * len(first.keys)
            limit = CHUNK_BYTES if large else CHUNK_PICKLE_BYTES
        while inbox and len(keys) < most and (nbytes < limit or not keys):
            segment = inbox[0]
            count = segment.fits(most - len(keys), limit - nbytes, least=0 if keys else 1)
            if not count:
                break  # its next item would take the chunk over CHUNK_BYTES: it starts the next one
            if count == len(segment.keys):
                inbox.popleft()
            else:
                segment = segment.cut(count)
            message = segment.message if not keys else None
            keys += segment.keys
            values += segment.values
            nbytes += segment.nbytes
        self.inbox_count -= len(keys)
        self.inbox_bytes -= nbytes
        return keys, values, message

    def drop_messages(self) -> None:
        """Segments left waiting let their message go (see ``Segment.message``)."""
        if self.messages:
            self.messages = 0
            for segment in self.inbox:
                segment.message = None

    def chunk_size(self, spec) -> int:
        """Items in the next chunk of an unbatched stage."""
        if self.keyed and spec.retries:
            return 1  # a retried item runs again before its successors, not after the rest of its chunk
        size = self.run.sizer.next_size(0)
        if self.fans_out:
            size = min(size, max(1, FAN_OUT_ITEMS * self.pool.size - self.held))
        return size


class Stage:
    def __init__(self, spec, index: int, cond: threading.Condition, pools: PoolFactory):
        self.spec, self.index, self.cond = spec, index, cond
        self.lanes: list[Lane] = []
        keyed = spec.key is not None
        try:
            for _ in range(spec.workers if keyed else 1):
                pool = pools(1 if keyed else spec.workers, spec)
                try:
                    self.lanes.append(Lane(spec, pool, cond, keyed))
                except BaseException:
                    pool.shutdown(wait=False)
                    raise
        except BaseException:
            self.close(kill=True)
            raise
        self.outbox: deque = deque()    # Segments or Fans: results waiting for room downstream
        self.waiting = 0                # outputs in the outbox (a fan counts its outputs left)
        self.waiting_bytes = 0          # and their bytes
        self.messages = 0               # segments emitted with a message since _move last looked
        self.received = self.batched = self.done = self.emitted = self.failed = self.dropped = 0
        self.failed_at_entry = 0        # key= raised: the item never reached a lane
        self.cancelled_queued = self.cancelled_held = 0
        self.input_closed = False
        self.rates: deque = deque(maxlen=SNAPSHOT_HZ * 2)  # (time, finished) samples

    @property
    def name(self) -> str:
        return self.spec.name

    def queued_in_inboxes(self) -> int:
        return sum(lane.inbox_count for lane in self.lanes)

    def pending_items(self) -> int:
        """Items in chunks waiting for a worker (the manager threads take from them: lock)."""
        with self.cond:
            return sum(len(c.indices) for lane in self.lanes for c in lane.run.pending)

    def space(self) -> tuple[int, int]:
        """Items and bytes its channel can take now (none while it holds CHANNEL_BYTES)."""
        with self.cond:
            chunks = [c for lane in self.lanes for c in lane.run.pending]
            items = sum(len(c.indices) for c in chunks)
            nbytes = sum(c.payload.nbytes for c in chunks)
        nbytes += sum(lane.inbox_bytes for lane in self.lanes)
        if nbytes >= CHANNEL_BYTES:
            return 0, 0
        return self.spec.maxsize - self.queued_in_inboxes() - items, CHANNEL_BYTES - nbytes

    def room(self) -> int:
        """Items its channel can take now."""
        return self.space()[0]

    def finished(self) -> bool:
        return (self.input_closed and not self.outbox
                and all(not lane.inbox and lane.held == 0 for lane in self.lanes))

    def stats(self, now: float) -> list[StageStats]:
        """Its snapshot (two, a batcher's and its own, after .batch()); router thread, under cond."""
        runs = [lane.run for lane in self.lanes]
        finished = self.done + self.failed + self.dropped
        self.rates.append((now, finished))
        t0, n0 = self.rates[0]
        rate = (finished - n0) / (now - t0) if now - t0 > 0.05 else 0.0
        pending = self.pending_items()
        inboxes = self.queued_in_inboxes()
        in_flight = sum(lane.held for lane in self.lanes) - pending  # both measured
        common = dict(name=self.name, kind="stage", capacity=self.spec.maxsize, in_flight=in_flight,
                      done=self.done, emitted=self.emitted, dropped=self.dropped, rate=rate, waiting=self.waiting,
                      workers=sum(r.pool_workers for r in runs),
                      target_workers=sum(lane.pool.size for lane in self.lanes),
                      busy=sum(r.busy_workers for r in runs),
                      mean_seconds=sum(r.busy_seconds for r in runs) / finished if finished else 0.0)
        if self.spec.batch is None:
            return [StageStats(queued=inboxes + pending, received=self.received, failed=self.failed,
                               cancelled=self.cancelled_queued + self.cancelled_held, **common)]
        batcher = StageStats(
            name=batcher_name(self.spec.batch), kind="batch", workers=0,
            target_workers=0, busy=0, capacity=self.spec.maxsize, queued=inboxes, in_flight=0,
            received=self.received, done=self.batched, emitted=self.batched, failed=self.failed_at_entry,
            dropped=0, rate=rate, mean_seconds=0.0, cancelled=self.cancelled_queued)
        return [batcher, StageStats(queued=pending, received=self.batched, failed=self.failed - self.failed_at_entry,
                                    cancelled=self.cancelled_held, **common)]

    def workers(self) -> list[tuple[int, int, str]]:
        return [w for lane in self.lanes for w in lane.pool.workers()]

    def close(self, kill: bool) -> None:
        for lane in self.lanes:
            if kill:
                with self.cond:
                    lane.run.cancelled = True
            lane.pool.shutdown(wait=not kill)
