"""A pipeline's history as a figure: queue depth and throughput per stage over time.

    queued  |  parse ___/```\\___        two axes sharing x (seconds since start),
            |  embed ____/````````      one line per stage on each;
    items/s |  parse ```\\___/```        a queue that stays full over a stage whose
            |  embed ____________       throughput is flat marks the bottleneck.
            +----------------------> s

Built on ``matplotlib.figure.Figure`` directly, not pyplot, so it needs no GUI backend and keeps
no global figure state: it works headless, in a thread, and a notebook shows the returned figure
like any other value. matplotlib is optional: it is imported only when a figure is drawn.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..engine._pipeline_stats import PipelineStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def stage_names(history: Sequence[PipelineStats]) -> list[str]:
    """Every stage seen in the snapshots, in pipeline order (a stage may be missing from some)."""
    names: list[str] = []
    for stats in history:
        for stage in stats.stages:
            if stage.name not in names:
                names.append(stage.name)
    return names


def timeline(history: Sequence[PipelineStats]) -> Figure:
    """Draw snapshots (oldest first) as queue depth and items/s per stage against elapsed seconds."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "mpkit's timeline() draws with matplotlib, which is not installed here; "
            "pip install matplotlib (in this kernel's environment) and call it again") from exc
    if not history:
        raise ValueError("timeline() needs at least one PipelineStats snapshot; got an empty history")

    names = stage_names(history)

    fig = Figure(figsize=(8, 5), layout="constrained")
    queue_ax, rate_ax = fig.subplots(2, 1, sharex=True)
    for name in names:
        times, queued, rates, stuck = [], [], [], []
        for stats in history:
            stage = next((s for s in stats.stages if s.name == name), None)
            if stage is not None:
                times.append(stats.elapsed)
                queued.append(stage.queued)
                rates.append(stage.rate)
                if stage.bottleneck:
                    stuck.append(len(times) - 1)
        (line,) = queue_ax.plot(times, queued, label=name, drawstyle="steps-post")
        if stuck:
            line.set(marker="o", markersize=4, markevery=stuck)
        rate_ax.plot(times, rates, label=name, color=line.get_color())

    last = history[-1]
    fig.suptitle(f"{last.name}: {last.state} after {last.elapsed:.1f}s, "
                 f"{last.completed}/{last.submitted} completed")
    queue_ax.set_ylabel("queued items")
    queue_ax.set_ylim(bottom=0)
    queue_ax.set_title("queue depth (dots: bottleneck)", fontsize="medium", loc="left")
    rate_ax.set_ylabel("items/s")
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_title("throughput", fontsize="medium", loc="left")
    rate_ax.set_xlabel("seconds since start")
    for ax in (queue_ax, rate_ax):
        ax.grid(True, alpha=0.3)
    if names:
        queue_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                        fontsize="small", title="stage")   # outside: never over the data
    _show_as_png(fig)
    return fig


def _show_as_png(fig) -> None:
    """A bare Figure shows as text in a notebook that never imported pyplot: give this one a PNG
    representation, so returning it from a cell draws it (savefig and the rest still work)."""
    import io

    def _repr_png_() -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    fig._repr_png_ = _repr_png_
