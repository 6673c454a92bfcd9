"""Pipelines of process stages: results, batching, accounting, services, faults, bad input."""
import asyncio
import functools
import itertools
import os
import signal
import threading
import time

import pytest

import mpkit
from mpkit import Pipeline
from tests import helpers, pipeline_tasks as tasks
from tests.proctree import wait_until


def accounted(stats):
    assert stats.accounted, stats
    for stage in stats.stages:
        if stage.kind == "stage":
            assert stage.received == (stage.done + stage.failed + stage.dropped + stage.queued + stage.in_flight
                                      + stage.cancelled), stage
    return stats


def test_run_matches_plain_map(any_backend):
    pipe = Pipeline("p").stage(helpers.double, workers=2).stage(helpers.square)
    out = pipe.run(range(500), progress=False)
    assert sorted(out) == sorted(4 * x * x for x in range(500))
    stats = accounted(pipe.stats())
    assert (stats.submitted, stats.completed, stats.pending, stats.state) == (500, 500, 0, "stopped")


def test_ordered_restores_input_order(any_backend):
    pipe = Pipeline().stage(helpers.slow_stage, workers=2).stage(helpers.double, workers=2)
    assert pipe.run(range(200), ordered=True, progress=False) == [2 * x for x in range(200)]


def test_batches_respect_max_size_and_flush_the_tail(any_backend):
    pipe = Pipeline().stage(helpers.identity).batch(max_size=16, max_wait=5).stage(helpers.BatchSizes)
    out = pipe.run(range(100), ordered=True, progress=False)
    assert [x for x, _, _ in out] == list(range(100))
    sizes = [size for _, size, _ in out]
    assert max(sizes) <= 16
    # the last partial batch left at the end of the stream, without waiting max_wait (5 s)
    assert sum(1 for s in sizes if s < 16) >= 1
    accounted(pipe.stats())


def test_a_lone_item_leaves_after_max_wait(any_backend):
    pipe = Pipeline().batch(max_size=128, max_wait=0.3).stage(helpers.BatchSizes)
    svc = pipe.start()
    try:
        started = time.monotonic()
        value, size, _ = svc.submit(7).result(timeout=20)
        waited = time.monotonic() - started
        assert (value, size) == (7, 1)
        assert waited >= 0.25, "the batch left before max_wait"
    finally:
        svc.stop()


def test_class_stage_is_built_once_per_worker(start_method, tmp_path, monkeypatch):
    builds = tmp_path / "builds"
    monkeypatch.setenv("MPKIT_TEST_BUILDS", str(builds))
    pipe = Pipeline().stage(helpers.CountBuilds, workers=2)
    assert sorted(pipe.run(range(300), progress=False)) == list(range(300))
    lines = builds.read_text().split()
    assert 1 <= len(lines) <= 2 and len(set(lines)) == len(lines)


def test_factory_stage(any_backend):
    pipe = Pipeline().stage(helpers.make_adder, factory=True)
    assert sorted(pipe.run([1, 2], progress=False)) == [1001, 1002]


def test_none_drops_and_many_emits_are_counted(any_backend):
    pipe = Pipeline().stage(helpers.drop_odd).stage(helpers.explode, many=True).stage(helpers.double)
    out = pipe.run(range(30), progress=False)
    expected = [2 * y for x in range(30) if x % 2 == 0 for y in range(x % 3)]
    assert sorted(out) == sorted(expected)
    stats = accounted(pipe.stats())
    assert stats.dropped == 15 + sum(1 for x in range(0, 30, 2) if x % 3 == 0)
    assert stats.results == len(expected)


def test_stage_error_raises_with_stage_and_item(any_backend):
    pipe = Pipeline("errs").stage(helpers.identity).stage(helpers.fail_on, name="checker")
    with pytest.raises(ValueError, match="bad item 3") as info:
        pipe.run([1, 2, 3, 4], progress=False)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "checker" in notes


def test_collect_keeps_going_and_lists_failures(any_backend):
    pipe = Pipeline().stage(helpers.fail_on)
    out = pipe.run(range(10), on_error="collect", ordered=True, progress=False)
    assert out == [x for x in range(10) if x != 3]
    assert [f.index for f in out.failures] == [3]
    stats = accounted(pipe.stats())
    assert stats.failed == 1


def test_batched_stage_with_wrong_length_fails_its_items(any_backend):
    pipe = Pipeline().batch(4, 0.1).stage(helpers.wrong_length)
    out = pipe.run(range(8), on_error="collect", progress=False)
    assert len(out) + len(out.failures) == 8
    assert "one result per item" in str(out.failures[0].exception)


def test_dead_worker_in_a_stage_is_replaced_and_retried(any_backend, tmp_path):
    fn = functools.partial(helpers.kill_once_in_stage, path=str(tmp_path / "m"))
    pipe = Pipeline().stage(fn, workers=2, retries=1, name="fragile")
    assert sorted(pipe.run(range(20), progress=False)) == list(range(20))
    accounted(pipe.stats())


def test_bounded_channels_keep_a_fast_producer_waiting(any_backend):
    watch = tasks.Snapshots()
    seen = watch.seen

    pipe = Pipeline().stage(helpers.slow_stage, maxsize=50)
    pipe._dashboards.append(watch)
    read = []

    def producer():
        for i in itertools.count():
            if i == 1000:
                return
            read.append(i)
            yield i

    assert len(pipe.run(producer(), progress=False)) == 1000
    assert all(s.stages[0].queued <= s.stages[0].capacity for s in seen)
    assert max(s.stages[0].queued for s in seen) > 0


def test_service_futures_and_drain(any_backend):
    svc = Pipeline("svc").stage(helpers.double, workers=2).start()
    futures = [svc.submit(i) for i in range(50)]
    stats = svc.stop(drain=True)
    assert [f.result(timeout=5) for f in futures] == [2 * i for i in range(50)]
    assert stats.completed == 50 and stats.state == "stopped"
    with pytest.raises(RuntimeError, match="stopped"):
        svc.submit(1)


def test_service_stop_without_drain_cancels(any_backend):
    svc = Pipeline().stage(helpers.sleep_then).start()
    futures = [svc.submit(0.5) for _ in range(6)]
    time.sleep(0.3)
    svc.stop(drain=False, timeout=10)
    assert any(f.cancelled() for f in futures)
    assert not svc.running


def test_asubmit(any_backend):
    svc = Pipeline().stage(helpers.double).start()
    try:
        async def main():
            return await asyncio.gather(*(svc.asubmit(i) for i in range(5)))
        assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    finally:
        svc.stop()


def test_scale_a_stage_while_it_runs(any_backend):
    pipe = Pipeline().stage(helpers.sleep_then, name="slow")
    svc = pipe.start()
    try:
        pipe.scale("slow", 2)
        futures = [svc.submit(0.05) for _ in range(20)]
        assert all(f.result(timeout=20) == 0.05 for f in futures)
        assert svc.stats().stage("slow").target_workers == 2
    finally:
        svc.stop()


def test_interrupt_stops_every_stage(any_backend):
    pipe = Pipeline().stage(helpers.sleep_then, workers=2)

    def interrupt_soon():  # the kernel's interrupt: SIGINT to this process, once 5 items are done
        if wait_until(lambda: pipe.stats().completed >= 5, timeout=60):
            os.kill(os.getpid(), signal.SIGINT)
    watcher = threading.Thread(target=interrupt_soon, daemon=True)
    watcher.start()
    with pytest.raises(mpkit.MapInterrupted) as info:
        pipe.run([0.05] * 200, progress=False)
    watcher.join(10)
    assert len(info.value.results) >= 5
    stats = accounted(pipe.stats())
    assert stats.state == "stopped" and stats.pending == 0
    assert stats.cancelled == len(info.value.pending) == 200 - len(info.value.results)


@pytest.mark.parametrize("build, message", [
    (lambda: Pipeline("empty"), "has no stage"),
    (lambda: Pipeline().stage(helpers.double).batch(4), "ends with .batch"),
])
def test_bad_pipelines(build, message):
    with pytest.raises(ValueError, match=message):
        build().run([1], progress=False)


def test_bad_stages():
    with pytest.raises(TypeError, match="function or a class"):
        Pipeline().stage(42)
    with pytest.raises(ValueError, match="two stages named"):
        Pipeline().stage(helpers.double).stage(helpers.double)
    with pytest.raises(TypeError, match="no __call__"):
        Pipeline().stage(type("NoCall", (), {}))
    with pytest.raises(ValueError, match="workers"):
        Pipeline().stage(helpers.double, workers=0)
    with pytest.raises(TypeError, match="iterable"):
        Pipeline().stage(helpers.double).run(5)


def test_key_routing_keeps_a_key_on_one_worker_in_order(any_backend):
    items = [(n % 5, n) for n in range(200)]  # int keys: hash(k) == k, so both lanes get keys
    pipe = Pipeline().stage(helpers.tag_pid, workers=2, key=helpers.first)
    out = pipe.run(items, progress=False)
    by_key = {}
    for key, position, pid in out:  # arrival order
        by_key.setdefault(key, []).append((position, pid))
    for key, seen in by_key.items():
        assert len({pid for _, pid in seen}) == 1, f"{key} went to several workers"
        positions = [p for p, _ in seen]
        assert positions == sorted(positions), f"{key} lost its order"
    assert len({pid for _, _, pid in out}) == 2  # both workers were used
    with pytest.raises(ValueError, match="key="):
        pipe.scale("tag_pid", 3)


def test_a_stage_class_that_cannot_build_is_reported(any_backend):
    pipe = Pipeline().stage(helpers.BrokenInit)
    with pytest.raises(mpkit.WorkerInitError, match="model weights not found"):
        pipe.run(range(3), progress=False)
