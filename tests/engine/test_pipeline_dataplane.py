"""The pipeline's data plane: items cross the notebook as their own pickles, every bound holds in
bytes as well as items, and ``Pipeline.imap`` streams results in flat memory."""
import os
import threading
import time

import psutil
import pytest

from mpkit import Pipeline
from mpkit.engine._errors import Failure, SerializationError
from tests import helpers, pipeline_tasks as tasks
from tests.engine.test_pipeline_accounting import identities
from tests.proctree import wait_until, workers_of


class PeakRSS:
    """The parent's peak resident memory growth while the block runs (sampled every few ms)."""

    def __enter__(self):
        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def test_large_items_keep_the_notebooks_memory_flat(start_method):
    # 400 items of 1 MB through two stages at default settings: the channels hold up to 1,024
    # items each, which must not mean 1 GB in the notebook.
    pipe = Pipeline("big").stage(helpers.identity).stage(tasks.drop)
    with PeakRSS() as rss:
        out = pipe.run(tasks.megabytes(400), progress=False)
    assert list(out) == []
    stats = identities(pipe.stats())
    assert stats.dropped == 400
    assert rss.growth_mb < 250, f"the notebook grew by {rss.growth_mb:.0f} MB for 400 items of 1 MB"


def test_imap_of_large_items_keeps_memory_flat(start_method):
    pipe = Pipeline("big").stage(helpers.identity).stage(helpers.identity, name="again")
    seen = 0
    with PeakRSS() as rss:
        for value in pipe.imap(tasks.megabytes(300), ordered=True):
            assert value[:1] == bytes([seen % 256]) and len(value) == 1 << 20
            seen += 1
    assert seen == 300
    assert rss.growth_mb < 300, f"the notebook grew by {rss.growth_mb:.0f} MB streaming 300 items of 1 MB"


def test_imap_with_a_slow_loop_does_not_read_the_source_far_ahead(start_method):
    reads = []

    def source():
        for i in range(100_000):
            reads.append(i)
            yield i

    pipe = Pipeline("slow loop").stage(helpers.identity, maxsize=4).stage(helpers.double, maxsize=4)
    stream = pipe.imap(source(), ordered=True)
    assert [next(stream) for _ in range(3)] == [0, 2, 4]
    # the loop dawdles: the stages run on until the backlog and the channels are full, then stop
    settled = wait_until(lambda: len(reads) > 3 and pipe.stats().pending + 3 >= len(reads) - 60, timeout=30)
    time.sleep(0.5)
    before = len(reads)
    time.sleep(0.5)
    assert len(reads) == before, "the source is still being read while nobody takes results"
    assert len(reads) < 200, f"{len(reads)} items read ahead of a loop that took 3"
    assert next(stream) == 6
    stream.close()
    identities(pipe.stats())
    assert settled


def test_breaking_out_of_imap_stops_the_pipeline_and_accounts_for_every_item(start_method):
    pipe = Pipeline("early").stage(helpers.identity, workers=2).stage(helpers.square)
    got = []
    for value in pipe.imap(range(100_000)):
        got.append(value)
        if len(got) == 10:
            break
    stats = identities(pipe.stats())
    assert stats.state == "stopped"
    assert stats.completed >= 10 and stats.cancelled > 0
    assert stats.submitted == stats.completed + stats.cancelled + stats.failed + stats.dropped + stats.pending
    assert stats.submitted < 100_000
    assert wait_until(lambda: not workers_of(os.getpid()), timeout=20), "a stage's worker outlived the stream"


def test_imap_gives_what_run_gives(any_backend):
    pipe = (Pipeline("same").stage(helpers.drop_odd).stage(helpers.explode, many=True)
            .batch(3, 0.05).stage(tasks.batch_touch_free))
    items = list(range(40))
    expected = pipe.run(items, ordered=True, progress=False)
    assert list(pipe.imap(items, ordered=True)) == list(expected)
    assert sorted(pipe.imap(items)) == sorted(expected)
    identities(pipe.stats())


def test_imap_failures_follow_on_error(any_backend):
    pipe = Pipeline("errs").stage(helpers.fail_on)
    out = list(pipe.imap(range(8), ordered=True, on_error="collect"))
    assert [x for x in out if not isinstance(x, Failure)] == [0, 1, 2, 4, 5, 6, 7]
    assert isinstance(out[3], Failure) and out[3].index == 3
    assert list(pipe.imap(range(8), ordered=True, on_error="skip")) == [0, 1, 2, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="bad item 3"):
        for _ in pipe.imap(range(8), ordered=True):
            pass
    identities(pipe.stats())


def test_keyed_stage_streams(any_backend):
    pipe = Pipeline("keys").stage(tasks.parity, key=tasks.parity, workers=2).stage(helpers.identity)
    assert sorted(pipe.imap(range(50))) == sorted(x % 2 for x in range(50))
    identities(pipe.stats())


def test_an_item_that_cannot_be_pickled_fails_alone(any_backend):
    items = [0, 1, threading.Lock(), 3]
    pipe = Pipeline("locks").stage(helpers.identity).stage(helpers.double)
    out = pipe.run(items, ordered=True, on_error="collect", progress=False)
    assert list(out) == [0, 2, 6]
    [failure] = out.failures
    assert failure.index == 2 and isinstance(failure.exception, SerializationError)
    assert "cannot be pickled" in str(failure.exception) and "lock" in str(failure.exception)
    stats = identities(pipe.stats())
    assert stats.failed == 1 and stats.completed == 3
    svc = pipe.start()
    try:
        bad, good = svc.submit(threading.Lock()), svc.submit(21)
        assert good.result(timeout=60) == 42
        assert isinstance(bad.exception(timeout=60), SerializationError)
    finally:
        svc.stop()


def test_a_result_that_cannot_be_pickled_fails_alone(any_backend):
    pipe = Pipeline("locks").stage(tasks.lock_for).stage(helpers.double)
    out = pipe.run(range(6), ordered=True, on_error="collect", progress=False)
    assert list(out) == [0, 2, 4, 8, 10]
    [failure] = out.failures
    assert failure.index == 3 and "could not be pickled" in str(failure.exception)
    identities(pipe.stats())


def test_a_result_that_cannot_be_pickled_fails_only_its_item_of_a_batch(any_backend):
    pipe = Pipeline("locks").batch(4, 0.05).stage(tasks.batch_lock_for)
    out = pipe.run(range(8), ordered=True, on_error="collect", progress=False)
    assert list(out) == [0, 1, 2, 4, 5, 6, 7]
    [failure] = out.failures
    assert failure.index == 3 and failure.item == 3 and "could not be pickled" in str(failure.exception)
    identities(pipe.stats())


def test_bytes_and_bytearrays_cross_stages_as_themselves(start_method):
    # small bytes travel as themselves, large ones through shared memory, bytearrays as pickles;
    # bytes that look like a pickle are still just bytes
    import pickle

    items = [b"", b"x" * 1000, pickle.dumps({"a": 1}), b"y" * (64 << 10), b"z" * (1 << 20),
             bytearray(b"w" * 10), bytearray(b"v" * (1 << 20)), "text", 3, None, {"k": b"x"}]
    pipe = (Pipeline("bytes").stage(helpers.identity, workers=1, name="one")
            .stage(helpers.identity, workers=1, name="two"))
    got = pipe.run(items, ordered=True, start_method=start_method)
    expected = [x for x in items if x is not None]  # None is a dropped item
    assert list(got) == expected and [type(x) for x in got] == [type(x) for x in expected]
    assert list(pipe.imap(items, ordered=True, start_method=start_method)) == expected
