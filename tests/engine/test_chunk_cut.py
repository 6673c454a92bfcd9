"""A map's chunks stay near the byte cap however the items' sizes change along the input.

A chunk's size is decided before its items are read, from what the earlier chunks measured; an
input of small items that turns into large ones (a generator of ids, then of frames) must not
put the whole tail into one message, nor read it all into the notebook's memory at once.
"""
from __future__ import annotations

import gc
import itertools
import pickle

import numpy as np
import psutil
import pytest
from hypothesis import given, settings, strategies as st

from mpkit.engine import _serialize
from mpkit.engine._chunking import TARGET_CHUNK_BYTES, Cutter
from tests import shm_tasks

MB = shm_tasks.MB
PAGE = 4096
SMALL = 20_000  # enough tiny items for the sizer to cut chunks of thousands (MAX_CHUNK)


def _ints_then_arrays(large: int, nbytes: int = MB):
    yield from range(SMALL)
    for i in range(large):
        yield np.full(nbytes // 8, float(i))


@pytest.mark.parametrize("call,source", [("map", "generator"), ("imap", "generator"), ("map", "list")])
def test_small_items_then_large_arrays_never_make_a_chunk_far_past_the_cap(pool, call, source):
    items = _ints_then_arrays(100) if source == "generator" else list(_ints_then_arrays(100))
    out = list(getattr(pool, call)(shm_tasks.segment_of_array, items))
    assert out[:SMALL] == [0] * SMALL
    segments = out[SMALL:]
    assert len(segments) == 100 and all(segments), "some arrays did not travel through shared memory"
    # a chunk closes at the first item that takes it past the cap: at most one item beyond it
    assert max(segments) <= TARGET_CHUNK_BYTES + MB + PAGE, \
        f"a chunk of {max(segments) / MB:.0f} MB was sent (cap {TARGET_CHUNK_BYTES / MB:.0f} MB)"


def test_small_items_then_large_bytes_are_not_read_into_memory_all_at_once(pool):
    process = psutil.Process()
    gc.collect()
    base = process.memory_info().rss
    peak = [base]

    def ints_then_bytes(large=600):
        yield from range(SMALL)
        for i in range(large):
            if i % 10 == 0:
                peak.append(process.memory_info().rss)  # the notebook while it reads the input
            yield bytes([i % 256]) * MB

    lengths = pool.map(shm_tasks.length, ints_then_bytes())
    assert lengths == [0] * SMALL + [MB] * 600
    growth = max(peak) - base
    # 600 MB of input; the chunks waiting and in flight hold a few tens of MB of it
    assert growth < 250 * MB, f"the notebook grew by {growth / MB:.0f} MB while reading the input"


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("not this one")


def _drain(cutter: Cutter, sizes, cap):
    """Every chunk the cutter makes, each ``(items, payload)``, asking for the sizes in turn."""
    chunks = []
    for size in itertools.cycle(sizes):
        if cutter.exhausted:
            return chunks
        items, payload = cutter.cut(size, cap)
        if items:
            chunks.append((items, payload))


# An input is a run of items of a few sizes, tiny to well past the cap, in any order and mix.
_ITEM = st.sampled_from([1, 100, 20_000, 300_000, 1_200_000])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(_ITEM, max_size=60), sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
       as_list=st.booleans(), arrays=st.booleans())
def test_the_cut_loses_no_item_and_closes_each_chunk_at_the_first_item_past_the_cap(lengths, sizes, as_list, arrays):
    cap = 1 << 20
    items = [np.full(n // 8 + 1, i, dtype=np.float64) if arrays else bytes([i % 256]) * n
             for i, n in enumerate(lengths)]
    chunks = _drain(Cutter(iter(items) if as_list else (x for x in items)), sizes, cap)
    cut = [x for chunk, _ in chunks for x in chunk]
    assert len(cut) == len(items) and all(a is b for a, b in zip(cut, items)), "items lost, repeated or reordered"
    for chunk, payload in chunks:
        sent = _serialize.unpack(payload)
        assert len(sent) == len(chunk) and all(np.array_equal(a, b) for a, b in zip(sent, chunk))
        # past the cap by at most the items read ahead of the count (two) and a 64 KB frame
        largest = sorted(len(pickle.dumps(x, 5)) for x in chunk)[-2:]
        assert payload.nbytes <= cap + sum(largest) + 65536, \
            f"a chunk of {len(chunk)} items and {payload.nbytes} bytes (cap {cap})"


def test_an_item_that_cannot_be_pickled_is_left_to_the_run_and_the_input_read_on(pool):
    items = [1, 2, _Unpicklable(), 4] + list(range(5, 100))
    out = pool.map(shm_tasks.length, (x for x in items), on_error="collect")
    assert out == [0] * 98
    [failure] = out.failures
    assert failure.index == 2 and "not this one" in str(failure.exception)


def test_an_exception_raised_by_the_input_reaches_the_caller(pool):
    def failing():
        yield from range(5000)
        raise LookupError("the source broke")

    with pytest.raises(LookupError, match="the source broke"):
        pool.map(shm_tasks.length, failing())
