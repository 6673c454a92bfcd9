"""Hand-built PipelineStats for front-end tests: no engine, no processes."""
from __future__ import annotations

from dataclasses import replace

from mpkit.engine._pipeline_stats import PipelineStats, StageStats


def stage(name: str, kind: str = "stage", **counts) -> StageStats:
    fields = {"workers": 2, "target_workers": 2, "busy": 1, "capacity": 8, "queued": 0,
              "in_flight": 0, "received": 0, "done": 0, "emitted": 0, "failed": 0, "dropped": 0,
              "rate": 0.0, "mean_seconds": 0.0}
    if kind == "batch":
        fields.update(workers=0, target_workers=0, busy=0)
    fields.update(counts)
    return StageStats(name=name, kind=kind, **fields)


def pipeline(*stages: StageStats, name: str = "demo", state: str = "running",
             elapsed: float = 1.0, **totals) -> PipelineStats:
    fields = {"submitted": 0, "completed": 0, "failed": 0, "dropped": 0, "pending": 0, "results": 0}
    fields.update(totals)
    return PipelineStats(name=name, state=state, elapsed=elapsed, stages=tuple(stages), **fields)


def three_stages(step: int = 0) -> PipelineStats:
    """parse -> batch:embed -> embed, ``step`` items further along; embed is the bottleneck."""
    parse = stage("parse", queued=min(8, step), received=10 * step, done=10 * step,
                  emitted=10 * step, rate=5.0 * step, mean_seconds=0.0123)
    batcher = stage("batch:embed", kind="batch", capacity=64, queued=2, in_flight=3,
                    received=10 * step, done=8 * step, emitted=step, rate=4.0 * step)
    embed = stage("embed", workers=4, target_workers=4, busy=4, queued=8, in_flight=4,
                  received=8 * step, done=6 * step, emitted=6 * step, failed=step // 2,
                  dropped=1, rate=2.5, mean_seconds=0.08, bottleneck=step > 0)
    return pipeline(parse, batcher, embed, elapsed=1.0 + step, submitted=10 * step + 5,
                    completed=6 * step, failed=step // 2, dropped=1,
                    pending=10 * step + 5 - 6 * step - step // 2 - 1, results=6 * step)


def with_stage(stats: PipelineStats, name: str, **counts) -> PipelineStats:
    """``stats`` with one stage's counts replaced."""
    stages = tuple(replace(s, **counts) if s.name == name else s for s in stats.stages)
    return replace(stats, stages=stages)
