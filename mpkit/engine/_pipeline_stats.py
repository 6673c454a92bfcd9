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

#: Snapshots a second at most, and so dashboard updates a second: enough to look live, few enough
#: that a notebook's message rate stays far under Jupyter's limits.
SNAPSHOT_HZ = 10


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

    @property
    def fill(self) -> float:
        """How full the input channel is, 0 to 1."""
        return min(1.0, self.queued / self.capacity) if self.capacity else 0.0


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


def mark_bottleneck(stages: list[StageStats]) -> list[StageStats]:
    """The stage holding the pipeline back: its input at least half full while the stage after it
    has almost nothing queued (or it is the last)."""
    out = list(stages)
    for i, stage in enumerate(stages):
        if stage.kind != "stage" or stage.fill < 0.5:
            continue
        after = stages[i + 1] if i + 1 < len(stages) else None
        if after is None or after.fill < 0.1:
            out[i] = replace(stage, bottleneck=True)
    return out
