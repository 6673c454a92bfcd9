"""The timeline figure: two axes over a hand-built history, drawn headless."""
from __future__ import annotations

import io
import sys
from dataclasses import replace

import pytest

from mpkit.widgets._timeline import timeline
from tests.widgets.pipeline_snapshots import three_stages


@pytest.fixture
def matplotlib():
    return pytest.importorskip("matplotlib")


def test_two_axes_with_one_line_per_stage(matplotlib):
    history = [three_stages(step) for step in range(6)]
    fig = timeline(history)
    assert isinstance(fig, matplotlib.figure.Figure)
    queue_ax, rate_ax = fig.axes
    assert queue_ax.get_shared_x_axes().joined(queue_ax, rate_ax)
    names = ["parse", "batch:embed", "embed"]
    for ax, values in ((queue_ax, "queued"), (rate_ax, "rate")):
        assert [line.get_label() for line in ax.get_lines()] == names
        for line, name in zip(ax.get_lines(), names):
            assert list(line.get_xdata()) == [s.elapsed for s in history]
            assert list(line.get_ydata()) == [getattr(s.stage(name), values) for s in history]
    assert [t.get_text() for t in queue_ax.get_legend().get_texts()] == names
    assert fig._suptitle.get_text().startswith("demo: running")
    assert rate_ax.get_xlabel() == "seconds since start"
    png = io.BytesIO()
    fig.savefig(png, format="png")                     # renders with no GUI backend
    assert png.getvalue().startswith(b"\x89PNG")


def test_stage_missing_from_early_snapshots(matplotlib):
    history = [replace(three_stages(0), stages=()),
               three_stages(1), three_stages(2)]
    fig = timeline(history)
    for ax in fig.axes:
        assert all(list(line.get_xdata()) == [2.0, 3.0] for line in ax.get_lines())


def test_empty_history_is_an_error(matplotlib):
    with pytest.raises(ValueError, match="at least one"):
        timeline([])


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        timeline([three_stages(1)])
