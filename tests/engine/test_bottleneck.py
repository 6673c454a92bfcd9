"""The bottleneck mark of pipeline snapshots moves only when the bottleneck really moves."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mpkit.engine._pipeline_stats import BOTTLENECK_HOLD, Bottleneck
from tests.widgets.pipeline_snapshots import stage

TICK = 0.1   # the router's snapshots, ten a second


def demo(pre: float, batch: float, model: float = 0.0):
    """The demo's shape: preprocess -> batcher -> model, each fill as a fraction of 100 items."""
    return [stage("preprocess", capacity=100, queued=round(pre * 100)),
            stage("batch 128 / 1 s", kind="batch", capacity=100, queued=round(batch * 100)),
            stage("model", capacity=100, queued=round(model * 100))]


def marks(tracker: Bottleneck, fills, start: float = 0.0) -> list:
    out = []
    for i, fill in enumerate(fills):
        stages = tracker.mark(demo(*fill), start + i * TICK)
        marked = [s.name for s in stages if s.bottleneck]
        assert len(marked) <= 1
        out.append(marked[0] if marked else None)
    return out


def switches(seq: list) -> int:
    return sum(a != b for a, b in zip(seq, seq[1:]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.55, 1.0), st.floats(0.0, 0.3)), min_size=20, max_size=300))
def test_a_queue_sitting_on_the_line_does_not_flap(fills):
    # the batcher's queue goes up and down around the rule's 10% line at every batch
    seq = marks(Bottleneck(), fills)
    assert switches([None] + seq) <= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(int(2 * BOTTLENECK_HOLD / TICK), 100), st.integers(int(2 * BOTTLENECK_HOLD / TICK), 100))
def test_a_real_move_is_followed(first, second):
    tracker = Bottleneck()
    seq = marks(tracker, [(0.9, 0.0, 0.0)] * first + [(0.0, 0.0, 0.95)] * second)
    assert seq[first - 1] == "preprocess" and seq[-1] == "model"
    assert switches([None] + seq) == 2


def test_nothing_is_marked_once_the_flow_ended():
    tracker = Bottleneck()
    marks(tracker, [(0.9, 0.0)] * 30)
    assert not any(s.bottleneck for s in tracker.mark(demo(0.9, 0.0), 10.0, running=False))
