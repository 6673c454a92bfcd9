"""Frozen snapshots of a pipeline, for dashboards, text status and timelines.

The router that moves every item between stages keeps the counts, and takes every snapshot
itself, so the numbers of one snapshot agree with each other; a front-end only ever sees these
snapshots (taken at most ``SNAPSHOT_HZ`` times a second, or when asked for), never a queue.

Every state is counted on its own, where the item enters or leaves it: ``queued`` and
``in_flight`` are measured (items in the channel, keys held by the stage's workers), not what is
left over. So ``received == queued + in_flight + done + failed + dropped + cancelled`` for each
stage, and :attr:`PipelineStats.accounted` for the whole, are checks that an item lost, or
finished twice, breaks. At the end of a run or service ``queued == in_flight == pending == 0``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ._usage import WorkerUsage

#: Snapshots a second at most, and so dashboard updates a second: enough to look live, few enough
#: that a notebook's message rate stays far under Jupyter's limits.
SNAPSHOT_HZ = 10


def batcher_name(batch: tuple[int, float]) -> str:
    """The row name of a batched stage's batcher, from its (size, max_wait)."""
    return f"batch {batch[0]} / {batch[1]:g} s"


@dataclass(frozen=True)
class StageStats:
    """One stage (or the batcher in front of a stage) at one moment."""

    name: str
    kind: str              #: "stage" or "batch" (the micro-batcher feeding the next stage)
    workers: int           #: worker processes alive (0 for a batcher)
    target_workers: int    #: workers the stage is set to have (``scale`` changes it)
    busy: int              #: workers holding items now
    capacity: int          #: bound of the input channel, in items
    queued: int            #: items waiting in the input channel (exact)
    in_flight: int         #: items held by workers
    received: int          #: items that entered the stage
    done: int              #: items finished with a result (a batcher: items put in batches)
    emitted: int           #: results passed on (more than done if the stage emits several)
    failed: int            #: items that failed (after retries)
    dropped: int           #: items for which the stage returned None (many=: an empty iterable)
    rate: float            #: items finished per second, over the last second or so
    mean_seconds: float    #: mean compute time per item in the workers
    bottleneck: bool = False  #: its input is full while the next stage starves
    cancelled: int = 0     #: items inside when the flow stopped early (stop(drain=False), interrupt, error)
    waiting: int = 0       #: results made, waiting for room in the next stage's channel
    usage: tuple[WorkerUsage, ...] = ()  #: CPU and memory of each worker (read once a second; none at the end)

    @property
    def cpu_percent(self) -> float:
        """CPU of all its workers, in % of one core (200.0 = two cores busy)."""
        return sum(u.cpu_percent for u in self.usage)

    @property
    def rss(self) -> int:
        """Resident memory of all its workers, in bytes."""
        return sum(u.rss for u in self.usage)

    @property
    def fill(self) -> float:
        """How full the input channel is, 0 to 1."""
        return min(1.0, self.queued / self.capacity) if self.capacity else 0.0


#: Failures a snapshot names (the rest are counted): a summary or a dashboard shows a few, and the
#: run's ResultList holds them all.
ERRORS_SHOWN = 3


@dataclass(frozen=True)
class PipelineStats:
    """The whole pipeline at one moment: totals and one :class:`StageStats` per stage."""

    name: str
    state: str             #: "ready", "running", "stopping", "stopped", "failed"
    elapsed: float         #: seconds since the run or service started
    submitted: int         #: items sent in
    completed: int         #: items that came out of the last stage as results
    failed: int            #: items that failed in some stage
    dropped: int           #: items some stage dropped (returned None)
    pending: int           #: items still on their way (including those waiting to enter)
    results: int           #: results delivered (more than completed after a ``many`` stage)
    stages: tuple[StageStats, ...] = field(default_factory=tuple)
    cancelled: int = 0     #: items inside when the flow stopped early: stop(drain=False), an
                           #: interrupted run(), or an error that stopped the run or the service
    outcome: str = ""      #: how it ended: "finished", "failed", "interrupted" or "stopped"
                           #: (a service, or a stream left early); "" while it runs
    total: int | None = None  #: items in the source of a run() whose source has a len(), else None
    errors: tuple[str, ...] = ()  #: the first failures, "item 3: ValueError: ..." (at most ERRORS_SHOWN)

    @property
    def ended(self) -> int:
        """Items that went through one way or another: completed, failed, dropped or cancelled."""
        return self.completed + self.failed + self.dropped + self.cancelled

    @property
    def accounted(self) -> bool:
        """Every item sent in ended in exactly one way (a result, a failure, a drop, cancelled) or
        is still on its way: ``submitted == completed + failed + dropped + cancelled + pending``.

        Each term is counted on its own (``pending`` is the number of items inside, not the
        remainder), so a lost or twice-counted item makes this False. It says nothing about the
        results' values; at the end of a run, ``pending == 0`` too.
        """
        return self.submitted == self.completed + self.failed + self.dropped + self.cancelled + self.pending

    def stage(self, name: str) -> StageStats:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")


def with_usage(stages: list[StageStats], usage: dict[str, tuple[WorkerUsage, ...]]) -> list[StageStats]:
    """Each process stage's snapshot with its workers' CPU and memory (``_usage.Usage.sample``)."""
    return [replace(s, usage=usage[s.name]) if s.kind == "stage" and s.name in usage else s for s in stages]


#: The bottleneck rule, with hysteresis. A stage becomes the bottleneck when its input is at least
#: ENTER_FILL full while the next one's is under STARVED_FILL (or it is the last stage); it stays the
#: bottleneck until its input falls under LEAVE_FILL or the next one's rises over FED_FILL. The gaps
#: between the pairs are what stops a queue that sits on one line (a batcher's, emptied by every
#: batch) from moving the mark at every snapshot; wider gaps would keep a mark after it moved.
ENTER_FILL, LEAVE_FILL = 0.5, 0.25
STARVED_FILL, FED_FILL = 0.1, 0.35
#: Seconds a new answer of the rule must hold before the mark moves: longer than a batch cycle or
#: a burst of the source, short enough that a real move shows within a second or two.
BOTTLENECK_HOLD = 1.0


class Bottleneck:
    """The stage holding the pipeline back, as the router's snapshots go by (one per flow).

    :meth:`mark` takes each snapshot's stages with the time, and marks at most one: the mark moves
    only when the rule's answer has changed and held for ``BOTTLENECK_HOLD`` seconds, and the rule
    keeps the stage already marked while it is within the looser bounds.
    """

    def __init__(self) -> None:
        self.current: str | None = None     # the stage marked now
        self._candidate: str | None = None  # a different answer of the rule, and since when
        self._since = 0.0

    def mark(self, stages: list[StageStats], now: float, running: bool = True) -> list[StageStats]:
        if not running:  # a flow that ended holds nothing back
            self.current = self._candidate = None
            return list(stages)
        answer = self._rule(stages)
        if answer == self.current:
            self._candidate = None
        elif answer != self._candidate:
            self._candidate, self._since = answer, now
        elif now - self._since >= BOTTLENECK_HOLD:
            self.current, self._candidate = answer, None
        return [replace(s, bottleneck=True) if s.name == self.current else s for s in stages]

    def _rule(self, stages: list[StageStats]) -> str | None:
        def after_fill(i: int) -> float:
            return stages[i + 1].fill if i + 1 < len(stages) else 0.0

        for i, stage in enumerate(stages):
            if (stage.name == self.current and stage.kind == "stage" and stage.fill >= LEAVE_FILL
                    and after_fill(i) < FED_FILL):
                return stage.name
        for i, stage in enumerate(stages):
            if stage.kind == "stage" and stage.fill >= ENTER_FILL and after_fill(i) < STARVED_FILL:
                return stage.name
        return None
