"""The warm pool survives what ends a map early: an error, a timed-out item, an interrupt.

A worker that was only running short items of the map that ended is kept (same pid, ready for the
next call); a worker stuck in an item past the cancel grace, or killed for timeout=, is replaced
at once, so the next call finds the pool at its size without waiting for a cold start.
"""
from __future__ import annotations

import functools

import pytest

import mpkit
from tests import helpers, timed_tasks
from tests.engine.test_faults import Bounded, busy_workers, map_within, process_alive, warm_pids
from tests.engine.test_interrupt import _InterruptWhen
from tests.proctree import wait_until

pytestmark = pytest.mark.timeout(120)


def _full_pool(pool: mpkit.Pool) -> set[int]:
    """The pool's pids once it is back at its size with nothing in flight (waited for, bounded)."""
    pids = wait_until(lambda: len(pool.pids()) == pool.size and not busy_workers(pool) and set(pool.pids()),
                      timeout=15)
    assert pids, f"the pool did not get back to {pool.size} idle workers: {pool.pids()}, busy {busy_workers(pool)}"
    return pids


def test_a_failing_map_keeps_the_workers_that_ran_short_items(pool):
    warm = warm_pids(pool)
    fn = functools.partial(timed_tasks.steady_fail_on, bad=20)
    with pytest.raises(ValueError, match="item 20 is bad"):
        map_within(pool, fn, range(200), chunksize=1)
    assert _full_pool(pool) == warm, "workers that only ran short items were thrown away"
    assert map_within(pool, helpers.pid_of, range(20)) and set(pool.pids()) == warm


def test_an_interrupt_keeps_the_workers_that_ran_short_items(pool):
    warm = warm_pids(pool)
    bar = _InterruptWhen(lambda stats: stats.done >= 10)
    with pytest.raises(mpkit.MapInterrupted) as info:
        pool.map(timed_tasks.slow_identity, range(200), chunksize=1, progress=bar)
    assert len(info.value.results) >= 10
    assert _full_pool(pool) == warm, "an interrupt threw away workers that were between short items"


def test_a_worker_stuck_in_an_item_of_a_failed_map_is_replaced_at_once(pool, tmp_path):
    """The other worker raised; the one running a 30 s item is killed and a new one started before
    any next call (the pool stays warm), while the worker that raised is kept."""
    warm = warm_pids(pool)
    path = tmp_path / "pid"
    items = [("slow", 30.0), ("bad", "after:slow")]
    with pytest.raises(ValueError, match="bad fails"):
        Bounded(pool, lambda: pool.map(functools.partial(helpers.sleep_or_fail, path=str(path)), items,
                                       chunksize=1)).result()
    victim = int((tmp_path / "pid.slow").read_text())
    assert wait_until(lambda: not process_alive(victim), timeout=10), f"worker {victim} still runs its item"
    pids = _full_pool(pool)
    assert victim not in pids and warm - {victim} <= pids, (warm, victim, pids)


def test_a_timed_out_item_replaces_its_worker_and_keeps_the_other(pool, tmp_path):
    warm = warm_pids(pool)
    fn = functools.partial(helpers.sleep_and_record, path=str(tmp_path / "pid"))
    with pytest.raises(mpkit.TaskTimeout):
        map_within(pool, fn, [("a", 0.01), ("slow", 30.0), ("b", 0.01)], timeout=1.0)
    victim = int((tmp_path / "pid.slow").read_text())
    pids = _full_pool(pool)
    assert victim not in pids and warm - {victim} <= pids, (warm, victim, pids)


def test_mpkit_map_after_an_error_runs_on_the_same_warm_workers(start_method):
    mpkit.map(helpers.square, range(8), workers=2, progress=False)
    pool = mpkit.engine._default.default_pool()
    warm = _full_pool(pool)
    with pytest.raises(ValueError):
        mpkit.map(functools.partial(timed_tasks.steady_fail_on, bad=10), range(100), workers=2, chunksize=1,
                  progress=False)
    assert mpkit.engine._default.default_pool() is pool and _full_pool(pool) == warm
    assert set(mpkit.map(helpers.pid_of, range(20), workers=2, progress=False)) <= warm
