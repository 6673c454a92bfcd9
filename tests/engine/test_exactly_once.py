"""After a worker dies, what ran is not run again: only the item it was running is blamed.

The tasks here append every call to a log file, as a side-effecting task (a database insert, a
file move) would; the log says how often each item really ran.
"""
from __future__ import annotations

from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import mpkit
from tests.side_effects import record_batch_then_crash, record_then_crash, runs


def test_retries_0_runs_no_item_twice_after_a_crash(pool, tmp_path):
    log = str(tmp_path / "log")
    fn = partial(record_then_crash, log=log, bad={5}, seconds=0.06)  # 60 ms items: each reported
    out = pool.map(fn, range(30), chunksize=10, on_error="collect")
    assert [f.index for f in out.failures] == [5]
    assert isinstance(out.failures[0].exception, mpkit.WorkerDied)
    assert out == [x * 10 for x in range(30) if x != 5]
    assert runs(log) == {x: 1 for x in range(30)}  # the culprit too: retries=0 means no retry


def test_the_culprit_in_a_big_chunk_of_tiny_items(pool, tmp_path):
    log = str(tmp_path / "log")
    fn = partial(record_then_crash, log=log, bad={1234})
    out = pool.map(fn, range(2000), chunksize=500, on_error="collect")
    assert [f.index for f in out.failures] == [1234]
    assert out == [x * 10 for x in range(2000) if x != 1234]
    counts = runs(log)
    assert counts[1234] == 1
    assert all(counts[x] == 1 for x in range(1235, 2000)), "items after the culprit ran twice"


def test_retries_1_runs_the_culprit_exactly_twice(pool, tmp_path):
    log = str(tmp_path / "log")
    fn = partial(record_then_crash, log=log, bad={7}, seconds=0.06)
    out = pool.map(fn, range(12), chunksize=6, retries=1, on_error="collect")
    assert [f.index for f in out.failures] == [7]
    assert runs(log) == {**{x: 1 for x in range(12)}, 7: 2}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), chunksize=st.integers(1, 15), data=st.data())
def test_every_item_ends_once_and_crashers_run_once(pool, tmp_path_factory, n, chunksize, data):
    bad = data.draw(st.sets(st.integers(0, n - 1), max_size=2))
    log = str(tmp_path_factory.mktemp("log") / "log")
    out = pool.map(partial(record_then_crash, log=log, bad=bad, seconds=0.06), range(n),
                   chunksize=chunksize, on_error="collect")
    assert sorted(f.index for f in out.failures) == sorted(bad)
    assert out == [x * 10 for x in range(n) if x not in bad]
    counts = runs(log)
    assert set(counts) == set(range(n))
    assert all(counts[x] == 1 for x in bad)
    assert all(counts[x] == 1 for x in range(n)), counts  # 60 ms items: every result came back


def test_a_batch_that_kills_its_worker_fails_as_a_whole_once(start_method, tmp_path):
    log = str(tmp_path / "log")
    pipe = (mpkit.Pipeline("batches").batch(4, max_wait=0.5)
            .stage(partial(record_batch_then_crash, log=log, bad={5}), workers=1))
    out = pipe.run(range(12), on_error="collect", ordered=True, progress=False,
                   start_method=start_method)
    failed = sorted(f.index for f in out.failures)
    assert len(failed) == 4 and 5 in failed, failed        # the batch holding item 5, nothing else
    assert all(isinstance(f.exception, mpkit.WorkerDied) for f in out.failures)
    assert sorted(out) == [x * 10 for x in range(12) if x not in failed]
    assert runs(log) == {x: 1 for x in range(12)}
