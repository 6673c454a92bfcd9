"""A running pipeline: one router moving every item between stages of worker processes.

    source ──► [inbox 0] ─► stage 0 pool ─► outbox 0 ──► [inbox 1] ─batcher─► stage 1 pool ─► ... ─► sink
    (items,       bounded       workers       │            bounded      max_size / max_wait        (results,
     submit())                                └ results come back to the router, which passes    futures)
                                                them on only while the next inbox has room

The router (the thread calling ``run()``, or a service's thread) is the only one that touches the
inboxes and outboxes, and every item passes through it, so its counts are exact and a stage's
depth is known without ``Queue.qsize()``. Each stage is a ``Pool`` fed by the router through an
open ``Run``; what a dead worker held is retried or failed by the pool's own accounting. Between
stages items travel in chunks (one pickle and one pipe message per chunk, not per item), sized
from the measured work of the stage; a batched stage gets one chunk per micro-batch.

Backpressure: a stage is given more work only while its outbox fits in the next stage's inbox,
and the source is read only while the first inbox has room, so a fast producer waits instead of
filling memory. End of stream: the source is exhausted, then each stage in turn drains its inbox
(the batcher flushes its partial batch), and the pools are shut down.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from . import _worker
from ._errors import Failure, ResultList
from ._pipeline_stats import SNAPSHOT_HZ, PipelineStats, StageStats
from ._pool import Pool

#: Snapshots kept for ``timeline()``: at 10 a second, ten minutes of history.
HISTORY = 6000


class Built:
    """A stage's class or factory, pickled so that the worker builds the object when it loads it."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self.__qualname__ = getattr(factory, "__qualname__", repr(factory))

    def __reduce__(self):
        return _worker.build, (self.factory,)

    def __call__(self, item):  # never called here: the worker gets the built object instead
        raise RuntimeError("a built stage runs only in its worker processes")


class _Lane:
    """A pool and the open run that feeds it. A stage has one lane of N workers, or, with
    ``key=``, N lanes of one worker each, so that items of one key stay in order on one worker."""

    def __init__(self, spec, workers: int, cond: threading.Condition, start_method: str | None):
        self.pool = Pool(workers, start_method=start_method, idle_timeout=24 * 3600,
                         max_tasks_per_child=spec.max_tasks_per_child)
        self.pool.output.label = spec.name
        target = Built(spec.target) if spec.factory else spec.target
        self.run = self.pool._open_run(target, cond, retries=spec.retries, timeout=spec.timeout)

    def room(self) -> bool:
        return len(self.run.pending) < 2 * self.pool.size


class _Stage:
    def __init__(self, spec, index: int, cond: threading.Condition, start_method: str | None):
        self.spec, self.index, self.cond = spec, index, cond
        self.lanes: list[_Lane] = []
        try:
            for _ in range(spec.workers if spec.key is not None else 1):
                self.lanes.append(_Lane(spec, 1 if spec.key is not None else spec.workers, cond, start_method))
        except BaseException:
            self.close(kill=True)
            raise
        self.inbox: deque = deque()     # (key, item, arrival time)
        self.outbox: deque = deque()    # (key, value) finished, waiting for room downstream
        self.received = self.done = self.emitted = self.failed = self.dropped = 0
        self.input_closed = False
        self.rates: deque = deque(maxlen=SNAPSHOT_HZ * 2)  # (time, finished) samples

    @property
    def name(self) -> str:
        return self.spec.name

    def pending_items(self) -> int:
        """Items in chunks waiting for a worker (the manager threads take from them: lock)."""
        with self.cond:
            return sum(len(c.indices) for lane in self.lanes for c in lane.run.pending)

    def finished(self) -> bool:
        return (self.input_closed and not self.inbox and not self.outbox
                and all(not lane.run.pending and lane.run.in_flight == 0 and not lane.run.done
                        and not lane.run.failures for lane in self.lanes))

    def lane_of(self, item) -> _Lane:
        if len(self.lanes) == 1:
            return self.lanes[0]
        return self.lanes[hash(self.spec.key(item)) % len(self.lanes)]

    def workers(self) -> list[tuple[int, int, str]]:
        return [w for lane in self.lanes for w in lane.pool.workers()]

    def close(self, kill: bool) -> None:
        for lane in self.lanes:
            if kill:
                with self.cond:
                    lane.run.cancelled = True
            lane.pool.shutdown(wait=not kill)


class Flow:
    """Stages, channels and accounting of one run or one service of a pipeline."""

    def __init__(self, name: str, specs: list, *, on_error: str = "raise", ordered: bool = False,
                 start_method: str | None = None, observers: list | None = None):
        self.name = name
        self.cond = threading.Condition()
        self.on_error, self.ordered = on_error, ordered
        self.stages: list[_Stage] = []
        try:
            for i, spec in enumerate(specs):
                self.stages.append(_Stage(spec, i, self.cond, start_method))
        except BaseException:
            for stage in self.stages:
                stage.close(kill=True)
            raise
        self.observers = list(observers or [])
        self.incoming: deque = deque()       # items submitted by other threads (a service)
        self.source = None                   # an iterator (run())
        self.source_closed = False
        self.seq = 0
        self.live: dict[int, int] = {}        # root -> outputs still on their way
        self.outputs: dict[int, list] = {}    # root -> results collected (many-stages give several)
        self.root_failures: dict[int, Failure] = {}
        self.results: list = []               # (key, value) for run()
        self.failures: list[Failure] = []
        self.completed = self.failed = self.dropped = self.delivered = 0
        self.fatal: BaseException | None = None
        self.state = "running"
        self.started = time.perf_counter()
        self.history: deque[PipelineStats] = deque(maxlen=HISTORY)
        self._last_snapshot = 0.0
        self.on_root_done: Callable[[int, str, Any], None] | None = None  # a service's futures
        self.many = any(s.spec.many for s in self.stages)

    # ---- feeding ------------------------------------------------------------------------------
    def _new_root(self, item) -> None:
        seq = self.seq
        self.seq += 1
        self.live[seq] = 1
        first = self.stages[0]
        first.inbox.append(((seq,), item, time.monotonic()))
        first.received += 1

    def _read_source(self) -> None:
        first = self.stages[0]
        room = first.spec.maxsize - len(first.inbox) - first.pending_items()
        while self.incoming and room > 0:
            self._new_root(self.incoming.popleft())
            room -= 1
        while self.source is not None and room > 0:
            try:
                item = next(self.source)
            except StopIteration:
                self.source = None
                self.source_closed = True
                break
            self._new_root(item)
            room -= 1
        if self.source_closed and not self.incoming:
            first.input_closed = True

    # ---- the router's step ---------------------------------------------------------------------
    def step(self, timeout: float) -> None:
        """Collect what the workers finished, move items along, dispatch, take a snapshot."""
        with self.cond:
            if not self._anything_ready():
                self.cond.wait(timeout)
            taken = []
            for stage in self.stages:
                batches, failures, fatal = [], [], None
                for lane in stage.lanes:
                    run = lane.run
                    batches += run.done
                    failures += run.failures
                    fatal = fatal or run.fatal
                    run.done.clear()
                    run.failures.clear()
                taken.append((batches, failures, fatal))
            self._read_source()
        for stage in self.stages:
            for lane in stage.lanes:
                for stream, text in lane.pool.output.drain():
                    (sys.stderr if stream == "stderr" else sys.stdout).write(text)
        for stage, (batches, failures, fatal) in zip(self.stages, taken):
            if fatal is not None and self.fatal is None:
                self.fatal = fatal
            for failure in failures:
                self._stage_failed(stage, failure)
            for keys, values in batches:
                self._stage_done(stage, keys, values)
        self._move()
        self._dispatch()
        self._snapshot()

    def _anything_ready(self) -> bool:
        """Work the router can do now (else it sleeps until a worker finishes or a batch is due)."""
        if self.source is not None or self.incoming:  # new items, if the first stage has room
            first = self.stages[0]
            if len(first.inbox) + first.pending_items() < first.spec.maxsize:
                return True
        return any(lane.run.done or lane.run.failures or lane.run.fatal
                   for s in self.stages for lane in s.lanes)

    def _stage_done(self, stage: _Stage, keys, values) -> None:
        stage.done += len(values)
        for key, value in zip(keys, values):
            if value is None:
                stage.dropped += 1
                self._end_output(key, "dropped", None)
            elif stage.spec.many:
                outs = list(value)
                if not outs:
                    stage.dropped += 1
                    self._end_output(key, "dropped", None)
                    continue
                self.live[key[0]] += len(outs) - 1
                for j, out in enumerate(outs):
                    stage.outbox.append(((*key, j), out))
            else:
                stage.outbox.append((key, value))

    def _stage_failed(self, stage: _Stage, failure: Failure) -> None:
        stage.failed += 1
        key = failure.index
        try:
            failure.exception.add_note(f"(in pipeline {self.name!r}, stage {stage.name!r})")
        except Exception:
            pass
        self.root_failures.setdefault(key[0], Failure(key[0], failure.item, failure.exception))
        if self.on_error == "raise" and self.fatal is None:
            self.fatal = failure.exception
        self._end_output(key, "failed", None)

    def _end_output(self, key, how: str, value) -> None:
        root = key[0]
        if how == "result":
            self.outputs.setdefault(root, []).append(value)
            self.delivered += 1
            if self.source is not None or self.on_root_done is None:
                self.results.append((key, value))
        self.live[root] -= 1
        if self.live[root] == 0:
            del self.live[root]
            outputs = self.outputs.pop(root, [])
            failure = self.root_failures.pop(root, None)
            if failure is not None:
                self.failed += 1
                self.failures.append(failure)
                outcome, payload = "failed", failure.exception
            elif not outputs:
                self.dropped += 1
                outcome, payload = "dropped", None
            else:
                self.completed += 1
                outcome, payload = "result", outputs if self.many else outputs[0]
            if self.on_root_done is not None:
                self.on_root_done(root, outcome, payload)

    def _move(self) -> None:
        last = len(self.stages) - 1
        for i in range(last, -1, -1):
            stage = self.stages[i]
            if i == last:
                while stage.outbox:
                    key, value = stage.outbox.popleft()
                    stage.emitted += 1
                    self._end_output(key, "result", value)
            else:
                nxt = self.stages[i + 1]
                room = nxt.spec.maxsize - len(nxt.inbox) - nxt.pending_items()
                now = time.monotonic()
                while stage.outbox and room > 0:
                    key, value = stage.outbox.popleft()
                    stage.emitted += 1
                    nxt.inbox.append((key, value, now))
                    nxt.received += 1
                    room -= 1
            if stage.finished() and i < last:
                self.stages[i + 1].input_closed = True

    def _dispatch(self) -> None:
        now = time.monotonic()
        for i, stage in enumerate(self.stages):
            spec = stage.spec
            downstream = self.stages[i + 1].spec.maxsize if i + 1 < len(self.stages) else None
            woken: set = set()
            if len(stage.lanes) > 1 and spec.batch is None:
                self._dispatch_by_key(stage, downstream, woken)
                for lane in woken:
                    lane.pool._manager.wake()
                continue
            with self.cond:
                while stage.inbox:
                    if downstream is not None and len(stage.outbox) >= downstream:
                        break  # backpressure: the next stage cannot take more yet
                    lane = stage.lane_of(stage.inbox[0][1])
                    if not lane.room():
                        break  # in order: a key's items never overtake each other
                    if spec.batch is not None:
                        max_size, max_wait = spec.batch
                        ready = (len(stage.inbox) >= max_size or stage.input_closed
                                 or now - stage.inbox[0][2] >= max_wait)
                        if not ready:
                            break
                        size, batch = min(max_size, len(stage.inbox)), True
                    else:
                        size, batch = min(lane.run.sizer.next_size(0), len(stage.inbox)), False
                    picked = [stage.inbox.popleft()]
                    while len(picked) < size and stage.inbox and stage.lane_of(stage.inbox[0][1]) is lane:
                        picked.append(stage.inbox.popleft())
                    lane.run.submit([k for k, _, _ in picked], [x for _, x, _ in picked], batch)
                    woken.add(lane)
                if stage.input_closed and not stage.inbox:
                    for lane in stage.lanes:
                        lane.run.exhausted = True
            for lane in woken:
                lane.pool._manager.wake()

    def _dispatch_by_key(self, stage: _Stage, downstream: int | None, woken: set) -> None:
        """A keyed stage: one pass over the inbox, each item to its key's lane. A lane without room
        stops taking items for this pass, so a key's items never overtake each other, while the
        other keys' items go on (no waiting behind one busy worker)."""
        if downstream is not None and len(stage.outbox) >= downstream:
            return  # backpressure: the next stage cannot take more yet
        picks: dict = {}
        blocked: set = set()
        keep: deque = deque()
        with self.cond:
            for entry in stage.inbox:
                lane = stage.lane_of(entry[1])
                if lane in blocked or not (lane in picks or lane.room()):
                    blocked.add(lane)
                    keep.append(entry)
                    continue
                picked = picks.setdefault(lane, [])
                picked.append(entry)
                if len(picked) >= lane.run.sizer.next_size(0):
                    blocked.add(lane)  # a full chunk: the rest of this key waits for the next pass
            stage.inbox = keep
            for lane, picked in picks.items():
                lane.run.submit([k for k, _, _ in picked], [x for _, x, _ in picked], False)
                woken.add(lane)
            if stage.input_closed and not stage.inbox:
                for lane in stage.lanes:
                    lane.run.exhausted = True

    def next_timeout(self, tick: float) -> float:
        """How long the router may sleep: until the oldest item of a forming batch is due."""
        timeout = tick
        now = time.monotonic()
        for i, stage in enumerate(self.stages):
            if stage.spec.batch is None or not stage.inbox:
                continue
            downstream = self.stages[i + 1].spec.maxsize if i + 1 < len(self.stages) else None
            with self.cond:
                blocked = (not stage.lane_of(stage.inbox[0][1]).room()
                           or (downstream is not None and len(stage.outbox) >= downstream))
            if not blocked:  # a batch that cannot leave yet is no reason to wake: a worker's end is
                timeout = min(timeout, max(0.0, stage.inbox[0][2] + stage.spec.batch[1] - now))
        return timeout

    @property
    def finished(self) -> bool:
        return self.source_closed and not self.incoming and not self.live and all(s.finished() for s in self.stages)

    # ---- stats ---------------------------------------------------------------------------------
    def snapshot(self) -> PipelineStats:
        now = time.perf_counter()
        stages = []
        with self.cond:
            for stage in self.stages:
                runs = [lane.run for lane in stage.lanes]
                finished = stage.done + stage.failed
                stage.rates.append((now, finished))
                t0, n0 = stage.rates[0]
                rate = (finished - n0) / (now - t0) if now - t0 > 0.05 else 0.0
                queued = len(stage.inbox) + stage.pending_items()
                in_flight = stage.received - stage.done - stage.failed - queued
                common = dict(capacity=stage.spec.maxsize, queued=queued, received=stage.received)
                if stage.spec.batch is not None:
                    stages.append(StageStats(
                        name=f"batch {stage.spec.batch[0]} / {stage.spec.batch[1]:g} s", kind="batch",
                        workers=0, target_workers=0, busy=0, in_flight=0,
                        done=stage.received - len(stage.inbox), emitted=stage.received - len(stage.inbox),
                        failed=0, dropped=0, rate=rate, mean_seconds=0.0, **common))
                    common = dict(capacity=stage.spec.maxsize, queued=stage.pending_items(),
                                  received=stage.received - len(stage.inbox))
                stages.append(StageStats(
                    name=stage.name, kind="stage", workers=sum(r.pool_workers for r in runs),
                    target_workers=sum(lane.pool.size for lane in stage.lanes),
                    busy=sum(r.busy_workers for r in runs), in_flight=max(0, in_flight),
                    done=stage.done - stage.dropped, emitted=stage.emitted, failed=stage.failed,
                    dropped=stage.dropped, rate=rate,
                    mean_seconds=sum(r.busy_seconds for r in runs) / stage.done if stage.done else 0.0,
                    **common))
        stages = _mark_bottleneck(stages)
        pending = self.seq - self.completed - self.failed - self.dropped
        return PipelineStats(self.name, self.state, now - self.started, self.seq, self.completed,
                             self.failed, self.dropped, pending, self.delivered, tuple(stages))

    def _snapshot(self, force: bool = False) -> PipelineStats | None:
        now = time.perf_counter()
        if not force and now - self._last_snapshot < 1.0 / SNAPSHOT_HZ:
            return None
        self._last_snapshot = now
        stats = self.snapshot()
        self.history.append(stats)
        for observer in self.observers:
            observer.update(stats)
        return stats

    # ---- results and the end --------------------------------------------------------------------
    def result_list(self) -> ResultList:
        """The results, handed over once: the flow keeps no reference to them afterwards."""
        pairs = sorted(self.results, key=lambda kv: kv[0]) if self.ordered else self.results
        out = ResultList([v for _, v in pairs], sorted(self.failures, key=lambda f: f.index))
        self.results = []
        return out

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

    def close(self, kill: bool = False, state: str = "stopped") -> PipelineStats | None:
        """Shut every stage's pool down (at once if ``kill``) and tell the observers, last."""
        for stage in self.stages:
            stage.close(kill)
        self.state = state
        if not self.stages:
            return None
        stats = self.snapshot()
        self.history.append(stats)
        for observer in self.observers:
            observer.close(stats)
        return stats


def _mark_bottleneck(stages: list[StageStats]) -> list[StageStats]:
    """The stage holding the pipeline back: its input at least half full while the stage after it
    has almost nothing queued (or it is the last)."""
    from dataclasses import replace

    out = list(stages)
    for i, stage in enumerate(stages):
        if stage.kind != "stage" or stage.fill < 0.5:
            continue
        after = stages[i + 1] if i + 1 < len(stages) else None
        if after is None or after.fill < 0.1:
            out[i] = replace(stage, bottleneck=True)
    return out
