"""A pipeline's items move between stages in segments (the items that came in together, a chunk's
results), cut where a bound falls inside one: what a user sees must not depend on where the cuts
fall, on a whole segment of results going on as the next stage's chunk unopened, or on an item's
memory travelling out of band."""
import numpy as np
import pytest

from mpkit import Pipeline
from tests import helpers, shm_tasks
from tests.engine.test_pipeline_accounting import Watch, identities


def test_a_generator_that_refills_one_array_gives_each_item_its_own_values(start_method):
    # frames read into one buffer (a video or audio reader): each item is what the generator
    # handed out, although its memory travels out of band and the buffer is refilled before
    # the chunk holding it is sent
    pipe = Pipeline("frames").stage(helpers.identity).stage(shm_tasks.first_value)
    watch = Watch()
    pipe._dashboards.append(watch)
    out = pipe.run(shm_tasks.one_buffer_refilled(40), ordered=True, progress=False)
    assert list(out) == [float(i) for i in range(40)]
    identities(pipe.stats())


def test_a_record_holding_a_refilled_array_keeps_its_values(start_method):
    def records():
        for i, frame in enumerate(shm_tasks.one_buffer_refilled(30)):
            yield {"index": i, "frame": frame}

    pipe = Pipeline("records").stage(shm_tasks.frame_index_and_value)
    out = pipe.run(records(), ordered=True, progress=False)
    assert list(out) == [(i, float(i)) for i in range(30)]


def test_an_array_changed_after_submit_arrives_as_it_was_submitted(start_method):
    svc = Pipeline("service").stage(shm_tasks.first_value).start()
    try:
        buf = np.zeros(100_000)
        futures = []
        for i in range(20):
            buf[:] = i
            futures.append(svc.submit(buf))
        assert [f.result(timeout=60) for f in futures] == [float(i) for i in range(20)]
    finally:
        svc.stop(timeout=60)


def test_a_cell_rerun_while_its_imap_stream_is_open_says_how_to_end_it(start_method):
    # cell 1: stream = pipe.imap(files); first = next(stream) ... the cell is run again while the
    # first stream is still open: the message must say that a stream runs and how to end it
    pipe = Pipeline("again").stage(helpers.identity)
    stream = pipe.imap(range(100_000))
    assert next(stream) == 0
    with pytest.raises(RuntimeError) as info:
        pipe.imap(range(10))
    message = str(info.value)
    assert "imap" in message and ".close()" in message and "svc.stop()" not in message, message
    stream.close()
    assert list(pipe.imap(range(5))) == [0, 1, 2, 3, 4]
    stats = identities(pipe.stats())
    assert stats.state == "stopped" and stats.completed == 5
