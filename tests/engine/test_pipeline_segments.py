"""A pipeline's items move between stages in segments (the items that came in together, a chunk's
results), cut where a bound falls inside one: what a user sees must not depend on where the cuts
fall, on a whole segment of results going on as the next stage's chunk unopened, or on an item's
memory travelling out of band."""
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mpkit import Pipeline
from mpkit.engine._stage import CHUNK_BYTES, Lane, Segment
from tests import helpers, pipeline_tasks as tasks, shm_tasks
from tests.pipeline_tasks import finishes
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


# ---- whatever the items, they come out as they went in ---------------------------------------------
def canon(x):
    """A comparable stand-in for an item: arrays by dtype, shape and bytes, containers by content."""
    if isinstance(x, np.ndarray):
        return ("array", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return (type(x).__name__, tuple(sorted((repr(k), canon(v)) for k, v in x.items())))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(canon(v) for v in x))
    return (type(x).__name__, x)


flat = st.one_of(st.integers(-2**70, 2**70), st.booleans(), st.none(), st.floats(allow_nan=False),
                 st.text(max_size=20))
large = st.integers(64 << 10, 300 << 10)  # sizes that travel out of band
items = st.one_of(
    st.integers(), st.text(max_size=50), st.binary(max_size=100),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.booleans()), flat, max_size=5),
    st.tuples(flat, flat), st.lists(flat, max_size=5),
    st.lists(st.lists(flat, max_size=3), max_size=3),                       # nested records
    large.map(lambda n: b"b" * n), large.map(lambda n: bytearray(b"a" * n)),
    st.integers(1, 40_000).map(lambda n: np.arange(n)),                     # small and large arrays
    st.integers(1, 20_000).map(lambda n: {"frame": np.full(n, 7.0), "n": n}),
)


@st.composite
def shapes(draw):
    stages = []
    for _ in range(draw(st.integers(1, 3))):
        stages.append(dict(workers=draw(st.integers(1, 2)), maxsize=draw(st.integers(1, 6)),
                           batch=draw(st.one_of(st.none(), st.integers(1, 4))), key=draw(st.booleans())))
    return stages


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stages=shapes(), xs=st.lists(items, max_size=25), how=st.sampled_from(["run", "imap", "submit"]))
def test_any_items_through_any_stages_come_out_as_they_went_in(start_method, stages, xs, how):
    # small channels (maxsize 1-6) cut every segment; mixed sizes move the byte bounds
    pipe = Pipeline("anything")
    for i, shape in enumerate(stages):
        if shape["batch"] is not None:
            pipe.batch(shape["batch"], max_wait=0.02)
        fn = tasks.batch_identity if shape["batch"] is not None else helpers.identity
        pipe.stage(fn, name=f"s{i}", workers=shape["workers"], maxsize=shape["maxsize"],
                   key=tasks.kind_key if shape["key"] else None)
    watch = Watch()
    pipe._dashboards.append(watch)
    xs = [x for x in xs if x is not None]  # None from a stage drops the item
    if how == "run":
        out = finishes(lambda: list(pipe.run(xs, ordered=True, progress=False)))
    elif how == "imap":
        out = finishes(lambda: list(pipe.imap(iter(xs), ordered=True)))
    else:
        svc = pipe.start()
        try:
            out = [f.result(timeout=60) for f in [svc.submit(x) for x in xs]]
        finally:
            svc.stop(timeout=60)
    assert [canon(x) for x in out] == [canon(x) for x in xs]
    stats = identities(pipe.stats())
    assert (stats.submitted, stats.completed, stats.pending) == (len(xs), len(xs), 0)


def test_large_results_among_small_ones_spread_over_the_next_stages_workers(start_method):
    # stage one loads a few images among many small records (paths in, arrays out): one chunk's
    # results, a few MB among thousands of tiny ones, must not go on as ONE chunk of the next
    # stage (a chunk holds CHUNK_BYTES at most), which would leave all the slow work to one worker
    items = list(range(100, 3000)) + list(range(10)) + list(range(3000, 5000))
    pipe = Pipeline("mixed").stage(tasks.large_below).stage(tasks.pid_for_large, workers=2)
    out = pipe.run(items, progress=False)
    pids = [pid for pid in out if pid is not None]
    assert len(pids) == 10
    assert len(set(pids)) == 2, f"all 10 large items ran on worker {pids[0]} while the other had none"


@settings(max_examples=200, deadline=None, database=None)
@given(sizes=st.lists(st.one_of(st.integers(0, 100), st.integers(0, 3 << 20)), min_size=1, max_size=300),
       most=st.integers(1, 400), limit=st.integers(1, 2 << 20))
def test_segments_cut_where_the_bound_falls_and_lose_nothing(sizes, most, limit):
    # the rule behind every chunk and every move: the items taken fit the byte bound, or are one
    # item; no item is lost or reordered; the bytes of the parts add up to the whole
    values = [b"x" * n for n in sizes]
    segment = Segment(list(range(len(values))), values, sum(sizes))
    parts = []
    while segment.keys:
        count = segment.fits(most, limit)
        part = segment.cut(count) if count < len(segment.keys) else segment
        parts.append(part)
        assert len(part.keys) <= most
        assert len(part.keys) == 1 or sum(map(len, part.values)) <= limit
        assert part.nbytes == sum(map(len, part.values))
        if part is segment:
            break
    assert [k for p in parts for k in p.keys] == list(range(len(values)))


@settings(max_examples=200, deadline=None, database=None)
@given(segments=st.lists(st.lists(st.one_of(st.integers(0, 2000), st.integers(0, 3 << 20)), min_size=1, max_size=50),
                         min_size=1, max_size=8),
       most=st.integers(1, 400))
def test_a_chunk_holds_chunk_bytes_at_most_or_one_item(segments, most):
    # a lane's inbox of segments as they came (a few large items among small ones), taken chunk
    # by chunk: each chunk is within CHUNK_BYTES or is one item, and every item goes once, in order
    lane = Lane.__new__(Lane)  # only its inbox: no pool needed to cut chunks
    lane.inbox, lane.inbox_count, lane.inbox_bytes = deque(), 0, 0
    key = 0
    for sizes in segments:
        keys = list(range(key, key + len(sizes)))
        key += len(sizes)
        lane.put(Segment(keys, [b"x" * n for n in sizes], sum(sizes)))
    taken = []
    while lane.inbox:
        keys, values, _ = lane.take(most)
        assert 1 <= len(keys) <= most
        assert len(keys) == 1 or sum(map(len, values)) <= CHUNK_BYTES, [len(v) for v in values]
        taken += keys
    assert taken == list(range(key)) and lane.inbox_count == lane.inbox_bytes == 0


def test_a_pipeline_item_that_dies_or_times_out_is_named_by_its_position_and_value(start_method):
    """The messages say "item 2 (3)": the item's position in the input and its value, not the
    router's key tuple "(2,)" nor the pickle the item travels as."""
    pipe = Pipeline("names").stage(helpers.identity).stage(helpers.kill_self_on, name="killer")
    out = pipe.run([1, 2, 3, 4], on_error="collect")
    [failure] = out.failures
    assert failure.index == 2 and failure.item == 3
    assert "item 2 (3)" in str(failure.exception), str(failure.exception)
    assert "(2,)" not in str(failure.exception), str(failure.exception)
    slow = Pipeline("slow").stage(helpers.identity).stage(helpers.sleep_then, timeout=0.5, name="sleeper")
    out = slow.run([0, 0, 30, 0], on_error="collect")
    [failure] = out.failures
    assert "item 2 (30)" in str(failure.exception) and "(2,)" not in str(failure.exception), str(failure.exception)
