"""Worker lifetime and numbers: ``max_tasks_per_child`` replaces a worker after N items without
losing, blaming or re-running one; ``workers=`` far above the CPUs starts processes as work needs
them, with a warning.
"""
from __future__ import annotations

import collections
import functools
import os

import pytest

import mpkit
from tests import helpers, timed_tasks, tree_tasks
from tests.proctree import workers_of

pytestmark = pytest.mark.timeout(120)


def _pid_counts(path, items) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for x in items:
        runs = tree_tasks.runs_of(path, x)
        assert len(runs) == 1, f"item {x} ran {len(runs)} times (pids {runs})"
        counts[runs[0]] += 1
    return counts


@pytest.mark.parametrize("chunksize", ["auto", 4])
def test_max_tasks_per_child_replaces_workers_without_rerunning_items(pool, tmp_path, chunksize):
    path = str(tmp_path / "runs")
    items = range(30)
    results = pool.map(functools.partial(tree_tasks.record_pid, path=path), items, chunksize=chunksize,
                       max_tasks_per_child=3, progress=False)
    assert len(results) == 30 and not results.failures
    counts = _pid_counts(path, items)
    assert max(counts.values()) <= 3, counts
    assert len(counts) >= 10, counts
    assert results == [tree_tasks.runs_of(path, x)[0] for x in items]


def test_max_tasks_per_child_on_the_pool_and_in_imap(start_method, tmp_path):
    path = str(tmp_path / "runs")
    with mpkit.Pool(2, start_method=start_method, max_tasks_per_child=2) as pool:
        out = list(pool.imap(functools.partial(tree_tasks.record_pid, path=path), range(12), progress=False))
        assert len(out) == 12
        assert max(_pid_counts(path, range(12)).values()) <= 2
        # a map of its own setting wins over the pool's
        many = pool.map(helpers.pid_of, range(8), max_tasks_per_child=8, chunksize=1, workers=1, progress=False)
        assert len(many) == 8


def test_max_tasks_per_child_through_mpkit_map_with_retries(start_method, tmp_path):
    """A crash on an item is still retried and blamed as before; replaced workers are not blamed."""
    path = str(tmp_path / "attempts")
    results = mpkit.map(functools.partial(helpers.crash_first_time, path=path), range(10), workers=2,
                        retries=1, max_tasks_per_child=2, progress=False)
    assert results == list(range(10))


def test_max_tasks_per_child_in_a_pipeline_stage(start_method):
    pipe = mpkit.Pipeline("recycled").stage(helpers.pid_of, workers=1, max_tasks_per_child=2)
    counts = collections.Counter(pipe.run(range(8), start_method=start_method, progress=False))
    assert sum(counts.values()) == 8 and max(counts.values()) <= 2, counts


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True])
def test_max_tasks_per_child_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="max_tasks_per_child must be a positive whole number"):
        mpkit.Pool(1, max_tasks_per_child=bad)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        mpkit.Pipeline().stage(helpers.identity, max_tasks_per_child=bad)


# ---- workers= far above the CPUs ------------------------------------------------------------------

def _many() -> int:
    from mpkit.engine.process._pool import MANY_WORKERS_PER_CPU, default_workers

    return MANY_WORKERS_PER_CPU * default_workers() + 4


def test_many_workers_start_as_the_work_needs_them(start_method):
    many = _many()
    with pytest.warns(mpkit.MpkitWarning, match=f"workers={many} is more than"):
        pool = mpkit.Pool(many, start_method=start_method)
    try:
        assert pool.map(helpers.square, range(3), chunksize=1, progress=False) == [0, 1, 4]
        started = len(workers_of(os.getpid()))
        assert started <= 3, f"{started} workers were started for 3 items (workers={many})"
    finally:
        pool.shutdown()


def test_many_workers_all_serve_a_long_map(start_method):
    """Started a few at a time, the workers still all join in when there is work for them."""
    many = _many()
    with pytest.warns(mpkit.MpkitWarning):
        pool = mpkit.Pool(many, start_method=start_method)
    try:
        pids = pool.map(timed_tasks.slow_pid, range(3 * many), chunksize=1, progress=False)
        assert len(set(pids)) > many // 2, f"only {len(set(pids))} of {many} workers ran items"
    finally:
        pool.shutdown()


def test_the_warning_points_at_the_callers_line(start_method):
    with pytest.warns(mpkit.MpkitWarning) as caught:
        mpkit.map(helpers.square, range(2), workers=_many(), progress=False)
    assert caught[0].filename == __file__, caught[0].filename
    mpkit.shutdown()
    with pytest.warns(mpkit.MpkitWarning) as caught:
        mpkit.Pool(_many(), start_method=start_method).shutdown()
    assert caught[0].filename == __file__, caught[0].filename
