"""A running pipeline: one router thread moving every item between stages of worker processes.

    feeder (the thread calling run()/imap(),   ┌──────────────────── router thread ─────────────────────────┐
    or any thread calling svc.submit())        │                                                            │
    put(item): pickled ─► incoming ─(room)─► lane inbox ─► Run.pending ─► stage 0 pool ─► Run.done ─► outbox ─(room)─► next stage ...
    here, once;            [cond]            Segments;      chunks [cond]   workers          [cond]     Segments    its lanes' inboxes
    blocks while stage 0                     key= picks     (a batch = one chunk)          results and             and fan-outs
    is full                                  the lane                                      their message
                                                                         last stage ─► ledger ─► ResultList / Futures / imap's outlet

Items travel as their own pickles (a bytearray; an atom, a str or a number, as itself; an
``_item.Item`` when large buffers are kept apart): the feeder pickles each one once, a stage's
workers unpickle it and pickle each result on its own (``_item.Codec``), and the router hands
these pickles from stage to stage without decoding them. It decodes an item only for a keyed
stage's ``key()`` and for a Failure's record; results are decoded in the caller's thread
(``result_list()``, a Future's ``result()``, imap's loop). So every item's size is known.

The router's work is per segment (``_stage.Segment``), not per item: the items admitted in one
step enter stage 0 together; a chunk's results (or a part of them) come back as one segment,
checked for drops and bad outputs by one C pass over their types, and go on whole, cut only
where a bound falls inside them. A segment of results that becomes the next stage's chunk whole
goes in the message its worker sent (``Segment.message``): the notebook does not pickle it again.
Items are looked at one by one only where something waits for each: a service's Futures (and
their cancellation, once a caller cancelled one), a many= fan-out, a keyed stage, failures,
an ordered stream.

One lock, ``cond`` (a Condition shared with every stage's Run and so with the pools' manager
threads), guards only what other threads touch: ``incoming``, ``outlet`` and each Run's
``pending`` / ``done`` / ``failures``. Everything else (inboxes, outboxes, counts, the ledger)
belongs to the router thread alone, so user code and pickling never run under the lock: the
source is read and its items pickled by the feeder, key functions run in the router without the
lock, observers get their snapshots in a Watcher thread each (``_observe``), Future callbacks run
in the service's callback thread. (A chunk's message, the
list of its items' pickles, is made in the router outside the lock; the manager threads unpickle
a results message, a list of pickles, under it.) Snapshots are taken by the router (other threads
ask for one and wait for it), so the counts in a snapshot always agree with each other; the
router also marks the bottleneck in them (``_pipeline_stats.Bottleneck``) and adds the workers' CPU
and memory, read at most once a second (``_usage``).

Bounds, in items and in bytes (``_stage.CHANNEL_BYTES``): ``incoming`` plus stage 0's channel hold
at most its ``maxsize`` items and CHANNEL_BYTES; a stage's channel (lane inboxes plus chunks not
yet taken by a worker) holds at most its ``maxsize`` and CHANNEL_BYTES (one item more may pass
the byte bound, so an item bigger than it still goes); a chunk holds at most CHUNK_BYTES, or
CHUNK_PICKLE_BYTES of small items (a batch
keeps its size); a stage is given more work only while the results it already made (its outbox,
including the rest of a many= fan-out, expanded one by one) fit in the next channel, in items and
bytes, and a many= stage's workers hold at most FAN_OUT_ITEMS items each, so the notebook holds the
fan-outs of at most 1 + FAN_OUT_ITEMS x workers items. A keyed lane holds one chunk at a time, so
a crash or a retry never lets a key's items overtake each other. imap's backlog is bounded by
``_stream``.

End of stream: the feeder closes the input, each stage in turn drains (a batcher flushes its
partial batch), and the pools are shut down. Stopping early (stop(drain=False), an interrupt, a
fatal error, an imap loop left early) kills the pools, and every item still inside is counted as
cancelled.
"""
from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from ._errors import Failure, ResultList
from ._ledger import Ledger
from ._pipeline_stats import ERRORS_SHOWN, SNAPSHOT_HZ, Bottleneck, PipelineStats, with_usage
from ._item import (ATOM_BYTES, BadOutput, Item, Unpicklable, chunk_payload, decoded, shown, size, taken, travel,
                    undecodable)
from ._stage import CHANNEL_BYTES, Fan, PoolFactory, Segment, Stage
from ._usage import Usage

#: Snapshots kept for ``timeline()``: at 10 a second, ten minutes of history.
HISTORY = 6000
#: Types of results whose size is their len(), and a segment of them goes on as it is.
_SIZED = frozenset({bytearray, bytes, str})
#: Types of results that need a look each (a drop, a result that cannot go on).
_SPECIAL = frozenset({type(None), BadOutput})
#: How long another thread waits for the router to take a fresh snapshot before it settles for the
#: last one: a router busy pickling a large chunk answers late, and a caller must not hang on it.
SNAPSHOT_WAIT = 2.0


class FlowEnded(Exception):
    """put() on a flow that no longer takes items (stopped, or failed: see ``Flow.fatal``)."""


class Flow:
    """Stages, channels, router thread and ledger of one run or one service of a pipeline."""

    def __init__(self, name: str, specs: list, *, pools: PoolFactory, on_error: str = "raise",
                 ordered: bool = False, observers: list | None = None, service: bool = False,
                 stream: bool = False):
        self.name = name
        self.cond = threading.Condition()
        self.on_error, self.ordered = on_error, ordered
        #: a blocking run with on_error="raise" stops at the first failure; a service never does:
        #: the error goes to the failing item's Future
        self.stop_on_failure = on_error == "raise" and not service
        self.stream = stream  # imap(): outputs go to ``outlet`` as they come, for the consumer's thread
        #: put() takes a copy of an item's large buffers (``_item.taken``): the caller may refill them
        #: (a generator of frames read into one array, an array changed after submit()). Off only
        #: for a source that cannot (a list, a tuple): as ``mpkit.map`` does, it saves a copy
        self.copy_buffers = True
        self.stages: list[Stage] = []
        try:
            for i, spec in enumerate(specs):
                self.stages.append(Stage(spec, i, self.cond, pools))
        except BaseException:
            for stage in self.stages:
                stage.close(kill=True)
            raise
        self.observers = list(observers or [])
        self.ledger = Ledger(many=any(s.spec.many for s in self.stages), keep_results=not (service or stream),
                             keep_all_failures=not (service or stream), stream=stream,
                             ends=stream and (ordered or on_error == "collect"))
        #: imap(): what the ledger streamed, handed to the consumer's thread [cond]
        self.outlet: deque = deque()
        self.incoming: deque = deque()       # (item as it travels or Unpicklable, future or None, bytes) [cond]
        self.input_closed = False            # [cond] no more put()
        self.stop_now = False                # [cond] stop without draining
        self.fatal: BaseException | None = None
        self.state = "running"
        self.service = service
        self.interrupted = False             # run() stopped by the kernel's interrupt (for stats' outcome)
        self._errors_seen, self._errors_text = 0, ()  # the snapshots' failure texts, by failure count
        self.total: int | None = None        # len() of run()'s source, if it has one (for the progress)
        self._bottleneck = Bottleneck()
        self._usage = Usage()                # workers' CPU and memory, read once a second
        self.started = time.perf_counter()
        self.history: deque[PipelineStats] = deque(maxlen=HISTORY)
        self.on_finish: list[Callable[[], None]] = []
        self._last_snapshot = 0.0
        self._last: PipelineStats | None = None
        self._snapshots = 0                  # [cond] snapshots taken so far
        self._snapshot_wanted = False        # [cond] another thread waits for a fresh one
        self._first_load = 0                 # [cond] items in stage 0's channel, as of the last step
        self._first_bytes = 0                # [cond] and their bytes
        self._fed_bytes = 0                  # bytes put into ``incoming`` so far (feeders)
        self._taken_bytes = 0                # bytes taken out of it so far (router)
        self._budget = 0                     # put()s that fit without looking again (feeder side)
        self._budget_bytes = 0               # and their bytes
        self._thread: threading.Thread | None = None
        # Waits are on this event, not Thread.join: a join cut short by an interrupt can leave the
        # thread looking dead while it still runs (CPython 3.11).
        self._ended = threading.Event()

    # ---- any thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._last = self._take_snapshot()
        self._thread = threading.Thread(target=self._route, name=f"mpkit-router-{self.name}", daemon=True)
        self._thread.start()

    def put(self, item: Any, future: Future | None = None, timeout: float | None = None) -> None:
        """Send an item in; blocks while the first stage's channel is full (up to ``timeout`` s).
        Raises ``FlowEnded`` if the flow takes no more items, ``TimeoutError`` if it stayed full.

        The item is pickled here, in the caller's thread, once: it crosses the router and every
        stage as its pickle. One that cannot be pickled is taken in and fails (its Future gets the
        error; run() raises or collects it per on_error)."""
        try:
            packed, nbytes = taken(item) if self.copy_buffers else travel(item)
        except Exception as exc:  # noqa: BLE001 - any pickling error: this item fails, with the reason
            packed, nbytes = Unpicklable(item, exc), ATOM_BYTES
        if self._budget > 0 and self._budget_bytes > 0 and not (self.input_closed or self.fatal is not None):
            # Room known from the last look: no lock per item. Only the append that finds the
            # router possibly asleep (nothing was waiting) takes the lock, to wake it.
            self._budget -= 1
            self._budget_bytes -= nbytes
            self._fed_bytes += nbytes
            entry = (packed, future, nbytes)
            self.incoming.append(entry)
            if self.state != "running":
                self._withdraw(entry)  # the flow ended as this item came in
            elif len(self.incoming) == 1:
                with self.cond:
                    self.cond.notify_all()
            return
        first = self.stages[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.input_closed or self.stop_now or self.fatal is not None or self.state != "running":
                    raise FlowEnded(self.name)
                if (len(self.incoming) + self._first_load < first.spec.maxsize
                        and self._fed_bytes - self._taken_bytes + self._first_bytes < CHANNEL_BYTES):
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the first stage of {self.name!r} stayed full for {timeout} s")
                self.cond.wait(min(0.1, left) if left is not None else 0.1)  # short: an interrupt lands
            self.incoming.append((packed, future, nbytes))
            self._fed_bytes += nbytes
            self._budget = first.spec.maxsize - self._first_load - len(self.incoming)
            self._budget_bytes = CHANNEL_BYTES - self._first_bytes - (self._fed_bytes - self._taken_bytes)
            if len(self.incoming) == 1:
                self.cond.notify_all()  # the router may sleep; with more waiting, it was told already

    def _withdraw(self, entry: tuple) -> None:
        """Take back an item put without the lock after the router's last look at ``incoming``; if
        that look took it, it was counted as cancelled (and its Future cancelled)."""
        with self.cond:
            for i, waiting in enumerate(self.incoming):
                if waiting is entry:
                    del self.incoming[i]
                    self._taken_bytes += entry[2]
                    raise FlowEnded(self.name)

    def close_input(self) -> None:
        """No more items: the stages drain, then the flow ends."""
        with self.cond:
            self.input_closed = True
            self.cond.notify_all()

    def stop(self) -> None:
        """End now: what is inside is cancelled."""
        with self.cond:
            self.input_closed = self.stop_now = True
            self.cond.notify_all()

    def interrupt(self) -> None:
        """End now as the kernel's interrupt would (a dashboard's Stop button during ``run()``):
        what is inside is cancelled, and ``run()`` raises MapInterrupted with the results so far."""
        with self.cond:
            self.interrupted = True
        self.stop()

    def fail(self, error: BaseException) -> None:
        """End now because of ``error`` (the source raised): what is inside is cancelled."""
        with self.cond:
            if self.fatal is None:
                self.fatal = error
            self.input_closed = True
            self.cond.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the router to end (interruptible); True if it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._ended.wait(0.1 if left is None else min(0.1, left))
        return True

    def wait_quietly(self) -> None:
        """Wait for the router to end; a further interrupt does not cut the clean-up short."""
        while self.running:
            try:
                self._ended.wait(0.1)
            except KeyboardInterrupt:
                self.stop()

    def snapshot(self) -> PipelineStats:
        """A snapshot of now, taken by the router so that its counts agree with each other (the
        last one if the router is busy for longer than SNAPSHOT_WAIT; the final one once it ended)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return self._take_snapshot()
        with self.cond:
            wanted = self._snapshots + 1
            self._snapshot_wanted = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: self._snapshots >= wanted or self._ended.is_set(), SNAPSHOT_WAIT)
            return self._last

    def take_outlet(self, timeout: float) -> list:
        """imap(): what came out since the last call, waiting up to ``timeout`` s for something."""
        with self.cond:
            if not self.outlet and self.running:
                self.cond.wait(timeout)
            out = list(self.outlet)
            self.outlet.clear()
            return out

    def last_snapshot(self) -> PipelineStats:
        """The router's latest snapshot, without waiting for a new one."""
        return self._last if self._last is not None else self._take_snapshot()

    # ---- the router thread -----------------------------------------------------------------------
    def _route(self) -> None:
        tick = 1.0 / SNAPSHOT_HZ
        try:
            while True:
                with self.cond:
                    if self.stop_now or self.fatal is not None:
                        break
                if self.finished:
                    break
                self.step(self.next_timeout(tick))
        except BaseException as exc:  # noqa: BLE001 - a key= function's interrupt, or mpkit itself: the flow fails
            if self.fatal is None:
                self.fatal = exc
        finally:
            try:
                self._finish()
            finally:
                self._ended.set()

    def step(self, timeout: float) -> None:
        """Collect what the workers finished, move items along, dispatch, take a snapshot."""
        with self.cond:
            if not self._anything_ready():
                self.cond.wait(timeout)
            taken = []
            for stage in self.stages:
                for lane in stage.lanes:
                    run = lane.run
                    taken.append((stage, lane, list(run.done), list(run.failures)))
                    run.done.clear()
                    run.failures.clear()
                    if run.fatal is not None and self.fatal is None:
                        self.fatal = run.fatal  # the stage cannot run at all (its object failed to build...)
                    broken = lane.broken
                    if broken is not None and self.fatal is None:
                        self.fatal = broken
            first = self.stages[0]
            room, byte_room = first.space()
            new, incoming, nbytes = [], self.incoming, 0
            while incoming and len(new) < room and nbytes < byte_room:
                entry = incoming.popleft()
                nbytes += entry[2]
                new.append(entry)
            self._taken_bytes += nbytes
            self._first_load = first.spec.maxsize - room + len(new)
            self._first_bytes = CHANNEL_BYTES - byte_room + nbytes
            input_closed = self.input_closed and not self.incoming
            self.cond.notify_all()  # feeders waiting for room
        for stage in self.stages:
            for lane in stage.lanes:
                for stream, text in lane.pool.output.drain():
                    (sys.stderr if stream == "stderr" else sys.stdout).write(text)
        if new:
            self._admit(first, new, nbytes, time.monotonic())
        if input_closed:
            first.input_closed = True
        for stage, lane, batches, failures in taken:
            # The run answers each key exactly once (_run's ledger), so a lane counts what it
            # holds, per batch: an item answered twice would show as a negative count.
            for failure in failures:
                lane.held -= 1
                self._stage_failed(stage, failure.index, failure.item, failure.exception)
            for keys, values, message in batches:
                lane.held -= len(keys)
                self._stage_done_all(stage, keys, values, message)
        self._move()
        self._dispatch()
        self._hand_over()
        self._snapshot()

    def _anything_ready(self) -> bool:
        """Work the router can do now (else it sleeps until a worker finishes or a batch is due)."""
        if self.stop_now or self._snapshot_wanted or (self.input_closed and not self.incoming
                                                      and not self.stages[0].input_closed):
            return True
        if self.incoming and self.stages[0].room() > 0:
            return True
        return any(lane.run.done or lane.run.failures or lane.run.fatal is not None
                   for s in self.stages for lane in s.lanes)

    def _admit(self, first: Stage, new: list, nbytes: int, now: float) -> None:
        """Items from the feeders become roots of the ledger and enter the first stage together."""
        led = self.ledger
        values = [entry[0] for entry in new]
        futures = [entry[1] for entry in new]
        if futures.count(None) == len(futures) and Unpicklable not in set(map(type, values)):
            start = led.take_many(len(new))
            self._enter(first, [(root,) for root in range(start, start + len(new))], values, nbytes, now)
            return
        keys, kept, nbytes = [], [], 0
        for item, future, n in new:
            root = led.take(future)
            if item.__class__ is Unpicklable:  # it could not be pickled where it was given
                first.received += 1
                first.failed_at_entry += 1
                self._stage_failed(first, (root,), item.item, item.error)
            else:
                keys.append((root,))
                kept.append(item)
                nbytes += n
        if keys:
            self._enter(first, keys, kept, nbytes, now)

    def _enter(self, stage: Stage, keys: list, values: list, nbytes: int, now: float, message=None) -> None:
        """Items (as they travel) enter ``stage``: its one lane's inbox, or each the lane its key picks."""
        stage.received += len(keys)
        if len(stage.lanes) == 1:
            stage.lanes[0].put(Segment(keys, values, nbytes, now, message))
            return
        parts: dict[int, Segment] = {}
        for key, item in zip(keys, values):
            try:
                lane_key = stage.spec.key(decoded(item))  # the only decoding on the way: key() needs the value
                index = hash(lane_key) % len(stage.lanes)
            except Exception as exc:  # noqa: BLE001 - the user's key function: this item fails
                stage.failed_at_entry += 1
                try:
                    exc.add_note(f"(raised by the key= function of stage {stage.name!r} on {shown(item)})")
                except Exception:
                    pass
                self._stage_failed(stage, key, item, exc)
                continue
            part = parts.get(index)
            if part is None:
                part = parts[index] = Segment([], [], 0, now)
            part.keys.append(key)
            part.values.append(item)
            part.nbytes += size(item)
        for index, part in parts.items():
            stage.lanes[index].put(part)

    def _stage_done_all(self, stage: Stage, keys: list, values: list, message) -> None:
        """Results of a chunk (or a part of it). The hot path: plain results, nothing waiting for
        them one by one (no futures, no fan-out), go on as one segment, their size taken in C,
        with their message (``Segment.message``)."""
        if not stage.spec.many and not self.ledger.culling:
            types = set(map(type, values))
            if types <= _SIZED:
                self._emit(stage, keys, values, sum(map(len, values)), message)
                return
            if not types & _SPECIAL:  # numbers, Items
                self._emit(stage, keys, values, sum(map(size, values)), message)
                return
        plain_keys, plain, nbytes = [], [], 0
        for key, value in zip(keys, values):
            if value is None:
                stage.dropped += 1
                self.ledger.lost(key)
            elif value.__class__ is BadOutput:
                self._stage_failed(stage, key, value.item, value.error or TypeError(value.message))
            elif self.ledger.culling and self.ledger.unwanted(key):  # its caller cancelled it meanwhile
                stage.done += 1
                self.ledger.lost(key)
            elif stage.spec.many:
                if not value:
                    stage.dropped += 1
                    self.ledger.lost(key)
                    continue
                stage.done += 1
                self.ledger.fan_out(key[0], len(value))
                stage.outbox.append(Fan(key, value))
                stage.waiting += len(value)
                stage.waiting_bytes += size(value)
            else:
                plain_keys.append(key)
                plain.append(value)
                nbytes += size(value)
        if plain_keys:
            self._emit(stage, plain_keys, plain, nbytes)

    def _emit(self, stage: Stage, keys: list, values: list, nbytes: int, message=None) -> None:
        """Results of ``stage`` wait in its outbox until the next channel has room."""
        stage.done += len(keys)
        stage.waiting += len(keys)
        stage.waiting_bytes += nbytes
        stage.outbox.append(Segment(keys, values, nbytes, message=message))
        if message is not None:
            stage.messages += 1

    def _stage_failed(self, stage: Stage, key: tuple, item: Any, exc: BaseException) -> None:
        stage.failed += 1
        if item.__class__ is Item or item.__class__ is bytearray:  # still pickled (see _item)
            try:
                item = decoded(item)  # the Failure shows the item itself
            except Exception:  # noqa: BLE001 - it cannot be unpickled here: its repr says so
                pass
        try:
            exc.add_note(f"(in pipeline {self.name!r}, stage {stage.name!r})")
        except Exception:
            pass
        if self.stop_on_failure and self.fatal is None:
            self.fatal = exc
        self.ledger.lost(key, Failure(key[0], item, exc))

    def _move(self) -> None:
        """Results go on to the next stage (or out) as far as its channel has room, segment by
        segment; a segment is cut only where the room ends inside it."""
        last = len(self.stages) - 1
        now = time.monotonic()
        for i in range(last, -1, -1):
            stage = self.stages[i]
            nxt = self.stages[i + 1] if i < last else None
            room, byte_room = nxt.space() if nxt is not None else (float("inf"), float("inf"))
            outbox, moved, nbytes, message = stage.outbox, 0, 0, None
            keys: list = []
            values: list = []
            while outbox and moved < room and nbytes < byte_room:
                entry = outbox[0]
                if entry.__class__ is Fan:  # a many= result's outputs, one by one
                    key, value = entry.pop()
                    if not entry.left:
                        outbox.popleft()
                    keys.append(key)
                    values.append(value)
                    moved += 1
                    nbytes += size(value)
                    continue
                count = entry.fits(room - moved, byte_room - nbytes)
                if count == len(entry.keys):
                    outbox.popleft()
                else:
                    entry = entry.cut(count)
                message = entry.message if not moved else None  # one whole segment: its message goes on
                keys += entry.keys
                values += entry.values
                moved += count
                nbytes += entry.nbytes
            if moved:
                if nxt is None:
                    self.ledger.deliver(keys, values, nbytes)
                else:
                    self._enter(nxt, keys, values, nbytes, now, message)
            if stage.messages:  # what waits lets its message go (Segment.message)
                stage.messages = 0
                for entry in outbox:
                    if entry.__class__ is Segment:
                        entry.message = None
            stage.waiting -= moved
            stage.waiting_bytes -= nbytes
            stage.emitted += moved
            if nxt is not None and stage.finished():
                nxt.input_closed = True

    def _dispatch(self) -> None:
        now = time.monotonic()
        for i, stage in enumerate(self.stages):
            spec = stage.spec
            downstream = self.stages[i + 1].spec.maxsize if i + 1 < len(self.stages) else None
            woken = []
            for lane in stage.lanes:
                sent = False
                while lane.inbox and lane.room():
                    if downstream is not None and (stage.waiting >= downstream
                                                   or stage.waiting_bytes >= CHANNEL_BYTES):
                        break  # backpressure: the next stage cannot take more yet
                    if spec.batch is not None:
                        max_size, max_wait = spec.batch
                        ready = (lane.inbox_count >= max_size or stage.input_closed
                                 or now - lane.inbox[0].since >= max_wait)
                        if not ready:
                            break
                        (keys, values, message), batch = lane.take(max_size, whole=True), True
                    else:
                        (keys, values, message), batch = lane.take(lane.chunk_size(spec)), False
                    if self.ledger.culling:
                        keys, values = self._wanted(stage, keys, values)
                        message = None
                        if not keys:
                            continue
                    lane.held += len(keys)
                    stage.batched += len(keys)
                    # the last stage's results' message as it came, or pickling, but of pickles:
                    # no user code runs
                    payload = message if message is not None else chunk_payload(values)
                    with self.cond:
                        lane.run.submit_encoded(keys, values, payload, batch)
                    sent = True
                lane.drop_messages()
                if sent:
                    woken.append(lane)
                if stage.input_closed and not lane.inbox:
                    lane.run.exhausted = True
            for lane in woken:
                lane.wake()

    def _hand_over(self) -> None:
        """imap(): what came out goes to the consumer's thread, which decodes it."""
        streamed = self.ledger.streamed
        if streamed:
            with self.cond:
                self.outlet.extend(streamed)
                self.cond.notify_all()
            streamed.clear()

    def _wanted(self, stage: Stage, keys: list, values: list) -> tuple[list, list]:
        """A service's items whose Future the caller cancelled are not sent to a worker."""
        kept_keys, kept = [], []
        for key, value in zip(keys, values):
            if self.ledger.unwanted(key):
                stage.cancelled_queued += 1
                self.ledger.lost(key)
            else:
                kept_keys.append(key)
                kept.append(value)
        return kept_keys, kept

    def next_timeout(self, tick: float) -> float:
        """How long the router may sleep: until the oldest item of a forming batch is due."""
        timeout = tick
        now = time.monotonic()
        for i, stage in enumerate(self.stages):
            if stage.spec.batch is None:
                continue
            downstream = self.stages[i + 1].spec.maxsize if i + 1 < len(self.stages) else None
            if downstream is not None and (stage.waiting >= downstream or stage.waiting_bytes >= CHANNEL_BYTES):
                continue
            for lane in stage.lanes:
                # a batch that cannot leave yet is no reason to wake: a worker's end is
                if lane.inbox and lane.room():
                    timeout = min(timeout, max(0.0, lane.inbox[0].since + stage.spec.batch[1] - now))
        return timeout

    @property
    def finished(self) -> bool:
        return (self.stages[0].input_closed and not self.ledger.live
                and all(s.finished() for s in self.stages))

    def _finish(self) -> None:
        """The router's last act: shut the pools down, count what is left as cancelled, resolve or
        cancel its futures, take the final snapshot and tell the observers."""
        kill = self.stop_now or self.fatal is not None or not self.finished
        for stage in self.stages:
            try:
                stage.close(kill)
            except Exception:  # noqa: BLE001 - the others must close anyway
                pass
        with self.cond:
            left = list(self.incoming)
            self.incoming.clear()
            for stage in self.stages:
                for lane in stage.lanes:
                    lane.run.pending.clear()  # cancelled: no worker takes them any more
            self.input_closed = True
            self.state = "failed" if self.fatal is not None and not self.stop_now else "stopped"
        for _, future, _ in left:  # taken in, never reached a stage
            self.ledger.take(future)
        for stage in self.stages:
            for lane in stage.lanes:
                stage.cancelled_queued += lane.inbox_count
                stage.cancelled_held += lane.held
                lane.inbox.clear()
                lane.inbox_count = lane.inbox_bytes = 0
                lane.held = 0
            stage.outbox.clear()
            stage.waiting = stage.waiting_bytes = 0
        self.ledger.cancel_all(self.fatal if self.state == "failed" else None)
        self._hand_over()
        stats = self._take_snapshot()
        self.history.append(stats)
        with self.cond:
            self._last = stats
            self._snapshots += 1
            self.cond.notify_all()
        try:
            for observer in self.observers:
                try:
                    observer.close(stats)
                except Exception:  # noqa: BLE001 - a broken front-end must not hide the result
                    pass
        finally:  # an interrupt raised by a front-end's close must not leave the service's threads
            for hook in self.on_finish:
                hook()

    # ---- stats ---------------------------------------------------------------------------------
    def _take_snapshot(self) -> PipelineStats:
        now = time.perf_counter()
        stages = []
        with self.cond:
            for stage in self.stages:
                stages += stage.stats(now)
            waiting = len(self.incoming)
        stages = self._bottleneck.mark(stages, now, running=self.state == "running")
        if self.state == "running":
            stages = with_usage(stages, self._usage.sample(now, {s.name: s.workers for s in self.stages}))
        led = self.ledger
        return PipelineStats(self.name, self.state, now - self.started, led.submitted + waiting, led.completed,
                             led.failed, led.dropped, led.pending + waiting, led.delivered, tuple(stages),
                             cancelled=led.cancelled, outcome=self._outcome(), total=self.total,
                             errors=self._errors(led))

    def _errors(self, led) -> tuple[str, ...]:
        """The first failures as text (made again only when the count of failures changed)."""
        if self._errors_seen != led.failed:
            self._errors_seen = led.failed
            texts = (f"item {f.index}: {type(f.exception).__name__}: {f.exception}"
                     for f in itertools.islice(led.failures, ERRORS_SHOWN))
            self._errors_text = tuple(t if len(t) <= 200 else t[:199] + "\u2026" for t in texts)
        return self._errors_text

    def _outcome(self) -> str:
        if self.state == "running":
            return ""
        if self.state == "failed":
            return "failed"
        if self.interrupted:
            return "interrupted"
        return "stopped" if self.stop_now or self.service else "finished"

    def _snapshot(self) -> None:
        now = time.perf_counter()
        with self.cond:
            wanted = self._snapshot_wanted
        if not wanted and now - self._last_snapshot < 1.0 / SNAPSHOT_HZ:
            return
        self._last_snapshot = now
        stats = self._take_snapshot()
        self.history.append(stats)
        with self.cond:
            self._last = stats
            self._snapshots += 1
            self._snapshot_wanted = False
            self.cond.notify_all()
        for observer in self.observers:
            observer.update(stats)

    # ---- results and control -----------------------------------------------------------------------
    @property
    def failures(self) -> list[Failure]:
        return list(self.ledger.failures)

    def result_list(self) -> ResultList:
        """The results, handed over once: the flow keeps no reference to them afterwards."""
        led = self.ledger
        pairs = sorted(led.results, key=lambda kv: kv[0]) if self.ordered else led.results
        led.results = []
        values, failures = [], list(led.failures)
        for i, (key, value) in enumerate(pairs):  # decoded here, in the caller's thread
            try:
                values.append(decoded(value))
            except Exception as exc:  # noqa: BLE001 - any unpickling error: this result fails, with why
                failures.append(Failure(key[0], None, undecodable(exc)))
            pairs[i] = None  # its pickle goes as its value comes
        return ResultList(values, sorted(failures, key=lambda f: f.index))

    def scale(self, name: str, workers: int) -> None:
        for stage in self.stages:
            if stage.name == name:
                if stage.spec.key is not None:
                    raise ValueError(f"stage {name!r} routes by key= to a fixed set of workers (items of a "
                                     "key stay on one worker), so its worker count cannot change while it runs")
                stage.lanes[0].pool.resize(workers)
                stage.lanes[0].run.max_workers = workers
                return
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")
