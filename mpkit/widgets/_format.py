"""Numbers as the front-ends show them: elapsed time, rates, per-item times, worker counts.

One place, so the dashboard, the text status and its summary never disagree about a figure.
"""
from __future__ import annotations

from ..engine._pipeline_stats import StageStats


def elapsed(seconds: float) -> str:
    """``12.3s`` under a minute, then ``4:05`` and ``1:02:03``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate(items_per_second: float) -> str:
    """Items a second: one decimal while small, whole numbers with separators once large."""
    return f"{items_per_second:.1f}" if items_per_second < 100 else f"{items_per_second:,.0f}"


def mean_ms(seconds: float) -> str:
    """Mean compute time per item, in milliseconds."""
    ms = seconds * 1000.0
    return f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def workers_cell(stage: StageStats, ended: bool = False) -> str:
    """A stage's workers for a table cell: ``1 of 2 busy``, ``starting 2``, ``2 → 4, 1 busy``;
    ``2`` once the run ended (none is busy then); ``batcher`` for a batcher."""
    if stage.kind == "batch":
        return "batcher"
    if ended:
        return f"{stage.target_workers:,}"
    if stage.workers == 0 and stage.target_workers:
        return f"starting {stage.target_workers:,}"
    if stage.target_workers != stage.workers:
        return f"{stage.workers} → {stage.target_workers}, {stage.busy} busy"
    return f"{stage.busy} of {stage.workers:,} busy"


def queue(stage: StageStats) -> str:
    """``queued of capacity`` of the stage's input channel: ``5 of 8``."""
    return f"{stage.queued:,} of {stage.capacity:,}"


def pool_workers(busy: int, alive: int, ended: bool = False) -> str:
    """A map's workers: ``1 of 2 workers busy``, ``workers starting``; ``2 workers`` at the end."""
    if ended:
        return plural(alive, "worker")
    if alive == 0:
        return "workers starting"
    return f"{busy} of {plural(alive, 'worker')} busy"


def plural(n: int, word: str) -> str:
    """``1 worker``, ``2 workers``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def workers_words(stage: StageStats) -> str:
    """What a stage's workers do, in words: ``1 of 2 workers busy``, ``starting 2 workers``,
    ``scaling 2 → 4 workers (1 busy)``; a batcher's line says what it holds."""
    if stage.kind == "batch":
        return f"batching ({plural(stage.emitted, 'item')} sent)"
    if stage.workers == 0 and stage.target_workers:
        return f"starting {plural(stage.target_workers, 'worker')}"
    if stage.target_workers != stage.workers:
        return f"scaling {stage.workers} \u2192 {plural(stage.target_workers, 'worker')} ({stage.busy} busy)"
    return f"{stage.busy} of {plural(stage.workers, 'worker')} busy"


def mean_rate(stage: StageStats, elapsed: float) -> float:
    """Items a stage finished (done, failed or dropped) per second over the whole run: the rate
    to show once it ended, when the live one (over the last second) has decayed to zero."""
    finished = stage.done + stage.failed + stage.dropped
    return finished / elapsed if elapsed > 0 else 0.0


def eta(seconds: float) -> str:
    """Time left, as ``elapsed`` shows time spent."""
    return elapsed(max(0.0, seconds))


def memory(nbytes: int) -> str:
    """Resident memory: ``85 MB``, ``1.2 GB``."""
    if nbytes >= 10**9:
        return f"{nbytes / 1e9:.1f} GB"
    return f"{nbytes / 1e6:,.0f} MB"


def cpu(percent: float) -> str:
    """Share of one core: ``98%``; ``250%`` is two and a half cores."""
    return f"{percent:,.0f}%"
