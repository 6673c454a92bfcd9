"""A pipeline shown before its first item: the dashboard draws every stage at once.

In a notebook, ``pipe.dashboard()`` (or a ``BatchPredictor``'s) is usually shown before the
service starts; its first snapshot must already name the stages, as the run will.
"""
from __future__ import annotations

import mpkit
from mpkit.recipes.inference import BatchPredictor, NumpyEmbedder
from tests import helpers
from tests.proctree import wait_until


class Recorder:
    """A front-end that keeps the snapshots it is given (``mpkit.engine.PipelineObserver``)."""

    closed = False

    def __init__(self):
        self.snapshots = []

    def update(self, stats):
        self.snapshots.append(stats)

    def close(self, stats):
        self.snapshots.append(stats)
        self.closed = True


def _names(stats):
    return [(s.name, s.kind) for s in stats.stages]


def test_an_observer_attached_before_the_first_run_gets_the_stages_at_once(start_method):
    pipe = (mpkit.Pipeline("ready").stage(helpers.double, workers=2, name="double")
            .batch(8, 0.05).stage(helpers.batch_square, name="squares"))
    seen = pipe.observe(Recorder())
    assert wait_until(lambda: seen.snapshots, timeout=10), "nothing was shown before the first item"
    before = seen.snapshots[0]
    assert before.state == "ready" and before.submitted == 0
    pipe.run(range(20), start_method=start_method, progress=False)
    assert _names(before) == _names(pipe.stats()), "the stages shown before the run are not the run's"
    assert [s.target_workers for s in before.stages if s.kind == "stage"] == [2, 1]


def test_a_batch_predictor_dashboard_shows_the_batcher_and_the_model_before_the_first_request():
    predictor = BatchPredictor(NumpyEmbedder, max_batch=16, max_wait=0.05, name="embedder")
    try:
        seen = predictor.pipeline.observe(Recorder())
        assert wait_until(lambda: seen.snapshots, timeout=10), "nothing was shown before the first request"
        kinds = [s.kind for s in seen.snapshots[0].stages]
        assert kinds == ["batch", "stage"], seen.snapshots[0]
    finally:
        predictor.close()
