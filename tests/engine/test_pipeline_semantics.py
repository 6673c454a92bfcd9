"""What a pipeline promises a notebook user: batches that hang, many= stages, stage classes that
cannot build, futures and their callbacks, services that live long, keys, and slow sources."""
import functools
import os
import signal
import socket
import threading
import time

import pytest

import mpkit
from mpkit import Pipeline
from mpkit.recipes.inference import BatchPredictor
from tests import helpers, pipeline_tasks as tasks, side_effects
from tests.pipeline_tasks import finishes
from tests.proctree import wait_until


def identity_holds(stats):
    assert stats.accounted, stats
    for s in stats.stages:
        assert s.received == s.queued + s.in_flight + s.done + s.failed + s.dropped + s.cancelled, s
    return stats


# ---- a batch that hangs ---------------------------------------------------------------------------
def test_a_batch_that_times_out_fails_all_its_items_once_and_the_run_ends(any_backend):
    pipe = Pipeline("hang").batch(4, max_wait=0.2).stage(tasks.hang_on, timeout=1.0, name="model")
    out = finishes(lambda: pipe.run(range(8), on_error="collect", ordered=True, progress=False))
    failed = sorted(f.index for f in out.failures)
    assert len(failed) + len(out) == 8 and 3 in failed
    assert len(failed) == len(set(failed)), "an item failed twice"
    assert all(isinstance(f.exception, mpkit.TaskTimeout) for f in out.failures)
    assert out == [10 * x for x in range(8) if x not in failed]
    stats = identity_holds(pipe.stats())
    assert stats.failed == len(failed) and stats.pending == 0


def test_an_item_that_hangs_in_a_timed_stage_fails_alone_and_the_others_run_once(any_backend, tmp_path):
    """A stage with timeout= (on Dask its chunks hold many items): item 150 of 300 hangs; it fails
    with a TaskTimeout naming it, every other item went through the stage exactly once."""
    log = str(tmp_path / "runs")
    stage = functools.partial(side_effects.record_print_or_hang, log=log, hang=(150,))
    pipe = Pipeline("timed").stage(helpers.identity).stage(stage, timeout=2.0, name="model")
    out = finishes(lambda: pipe.run(range(300), on_error="collect", ordered=True, progress=False), timeout=120)
    assert [f.index for f in out.failures] == [150]
    assert isinstance(out.failures[0].exception, mpkit.TaskTimeout)
    assert "item 150 (150)" in str(out.failures[0].exception), str(out.failures[0].exception)
    assert out == [x * 10 for x in range(300) if x != 150]
    assert side_effects.runs(log) == {x: 1 for x in range(300)}
    stats = identity_holds(pipe.stats())
    assert stats.failed == 1 and stats.pending == 0


def test_a_batch_that_kills_its_worker_fails_as_a_whole(any_backend):
    """One call for the batch: which item killed the worker cannot be known, and with retries=0 no
    item runs twice, so the batch fails as a whole, as a batch that times out does."""
    pipe = Pipeline().batch(4, max_wait=0.2).stage(tasks.crash_on_batch_with, name="model")
    out = finishes(lambda: pipe.run(range(8), on_error="collect", ordered=True, progress=False))
    failed = sorted(f.index for f in out.failures)
    assert len(failed) == 4 and 3 in failed, failed
    assert all(isinstance(f.exception, mpkit.WorkerDied) for f in out.failures)
    assert [x for x, _ in out] == [x for x in range(8) if x not in failed]
    identity_holds(pipe.stats())


def test_with_retries_a_batch_that_kills_its_worker_blames_only_the_culprit(any_backend):
    """With retries= the batch is split and its items tried one by one: the culprit is found and its
    neighbours get their results."""
    pipe = Pipeline().batch(4, max_wait=0.2).stage(tasks.crash_on_batch_with, name="model", retries=1)
    out = finishes(lambda: pipe.run(range(8), on_error="collect", ordered=True, progress=False))
    assert [f.index for f in out.failures] == [3]
    assert isinstance(out.failures[0].exception, mpkit.WorkerDied)
    assert [x for x, _ in out] == [0, 1, 2, 4, 5, 6, 7]
    identity_holds(pipe.stats())


# ---- many= -----------------------------------------------------------------------------------------
def test_many_accepts_a_generator_function(start_method):
    pipe = Pipeline().stage(tasks.count_up, many=True).stage(helpers.identity)
    out = pipe.run([0, 1, 2, 3], progress=False)
    assert sorted(out) == sorted((x, i) for x in range(4) for i in range(x))
    stats = identity_holds(pipe.stats())
    assert (stats.completed, stats.dropped, stats.results) == (3, 1, 6)


def test_a_non_iterable_from_a_many_stage_fails_only_its_item(start_method):
    pipe = Pipeline("fan").stage(tasks.not_iterable_on, many=True, name="splitter")
    out = pipe.run(range(6), on_error="collect", progress=False)
    assert sorted(out) == sorted(y for x in range(6) if x != 3 for y in (x, x))
    [failure] = out.failures
    assert failure.index == 3
    message = str(failure.exception) + " ".join(getattr(failure.exception, "__notes__", []))
    assert "splitter" in message and "int" in message and "3" in message
    svc = pipe.start()
    try:
        bad, good = svc.submit(3), svc.submit(4)
        with pytest.raises(TypeError, match="iterable"):
            bad.result(timeout=30)
        assert good.result(timeout=30) == [4, 4]
        assert svc.running and svc.submit(5).result(timeout=30) == [5, 5]
    finally:
        svc.stop()


def test_a_non_iterable_in_a_batched_many_stage_fails_only_its_item(start_method):
    pipe = Pipeline().batch(4, max_wait=0.1).stage(tasks.batch_with_a_number_for, many=True, name="split")
    out = pipe.run(range(8), on_error="collect", progress=False)
    assert sorted(out) == sorted(y for x in range(8) if x != 3 for y in (x, x))
    [failure] = out.failures
    assert failure.index == 3 and failure.item == 3 and isinstance(failure.exception, TypeError)
    assert "split" in str(failure.exception)
    identity_holds(pipe.stats())


# ---- stage objects that cannot be built -------------------------------------------------------------
def test_a_service_whose_stage_cannot_build_fails_its_futures(start_method):
    svc = Pipeline("broken").stage(tasks.BrokenModel).start()
    futures = [svc.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(mpkit.WorkerInitError, match="model weights not found"):
            f.result(timeout=60)
    assert wait_until(lambda: not svc.running, timeout=30)
    with pytest.raises(RuntimeError, match="model weights not found"):
        svc.submit(9)
    assert svc.stats().state == "failed"


def test_a_batch_predictor_whose_model_cannot_build_says_so(start_method):
    predictor = BatchPredictor(tasks.BrokenModel, max_batch=4, max_wait=0.05)
    with pytest.raises(mpkit.WorkerInitError, match="model weights not found"):
        finishes(lambda: predictor.start(timeout=60))
    with pytest.raises(mpkit.WorkerInitError, match="model weights not found"):
        finishes(lambda: predictor.predict("x").result(timeout=60))

    def with_block():
        with BatchPredictor(tasks.BrokenModel, max_batch=4) as p:
            return p.predict("y").exception(timeout=60)
    assert isinstance(finishes(with_block), mpkit.WorkerInitError)
    predictor.close()


# ---- futures and their callbacks ----------------------------------------------------------------------
def test_a_done_callback_may_submit_a_follow_up(start_method):
    svc = Pipeline().stage(helpers.double, maxsize=2).start()
    follow_ups = []
    done = threading.Event()

    def again(future):
        follow_ups.append(svc.submit(future.result() + 1))  # blocks while the channel is full
        if len(follow_ups) == 20:
            done.set()
    try:
        for i in range(20):
            svc.submit(i).add_done_callback(again)
        assert done.wait(60), f"only {len(follow_ups)} follow-ups were submitted"
        assert sorted(f.result(timeout=30) for f in follow_ups) == sorted(2 * (2 * i + 1) for i in range(20))
    finally:
        svc.stop()


def test_a_slow_callback_does_not_stall_the_pipeline(start_method):
    svc = Pipeline().stage(helpers.double).start()
    release = threading.Event()
    try:
        first = svc.submit(1)
        first.add_done_callback(lambda f: release.wait(60))
        assert first.result(timeout=30) == 2
        later = [svc.submit(i) for i in range(5)]
        assert [f.result(timeout=30) for f in later] == [0, 2, 4, 6, 8]
    finally:
        release.set()
        svc.stop()


def test_callbacks_run_off_the_router(start_method):
    svc = Pipeline().stage(helpers.identity).start()
    seen, threads = [], set()
    try:
        futures = [svc.submit(i) for i in range(30)]
        for f in futures:
            f.add_done_callback(lambda f: (seen.append(f.result()), threads.add(threading.current_thread().name)))
        [f.result(timeout=30) for f in futures]
    finally:
        svc.stop()
    assert wait_until(lambda: len(seen) == 30, timeout=10)
    assert not any(name.startswith("mpkit-service") for name in threads)


# ---- errors in a service ------------------------------------------------------------------------------------
def test_raise_in_a_service_fails_only_the_failing_items_future(start_method):
    svc = Pipeline().stage(helpers.fail_on).start(on_error="raise")
    try:
        futures = [svc.submit(i) for i in range(6)]
        with pytest.raises(ValueError, match="bad item 3"):
            futures[3].result(timeout=30)
        assert [f.result(timeout=30) for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5]
        assert svc.running and svc.submit(7).result(timeout=30) == 7
    finally:
        svc.stop()


def test_a_long_running_service_keeps_recent_failures_and_counts_the_rest(start_method, monkeypatch):
    from mpkit.engine import _ledger

    monkeypatch.setattr(_ledger, "RECENT_FAILURES", 10)
    svc = Pipeline().stage(tasks.fail_odd).start()
    try:
        futures = [svc.submit(i) for i in range(60)]
        [f.exception(timeout=30) for f in futures]
        stats = svc.stats()
        assert stats.failed == 30 and stats.completed == 30
        recent = svc.failures
        assert len(recent) == 10 and [f.index for f in recent] == list(range(41, 60, 2))
    finally:
        svc.stop()


# ---- keys -------------------------------------------------------------------------------------------------
def test_key_order_survives_a_worker_crash_and_a_retry(any_backend, tmp_path):
    path = str(tmp_path / "log")
    fn = functools.partial(tasks.log_key_order, path=path, kill_at=(1, 7))
    items = [(k, i) for i in range(40) for k in range(4)]
    pipe = Pipeline().stage(fn, workers=2, key=helpers.first, retries=1, name="ordered")
    out = pipe.run(items, progress=False)
    assert sorted(out) == sorted(items)
    for k in range(4):
        positions = [p for key, p in out if key == k]
        assert positions == sorted(positions), f"results of key {k} out of order"
        ran = [int(line) for line in open(f"{path}.{k}").read().split()]
        assert ran == sorted(ran) and sorted(set(ran)) == list(range(40)), f"key {k} ran out of order: {ran}"
    assert os.path.exists(f"{path}.killed")
    identity_holds(pipe.stats())


def test_batch_before_a_keyed_stage_makes_full_batches(start_method):
    pipe = Pipeline().batch(4, max_wait=30).stage(tasks.batch_sizes, workers=2, key=tasks.parity)
    out = pipe.run(range(32), progress=False)
    assert sorted(x for x, _ in out) == list(range(32))
    assert all(size == 4 for _, size in out), sorted({size for _, size in out})
    identity_holds(pipe.stats())


def test_a_key_function_that_raises_fails_only_its_item(start_method):
    pipe = Pipeline().stage(helpers.double, workers=2, key=tasks.key_or_fail, name="keyed")
    out = pipe.run(range(8), on_error="collect", ordered=True, progress=False)
    assert out == [2 * x for x in range(8) if x != 3]
    [failure] = out.failures
    assert failure.index == 3 and isinstance(failure.exception, KeyError)
    assert "keyed" in " ".join(failure.exception.__notes__)
    svc = pipe.start()
    try:
        with pytest.raises(KeyError):
            svc.submit(3).result(timeout=30)
        assert svc.submit(4).result(timeout=30) == 8
    finally:
        svc.stop()
    identity_holds(pipe.stats())


# ---- slow and streaming sources -------------------------------------------------------------------------
def _waiting_source(path, count, timeout=30):
    """Yields 0..count-1, each only after the previous one came out of the pipeline (a file)."""
    for i in range(count):
        if i and not wait_until(lambda: os.path.exists(f"{path}.{i - 1}"), timeout=timeout):
            raise AssertionError(f"item {i - 1} was not processed while the source waited for more")
        yield i


def test_a_slow_source_moves_each_item_on_at_once(start_method, tmp_path):
    path = str(tmp_path / "seen")
    pipe = Pipeline().stage(functools.partial(tasks.touch, path=path)).stage(helpers.double)
    assert pipe.run(_waiting_source(path, 4), ordered=True, progress=False) == [0, 2, 4, 6]


def test_a_slow_source_honours_max_wait(start_method, tmp_path):
    path = str(tmp_path / "seen")
    pipe = Pipeline().batch(100, max_wait=0.2).stage(functools.partial(tasks.batch_touch, path=path))
    out = pipe.run(_waiting_source(path, 3), ordered=True, progress=False)
    assert out == [(0, 1), (1, 1), (2, 1)]


def _interrupt_when(predicate, timeout=60):
    """SIGINT to this process (the kernel's interrupt) once ``predicate`` holds."""
    def watch():
        if wait_until(predicate, timeout=timeout):
            os.kill(os.getpid(), signal.SIGINT)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_interrupted_run_over_an_endless_source_returns_what_finished(start_method, tmp_path):
    path = str(tmp_path / "seen")

    def endless():
        i = 0
        while True:
            yield i
            i += 1
            time.sleep(0.05)
    pipe = Pipeline().stage(functools.partial(tasks.touch, path=path))
    watcher = _interrupt_when(lambda: all(os.path.exists(f"{path}.{i}") for i in range(3)))
    with pytest.raises(mpkit.MapInterrupted) as info:
        pipe.run(endless(), progress=False)
    watcher.join(10)
    assert set(range(3)) <= set(info.value.results)
    stats = identity_holds(pipe.stats())
    assert stats.state == "stopped" and stats.pending == 0
    assert stats.cancelled == len(info.value.pending)


def test_an_interrupt_while_the_source_blocks_in_a_socket(start_method, tmp_path):
    """The source waits in recv() for data that never comes: the interrupt still ends the run,
    with the items that came before, and nothing is left reading the socket."""
    path = str(tmp_path / "seen")
    reader, writer = socket.socketpair()
    writer.sendall(b"0\n1\n2\n")

    def lines():
        buffer = b""
        while True:
            data = reader.recv(64)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield int(line)
    pipe = Pipeline().stage(functools.partial(tasks.touch, path=path)).stage(helpers.double)
    watcher = _interrupt_when(lambda: all(os.path.exists(f"{path}.{i}") for i in range(3))
                              and pipe.stats().completed == 3)
    source = lines()
    try:
        with pytest.raises(mpkit.MapInterrupted) as info:
            pipe.run(source, progress=False)
    finally:
        watcher.join(10)
        reader.close()
        writer.close()
    assert sorted(info.value.results) == [0, 2, 4]
    assert source.gi_frame is None, "the source is still suspended in recv()"  # the interrupt ended it
    assert not [t for t in threading.enumerate() if t.name.startswith("mpkit-router")]


def test_a_source_that_raises_ends_the_run_with_its_error(start_method):
    def source():
        yield from range(5)
        raise ConnectionResetError("the socket closed")
    pipe = Pipeline().stage(helpers.sleep_then)
    with pytest.raises(ConnectionResetError, match="socket closed"):
        pipe.run((0.01 * x for x in source()), progress=False)
    stats = identity_holds(pipe.stats())
    assert stats.state == "failed" and stats.pending == 0 and stats.submitted == 5


# ---- fan-out -----------------------------------------------------------------------------------------
def test_a_big_fan_out_is_held_back_by_the_next_channel(start_method):
    watch = tasks.Snapshots()
    seen = watch.seen

    pipe = (Pipeline().stage(functools.partial(tasks.fan_out, n=20_000), many=True, name="fan")
            .stage(helpers.identity, maxsize=64, name="after"))
    pipe._dashboards.append(watch)
    out = pipe.run(range(6), progress=False)
    assert len(out) == 120_000
    assert all(s.stage("after").queued <= 64 for s in seen)
    # results made but not yet handed on: those of the item being handed on, plus at most the two
    # its worker held (FAN_OUT_ITEMS); the stage takes no new item while they wait
    assert all(s.stage("fan").done * 20_000 - s.stage("fan").emitted <= 3 * 20_000 for s in seen)
    assert all(s.stage("fan").in_flight <= 2 for s in seen)
    assert max(s.stage("fan").waiting for s in seen) > 0
    identity_holds(seen[-1])
